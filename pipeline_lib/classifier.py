"""Neural-ODE classifiers (Sparse Flows §4.6, Fig. 9; Table S1 "MOON").

The released code's classifier (``torchprune/util/models/node.py``, class ``Node``, the
``*_da`` variants the moons and concentric configurations name) is an autonomous MLP vector
field on the input, ``Linear(d, h), act, [Linear(h, h), act] × (L − 2), Linear(h, d)``,
integrated from t = 0 to 1 by torchdyn's ``NeuralODE`` (dopri5, atol = rtol = 1e-4, adjoint
gradients); the final state *is* the vector of class logits (d = number of classes = 2), and
the loss is the cross-entropy. Table S1: l2_h128, tanh, Adam lr 1e-2, weight decay 1e-4,
batch 128, 50 epochs.

Here the field is :class:`~pipeline_lib.flows.odenet.ODENet` with ``layer_type="mlp"`` (the
same layers, and the same prunable ``nn.Linear`` modules as the flows: the output layer is
marked ``is_output_layer``), integrated with torchdiffeq under a
:class:`~pipeline_lib.flows.SolverConfig`. Deliberate difference: none in the model; the
integration library differs (torchdiffeq instead of torchdyn), with the same method and
tolerances.

Example::

    model = build_classifier(ClassifierConfig(dim=2, hidden_dims=(128,)))
    logits = model(x)                     # (N, 2): the state at t = T
    accuracy(logits, labels)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torchdiffeq import odeint, odeint_adjoint

from pipeline_lib.flows import SolverConfig, SolverError
from pipeline_lib.flows.odenet import ODENet

__all__ = ["ClassifierConfig", "NODEClassifier", "accuracy", "build_classifier"]


def _released_solver() -> SolverConfig:
    return SolverConfig(method="dopri5", rtol=1e-4, atol=1e-4, adjoint=True)


@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture of a neural-ODE classifier (the released ``Node``; Table S1 "MOON").

    Arguments:
        dim: input dimension = number of classes (``None`` in an experiment's settings, where
            the data decides it; :func:`build_classifier` needs it).
        hidden_dims: hidden widths of the vector field; the released ``l2_h128`` is ``(128,)``
            (L Linear layers are L − 1 hidden layers).
        activation: see :data:`~pipeline_lib.flows.odenet.ACTIVATIONS` (released: ``tanh``).
        T: integration time (released: 1).
        solver: the ODE solver (released: dopri5, atol = rtol = 1e-4, adjoint).
    """

    dim: int | None = None
    hidden_dims: tuple[int, ...] = (128,)
    activation: str = "tanh"
    T: float = 1.0
    solver: SolverConfig = field(default_factory=_released_solver)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_dims", tuple(int(h) for h in self.hidden_dims))
        if not self.T > 0:
            raise ValueError(f"model.T must be positive, got {self.T}")

    @classmethod
    def from_dict(cls, d: dict) -> ClassifierConfig:
        d = dict(d)
        solver = d.pop("solver", None)
        if solver is not None and not isinstance(solver, SolverConfig):
            solver = SolverConfig(**solver)
        return cls(**d) if solver is None else cls(solver=solver, **d)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden_dims"] = list(self.hidden_dims)
        return d


class _CountingField(nn.Module):
    """``f(t, z)`` of the classifier, counting its evaluations (NFE)."""

    def __init__(self, net: ODENet) -> None:
        super().__init__()
        self.net = net
        self.nfe = 0

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        return self.net(t, z)


class NODEClassifier(nn.Module):
    """``x ↦ z(T)`` with ``z(0) = x`` and ``dz/dt = f(z)``: the logits of a neural-ODE
    classifier (see the module docstring)."""

    def __init__(self, cfg: ClassifierConfig) -> None:
        super().__init__()
        if cfg.dim is None:
            raise ValueError("ClassifierConfig.dim is not set: give the input dimension")
        self.config = cfg
        self.field = _CountingField(ODENet(cfg.dim, cfg.hidden_dims, "mlp", cfg.activation))

    @property
    def nfe(self) -> int:
        """Vector-field evaluations since construction (forward and adjoint solves)."""
        return self.field.nfe

    def trajectory(
        self, x: torch.Tensor, times: torch.Tensor, solver: SolverConfig | None = None
    ) -> torch.Tensor:
        """The states ``z(t)`` at ``times`` (starting at 0), shape ``(len(times), N, dim)``:
        the trajectories through depth of Fig. 9 (right)."""
        solver = solver or self.config.solver
        times = times.to(x)
        try:
            if solver.adjoint and torch.is_grad_enabled():
                params = tuple(p for p in self.parameters() if p.requires_grad)
                return odeint_adjoint(
                    self.field, x, times, adjoint_params=params, **solver.odeint_kwargs()
                )
            return odeint(self.field, x, times, **solver.odeint_kwargs())
        except AssertionError as err:  # torchdiffeq signals underflow / step limits this way
            raise SolverError(
                f"ODE solver {solver.method} failed ({err}); lower the learning rate, loosen "
                "solver.rtol/atol or raise solver.max_num_steps"
            ) from err

    def forward(self, x: torch.Tensor, solver: SolverConfig | None = None) -> torch.Tensor:
        times = torch.tensor([0.0, self.config.T])
        return self.trajectory(x, times, solver)[-1]


def build_classifier(cfg: ClassifierConfig) -> NODEClassifier:
    """A :class:`NODEClassifier` with all-ones pruning masks attached."""
    from pipeline_lib.pruning import attach_masks

    return attach_masks(NODEClassifier(cfg))


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of points whose largest logit is their label's."""
    return float((logits.argmax(dim=1) == labels).double().mean())
