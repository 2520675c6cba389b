"""Hessian of a flow's NLL w.r.t. its unpruned parameters: λ_max, trace and condition number.

Sparse Flows §4.5 ("Pruning flattens the loss surface"), Table 5 and supplement Tables S11–S12
report, for pruned and unpruned flows, the largest eigenvalue λ_max(H), the trace tr(H) and the
condition number κ(H) = λ_max/λ_min of the Hessian H of the training loss with respect to the
parameters, computed with PyHessian (Yao et al., 2020) from Hessian-vector products (HVPs). §5
("Ensuring sparse Hessian computation") adds that the Hessian must be restricted to the
*unpruned* weights. This module reimplements those measurements:

* :class:`HessianOperator` — v ↦ M H M v, where H is the Hessian of the mean NLL
  −(1/N) Σ log p(x_i) over a fixed batch, and M is the diagonal 0/1 parameter mask
  (0 where a pruning mask or the parameter itself is 0, see :func:`parameter_masks`). Every
  vector that enters or leaves it has exact zeros at pruned coordinates, so the operator is the
  Hessian of the NLL as a function of the unpruned parameters alone, padded with zeros.
* :func:`power_iteration` / :func:`largest_eigenvalue` — λ_max by power iteration
  (PyHessian's ``eigenvalues``); :func:`lanczos` — Ritz values by the Lanczos method with full
  reorthogonalization, whose tridiagonal matrix also gives the stochastic Lanczos quadrature
  (SLQ) spectral density of Lin et al. (2016) and Ghorbani et al. (2019), PyHessian's ``density``.
* :func:`hutchinson_trace` — tr(H) = E[vᵀHv] over Rademacher vectors v (Hutchinson, 1989),
  with its standard error.
* :func:`ritz_statistics`, :func:`hessian_metrics` — the numbers of Table 5 / S11–S12.

**Exact definitions** — those of the released analysis (``paper/node/script/view_hessian.py``
and ``sparsehessian.py``, a PyHessian variant), computed per SLQ run and averaged over the
``lanczos_runs`` runs (n = number of unpruned parameters, H_u the n × n Hessian of the NLL
w.r.t. the unpruned parameters, θ_k the Ritz values of one m-step Lanczos run, ascending,
threshold = max(``positive_threshold``, ``positive_rtol`` · max |θ_k|), by default
:data:`ROUNDING_FACTOR` = 10 machine epsilons of the parameters' dtype times the largest
|Ritz value|, see :func:`rounding_rtol`):

* ``lambda_max`` — max θ_k, the largest Ritz value (Lanczos finds the extreme eigenvalues
  first, so with m = 100 it is λ_max(H_u) to many digits).
* ``trace`` — Σ{θ_k > threshold}, the sum of the positive Ritz values, which the released
  analysis reported as the trace. It is *not* tr(H_u): m Ritz values stand for n eigenvalues,
  so for m < n it is the sum of m representative nodes of the spectrum (tr(H_u) would weight
  each node by n times its quadrature weight), and negative curvature is left out.
* ``kappa`` — max θ_k / min{θ_k : θ_k > threshold}; ``lambda_min_positive`` is that
  denominator, ``lambda_min`` = min θ_k the raw smallest Ritz value and ``n_negative_ritz``
  the number of θ_k < −threshold. The released analysis used threshold 0, which makes κ
  meaningless whenever H_u has a null space (every pruned flow has one: e.g. the weights of a
  neuron whose output is masked): Ritz values at rounding level then give 10³⁴ where the dense
  eigendecomposition gives a few hundred. The HVPs are computed in the parameters' dtype, so
  an eigenvalue below a few machine epsilons of λ_max cannot be told from rounding: the HVP
  matrix of a float32 Gaussians flow (214 unpruned parameters) is asymmetric at 1.9·10⁻⁷ λ_max,
  and its κ at threshold 10⁻⁸ λ_max is 2.7·10⁷ in float32 against 2.7·10⁶ in float64. The
  default threshold, 10 ε (1.2·10⁻⁶ λ_max in float32), lies above that rounding level. A
  trained flow's spectrum has no gap there, though, so κ still depends on the threshold
  (7·10⁵ at 10⁻⁶, 6·10⁴ at 10⁻⁵ for that flow): compare flows at one threshold. With m ≪ n,
  λ_min_positive is a quadrature node, not the smallest positive eigenvalue of H_u, so κ
  also depends on m: compare flows at the same m. ``ritz_values`` and ``ritz_weights`` (per
  run) are kept in the result, so κ at another threshold is :func:`ritz_statistics` away.

Extra columns, not the paper's numbers: ``lambda_max_power`` — the largest (algebraic)
eigenvalue of H_u by power iteration (PyHessian's ``eigenvalues``; when the dominant eigenvalue
is negative a second, shifted iteration gives λ_max, see :func:`largest_eigenvalue`);
``trace_hutchinson`` — Hutchinson's unbiased estimate (1/K) Σ_k v_kᵀ H v_k of tr(H_u) with
masked Rademacher v_k, and ``trace_hutchinson_stderr`` its standard error. With
``lanczos_runs = 0`` they fill ``lambda_max`` and ``trace`` (``definition`` says which).

**How the HVPs are computed.** By double backpropagation through the ODE solver: one forward
solve, ``torch.autograd.grad(loss, params, create_graph=True)``, then one backward pass per HVP
through that gradient graph. The adjoint method cannot be used: torchdiffeq computes adjoint
gradients in a backward pass that runs without autograd, so they carry no graph to differentiate
again (the released analysis likewise swapped the adjoint for plain backpropagation). The solver
is therefore always run with ``adjoint=False``. Adaptive solvers choose their steps outside
autograd, so the derivatives are those of the discretized solve on the accepted step grid; since
the parameters, the data batch and the divergence noise are all fixed, that grid is the same in
every solve and the operator is deterministic and symmetric (up to rounding). A fixed-grid
solver (e.g. ``rk4`` with ``step_size``) can be passed instead to make the grid explicit.

**Divergence noise.** The log-density of an FFJORD flow with a Hutchinson divergence estimator
depends on the noise ε; on a fixed step grid the NLL is linear in εεᵀ, so the Hessian at a
fixed ε is an unbiased estimate of the Hessian of the exact NLL. The operator holds ε fixed:
every solve receives a ``torch.Generator`` seeded with ``noise_seed``. By default the flow's
own divergence is used, as released (Hutchinson for the paper's flows); ``divergence="exact"``
(cheap for 2-D data) removes the noise altogether.

**Differences from the released analysis** (its Hessian: all parameters that require grad,
coordinates that are exactly 0 masked out, one batch of a random 10 % of the training split,
the flow's Hutchinson divergence with noise fixed by building the graph once, 3 SLQ runs of
100 Lanczos steps): it normalized its start vector *before* masking it (so the first Lanczos
vector of a pruned flow was not a unit vector and T was not a projection of H_u), and it
averaged the three runs' Ritz values entry by entry, in the unsorted order ``torch.eig``
returned them, before taking max, positive sum and max/min-positive. Here the start vector is
normalized after masking and the statistics are computed per run and then averaged. The mask
is the pruning masks *and* the exact zeros (see :func:`parameter_masks`), which covers the
released mask.

References:
    | Liebenwein, Hasani, Amini, Rus. *Sparse Flows: Pruning Continuous-depth Models.*
      NeurIPS 2021, §4.5, §5, Table 5; supplement §S6, Tables S11–S12.
    | Yao, Gholami, Keutzer, Mahoney. *PyHessian: Neural Networks Through the Lens of the
      Hessian.* IEEE BigData 2020.
    | Ghorbani, Krishnan, Xiao. *An Investigation into Neural Net Optimization via Hessian
      Eigenvalue Density.* ICML 2019.
    | Lin, Saad, Yang. *Approximating Spectral Densities of Large Matrices.* SIAM Review 2016.
    | Hutchinson. *A Stochastic Estimator of the Trace of the Influence Matrix for Laplacian
      Smoothing Splines.* Communications in Statistics 1989.

Example::

    flow = build_flow(FlowConfig(dim=2, hidden_dims=(128, 128), activation="sigmoid"))
    metrics = hessian_metrics(flow, x_train)  # 10 % of x_train, SLQ 100 steps x 3 runs
    metrics["lambda_max"], metrics["trace"], metrics["kappa"]
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

import torch
from torch import nn

from pipeline_lib.flows import SolverConfig
from pipeline_lib.pruning import BIAS_MASK, WEIGHT_MASK, prunable_layers

__all__ = [
    "DenseOperator",
    "HessianConfig",
    "HessianOperator",
    "LanczosResult",
    "PowerIterationResult",
    "SymmetricOperator",
    "TraceEstimate",
    "hessian_metrics",
    "hutchinson_trace",
    "lanczos",
    "largest_eigenvalue",
    "parameter_masks",
    "power_iteration",
    "ritz_statistics",
]

log = logging.getLogger("sparseflows.hessian")

DIVERGENCES = (None, "exact", "hutchinson")


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class HessianConfig:
    """Settings of :func:`hessian_metrics`.

    The defaults are the released analysis (``paper/node/script/view_hessian.py``): one fixed
    batch of a random 10 % of the training split, the flow's own divergence estimator (the
    released flows use Hutchinson) with fixed noise, and 3 SLQ runs of 100 Lanczos steps, from
    which λ_max, the trace and κ are taken. Power iteration and Hutchinson's trace run beside
    them as extra columns.

    Arguments:
        enabled: whether the workflow evaluates the Hessian of every checkpoint
            (:func:`hessian_metrics` itself ignores it).
        fraction: the share of the data passed to :func:`hessian_metrics` (the training split)
            in the batch, ``int(fraction · N)`` random points (seeded by ``seed``), as released.
        num_points: a fixed number of points instead (overrides ``fraction``); ``None`` and
            ``fraction=None`` together take all of the data.
        power_iters: maximum power iterations for ``lambda_max_power`` (0 skips them).
            PyHessian: 100.
        power_tol: stop when the Rayleigh quotient changes by less than this, relatively.
        lanczos_steps: Lanczos steps m per SLQ run (capped at the number of unpruned
            parameters). Released: 100.
        lanczos_runs: independent SLQ runs (random Rademacher starts); the Ritz statistics are
            averaged over runs. Released: 3. 0 skips Lanczos (then λ_max and the trace come
            from power iteration and Hutchinson, and κ is NaN).
        trace_samples: Rademacher probes for ``trace_hutchinson`` (0 skips it).
        seed: seed of the data subset and of the probe / start vectors.
        noise_seed: seed of the flow's Hutchinson divergence noise, held fixed in every solve.
        solver: ODE solver for the Hessian (``None``: each block's own); ``adjoint`` is always
            switched off (see the module docstring).
        divergence: ``"exact"`` (noise-free operator), ``"hutchinson"`` (fixed noise), or
            ``None`` for the flow's own setting (the default, as released).
        reuse_graph: build the gradient graph once and backpropagate through it for every HVP
            (fast); ``False`` recomputes solve and gradient per HVP (less memory, slower).
        positive_threshold: Ritz values above this count as positive for κ and the trace,
            below its negative as negative.
        positive_rtol: the same, relative to the largest |Ritz value| of the run; the larger
            of the two thresholds applies. A Hessian with an exact null space (e.g. weights
            that feed only pruned paths) has Ritz values at rounding level around 0, which
            make κ meaningless (the released analysis used 0). ``None`` (the default):
            :func:`rounding_rtol` of the parameters' dtype, 10 machine epsilons, which
            excludes them.
        params: names (as in ``model.named_parameters()``) of the parameters to differentiate
            w.r.t.; ``None`` for all parameters that require grad.
    """

    enabled: bool = True
    fraction: float | None = 0.1
    num_points: int | None = None
    power_iters: int = 100
    power_tol: float = 1e-4
    lanczos_steps: int = 100
    lanczos_runs: int = 3
    trace_samples: int = 100
    seed: int = 0
    noise_seed: int = 0
    solver: SolverConfig | None = None
    divergence: str | None = None
    reuse_graph: bool = True
    positive_threshold: float = 0.0
    positive_rtol: float | None = None
    params: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.num_points is not None and self.num_points < 1:
            raise ValueError(f"hessian.num_points must be >= 1 or null; got {self.num_points!r}")
        if self.fraction is not None and not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"hessian.fraction must be in (0, 1] or null; got {self.fraction!r}")
        for name in ("power_iters", "lanczos_steps", "lanczos_runs", "trace_samples"):
            if getattr(self, name) < 0:
                raise ValueError(f"hessian.{name} must be >= 0; got {getattr(self, name)!r}")
        if self.lanczos_runs > 0 and self.lanczos_steps < 1:
            raise ValueError("hessian.lanczos_steps must be >= 1 when hessian.lanczos_runs > 0")
        if not self.power_tol > 0:
            raise ValueError(f"hessian.power_tol must be positive; got {self.power_tol!r}")
        if self.divergence not in DIVERGENCES:
            raise ValueError(
                f"hessian.divergence must be 'exact', 'hutchinson' or null; got {self.divergence!r}"
            )
        if self.positive_threshold < 0 or (
            self.positive_rtol is not None and self.positive_rtol < 0
        ):
            raise ValueError("hessian.positive_threshold and hessian.positive_rtol must be >= 0")
        if self.power_iters == 0 and self.lanczos_runs == 0:
            raise ValueError("set hessian.lanczos_runs (or hessian.power_iters) > 0 to get λ_max")
        if self.params is not None:
            object.__setattr__(self, "params", tuple(self.params))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HessianConfig:
        """Build from a config mapping (``solver`` may be a nested mapping)."""
        d = dict(d)
        solver = d.pop("solver", None)
        if solver is not None and not isinstance(solver, SolverConfig):
            solver = SolverConfig(**solver)
        return cls(solver=solver, **d)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable form, inverse of :meth:`from_dict`."""
        d = asdict(self)
        d["params"] = list(self.params) if self.params is not None else None
        return d


# --------------------------------------------------------------------------- operators


class SymmetricOperator(Protocol):
    """A symmetric linear map on flat float64 vectors, restricted to ``mask``'s support.

    ``mask`` is a flat 0/1 float64 vector; ``op(v)`` must return ``mask * A (mask * v)``.
    """

    mask: torch.Tensor

    def __call__(self, v: torch.Tensor) -> torch.Tensor: ...


class DenseOperator:
    """An explicit symmetric matrix as a :class:`SymmetricOperator` (for checks and examples).

    Arguments:
        matrix: (n, n) symmetric matrix.
        mask: optional flat 0/1 vector of length n (default: all ones).
    """

    def __init__(self, matrix: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        self.matrix = matrix.to(torch.float64)
        n = self.matrix.shape[0]
        ones = torch.ones(n, dtype=torch.float64, device=matrix.device)
        self.mask = ones if mask is None else (mask.reshape(-1) != 0).to(ones)
        self.n_hvp = 0

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        self.n_hvp += 1
        return self.mask * (self.matrix @ (self.mask * v.to(torch.float64)))


def parameter_masks(
    model: nn.Module, names: Sequence[str] | None = None
) -> tuple[list[str], list[nn.Parameter], list[torch.Tensor]]:
    """The parameters the Hessian is taken w.r.t., with their 0/1 pruning masks.

    All parameters that require grad (vector-field weights and biases, the dense concatsquash
    time-gating layers, a trainable end time), or those named in ``names``. A coordinate is
    masked out where its pruning mask (``weight_mask`` / ``bias_mask``) is 0 *or* its value
    is exactly 0: the released analysis masks exactly the zero coordinates, which also covers
    the rows of ``hyper_gate``/``hyper_bias`` that structured pruning zeroes without a mask.
    The biases of removed neurons stay (they are nonzero, as in the released analysis); they
    feed only masked columns, so they add exact zeros to the spectrum, which κ's threshold
    leaves out.

    Returns:
        ``(names, params, masks)`` in ``named_parameters()`` order; masks are 0/1 tensors of the
        parameters' shapes and dtypes.
    """
    mask_of: dict[int, torch.Tensor] = {}
    for _, module in prunable_layers(model):
        weight_mask = getattr(module, WEIGHT_MASK, None)
        if weight_mask is not None:
            mask_of[id(module.weight)] = weight_mask
        bias_mask = getattr(module, BIAS_MASK, None)
        if bias_mask is not None and isinstance(getattr(module, "bias", None), nn.Parameter):
            mask_of[id(module.bias)] = bias_mask
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if names is not None:
        wanted = set(names)
        unknown = wanted - {n for n, _ in named}
        if unknown:
            raise ValueError(
                f"unknown or frozen parameters {sorted(unknown)}; choose among "
                f"{[n for n, _ in named]}"
            )
        named = [(n, p) for n, p in named if n in wanted]
    if not named:
        raise ValueError(f"{type(model).__name__} has no parameters that require grad")
    masks = []
    for _, p in named:
        mask = mask_of.get(id(p))
        live = p.detach() != 0
        masks.append((live if mask is None else live & (mask != 0)).to(p.dtype))
    return [n for n, _ in named], [p for _, p in named], masks


@contextmanager
def _without_adjoint(model: nn.Module) -> Iterator[None]:
    """Temporarily switch the model's own solvers (every CNF block's, a classifier's) to plain
    backpropagation."""
    blocks = [m for m in model.modules() if isinstance(getattr(m, "solver", None), SolverConfig)]
    saved = [b.solver for b in blocks]
    try:
        for b in blocks:
            b.solver = replace(b.solver, adjoint=False)
        yield
    finally:
        for b, s in zip(blocks, saved, strict=True):
            b.solver = s


class HessianOperator:
    """Hessian-vector products of a flow's mean NLL, restricted to the unpruned parameters.

    ``op(v)`` returns ``M H M v`` as a flat float64 vector, where H is the Hessian of
    ``-model(x).log_prob.mean()`` w.r.t. the selected parameters (see :func:`parameter_masks`)
    at their current values and M the 0/1 mask; pruned coordinates of the result are exactly 0.
    The batch ``x``, the divergence noise (a generator re-seeded with ``noise_seed`` for every
    solve) and, consequently, the adaptive step grid are fixed, so equal inputs give equal
    outputs (bit for bit where the kernels are deterministic; multi-threaded BLAS that adapts
    its thread count to the machine's load, or GPU atomics, can change float32 results at the
    rounding level). With ``reuse_graph`` the graph is built once, at construction: build a
    new operator after changing the parameters.

    Arguments:
        model: a :class:`~pipeline_lib.flows.ContinuousFlow` (any module mapping ``x`` to an
            object with ``log_prob`` under the same keyword arguments works).
        x: the data batch, shape (N, d), on the model's device.
        solver: solver override; ``adjoint`` is forced off (default: each block's own solver).
        divergence: ``"exact"``, ``"hutchinson"`` or ``None`` (the flow's own setting).
        noise_seed: seed of the Hutchinson divergence noise.
        params: parameter names to differentiate w.r.t. (default: all that require grad).
        reuse_graph: keep one gradient graph and backpropagate through it for every HVP
            (``retain_graph``); otherwise recompute the solve and gradient per HVP.

    Attributes:
        mask: flat 0/1 float64 mask over all selected parameters (length ``numel``).
        dim: number of unpruned parameters (nonzeros of ``mask``), the dimension of H_u.
        dtype: the least precise dtype of the selected parameters, at whose level the HVPs
            round (:func:`rounding_rtol`).
        loss_value: the NLL at the current parameters (nats per sample).
        n_hvp, seconds: HVPs computed so far and seconds spent (graph building included).
    """

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        solver: SolverConfig | None = None,
        divergence: str | None = None,
        noise_seed: int = 0,
        params: Sequence[str] | None = None,
        reuse_graph: bool = True,
    ) -> None:
        if divergence not in DIVERGENCES:
            raise ValueError(
                f"divergence must be 'exact', 'hutchinson' or None; got {divergence!r}"
            )
        if x.ndim < 2 or x.shape[0] == 0:
            raise ValueError(f"x must be a non-empty batch of shape (N, d); got {tuple(x.shape)}")
        self.model = model
        self.x = x.detach()
        self.solver = None if solver is None else replace(solver, adjoint=False)
        self.divergence = divergence
        self.noise_seed = int(noise_seed)
        self.reuse_graph = reuse_graph
        self.names, self.params, masks = parameter_masks(model, params)
        self._shapes = [p.shape for p in self.params]
        self._sizes = [p.numel() for p in self.params]
        device = self.params[0].device
        self.mask = torch.cat([m.reshape(-1) for m in masks]).to(device, torch.float64)
        # the least precise parameter dtype: the HVPs round at its level (see rounding_rtol)
        self.dtype = max((p.dtype for p in self.params), key=lambda d: torch.finfo(d).eps)
        self.numel = self.mask.numel()
        self.dim = int(self.mask.count_nonzero())
        self.n_hvp = 0
        self.seconds = 0.0
        self.loss_value = math.nan
        self._grads: list[torch.Tensor] | None = None
        if reuse_graph:
            start = time.perf_counter()
            self._grads = self._gradient()
            self.seconds += time.perf_counter() - start

    def loss(self) -> torch.Tensor:
        """The mean NLL of the fixed batch with the fixed noise, with a graph to the parameters."""
        generator = torch.Generator(device=self.x.device).manual_seed(self.noise_seed)
        with _without_adjoint(self.model), torch.enable_grad():
            out = self.model(self.x, solver=self.solver, trace=self.divergence, generator=generator)
            return -out.log_prob.mean()

    def _gradient(self) -> list[torch.Tensor]:
        """Gradient of the loss with ``create_graph`` (zeros for parameters the loss ignores)."""
        loss = self.loss()
        self.loss_value = float(loss.detach())
        grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        return [
            g if g is not None else torch.zeros_like(p)
            for g, p in zip(grads, self.params, strict=True)
        ]

    def unflatten(self, v: torch.Tensor) -> list[torch.Tensor]:
        """Split a flat vector into tensors shaped (and typed) like the parameters."""
        return [
            c.view(shape).to(p.dtype)
            for c, shape, p in zip(
                torch.split(v, self._sizes), self._shapes, self.params, strict=True
            )
        ]

    def flatten(self, tensors: Sequence[torch.Tensor | None]) -> torch.Tensor:
        """Concatenate per-parameter tensors (``None`` = zeros) into a flat float64 vector."""
        return torch.cat(
            [
                (torch.zeros_like(p) if t is None else t).reshape(-1).to(torch.float64)
                for t, p in zip(tensors, self.params, strict=True)
            ]
        )

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        v = v.reshape(-1)
        if v.numel() != self.numel:
            raise ValueError(f"expected a vector of {self.numel} entries, got {v.numel()}")
        start = time.perf_counter()
        v = v.to(self.mask.device, torch.float64) * self.mask
        grads = self._grads if self.reuse_graph else self._gradient()
        assert grads is not None
        pairs = [(g, u) for g, u in zip(grads, self.unflatten(v), strict=True) if g.requires_grad]
        if pairs:
            hv = torch.autograd.grad(
                [g for g, _ in pairs],
                self.params,
                grad_outputs=[u for _, u in pairs],
                retain_graph=self.reuse_graph,
                allow_unused=True,
            )
            out = self.flatten(hv) * self.mask
        else:  # the loss is at most linear in the parameters
            out = torch.zeros_like(v)
        self.n_hvp += 1
        self.seconds += time.perf_counter() - start
        return out


# --------------------------------------------------------------------------- random vectors


def _rademacher(mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """±1 on the mask's support, 0 elsewhere (drawn on the CPU, so devices agree)."""
    bits = torch.randint(0, 2, (mask.numel(),), generator=generator, dtype=torch.int64)
    return (bits.to(torch.float64) * 2 - 1).to(mask.device) * mask


def _gaussian(mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    v = torch.randn(mask.numel(), generator=generator, dtype=torch.float64)
    return v.to(mask.device) * mask


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


# --------------------------------------------------------------------------- power iteration


@dataclass
class PowerIterationResult:
    """Eigenvalue estimate (Rayleigh quotient) of a unit vector, the vector, and the cost.

    ``residual`` = ‖Av − λv‖: A has an eigenvalue within that distance of λ (A symmetric), an
    a-posteriori error bound that, unlike the stopping rule, does not depend on the spectral gap.
    """

    eigenvalue: float
    eigenvector: torch.Tensor
    iterations: int
    converged: bool
    n_hvp: int
    residual: float = math.nan


def power_iteration(
    op: SymmetricOperator,
    max_iters: int = 100,
    tol: float = 1e-4,
    generator: torch.Generator | None = None,
    shift: float = 0.0,
) -> PowerIterationResult:
    """Dominant eigenvalue of ``op − shift·I`` on the mask's support, by power iteration.

    Starting from a masked Gaussian vector, iterate v ← (A v)/‖A v‖ and return the Rayleigh
    quotient vᵀAv. It converges to the eigenvalue of **largest magnitude, with its sign** (at
    rate |λ₂/λ₁| per step); it stops when the quotient changes by less than ``tol`` relative
    to its magnitude, or after ``max_iters`` HVPs (PyHessian's ``eigenvalues`` with ``top_n=1``).
    When |λ₂/λ₁| is close to 1 that rule can stop well before the quotient is ``tol``-accurate;
    the returned ``residual`` bounds the actual error, and :func:`lanczos` reaches the extreme
    eigenvalues in far fewer HVPs.

    Arguments:
        op: the (masked) operator, e.g. a :class:`HessianOperator`.
        max_iters: maximum number of HVPs.
        tol: relative tolerance on successive Rayleigh quotients.
        generator: RNG for the start vector.
        shift: subtract ``shift`` from the spectrum (used by :func:`largest_eigenvalue`).
    """
    if max_iters < 1:
        raise ValueError(f"power iteration needs max_iters >= 1; got {max_iters!r}")
    mask = op.mask
    generator = generator or _generator(0)
    v = _gaussian(mask, generator)
    v = v / v.norm()
    eigenvalue = math.nan
    residual = math.nan
    converged = False
    iterations = 0
    while iterations < max_iters:
        iterations += 1
        w = op(v) - shift * v
        previous, eigenvalue = eigenvalue, float(v @ w)
        residual = float((w - eigenvalue * v).norm())
        if math.isfinite(previous) and abs(eigenvalue - previous) <= tol * abs(eigenvalue):
            converged = True
            break
        norm = w.norm()
        if norm == 0:  # v lies in the null space of the (masked) operator
            converged = True
            break
        if iterations < max_iters:
            v = w / norm
    return PowerIterationResult(eigenvalue, v, iterations, converged, iterations, residual)


def largest_eigenvalue(
    op: SymmetricOperator,
    max_iters: int = 100,
    tol: float = 1e-4,
    generator: torch.Generator | None = None,
) -> PowerIterationResult:
    """Largest *algebraic* eigenvalue λ_max by power iteration, shifting when necessary.

    First power iteration gives the dominant eigenvalue λ_dom (largest magnitude). If
    λ_dom ≥ 0 it is λ_max. Otherwise λ_dom is the most negative eigenvalue, the spectrum of
    A − λ_dom·I lies in [≈0, λ_max − λ_dom], and a second power iteration on it gives
    μ = λ_max − λ_dom, so λ_max = μ + λ_dom. ``n_hvp`` counts both runs.
    """
    generator = generator or _generator(0)
    first = power_iteration(op, max_iters, tol, generator)
    if not first.eigenvalue < 0:
        return first
    shifted = power_iteration(op, max_iters, tol, generator, shift=first.eigenvalue)
    return PowerIterationResult(
        eigenvalue=shifted.eigenvalue + first.eigenvalue,
        eigenvector=shifted.eigenvector,
        iterations=first.iterations + shifted.iterations,
        converged=first.converged and shifted.converged,
        n_hvp=first.n_hvp + shifted.n_hvp,
        residual=shifted.residual,
    )


# --------------------------------------------------------------------------- Hutchinson trace


@dataclass
class TraceEstimate:
    """Hutchinson trace estimate: mean of vᵀHv, its standard error, the samples, the cost."""

    mean: float
    stderr: float
    samples: torch.Tensor
    n_hvp: int


def hutchinson_trace(
    op: SymmetricOperator, samples: int = 100, generator: torch.Generator | None = None
) -> TraceEstimate:
    """tr(A) on the mask's support by Hutchinson's estimator with Rademacher probes.

    Each probe v has independent ±1 entries on the unpruned coordinates and 0 on the pruned
    ones, so E[vᵀAv] = Σ_{i unpruned} A_ii, the trace of the restricted Hessian. Returns the mean
    of ``samples`` draws and its standard error (sample std / √samples; NaN for one sample).
    """
    if samples < 1:
        raise ValueError(f"Hutchinson's trace needs samples >= 1; got {samples!r}")
    generator = generator or _generator(0)
    values = torch.empty(samples, dtype=torch.float64)
    for k in range(samples):
        v = _rademacher(op.mask, generator)
        values[k] = float(v @ op(v))
    stderr = float(values.std(unbiased=True) / math.sqrt(samples)) if samples > 1 else math.nan
    return TraceEstimate(float(values.mean()), stderr, values, samples)


# --------------------------------------------------------------------------- Lanczos


@dataclass
class LanczosResult:
    """Lanczos tridiagonalization and its Ritz values.

    Attributes:
        ritz_values: eigenvalues of the tridiagonal T, ascending (float64).
        weights: squared first components of T's eigenvectors: the SLQ quadrature weights of
            the spectral density (Lin et al. 2016; Ghorbani et al. 2019); they sum to 1.
        alphas, betas: diagonal and off-diagonal of T (a 0 in ``betas`` marks a restart).
        n_hvp: HVPs used (= number of steps).
        restarts: restarts after an invariant subspace was found.
    """

    ritz_values: torch.Tensor
    weights: torch.Tensor
    alphas: torch.Tensor
    betas: torch.Tensor
    n_hvp: int
    restarts: int


def lanczos(
    op: SymmetricOperator,
    m: int = 100,
    generator: torch.Generator | None = None,
    breakdown_tol: float = 1e-10,
) -> LanczosResult:
    """m-step Lanczos with full reorthogonalization on the mask's support.

    Starts from a normalized masked Rademacher vector (as SLQ does); every new Lanczos vector
    is orthogonalized twice against all previous ones (classical Gram–Schmidt, "twice is
    enough"), so T = QᵀAQ stays accurate and no spurious copies of converged Ritz values
    appear. If β_j falls below ``breakdown_tol`` times the largest |α|, β seen (an invariant
    subspace), the iteration restarts from a random vector orthogonal to all previous ones, so
    with ``m`` equal to the number of unpruned parameters the Ritz values are the full
    spectrum. ``m`` is capped at that number.
    """
    if m < 1:
        raise ValueError(f"Lanczos needs m >= 1 steps; got {m!r}")
    mask = op.mask
    n = int(mask.count_nonzero())
    if n == 0:
        raise ValueError("the operator has no unpruned coordinates; nothing to decompose")
    m = min(int(m), n)
    generator = generator or _generator(0)
    Q = torch.zeros(m, mask.numel(), dtype=torch.float64, device=mask.device)
    alphas: list[float] = []
    betas: list[float] = []
    restarts = 0
    scale = 0.0
    q = _rademacher(mask, generator)
    q = q / q.norm()
    beta = 0.0
    steps = 0
    for j in range(m):
        Q[j] = q
        w = op(q)
        steps += 1
        alpha = float(q @ w)
        alphas.append(alpha)
        w = w - alpha * q
        if j > 0:
            w = w - beta * Q[j - 1]
        basis = Q[: j + 1]
        for _ in range(2):
            w = w - basis.T @ (basis @ w)
        w = w * mask
        scale = max(scale, abs(alpha), beta)
        if j == m - 1:
            break
        beta = float(w.norm())
        if beta <= breakdown_tol * max(scale, 1e-300):
            r = _gaussian(mask, generator)
            for _ in range(2):
                r = r - basis.T @ (basis @ r)
            r = r * mask
            if float(r.norm()) <= breakdown_tol:
                break  # the Krylov vectors already span the whole support
            restarts += 1
            beta = 0.0
            q = r / r.norm()
        else:
            q = w / beta
        betas.append(beta)
    a = torch.tensor(alphas, dtype=torch.float64)
    b = torch.tensor(betas[: len(alphas) - 1], dtype=torch.float64)
    T = torch.diag(a) + torch.diag(b, 1) + torch.diag(b, -1)
    values, vectors = torch.linalg.eigh(T)
    return LanczosResult(values, vectors[0].pow(2), a, b, steps, restarts)


ROUNDING_FACTOR = 10.0
"""By default Ritz values within ±``ROUNDING_FACTOR`` · ε · max |θ| of 0 count as zero."""


def rounding_rtol(dtype: torch.dtype) -> float:
    """The default relative κ threshold: :data:`ROUNDING_FACTOR` machine epsilons of ``dtype``
    (1.19·10⁻⁶ for float32, 2.2·10⁻¹⁵ for float64), the HVPs' rounding level relative to
    max |θ| with a margin (module docstring). Measured for float32 CPU arithmetic; half
    precision, or TF32 convolutions on a GPU, round more coarsely than their dtype says, so
    set ``positive_rtol`` by hand there."""
    return ROUNDING_FACTOR * torch.finfo(dtype).eps


def ritz_statistics(
    ritz_values: torch.Tensor | Sequence[float],
    positive_threshold: float = 0.0,
    positive_rtol: float = 0.0,
) -> dict[str, float | int]:
    """λ_max, λ_min, κ and friends from one set of Ritz values (definitions: module docstring).

    Returns a dict with ``lambda_max`` (max θ), ``lambda_min`` (min θ), ``lambda_min_positive``
    (min θ > threshold; NaN if none), ``kappa`` = lambda_max / lambda_min_positive (NaN if no
    positive value), ``n_negative_ritz`` (#θ < −threshold), ``ritz_positive_sum``
    (Σ θ > threshold) and ``n_ritz``. Ritz values within ±threshold of 0 count as zero, where
    threshold = max(positive_threshold, positive_rtol · max |θ|).
    """
    theta = torch.as_tensor(ritz_values, dtype=torch.float64).reshape(-1)
    if theta.numel() == 0:
        raise ValueError("no Ritz values given")
    positive_threshold = max(positive_threshold, positive_rtol * float(theta.abs().max()))
    positive = theta[theta > positive_threshold]
    lam_max = float(theta.max())
    lam_min_pos = float(positive.min()) if positive.numel() else math.nan
    return {
        "lambda_max": lam_max,
        "lambda_min": float(theta.min()),
        "lambda_min_positive": lam_min_pos,
        "kappa": lam_max / lam_min_pos if positive.numel() else math.nan,
        "n_negative_ritz": int((theta < -positive_threshold).sum()),
        "ritz_positive_sum": float(positive.sum()),
        "n_ritz": int(theta.numel()),
    }


# --------------------------------------------------------------------------- metrics


def _select_points(
    x: torch.Tensor, num_points: int | None, fraction: float | None, seed: int
) -> torch.Tensor:
    """``num_points`` random rows of ``x``, else ``int(fraction · N)`` (at least 1), else all."""
    if num_points is None and fraction is not None:
        num_points = max(1, int(fraction * x.shape[0]))
    if num_points is None or num_points >= x.shape[0]:
        return x
    index = torch.randperm(x.shape[0], generator=_generator(seed))[:num_points]
    return x[index.to(x.device)]


def _timed(op: HessianOperator, fn: Callable[[], Any]) -> tuple[Any, int, float]:
    n0, t0 = op.n_hvp, time.perf_counter()
    result = fn()
    return result, op.n_hvp - n0, time.perf_counter() - t0


def hessian_metrics(
    model: nn.Module, x: torch.Tensor, cfg: HessianConfig | None = None
) -> dict[str, Any]:
    """Eigenanalysis of the NLL Hessian of Sparse Flows Table 5 / Tables S11–S12.

    Builds a :class:`HessianOperator` on ``cfg.fraction`` (or ``cfg.num_points``) of ``x`` and
    runs SLQ (``lanczos_runs`` × ``lanczos_steps``: λ_max, trace, κ, as released), power
    iteration (``lambda_max_power``) and Hutchinson (``trace_hutchinson``). Exact definitions
    of every key are in the module docstring.

    Returns:
        A JSON-serializable dict: ``lambda_max``, ``trace``, ``kappa`` (the released
        definitions), ``lambda_min_positive``, ``lambda_min``, ``n_negative_ritz``,
        ``lambda_max_power``, ``power_converged``, ``power_residual`` (‖Hv − λv‖, an error
        bound), ``trace_hutchinson``, ``trace_hutchinson_stderr``, ``nll`` (the loss at the
        evaluation point), ``n_params`` (selected parameters), ``n_params_unpruned``,
        ``n_points``, ``definition``, ``kappa_rtol`` (the relative threshold used), the
        costs ``n_hvp`` and ``seconds`` (total) with their split
        ``n_hvp_{power,trace,lanczos}`` / ``seconds_{setup,power,trace,lanczos}``, and last
        ``ritz_values`` / ``ritz_weights`` (per SLQ run: ascending Ritz values and their
        quadrature weights, from which κ at another threshold follows). Metrics of a skipped
        stage are NaN.
    """
    cfg = cfg or HessianConfig()
    start = time.perf_counter()
    data = _select_points(x, cfg.num_points, cfg.fraction, cfg.seed)
    op = HessianOperator(
        model,
        data,
        solver=cfg.solver,
        divergence=cfg.divergence,
        noise_seed=cfg.noise_seed,
        params=cfg.params,
        reuse_graph=cfg.reuse_graph,
    )
    seconds_setup = time.perf_counter() - start
    nan = math.nan
    out: dict[str, Any] = {
        "lambda_max": nan,
        "trace": nan,
        "kappa": nan,
        "lambda_min_positive": nan,
        "lambda_min": nan,
        "n_negative_ritz": -1,
        "lambda_max_power": nan,
        "power_converged": False,
        "power_residual": nan,
        "trace_hutchinson": nan,
        "trace_hutchinson_stderr": nan,
        "definition": "slq" if cfg.lanczos_runs > 0 else "power+hutchinson",
    }
    ritz_values: list[list[float]] = []
    ritz_weights: list[list[float]] = []

    n_lanczos, s_lanczos = 0, 0.0
    rtol = cfg.positive_rtol if cfg.positive_rtol is not None else rounding_rtol(op.dtype)
    out["kappa_rtol"] = rtol
    if cfg.lanczos_runs > 0:
        runs = []
        for k in range(cfg.lanczos_runs):
            result, n_k, s_k = _timed(
                op, lambda k=k: lanczos(op, cfg.lanczos_steps, _generator(cfg.seed + 3 + k))
            )
            runs.append(ritz_statistics(result.ritz_values, cfg.positive_threshold, rtol))
            ritz_values.append(result.ritz_values.tolist())
            ritz_weights.append(result.weights.tolist())
            n_lanczos, s_lanczos = n_lanczos + n_k, s_lanczos + s_k

        def mean(key: str) -> float:
            return float(sum(r[key] for r in runs) / len(runs))

        out["lambda_max"] = mean("lambda_max")
        out["trace"] = mean("ritz_positive_sum")
        out["kappa"] = mean("kappa")
        out["lambda_min"] = mean("lambda_min")
        out["lambda_min_positive"] = mean("lambda_min_positive")
        out["n_negative_ritz"] = int(round(mean("n_negative_ritz")))

    n_power, s_power = 0, 0.0
    if cfg.power_iters > 0:
        power, n_power, s_power = _timed(
            op,
            lambda: largest_eigenvalue(
                op, cfg.power_iters, cfg.power_tol, _generator(cfg.seed + 1)
            ),
        )
        out["lambda_max_power"] = power.eigenvalue
        out["power_converged"] = power.converged
        out["power_residual"] = power.residual
        if not power.converged:
            log.warning(
                "power iteration did not converge in %d HVPs (tol %g); raise hessian.power_iters",
                power.n_hvp,
                cfg.power_tol,
            )
        if cfg.lanczos_runs == 0:
            out["lambda_max"] = power.eigenvalue

    n_trace, s_trace = 0, 0.0
    if cfg.trace_samples > 0:
        trace, n_trace, s_trace = _timed(
            op, lambda: hutchinson_trace(op, cfg.trace_samples, _generator(cfg.seed + 2))
        )
        out["trace_hutchinson"], out["trace_hutchinson_stderr"] = trace.mean, trace.stderr
        if cfg.lanczos_runs == 0:
            out["trace"] = trace.mean

    seconds = time.perf_counter() - start
    out.update(
        nll=op.loss_value,
        n_params=op.numel,
        n_params_unpruned=op.dim,
        n_points=int(data.shape[0]),
        n_hvp=op.n_hvp,
        n_hvp_power=n_power,
        n_hvp_trace=n_trace,
        n_hvp_lanczos=n_lanczos,
        seconds=seconds,
        seconds_setup=seconds_setup,
        seconds_power=s_power,
        seconds_trace=s_trace,
        seconds_lanczos=s_lanczos,
        ritz_values=ritz_values,  # last: a few hundred numbers per run
        ritz_weights=ritz_weights,
    )
    log.info(
        "Hessian of the NLL on %d points, %d unpruned of %d parameters: λ_max=%.4g, "
        "tr=%.4g, κ=%.4g (%s); power λ_max=%.4g, Hutchinson tr=%.4g; %d HVPs in %.1f s "
        "(setup %.1f s)",
        out["n_points"],
        op.dim,
        op.numel,
        out["lambda_max"],
        out["trace"],
        out["kappa"],
        out["definition"],
        out["lambda_max_power"],
        out["trace_hutchinson"],
        op.n_hvp,
        seconds,
        seconds_setup,
    )
    return out
