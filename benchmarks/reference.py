"""A reference FFJORD training path: mirrors the reference code path; used only to measure speedups.

It reproduces the *behaviour* of FFJORD's ``ODEfunc``/``CNF`` (Grathwohl et al. 2019), the code
the Sparse Flows toy and tabular experiments train with, and is never used by the pipeline:

* the ODE function computes ``f`` and the Hutchinson divergence ``(εᵀ ∂f/∂z) ε`` with
  ``torch.autograd.grad(..., create_graph=True)`` at *every* function evaluation, including
  the adjoint's forward solve where no graph is needed;
* ε is Gaussian, drawn once per solve and reused by the adjoint's backward solve;
* the augmented state is ``(z, Δlogp)`` with ``Δlogp`` of shape ``(B, 1)``, solved by
  ``torchdiffeq.odeint_adjoint`` (dopri5) over ``[0, T]`` with ``T = sqrt_end_time²``;
* concatsquash layers compute ``(W z + b) · σ(W_g t + b_g) + W_b t`` on the layer outputs;
* one training step is zero-grad, ``−mean log p(x)``, backward, AdamW step.

The parameter shapes equal those of :func:`pipeline_lib.flows.build_flow` (concatsquash), so
:func:`load_from_flow` / :func:`store_into_flow` move one set of weights between the two.
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn
from torchdiffeq import odeint_adjoint

__all__ = ["ReferenceFlow", "load_from_flow", "reference_optimizer", "store_into_flow"]

ACTIVATIONS = {
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "softplus": F.softplus,
    "elu": F.elu,
    "relu": F.relu,
    "swish": F.silu,
}


class ConcatSquash(nn.Module):
    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self._layer = nn.Linear(dim_in, dim_out)
        self._hyper_gate = nn.Linear(1, dim_out)
        self._hyper_bias = nn.Linear(1, dim_out, bias=False)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        tt = t.reshape(1, 1)
        return self._layer(x) * torch.sigmoid(self._hyper_gate(tt)) + self._hyper_bias(tt)


class ODEfunc(nn.Module):
    """f and −(εᵀ ∂f/∂z) ε, by one vector-Jacobian product per evaluation."""

    def __init__(self, dim: int, hidden_dims: tuple[int, ...], activation: str) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            ConcatSquash(a, b) for a, b in pairwise([dim, *hidden_dims, dim])
        )
        self.activation = ACTIVATIONS[activation]
        self.noise: torch.Tensor | None = None
        self.nfe = 0

    def forward(self, t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        y = state[0]
        self.nfe += 1
        tracked = torch.is_grad_enabled() and y.requires_grad  # else a fresh leaf (adjoint)
        with torch.enable_grad():
            if not tracked:
                y = y.detach().requires_grad_(True)
            dy = y
            for i, layer in enumerate(self.layers):
                dy = layer(t.to(y), dy)
                if i < len(self.layers) - 1:
                    dy = self.activation(dy)
            e_dfdy = torch.autograd.grad(dy, y, self.noise, create_graph=True)[0]
            divergence = (e_dfdy * self.noise).reshape(y.shape[0], -1).sum(1, keepdim=True)
        return dy, -divergence


class CNF(nn.Module):
    def __init__(self, odefunc: ODEfunc, T: float, train_T: bool) -> None:
        super().__init__()
        self.odefunc = odefunc
        sqrt_T = torch.tensor(math.sqrt(T))
        if train_T:
            self.sqrt_end_time = nn.Parameter(sqrt_T)
        else:
            self.register_buffer("sqrt_end_time", sqrt_T)

    def forward(self, z, logpz, rtol: float, atol: float, generator=None):
        self.odefunc.noise = torch.randn(
            z.shape, dtype=z.dtype, device=z.device, generator=generator
        )
        end = self.sqrt_end_time * self.sqrt_end_time
        times = torch.stack([torch.zeros_like(end), end]).to(z)
        z_t, logp_t = odeint_adjoint(
            self.odefunc, (z, logpz), times, rtol=rtol, atol=atol, method="dopri5"
        )
        return z_t[-1], logp_t[-1]


class ReferenceFlow(nn.Module):
    """A chain of :class:`CNF` blocks over a standard normal base, trained by the adjoint."""

    def __init__(self, dim, hidden_dims, activation, num_blocks=1, T=1.0, train_T=False, rtol=1e-5,
                 atol=1e-5) -> None:  # fmt: skip
        super().__init__()
        self.chain = nn.ModuleList(
            CNF(ODEfunc(dim, tuple(hidden_dims), activation), T, train_T) for _ in range(num_blocks)
        )
        self.rtol, self.atol = rtol, atol

    @property
    def nfe(self) -> int:
        return sum(block.odefunc.nfe for block in self.chain)

    def log_prob(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        z, delta = x, torch.zeros(x.shape[0], 1, dtype=x.dtype, device=x.device)
        for block in self.chain:
            z, delta = block(z, delta, self.rtol, self.atol, generator)
        logpz = (-0.5 * math.log(2 * math.pi) - z.pow(2) / 2).sum(1, keepdim=True)
        return (logpz - delta).squeeze(1)


def reference_optimizer(flow: ReferenceFlow, lr, betas=(0.9, 0.999), weight_decay=0.0):
    """AdamW over all parameters; a training step is zero-grad, ``−mean log p(x)``, backward, step."""
    return torch.optim.AdamW(flow.parameters(), lr=lr, betas=betas, weight_decay=weight_decay)


def _pairs(ref: ReferenceFlow, flow: nn.Module):
    """(reference tensor, pipeline_lib tensor) pairs, block by block and layer by layer."""
    for rb, fb in zip(ref.chain, flow.blocks, strict=True):
        yield rb.sqrt_end_time, fb.sqrt_end_time
        for rl, fl in zip(rb.odefunc.layers, fb.dynamics.net.layers, strict=True):
            yield from ((rl._layer.weight, fl.linear.weight), (rl._layer.bias, fl.linear.bias))
            yield from (
                (rl._hyper_gate.weight, fl.hyper_gate.weight),
                (rl._hyper_gate.bias, fl.hyper_gate.bias),
                (rl._hyper_bias.weight, fl.hyper_bias.weight),
            )


@torch.no_grad()
def _copy(ref: ReferenceFlow, flow: nn.Module, into_reference: bool) -> None:
    for r, f in _pairs(ref, flow):
        if r.shape != f.shape:
            raise ValueError(
                f"shape {tuple(r.shape)} vs {tuple(f.shape)}: not the same architecture"
            )
        (r if into_reference else f).copy_(f if into_reference else r)


def load_from_flow(ref: ReferenceFlow, flow: nn.Module) -> ReferenceFlow:
    """Copy the weights of a concatsquash ``pipeline_lib`` flow into ``ref``."""
    _copy(ref, flow, into_reference=True)
    return ref


def store_into_flow(ref: ReferenceFlow, flow: nn.Module) -> nn.Module:
    """Copy the weights of ``ref`` into a ``pipeline_lib`` flow (e.g. to evaluate it)."""
    _copy(ref, flow, into_reference=False)
    return flow
