"""FFJORD's multiscale CNF for images (FFJORD Appendix B.1; Sparse Flows §4.3, Table S3).

The released configurations (``paper/node/param/cnf/{mnist,cifar}_multiscale.yaml``) build
FFJORD's ``ODENVP`` (``lib/odenvp.py``) through torchprune's ``FfjordCNF`` wrapper with dims
64,64,64, two blocks per scale, ``concat`` convolutions, softplus, ``train_T`` True and
Gaussian Hutchinson noise (``rademacher`` False). FFJORD's ``train_T`` registers the end time
as a parameter of every block, but its CNF builds the integration times with
``torch.tensor([0, sqrt_end_time²])``, which cuts the gradient: the end time stays 1. Here it
is fixed at 1 (``train_T`` False in :data:`RELEASED`), the same model; the parameter count
leaves out the 10 (MNIST) or 14 (CIFAR-10) untrained end-time scalars that FFJORD's includes.
Reimplemented here:

- the input x ∈ [0, 1)^{C×H×W} goes through the logit transform (α = 1e-6,
  :func:`~pipeline_lib.flows.images.logit_transform`);
- scale s = 0 … S−1 (S = how often H and W can be halved while ≥ 4: MNIST 3, CIFAR-10 4):
  ``num_blocks`` CNF blocks on the current shape, a :func:`~pipeline_lib.flows.images.squeeze`
  (not on the last scale), ``num_blocks`` more blocks on the squeezed shape; then half of the
  channels are factored out to the base distribution and the other half goes on;
- every block's field is :class:`ConvODENet`: 3×3 convolutions ``c → 64 → 64 → 64 → c``, each
  with the time as an extra input channel (FFJORD's ``ConcatConv2d``), softplus between;
- the base distribution is a standard normal over all factored-out parts.

Parameter counts (:func:`build_multiscale`, checked by a test): MNIST 800,636 and CIFAR-10
1,358,868 weights and biases (FFJORD's count with the end times: 800,646 and 1,358,882), the
published 801K and 1.36M.

What a call returns (:class:`~pipeline_lib.flows.FlowOutput`): ``log_prob`` is the
log-probability of the *8-bit* image under uniform dequantization, log p(x) − D log 256, so that
the pipeline's NLL in nats is that of the discrete image and
:func:`~pipeline_lib.flows.bits_per_dim` gives FFJORD's bits/dim directly. Called on uint8
images ``(N, C, H, W)`` the model dequantizes them (x = (k + u)/256 with u ~ U[0, 1), drawn
from ``generator`` when given, so that evaluations with a seeded generator are repeatable) and,
in training mode with ``hflip``, flips them at random (CIFAR-10); float input is taken as
already dequantized.

Example::

    flow = build_multiscale(MultiscaleConfig(dim=(1, 28, 28), **RELEASED))
    out = flow(images_uint8)            # FlowOutput; -out.log_prob.mean() is the NLL in nats
    bits = bits_per_dim(-out.log_prob.mean(), 784)
    samples = flow.sample(16)           # uint8-range floats in [0, 1]
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from pipeline_lib.flows.cnf import (
    CNF,
    FlowOutput,
    SolverConfig,
    run_blocks,
    standard_normal_logprob,
)
from pipeline_lib.flows.images import (
    LOGIT_ALPHA,
    dequantize,
    inverse_logit_transform,
    logit_transform,
    random_hflip,
    squeeze,
    unsqueeze,
)
from pipeline_lib.flows.odenet import ACTIVATIONS

__all__ = [
    "RELEASED",
    "ConcatConv2d",
    "ConvODENet",
    "MultiscaleConfig",
    "MultiscaleFlow",
    "build_multiscale",
]


#: The released architecture (``ffjord_multiscale_{mnist,cifar}``): ``MultiscaleConfig(dim=…,
#: **RELEASED)``; its end time stays 1 (module docstring). The dataclass defaults are the
#: workflow's shared ``model`` defaults instead.
RELEASED: dict = {
    "hidden_dims": (64, 64, 64),
    "num_blocks": 2,
    "activation": "softplus",
    "train_T": False,
}


@dataclass(frozen=True)
class MultiscaleConfig:
    """Architecture of the multiscale image flow. The defaults of the keys it shares with the
    other families are the workflow's (``model.*`` in ``config/README.md``); the released
    model is :data:`RELEASED` (dims 64,64,64, two blocks per scale, softplus, T = 1).

    Arguments:
        dim: the image shape ``(C, H, W)`` (``None`` in an experiment's settings: the data
            sets it, as it sets a vector model's dimension).
        hidden_dims: channels of the hidden convolutions of every block's field.
        num_blocks: CNF blocks before and after each squeeze.
        activation: see :data:`~pipeline_lib.flows.odenet.ACTIVATIONS` (released: softplus).
        T, train_T: initial end time of every block, and whether it is learned.
        trace, noise: divergence estimator and Hutchinson noise (released: Gaussian).
        alpha: the logit transform's α.
        hflip: random horizontal flips of training images (FFJORD flips CIFAR-10's; an
            experiment sets it from its data set).
        solver: the ODE solver (FFJORD: dopri5, 1e-5).
    """

    dim: tuple[int, int, int] | None = None
    hidden_dims: tuple[int, ...] = (64, 64)
    num_blocks: int = 1
    activation: str = "tanh"
    T: float = 1.0
    train_T: bool = False
    trace: str = "hutchinson"
    noise: str = "gaussian"
    alpha: float = LOGIT_ALPHA
    hflip: bool = False
    solver: SolverConfig = field(default_factory=SolverConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_dims", tuple(int(h) for h in self.hidden_dims))
        if self.dim is not None:
            object.__setattr__(self, "dim", tuple(int(s) for s in self.dim))
        if self.num_blocks < 1:
            raise ValueError(f"model.num_blocks must be at least 1, got {self.num_blocks}")
        if not 0 <= self.alpha < 0.5:
            raise ValueError(f"model.alpha must be in [0, 0.5), got {self.alpha}")

    @classmethod
    def from_dict(cls, d: dict) -> MultiscaleConfig:
        d = dict(d)
        solver = d.pop("solver", None) or {}
        if not isinstance(solver, SolverConfig):
            solver = SolverConfig(**solver)
        return cls(solver=solver, **d)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden_dims"] = list(self.hidden_dims)
        d["dim"] = None if self.dim is None else list(self.dim)
        return d


class ConcatConv2d(nn.Module):
    """A 3×3 convolution whose input has the time as an extra first channel (FFJORD's
    ``ConcatConv2d``); the convolution, ``self.conv``, is what pruning sees."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in + 1, c_out, kernel_size=3, padding=1)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        tt = torch.ones_like(x[:, :1]) * t
        return self.conv(torch.cat([tt, x], dim=1))


class ConvODENet(nn.Module):
    """f(z, t) on images: ``ConcatConv2d`` layers c → hidden… → c with an activation between
    (FFJORD's ``ODEnet`` with ``conv=True``, ``layer_type="concat"``, strides 1)."""

    def __init__(self, channels: int, hidden_dims: tuple[int, ...], activation: str) -> None:
        super().__init__()
        dims = (channels, *hidden_dims, channels)
        self.layers = nn.ModuleList(
            ConcatConv2d(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True)
        )
        self.layers[-1].conv.is_output_layer = True
        self.activation = ACTIVATIONS[activation]()

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h = z
        for i, layer in enumerate(self.layers):
            h = layer(t, h)
            if i < len(self.layers) - 1:
                h = self.activation(h)
        return h


def _n_scales(height: int, width: int) -> int:
    n = 0
    while height >= 4 and width >= 4:
        n, height, width = n + 1, height // 2, width // 2
    return n


class MultiscaleFlow(nn.Module):
    """FFJORD's multiscale CNF (module docstring)."""

    def __init__(self, cfg: MultiscaleConfig) -> None:
        super().__init__()
        if cfg.dim is None:
            raise ValueError("MultiscaleConfig.dim is not set: give (C, H, W)")
        self.config = cfg
        c, h, w = cfg.dim
        self.n_scales = _n_scales(h, w)
        if self.n_scales < 1:
            raise ValueError(f"images of {h}×{w} are too small for the multiscale flow (≥ 4×4)")

        def blocks(channels: int) -> nn.ModuleList:
            return nn.ModuleList(
                CNF(
                    ConvODENet(channels, cfg.hidden_dims, cfg.activation),
                    T=cfg.T,
                    train_T=cfg.train_T,
                    trace=cfg.trace,
                    noise=cfg.noise,
                    solver=cfg.solver,
                )
                for _ in range(cfg.num_blocks)
            )

        self.pre = nn.ModuleList()
        self.post = nn.ModuleList()
        self.out_shapes: list[tuple[int, int, int]] = []
        for s in range(self.n_scales):
            self.pre.append(blocks(c))
            if s < self.n_scales - 1:
                self.post.append(blocks(4 * c))
                c, h, w = 4 * c, h // 2, w // 2
                self.out_shapes.append((c // 2, h, w))
                c //= 2
            else:
                self.out_shapes.append((c, h, w))

    @property
    def blocks(self) -> list[CNF]:
        """Every CNF block, in the order data flows through them."""
        out = []
        for s in range(self.n_scales):
            out += list(self.pre[s]) + (list(self.post[s]) if s < len(self.post) else [])
        return out

    @property
    def num_dims(self) -> int:
        return math.prod(self.config.dim)

    @property
    def nfe(self) -> int:
        return sum(b.dynamics.nfe for b in self.blocks)

    def _prepare(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if x.dtype == torch.uint8:
            if self.training and self.config.hflip:
                x = random_hflip(x, generator)
            ref = next(self.parameters())
            x = dequantize(x, generator).to(ref.dtype)
        return x

    def forward(
        self,
        x: torch.Tensor,
        regularize: bool = False,
        solver: SolverConfig | None = None,
        trace: str | None = None,
        generator: torch.Generator | None = None,
    ) -> FlowOutput:
        """log-probability of 8-bit images (module docstring), with the RNODE terms when
        ``regularize``."""
        nfe0 = self.nfe
        x = self._prepare(x, generator)
        z, logdet = logit_transform(x, self.config.alpha)
        delta = -logdet  # the blocks accumulate log p(x) = log p(z) − delta
        terms = (None, None)
        step = dict(regularize=regularize, solver=solver, trace=trace, generator=generator)
        factored = []
        for s in range(self.n_scales):
            z, delta, terms = run_blocks(self.pre[s], z, delta, terms, **step)
            if s < self.n_scales - 1:
                z, delta, terms = run_blocks(self.post[s], squeeze(z), delta, terms, **step)
                half = z.shape[1] // 2
                factored.append(z[:, half:])
                z = z[:, :half]
        factored.append(z)
        log_px = sum(standard_normal_logprob(f) for f in factored) - delta
        log_prob = log_px - self.num_dims * math.log(256.0)
        flat = torch.cat([f.flatten(1) for f in factored], dim=1)
        return FlowOutput(flat, log_prob, *terms, self.nfe - nfe0)

    def inverse(
        self,
        z: torch.Tensor,
        solver: SolverConfig | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Map base points ``(N, D)`` to images in [0, 1] (the inverse of the forward map,
        logit transform included; no density)."""
        parts, i = [], 0
        for shape in self.out_shapes:
            n = math.prod(shape)
            parts.append(z[:, i : i + n].reshape(-1, *shape))
            i += n
        delta = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
        y = parts[-1]
        for s in reversed(range(self.n_scales)):
            if s < self.n_scales - 1:
                y = torch.cat([y, parts[s]], dim=1)
                for block in reversed(self.post[s]):
                    y, _ = block(y, delta, reverse=True, solver=solver, density=False)
                y = unsqueeze(y)
            for block in reversed(self.pre[s]):
                y, _ = block(y, delta, reverse=True, solver=solver, density=False)
        return inverse_logit_transform(y, self.config.alpha)

    def sample(
        self,
        n: int,
        solver: SolverConfig | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``n`` images in [0, 1] from standard normal base draws (of ``generator``); the
        inverse logit transform overshoots [0, 1] by up to α / (1 − 2α), which is clipped."""
        ref = next(self.parameters())
        z = torch.randn(n, self.num_dims, generator=generator, dtype=ref.dtype)
        return self.inverse(z.to(ref.device), solver=solver).clamp(0.0, 1.0)


def build_multiscale(cfg: MultiscaleConfig) -> MultiscaleFlow:
    """A :class:`MultiscaleFlow` with all-ones pruning masks attached."""
    from pipeline_lib.pruning import attach_masks

    return attach_masks(MultiscaleFlow(cfg))
