"""Continuous normalizing flows: the augmented ODE of state and log-density (FFJORD).

Implements Sparse Flows §2, Eq. (2) — the instantaneous change of variables

    d z/dt = f(z, t; θ),      d log p(z(t))/dt = -Tr(∂f/∂z),

solved jointly as one augmented ODE, with the trace either exact (for low dimension and
evaluation) or estimated with Hutchinson's estimator Tr(A) = E[εᵀAε] (FFJORD, Grathwohl et al.
2019, §3.1), the noise ε drawn once per solve.

How the trace is computed (:data:`TRACE_METHODS`):

* ``hutchinson``: (εᵀ∂f/∂z) ε from one vector-Jacobian product.
* ``exact``: Tr ∂f/∂z.

For a net with ``forward_with_divergence`` (:class:`~pipeline_lib.flows.odenet.ODENet`) both are
computed by the chain rule from the layers' weights and activation slopes in the same forward
pass (a closed form for the exact trace of one- and two-hidden-layer nets), so that training
needs one ordinary backward pass instead of differentiating autograd calls. Other nets, and the
``*_autograd`` methods (kept for comparison), call ``torch.autograd.grad`` at every evaluation
as FFJORD does: one vector-Jacobian product for ``hutchinson_autograd``, d for
``exact_autograd``.

Optionally the RNODE regularizers of Finlay et al. (2020, Eq. 6/§4) are integrated as two
extra states: kinetic energy ∫‖f‖² dt and the Jacobian Frobenius norm ∫‖εᵀ∂f/∂z‖² dt, the latter
reusing the trace noise (exact ‖∂f/∂z‖²_F when the trace is exact).

Solvers come from torchdiffeq (dopri5, rk4, euler, …): adaptive ones with ``rtol``/``atol``,
fixed-grid ones with ``step_size``; gradients by plain backpropagation through the solver or
by the adjoint method. Function evaluations (NFE) are counted. ``rk4`` without the adjoint is
stepped by :func:`rk4_fixed_grid`, torchdiffeq's rk4 on torchdiffeq's grid without its host
synchronizations, so that a training step can be captured in a CUDA graph
(:mod:`pipeline_lib.cuda_graphs`).

Example::

    net = ODENet(2, (64, 64))
    flow = ContinuousFlow([CNF(net)], dim=2)
    out = flow(x)                     # FlowOutput with .log_prob, .z, .kinetic, .jacobian
    x_new, logp = flow.sample(1000)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn
from torchdiffeq import odeint, odeint_adjoint

__all__ = [
    "CNF",
    "CNFDynamics",
    "ContinuousFlow",
    "FlowOutput",
    "SolverConfig",
    "SolverError",
    "TRACE_METHODS",
    "bits_per_dim",
    "rk4_fixed_grid",
    "standard_normal_logprob",
]

TraceMethod = Literal["hutchinson", "exact", "exact_autograd", "hutchinson_autograd"]
#: Divergence computations; the ``*_autograd`` ones force autograd calls (for comparison).
TRACE_METHODS: tuple[str, ...] = ("hutchinson", "exact", "exact_autograd", "hutchinson_autograd")
#: The trace methods that draw Hutchinson noise.
HUTCHINSON_METHODS = frozenset({"hutchinson", "hutchinson_autograd"})
NoiseType = Literal["gaussian", "rademacher"]

FIXED_GRID_METHODS = frozenset({"euler", "midpoint", "rk4", "explicit_adams", "implicit_adams"})
ADAPTIVE_METHODS = frozenset(
    {"dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun", "scipy_solver"}
)


class SolverError(RuntimeError):
    """The ODE solver failed (step size underflow, too many steps)."""


@dataclass(frozen=True)
class SolverConfig:
    """How the augmented ODE is solved.

    Arguments:
        method: a torchdiffeq method (``dopri5``, ``rk4``, ``euler``, ...).
        rtol, atol: tolerances of adaptive methods (Table S1: 1e-5 for the toy sets).
        step_size: step of fixed-grid methods (required for them).
        adjoint: gradients by the adjoint method (Table S1) instead of backprop through the solver.
        max_num_steps: give up (``SolverError``) after this many adaptive steps.
    """

    method: str = "dopri5"
    rtol: float = 1e-5
    atol: float = 1e-5
    step_size: float | None = None
    adjoint: bool = False
    max_num_steps: int = 10_000

    def __post_init__(self) -> None:
        if self.method not in FIXED_GRID_METHODS | ADAPTIVE_METHODS:
            raise ValueError(
                f"unknown solver method {self.method!r}; choose one of "
                f"{sorted(FIXED_GRID_METHODS | ADAPTIVE_METHODS)}"
            )
        if self.method in FIXED_GRID_METHODS and not self.step_size:
            raise ValueError(
                f"solver method {self.method!r} uses a fixed grid: set solver.step_size "
                "(e.g. 0.05), or choose an adaptive method such as dopri5"
            )
        if self.rtol <= 0 or self.atol <= 0:
            raise ValueError("solver.rtol and solver.atol must be positive")

    @property
    def adaptive(self) -> bool:
        return self.method in ADAPTIVE_METHODS

    def odeint_kwargs(self) -> dict:
        if self.adaptive:
            return {
                "method": self.method,
                "rtol": self.rtol,
                "atol": self.atol,
                "options": {"max_num_steps": self.max_num_steps},
            }
        return {"method": self.method, "options": {"step_size": self.step_size}}

    def to_dict(self) -> dict:
        return asdict(self)


def standard_normal_logprob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over all but the batch dimension."""
    d = z[0].numel()
    return -0.5 * d * math.log(2 * math.pi) - 0.5 * z.pow(2).flatten(1).sum(1)


def bits_per_dim(nll_nats: torch.Tensor | float, dim: int) -> torch.Tensor | float:
    """Convert a per-sample NLL in nats to bits per dimension."""
    return nll_nats / (dim * math.log(2.0))


def rk4_fixed_grid(
    func,
    state: tuple[torch.Tensor, ...],
    t0: torch.Tensor,
    t1: torch.Tensor,
    span: float,
    step_size: float,
) -> tuple[torch.Tensor, ...]:
    """Integrate ``d state/dt = func(t, state)`` from ``t0`` to ``t1`` with classical fourth-order
    Runge-Kutta steps in the 3/8-rule form, on torchdiffeq's grid.

    The same arithmetic as torchdiffeq's ``rk4`` (``rk4_alt_step_func`` on
    ``_grid_constructor_from_step_size``: points ``t0 + k·h`` and a last, shorter step onto
    ``t1``; 4 evaluations per step) without its host synchronizations (``.item()`` on the grid,
    comparisons of device tensors), so the solve can be captured in a CUDA graph. ``span`` is
    ``t1 - t0`` as a host float (it fixes the number of steps); ``t1`` keeps its gradient (a
    trainable end time). Returns the state at ``t1``.
    """
    points = math.ceil(abs(span) / step_size + 1)
    h = step_size if span >= 0 else -step_size
    grid = torch.arange(points - 1, dtype=t0.dtype, device=t0.device) * h + t0
    grid = torch.cat([grid, t1.reshape(1).to(t0.dtype)])
    third, two_thirds = 1.0 / 3.0, 2.0 / 3.0
    y = state
    for k in range(points - 1):
        ta, tb = grid[k], grid[k + 1]
        dt = tb - ta
        k1 = func(ta, y)
        k2 = func(ta + dt * third, tuple(yi + dt * a * third for yi, a in zip(y, k1, strict=True)))
        k3 = func(
            ta + dt * two_thirds,
            tuple(yi + dt * (b - a * third) for yi, a, b in zip(y, k1, k2, strict=True)),
        )
        k4 = func(
            tb, tuple(yi + dt * (a - b + c) for yi, a, b, c in zip(y, k1, k2, k3, strict=True))
        )
        y = tuple(
            yi + (a + 3 * (b + c) + d) * dt * 0.125
            for yi, a, b, c, d in zip(y, k1, k2, k3, k4, strict=True)
        )
    return y


def _sample_noise(like: torch.Tensor, kind: str, generator: torch.Generator | None) -> torch.Tensor:
    if kind == "gaussian":
        return torch.randn(like.shape, dtype=like.dtype, device=like.device, generator=generator)
    if kind == "rademacher":
        bits = torch.randint(0, 2, like.shape, device=like.device, generator=generator)
        return bits.to(like.dtype) * 2 - 1
    raise ValueError(f"unknown trace noise {kind!r}; choose 'gaussian' or 'rademacher'")


class CNFDynamics(nn.Module):
    """Augmented dynamics (f, -Tr ∂f/∂z [, ‖f‖², ‖εᵀ∂f/∂z‖²]) of Eq. (2) and RNODE.

    The state is a tuple ``(z, logp)`` or, with regularization, ``(z, logp, E_k, E_j)``.
    ``noise`` must be set (once per solve) before a Hutchinson solve; ``nfe`` counts calls.
    ``trace`` is one of :data:`TRACE_METHODS` (see the module docstring).
    """

    def __init__(self, net: nn.Module, trace: TraceMethod = "hutchinson") -> None:
        super().__init__()
        if trace not in TRACE_METHODS:
            raise ValueError(f"unknown trace method {trace!r}; choose one of {TRACE_METHODS}")
        self.net = net
        self.trace = trace
        # Set by CNF.forward before every solve and kept afterwards: the adjoint method
        # evaluates the dynamics again during the backward pass, with the same noise and trace.
        self.solve_trace: str = trace
        self.noise: torch.Tensor | None = None
        self.nfe = 0

    def forward(self, t: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        self.nfe += 1
        z = state[0]
        if len(state) == 1:  # sampling without density: the state alone
            return (self.net(t, z),)
        regularize = len(state) == 4
        if self.solve_trace in ("exact", "hutchinson") and hasattr(
            self.net, "forward_with_divergence"
        ):
            # Trace by the chain rule through the net: plain tensors, one backward pass to train.
            noise = self._checked_noise(z) if self.solve_trace == "hutchinson" else None
            dz, div, frob = self.net.forward_with_divergence(t, z, noise, frobenius=regularize)
        else:
            dz, div, frob = self._by_autograd(t, z, regularize)
        if regularize:
            kinetic = dz.pow(2).flatten(1).sum(1)
            return dz, -div, kinetic, frob
        return dz, -div

    def _checked_noise(self, z: torch.Tensor) -> torch.Tensor:
        if self.noise is None or self.noise.shape != z.shape:
            raise RuntimeError("CNFDynamics.noise must be set to a tensor shaped like z")
        return self.noise

    def _by_autograd(
        self, t: torch.Tensor, z: torch.Tensor, regularize: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """f, the divergence (exact or Hutchinson) and the Frobenius term by autograd calls."""
        # Outside autograd (evaluation, adjoint forward pass) the trace needs no graph.
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            # Without a graph to extend, differentiate w.r.t. a fresh leaf: ``z`` may be a view made
            # in no-grad mode of a tensor that requires grad (the adjoint's backward re-evaluates
            # the dynamics at its saved outputs), which autograd.grad cannot differentiate through.
            if not create_graph or not z.requires_grad:
                z = z.detach().requires_grad_(True)
            dz = self.net(t, z)
            if self.solve_trace in ("exact", "exact_autograd"):
                div, frob = self._exact(dz, z, create_graph, regularize)
            else:
                e = self._checked_noise(z)
                e_dfdz = torch.autograd.grad(dz, z, e, create_graph=create_graph)[0]
                div = (e_dfdz * e).flatten(1).sum(1)
                frob = e_dfdz.pow(2).flatten(1).sum(1) if regularize else None
        if not create_graph:
            dz = dz.detach()
        return dz, div, frob

    @staticmethod
    def _exact(
        dz: torch.Tensor, z: torch.Tensor, create_graph: bool, regularize: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Exact trace from d vector-Jacobian products (rows of ∂f/∂z; z of any shape is
        taken flattened per sample)."""
        flat = dz.flatten(1)
        div = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
        frob = torch.zeros_like(div) if regularize else None
        for i in range(flat.shape[1]):
            row = torch.autograd.grad(
                flat[:, i].sum(), z, create_graph=create_graph, retain_graph=True
            )[0].flatten(1)
            div = div + row[:, i]
            if regularize:
                frob = frob + row.pow(2).sum(1)
        if not create_graph:
            div = div.detach()
            frob = frob.detach() if frob is not None else None
        return div, frob


class CNF(nn.Module):
    """One continuous normalizing flow block: integrates the augmented ODE over [0, T].

    Arguments:
        net: the vector field f(z, t) (e.g. :class:`~pipeline_lib.flows.odenet.ODENet`).
        T: integration time.
        train_T: learn T (parametrised as T = s², as in FFJORD).
        trace: ``"hutchinson"`` (FFJORD), ``"exact"`` or an autograd variant
            (:data:`TRACE_METHODS`).
        noise: Hutchinson noise, ``"gaussian"`` or ``"rademacher"``.
        solver: default :class:`SolverConfig`.
    """

    def __init__(
        self,
        net: nn.Module,
        T: float = 1.0,
        train_T: bool = False,
        trace: TraceMethod = "hutchinson",
        noise: NoiseType = "gaussian",
        solver: SolverConfig | None = None,
    ) -> None:
        super().__init__()
        self.dynamics = CNFDynamics(net, trace)
        sqrt_T = torch.tensor(math.sqrt(T))
        if train_T:
            self.sqrt_end_time = nn.Parameter(sqrt_T)
        else:
            self.register_buffer("sqrt_end_time", sqrt_T)
        self.noise = noise
        self.solver = solver or SolverConfig()
        self._host_end_time: float | None = None

    @property
    def end_time(self) -> torch.Tensor:
        return self.sqrt_end_time * self.sqrt_end_time

    def host_end_time(self) -> float:
        """T as a Python float: read from the device outside CUDA-graph capture (a
        synchronization), the last value read while capturing (T is then fixed)."""
        if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
            if self._host_end_time is None:
                raise RuntimeError("run the flow once before capturing it in a CUDA graph")
            return self._host_end_time
        self._host_end_time = float(self.end_time.detach())
        return self._host_end_time

    def forward(
        self,
        z: torch.Tensor,
        delta_logp: torch.Tensor,
        reverse: bool = False,
        regularize: bool = False,
        solver: SolverConfig | None = None,
        generator: torch.Generator | None = None,
        trace: TraceMethod | None = None,
        density: bool = True,
    ) -> tuple[torch.Tensor, ...]:
        """Integrate from t=0 to T (or T to 0 with ``reverse``).

        Returns ``(z_T, delta_logp_T)`` and, with ``regularize``, the integrated kinetic energy
        and Jacobian Frobenius norm per sample. With ``density=False`` only the state is
        integrated (no trace: cheaper sampling) and ``delta_logp`` is returned unchanged.
        """
        solver = solver or self.solver
        if trace is not None and trace not in TRACE_METHODS:
            raise ValueError(f"unknown trace method {trace!r}; choose one of {TRACE_METHODS}")
        zero = torch.zeros((), dtype=z.dtype, device=z.device)
        T = self.end_time.to(z.dtype)
        times = torch.stack([T, zero]) if reverse else torch.stack([zero, T])
        dyn = self.dynamics
        dyn.solve_trace = trace or dyn.trace
        dyn.noise = (
            _sample_noise(z, self.noise, generator)
            if dyn.solve_trace in HUTCHINSON_METHODS and density
            else None
        )
        state: tuple[torch.Tensor, ...] = (z, delta_logp) if density else (z,)
        if regularize and density:
            zeros = torch.zeros_like(delta_logp)
            state = (*state, zeros, zeros.clone())
        adjoint = solver.adjoint and torch.is_grad_enabled()
        try:
            if solver.method == "rk4" and not adjoint:
                span = -self.host_end_time() if reverse else self.host_end_time()
                final = rk4_fixed_grid(dyn, state, times[0], times[1], span, solver.step_size)
            elif adjoint:
                params = tuple(p for p in self.parameters() if p.requires_grad)
                out = odeint_adjoint(
                    dyn, state, times, adjoint_params=params, **solver.odeint_kwargs()
                )
                final = tuple(s[-1] for s in out)
            else:
                out = odeint(dyn, state, times, **solver.odeint_kwargs())
                final = tuple(s[-1] for s in out)
        except AssertionError as err:  # torchdiffeq signals underflow / step limits this way
            raise SolverError(
                f"ODE solver {solver.method} failed ({err}). The dynamics became too stiff: lower "
                "the learning rate, loosen solver.rtol/atol, raise solver.max_num_steps, or use a "
                "fixed-step solver (rk4 with solver.step_size)."
            ) from err
        if not density:
            return final[0], delta_logp
        return final


@dataclass
class FlowOutput:
    """Result of pushing data through the flow (data → base distribution)."""

    z: torch.Tensor
    log_prob: torch.Tensor  # log p(x) per sample, nats
    kinetic: torch.Tensor | None = None  # ∫‖f‖² dt per sample, summed over blocks
    jacobian: torch.Tensor | None = None  # ∫‖εᵀ∂f/∂z‖² dt per sample, summed over blocks
    nfe: int = 0


RegularizationTerms = tuple[torch.Tensor | None, torch.Tensor | None]


def run_blocks(
    blocks,
    z: torch.Tensor,
    delta: torch.Tensor,
    terms: RegularizationTerms = (None, None),
    *,
    regularize: bool = False,
    solver: SolverConfig | None = None,
    trace: TraceMethod | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, RegularizationTerms]:
    """Integrate CNF ``blocks`` in order from data towards the base: the state ``z``, the
    accumulated log-density change ``delta`` (log p(x) = log p(z) − delta, Sparse Flows
    Eq. 2) and, when ``regularize``, RNODE's kinetic-energy and Jacobian-norm terms summed
    over blocks onto ``terms`` (RNODE Eq. 4; ``(None, None)`` before the first block)."""
    kinetic, jacobian = terms
    for block in blocks:
        out = block(
            z, delta, regularize=regularize, solver=solver, trace=trace, generator=generator
        )
        z, delta = out[0], out[1]
        if regularize:
            kinetic = out[2] if kinetic is None else kinetic + out[2]
            jacobian = out[3] if jacobian is None else jacobian + out[3]
    return z, delta, (kinetic, jacobian)


class ContinuousFlow(nn.Module):
    """A stack of CNF blocks over a standard normal base (FFJORD).

    ``forward(x)`` maps data to the base and returns log p(x) by the change of variables
    (Sparse Flows Eq. 1–2); ``sample`` integrates the blocks in reverse.
    """

    def __init__(self, blocks: list[CNF], dim: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.dim = dim

    @property
    def nfe(self) -> int:
        return sum(b.dynamics.nfe for b in self.blocks)

    def reset_nfe(self) -> None:
        for b in self.blocks:
            b.dynamics.nfe = 0

    def forward(
        self,
        x: torch.Tensor,
        regularize: bool = False,
        solver: SolverConfig | None = None,
        trace: TraceMethod | None = None,
        generator: torch.Generator | None = None,
    ) -> FlowOutput:
        nfe0 = self.nfe
        delta = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        z, delta, (kinetic, jacobian) = run_blocks(
            self.blocks, x, delta, regularize=regularize, solver=solver, trace=trace,
            generator=generator,
        )  # fmt: skip
        log_prob = standard_normal_logprob(z) - delta
        return FlowOutput(z, log_prob, kinetic, jacobian, self.nfe - nfe0)

    def log_prob(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        """log p(x) in nats per sample."""
        return self.forward(x, **kwargs).log_prob

    def inverse(
        self,
        z: torch.Tensor,
        solver: SolverConfig | None = None,
        trace: TraceMethod | None = None,
        generator: torch.Generator | None = None,
        with_log_prob: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Map base points z to data x; returns ``(x, log p(x))`` (``log p`` is None without
        ``with_log_prob``, which skips the trace and is cheaper)."""
        x = z
        delta = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
        for block in reversed(self.blocks):
            x, delta = block(
                x,
                delta,
                reverse=True,
                solver=solver,
                trace=trace,
                generator=generator,
                density=with_log_prob,
            )
        return x, (standard_normal_logprob(z) + delta) if with_log_prob else None

    def sample(
        self,
        n: int,
        solver: SolverConfig | None = None,
        generator: torch.Generator | None = None,
        trace: TraceMethod | None = None,
        with_log_prob: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Draw ``n`` samples; returns ``(x, log p(x))`` (``log p`` None without
        ``with_log_prob``)."""
        ref = next(self.parameters())
        z = torch.randn(n, self.dim, dtype=ref.dtype, device=ref.device, generator=generator)
        return self.inverse(
            z, solver=solver, trace=trace, generator=generator, with_log_prob=with_log_prob
        )
