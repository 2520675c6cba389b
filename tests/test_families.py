"""Model families (pipeline_lib.families): lookup by configuration and by model, and the
consistency of what a family declares."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pipeline_lib.families import FAMILIES, family_of, family_of_model


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_is_found_from_its_config_and_its_model(name):
    family = FAMILIES[name]
    cfg = family.config(dim=(1, 4, 4)) if name == "multiscale" else family.config(dim=2)
    assert family_of(cfg) is family
    assert family_of_model(family.build(cfg)) is family


def test_unknown_objects_are_refused():
    with pytest.raises(TypeError, match="the configuration of no model family"):
        family_of({"dim": 2})
    with pytest.raises(TypeError, match="a model of no model family"):
        family_of_model(object())


def test_sample_metric_and_sample_kind_go_together():
    ffjord = FAMILIES["ffjord"]
    assert ffjord.sample_kind == "points" and FAMILIES["multiscale"].sample_kind == "images"
    assert FAMILIES["classifier"].sample_kind is None
    with pytest.raises(ValueError, match="set sample_kind exactly when"):
        replace(ffjord, sample_kind=None)
    with pytest.raises(ValueError, match="set sample_kind exactly when"):
        replace(FAMILIES["classifier"], sample_kind="points")
    with pytest.raises(ValueError, match="sample_kind one of"):
        replace(ffjord, sample_kind="voxels")
