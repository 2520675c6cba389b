"""Negative log-likelihood of a flow on held-out data (Sparse Flows §4, Tables 2–3, S4–S10).

NLL is reported in nats per sample for toy and tabular data and can be converted to bits per
dimension (:func:`pipeline_lib.flows.bits_per_dim`) for images.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from pipeline_lib.flows import ContinuousFlow, SolverConfig, bits_per_dim

__all__ = ["NLLResult", "evaluate_nll"]


@dataclass
class NLLResult:
    """Mean NLL over a data set, its standard error, and the solver cost."""

    nll: float  # nats per sample
    stderr: float
    bits_per_dim: float
    n: int
    nfe: float  # function evaluations per batch (mean)

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def evaluate_nll(
    model: ContinuousFlow,
    x: torch.Tensor,
    batch_size: int = 10_000,
    solver: SolverConfig | None = None,
    trace: str | None = None,
    generator: torch.Generator | None = None,
) -> NLLResult:
    """Average −log p(x) over ``x`` in batches, without building a graph.

    Arguments:
        model: the flow.
        x: data, shape (N, d), on the model's device.
        batch_size: evaluation batch size.
        solver: solver for evaluation (defaults to each block's training solver).
        trace: ``"exact"`` for an exact log-density (low dimension), ``"hutchinson"`` or None
            for the model's own setting.
        generator: RNG for Hutchinson noise, for reproducible estimates.
    """
    if x.shape[0] == 0:
        raise ValueError("evaluate_nll got an empty data set")
    was_training = model.training
    model.eval()
    total = 0.0
    total_sq = 0.0
    nfe = 0
    batches = 0
    try:
        for start in range(0, x.shape[0], batch_size):
            out = model(
                x[start : start + batch_size], solver=solver, trace=trace, generator=generator
            )
            nll = -out.log_prob.double()
            total += nll.sum().item()
            total_sq += nll.pow(2).sum().item()
            nfe += out.nfe
            batches += 1
    finally:
        model.train(was_training)
    n = x.shape[0]
    mean = total / n
    var = max(total_sq / n - mean * mean, 0.0)
    return NLLResult(
        nll=mean,
        stderr=math.sqrt(var / n),
        bits_per_dim=float(bits_per_dim(mean, x[0].numel())),
        n=n,
        nfe=nfe / batches,
    )
