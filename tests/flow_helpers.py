"""A tiny 2-D flow, its data and training settings: the one factory the tests share (as plain
functions for parametrized use, and as the fixtures of ``conftest.py``)."""

from __future__ import annotations

import torch

from pipeline_lib.flows import FlowConfig, SolverConfig, build_flow
from pipeline_lib.training import TrainConfig

FAST = SolverConfig(method="rk4", step_size=0.25)


def toy_data(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(0, 4, (n,), generator=g)
    centers = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])
    return centers[k] + 0.3 * torch.randn(n, 2, generator=g)


def make_flow(
    seed: int = 0,
    hidden_dims: tuple[int, ...] = (16, 16),
    solver: SolverConfig = FAST,
    **settings: object,
):
    """A 2-D FFJORD flow (concatsquash by default, exact trace unless ``trace`` is given),
    seeded; ``settings`` passes further :class:`FlowConfig` settings."""
    torch.manual_seed(seed)
    settings = {"trace": "exact", **settings}
    return build_flow(FlowConfig(dim=2, hidden_dims=hidden_dims, solver=solver, **settings))


def cfg(**kw) -> TrainConfig:
    base = dict(epochs=3, batch_size=128, lr=1e-2, optimizer="adamw", weight_decay=1e-5, seed=0)
    return TrainConfig(**(base | kw))


def weights(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]
