"""Pruning for Sparse Flows: binary masks, weight and neuron pruning, prune schedules.

This module implements the PRUNE step of Sparse Flows (Algorithm 1, line 5) with the two
methods of Table 1:

* **unstructured** (Han et al., 2015): target = weights, score = :math:`|W_{ij}|`,
  scope = global over all prunable layers (:func:`prune_unstructured`);
* **structured** (Li et al., 2016): target = neurons (rows of a linear layer) or output
  filters (of a convolution), score = :math:`\\|W_{i:}\\|_1`, scope = local, the same keep
  ratio in every layer (:func:`prune_structured`).

Both are iterative (Sparse Flows §3.2): each call only removes weights that are still alive,
so masks are monotone and the overall keep ratio after ``n`` rounds of a relative prune
ratio ``PR`` is :math:`(1 - PR)^n` (:func:`keep_schedule`). Between prune steps the
network is retrained with learning-rate rewinding (Renda et al., 2020), which lives in the
training code; :class:`EarlyStopping` implements the loop condition of Algorithm 1, line 4.

**What is prunable.** The ``weight`` of every :class:`~torch.nn.Linear` and convolution
module of the vector field, unless the module carries ``prunable = False`` (the
concatsquash time-gating layers ``hyper_gate``/``hyper_bias`` of FFJORD set this, so the
time conditioning stays dense). Biases are never scored and never removed by unstructured
pruning; structured pruning removes the bias entry of a pruned neuron together with its
row, so that the neuron really disappears. Modules with ``is_output_layer = True`` are the
output layers of the vector fields: structured pruning never removes their rows, since
that would remove output dimensions of the dynamics.

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
    >>> round(prunable_density(net), 3)
    0.512
"""

from __future__ import annotations

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
    "paper_toy_keep_schedule",
    "prunable_density",
    "prunable_layers",
    "prune",
    "prune_ratio",
    "prune_structured",
    "prune_unstructured",
]

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
            f"keep must be the fraction of weights to keep, in [0, 1]; got {keep!r}. "
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
    """Global magnitude pruning of weights (Sparse Flows, Table 1, left column).

    Target: individual weights; score: :math:`|W_{ij}|`; scope: global over all prunable
    layers (Han et al., 2015). Among the weights that are still unpruned, the globally
    smallest magnitudes are pruned until exactly ``round(keep * n_total)`` weights remain,
    where ``n_total`` counts *all* prunable weights. Already-pruned weights stay pruned, so
    masks are monotone and iterating with :func:`keep_schedule` prunes PR% of the
    *remaining* weights each round (Algorithm 1, line 5). Ties are broken by the position
    in the concatenation of the flattened weights in :func:`prunable_layers` order (the
    earlier weight is pruned first). The largest pruned magnitude is the "pre-defined
    threshold" of supplement §S8. Biases are never pruned. The new masks are applied to
    the weights immediately.

    Arguments:
        model: the model (masks are attached if missing).
        keep: target overall density of prunable weights, e.g. :math:`(1 - PR)^r`.
            If ``keep`` is at least the current density nothing happens.
    """
    keep = _check_keep(keep)
    layers = _require_prunable(model)
    masks = [getattr(module, WEIGHT_MASK) for _, module in layers]
    sizes = [mask.numel() for mask in masks]
    n_total = sum(sizes)
    n_keep = round(keep * n_total)

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


@torch.no_grad()
def prune_structured(model: nn.Module, keep: float) -> None:
    """Local ℓ1 pruning of neurons/filters (Sparse Flows, Table 1, right column).

    Target: neurons (rows of a linear layer, i.e. output units) or output filters of a
    convolution; score: :math:`\\|W_{i:}\\|_1` over the whole masked row/filter; scope:
    local, the same keep ratio in every layer (Li et al., 2016). In every prunable layer
    except output layers (``is_output_layer = True``), ``max(1, round(keep * n_rows))``
    rows are kept, pruning the lowest-ℓ1 rows among those still alive (ties: lower row
    index first). A pruned row is removed completely: its whole ``weight_mask`` row and
    its ``bias_mask`` entry are set to 0 and the masks are applied immediately.

    Arguments:
        model: the model (masks are attached if missing).
        keep: fraction of neurons/filters to keep per layer, e.g. :math:`(1 - PR)^r`.
            Layers already at or below that count are left unchanged.
    """
    keep = _check_keep(keep)
    for _, module in _require_prunable(model):
        if getattr(module, "is_output_layer", False):
            continue
        dim = _row_dim(module)
        weight_mask = getattr(module, WEIGHT_MASK)
        rows_mask = weight_mask.movedim(dim, 0)  # view: writes go to the buffer
        n_rows = rows_mask.shape[0]
        n_keep = max(1, round(keep * n_rows))

        alive = rows_mask.reshape(n_rows, -1).ne(0).any(dim=1).cpu()
        n_alive = int(alive.sum())
        if n_keep >= n_alive:
            continue
        scores = (
            (module.weight.detach() * weight_mask)
            .movedim(dim, 0)
            .reshape(n_rows, -1)
            .abs()
            .sum(dim=1)
            .cpu()
            .double()
        )
        alive_idx = torch.nonzero(alive).squeeze(1)
        pruned = alive_idx[_stable_smallest(scores[alive_idx], n_alive - n_keep)]
        pruned = pruned.to(weight_mask.device)
        rows_mask[pruned] = 0
        bias_mask = getattr(module, BIAS_MASK, None)
        if bias_mask is not None:
            bias_mask[pruned] = 0
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
