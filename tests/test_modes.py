"""Good-quality samples and modes captured (Sparse Flows §4.4, Table 4) against known answers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from flow_helpers import make_flow

from pipeline_lib.data.splits import DataSplits
from pipeline_lib.data.toy import generate_toy, toy_modes
from pipeline_lib.evaluation.modes import (
    Modes,
    evaluate_modes,
    fit_modes,
    gaussian_ceiling,
    good_sample_fraction,
    mahalanobis_to_modes,
    nearest_mode,
)
from pipeline_lib.flows import SolverConfig

RESULT_KEYS = {
    "n_samples",
    "n_nonfinite",
    "n_modes",
    "dim",
    "mode_labels",
    "n_std",
    "good_pct",
    "ceiling_pct",
    "good_counts_per_mode",
    "assigned_fraction",
    "capture_n_std",
    "capture_share",
    "capture_threshold",
    "captured",
    "modes_captured",
}


@pytest.fixture(scope="module")
def gaussians():
    """Six Gaussians (radius 4, std 0.5), a large training set, and the true modes."""
    splits = generate_toy("gaussians", seed=0, n_per_mode=20_000)
    centers, stds = toy_modes("gaussians", splits)
    return splits, centers, stds


def true_mixture(centers, stds, n_per_mode, seed, modes=None):
    """``n_per_mode`` exact draws from each chosen true mode (standardized coordinates)."""
    modes = range(len(centers)) if modes is None else modes
    gen = torch.Generator().manual_seed(seed)
    parts = [
        centers[k] + stds[k] * torch.randn(n_per_mode, 2, dtype=torch.float64, generator=gen)
        for k in modes
    ]
    return torch.cat(parts)


def test_fit_modes_recovers_true_moments(gaussians):
    splits, centers, stds = gaussians
    modes = fit_modes(splits.train, splits.train_labels)
    assert modes.n_modes == 6 and modes.dim == 2
    assert modes.labels.tolist() == list(range(6))
    assert modes.counts.tolist() == [20_000] * 6
    # Mean error ~ σ/√n ≈ 0.0014 in standardized units (σ ≈ 0.16); variance error ~ 1 %.
    assert torch.allclose(modes.means, centers, atol=0.01)
    true_cov = (stds**2)[:, None, None] * torch.eye(2, dtype=torch.float64)
    assert torch.allclose(modes.covariances, true_cov, rtol=0, atol=0.05 * float(stds[0] ** 2))
    eye = torch.eye(2, dtype=torch.float64).expand(6, 2, 2)
    assert torch.allclose(modes.precisions @ modes.covariances, eye, atol=1e-10)
    assert torch.allclose(modes.cholesky @ modes.cholesky.transpose(-1, -2), modes.covariances)


def test_fit_modes_matches_numpy_per_label():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 3))
    labels = rng.choice([7, 2, 5], size=300)
    modes = fit_modes(torch.from_numpy(x), torch.from_numpy(labels))
    assert modes.labels.tolist() == [2, 5, 7]
    for k, label in enumerate([2, 5, 7]):
        rows = x[labels == label]
        assert modes.counts[k] == len(rows)
        np.testing.assert_allclose(modes.means[k].numpy(), rows.mean(axis=0), atol=1e-12)
        np.testing.assert_allclose(modes.covariances[k].numpy(), np.cov(rows.T), atol=1e-12)


@pytest.mark.parametrize(("n", "expected"), [(2.0, 1 - math.exp(-2.0)), (3.0, 1 - math.exp(-4.5))])
def test_true_mixture_reaches_the_chi_ceiling(gaussians, n, expected):
    """Exact mixture samples: the good fraction is P(χ²₂ ≤ n²) = 1 − exp(−n²/2)."""
    splits, centers, stds = gaussians
    modes = fit_modes(splits.train, splits.train_labels)
    samples = true_mixture(centers, stds, n_per_mode=5_000, seed=2)
    result = good_sample_fraction(samples, modes, n_std=n)
    got = result["good_pct"][f"{n:g}"] / 100.0
    stderr = math.sqrt(expected * (1 - expected) / samples.shape[0])
    assert abs(got - expected) < 3 * stderr, (got, expected, stderr)
    assert result["ceiling_pct"][f"{n:g}"] == pytest.approx(100 * expected, rel=1e-12)
    assert result["modes_captured"] == 6 and all(result["captured"])
    assert result["assigned_fraction"] == pytest.approx([1 / 6] * 6, abs=0.01)


def test_gaussian_ceiling_closed_forms():
    for n in (1.0, 2.0, 3.0, 5.0):
        assert gaussian_ceiling(n, 2) == pytest.approx(1 - math.exp(-(n**2) / 2), rel=1e-12)
        assert gaussian_ceiling(n, 1) == pytest.approx(math.erf(n / math.sqrt(2)), rel=1e-12)
    assert gaussian_ceiling(2.0, 2) == pytest.approx(0.8647, abs=1e-4)
    assert gaussian_ceiling(3.0, 2) == pytest.approx(0.9889, abs=1e-4)


def test_hand_built_points_at_known_distances():
    """Mode N((0, 0), diag(1, 4)): distance of (a, b) is √(a² + b²/4)."""
    modes = Modes(torch.zeros(1, 2), torch.diag(torch.tensor([1.0, 4.0]))[None])
    points = torch.tensor(
        [
            [1.9, 0.0],  # 1.9: within 2
            [0.0, 3.9],  # 1.95: within 2
            [0.0, 4.2],  # 2.1: not within 2, within 3
            [2.5, 0.0],  # 2.5: within 3
            [0.0, 6.2],  # 3.1: not within 3, within 5
            [6.0, 0.0],  # 6.0: not within 5
        ]
    )
    want = torch.tensor([1.9, 1.95, 2.1, 2.5, 3.1, 6.0], dtype=torch.float64)
    assert torch.allclose(mahalanobis_to_modes(points, modes)[:, 0], want, atol=1e-6)
    result = good_sample_fraction(points, modes, n_std=(2, 3, 5))
    assert result["good_counts_per_mode"] == {"2": [2], "3": [4], "5": [5]}
    assert result["good_pct"] == pytest.approx({"2": 200 / 6, "3": 400 / 6, "5": 500 / 6})
    assert result["n_nonfinite"] == 0 and result["assigned_fraction"] == [1.0]


def test_anisotropic_mode_is_not_the_euclidean_nearest():
    """A point closer in Euclidean terms to a narrow mode belongs to the wide one."""
    means = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    covs = torch.stack([torch.eye(2) * 9.0, torch.eye(2) * 0.01])
    modes = Modes(means, covs)
    index, dist = nearest_mode(torch.tensor([[2.0, 0.0]]), modes)
    assert index.tolist() == [0]  # 2/3 std from mode 0, 10 std from mode 1
    assert dist.item() == pytest.approx(2 / 3)


def test_mode_collapse_counts_captured_modes(gaussians):
    splits, centers, stds = gaussians
    modes = fit_modes(splits.train, splits.train_labels)
    half = true_mixture(centers, stds, n_per_mode=1_000, seed=3, modes=[0, 2, 4])
    result = good_sample_fraction(half, modes)
    assert result["modes_captured"] == 3
    assert result["captured"] == [True, False, True, False, True, False]
    assert result["good_counts_per_mode"]["3"][1::2] == [0, 0, 0]
    assert result["assigned_fraction"][1::2] == [0.0, 0.0, 0.0]
    # All samples are still good: collapse shows in the modes, not in the percentage.
    assert result["good_pct"]["5"] == pytest.approx(100.0)

    # Midpoints of neighbouring centers are 2 (4 std) from both; the circle's center is 4
    # (8 std) from every mode.
    midpoints = 0.5 * (centers + centers.roll(1, dims=0))
    between = good_sample_fraction(midpoints.repeat(50, 1), modes)
    assert between["good_pct"] == {"2": 0.0, "3": 0.0, "5": 100.0}
    origin = (torch.zeros(1, 2, dtype=torch.float64) - splits.mean) / splits.std
    middle = good_sample_fraction(origin.repeat(300, 1), modes)
    assert middle["good_pct"] == {"2": 0.0, "3": 0.0, "5": 0.0}
    assert middle["n_nonfinite"] == 0 and middle["modes_captured"] == 0
    assert between["modes_captured"] == 0  # good only at n = 5, capture counts n = 3


def test_capture_threshold_is_a_share_of_the_expected_count():
    """Equal weights: threshold = capture_share · N / K; 10 of 200 expected is below 10 %."""
    modes = Modes(torch.tensor([[0.0, 0.0], [10.0, 0.0]]), torch.eye(2).expand(2, 2, 2))
    samples = torch.cat([torch.zeros(390, 2), torch.tensor([[10.0, 0.0]]).repeat(10, 1)])
    result = good_sample_fraction(samples, modes, capture_share=0.1)
    assert result["capture_threshold"] == pytest.approx([20.0, 20.0])
    assert result["captured"] == [True, False]
    assert good_sample_fraction(samples, modes, capture_share=0.05)["modes_captured"] == 2
    weighted = Modes(modes.means, modes.covariances, counts=torch.tensor([19, 1]))
    assert good_sample_fraction(samples, weighted)["capture_threshold"] == pytest.approx([38, 2])
    assert good_sample_fraction(samples, weighted)["modes_captured"] == 2


def test_nearest_mode_matches_brute_force():
    rng = np.random.default_rng(4)
    k, d = 5, 3
    means = rng.normal(scale=3.0, size=(k, d))
    factors = rng.normal(size=(k, d, d))
    covs = factors @ factors.transpose(0, 2, 1) + 0.3 * np.eye(d)
    points = rng.normal(scale=4.0, size=(400, d))
    modes = Modes(torch.from_numpy(means), torch.from_numpy(covs))
    index, dist = nearest_mode(torch.from_numpy(points), modes)
    all_dist = mahalanobis_to_modes(torch.from_numpy(points), modes)
    for i, p in enumerate(points):
        brute = []
        for j in range(k):
            diff = p - means[j]
            brute.append(math.sqrt(diff @ np.linalg.inv(covs[j]) @ diff))
        np.testing.assert_allclose(all_dist[i].numpy(), brute, rtol=1e-10)
        assert index[i] == int(np.argmin(brute))
        assert dist[i].item() == pytest.approx(min(brute), rel=1e-10)


def test_non_finite_samples_are_bad_and_counted():
    modes = Modes(torch.zeros(1, 2), torch.eye(2)[None])
    samples = torch.tensor([[0.0, 0.0], [math.nan, 0.0], [math.inf, 1.0], [0.5, 0.5]])
    index, dist = nearest_mode(samples, modes)
    assert index.tolist() == [0, -1, -1, 0]
    assert math.isinf(dist[1]) and math.isinf(dist[2])
    result = good_sample_fraction(samples, modes, n_std=2)
    assert result["n_nonfinite"] == 2
    assert result["good_pct"] == {"2": 50.0}
    assert result["assigned_fraction"] == [0.5]


def test_errors_say_what_is_wrong():
    with pytest.raises(ValueError, match="fewer than 2"):
        fit_modes(torch.zeros(3, 2), torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="not positive definite"):
        fit_modes(torch.zeros(4, 2), torch.tensor([0, 0, 1, 1]))
    assert fit_modes(torch.zeros(4, 2), torch.tensor([0, 0, 1, 1]), ridge=1e-3).n_modes == 2
    modes = Modes(torch.zeros(1, 2), torch.eye(2)[None])
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        good_sample_fraction(torch.zeros(5, 3), modes)
    with pytest.raises(ValueError, match="n_std"):
        good_sample_fraction(torch.zeros(5, 2), modes, n_std=())
    unlabelled = DataSplits(train=torch.zeros(4, 2), val=torch.zeros(2, 2), test=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="needs mode labels"):
        evaluate_modes(None, unlabelled)


def tiny_flow():
    return make_flow(
        hidden_dims=(8,), solver=SolverConfig(method="rk4", step_size=0.5), trace="hutchinson"
    )


def test_evaluate_modes_on_an_untrained_flow():
    splits = generate_toy("gaussians", seed=0, n_per_mode=50)
    model = tiny_flow()
    model.train()
    result = evaluate_modes(
        model, splits, n_samples=70, batch_size=32, generator=torch.Generator().manual_seed(0)
    )
    assert model.training  # mode restored
    assert set(result) == RESULT_KEYS | {"dataset"}
    assert result["dataset"] == "gaussians" and result["n_samples"] == 70
    assert result["n_modes"] == 6 and result["n_nonfinite"] == 0
    assert list(result["good_pct"]) == ["2", "3", "5"]
    assert 0.0 <= result["good_pct"]["2"] <= result["good_pct"]["3"] <= result["good_pct"]["5"]
    assert sum(result["assigned_fraction"]) == pytest.approx(1.0)
    json.dumps(result)  # JSON-ready

    again = evaluate_modes(
        model, splits, n_samples=70, batch_size=32, generator=torch.Generator().manual_seed(0)
    )
    assert again == result


def test_evaluate_modes_counts_non_finite_samples_as_bad():
    splits = generate_toy("gaussians", seed=0, n_per_mode=50)
    model = tiny_flow()
    with torch.no_grad():
        next(model.parameters()).fill_(math.nan)
    result = evaluate_modes(model, splits, n_samples=20, batch_size=8)
    assert result["n_nonfinite"] == 20
    assert result["good_pct"] == {"2": 0.0, "3": 0.0, "5": 0.0}
    assert result["modes_captured"] == 0
