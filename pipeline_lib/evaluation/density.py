"""What a 2-D flow has learned, on a grid: its density (Fig. 5) and its vector field (Fig. 6).

The expensive part (solving the flow on a grid) is done once per checkpoint and stored as
arrays; plotting reads them, so restyling a figure never touches a model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline_lib.flows import ContinuousFlow, SolverConfig

__all__ = ["FieldSnapshot", "flow_snapshot"]


@dataclass
class FieldSnapshot:
    """Arrays of one checkpoint for the density grid and vector-field figures."""

    grid: np.ndarray  # (R,) coordinates of the density grid (both axes)
    log_density: np.ndarray  # (R, R) log p(x) on the grid, [iy, ix]
    field_grid: np.ndarray  # (Q,) coordinates of the vector-field grid
    field: np.ndarray  # (Q, Q, 2) f(z, t=0) of the first block, [iy, ix, :]
    samples: np.ndarray  # (S, 2) samples of the flow

    def to_npz(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@torch.no_grad()
def flow_snapshot(
    model: ContinuousFlow,
    extent: float = 3.0,
    resolution: int = 100,
    field_resolution: int = 20,
    n_samples: int = 2000,
    solver: SolverConfig | None = None,
    trace: str | None = "exact",
    generator: torch.Generator | None = None,
    batch_size: int = 10_000,
) -> FieldSnapshot:
    """Density of a 2-D flow on a ``resolution²`` grid over ``[-extent, extent]²`` (standardized
    coordinates), its vector field at t = 0 on a coarser grid, and ``n_samples`` samples.

    Sparse Flows Fig. 5 (density per prune ratio) and Fig. 6 / S1 (vector field with samples).
    """
    if model.dim != 2:
        raise ValueError(f"flow_snapshot draws 2-D flows only; this flow has dim {model.dim}")
    ref = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        grid = torch.linspace(-extent, extent, resolution, dtype=ref.dtype, device=ref.device)
        gy, gx = torch.meshgrid(grid, grid, indexing="ij")
        points = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)
        logp = torch.cat(
            [
                model.log_prob(
                    points[i : i + batch_size], solver=solver, trace=trace, generator=generator
                )
                for i in range(0, len(points), batch_size)
            ]
        )
        fgrid = torch.linspace(
            -extent, extent, field_resolution, dtype=ref.dtype, device=ref.device
        )
        fy, fx = torch.meshgrid(fgrid, fgrid, indexing="ij")
        fpoints = torch.stack([fx.reshape(-1), fy.reshape(-1)], 1)
        net = model.blocks[0].dynamics.net
        field = net(torch.zeros((), dtype=ref.dtype, device=ref.device), fpoints)
        samples, _ = model.sample(
            n_samples, solver=solver, generator=generator, with_log_prob=False
        )
    finally:
        model.train(was_training)
    return FieldSnapshot(
        grid=grid.cpu().numpy(),
        log_density=logp.reshape(resolution, resolution).cpu().numpy(),
        field_grid=fgrid.cpu().numpy(),
        field=field.reshape(field_resolution, field_resolution, 2).cpu().numpy(),
        samples=samples.cpu().numpy(),
    )
