"""What a round of Algorithm 1 leaves behind, readable without torch: the round record.

:class:`RoundRecord` is the schema of ``round.json``: a workflow job writes it
(:func:`pipeline_lib.stages.train_round`), :func:`pipeline_lib.sparse_flow.plan_round` decides
the next round from it, and the summary (:mod:`pipeline_lib.reporting.summary`) reads it.
:func:`has_diverged` is the rule that flags a diverged round, applied when the round is
trained and again, with the current threshold, when the summary is built.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["RoundRecord", "has_diverged"]


def has_diverged(val_nll: float, reference_nll: float, threshold_nats: float | None) -> bool:
    """Whether a round diverged: its final validation NLL is not finite, or ends more than
    ``threshold_nats`` above ``reference_nll`` (the previous round's validation NLL, or the
    model's before training). ``threshold_nats=None`` never flags."""
    if threshold_nats is None:
        return False
    if not math.isfinite(val_nll):
        return True
    return math.isfinite(reference_nll) and val_nll > reference_nll + threshold_nats


@dataclass
class RoundRecord:
    """One round of a chain as the workflow records it (``round.json``; the summary reads it).

    ``skipped`` rounds come after an early stop (Algorithm 1 line 4): they repeat the metrics
    of the round the chain stopped after (``stopped_at``) at no training cost. ``keep`` is the
    round's nominal keep ratio and ``prune_ratio_nominal`` = 1 − keep (the paper's tables);
    ``prune_ratio`` counts prunable weights and ``prune_ratio_params`` all parameters (the
    released code's measure, Fig. 4's axis). ``early_stopping`` is the stopping rule's state
    after this round, ``history`` the per-epoch training log, ``model_digest`` the digest of
    the round's checkpoint.
    """

    experiment: str
    dataset: str
    method: str
    seed: int
    round: int
    rounds_total: int
    config_hash: str
    model_digest: str = ""
    keep: float = 1.0
    prune_ratio: float = 0.0
    prune_ratio_nominal: float = 0.0
    prune_ratio_params: float = 0.0
    params_total: int = 0
    params_nonzero: int = 0
    val_nll: float = math.nan
    val_nll_reference: float = math.nan
    diverged: bool = False
    nfe_forward: float = math.nan
    train_seconds: float = 0.0
    wall_seconds: float = 0.0
    device: str = "cpu"
    skipped: bool = False
    stopped: bool = False
    stopped_at: int | None = None
    early_stopping: dict[str, Any] | None = None
    history: list[dict] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RoundRecord:
        """Read a record back (keys outside the schema, such as the signature, are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def is_final(self) -> bool:
        """Whether the chain has stopped: this round stopped it or came after the stop."""
        return self.stopped or self.skipped
