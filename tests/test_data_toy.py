"""Toy data sets (Sparse Flows §4.1): determinism, mode structure, split sizes, standardization."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline_lib.data import TOY_DATASETS, generate_toy, toy_modes
from pipeline_lib.data.toy import GAUSSIAN_MODE_DATASETS

SMALL = {"n_samples": 240}


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_same_seed_same_data_other_seed_other_data(name: str) -> None:
    a = generate_toy(name, seed=5, **SMALL)
    b = generate_toy(name, seed=5, **SMALL)
    c = generate_toy(name, seed=6, **SMALL)
    for key in ("train", "val", "test"):
        assert torch.equal(getattr(a, key), getattr(b, key))
        assert not torch.equal(getattr(a, key), getattr(c, key))
    assert a.mean == b.mean and a.std == b.std


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_shapes_labels_and_scalar_standardization(name: str) -> None:
    s = generate_toy(name, seed=0, **SMALL)
    n = s.sizes["train"]
    assert s.dim == 2 and s.name == name
    assert s.sizes["val"] == s.sizes["test"] == pytest.approx(n / 2, abs=3)
    assert s.train.dtype == torch.float32
    # One scalar mean/std over all coordinates of the training set.
    assert isinstance(s.mean, float) and isinstance(s.std, float)
    assert abs(float(s.train.double().mean())) < 1e-5
    assert float(s.train.double().std(unbiased=False)) == pytest.approx(1.0, abs=1e-5)
    # ... applied unchanged to validation and test data (not their own statistics).
    assert float(s.val.double().std(unbiased=False)) != pytest.approx(1.0, abs=1e-7)
    if name == "checkerboard":
        assert s.train_labels is None and not s.has_labels
    else:
        assert s.has_labels
        assert s.train_labels.shape == (n,) and s.train_labels.dtype == torch.int64


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_test_and_validation_sets_are_independent_draws(name: str) -> None:
    s = generate_toy(name, seed=0, **SMALL)
    m = s.sizes["test"]
    assert not torch.equal(s.val, s.test)
    assert not torch.equal(s.train[:m], s.test)
    assert not torch.equal(s.train[:m], s.val)


def test_gaussians_match_the_paper_configuration() -> None:
    s = generate_toy("gaussians", seed=0)
    assert s.sizes == {"train": 16_380, "val": 8_190, "test": 8_190}
    assert torch.bincount(s.train_labels).tolist() == [2730] * 6
    assert torch.bincount(s.test_labels).tolist() == [1365] * 6
    raw = s.unstandardize(s.train.double())
    centers, stds = toy_modes("gaussians")
    assert torch.allclose(centers.norm(dim=1), torch.full((6,), 4.0, dtype=torch.float64))
    k = torch.arange(6, dtype=torch.float64) * (math.pi / 3)
    circle = 4.0 * torch.stack([k.cos(), k.sin()], dim=1)
    assert torch.cdist(circle, centers).min(dim=1).values.max() < 1e-12
    assert torch.all(stds == 0.5)
    for k in range(6):
        points = raw[s.train_labels == k]
        assert (points.mean(0) - centers[k]).abs().max() < 0.05
        assert points.std(0).sub(0.5).abs().max() < 0.03


def test_gaussianspiral_modes_follow_the_spiral() -> None:
    s = generate_toy("gaussianspiral", seed=1)
    assert torch.bincount(s.train_labels).tolist() == [1638] * 10
    centers, stds = toy_modes("gaussianspiral")
    assert torch.allclose(centers.norm(dim=1), torch.linspace(4.0, 1.0, 10).double())
    assert torch.allclose(stds, torch.linspace(0.3, 0.1, 10).double())
    # Consecutive centers are 60° apart: 10 modes cover 1.5 turns.
    angles = torch.atan2(centers[:, 1], centers[:, 0])
    steps = (angles.diff() % (2 * math.pi)).numpy()
    assert np.allclose(steps, math.pi / 3)
    raw = s.unstandardize(s.train.double())
    for k in range(10):
        points = raw[s.train_labels == k]
        assert (points.mean(0) - centers[k]).abs().max() < 0.04
        assert points.std(0).sub(stds[k]).abs().max() < 0.02


def test_toy_modes_in_standardized_coordinates() -> None:
    s = generate_toy("gaussians", seed=2, n_per_mode=500)
    centers, stds = toy_modes("gaussians", s)
    for k in range(6):
        assert (s.train[s.train_labels == k].double().mean(0) - centers[k]).abs().max() < 0.05
    assert torch.allclose(stds, torch.full((6,), 0.5 / s.std, dtype=torch.float64))


def test_eight_gaussians_labels_are_nearest_modes() -> None:
    s = generate_toy("8gaussians", seed=0, n_samples=4000)
    centers, stds = toy_modes("8gaussians")
    assert torch.allclose(stds, torch.full((8,), 0.5 / 1.414, dtype=torch.float64))
    raw = s.unstandardize(s.train.double())
    nearest = torch.cdist(raw, centers).argmin(dim=1)
    assert (nearest == s.train_labels).double().mean() > 0.99


def test_circles_and_moons_geometry() -> None:
    circles = generate_toy("circles", seed=0, n_samples=2000)
    radius = circles.unstandardize(circles.train.double()).norm(dim=1)
    assert radius[circles.train_labels == 0].mean() == pytest.approx(3.0, abs=0.05)
    assert radius[circles.train_labels == 1].mean() == pytest.approx(1.5, abs=0.05)
    moons = generate_toy("moons", seed=0)
    assert moons.sizes["train"] == 1024
    assert torch.bincount(moons.train_labels).tolist() == [512, 512]
    # torchdyn's noise (the released ToyMoons): one uniform shift u ∈ [0, 0.1) of both
    # coordinates of each point (same seed: the same points in the same order)
    clean = generate_toy("moons", seed=0, noise=0.0)
    raw = moons.unstandardize(moons.train.double())
    raw0 = clean.unstandardize(clean.train.double())
    shift = raw - raw0
    torch.testing.assert_close(shift[:, 0], shift[:, 1], rtol=0, atol=1e-5)
    assert float(shift.min()) > -1e-5 and float(shift.max()) < 0.1 + 1e-5
    assert float(shift.max()) > 0.09  # the whole range is used


def test_size_keywords() -> None:
    assert generate_toy("gaussians", n_samples=60).sizes["train"] == 60
    assert generate_toy("spiral", n_per_mode=7).sizes == {"train": 14, "val": 6, "test": 6}
    assert generate_toy("checkerboard", n_samples=50).sizes == {"train": 50, "val": 25, "test": 25}
    with pytest.raises(ValueError, match="not both"):
        generate_toy("gaussians", n_per_mode=3, n_samples=60)
    with pytest.raises(ValueError, match="n_samples instead"):
        generate_toy("8gaussians", n_per_mode=3)
    with pytest.raises(ValueError, match="at least"):
        generate_toy("gaussians", n_samples=3)
    with pytest.raises(ValueError, match="no noise"):
        generate_toy("gaussians", noise=0.1)
    with pytest.raises(ValueError, match="non-negative"):
        generate_toy("gaussians", seed=-1)
    noisy = generate_toy("moons", n_samples=200, noise=0.3)
    assert noisy.sizes["train"] == 200


def test_unknown_names_and_non_gaussian_modes() -> None:
    with pytest.raises(ValueError, match="valid names are: gaussians"):
        generate_toy("swissroll")
    with pytest.raises(ValueError, match="not a Gaussian mixture"):
        toy_modes("pinwheel")
    with pytest.raises(ValueError, match="valid names"):
        toy_modes("nope")
    assert set(GAUSSIAN_MODE_DATASETS) == {"gaussians", "gaussianspiral", "8gaussians"}
