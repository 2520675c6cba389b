"""Vector fields f(z, t; θ) of a neural ODE: MLPs with time fed to every layer.

Two layer types, as in FFJORD (Grathwohl et al., 2019, Appendix B.1; the layers used by the
Sparse Flows experiments, §4.1–4.2):

* ``concat``: ``W [t, z] + b``, time concatenated to the layer input;
* ``concatsquash``: ``(W z + b) · σ(W_g t + b_g) + W_b t``, time gating and time bias.

The weights ``W`` are what Sparse Flows prunes (§3.2, Table 1). The time-gating layers of
``concatsquash`` carry ``prunable = False`` and the last layer of each network carries
``is_output_layer = True`` so that structured pruning never removes the flow's outputs
(see :mod:`pipeline_lib.pruning`).

Example::

    net = ODENet(dim=2, hidden_dims=(64, 64), layer_type="concatsquash", activation="tanh")
    dz = net(torch.tensor(0.5), torch.randn(128, 2))
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ACTIVATIONS", "LAYER_TYPES", "ConcatLinear", "ConcatSquashLinear", "ODENet"]

#: Activation functions of the vector field (Sparse Flows supplement, S7 "Sweep over Activations").
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "softplus": nn.Softplus,
    "elu": nn.ELU,
    "swish": nn.SiLU,  # x·σ(x); FFJORD's swish has a trainable slope, fixed to 1 here
    "relu": nn.ReLU,
}


class ConcatLinear(nn.Module):
    """``W [t, z] + b``: a linear layer whose input is the state with time prepended.

    The time column is the first column of ``linear.weight``; it is computed as a bias shift
    ``b + t·W[:, 0]`` instead of materialising the concatenation (same arithmetic, fewer ops).
    """

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in + 1, dim_out)

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        weight = self.linear.weight
        return F.linear(z, weight[:, 1:], self.linear.bias + t * weight[:, 0])


class ConcatSquashLinear(nn.Module):
    """``(W z + b) · σ(W_g t + b_g) + W_b t`` (FFJORD's concatsquash layer).

    ``hyper_gate`` and ``hyper_bias`` act on time only; they stay dense under pruning.
    """

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)
        self.hyper_gate = nn.Linear(1, dim_out)
        self.hyper_bias = nn.Linear(1, dim_out, bias=False)
        self.hyper_gate.prunable = False
        self.hyper_bias.prunable = False

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        t = t.reshape(1, 1).to(z.dtype)
        gate = torch.sigmoid(self.hyper_gate(t))
        return self.linear(z) * gate + self.hyper_bias(t)


LAYER_TYPES: dict[str, type[nn.Module]] = {
    "concat": ConcatLinear,
    "concatsquash": ConcatSquashLinear,
}


class ODENet(nn.Module):
    """MLP vector field ``f(z, t)`` with time fed to every layer.

    Arguments:
        dim: state dimension d (input and output size).
        hidden_dims: widths of the hidden layers; ``len(hidden_dims)`` hidden layers and one
            output layer (Table S1 "Layers"/"Hidden Size", FFJORD Table 4 "hdim").
        layer_type: ``"concat"`` or ``"concatsquash"``.
        activation: one of :data:`ACTIVATIONS`; applied after every layer but the last.
    """

    def __init__(
        self,
        dim: int,
        hidden_dims: Sequence[int],
        layer_type: str = "concatsquash",
        activation: str = "tanh",
    ) -> None:
        super().__init__()
        if layer_type not in LAYER_TYPES:
            raise ValueError(
                f"unknown layer_type {layer_type!r}; choose one of {sorted(LAYER_TYPES)}"
            )
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}"
            )
        widths = [dim, *[int(h) for h in hidden_dims], dim]
        layer = LAYER_TYPES[layer_type]
        self.layers = nn.ModuleList(layer(a, b) for a, b in pairwise(widths))
        self.layers[-1].linear.is_output_layer = True
        self.activation = ACTIVATIONS[activation]()
        self.dim = dim

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h = z
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h = layer(t, h)
            if i < last:
                h = self.activation(h)
        return h
