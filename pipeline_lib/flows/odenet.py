"""Vector fields f(z, t; θ) of a neural ODE: MLPs, with or without time fed to every layer.

Three layer types:

* ``mlp``: ``W z + b``, no time input (an autonomous field ``f(z)``). This is the model of
  the released Sparse Flows code for the toy studies (torchprune
  ``util/models/ffjord.py``, class ``Ffjord``: ``Linear(d, h), act, [Linear(h, h), act] ×
  (L − 2), Linear(h, d)``, integrated by torchdyn's CNF, which calls ``net(x)``). Table S1's
  "Layers L / Hidden h" is ``hidden_dims = [h] * (L − 1)``: Gaussians "2 / 128" is one hidden
  layer of 128 (642 parameters for d = 2), "4 / 64" three of 64 (8,642).
* ``concat``: ``W [t, z] + b``, time concatenated to the layer input (FFJORD, Grathwohl et
  al., 2019, Appendix B.1);
* ``concatsquash``: ``(W z + b) · σ(W_g t + b_g) + W_b t``, time gating and time bias (FFJORD;
  the tabular and image models of Sparse Flows §4.2–4.3).

The weights ``W`` are what Sparse Flows prunes (§3.2, Table 1). The time-gating layers of
``concatsquash`` carry ``prunable = False`` and the last layer of each network carries
``is_output_layer = True`` so that structured pruning never removes the flow's outputs
(see :mod:`pipeline_lib.pruning`).

At a fixed time both layers are affine in their input, ``a = W(t) h + c(t)``, so the Jacobian
``∂f/∂z`` of the whole MLP can be carried forward with the activations by the chain rule:
``J ← W(t) J`` through a layer and ``J ← σ'(a) ⊙ J`` through the activation, starting from
``J = I`` (:meth:`ODENet.forward_with_jacobian`). For low-dimensional data this gives the exact
trace of Eq. (2) without the d vector-Jacobian products of autograd; pruned weights are zeros in
``W`` and need no special treatment.

Example::

    net = ODENet(dim=2, hidden_dims=(64, 64), layer_type="concatsquash", activation="tanh")
    dz = net(torch.tensor(0.5), torch.randn(128, 2))
    dz, jac = net.forward_with_jacobian(torch.tensor(0.5), torch.randn(128, 2))  # jac: (128, 2, 2)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ACTIVATIONS",
    "ACTIVATION_DERIVATIVES",
    "LAYER_TYPES",
    "AutonomousLinear",
    "ConcatLinear",
    "ConcatSquashLinear",
    "ODENet",
]

#: Activation functions of the vector field (Sparse Flows supplement, S7 "Sweep over Activations").
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "softplus": nn.Softplus,
    "elu": nn.ELU,
    "swish": nn.SiLU,  # x·σ(x); FFJORD's swish has a trainable slope, fixed to 1 here
    "relu": nn.ReLU,
}


def _tanh_derivative(act: nn.Module, a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 1 - y * y


def _sigmoid_derivative(act: nn.Module, a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return y * (1 - y)


def _softplus_derivative(act: nn.Module, a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # nn.Softplus is the identity above ``threshold`` (in units of beta·a): slope exactly 1 there.
    ba = a * act.beta if act.beta != 1 else a
    return torch.where(ba > act.threshold, 1.0, torch.sigmoid(ba))


def _elu_derivative(act: nn.Module, a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.where(a > 0, 1.0, y + act.alpha)  # α eᵃ = elu(a) + α for a ≤ 0


def _silu_derivative(act: nn.Module, a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(a)
    return s * (1 + a * (1 - s))


def _relu_derivative(act: nn.Module, a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (a > 0).to(a.dtype)


#: σ'(a) of each activation module, from the pre-activation ``a`` and the output ``y = σ(a)``
#: (same conventions as autograd at the kinks: relu'(0) = 0, elu'(0) = 1). Built from
#: differentiable operations, so second derivatives (e.g. Hessians of the loss) stay available.
ACTIVATION_DERIVATIVES: dict[
    type[nn.Module], Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
] = {
    nn.Tanh: _tanh_derivative,
    nn.Sigmoid: _sigmoid_derivative,
    nn.Softplus: _softplus_derivative,
    nn.ELU: _elu_derivative,
    nn.SiLU: _silu_derivative,
    nn.ReLU: _relu_derivative,
}


class AutonomousLinear(nn.Module):
    """``W z + b``: a linear layer that ignores time (the released code's ``mlp`` field)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def affine(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer as ``F.linear(z, weight, bias)``, the same at every time."""
        return self.linear.weight, self.linear.bias

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.linear(z)


class ConcatLinear(nn.Module):
    """``W [t, z] + b``: a linear layer whose input is the state with time prepended.

    The time column is the first column of ``linear.weight``; it is computed as a bias shift
    ``b + t·W[:, 0]`` instead of materialising the concatenation (same arithmetic, fewer ops).
    """

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in + 1, dim_out)

    def affine(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer at time ``t`` as ``F.linear(z, weight, bias)``; ``weight`` is ∂out/∂z."""
        weight = self.linear.weight
        return weight[:, 1:], self.linear.bias + t * weight[:, 0]

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return F.linear(z, *self.affine(t))


class ConcatSquashLinear(nn.Module):
    """``(W z + b) · σ(W_g t + b_g) + W_b t`` (FFJORD's concatsquash layer).

    ``hyper_gate`` and ``hyper_bias`` act on time only; pruning never scores them (structured
    pruning zeroes a removed neuron's rows of them).
    """

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)
        self.hyper_gate = nn.Linear(1, dim_out)
        self.hyper_bias = nn.Linear(1, dim_out, bias=False)
        self.hyper_gate.prunable = False
        self.hyper_bias.prunable = False

    def affine(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer at time ``t`` as ``F.linear(z, weight, bias)``: ``weight = diag(g) W`` with
        ``g = σ(W_g t + b_g)`` (∂out/∂z) and ``bias = g ⊙ b + W_b t``."""
        t = t.reshape(1, 1).to(self.linear.weight.dtype)
        gate = torch.sigmoid(self.hyper_gate(t)).reshape(-1)
        weight = self.linear.weight * gate.unsqueeze(1)
        return weight, torch.addcmul(self.hyper_bias(t).reshape(-1), self.linear.bias, gate)

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        # Gating the weights (out × in) instead of the outputs (batch × out) is the same map,
        # cheaper for batches larger than the layer and in its backward pass.
        return F.linear(z, *self.affine(t))


LAYER_TYPES: dict[str, type[nn.Module]] = {
    "mlp": AutonomousLinear,
    "concat": ConcatLinear,
    "concatsquash": ConcatSquashLinear,
}


class ODENet(nn.Module):
    """MLP vector field ``f(z, t)``, with time fed to every layer (``concat``, ``concatsquash``)
    or without time (``mlp``).

    Arguments:
        dim: state dimension d (input and output size).
        hidden_dims: widths of the hidden layers; ``len(hidden_dims)`` hidden layers and one
            output layer (Table S1 "Layers"/"Hidden Size", FFJORD Table 4 "hdim").
        layer_type: ``"mlp"``, ``"concat"`` or ``"concatsquash"``.
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

    def _forward_terms(
        self, t: torch.Tensor, z: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """``f(z, t)`` with what its Jacobian is made of: ``∂f/∂z = W_L D_L ⋯ W_1 D_1 W_0``,
        the layers' weights at time ``t`` (``W_i``) and the activation slopes (``D_i = diag σ'``)."""
        derivative = ACTIVATION_DERIVATIVES.get(type(self.activation))
        if derivative is None:
            raise TypeError(
                f"no derivative known for activation {type(self.activation).__name__}; "
                "add it to ACTIVATION_DERIVATIVES or use the 'exact_autograd' trace"
            )
        h = z
        weights: list[torch.Tensor] = []
        slopes: list[torch.Tensor] = []
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            weight, bias = layer.affine(t)  # a = W(t) h + c(t), so ∂a/∂h = W(t)
            weights.append(weight)
            h = F.linear(h, weight, bias)
            if i < last:
                a = h
                h = self.activation(a)
                slopes.append(derivative(self.activation, a, h))  # σ'(a), elementwise
        return h, weights, slopes

    @staticmethod
    def _vjp(
        v: torch.Tensor, weights: list[torch.Tensor], slopes: list[torch.Tensor]
    ) -> torch.Tensor:
        """``vᵀ ∂f/∂z`` by the chain rule, last layer first; ``v`` is ``(..., B, d)``."""
        for i in range(len(weights) - 1, -1, -1):
            v = v @ weights[i]
            if i > 0:
                v = v * slopes[i - 1]
        return v

    def _jacobian_rows(
        self, z: torch.Tensor, weights: list[torch.Tensor], slopes: list[torch.Tensor]
    ) -> torch.Tensor:
        """The d rows ``e_iᵀ ∂f/∂z``, shape ``(d, B, d)`` (``(d, 1, d)`` for a net without hidden
        layers, whose Jacobian does not depend on z)."""
        basis = torch.eye(self.dim, dtype=z.dtype, device=z.device).unsqueeze(1)  # (d, 1, d)
        return self._vjp(basis, weights, slopes)

    def forward_with_jacobian(
        self, t: torch.Tensor, z: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``f(z, t)`` and its Jacobian ``∂f/∂z``, shape ``(B, d, d)`` with ``[b, i, k] = ∂f_i/∂z_k``.

        Row ``i`` is ``e_iᵀ ∂f/∂z``, from the saved layer weights and activation slopes (no
        autograd calls; d extra passes of work, so meant for low dimension). Gradients of both
        outputs follow by ordinary backpropagation.
        """
        f, weights, slopes = self._forward_terms(t, z)
        rows = self._jacobian_rows(z, weights, slopes)  # rows[i, b] = e_iᵀ J_b
        return f, rows.transpose(0, 1).expand(z.shape[0], -1, -1)

    def forward_with_divergence(
        self,
        t: torch.Tensor,
        z: torch.Tensor,
        noise: torch.Tensor | None = None,
        frobenius: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``f(z, t)``, ``Tr ∂f/∂z`` and optionally the RNODE Frobenius term, without autograd.

        With ``noise`` ε (Hutchinson, FFJORD §3.1): the estimate ``εᵀ(∂f/∂z)ε`` and
        ``‖εᵀ∂f/∂z‖²`` from one vector-Jacobian product by the chain rule (one extra pass).
        Without: the exact trace. For one or two hidden layers it has a closed form that costs
        one extra hidden×hidden product for any d; with two,
        ``Tr(W₂ D₂ W₁ D₁ W₀) = Σ_jm σ'₂_j σ'₁_m W₁[j,m] (W₀W₂)[m,j] = σ'₂ᵀ (W₁ ⊙ (W₀W₂)ᵀ) σ'₁``.
        Otherwise (deeper nets, or the exact ``‖∂f/∂z‖²_F``) the d rows of the Jacobian are formed.
        """
        f, weights, slopes = self._forward_terms(t, z)
        if noise is not None:
            e_jac = self._vjp(noise, weights, slopes)
            frob = e_jac.pow(2).sum(1) if frobenius else None
            return f, (e_jac * noise).sum(1), frob
        if not frobenius and len(weights) == 3:
            w0, w1, w2 = weights
            coupling = w1 * (w0 @ w2).T  # (H₂, H₁)
            return f, (slopes[1] * F.linear(slopes[0], coupling)).sum(1), None
        if not frobenius and len(weights) == 2:
            w0, w1 = weights
            return f, slopes[0] @ (w0 * w1.T).sum(1), None
        rows = self._jacobian_rows(z, weights, slopes)
        div = rows.diagonal(dim1=0, dim2=2).sum(-1)
        frob = rows.pow(2).sum((0, 2)).expand(z.shape[0]) if frobenius else None
        return f, div.expand(z.shape[0]), frob
