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

**The classifier as a likelihood model.** The cross-entropy of a labelled point is the
negative log-likelihood of its label, −log softmax(z(T))_y = −log p(y | x). So the classifier
takes the same place as a flow everywhere a model is trained, validated, pruned or its
Hessian analysed: called on a batch of *examples* (rows ``[x, y]``, the class label as the
last column, :func:`labelled_examples`), it returns a :class:`~pipeline_lib.flows.FlowOutput`
whose ``log_prob`` is log p(y | x) per example. The "NLL" of a classifier round is therefore
its cross-entropy in nats. :meth:`NODEClassifier.logits` maps inputs alone to logits.

Example::

    model = build_classifier(ClassifierConfig(dim=2, hidden_dims=(128,)))
    logits = model.logits(x)                          # (N, 2): the state at t = T
    accuracy(logits, labels)
    ce = -model(labelled_examples(x, labels)).log_prob.mean()   # the training loss
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torchdiffeq import odeint, odeint_adjoint

from pipeline_lib.flows import FlowOutput, SolverConfig, SolverError
from pipeline_lib.flows.odenet import ODENet

__all__ = [
    "ClassifierConfig",
    "NODEClassifier",
    "accuracy",
    "build_classifier",
    "labelled_examples",
    "split_examples",
]


def _released_solver() -> SolverConfig:
    return SolverConfig(method="dopri5", rtol=1e-4, atol=1e-4, adjoint=True)


@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture of a neural-ODE classifier (the released ``Node``; Table S1 "MOON").

    Arguments:
        dim: input dimension = number of classes (``None`` in an experiment's settings, where
            the data decides it; :func:`build_classifier` needs it).
        hidden_dims: hidden widths of the vector field; the released ``l2_h128`` of Table S1
            is ``(128,)`` (L Linear layers are L − 1 hidden layers). The default is the
            workflow's ``model.hidden_dims`` default, shared with the flows.
        activation: see :data:`~pipeline_lib.flows.odenet.ACTIVATIONS` (released: ``tanh``).
        T: integration time (released: 1).
        solver: the ODE solver (released: dopri5, atol = rtol = 1e-4, adjoint).
    """

    dim: int | None = None
    hidden_dims: tuple[int, ...] = (64, 64)
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


def labelled_examples(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The examples of a classifier: rows ``[x, y]``, the integer class label as the last
    column (exact in float32 up to 2^24 classes), so that shuffling, batching, moving to a
    device and sub-sampling treat inputs and labels together."""
    if labels.shape != (x.shape[0],):
        raise ValueError(
            f"labelled_examples: {x.shape[0]} inputs need {x.shape[0]} labels, got shape "
            f"{tuple(labels.shape)}"
        )
    return torch.cat([x, labels.to(x.dtype)[:, None]], dim=1)


def split_examples(examples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, labels)`` of a batch of :func:`labelled_examples`."""
    return examples[:, :-1], examples[:, -1].round().long()


class NODEClassifier(nn.Module):
    """``x ↦ z(T)`` with ``z(0) = x`` and ``dz/dt = f(z)``: the logits of a neural-ODE
    classifier; called on examples, the log-likelihood of their labels (module docstring).

    ``solver`` is the training solver; it is an attribute (as a CNF block's) so that the
    Hessian analysis can switch its adjoint off."""

    def __init__(self, cfg: ClassifierConfig) -> None:
        super().__init__()
        if cfg.dim is None:
            raise ValueError("ClassifierConfig.dim is not set: give the input dimension")
        self.config = cfg
        self.solver = cfg.solver
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
        solver = solver or self.solver
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

    def logits(self, x: torch.Tensor, solver: SolverConfig | None = None) -> torch.Tensor:
        """The class logits z(T) of inputs ``x`` (N, dim)."""
        times = torch.tensor([0.0, self.config.T])
        return self.trajectory(x, times, solver)[-1]

    def forward(
        self,
        examples: torch.Tensor,
        regularize: bool = False,
        solver: SolverConfig | None = None,
        trace: str | None = None,
        generator: torch.Generator | None = None,
    ) -> FlowOutput:
        """log p(y | x) = log softmax(z(T))_y of each example ``[x, y]`` (rows of
        :func:`labelled_examples`), with the logits as ``z`` and the NFE of the solve: the
        interface of :class:`~pipeline_lib.flows.ContinuousFlow`, so that training,
        validation and the Hessian analysis treat both alike. ``trace`` and ``generator``
        concern a flow's divergence and are ignored; RNODE's regularizers are defined for
        flows and refused here."""
        if regularize:
            raise ValueError(
                "the RNODE regularizers are defined for flows, not for the neural-ODE "
                "classifier; set train.lambda_kinetic and train.lambda_jacobian to 0"
            )
        if examples.shape[1] != self.config.dim + 1:
            raise ValueError(
                f"the classifier takes examples [x, y] of {self.config.dim + 1} columns "
                f"({self.config.dim} inputs and the label), got {examples.shape[1]}"
            )
        x, labels = split_examples(examples)
        if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < self.config.dim:
            raise ValueError(
                f"class labels must lie in 0..{self.config.dim - 1} (the classifier has "
                f"{self.config.dim} logits), got {int(labels.min())}..{int(labels.max())}; use "
                "a data set with as many classes as input dimensions (moons, concentric)"
            )
        nfe0 = self.nfe
        logits = self.logits(x, solver)
        log_prob = torch.log_softmax(logits, dim=1).gather(1, labels[:, None])[:, 0]
        return FlowOutput(z=logits, log_prob=log_prob, nfe=self.nfe - nfe0)

    def predict(self, x: torch.Tensor, solver: SolverConfig | None = None) -> torch.Tensor:
        """Predicted classes of inputs ``x``, without a graph."""
        with torch.no_grad():
            return self.logits(x, solver).argmax(dim=1)


def build_classifier(cfg: ClassifierConfig) -> NODEClassifier:
    """A :class:`NODEClassifier` with all-ones pruning masks attached."""
    from pipeline_lib.pruning import attach_masks

    return attach_masks(NODEClassifier(cfg))


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of points whose largest logit is their label's."""
    return float((logits.argmax(dim=1) == labels).double().mean())
