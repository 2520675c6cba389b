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
in closed form).

Example::

    d = boundary_distances(lambda x: model(x).argmax(1), data.test)
    distance_summary(d)          # {"mean": ..., "p5": ...}
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

__all__ = ["boundary_distances", "distance_summary", "noise_accuracy"]

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
