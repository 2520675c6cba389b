"""Model families: what the pipeline needs to know of a kind of model, in one place.

Every family trains by maximum likelihood through the same loop
(:func:`~pipeline_lib.training.train`), is pruned by the same rules
(:mod:`pipeline_lib.pruning`: its ``nn.Linear`` layers and convolutions) and is evaluated by
:func:`~pipeline_lib.evaluation.nll.evaluate_nll`, because every model, called on a batch of
its *examples*, returns a :class:`~pipeline_lib.flows.FlowOutput` whose ``log_prob`` is the
log-likelihood of each example:

- ``ffjord``: FFJORD flows over vectors (§4.1–4.2), :class:`FlowConfig` →
  :func:`~pipeline_lib.flows.build_flow`; examples are the points x; "NLL" is −log p(x).
- ``classifier``: the neural-ODE classifier (§4.6), :class:`ClassifierConfig` →
  :func:`~pipeline_lib.classifier.build_classifier`; examples are rows ``[x, y]``; "NLL" is
  −log p(y | x), the cross-entropy.
- ``multiscale``: FFJORD's multiscale image flow (§4.3),
  :class:`~pipeline_lib.flows.multiscale.MultiscaleConfig` →
  :func:`~pipeline_lib.flows.multiscale.build_multiscale`; examples are uint8 images
  ``(C, H, W)``, dequantized in the model; "NLL" is −log P of the 8-bit image (its
  bits/dim is :func:`~pipeline_lib.flows.bits_per_dim` of it).

A family also names the per-checkpoint metrics that apply to it (:attr:`ModelFamily.metrics`):
good samples and density snapshots for 2-D flows, sample grids for image flows, the
decision-boundary robustness for classifiers, the test NLL and the Hessian for all.

Example::

    family = FAMILIES["classifier"]
    model = family.build(family.config(dim=2, hidden_dims=(128,)))
    batch = family.examples(splits, "train")       # the rows the training loop shuffles
    loss = -model(batch).log_prob.mean()
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pipeline_lib.classifier import (
    ClassifierConfig,
    NODEClassifier,
    build_classifier,
    labelled_examples,
)
from pipeline_lib.data import DataSplits, ImageSplits
from pipeline_lib.flows import ContinuousFlow, FlowConfig, build_flow
from pipeline_lib.flows.multiscale import MultiscaleConfig, MultiscaleFlow, build_multiscale

__all__ = [
    "FAMILIES",
    "ModelFamily",
    "build_model",
    "family_of",
    "family_of_model",
    "model_config_from_dict",
]


SAMPLE_KINDS = ("points", "images")
"""What a family's ``samples`` metric draws: ``points`` (good samples, §4.4, and the density
and vector-field snapshots of Figs. 5–6 for 2-D data) or ``images`` (sample grids, Fig. 1)."""


@dataclass(frozen=True)
class ModelFamily:
    """One kind of model: its configuration class (frozen, ``from_dict`` / ``to_dict``, a
    ``dim`` the data sets), its builder and the class of what it builds, whether its examples
    carry class labels, and the per-checkpoint metrics that apply to it (keys of
    :data:`~pipeline_lib.layout.METRIC_FILES`). ``density``: its NLL is a density's (−log p(x)),
    shown in the NLL tables and figures; a classifier's cross-entropy has tables of its own.
    ``sample_kind``: what its ``samples`` metric draws (:data:`SAMPLE_KINDS`)."""

    name: str
    config: type
    build: Callable[[Any], nn.Module]
    model_type: type
    supervised: bool
    density: bool
    metrics: tuple[str, ...]
    sample_kind: str | None = None

    def __post_init__(self) -> None:
        if (self.sample_kind is not None) != ("samples" in self.metrics):
            raise ValueError(
                f"family {self.name!r}: set sample_kind exactly when 'samples' is one of its "
                "metrics"
            )
        if self.sample_kind not in (None, *SAMPLE_KINDS):
            raise ValueError(f"family {self.name!r}: sample_kind one of {SAMPLE_KINDS}")

    def examples(self, data: DataSplits | ImageSplits, split: str) -> torch.Tensor:
        """The rows of one split (``train``, ``val``, ``test``) the model is trained and
        evaluated on: the points themselves, or ``[x, y]`` for a supervised family.

        Raises:
            ValueError: a supervised family on a data set without class labels, naming it.
        """
        x = torch.as_tensor(getattr(data, split))  # image splits hold uint8 numpy arrays
        if not self.supervised:
            return x
        labels = getattr(data, f"{split}_labels")
        if labels is None:
            raise ValueError(
                f"model family {self.name!r} needs class labels, but data set {data.name!r} "
                "has none; use a classification set (moons, concentric) or model.family: ffjord"
            )
        return labelled_examples(x, torch.as_tensor(labels))


FAMILIES: dict[str, ModelFamily] = {
    "ffjord": ModelFamily(
        name="ffjord",
        config=FlowConfig,
        build=build_flow,
        model_type=ContinuousFlow,
        supervised=False,
        density=True,
        metrics=("nll", "samples", "hessian"),
        sample_kind="points",
    ),
    "classifier": ModelFamily(
        name="classifier",
        config=ClassifierConfig,
        build=build_classifier,
        model_type=NODEClassifier,
        supervised=True,
        density=False,
        metrics=("nll", "robustness", "hessian"),
    ),
    "multiscale": ModelFamily(
        name="multiscale",
        config=MultiscaleConfig,
        build=build_multiscale,
        model_type=MultiscaleFlow,
        supervised=False,
        density=True,
        metrics=("nll", "samples", "hessian"),
        sample_kind="images",
    ),
}
"""The model families by ``model.family``."""


def _family_where(obj: Any, attribute: str, what: str) -> ModelFamily:
    for family in FAMILIES.values():
        if isinstance(obj, getattr(family, attribute)):
            return family
    raise TypeError(f"{type(obj).__name__} is {what} of no model family")


def family_of(config: Any) -> ModelFamily:
    """The family of a model configuration object."""
    return _family_where(config, "config", "the configuration")


def family_of_model(model: nn.Module) -> ModelFamily:
    """The family of a built model."""
    return _family_where(model, "model_type", "a model")


def build_model(config: Any) -> nn.Module:
    """Build the model a configuration describes (with all-ones pruning masks)."""
    return family_of(config).build(config)


def model_config_from_dict(family: str, d: Mapping[str, Any]) -> Any:
    """A family's configuration from its ``to_dict`` form (as a checkpoint stores it)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; one of {sorted(FAMILIES)}")
    return FAMILIES[family].config.from_dict(dict(d))
