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
