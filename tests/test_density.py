"""Density-grid snapshot: the learned density integrates to one; the field is f(z, 0)."""

from __future__ import annotations

import torch

from pipeline_lib.evaluation.density import flow_snapshot
from pipeline_lib.flows import FlowConfig, SolverConfig, build_flow


def test_density_on_grid_integrates_to_one_and_field_is_f_at_t0():
    torch.manual_seed(0)
    flow = build_flow(
        FlowConfig(
            dim=2,
            hidden_dims=(16,),
            activation="tanh",
            solver=SolverConfig(method="rk4", step_size=0.25),
        )
    ).double()
    with torch.no_grad():  # a non-trivial flow: scale up the weights
        for p in flow.parameters():
            p.mul_(3.0)
    snap = flow_snapshot(flow, extent=7.0, resolution=161, field_resolution=5, n_samples=50)
    cell = (snap.grid[1] - snap.grid[0]) ** 2
    mass = float(torch.tensor(snap.log_density).exp().sum() * cell)
    assert abs(mass - 1.0) < 0.01
    z = torch.tensor([[snap.field_grid[1], snap.field_grid[3]]], dtype=torch.float64)
    direct = flow.blocks[0].dynamics.net(torch.tensor(0.0, dtype=torch.float64), z)
    assert torch.allclose(torch.from_numpy(snap.field[3, 1]), direct[0])
    assert snap.samples.shape == (50, 2)
