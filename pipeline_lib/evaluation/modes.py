"""Mode collapse: the percentage of good-quality samples (Sparse Flows §4.4, Table 4).

Sparse Flows §4.4 measures mode collapse with a metric adopted from VEEGAN (Srivastava et al.
2017): draw samples from a trained flow and call a sample of *good quality* if it lies within
``n`` standard deviations (``n`` = 2, 3 or 5) of its nearest mode; the percentage of good
samples is reported per prune ratio in Table 4.

What "within n standard deviations" means here
----------------------------------------------
Each mode ``k`` is the Gaussian fitted to the *training* points with label ``k``
(:func:`fit_modes`): mean ``μ_k`` and covariance ``Σ_k``. The distance of a sample ``x`` to
mode ``k`` is its Mahalanobis distance

.. math:: r_k(x) = \\sqrt{(x - μ_k)^T Σ_k^{-1} (x - μ_k)},

i.e. the number of standard deviations along the direction of ``x − μ_k`` (for an isotropic
mode of std ``σ``, ``r = ‖x − μ‖ / σ``). The nearest mode is the one with the smallest ``r_k``,
and a sample is good at level ``n`` if that smallest distance is at most ``n``. The Mahalanobis
distance is invariant under affine changes of coordinates, so it does not matter whether the
modes and samples are in raw or standardized coordinates, as long as both use the same; the
pipeline uses the standardized coordinates the flow is trained in.

For a true sample of a ``d``-dimensional Gaussian, ``r²`` follows a χ² distribution with ``d``
degrees of freedom, so even a perfect model has only ``P(χ²_d ≤ n²)`` good samples. For the
2-D toy sets this is ``1 − exp(−n²/2)``: 86.47 % for ``n = 2``, 98.89 % for ``n = 3``, 99.9996 %
for ``n = 5``. This ceiling is reported next to the measured percentages (``ceiling_pct``); the
published values (at most 84.30 % and 96.85 % for the six Gaussians) lie below it.

Modes captured
--------------
Beyond the paper's percentage, :func:`good_sample_fraction` counts the modes a model covers.
Mode ``k`` is *captured* if the number of good samples (at ``capture_n_std``, default 3)
assigned to it is at least ``capture_share`` (default 10 %) of its expected share ``N · π_k``,
where ``N`` is the number of samples drawn and ``π_k`` the mode's frequency in the training
set (``N / K`` for the equal-size modes of ``gaussians`` and ``gaussianspiral``). A perfect
model puts about 99 % of its expected share on each mode; a collapsed mode gets close to none.

Example::

    modes = fit_modes(splits.train, splits.train_labels)
    metrics = good_sample_fraction(samples, modes, n_std=(2, 3))
    metrics["good_pct"]["3"], metrics["modes_captured"]

    metrics = evaluate_modes(model, splits, n_samples=20_000)   # samples the flow itself

References:
    Liebenwein, Hasani, Amini, Rus. *Sparse Flows: Pruning Continuous-depth Models.*
    NeurIPS 2021, §4.4 and Table 4.

    Srivastava, Valkov, Russell, Gutmann, Sutton. *VEEGAN: Reducing Mode Collapse in GANs
    using Implicit Variational Learning.* NeurIPS 2017.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from pipeline_lib.data.splits import DataSplits
from pipeline_lib.flows import ContinuousFlow, SolverConfig

__all__ = [
    "Modes",
    "evaluate_modes",
    "fit_modes",
    "gaussian_ceiling",
    "good_sample_fraction",
    "mahalanobis_to_modes",
    "nearest_mode",
]

DEFAULT_N_STD: tuple[float, ...] = (2.0, 3.0, 5.0)
"""Levels ``n`` of Table 4 (2 and 3 for the toy sets, 3 and 5 for MNIST)."""

_CHUNK_ELEMENTS = 2**24
"""Largest ``rows × K × d`` block of differences held at once (128 MiB in float64)."""


@dataclass
class Modes:
    """Gaussian modes of a data set: means, covariances and their Cholesky factors.

    Build it with :func:`fit_modes` from labelled training data, or directly from known
    moments (``Modes(means, covariances)``); the Cholesky factors and precisions are
    computed on construction. Everything is stored as float64 on the CPU.

    Arguments:
        means: ``(K, d)`` mode means.
        covariances: ``(K, d, d)`` symmetric positive-definite covariances.
        counts: ``(K,)`` training points per mode, used as mode weights ``π_k`` for
            "modes captured"; ``None`` means equal weights.
        labels: ``(K,)`` the data label of each mode (mode ``k`` has label ``labels[k]``);
            ``None`` means ``0..K-1``.

    Attributes:
        cholesky: ``(K, d, d)`` lower-triangular ``L_k`` with ``L_k L_kᵀ = Σ_k``.
        precisions: ``(K, d, d)`` inverse covariances ``Σ_k⁻¹``.
    """

    means: torch.Tensor
    covariances: torch.Tensor
    counts: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    cholesky: torch.Tensor = field(init=False, repr=False)
    precisions: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        means = torch.as_tensor(self.means).detach().to("cpu", torch.float64)
        covs = torch.as_tensor(self.covariances).detach().to("cpu", torch.float64)
        if means.ndim != 2 or means.shape[0] == 0:
            raise ValueError(
                f"Modes.means must have shape (K, d) with K ≥ 1, got {tuple(means.shape)}."
            )
        k, d = means.shape
        if covs.shape != (k, d, d):
            raise ValueError(
                f"Modes.covariances must have shape ({k}, {d}, {d}) to match the means, "
                f"got {tuple(covs.shape)}."
            )
        covs = 0.5 * (covs + covs.transpose(-1, -2))
        chol, info = torch.linalg.cholesky_ex(covs)
        if bool((info != 0).any()):
            bad = torch.nonzero(info).flatten().tolist()
            raise ValueError(
                f"Covariance of mode(s) {bad} is not positive definite (too few or degenerate "
                "points); give those modes more data or pass ridge > 0 to fit_modes."
            )
        self.means = means
        self.covariances = covs
        self.cholesky = chol
        self.precisions = torch.cholesky_inverse(chol)
        if self.counts is None:
            self.counts = torch.ones(k, dtype=torch.int64)
        else:
            self.counts = torch.as_tensor(self.counts).detach().to("cpu", torch.int64)
            if self.counts.shape != (k,) or bool((self.counts <= 0).any()):
                raise ValueError(f"Modes.counts must be {k} positive integers, got {self.counts}.")
        if self.labels is None:
            self.labels = torch.arange(k, dtype=torch.int64)
        else:
            self.labels = torch.as_tensor(self.labels).detach().to("cpu", torch.int64)
            if self.labels.shape != (k,):
                raise ValueError(
                    f"Modes.labels must have shape ({k},), got {tuple(self.labels.shape)}."
                )

    @property
    def n_modes(self) -> int:
        """Number of modes ``K``."""
        return int(self.means.shape[0])

    @property
    def dim(self) -> int:
        """Data dimension ``d``."""
        return int(self.means.shape[1])

    @property
    def weights(self) -> torch.Tensor:
        """Mode weights ``π_k = counts_k / Σ counts`` (float64, sums to 1)."""
        counts = self.counts.to(torch.float64)
        return counts / counts.sum()

    def to_dict(self) -> dict[str, Any]:
        """Plain lists, for JSON."""
        return {
            "labels": self.labels.tolist(),
            "counts": self.counts.tolist(),
            "means": self.means.tolist(),
            "covariances": self.covariances.tolist(),
        }


def fit_modes(x_train: torch.Tensor, labels: torch.Tensor, ridge: float = 0.0) -> Modes:
    """Fit one Gaussian per label to the training data (Sparse Flows §4.4).

    Mode ``k`` is the ``k``-th distinct label in increasing order; its mean is the mean of the
    training points with that label and its covariance their unbiased sample covariance.

    Arguments:
        x_train: ``(N, d)`` training data, in the coordinates the samples will be given in
            (for the pipeline: the standardized coordinates of :class:`DataSplits`).
        labels: ``(N,)`` integer mode labels.
        ridge: added to the diagonal of every covariance, for data whose modes are degenerate
            (e.g. constant pixels); ``0`` for the toy sets.

    Returns:
        :class:`Modes` with ``counts`` the training points per mode.
    """
    x = torch.as_tensor(x_train).detach().to("cpu", torch.float64)
    y = torch.as_tensor(labels).detach().to("cpu")
    if x.ndim != 2:
        raise ValueError(f"fit_modes: x_train must be (N, d), got shape {tuple(x.shape)}.")
    if y.shape != (x.shape[0],) or y.is_floating_point():
        raise ValueError(
            f"fit_modes: labels must be {x.shape[0]} integers (one per training row), got "
            f"{y.dtype} of shape {tuple(y.shape)}."
        )
    if not bool(torch.isfinite(x).all()):
        raise ValueError("fit_modes: x_train contains NaN or infinite values.")
    if ridge < 0:
        raise ValueError(f"fit_modes: ridge must be non-negative, got {ridge}.")
    values, index, counts = torch.unique(y.to(torch.int64), return_inverse=True, return_counts=True)
    d = x.shape[1]
    if bool((counts < 2).any()):
        few = values[counts < 2].tolist()
        raise ValueError(
            f"fit_modes: label(s) {few} have fewer than 2 training points, so no covariance "
            "can be estimated; use more training data."
        )
    k = values.shape[0]
    n_k = counts.to(torch.float64)
    sums = torch.zeros(k, d, dtype=torch.float64).index_add_(0, index, x)
    means = sums / n_k[:, None]
    centered = x - means[index]
    # One (d, d) product per mode: never materializes an (N, d, d) tensor of outer products.
    covariances = (
        torch.stack([centered[index == j].T @ centered[index == j] for j in range(k)])
        / (n_k - 1.0)[:, None, None]
    )
    if ridge:
        covariances = covariances + ridge * torch.eye(d, dtype=torch.float64)
    return Modes(means, covariances, counts=counts, labels=values)


def mahalanobis_to_modes(samples: torch.Tensor, modes: Modes) -> torch.Tensor:
    """Mahalanobis distance of every sample to every mode.

    Arguments:
        samples: ``(N, d)`` points.
        modes: the modes, same ``d``.

    Returns:
        ``(N, K)`` float64 distances ``r_k(x) = ‖L_k⁻¹ (x − μ_k)‖``; rows of non-finite samples
        are NaN or infinite.
    """
    x = _as_samples(samples, modes)
    n, k, d = x.shape[0], modes.n_modes, modes.dim
    out = torch.empty(n, k, dtype=torch.float64)
    rows = max(1, _CHUNK_ELEMENTS // (k * d))
    for start in range(0, n, rows):
        diff = x[start : start + rows, None, :] - modes.means  # (n, K, d)
        # Solve L_k y = diff for all modes at once: (K, d, d) against (K, d, n).
        white = torch.linalg.solve_triangular(modes.cholesky, diff.permute(1, 2, 0), upper=False)
        out[start : start + rows] = white.square().sum(dim=1).sqrt().T
    return out


def nearest_mode(samples: torch.Tensor, modes: Modes) -> tuple[torch.Tensor, torch.Tensor]:
    """The nearest mode of each sample by Mahalanobis distance.

    Returns:
        ``(index, distance)``: int64 ``(N,)`` mode indices (into ``modes``, not labels) and
        float64 ``(N,)`` distances to that mode. Samples with a non-finite coordinate get
        index ``-1`` and distance ``inf``.
    """
    x = _as_samples(samples, modes)
    finite = torch.isfinite(x).all(dim=1)
    distances = mahalanobis_to_modes(x, modes)
    distances[~finite] = math.inf
    dist, index = distances.min(dim=1)
    index[~finite] = -1
    return index, dist


def gaussian_ceiling(n_std: float, dim: int) -> float:
    """Fraction of true samples of a ``dim``-dimensional Gaussian within Mahalanobis radius ``n``.

    ``P(χ²_dim ≤ n²)``, the regularized lower incomplete gamma function ``P(dim/2, n²/2)``;
    for ``dim = 2`` it is ``1 − exp(−n²/2)`` (0.8647 at ``n = 2``, 0.9889 at ``n = 3``). This is
    the largest good-sample fraction a perfect model reaches in expectation.
    """
    a = torch.tensor(dim / 2.0, dtype=torch.float64)
    return float(torch.special.gammainc(a, torch.tensor(n_std**2 / 2.0, dtype=torch.float64)))


def good_sample_fraction(
    samples: torch.Tensor,
    modes: Modes,
    n_std: float | Sequence[float] = DEFAULT_N_STD,
    capture_n_std: float = 3.0,
    capture_share: float = 0.1,
) -> dict[str, Any]:
    """Percentage of good-quality samples and modes captured (Sparse Flows §4.4, Table 4).

    A sample is good at level ``n`` if its Mahalanobis distance to its nearest mode is at most
    ``n``. Non-finite samples are never good and belong to no mode; they count in the total
    ``N`` (the denominator of every percentage and share).

    Arguments:
        samples: ``(N, d)`` model samples, in the coordinates of ``modes``.
        modes: from :func:`fit_modes`.
        n_std: one level or several (Table 4: 2 and 3 for toy data, 3 and 5 for MNIST).
        capture_n_std: level at which good samples count towards capturing a mode.
        capture_share: mode ``k`` is captured if it has at least ``capture_share · N · π_k``
            good samples at ``capture_n_std`` (``π_k``: training frequency of the mode).

    Returns:
        A JSON-ready dict. Per-level entries are keyed by ``f"{n:g}"`` (``"2"``, ``"3"``,
        ``"2.5"``):

        - ``n_samples``, ``n_nonfinite``, ``n_modes``, ``dim``, ``n_std`` (list of levels),
          ``mode_labels`` (data label of each mode);
        - ``good_pct``: percentage of good samples per level (the Table 4 number);
        - ``ceiling_pct``: the percentage a perfect model reaches, :func:`gaussian_ceiling`;
        - ``good_counts_per_mode``: per level, ``K`` counts of good samples by nearest mode;
        - ``assigned_fraction``: ``K`` fractions of all ``N`` samples whose nearest mode is ``k``;
        - ``capture_n_std``, ``capture_share``, ``capture_threshold`` (``K`` minimum counts),
          ``captured`` (``K`` booleans) and ``modes_captured`` (their number).
    """
    levels = _levels(n_std)
    for name, value in (("capture_n_std", capture_n_std), ("capture_share", capture_share)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(
                f"good_sample_fraction: {name} must be a positive number, got {value}."
            )
    x = _as_samples(samples, modes)
    n = x.shape[0]
    if n == 0:
        raise ValueError("good_sample_fraction got no samples; draw at least one.")
    k = modes.n_modes
    index, dist = nearest_mode(x, modes)
    assigned = index >= 0
    assigned_counts = torch.bincount(index[assigned], minlength=k)

    def good_counts(level: float) -> torch.Tensor:
        good = assigned & (dist <= level)
        return torch.bincount(index[good], minlength=k)

    per_level = {_key(level): good_counts(level) for level in levels}
    capture_counts = good_counts(capture_n_std)
    threshold = capture_share * n * modes.weights
    captured = capture_counts.to(torch.float64) >= threshold
    return {
        "n_samples": n,
        "n_nonfinite": int((~assigned).sum()),
        "n_modes": k,
        "dim": modes.dim,
        "mode_labels": modes.labels.tolist(),
        "n_std": levels,
        "good_pct": {key: 100.0 * int(c.sum()) / n for key, c in per_level.items()},
        "ceiling_pct": {_key(lv): 100.0 * gaussian_ceiling(lv, modes.dim) for lv in levels},
        "good_counts_per_mode": {key: c.tolist() for key, c in per_level.items()},
        "assigned_fraction": (assigned_counts.to(torch.float64) / n).tolist(),
        "capture_n_std": float(capture_n_std),
        "capture_share": float(capture_share),
        "capture_threshold": threshold.tolist(),
        "captured": captured.tolist(),
        "modes_captured": int(captured.sum()),
    }


@torch.no_grad()
def evaluate_modes(
    model: ContinuousFlow,
    splits: DataSplits,
    n_samples: int = 20_000,
    n_std: float | Sequence[float] = DEFAULT_N_STD,
    solver: SolverConfig | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 5_000,
    trace: str | None = None,
    capture_n_std: float = 3.0,
    capture_share: float = 0.1,
    ridge: float = 0.0,
) -> dict[str, Any]:
    """Sample a flow and measure mode collapse against its training modes (Sparse Flows §4.4).

    Fits the modes to ``splits.train`` / ``splits.train_labels`` (:func:`fit_modes`), draws
    ``n_samples`` samples from ``model`` in batches without building a graph (in eval mode,
    restored afterwards), and returns :func:`good_sample_fraction` of them plus ``dataset``.
    Samples with NaN or infinite coordinates count as bad and are reported in ``n_nonfinite``.

    Arguments:
        model: the flow, trained on the standardized coordinates of ``splits``.
        splits: data with mode labels (toy mixtures).
        n_samples: samples to draw.
        n_std, capture_n_std, capture_share: see :func:`good_sample_fraction`.
        solver: solver for sampling (defaults to each block's training solver).
        generator: RNG for the base samples (and Hutchinson noise), on the model's device.
        batch_size: samples per call of :meth:`ContinuousFlow.sample`.
        trace: divergence estimator while sampling (``None``: the model's own); it only
            affects the log-density, which this metric does not use.
        ridge: see :func:`fit_modes`.
    """
    if not splits.has_labels or splits.train_labels is None:
        raise ValueError(
            f"evaluate_modes needs mode labels, but data set {splits.name!r} has none; the "
            "metric applies to data with modes (e.g. the gaussians / gaussianspiral toy sets)."
        )
    if n_samples < 1 or batch_size < 1:
        raise ValueError(
            f"evaluate_modes: n_samples and batch_size must be positive, got {n_samples} and "
            f"{batch_size}."
        )
    modes = fit_modes(splits.train, splits.train_labels, ridge=ridge)
    was_training = model.training
    model.eval()
    chunks: list[torch.Tensor] = []
    try:
        for start in range(0, n_samples, batch_size):
            size = min(batch_size, n_samples - start)
            x, _ = model.sample(
                size, solver=solver, generator=generator, trace=trace, with_log_prob=False
            )
            chunks.append(x.detach().to("cpu", torch.float64))
    finally:
        model.train(was_training)
    result = good_sample_fraction(
        torch.cat(chunks),
        modes,
        n_std=n_std,
        capture_n_std=capture_n_std,
        capture_share=capture_share,
    )
    return {"dataset": splits.name, **result}


def _as_samples(samples: torch.Tensor, modes: Modes) -> torch.Tensor:
    """Samples as a float64 CPU ``(N, d)`` tensor matching the modes, or a clear error."""
    x = torch.as_tensor(samples).detach().to("cpu", torch.float64)
    if x.ndim != 2 or x.shape[1] != modes.dim:
        raise ValueError(
            f"samples must have shape (N, {modes.dim}) to match the modes, got {tuple(x.shape)}."
        )
    return x


def _levels(n_std: float | Sequence[float]) -> list[float]:
    """The levels ``n`` as a non-empty list of positive floats."""
    levels = [float(n_std)] if isinstance(n_std, (int, float)) else [float(v) for v in n_std]
    if not levels or not all(math.isfinite(v) and v > 0 for v in levels):
        raise ValueError(f"n_std must be one or more positive numbers, got {n_std!r}.")
    return levels


def _key(level: float) -> str:
    """Dict key of a level: ``2.0 → "2"``, ``2.5 → "2.5"``."""
    return f"{level:g}"
