"""Algorithm 1 of Sparse Flows (§3): iterative pruning with learning-rate rewinding.

1. TRAIN a dense flow (warm start);
2. repeat: PRUNE PR of the *remaining* weights (or neurons), then TRAIN again with a fresh
   optimizer and the full learning-rate schedule, starting from the current weights (learning-rate
   rewinding, Renda et al. 2020);
3. until the target prune ratio is reached, or the validation loss stops improving
   (early stopping with patience).

Each round is one call of :func:`sparse_flow_round`, with a checkpoint per round, so that a
workflow can run one job per round and a crash loses at most the round in flight. The loop
logic lives here once: :func:`plan_round` decides what round r does from round r−1's
:class:`RoundRecord` (skip after an early stop, or train with this keep ratio and this
stopping state), :meth:`RoundPlan.stops_after` applies the stopping rule, and
:class:`RoundRecord` is the ``round.json`` a workflow job writes and the summary reads.
:func:`run_sparse_flow` runs the whole loop in one process with the same three.

Example::

    flow = build_flow(FlowConfig(dim=2, hidden_dims=(64, 64)))
    rounds = run_sparse_flow(flow, data, TrainConfig(epochs=5),
                             PruneConfig(method="unstructured", prune_ratio_per_round=0.3, rounds=3))
    for r in rounds:
        print(r.round, r.prune_ratio, r.test_nll)
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch

from pipeline_lib.evaluation.nll import evaluate_nll
from pipeline_lib.flows import ContinuousFlow
from pipeline_lib.io import content_digest
from pipeline_lib.pruning import (
    EarlyStopping,
    count_parameters,
    keep_schedule,
    keep_schedule_to_target,
    paper_images_keep_schedule,
    paper_toy_keep_schedule,
    prune,
    prune_ratio,
)
from pipeline_lib.records import RoundRecord, has_diverged
from pipeline_lib.training import TrainConfig, TrainingDivergedError, train

__all__ = [
    "PruneConfig",
    "RoundPlan",
    "RoundRecord",
    "RoundResult",
    "plan_round",
    "run_sparse_flow",
    "sparse_flow_round",
]

log = logging.getLogger("sparseflows.sparse_flow")


@dataclass(frozen=True)
class PruneConfig:
    """How a flow is sparsified (Algorithm 1 inputs PR and the stopping rule; Tables S1–S3).

    Arguments:
        method: ``unstructured`` (global |W_ij|) or ``structured`` (local ℓ1 of neurons).
        prune_ratio_per_round: PR, the fraction of the remaining weights pruned per round.
        rounds: number of prune rounds R (overall keep after round r is (1-PR)^r).
        target_prune_ratio: instead of ``rounds``, prune until this overall ratio is reached.
        schedule: ``geometric`` ((1-PR)^r), ``paper_images`` (the image configurations' 12
            keep ratios, geometric 0.8→0.05) or ``paper_toy`` (the toy code's 29 keep ratios:
            geometric 0.8→0.2 in 20 steps, then linear 0.18→0.02 in 9).
        patience: stop after this many rounds without validation improvement (None = never).
        min_delta: improvement smaller than this does not count.
    """

    method: Literal["unstructured", "structured"] = "unstructured"
    prune_ratio_per_round: float = 0.1
    rounds: int | None = 10
    target_prune_ratio: float | None = None
    schedule: Literal["geometric", "paper_toy", "paper_images"] = "geometric"
    patience: int | None = None
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        if self.method not in ("unstructured", "structured"):
            raise ValueError(
                f"prune.method must be 'unstructured' or 'structured', got {self.method!r}"
            )
        if not 0 < self.prune_ratio_per_round < 1:
            raise ValueError(
                f"prune.prune_ratio_per_round must be in (0, 1), got {self.prune_ratio_per_round}"
            )
        if self.target_prune_ratio is not None and not 0 < self.target_prune_ratio < 1:
            raise ValueError(
                f"prune.target_prune_ratio must be in (0, 1), got {self.target_prune_ratio}"
            )
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"prune.patience must be >= 1 or null, got {self.patience}")
        if self.schedule not in ("geometric", "paper_toy", "paper_images"):
            raise ValueError(
                "prune.schedule must be 'geometric', 'paper_toy' or 'paper_images', got "
                f"{self.schedule!r}"
            )

    def keep_ratios(self) -> list[float]:
        """Overall keep ratio after each round r = 1..R."""
        if self.schedule == "paper_toy":
            return paper_toy_keep_schedule()
        if self.schedule == "paper_images":
            return paper_images_keep_schedule()
        if self.target_prune_ratio is not None:
            return keep_schedule_to_target(self.prune_ratio_per_round, self.target_prune_ratio)
        return keep_schedule(self.prune_ratio_per_round, int(self.rounds or 0))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RoundResult:
    """One row of the prune / retrain record (round 0 is the dense warm start)."""

    round: int
    keep: float
    prune_ratio: float
    params_total: int
    params_nonzero: int
    val_nll: float
    test_nll: float
    test_nll_stderr: float
    nfe_forward: float
    train_seconds: float
    val_nll_reference: float = math.nan
    diverged: bool = False
    history: list[dict] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RoundPlan:
    """What one round of a chain does (Algorithm 1 lines 4–5), from :func:`plan_round`.

    ``skip``: the chain stopped early (after round ``stopped_at``); the round passes the
    previous model through. Otherwise prune to the overall keep ratio ``keep`` (1 for the
    dense round 0) and train; ``stopper`` is the stopping rule's state going into the round.
    """

    skip: bool
    keep: float
    stopper: EarlyStopping
    patience: int | None
    stopped_at: int | None = None

    def stops_after(self, val_nll: float, pruned: bool) -> bool:
        """Feed the round's validation NLL to the stopping rule; ``True`` when the chain stops
        after this round (only a pruned round with ``patience`` set can stop it)."""
        should_stop = self.stopper.update(val_nll)
        return bool(pruned and self.patience and should_stop)


def plan_round(
    prev: RoundRecord | None, prune: PruneConfig, method: str | None, round_index: int
) -> RoundPlan:
    """Algorithm 1 for round ``round_index`` of a chain, given the record of the round before
    (None for the dense round 0): a pass-through when the chain has stopped, or train with the
    schedule's keep ratio and the stopping state carried over from ``prev``."""
    if prev is not None and prev.is_final:
        stopped_at = prev.round if prev.stopped else prev.stopped_at
        return RoundPlan(True, prev.keep, EarlyStopping(), prune.patience, stopped_at)
    keep = 1.0 if method is None else prune.keep_ratios()[round_index - 1]
    stopper = (
        EarlyStopping.from_dict(prev.early_stopping)
        if prev is not None and prev.early_stopping
        else EarlyStopping(patience=prune.patience or 1, min_delta=prune.min_delta)
    )
    return RoundPlan(False, keep, stopper, prune.patience)


def sparse_flow_round(
    model: ContinuousFlow,
    *,
    train_x: torch.Tensor,
    val_x: torch.Tensor,
    test_x: torch.Tensor | None = None,
    train_cfg: TrainConfig,
    method: str | None,
    keep: float,
    round_index: int,
    total_rounds: int,
    checkpoint: str | Path | None = None,
    reference_nll: float | None = None,
    key: dict | None = None,
) -> RoundResult:
    """One PRUNE + TRAIN step of Algorithm 1 (lines 5–6); round 0 (``method=None``) only trains.

    Pruning is deterministic, so a round resumed from its checkpoint prunes again and then
    takes weights and masks from the checkpoint. The checkpoint is resumed only under the same
    method, keep ratio, round, starting weights (their digest) and ``key`` (the caller's
    settings); otherwise :func:`~pipeline_lib.training.train` discards it and starts over. Divergence: the final
    validation NLL is compared with ``reference_nll`` (the previous round's; when None, the
    model's before training) by :func:`~pipeline_lib.records.has_diverged`; a diverged round is
    flagged with a warning, or stops with :class:`TrainingDivergedError` under
    ``on_divergence: fail``. Returns the round's metrics and its per-epoch history; test NLL
    is NaN without ``test_x``.
    """
    tag = f"round {round_index}/{total_rounds}"
    # a saved training state resumes only for this round of this chain, from the same model
    key = {
        "method": method or "dense",
        "keep": keep,
        "round": round_index,
        "start_model": content_digest(model.state_dict()),
        **(key or {}),
    }
    if method is not None:
        prune(model, method, keep)
    total, nonzero = count_parameters(model)
    log.info(
        "%s | %s | keep %.4f | prune ratio %.4f | %d/%d parameters nonzero",
        tag,
        method or "dense",
        keep,
        prune_ratio(model),
        nonzero,
        total,
    )
    t0 = time.perf_counter()
    result = train(
        model,
        train_x,
        val_x,
        train_cfg,
        checkpoint=checkpoint,
        tag=tag,
        key=key,
        measure_start=reference_nll is None,
    )
    if reference_nll is None:
        reference_nll = result.val_nll_initial
    seconds = result.seconds if result.seconds else time.perf_counter() - t0
    nfe = result.history[-1]["nfe_forward"] if result.history else math.nan
    test = (
        evaluate_nll(
            model,
            test_x.to(next(model.parameters()).device),
            train_cfg.eval_batch_size,
            solver=train_cfg.eval_solver,
            trace=train_cfg.eval_trace,
        )
        if test_x is not None
        else None
    )
    row_reference = math.nan if reference_nll is None else float(reference_nll)
    row = RoundResult(
        round=round_index,
        keep=keep,
        prune_ratio=prune_ratio(model),
        params_total=total,
        # counted after training: a resumed round gets its mask from the checkpoint
        params_nonzero=count_parameters(model)[1],
        val_nll=result.val_nll,
        test_nll=test.nll if test else math.nan,
        test_nll_stderr=test.stderr if test else math.nan,
        nfe_forward=nfe,
        train_seconds=seconds,
        val_nll_reference=row_reference,
        diverged=has_diverged(result.val_nll, row_reference, train_cfg.divergence_nats),
        history=list(result.history),
    )
    if row.diverged:
        message = (
            f"{tag} diverged: validation NLL {row.val_nll:.4g} nats ends more than "
            f"{train_cfg.divergence_nats:g} nats above {row.val_nll_reference:.4g} "
            f"({'the previous round' if method else 'before training'}); lower train.lr "
            f"(now {train_cfg.lr:g}) or set train.grad_clip"
        )
        if train_cfg.on_divergence == "fail":
            raise TrainingDivergedError(message + " (train.on_divergence: fail)")
        log.warning("%s; the round is flagged 'diverged' in its record", message)
    log.info(
        "%s done | val NLL %.4f%s | %.1f s",
        tag,
        row.val_nll,
        f" | test NLL {row.test_nll:.4f}" if test else "",
        seconds,
    )
    return row


def run_sparse_flow(
    model: ContinuousFlow,
    data,
    train_cfg: TrainConfig,
    prune_cfg: PruneConfig,
    workdir: str | Path | None = None,
) -> list[RoundResult]:
    """Algorithm 1 in one process: dense warm start, then prune / retrain rounds.

    ``data`` has ``train``, ``val`` and ``test`` tensors of the model's examples: a
    :class:`~pipeline_lib.data.DataSplits` for a flow; for a classifier, an object holding
    the rows ``[x, y]`` of each split
    (:meth:`~pipeline_lib.families.ModelFamily.examples`). With ``workdir`` every round writes
    ``round{r:03d}.pt`` there, and a rerun resumes from what is already done.
    """
    total = len(prune_cfg.keep_ratios())

    def ckpt(r: int) -> Path | None:
        return Path(workdir) / f"round{r:03d}.pt" if workdir is not None else None

    rows: list[RoundResult] = []
    prev: RoundRecord | None = None
    for r in range(total + 1):
        method = prune_cfg.method if r else None
        plan = plan_round(prev, prune_cfg, method, r)
        if plan.skip:
            break
        row = sparse_flow_round(
            model,
            train_x=data.train,
            val_x=data.val,
            test_x=data.test,
            train_cfg=train_cfg,
            method=method,
            keep=plan.keep,
            round_index=r,
            total_rounds=total,
            checkpoint=ckpt(r),
            reference_nll=rows[-1].val_nll if rows else None,
        )
        rows.append(row)
        stopped = plan.stops_after(row.val_nll, pruned=method is not None)
        if stopped:
            log.info(
                "early stop after round %d/%d: validation NLL has not improved for %d round(s)",
                r,
                total,
                prune_cfg.patience,
            )
        prev = RoundRecord(
            experiment="",
            dataset="",
            method=method or "dense",
            seed=train_cfg.seed,
            round=r,
            rounds_total=total,
            config_hash="",
            keep=plan.keep,
            val_nll=row.val_nll,
            stopped=stopped,
            early_stopping=plan.stopper.to_dict(),
        )
    return rows
