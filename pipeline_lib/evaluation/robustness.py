"""Robustness of a classifier's decision boundary (Sparse Flows §4.6, Fig. 9).

The paper observes that the decision boundary of a highly pruned neural-ODE classifier moves
close to one class, which makes it less robust. Two measures quantify that:

- :func:`boundary_distances`: for each point, the distance to the decision boundary along the
  line to the nearest point of another predicted class on a fine grid, located by bisection
  on that line. It is an upper bound on the Euclidean distance to the boundary, within about
  one grid spacing of it (the segment to a grid point is oblique to the boundary); its mean
  and 5th percentile summarize a classifier (:func:`distance_summary`).
- :func:`noise_accuracy`: accuracy when Gaussian noise N(0, σ²I) is added to the inputs.

Both take ``predict``, a function from a batch of inputs ``(N, d)`` to predicted classes
``(N,)``, so they apply to any classifier (the tests use a linear one, whose boundary is known
in closed form). :func:`classifier_robustness` measures both for a neural-ODE classifier with
a :class:`RobustnessConfig`, and :func:`classifier_snapshot` takes the arrays of the Fig. 9
panels: class probability over a grid (the decision boundary), the vector field and its
magnitude (the state space), and trajectories of test points through depth.

Example::

    d = boundary_distances(model.predict, data.test)
    distance_summary(d)          # {"mean": ..., "p5": ...}
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "RobustnessConfig",
    "boundary_distances",
    "classifier_robustness",
    "classifier_snapshot",
    "distance_summary",
    "noise_accuracy",
]


@dataclass(frozen=True)
class RobustnessConfig:
    """Settings of the robustness metric of classifiers (§4.6) and of its Fig. 9 arrays.

    Arguments:
        enabled: whether the workflow evaluates it for every classifier checkpoint.
        sigmas: standard deviations of the Gaussian input noise (data units).
        noise_draws: noisy copies of the test set per σ.
        grid_resolution, grid_margin, tol: the grid of :func:`boundary_distances` (points per
            axis; widening of the test set's bounding box) and the bisection tolerance.
        snapshot_resolution: points per axis of the decision-boundary and vector-field
            images.
        trajectories, trajectory_steps: test points followed through depth, and the times
            (from 0 to T) at which their states are stored.
    """

    enabled: bool = True
    sigmas: tuple[float, ...] = (0.05, 0.1, 0.2)
    noise_draws: int = 20
    grid_resolution: int = 200
    grid_margin: float = 0.25
    tol: float = 1e-4
    snapshot_resolution: int = 80
    trajectories: int = 60
    trajectory_steps: int = 40

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigmas", tuple(float(s) for s in self.sigmas))
        if any(not s > 0 for s in self.sigmas):
            raise ValueError(f"robustness.sigmas must be positive, got {list(self.sigmas)}")
        for key in ("noise_draws", "trajectories"):
            if getattr(self, key) < 1:
                raise ValueError(f"robustness.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("grid_resolution", "snapshot_resolution", "trajectory_steps"):
            if getattr(self, key) < 2:
                raise ValueError(f"robustness.{key} must be >= 2, got {getattr(self, key)}")
        if not self.tol > 0:
            raise ValueError(f"robustness.tol must be positive, got {self.tol}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RobustnessConfig:
        return cls(**dict(d))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sigmas"] = list(self.sigmas)
        return d


Predict = Callable[[torch.Tensor], torch.Tensor]


def _grid(x: torch.Tensor, resolution: int, margin: float) -> torch.Tensor:
    """A ``resolution``^d grid over the bounding box of ``x``, widened by ``margin`` of its
    size on each side."""
    if resolution ** x.shape[1] > 10**7:
        raise ValueError(
            f"a {resolution}^{x.shape[1]} grid is too large; boundary distances by grid search "
            "are meant for 2-D (or 3-D) inputs"
        )
    lo, hi = x.min(dim=0).values, x.max(dim=0).values
    pad = margin * (hi - lo).clamp_min(1e-12)
    axes = [torch.linspace(float(a), float(b), resolution, dtype=x.dtype) for a, b in
            zip(lo - pad, hi + pad, strict=True)]  # fmt: skip
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, x.shape[1])


@torch.no_grad()
def boundary_distances(
    predict: Predict,
    x: torch.Tensor,
    *,
    resolution: int = 200,
    margin: float = 0.25,
    tol: float = 1e-5,
    chunk: int = 4096,
) -> torch.Tensor:
    """Distance of each point of ``x`` to the decision boundary of ``predict``.

    A ``resolution``^d grid covers the bounding box of ``x`` widened by ``margin`` of its size
    on each side. For each point, the nearest grid point predicted as another class is found,
    and the class change on the segment between them is located by bisection to ``tol``. A
    point with no other class on the grid gets ``inf``.
    """
    grid = _grid(x, resolution, margin).to(x.device)
    grid_cls = torch.cat([predict(g) for g in grid.split(chunk)])
    cls = torch.cat([predict(b) for b in x.split(chunk)])
    target = torch.empty_like(x)
    found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for c in cls.unique():
        rows = cls == c
        others = grid[grid_cls != c]
        if len(others) == 0:
            continue
        nearest = torch.cat([torch.cdist(b, others).argmin(dim=1) for b in x[rows].split(chunk)])
        target[rows] = others[nearest]
        found[rows] = True
    out = torch.full((len(x),), math.inf, dtype=x.dtype, device=x.device)
    if not found.any():
        return out
    start, end, own = x[found], target[found], cls[found]
    length = (end - start).norm(dim=1)
    lo = torch.zeros_like(length)  # fraction of the segment still of the point's own class
    hi = torch.ones_like(length)  # fraction already of another class
    steps = max(1, math.ceil(math.log2(float(length.max()) / tol)))
    for _ in range(steps):
        mid = (lo + hi) / 2
        probe = start + mid[:, None] * (end - start)
        same = torch.cat([predict(b) for b in probe.split(chunk)]) == own
        lo = torch.where(same, mid, lo)
        hi = torch.where(same, hi, mid)
    out[found] = (lo + hi) / 2 * length
    return out


def distance_summary(distances: torch.Tensor) -> dict[str, float]:
    """Mean and 5th percentile of the finite boundary distances, and how many were finite."""
    finite = distances[torch.isfinite(distances)].double()
    if len(finite) == 0:
        return {"mean": math.nan, "p5": math.nan, "n_finite": 0}
    return {
        "mean": float(finite.mean()),
        "p5": float(torch.quantile(finite, 0.05)),
        "n_finite": len(finite),
    }


@torch.no_grad()
def noise_accuracy(
    predict: Predict,
    x: torch.Tensor,
    labels: torch.Tensor,
    sigmas: Sequence[float] = (0.05, 0.1, 0.2),
    *,
    draws: int = 20,
    generator: torch.Generator | None = None,
) -> dict[float, float]:
    """Accuracy under input noise: for each σ, the mean over ``draws`` noisy copies of ``x``
    (x + σ·ε, ε ~ N(0, I)) of the fraction predicted as ``labels``."""
    out = {}
    for sigma in sigmas:
        hits = 0
        for _ in range(draws):
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
            hits += int((predict(x + sigma * noise) == labels).sum())
        out[float(sigma)] = hits / (draws * len(x))
    return out


def classifier_robustness(
    predict: Predict,
    x: torch.Tensor,
    labels: torch.Tensor,
    cfg: RobustnessConfig,
    generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """The two robustness numbers of §4.6 for one classifier on a test set: boundary
    distances (mean, 5th percentile, how many points have another class on the grid) and
    accuracy under Gaussian input noise for each σ of ``cfg``."""
    distances = boundary_distances(
        predict, x, resolution=cfg.grid_resolution, margin=cfg.grid_margin, tol=cfg.tol
    )
    summary = distance_summary(distances)
    noisy = noise_accuracy(
        predict, x, labels, cfg.sigmas, draws=cfg.noise_draws, generator=generator
    )
    return {
        "boundary_distance_mean": summary["mean"],
        "boundary_distance_p5": summary["p5"],
        "boundary_points": summary["n_finite"],
        "noise_accuracy": {f"{s:g}": acc for s, acc in noisy.items()},
    }


@torch.no_grad()
def classifier_snapshot(
    model: Any,
    x: torch.Tensor,
    labels: torch.Tensor,
    cfg: RobustnessConfig,
    generator: torch.Generator | None = None,
    solver: Any = None,
) -> dict[str, np.ndarray]:
    """The arrays of one row of Fig. 9 for a 2-D neural-ODE classifier
    (:class:`~pipeline_lib.classifier.NODEClassifier`):

    - ``grid_x``, ``grid_y`` (R,) and ``prob`` (R, R): the probability of class 1 over the test
      set's bounding box (widened by ``grid_margin``), whose 0.5 level is the decision boundary;
    - ``field`` (R, R, 2) and ``speed`` (R, R): the autonomous vector field f(z) and ‖f(z)‖ on
      the same grid (the state space);
    - ``times`` (S,), ``trajectories`` (S, M, 2) and ``trajectory_labels`` (M,): the states of
      M test points through depth t ∈ [0, T];
    - ``points`` (N, 2) and ``labels`` (N,): the test data.

    ``solver`` (a :class:`~pipeline_lib.flows.SolverConfig`; None = the model's) integrates
    the logits and trajectories, as for the robustness numbers beside them.
    """
    if x.shape[1] != 2:
        raise ValueError(f"the Fig. 9 snapshot needs 2-D inputs, got {x.shape[1]} dimensions")
    res = cfg.snapshot_resolution
    lo, hi = x.min(dim=0).values, x.max(dim=0).values
    pad = cfg.grid_margin * (hi - lo)
    gx = torch.linspace(float(lo[0] - pad[0]), float(hi[0] + pad[0]), res, dtype=x.dtype)
    gy = torch.linspace(float(lo[1] - pad[1]), float(hi[1] + pad[1]), res, dtype=x.dtype)
    yy, xx = torch.meshgrid(gy, gx, indexing="ij")
    grid = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1).to(x.device)
    prob = torch.softmax(model.logits(grid, solver), dim=1)[:, 1].reshape(res, res)
    t0 = torch.zeros((), device=x.device)
    field = model.field.net(t0, grid).reshape(res, res, 2)
    pick = torch.randperm(len(x), generator=generator)[: cfg.trajectories].to(x.device)
    times = torch.linspace(0.0, float(model.config.T), cfg.trajectory_steps)
    states = model.trajectory(x[pick], times, solver)
    return {
        "grid_x": gx.cpu().numpy(),
        "grid_y": gy.cpu().numpy(),
        "prob": prob.cpu().numpy(),
        "field": field.cpu().numpy(),
        "speed": field.norm(dim=-1).cpu().numpy(),
        "times": times.numpy(),
        "trajectories": states.cpu().numpy(),
        "trajectory_labels": labels[pick].cpu().numpy(),
        "points": x.cpu().numpy(),
        "labels": labels.cpu().numpy(),
    }
