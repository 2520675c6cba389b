"""Algorithm 1 end to end on a tiny flow: densities per round, resume, early stopping."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from flow_helpers import make_flow

from pipeline_lib.flows import SolverConfig
from pipeline_lib.sparse_flow import PruneConfig, run_sparse_flow
from pipeline_lib.training import TrainConfig


def tiny_data():
    g = torch.Generator().manual_seed(0)
    return SimpleNamespace(
        train=torch.randn(256, 2, generator=g),
        val=torch.randn(128, 2, generator=g),
        test=torch.randn(128, 2, generator=g),
    )


def tiny_flow():
    return make_flow(solver=SolverConfig(method="rk4", step_size=0.5))


TRAIN = TrainConfig(epochs=1, batch_size=128, lr=1e-2)


@pytest.mark.parametrize("method", ["unstructured", "structured"])
def test_rounds_follow_the_schedule(tmp_path, method):
    flow = tiny_flow()
    prune_cfg = PruneConfig(method=method, prune_ratio_per_round=0.3, rounds=3)
    rows = run_sparse_flow(flow, tiny_data(), TRAIN, prune_cfg, workdir=tmp_path)
    assert [r.round for r in rows] == [0, 1, 2, 3]
    assert rows[0].prune_ratio == 0.0
    ratios = [r.prune_ratio for r in rows]
    assert ratios == sorted(ratios) and ratios[-1] > 0.3
    for r in rows[1:]:  # the keep ratio is a budget over all parameters (released semantics)
        budget = round(0.7**r.round * r.params_total)
        assert r.params_nonzero <= budget
        if method == "unstructured":
            assert r.params_nonzero == budget
    assert all(r.params_nonzero < rows[0].params_nonzero for r in rows[1:])
    assert sorted(p.name for p in tmp_path.glob("round*.pt")) == [
        f"round{r:03d}.pt" for r in range(4)
    ]


def test_rerun_resumes_without_retraining(tmp_path):
    prune_cfg = PruneConfig(prune_ratio_per_round=0.3, rounds=2)
    first = run_sparse_flow(tiny_flow(), tiny_data(), TRAIN, prune_cfg, workdir=tmp_path)
    stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("round*.pt")}
    again = run_sparse_flow(tiny_flow(), tiny_data(), TRAIN, prune_cfg, workdir=tmp_path)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("round*.pt")} == stamps
    for a, b in zip(first, again, strict=True):
        assert a.prune_ratio == b.prune_ratio
        assert a.test_nll == pytest.approx(b.test_nll, abs=1e-9)


def test_early_stopping_ends_the_rounds():
    # an improvement of 1e9 nats is never reached: stop after `patience` rounds
    prune_cfg = PruneConfig(prune_ratio_per_round=0.3, rounds=5, patience=2, min_delta=1e9)
    rows = run_sparse_flow(tiny_flow(), tiny_data(), TRAIN, prune_cfg)
    assert [r.round for r in rows] == [0, 1, 2]


def test_paper_toy_schedule_and_bad_prune_config():
    assert len(PruneConfig(schedule="paper_toy").keep_ratios()) == 29
    assert PruneConfig(
        prune_ratio_per_round=0.5, target_prune_ratio=0.8, rounds=None
    ).keep_ratios() == [
        0.5,
        0.25,
        0.125,
    ]
    with pytest.raises(ValueError, match="prune_ratio_per_round"):
        PruneConfig(prune_ratio_per_round=1.5)
    with pytest.raises(ValueError, match="prune.method"):
        PruneConfig(method="random")


def test_plan_round_is_algorithm_1_line_4_and_5():
    """One round's decision from the previous record: keep ratio of the schedule, stopping
    state carried over, pass-through once the chain has stopped (it stays stopped)."""
    from pipeline_lib.sparse_flow import RoundRecord, plan_round

    prune = PruneConfig(prune_ratio_per_round=0.5, rounds=4, patience=1)
    dense = plan_round(None, prune, None, 0)
    assert not dense.skip and dense.keep == 1.0
    assert not dense.stops_after(2.0, pruned=False)  # the dense round never stops the chain

    def record(r, plan, val, stopped):
        return RoundRecord(
            "e", "gaussians", "unstructured", 0, r, 4, "h", keep=plan.keep, val_nll=val,
            stopped=stopped, early_stopping=plan.stopper.to_dict(),
        )  # fmt: skip

    prev = record(0, dense, 2.0, False)
    r1 = plan_round(prev, prune, "unstructured", 1)
    assert (r1.skip, r1.keep) == (False, 0.5) and not r1.stops_after(1.9, pruned=True)
    r2 = plan_round(record(1, r1, 1.9, False), prune, "unstructured", 2)
    assert r2.keep == 0.25 and r2.stops_after(1.95, pruned=True)  # no improvement: stop
    r3 = plan_round(record(2, r2, 1.95, True), prune, "unstructured", 3)
    assert r3.skip and r3.stopped_at == 2 and r3.keep == 0.25
    skipped = RoundRecord.from_dict({**record(3, r3, 1.95, False).to_dict(), "skipped": True,
                                     "stopped_at": 2, "content_sha256": "x"})  # fmt: skip
    r4 = plan_round(skipped, prune, "unstructured", 4)
    assert r4.skip and r4.stopped_at == 2
    # without patience nothing stops
    free = PruneConfig(prune_ratio_per_round=0.5, rounds=4)
    plan = plan_round(record(1, r1, 1.9, False), free, "unstructured", 2)
    assert not plan.stops_after(5.0, pruned=True)
