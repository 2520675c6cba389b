"""Training of a flow by maximum likelihood: the TRAIN step of Algorithm 1 (Sparse Flows §3.2).

Every model family trains here (:mod:`pipeline_lib.families`): the loop shuffles and batches
the rows of its examples and minimizes the mean of ``-model(batch).log_prob``, a flow's NLL of
the data or a classifier's cross-entropy (the NLL of the labels).

Adam or AdamW with (β1, β2) and weight decay, a step learning-rate schedule (×γ at milestone
epochs; Tables S1–S3), validation every epoch (or every k-th and the last), a checkpoint every
epoch from which a killed run resumes where it stopped, full batches replayed from a CUDA graph
on a GPU with a fixed-grid solver (:mod:`pipeline_lib.cuda_graphs`), and the optional RNODE
regularizers (Finlay et al. 2020, Eq. 6):

    loss = NLL + λ_K · ∫‖f‖² dt + λ_J · ∫‖εᵀ∂f/∂z‖² dt.

Pruning masks are enforced after every optimizer step, so a sparse flow stays sparse while it
retrains (Algorithm 1 line 6). A non-finite loss or a solver failure stops the run with an error
naming the epoch and the setting to change; a checkpoint with non-finite weights is never written.

Example::

    cfg = TrainConfig(epochs=10, batch_size=512, lr=5e-3, optimizer="adamw")
    result = train(flow, data.train, data.val, cfg, checkpoint="run/ckpt.pt")
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline_lib import io
from pipeline_lib.cuda_graphs import GraphedTrainingStep
from pipeline_lib.evaluation.nll import evaluate_nll
from pipeline_lib.flows import ContinuousFlow, SolverConfig, SolverError
from pipeline_lib.pruning import apply_masks, mask_gradients
from pipeline_lib.records import has_diverged

__all__ = [
    "StepOutput",
    "TrainConfig",
    "TrainResult",
    "TrainingDivergedError",
    "apply_step",
    "epoch_order",
    "forward_loss",
    "has_diverged",
    "load_checkpoint",
    "make_optimizer",
    "resolve_device",
    "save_checkpoint",
    "train",
    "training_key",
    "training_loss",
]

log = logging.getLogger("sparseflows.training")


class TrainingDivergedError(RuntimeError):
    """Training produced a non-finite loss or non-finite weights."""


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one training run (Tables S1–S3 "(Re-)Training").

    Arguments:
        optimizer: ``adam`` or ``adamw``.
        lr, beta1, beta2, weight_decay: optimizer settings.
        epochs, batch_size: passes over the training set and its batch size.
        lr_milestones, lr_gamma: multiply the LR by ``lr_gamma`` at these epochs.
        lambda_kinetic, lambda_jacobian: RNODE regularization weights (0 = off).
        grad_clip: max gradient norm, or None.
        eval_batch_size: batch size of validation / test evaluation.
        eval_solver: solver for validation (e.g. adaptive when training on a fixed grid).
        eval_trace: ``exact`` or ``hutchinson`` for validation; None = the model's own.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        seed: seeds shuffling and Hutchinson noise.
        log_every: log every this many iterations within an epoch (0 = only per epoch).
        val_every: validate after every k-th epoch and after the last one (the run's
            validation NLL is always the final model's).
        cuda_graphs: on a GPU, replay full batches of a fixed-grid (rk4) solve from a CUDA
            graph (:mod:`pipeline_lib.cuda_graphs`); other solvers and devices train eagerly.
        divergence_nats: a round whose final validation NLL ends more than this many nats above
            its reference (the previous round's, or the model's before training) is flagged as
            diverged (:func:`has_diverged`); None switches the check off.
        on_divergence: ``warn`` (log a warning and flag the record) or ``fail`` (stop with an
            error).
    """

    optimizer: str = "adam"
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0
    epochs: int = 100
    batch_size: int = 1024
    lr_milestones: Sequence[int] = ()
    lr_gamma: float = 0.1
    lambda_kinetic: float = 0.0
    lambda_jacobian: float = 0.0
    grad_clip: float | None = None
    eval_batch_size: int = 10_000
    eval_solver: SolverConfig | None = None
    eval_trace: str | None = None
    device: str = "auto"
    seed: int = 0
    log_every: int = 0
    val_every: int = 1
    cuda_graphs: bool = True
    divergence_nats: float | None = 2.0
    on_divergence: str = "warn"

    def __post_init__(self) -> None:
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"train.optimizer must be 'adam' or 'adamw', got {self.optimizer!r}")
        if self.epochs < 1:
            raise ValueError(f"train.epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"train.batch_size must be >= 1, got {self.batch_size}")
        if self.val_every < 1:
            raise ValueError(f"train.val_every must be >= 1, got {self.val_every}")
        if not self.lr > 0:
            raise ValueError(f"train.lr must be positive, got {self.lr}")
        if self.on_divergence not in ("warn", "fail"):
            raise ValueError(
                f"train.on_divergence must be 'warn' or 'fail', got {self.on_divergence!r}"
            )
        if self.divergence_nats is not None and not self.divergence_nats > 0:
            raise ValueError(
                f"train.divergence_nats must be positive or null, got {self.divergence_nats}"
            )
        if isinstance(self.eval_solver, dict):
            object.__setattr__(self, "eval_solver", SolverConfig(**self.eval_solver))
        object.__setattr__(self, "lr_milestones", tuple(int(m) for m in self.lr_milestones))

    @property
    def regularize(self) -> bool:
        return self.lambda_kinetic > 0 or self.lambda_jacobian > 0

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return cls(**d)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lr_milestones"] = list(self.lr_milestones)
        return d


@dataclass
class TrainResult:
    """What a training run produced: per-epoch history and summary numbers."""

    history: list[dict] = field(default_factory=list)
    val_nll: float = math.nan
    best_val_nll: float = math.nan
    seconds: float = 0.0
    resumed_from_epoch: int = 0
    val_nll_initial: float = math.nan


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` → the first visible CUDA device if any, else CPU."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device {spec!r} requested but CUDA is not available; use 'cpu' or 'auto'"
        )
    return device


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam or AdamW with the configured betas and weight decay."""
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)


def _all_finite(model: torch.nn.Module) -> bool:
    return all(torch.isfinite(p).all() for p in model.parameters())


def save_checkpoint(path: str | Path, state: dict, model: torch.nn.Module | None = None) -> str:
    """Write ``state`` atomically with the digest of its content (:mod:`pipeline_lib.io`), and
    return the digest.

    Refuses to write when ``model`` has non-finite weights, so a good checkpoint is never
    replaced by a diverged one.
    """
    path = Path(path)
    if model is not None and not _all_finite(model):
        raise TrainingDivergedError(f"refusing to write {path}: the model has non-finite weights")
    return io.save_checkpoint(path, state)


load_checkpoint = io.load_checkpoint


#: Settings of :class:`TrainConfig` that do not change the trained model (how often to log and
#: validate, where to run), and ``epochs``: a state saved at epoch k of a shorter run is where a
#: longer run with the same schedule stands at epoch k (a state beyond ``epochs`` is discarded).
#: A training state saved under other values of these is resumed.
NOT_SHAPING = (
    "epochs",
    "log_every",
    "val_every",
    "device",
    "cuda_graphs",
    "divergence_nats",
    "on_divergence",
)


def training_key(cfg: TrainConfig, extra: dict | None = None) -> dict:
    """What a saved training state must match to be resumed: the settings of ``cfg`` that shape
    the model, plus ``extra`` (the caller's, e.g. the experiment's settings and the digest of the
    model the round started from)."""
    key = {k: v for k, v in cfg.to_dict().items() if k not in NOT_SHAPING}
    return json.loads(json.dumps({"train": key, **(extra or {})}, sort_keys=True, default=str))


def key_difference(old: Any, new: Any, path: str = "") -> str | None:
    """The first setting in which two training keys differ, as ``key: old -> new``."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            sub = f"{path}.{k}" if path else str(k)
            if k not in old or k not in new:
                return f"{sub}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}"
            found = key_difference(old[k], new[k], sub)
            if found:
                return found
        return None
    return None if old == new else f"{path or '<key>'}: {old!r} -> {new!r}"


def _resumable_state(checkpoint: Path, key: dict, cfg: TrainConfig, prefix: str) -> dict | None:
    """The saved training state if it can be resumed; a stale (other settings) or unreadable
    one is discarded with a log line saying why, and the round starts over."""
    try:
        state = load_checkpoint(checkpoint)
    except io.UnreadableFileError as err:
        log.warning("%sdiscarding the training state: %s; starting the round over", prefix, err)
        checkpoint.unlink(missing_ok=True)
        return None
    changed = key_difference(state.get("key"), key)
    if changed is not None:
        log.warning(
            "%sdiscarding the training state %s: it was saved under other settings (%s); "
            "starting the round over",
            prefix,
            checkpoint,
            changed,
        )
        checkpoint.unlink(missing_ok=True)
        return None
    if int(state["epoch"]) > cfg.epochs:
        log.warning(
            "%sdiscarding the training state %s: it was saved at epoch %d, beyond train.epochs "
            "= %d; starting the round over",
            prefix,
            checkpoint,
            int(state["epoch"]),
            cfg.epochs,
        )
        checkpoint.unlink(missing_ok=True)
        return None
    return state


def training_loss(
    model: ContinuousFlow, batch: torch.Tensor, cfg: TrainConfig
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The minimized objective, the NLL part and the NFE of one batch: mean NLL (Eq. 2), plus
    RNODE's ``λ_K ∫‖f‖² dt + λ_J ∫‖εᵀ∂f/∂z‖² dt`` (Finlay et al. 2020, Eq. 6) when switched on."""
    out = model(batch, regularize=cfg.regularize)
    nll = -out.log_prob.mean()
    loss = nll
    if cfg.regularize:
        loss = (
            loss
            + cfg.lambda_kinetic * out.kinetic.mean()
            + cfg.lambda_jacobian * out.jacobian.mean()
        )
    return loss, nll, out.nfe


def _initial_val_nll(model: ContinuousFlow, val_x: torch.Tensor, cfg: TrainConfig, prefix: str):
    """Validation NLL of the model before training; NaN (with a warning) if the solver fails."""
    try:
        return evaluate_nll(
            model, val_x, cfg.eval_batch_size, solver=cfg.eval_solver, trace=cfg.eval_trace
        ).nll
    except SolverError as err:
        log.warning("%sno validation NLL before training (%s)", prefix, err)
        return math.nan


@dataclass
class StepOutput:
    """One batch's objective (:func:`forward_loss`): the minimized loss, its NLL part, the
    forward NFE, and whether the batch was replayed from a CUDA graph (which also ran the
    backward pass)."""

    loss: torch.Tensor
    nll: torch.Tensor
    nfe_forward: int
    replayed: bool


def forward_loss(
    model: ContinuousFlow,
    batch: torch.Tensor,
    cfg: TrainConfig,
    optimizer: torch.optim.Optimizer,
    graphed: GraphedTrainingStep | None = None,
) -> StepOutput:
    """The first half of a training step: zero the gradients and compute the objective of one
    batch (:func:`training_loss`), or replay the whole step from ``graphed`` when the batch has
    its captured shape (the graph owns the ``.grad`` tensors: beside it they are zeroed in
    place)."""
    if graphed is not None and tuple(batch.shape) == graphed.batch_shape:
        loss, nll, nfe = graphed.step(batch)
        return StepOutput(loss, nll, nfe, True)
    optimizer.zero_grad(set_to_none=graphed is None)
    loss, nll, nfe = training_loss(model, batch, cfg)
    return StepOutput(loss, nll, nfe, False)


def apply_step(
    model: ContinuousFlow, optimizer: torch.optim.Optimizer, out: StepOutput, cfg: TrainConfig
) -> int:
    """The second half: backpropagate (unless replayed), keep pruned weights' gradients at
    zero, clip (``grad_clip``), step the optimizer and re-apply the masks, so a sparse flow
    stays sparse while it retrains (Algorithm 1 line 6). Returns the backward NFE."""
    nfe_before = model.nfe
    if not out.replayed:
        out.loss.backward()
    nfe_backward = model.nfe - nfe_before
    mask_gradients(model)
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    apply_masks(model)
    return nfe_backward


def epoch_order(n: int, seed: int, epoch: int, device: torch.device | str) -> torch.Tensor:
    """The order of the ``n`` training points in ``epoch``: a permutation that depends only
    on the seed and the epoch, so a resumed run visits the data as an uninterrupted one."""
    shuffle = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=shuffle).to(device)


def _rng_state(device: torch.device) -> dict[str, Any]:
    """The random state that a resumed run must continue from: the CPU's and, on a GPU, the
    training device's (Hutchinson noise is drawn on the model's device)."""
    state: dict[str, Any] = {"rng": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    return state


def _restore_rng(state: dict[str, Any], device: torch.device, prefix: str) -> None:
    torch.set_rng_state(state["rng"].cpu())
    if device.type != "cuda":
        return
    if "cuda_rng" in state:
        torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)
    else:
        log.warning(
            "%sthe training state holds no CUDA random state (saved on the CPU or by an older "
            "version): Hutchinson noise on %s continues from another stream than an "
            "uninterrupted run's",
            prefix,
            device,
        )


def _resume(
    checkpoint: str | Path | None,
    key: dict,
    cfg: TrainConfig,
    model: ContinuousFlow,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    result: TrainResult,
    prefix: str,
) -> int:
    """Load a resumable training state into the model, optimizer, schedule, random state and
    ``result``; return the epoch it reached (0 when there is none to resume)."""
    if checkpoint is None or not Path(checkpoint).exists():
        return 0
    state = _resumable_state(Path(checkpoint), key, cfg, prefix)
    if state is None:
        return 0
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _restore_rng(state, next(model.parameters()).device, prefix)
    epoch = int(state["epoch"])
    result.history = list(state["history"])
    result.seconds = float(state.get("seconds", 0.0))
    result.resumed_from_epoch = epoch
    result.val_nll_initial = float(state.get("val_nll_initial", math.nan))
    log.info("%sresuming from %s at epoch %d/%d", prefix, checkpoint, epoch, cfg.epochs)
    return epoch


def _save_state(
    checkpoint: str | Path,
    key: dict,
    cfg: TrainConfig,
    model: ContinuousFlow,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    result: TrainResult,
    epoch: int,
) -> None:
    """Write the training state after ``epoch`` (never with non-finite weights)."""
    save_checkpoint(
        checkpoint,
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            **_rng_state(next(model.parameters()).device),
            "epoch": epoch,
            "history": result.history,
            "seconds": result.seconds,
            "config": cfg.to_dict(),
            "key": key,
            "val_nll_initial": result.val_nll_initial,
        },
        model,
    )


def _validate(model, val_x, cfg: TrainConfig, epoch: int, prefix: str):
    """Validation NLL after ``epoch`` (every ``val_every``-th and the last), else None."""
    if (epoch + 1) % cfg.val_every and epoch + 1 != cfg.epochs:
        return None
    try:
        return evaluate_nll(
            model, val_x, cfg.eval_batch_size, solver=cfg.eval_solver, trace=cfg.eval_trace
        )
    except SolverError as err:
        raise SolverError(f"{prefix}validation after epoch {epoch + 1}: {err}") from err


def _train_epoch(model, optimizer, train_x, cfg: TrainConfig, epoch: int, graphed, prefix: str):
    """One pass over the training set: the sums of loss, NLL and NFE, and the iterations."""
    sums = {"loss": 0.0, "nll": 0.0, "nfe_forward": 0, "nfe_backward": 0}
    order = epoch_order(train_x.shape[0], cfg.seed, epoch, train_x.device)
    model.train()
    iters = 0
    for start in range(0, train_x.shape[0], cfg.batch_size):
        batch = train_x[order[start : start + cfg.batch_size]]
        where = f"epoch {epoch + 1}, iteration {iters + 1}"
        try:
            out = forward_loss(model, batch, cfg, optimizer, graphed)
            if not torch.isfinite(out.loss):
                lr = optimizer.param_groups[0]["lr"]
                raise TrainingDivergedError(
                    f"{prefix}non-finite loss ({out.loss.item()}) at {where}; lower train.lr "
                    f"(now {lr:g}), set train.grad_clip, or tighten solver.rtol/atol"
                )
            sums["nfe_backward"] += apply_step(model, optimizer, out, cfg)
        except SolverError as err:
            raise SolverError(f"{prefix}{where}: {err}") from err
        iters += 1
        sums["loss"] += out.loss.item()
        sums["nll"] += out.nll.item()
        sums["nfe_forward"] += out.nfe_forward
        if cfg.log_every and iters % cfg.log_every == 0:
            log.info(
                "%sepoch %d/%d iter %d | loss %.4f | NFE %d",
                prefix,
                epoch + 1,
                cfg.epochs,
                iters,
                out.loss.item(),
                out.nfe_forward,
            )
    return sums, iters


def train(
    model: ContinuousFlow,
    train_x: torch.Tensor,
    val_x: torch.Tensor,
    cfg: TrainConfig,
    checkpoint: str | Path | None = None,
    tag: str = "",
    key: dict | None = None,
    measure_start: bool = False,
) -> TrainResult:
    """Train ``model`` in place for ``cfg.epochs`` epochs with a fresh optimizer and schedule.

    With ``checkpoint`` set, a checkpoint is written after every epoch and an existing one is
    resumed from (optimizer, schedule, CPU and CUDA random state and history included); a
    finished checkpoint returns at once. The checkpoint stores :func:`training_key` of ``cfg``
    and ``key``; one saved under other settings, or one that is unreadable, is discarded (the
    log names the changed setting) and training starts over. ``tag`` prefixes log lines (e.g.
    ``"round 3/10"``). With ``measure_start``, the validation NLL of the model before its
    first epoch is measured once (NaN if the solver fails on it), kept in the checkpoint and
    returned as ``val_nll_initial`` (the divergence reference of a dense round).

    Raises:
        TrainingDivergedError: non-finite loss or weights (nothing is written).
        SolverError: the ODE solver failed; the message names the epoch.
    """
    device = resolve_device(cfg.device)
    model.to(device)
    train_x = train_x.to(device)
    val_x = val_x.to(device)
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=list(cfg.lr_milestones), gamma=cfg.lr_gamma
    )
    result = TrainResult()
    prefix = f"{tag} | " if tag else ""
    resume_key = training_key(cfg, key)
    start_epoch = _resume(checkpoint, resume_key, cfg, model, optimizer, scheduler, result, prefix)
    if not start_epoch:
        torch.manual_seed(cfg.seed)
        if measure_start:
            result.val_nll_initial = _initial_val_nll(model, val_x, cfg, prefix)

    graphed = None
    if cfg.cuda_graphs and start_epoch < cfg.epochs and train_x.shape[0] >= cfg.batch_size:
        model.train()
        graphed = GraphedTrainingStep.maybe(
            model,
            lambda m, b: training_loss(m, b, cfg),
            train_x[: cfg.batch_size],
            tag=prefix,
        )
    t_run = time.perf_counter() - result.seconds
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        sums, iters = _train_epoch(model, optimizer, train_x, cfg, epoch, graphed, prefix)
        scheduler.step()
        if not _all_finite(model):
            raise TrainingDivergedError(
                f"{prefix}weights became non-finite in epoch {epoch + 1}; lower train.lr or set "
                "train.grad_clip. The last good checkpoint was kept."
            )
        val = _validate(model, val_x, cfg, epoch, prefix)
        epoch_s = time.perf_counter() - t0
        record = {
            "epoch": epoch + 1,
            "train_loss": sums["loss"] / max(iters, 1),
            "train_nll": sums["nll"] / max(iters, 1),
            "val_nll": val.nll if val else None,
            "nfe_forward": sums["nfe_forward"] / max(iters, 1),
            "nfe_backward": sums["nfe_backward"] / max(iters, 1),
            "nfe_val": val.nfe if val else None,
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": epoch_s,
        }
        result.history.append(record)
        result.seconds = time.perf_counter() - t_run
        log.info(
            "%sepoch %d/%d | loss %.4f | val NLL %s | NFE fwd %.1f bwd %.1f | %.2f s/epoch | elapsed %.1f s",
            prefix,
            epoch + 1,
            cfg.epochs,
            record["train_loss"],
            f"{val.nll:.4f}" if val else "–",
            record["nfe_forward"],
            record["nfe_backward"],
            epoch_s,
            result.seconds,
        )
        if checkpoint is not None:
            _save_state(checkpoint, resume_key, cfg, model, optimizer, scheduler, result, epoch + 1)
    vals = [h["val_nll"] for h in result.history if h["val_nll"] is not None]
    if vals:
        result.val_nll = vals[-1]
        result.best_val_nll = min(vals)
    else:
        result.val_nll = result.best_val_nll = evaluate_nll(
            model, val_x, cfg.eval_batch_size, solver=cfg.eval_solver, trace=cfg.eval_trace
        ).nll
    return result
