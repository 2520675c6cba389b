"""FFJORD continuous normalizing flows and their vector fields.

References:
    Grathwohl et al. *FFJORD: Free-form continuous dynamics for scalable reversible generative
    models.* ICLR 2019. Finlay et al. *How to train your neural ODE.* ICML 2020.
    Liebenwein et al. *Sparse Flows: Pruning continuous-depth models.* NeurIPS 2021, §2.

Example::

    cfg = FlowConfig(dim=2, hidden_dims=(64, 64), num_blocks=1, activation="tanh")
    flow = build_flow(cfg)
    nll = -flow.log_prob(x).mean()
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from pipeline_lib.flows.cnf import (
    CNF,
    CNFDynamics,
    ContinuousFlow,
    FlowOutput,
    SolverConfig,
    SolverError,
    bits_per_dim,
    standard_normal_logprob,
)
from pipeline_lib.flows.odenet import ACTIVATIONS, LAYER_TYPES, ODENet

__all__ = [
    "ACTIVATIONS",
    "CNF",
    "CNFDynamics",
    "ContinuousFlow",
    "FlowConfig",
    "FlowOutput",
    "LAYER_TYPES",
    "ODENet",
    "SolverConfig",
    "SolverError",
    "bits_per_dim",
    "build_flow",
    "standard_normal_logprob",
]


@dataclass(frozen=True)
class FlowConfig:
    """Architecture of an FFJORD flow (Table S1; FFJORD Table 4 for the tabular sets).

    Arguments:
        dim: data dimension (``None`` in an experiment's settings, where the data decides it;
            :func:`build_flow` needs it).
        hidden_dims: hidden widths of each block's vector field.
        num_blocks: number of stacked CNF blocks.
        layer_type: ``mlp`` (no time input, the released toy models), ``concat`` or
            ``concatsquash`` (FFJORD).
        activation: see :data:`~pipeline_lib.flows.odenet.ACTIVATIONS`.
        T: integration time of each block; ``train_T`` makes it a parameter.
        trace: ``hutchinson`` (FFJORD, Table S1 "Divergence") or ``exact``.
        noise: Hutchinson noise, ``gaussian`` or ``rademacher``.
        solver: the training solver.
    """

    dim: int | None = None
    hidden_dims: tuple[int, ...] = (64, 64)
    num_blocks: int = 1
    layer_type: str = "concatsquash"
    activation: str = "tanh"
    T: float = 1.0
    train_T: bool = False
    trace: str = "hutchinson"
    noise: str = "gaussian"
    solver: SolverConfig = field(default_factory=SolverConfig)

    @classmethod
    def from_dict(cls, d: dict) -> FlowConfig:
        d = dict(d)
        solver = d.pop("solver", {}) or {}
        if not isinstance(solver, SolverConfig):
            solver = SolverConfig(**solver)
        d["hidden_dims"] = tuple(int(h) for h in d.get("hidden_dims", (64, 64)))
        return cls(solver=solver, **d)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden_dims"] = list(self.hidden_dims)
        return d


def build_flow(cfg: FlowConfig) -> ContinuousFlow:
    """Build a :class:`ContinuousFlow` with all-ones pruning masks attached."""
    from pipeline_lib.pruning import attach_masks

    if cfg.dim is None:
        raise ValueError(
            "FlowConfig.dim is not set: give the data dimension, e.g. FlowConfig(dim=2)"
        )
    if cfg.num_blocks < 1:
        raise ValueError("model.num_blocks must be at least 1")
    blocks = [
        CNF(
            ODENet(cfg.dim, cfg.hidden_dims, cfg.layer_type, cfg.activation),
            T=cfg.T,
            train_T=cfg.train_T,
            trace=cfg.trace,
            noise=cfg.noise,
            solver=cfg.solver,
        )
        for _ in range(cfg.num_blocks)
    ]
    return attach_masks(ContinuousFlow(blocks, cfg.dim))
