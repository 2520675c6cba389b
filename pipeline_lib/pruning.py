"""Pruning for Sparse Flows: binary masks, weight and neuron pruning, prune schedules.

This module implements the PRUNE step of Sparse Flows (Algorithm 1, line 5) with the two
methods of Table 1:

* **unstructured** (Han et al., 2015): target = weights, score = :math:`|W_{ij}|`,
  scope = global over all prunable layers (:func:`prune_unstructured`);
* **structured** (Li et al., 2016): target = neurons (rows of a linear layer) or output
  filters (of a convolution), score = :math:`\\|W_{i:}\\|_1`, scope = local, the same
  fraction of live neurons kept in every layer, solved to meet the round's parameter budget
  (:func:`prune_structured`).

Both are iterative (Sparse Flows §3.2): each call only removes weights that are still alive,
so masks are monotone and the overall keep ratio after ``n`` rounds of a relative prune
ratio ``PR`` is :math:`(1 - PR)^n` (:func:`keep_schedule`). Between prune steps the
network is retrained with learning-rate rewinding (Renda et al., 2020), which lives in the
training code; :class:`EarlyStopping` implements the loop condition of Algorithm 1, line 4.

**What is prunable.** The ``weight`` of every :class:`~torch.nn.Linear` and convolution
module of the vector field, unless the module carries ``prunable = False`` (the
concatsquash time-gating layers ``hyper_gate``/``hyper_bias`` of FFJORD set this, so the
time conditioning is never scored). Biases are never scored. Both methods follow the
released code in what a keep ratio counts: a budget of nonzero parameters over *all*
parameters, biases and unprunable layers included (:func:`prune_unstructured` meets it
exactly by the number of weights it keeps; :func:`prune_structured` to within one neuron).
In structured pruning a removed neuron loses its weight row and the input columns it feeds
in the next layer (the output layer's included) but keeps its bias (for concatsquash its time
path is zeroed too).
Modules with ``is_output_layer = True`` are the output layers of the vector fields:
structured pruning never removes their rows, since that would remove output dimensions of
the dynamics.

**How masks are stored and applied.** Each prunable module holds a ``weight_mask`` buffer
(same shape and dtype as its weight, entries 0/1) and, when it has a bias, a
``bias_mask`` buffer, so masks belong to ``state_dict()`` and survive checkpoints. A fresh
model needs :func:`attach_masks` before ``load_state_dict`` of a pruned checkpoint. Masks
are *not* applied by forward hooks or parametrizations: a continuous-depth model evaluates
its vector field hundreds of times per batch inside the ODE solver, and re-multiplying
every weight at every function evaluation would cost time for nothing. Instead the
training loop calls :func:`apply_masks` after each optimizer step (``weight *= mask``),
which keeps pruned weights exactly zero even under momentum and decoupled weight decay,
and may call :func:`mask_gradients` before the step.

References:
    | Sparse Flows: Pruning Continuous-depth Models (Liebenwein et al., NeurIPS 2021),
      §3.2, Algorithm 1, Table 1; supplement §S8.
    | Learning both Weights and Connections for Efficient Neural Networks
      (Han et al., 2015).
    | Pruning Filters for Efficient ConvNets (Li et al., 2016).
    | Comparing Rewinding and Fine-tuning in Neural Network Pruning (Renda et al., 2020).

Example:
    >>> import torch.nn as nn
    >>> net = attach_masks(nn.Sequential(nn.Linear(2, 64), nn.Tanh(), nn.Linear(64, 2)))
    >>> for keep in keep_schedule(0.2, rounds=3):
    ...     prune_unstructured(net, keep)  # then retrain, calling apply_masks after steps
    >>> count_parameters(net)  # (total, nonzero): round(0.512 * 322) = 165, 66 of them biases
    (322, 165)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

__all__ = [
    "EarlyStopping",
    "apply_masks",
    "attach_masks",
    "count_parameters",
    "keep_schedule",
    "keep_schedule_to_target",
    "mask_gradients",
    "paper_images_keep_schedule",
    "paper_toy_keep_schedule",
    "prunable_density",
    "prunable_layers",
    "prune",
    "prune_ratio",
    "prune_structured",
    "prune_unstructured",
]

log = logging.getLogger("sparseflows.pruning")

PruneMethod = Literal["unstructured", "structured"]

WEIGHT_MASK = "weight_mask"
BIAS_MASK = "bias_mask"

_PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)
_TRANSPOSED_TYPES: tuple[type[nn.Module], ...] = (
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)


# --------------------------------------------------------------------------- layers and masks


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Return the prunable modules of ``model`` with their qualified names.

    A module is prunable when it is a :class:`~torch.nn.Linear` or a (transposed)
    convolution with a weight parameter and does not carry ``prunable = False``. The order
    is that of :meth:`torch.nn.Module.named_modules` (registration order), so it is the
    same for every instance of an architecture; it defines the global index used to break
    ties in :func:`prune_unstructured`.

    Arguments:
        model: any module, e.g. a CNF whose vector fields are built from linear/conv layers.

    Returns:
        ``[(name, module), ...]``; the root module has the name ``""``.
    """
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, _PRUNABLE_TYPES)
        and isinstance(getattr(module, "weight", None), nn.Parameter)
        and getattr(module, "prunable", True) is not False
    ]


def attach_masks(model: nn.Module) -> nn.Module:
    """Register all-ones ``weight_mask`` (and ``bias_mask``) buffers where missing.

    Idempotent: existing masks are left untouched. Must run on a fresh model before
    ``load_state_dict`` of a pruned checkpoint, because the masks are part of the state
    dict (Sparse Flows, Algorithm 1, line 3: :math:`m \\leftarrow 1^{|\\theta_0|}`).

    Arguments:
        model: the model to equip with masks (modified in place).

    Returns:
        ``model`` itself, for chaining.
    """
    for _, module in prunable_layers(model):
        if not hasattr(module, WEIGHT_MASK):
            module.register_buffer(WEIGHT_MASK, torch.ones_like(module.weight.detach()))
        bias = getattr(module, "bias", None)
        if isinstance(bias, nn.Parameter) and not hasattr(module, BIAS_MASK):
            module.register_buffer(BIAS_MASK, torch.ones_like(bias.detach()))
    return model


def _masked_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Prunable layers that already carry a ``weight_mask``."""
    for name, module in prunable_layers(model):
        if hasattr(module, WEIGHT_MASK):
            yield name, module


@torch.no_grad()
def apply_masks(model: nn.Module) -> None:
    """Zero pruned weights in place: ``weight *= weight_mask`` (and ``bias *= bias_mask``).

    Call after every optimizer step so that pruned weights stay exactly zero during
    retraining (Sparse Flows, Algorithm 1, line 6: TRAIN(:math:`m \\odot \\theta`)). Layers
    without masks are left alone.
    """
    for _, module in _masked_layers(model):
        module.weight.mul_(getattr(module, WEIGHT_MASK))
        bias_mask = getattr(module, BIAS_MASK, None)
        if bias_mask is not None and module.bias is not None:
            module.bias.mul_(bias_mask)


@torch.no_grad()
def mask_gradients(model: nn.Module) -> None:
    """Zero the gradients of pruned weights (and pruned bias entries) in place.

    Optional before the optimizer step: it keeps pruned entries out of the gradient norm
    (for clipping) and out of the optimizer's moment estimates. :func:`apply_masks` after
    the step is what guarantees exact zeros.
    """
    for _, module in _masked_layers(model):
        if module.weight.grad is not None:
            module.weight.grad.mul_(getattr(module, WEIGHT_MASK))
        bias_mask = getattr(module, BIAS_MASK, None)
        if bias_mask is not None and module.bias is not None and module.bias.grad is not None:
            module.bias.grad.mul_(bias_mask)


# --------------------------------------------------------------------------- pruning


def _check_keep(keep: float) -> float:
    keep = float(keep)
    if not (math.isfinite(keep) and 0.0 <= keep <= 1.0):
        raise ValueError(
            f"keep must be the fraction of parameters to keep, in [0, 1]; got {keep!r}. "
            "Use keep = 1 - prune_ratio (e.g. keep_schedule(...) gives it per round)."
        )
    return keep


def _require_prunable(model: nn.Module) -> list[tuple[str, nn.Module]]:
    layers = prunable_layers(attach_masks(model))
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no prunable layers (nn.Linear/nn.Conv*d without "
            "`prunable = False`); nothing to prune or measure."
        )
    return layers


def _stable_smallest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` smallest scores; ties go to the lower index."""
    order = torch.sort(scores, stable=True).indices
    return order[:count]


@torch.no_grad()
def prune_unstructured(model: nn.Module, keep: float) -> None:
    """Global magnitude pruning of weights (Sparse Flows, Table 1, left column), with the
    released code's budget (torchprune ``ThresNet``, ``BaseCompressedNet._compress_once``).

    **Budget.** ``keep`` is the overall density of *all* parameters after the round (nonzero /
    total, biases and non-prunable layers included), as for :func:`prune_structured`: the
    round may keep ``round(keep · total)`` nonzero parameters. The parameters that cannot be
    pruned (biases, non-prunable layers, a trainable end time) are subtracted from it, as the
    released code subtracts its "uncompressible size", and the rest is the number of prunable
    weights that stay: ``n_keep = clip(round(keep · total) − nonzero_other, 0, alive)``.
    Where the unprunable parameters alone exceed the budget, every prunable weight is pruned
    (the released code clips the available budget at 0 the same way) and a warning says so:
    the Gaussians l2_h128 flow has 130 biases among its 642 parameters, so its weights are
    gone once keep < 0.2025.

    **Which weights.** Target: individual weights; score: :math:`|W_{ij}|`; scope: global over
    all prunable layers (Han et al., 2015). Among the weights that are still unpruned, the
    globally smallest magnitudes are pruned. Already-pruned weights stay pruned, so masks are
    monotone and iterating with :func:`keep_schedule` follows the schedule's overall keep
    ratios (Algorithm 1, line 5). Ties are broken by the position in the concatenation of the
    flattened weights in :func:`prunable_layers` order (the earlier weight is pruned first).
    The largest pruned magnitude is the "pre-defined threshold" of supplement §S8. Biases are
    never pruned. The new masks are applied to the weights immediately.

    Arguments:
        model: the model (masks are attached if missing).
        keep: overall keep ratio of all parameters after this round, e.g. :math:`(1 - PR)^r`.
            If the model already meets it nothing happens.
    """
    keep = _check_keep(keep)
    layers = _require_prunable(model)
    apply_masks(model)
    masks = [getattr(module, WEIGHT_MASK) for _, module in layers]
    sizes = [mask.numel() for mask in masks]
    total, nonzero = count_parameters(model)
    budget = round(keep * total)
    nonzero_weights = sum(int(torch.count_nonzero(module.weight)) for _, module in layers)
    n_keep = max(0, budget - (nonzero - nonzero_weights))
    if n_keep == 0 and nonzero_weights > 0:
        log.warning(
            "unstructured pruning cannot meet the budget of %d of %d parameters (keep %.4f): "
            "the %d parameters that are not prunable weights exceed it; all prunable weights "
            "pruned",
            budget,
            total,
            keep,
            nonzero - nonzero_weights,
        )

    alive = torch.cat([mask.detach().reshape(-1).cpu() != 0 for mask in masks])
    n_alive = int(alive.sum())
    if n_keep >= n_alive:
        return
    scores = torch.cat(
        [
            (module.weight.detach() * mask).abs().reshape(-1).cpu().double()
            for (_, module), mask in zip(layers, masks, strict=True)
        ]
    )
    alive_idx = torch.nonzero(alive).squeeze(1)
    pruned = alive_idx[_stable_smallest(scores[alive_idx], n_alive - n_keep)]
    alive[pruned] = False

    for mask, new in zip(masks, torch.split(alive, sizes), strict=True):
        mask.copy_(new.reshape(mask.shape).to(device=mask.device, dtype=mask.dtype))
    apply_masks(model)


def _row_dim(module: nn.Module) -> int:
    """Dimension of the weight that indexes output neurons/filters."""
    if isinstance(module, _TRANSPOSED_TYPES):
        if module.groups != 1:
            raise ValueError(
                f"structured pruning of grouped transposed convolutions is not supported "
                f"({module}); mark the layer `prunable = False` or use groups=1."
            )
        return 1
    return 0


@dataclass(eq=False)
class _NeuronLayer:
    """A prunable layer whose rows (output units) are neurons, as structured pruning sees it.

    ``time``: the concatsquash time path of the same neurons (``hyper_gate``, ``hyper_bias``),
    zeroed with a removed neuron. ``feeds``: the layer that takes this one's outputs as its
    input columns ``offset + j`` (``offset`` = 1 for ``concat``'s time column), if known.
    """

    module: nn.Module
    output: bool
    time: tuple[nn.Module, ...] = ()
    feeds: _NeuronLayer | None = None
    offset: int = 0

    @property
    def dim(self) -> int:
        return _row_dim(self.module)

    def rows_alive(self) -> torch.Tensor:
        mask = getattr(self.module, WEIGHT_MASK).movedim(self.dim, 0)
        return mask.reshape(mask.shape[0], -1).ne(0).any(dim=1).cpu()

    def scores(self) -> torch.Tensor:
        """ℓ1 norm of every row over its live inputs (pruned inputs are zeros)."""
        w = (self.module.weight.detach() * getattr(self.module, WEIGHT_MASK)).movedim(self.dim, 0)
        return w.reshape(w.shape[0], -1).abs().sum(dim=1).cpu().double()


def _unit(layer: nn.Module) -> nn.Module | None:
    """The linear map of one layer of a vector field: its ``linear`` (``nn.Linear``) or its
    ``conv`` (``nn.Conv2d``, the image flows' ``ConcatConv2d``)."""
    for name, kind in (("linear", nn.Linear), ("conv", nn.Conv2d)):
        module = getattr(layer, name, None)
        if isinstance(module, kind):
            return module
    return None


def _width(module: nn.Module, side: str) -> int:
    """Input or output features / channels of a linear layer or convolution."""
    if isinstance(module, nn.Linear):
        return module.in_features if side == "in" else module.out_features
    return module.in_channels if side == "in" else module.out_channels


def _neuron_layers(model: nn.Module) -> list[_NeuronLayer]:
    """The prunable layers of ``model`` in forward order where it is known: the vector fields'
    ``layers`` (each with a ``linear`` or a ``conv``, and concatsquash's time path) and
    ``nn.Sequential`` stacks of ``nn.Linear``; every other prunable layer stands alone (no
    column propagation). A convolution's "neurons" are its output filters, and the columns it
    feeds are the next convolution's input channels."""
    out: list[_NeuronLayer] = []
    seen: set[int] = set()
    prunable = {id(m) for _, m in prunable_layers(model)}
    for module in model.modules():
        layers = getattr(module, "layers", None)
        if isinstance(layers, nn.ModuleList) and all(_unit(layer) is not None for layer in layers):
            chain = [
                (
                    _unit(layer),
                    tuple(
                        m
                        for m in (
                            getattr(layer, "hyper_gate", None),
                            getattr(layer, "hyper_bias", None),
                        )
                        if m is not None
                    ),
                )
                for layer in layers
            ]
        elif isinstance(module, nn.Sequential):
            chain = [(m, ()) for m in module if isinstance(m, nn.Linear)]
        else:
            continue
        previous = None
        for linear, time in chain:
            if id(linear) in seen or id(linear) not in prunable:
                previous = None
                continue
            layer = _NeuronLayer(linear, bool(getattr(linear, "is_output_layer", False)), time)
            if previous is not None:
                previous.feeds = layer
                layer.offset = _width(linear, "in") - _width(previous.module, "out")
            out.append(layer)
            seen.add(id(linear))
            previous = layer
    for _, module in prunable_layers(model):
        if id(module) not in seen:
            out.append(_NeuronLayer(module, bool(getattr(module, "is_output_layer", False))))
    return out


def _structured_state(
    layers: list[_NeuronLayer], rows: dict[int, torch.Tensor]
) -> dict[int, tuple[torch.Tensor, torch.Tensor | None]]:
    """New (weight mask, bias mask) of every layer when only ``rows`` (per layer index) stay:
    removed rows are masked, and so are the input columns they feed."""
    feeds_from = {id(layer.feeds): i for i, layer in enumerate(layers) if layer.feeds is not None}
    state = {}
    for i, layer in enumerate(layers):
        module = layer.module
        weight_mask = getattr(module, WEIGHT_MASK).clone()
        view = weight_mask.movedim(layer.dim, 0)
        view[~rows[i].to(view.device)] = 0
        src = feeds_from.get(id(layer))
        if src is not None:
            dead = torch.nonzero(~rows[src]).squeeze(1).to(weight_mask.device) + layer.offset
            weight_mask[:, dead] = 0
        bias_mask = getattr(module, BIAS_MASK, None)
        if bias_mask is not None and layer.time:  # concatsquash: the bias is on the time path
            bias_mask = bias_mask.clone()
            bias_mask[~rows[i].to(bias_mask.device)] = 0
        state[i] = (weight_mask, bias_mask)
    return state


def _nonzero_after(
    model_nonzero: int,
    layers: list[_NeuronLayer],
    rows: dict[int, torch.Tensor],
) -> int:
    """Nonzero parameters of the model if only ``rows`` stayed (without changing it)."""
    state = _structured_state(layers, rows)
    count = model_nonzero
    for i, layer in enumerate(layers):
        module = layer.module
        weight_mask, bias_mask = state[i]
        count -= int(torch.count_nonzero(module.weight))
        count += int(torch.count_nonzero(module.weight * weight_mask))
        if bias_mask is not None and module.bias is not None:
            count -= int(torch.count_nonzero(module.bias))
            count += int(torch.count_nonzero(module.bias * bias_mask))
        dead = ~rows[i]
        for time_module in layer.time:
            for param in (time_module.weight, getattr(time_module, "bias", None)):
                if param is not None:
                    count -= int(torch.count_nonzero(param[dead.to(param.device)]))
    return count


def _rows_for_fraction(
    layers: list[_NeuronLayer],
    alive: dict[int, torch.Tensor],
    scores: dict[int, torch.Tensor],
    fraction: float,
) -> dict[int, torch.Tensor]:
    """Keep ``max(1, round(fraction · live))`` of the live neurons of every layer but the
    output layers, the highest ℓ1 scores (ties: the higher index is pruned last)."""
    rows = {}
    for i, layer in enumerate(layers):
        keep_rows = alive[i].clone()
        n_alive = int(alive[i].sum())
        n_keep = max(1, round(fraction * n_alive))
        if not layer.output and n_keep < n_alive:
            alive_idx = torch.nonzero(alive[i]).squeeze(1)
            pruned = alive_idx[_stable_smallest(scores[i][alive_idx], n_alive - n_keep)]
            keep_rows[pruned] = False
        rows[i] = keep_rows
    return rows


@torch.no_grad()
def prune_structured(model: nn.Module, keep: float) -> None:
    """Local ℓ1 pruning of neurons/filters with the released code's semantics (Sparse Flows,
    Table 1, right column; torchprune ``FilterThresNet`` with ``FilterUniAllocator``).

    **Budget.** ``keep`` is the overall density of *all* parameters after the round (nonzero /
    total, biases and time-gating layers included), as the released code measures it: the
    round may keep ``round(keep · total)`` nonzero parameters.

    **Which neurons.** Target: neurons (rows of a linear layer) or output filters of a
    convolution, never the rows of an output layer (``is_output_layer``); score: the ℓ1 norm of
    the row over its live inputs (Li et al., 2016); scope: local, the same fraction f of the
    live neurons kept in every layer (``max(1, round(f · live))``, lowest scores pruned, ties:
    lower index first). f is solved by bisection so that the network meets the budget, then
    single neurons (highest score first, one layer after another) are given back while the
    budget holds, so the result is below the budget by less than one neuron's parameters
    (unless one neuron per layer already exceeds it).

    **Removal.** A removed neuron's weight row is masked; its bias stays (the released code
    keeps it, so it counts as a nonzero parameter), and the input column(s) it feeds in the
    next layer are masked, the output layer's included (the released code zeroes the weights
    of inputs that are constant over the data, which a neuron without weights is). The
    network is then the same function as one built without those neurons. For
    ``concatsquash`` the neuron's time path is zeroed as well: its bias (masked) and its rows
    of ``hyper_gate`` and ``hyper_bias`` (set to zero once; they get no gradient afterwards,
    since the neuron feeds nothing). In the vector fields' layer chains a convolution's filters
    are its neurons and the next convolution's input channels their columns; layers whose
    successor is not known lose rows only. Masks are monotone and applied immediately.

    Arguments:
        model: the model (masks are attached if missing).
        keep: overall keep ratio of all parameters after this round, e.g. :math:`(1 - PR)^r`.
    """
    keep = _check_keep(keep)
    _require_prunable(model)
    layers = _neuron_layers(model)
    total, nonzero = count_parameters(model)
    budget = round(keep * total)
    alive = {i: layer.rows_alive() for i, layer in enumerate(layers)}
    scores = {i: layer.scores() for i, layer in enumerate(layers)}
    if _nonzero_after(nonzero, layers, alive) <= budget:
        return
    lo, hi = 0.0, 1.0
    rows = _rows_for_fraction(layers, alive, scores, lo)
    floor = _nonzero_after(nonzero, layers, rows)
    if floor > budget:
        log.warning(
            "structured pruning cannot meet the budget of %d of %d parameters (keep %.4f): one "
            "neuron per layer keeps %d (the removed neurons' biases stay); pruned to that",
            budget,
            total,
            keep,
            floor,
        )
    elif floor < budget:
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            if (
                _nonzero_after(nonzero, layers, _rows_for_fraction(layers, alive, scores, mid))
                <= budget
            ):
                lo = mid
            else:
                hi = mid
        rows = _rows_for_fraction(layers, alive, scores, lo)
        more = _rows_for_fraction(layers, alive, scores, hi)
        candidates = sorted(
            ((i, int(j)) for i in rows for j in torch.nonzero(more[i] & ~rows[i]).squeeze(1)),
            key=lambda ij: (-float(scores[ij[0]][ij[1]]), ij[0], ij[1]),
        )
        for i, j in candidates:
            rows[i][j] = True
            if _nonzero_after(nonzero, layers, rows) > budget:
                rows[i][j] = False
    for i, (weight_mask, bias_mask) in _structured_state(layers, rows).items():
        module = layers[i].module
        getattr(module, WEIGHT_MASK).copy_(weight_mask)
        if bias_mask is not None:
            getattr(module, BIAS_MASK).copy_(bias_mask)
        dead = ~rows[i]
        for time_module in layers[i].time:
            for param in (time_module.weight, getattr(time_module, "bias", None)):
                if param is not None:
                    param[dead.to(param.device)] = 0
    apply_masks(model)


def prune(model: nn.Module, method: PruneMethod, keep: float) -> None:
    """PRUNE step of Sparse Flows (Algorithm 1, line 5) with a method of Table 1.

    Arguments:
        model: the model to prune in place.
        method: ``"unstructured"`` (:func:`prune_unstructured`) or ``"structured"``
            (:func:`prune_structured`).
        keep: overall keep ratio after this round, e.g. an entry of :func:`keep_schedule`.
    """
    if method == "unstructured":
        prune_unstructured(model, keep)
    elif method == "structured":
        prune_structured(model, keep)
    else:
        raise ValueError(
            f"unknown pruning method {method!r}; choose 'unstructured' (global magnitude, "
            "Han et al. 2015) or 'structured' (local l1 neurons/filters, Li et al. 2016)."
        )


# --------------------------------------------------------------------------- measurements


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """Return ``(total, nonzero)`` over all parameters of ``model``.

    Counts every parameter (prunable or not, biases included) as reported in the paper's
    architecture-size tables; ``nonzero`` counts entries that are exactly nonzero, so call
    :func:`apply_masks` first if the weights may not be masked yet.
    """
    total = 0
    nonzero = 0
    for param in model.parameters():
        total += param.numel()
        nonzero += int(torch.count_nonzero(param.detach()))
    return total, nonzero


def prunable_density(model: nn.Module) -> float:
    """Fraction of prunable weights that are unpruned according to the masks.

    Layers without a mask count as dense. Biases and non-prunable layers are excluded.
    """
    n_total = 0
    n_alive = 0
    layers = prunable_layers(model)
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no prunable layers; the density of prunable "
            "weights is undefined."
        )
    for _, module in layers:
        n_total += module.weight.numel()
        mask = getattr(module, WEIGHT_MASK, None)
        n_alive += module.weight.numel() if mask is None else int(torch.count_nonzero(mask))
    return n_alive / n_total


def prune_ratio(model: nn.Module) -> float:
    """Fraction of prunable weights that are pruned: ``1 - prunable_density(model)``."""
    return 1.0 - prunable_density(model)


# --------------------------------------------------------------------------- schedules


def keep_schedule(prune_ratio_per_round: float, rounds: int) -> list[float]:
    """Overall keep ratios :math:`(1 - PR)^r` after rounds ``r = 1..rounds``.

    Sparse Flows §3.2: "the overall relative sparsity after n iterations is given by
    :math:`(1 - PR)^n`", since each round prunes PR of the *remaining* weights.

    Arguments:
        prune_ratio_per_round: relative prune ratio PR per round, in (0, 1).
        rounds: number of prune rounds R (0 gives an empty schedule).
    """
    pr = float(prune_ratio_per_round)
    if not 0.0 < pr < 1.0:
        raise ValueError(f"prune_ratio_per_round must lie in (0, 1); got {pr!r}.")
    if rounds < 0:
        raise ValueError(f"rounds must be a non-negative integer; got {rounds!r}.")
    return [(1.0 - pr) ** r for r in range(1, int(rounds) + 1)]


def paper_toy_keep_schedule() -> list[float]:
    """Overall keep ratios of the released toy-experiment code (29 rounds).

    Geometric from 0.8 down to 0.2 in 20 steps, then linear from 0.18 down to 0.02 in 9
    steps, as in the released code of the Sparse Flows toy density-estimation experiments.
    """
    geometric = np.geomspace(0.8, 0.2, num=20)
    linear = np.linspace(0.18, 0.02, num=9)
    return [float(k) for k in np.concatenate([geometric, linear])]


def paper_images_keep_schedule() -> list[float]:
    """Overall keep ratios of the released image-experiment configurations (12 rounds):
    geometric from 0.8 down to 0.05 (``paper/node/param/cnf/mnist_multiscale.yaml``)."""
    return [float(k) for k in np.geomspace(0.8, 0.05, num=12)]


def keep_schedule_to_target(prune_ratio_per_round: float, target_prune_ratio: float) -> list[float]:
    """Keep ratios :math:`(1 - PR)^r` for as many rounds as needed to reach a prune ratio.

    Stops at the first round ``r`` with ``1 - (1 - PR)^r >= target_prune_ratio`` (with a
    tolerance of 1e-12 for floating-point error).

    Arguments:
        prune_ratio_per_round: relative prune ratio PR per round, in (0, 1).
        target_prune_ratio: overall prune ratio to reach, in [0, 1).
    """
    pr = float(prune_ratio_per_round)
    target = float(target_prune_ratio)
    if not 0.0 < pr < 1.0:
        raise ValueError(f"prune_ratio_per_round must lie in (0, 1); got {pr!r}.")
    if not 0.0 <= target < 1.0:
        raise ValueError(
            f"target_prune_ratio must lie in [0, 1) (a prune ratio of 1 is never reached "
            f"geometrically); got {target!r}."
        )
    schedule: list[float] = []
    keep = 1.0
    while 1.0 - keep < target - 1e-12:
        keep *= 1.0 - pr
        schedule.append(keep)
    return schedule


# --------------------------------------------------------------------------- early stopping


@dataclass
class EarlyStopping:
    """Loop condition of Sparse Flows, Algorithm 1, line 4.

    "while validation loss of Sparse Flow decreases": call :meth:`update` with the
    validation loss after each prune-and-retrain round; it returns ``True`` once the loss
    has failed to improve on the best value by more than ``min_delta`` for ``patience``
    consecutive rounds. A NaN (or infinite) loss never counts as an improvement.

    Arguments:
        patience: number of consecutive non-improving rounds that stop pruning.
        min_delta: minimum decrease of the loss that counts as an improvement.

    Example:
        >>> stopper = EarlyStopping(patience=1)
        >>> [stopper.update(v) for v in (1.0, 0.9, 0.95)]
        [False, False, True]
        >>> stopper.best, stopper.best_index
        (0.9, 1)
    """

    patience: int = 1
    min_delta: float = 0.0
    best: float | None = None
    best_index: int | None = None
    num_updates: int = 0
    num_bad_updates: int = 0

    def __post_init__(self) -> None:
        if self.patience < 1:
            raise ValueError(f"patience must be >= 1; got {self.patience!r}.")
        if not (math.isfinite(self.min_delta) and self.min_delta >= 0.0):
            raise ValueError(f"min_delta must be finite and >= 0; got {self.min_delta!r}.")

    @property
    def should_stop(self) -> bool:
        """Whether the last :meth:`update` asked to stop pruning."""
        return self.num_bad_updates >= self.patience

    def update(self, val_loss: float) -> bool:
        """Record a validation loss; return ``True`` when pruning should stop."""
        val_loss = float(val_loss)
        improved = math.isfinite(val_loss) and (
            self.best is None or val_loss < self.best - self.min_delta
        )
        if improved:
            self.best = val_loss
            self.best_index = self.num_updates
            self.num_bad_updates = 0
        else:
            self.num_bad_updates += 1
        self.num_updates += 1
        return self.should_stop

    def to_dict(self) -> dict[str, Any]:
        """State as a JSON-serializable dict (for checkpoints)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> EarlyStopping:
        """Rebuild from :meth:`to_dict` output; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = set(state) - known
        if unknown:
            raise ValueError(
                f"unknown EarlyStopping state keys {sorted(unknown)}; expected a subset of "
                f"{sorted(known)} as written by EarlyStopping.to_dict()."
            )
        return cls(**state)
