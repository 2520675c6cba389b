"""Benchmark harness: the reference path agrees with pipeline_lib; the tiny run writes its files.

No timing is asserted: the numbers depend on the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from benchmarks.reference import ReferenceFlow, _pairs, load_from_flow, store_into_flow
from benchmarks.run import parse_args, run, settings_from_args
from benchmarks.sections import SECTIONS, Settings, _shrunk_config
from pipeline_lib.flows import FlowConfig, SolverConfig, build_flow

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: several threads on a busy machine only slow these small models."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _pair_of_flows(tol: float = 1e-8):
    """A 2-block pipeline_lib flow (adjoint, Hutchinson, learned T) and the reference path with
    the same weights, both in float64."""
    torch.manual_seed(0)
    cfg = FlowConfig(
        dim=3,
        hidden_dims=(8, 8),
        num_blocks=2,
        activation="softplus",
        T=0.5,
        train_T=True,
        trace="hutchinson",
        noise="gaussian",
        solver=SolverConfig(method="dopri5", rtol=tol, atol=tol, adjoint=True),
    )
    flow = build_flow(cfg).double()
    ref = ReferenceFlow(3, (8, 8), "softplus", 2, T=0.5, train_T=True, rtol=tol, atol=tol)
    return flow, load_from_flow(ref.double(), flow)


def _loss_and_grads(model, x, seed: int):
    model.zero_grad(set_to_none=True)
    loss = -model.log_prob(x, generator=torch.Generator().manual_seed(seed)).mean()
    loss.backward()
    return loss.item()


def test_reference_path_matches_pipeline_adjoint_hutchinson():
    flow, ref = _pair_of_flows()
    x = torch.randn(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ours = _loss_and_grads(flow, x, seed=7)
    theirs = _loss_and_grads(ref, x, seed=7)
    assert ours == pytest.approx(theirs, rel=1e-9)
    pairs = list(_pairs(ref, flow))
    assert len(pairs) == sum(1 for p in flow.parameters())  # every parameter compared
    for r, f in pairs:
        assert r.grad is not None and f.grad is not None
        assert torch.allclose(r.grad, f.grad, rtol=1e-6, atol=1e-9)
    # Different noise gives a different estimate: the agreement above is not vacuous.
    other = _loss_and_grads(ref, x, seed=8)
    assert abs(other - theirs) > 1e-6


def test_weights_round_trip_between_reference_and_flow():
    flow, ref = _pair_of_flows()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.1)
    fresh, _ = _pair_of_flows()
    store_into_flow(ref, fresh)
    for r, f in _pairs(ref, fresh):
        assert torch.equal(r, f)
    bad = ReferenceFlow(3, (4, 8), "softplus", 2)
    with pytest.raises(ValueError, match="architecture"):
        load_from_flow(bad, flow)


def test_tiny_run_writes_section_json_and_summary(tmp_path):
    summary = run(Settings.preset("tiny"), tmp_path)
    expected = [name for name in SECTIONS if name != "pipeline"]
    device = json.loads((tmp_path / "device.json").read_text())
    assert {"cpu_model", "torch", "threads", "device"} <= set(device)
    for name in expected:
        payload = json.loads((tmp_path / f"{name}.json").read_text())
        assert payload["section"] == name and payload["mode"] == "tiny"
        assert {"environment", "settings", "results", "seconds"} <= set(payload)
    toy = json.loads((tmp_path / "toy.json").read_text())["results"]["rows"]
    variants = {r["variant"] for r in toy}
    assert {"reference", "a_adjoint_hutchinson", "b_backprop_hutchinson"} <= variants
    assert {"c_backprop_exact", "d_rk4_exact"} <= variants
    for row in toy:
        assert row["error"] is None
        assert row["ms_iter"]["n"] == 2 and row["ms_iter"]["median"] > 0
        assert row["ratio_ms_iter"] > 0
        assert row["ms_iter"]["q1"] <= row["ms_iter"]["median"] <= row["ms_iter"]["q3"]
    rk4 = next(r for r in toy if r["variant"] == "d_rk4_exact")
    assert rk4["nfe_forward"]["median"] == 16 and rk4["nfe_backward"]["median"] == 0
    rnode = next(r for r in toy if r["variant"] == "f_rnode_rk4")
    assert rnode["nfe_forward"]["median"] == 16  # rk4 step 0.25 over [0, 1]
    ttq = json.loads((tmp_path / "time_to_quality.json").read_text())["results"]
    assert [r["variant"] for r in ttq["runs"]] == [
        "reference",
        "f_rnode_rk4",
        "d_rk4_exact",
        "b_backprop_hutchinson",
    ]
    assert all(r["test_nll"] is not None for r in ttq["runs"])
    hessian = json.loads((tmp_path / "hessian.json").read_text())["results"]["rows"]
    assert all(r["n_hvp"] > 0 for r in hessian)
    images = json.loads((tmp_path / "images.json").read_text())["results"]["rows"]
    rnode = next(r for r in images if r["variant"].startswith("RNODE"))
    # rk4 step 0.25 over [0, 1] in each of the 2-scale flow's 3 blocks: 3 · 4 · 4 evaluations
    assert rnode["nfe_forward_backward"]["median"] == 48 and rnode["epoch_hours"] > 0
    assert (tmp_path / "summary.md").read_text() == summary
    for title in ("toy (Table S1)", "tabular size", "Time to quality", "Hessian", "Sampling",
                  "Image flows"):  # fmt: skip
        assert title in summary
    assert "ref/ours ms/iter" in summary and "| 1 | reference" in summary


def test_time_to_quality_reports_a_reached_threshold(tmp_path):
    run(Settings.preset("tiny", ttq_threshold=10.0), tmp_path, only=["time_to_quality"])
    payload = json.loads((tmp_path / "time_to_quality.json").read_text())
    for r in payload["results"]["runs"]:
        assert r["reached"] and r["stopped"] == "threshold" and r["epochs"] == 1
        assert r["seconds_to_threshold"] > 0 and r["ratio_seconds"] > 0
    assert not (tmp_path / "toy.json").exists()
    assert "| yes |" in (tmp_path / "summary.md").read_text()


def test_cli_settings_and_unknown_section(tmp_path):
    args = parse_args(["--quick", "--threads", "1", "--threshold", "1.5", "--only", "toy,hessian"])
    s = settings_from_args(args)
    assert s.mode == "quick" and s.threads == (1,) and s.ttq_threshold == 1.5
    assert args.only == ["toy,hessian"]
    with pytest.raises(SystemExit, match="unknown section"):
        run(Settings.preset("tiny"), tmp_path, only=["nonsense"])


@pytest.mark.slow
def test_shrunk_pipeline_config_plans_a_small_run(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(_shrunk_config(REPO / "config" / "config.yaml")))
    res = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile"), "-n",
         "--directory", str(tmp_path), "--cores", "1", "--configfile", str(cfg)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert "prune_round" in res.stdout


def test_denormal_benchmark_on_a_trained_round(tmp_path):
    """``benchmarks.denormals`` on rounds laid out as a study's (non-default data settings,
    so the data directory carries a hash): it finds the study's training split for the dense
    and a pruned round, times both settings, and restores the flush setting. A smoke test:
    this 1-epoch flow does not saturate, so the agreement checks are trivial here (the
    numerical check on a saturated flow is in test_devices.py)."""
    from benchmarks.denormals import default_data, measure, render
    from pipeline_lib.devices import denormals_flushed
    from pipeline_lib.experiment import load_experiments
    from pipeline_lib.layout import Layout
    from pipeline_lib.manifest import MANIFEST_NAME
    from pipeline_lib.stages import make_toy_data, train_round

    entry = {
        "dataset": "gaussians",
        "data": {"n_per_mode": 40},
        "model": {"hidden_dims": [8], "layer_type": "mlp", "activation": "sigmoid"},
        "solver": {"method": "rk4", "step_size": 0.5},
        "train": {"epochs": 1, "batch_size": 64},
        "prune": {"methods": ["structured"], "prune_ratio_per_round": 0.2, "rounds": 1},
    }
    exp = load_experiments({"experiments": {"tiny": entry}})["tiny"]
    layout = Layout(str(tmp_path / "study"))
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / MANIFEST_NAME).write_text("{}")
    data = Path(layout.data_dir(exp.data_id))
    assert data.name != "gaussians"  # n_per_mode is not the default: the id has a hash
    make_toy_data(exp.dataset, exp.data, data)
    rounds = [
        Path(layout.checkpoint_dir("tiny", m, 0, r)) for m, r in ((None, 0), ("structured", 1))
    ]
    for r, (directory, prev) in enumerate(zip(rounds, [None, rounds[0]], strict=True)):
        train_round(exp, seed=0, method=None if r == 0 else "structured", round_index=r,
                    data_dir=data, out_model=directory / "model.pt",
                    out_record=directory / "round.json",
                    prev_model=prev and prev / "model.pt",
                    prev_record=prev and prev / "round.json")  # fmt: skip
        assert default_data(directory / "model.pt") == data
    before = denormals_flushed()
    res = measure(rounds[1] / "model.pt", data, batch_size=64, repeats=2, hvp_repeats=2)
    assert denormals_flushed() == before
    assert len(res["raw"]["on"]["hvp_wall"]) == len(res["raw"]["off"]["hvp_wall"]) == 2 * 2
    assert res["hessian_points"] == int(0.1 * 6 * 40)  # HessianConfig's default 10 %
    assert res["loss_difference"] < 1e-5 and res["hvp_relative_difference"] < 1e-5
    assert "speed-up" in render(res)
    (data.parent / "gaussians-0123abcd").mkdir()  # a second candidate: ambiguous
    with pytest.raises(SystemExit, match="give --data"):
        default_data(rounds[0] / "model.pt")
