"""Boundary distances and noise accuracy (§4.6) against a linear classifier's closed forms."""

from __future__ import annotations

import math

import torch

from pipeline_lib.evaluation.robustness import (
    boundary_distances,
    distance_summary,
    noise_accuracy,
)

W = torch.tensor([1.0, -2.0], dtype=torch.float64)
B = 0.3


def linear(x: torch.Tensor) -> torch.Tensor:
    return (x @ W + B > 0).long()


def points(n=200, seed=0):
    return torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_distances_match_the_point_to_line_distance():
    x = points()
    true = (x @ W + B).abs() / W.norm()
    resolution = 400
    d = boundary_distances(linear, x, resolution=resolution, tol=1e-7)
    span = (x.max(0).values - x.min(0).values).max() * 1.5  # the grid's widest side
    spacing = float(span) / (resolution - 1)
    assert bool((d >= true - 1e-6).all())  # a crossing on a line is never nearer than the line
    assert float((d - true).max()) <= spacing
    summary = distance_summary(d)
    assert math.isclose(summary["mean"], float(true.mean()), abs_tol=spacing)
    assert summary["n_finite"] == len(x)


def test_a_single_class_has_no_boundary():
    d = boundary_distances(lambda x: torch.zeros(len(x), dtype=torch.long), points(10))
    assert bool(torch.isinf(d).all()) and distance_summary(d)["n_finite"] == 0


def test_noise_accuracy_matches_the_gaussian_closed_form():
    """A point at signed distance s from the line keeps its side with probability Φ(s / σ)."""
    x = points(50, seed=1)
    labels = linear(x)
    labels[:5] = 1 - labels[:5]  # five points labelled against the classifier
    signed = (x @ W + B) / W.norm() * (2 * linear(x) - 1)  # ≥ 0: distance on the own side
    draws, gen = 4000, torch.Generator().manual_seed(2)
    got = noise_accuracy(linear, x, labels, (0.05, 0.2), draws=draws, generator=gen)
    for sigma, acc in got.items():
        keep = 0.5 * (1 + torch.erf(signed / (sigma * math.sqrt(2))))
        expected = torch.where(labels == linear(x), keep, 1 - keep).mean()
        stderr = math.sqrt(0.25 / (draws * len(x)))
        assert abs(acc - float(expected)) < 4 * stderr, (sigma, acc, float(expected))


def test_distances_to_a_curved_boundary():
    """A circle of radius R: the distance of x to the boundary is | |x| − R |; lines from a
    point to another class may cross the circle twice (bisection finds a crossing)."""
    radius = 1.0

    def circle(x: torch.Tensor) -> torch.Tensor:
        return (x.norm(dim=1) < radius).long()

    x = points(150, seed=3)
    true = (x.norm(dim=1) - radius).abs()
    d = boundary_distances(circle, x, resolution=400, tol=1e-7)
    span = float((x.max(0).values - x.min(0).values).max()) * 1.5
    spacing = span / 399
    assert bool((d >= true - 1e-6).all())
    assert float((d - true).max()) <= 2 * spacing


def test_classifier_robustness_and_its_config():
    import pytest

    from pipeline_lib.evaluation.robustness import RobustnessConfig, classifier_robustness

    x = points(100, seed=3)
    cfg = RobustnessConfig(sigmas=(0.1,), noise_draws=3, grid_resolution=300, tol=1e-7)
    got = classifier_robustness(linear, x, linear(x), cfg, torch.Generator().manual_seed(0))
    true = (x @ W + B).abs() / W.norm()
    assert math.isclose(got["boundary_distance_mean"], float(true.mean()), abs_tol=0.05)
    assert got["boundary_points"] == 100 and set(got["noise_accuracy"]) == {"0.1"}
    assert RobustnessConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="robustness.sigmas"):
        RobustnessConfig(sigmas=(0.0,))


def test_fig9_snapshot_of_a_neural_ode_classifier():
    """The Fig. 9 arrays: class-1 probability in [0, 1], the field and its magnitude as the
    network computes them on the grid, and trajectories that start at the test points."""
    from pipeline_lib.classifier import ClassifierConfig, build_classifier
    from pipeline_lib.evaluation.robustness import RobustnessConfig, classifier_snapshot
    from pipeline_lib.flows import SolverConfig

    torch.manual_seed(0)
    solver = SolverConfig(method="rk4", step_size=0.1)
    model = build_classifier(ClassifierConfig(dim=2, hidden_dims=(8,), solver=solver))
    x = points(30).float()
    labels = linear(x.double())
    cfg = RobustnessConfig(snapshot_resolution=12, trajectories=5, trajectory_steps=6)
    snap = classifier_snapshot(model, x, labels, cfg, torch.Generator().manual_seed(0))
    assert snap["prob"].shape == (12, 12) and 0 <= snap["prob"].min() <= snap["prob"].max() <= 1
    gx, gy = torch.tensor(snap["grid_x"]), torch.tensor(snap["grid_y"])
    z = torch.stack([gx[4], gy[7]])[None]
    with torch.no_grad():
        f = model.field.net(torch.zeros(()), z)[0]
        p1 = torch.softmax(model.logits(z), 1)[0, 1]
    torch.testing.assert_close(torch.tensor(snap["field"][7, 4]), f)  # row = y, column = x
    assert math.isclose(snap["speed"][7, 4], float(f.norm()), rel_tol=1e-5)
    assert math.isclose(snap["prob"][7, 4], float(p1), rel_tol=1e-5)
    traj = torch.tensor(snap["trajectories"])
    assert traj.shape == (6, 5, 2) and snap["times"][-1] == 1.0
    starts = {tuple(r) for r in x.numpy().round(5).tolist()}
    assert all(tuple(r) in starts for r in traj[0].numpy().round(5).tolist())
