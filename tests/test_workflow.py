"""The Snakemake workflow: plans, config validation, a tiny end-to-end run, kill and resume."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from data_helpers import write_mnist_mirror

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"

# the five MAF sets (Table 2); the other data sets of the configs are 2-D
TABULAR = ("power", "gas", "hepmass", "miniboone", "bsds300")

# every test here starts Snakemake: out of the quick loop (pytest -m "not slow")
pytestmark = pytest.mark.slow


def unprivileged() -> list[str]:
    """A command prefix that runs as an ordinary user would: as root, drop the capabilities
    that let root write to read-only files (CI runs as root, where a write-protection problem
    would never show)."""
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:  # util-linux: on every Debian/Ubuntu system
            raise RuntimeError(
                "the workflow tests run as root need setpriv to drop root's permission "
                "override (install util-linux), or run them as an ordinary user"
            )
        return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    return []


SNAKEMAKE = [*unprivileged(), sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE)]


def _without_slurm_probe() -> dict[str, str]:
    """The environment of the workflow runs here: the SLURM executor plugin runs ``scontrol show
    config`` whenever Snakemake starts, which waits 9 s where SLURM is installed but its
    controller is down (after the SLURM test); an ``scontrol`` that fails at once skips that."""
    bin_dir = Path(tempfile.mkdtemp(prefix="no-slurm-"))
    (bin_dir / "scontrol").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "scontrol").chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


ENV = _without_slurm_probe()


def snakemake(args, workdir: Path, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*SNAKEMAKE, "--directory", str(workdir), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
        **kw,
    )


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run."""
    table = output.split("Job stats:")[1].split("\n\n")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, flags=re.M)}


def dry_run(configfile: Path, tmp_path: Path) -> dict[str, int]:
    res = snakemake(["-n", "--cores", "2", "--configfile", str(configfile)], tmp_path)
    assert res.returncode == 0, res.stderr + res.stdout
    return job_counts(res.stdout)


@pytest.mark.parametrize(
    "name, datasets, seeds, rounds_of",
    [
        ("config/config.yaml", 4, 1, None),
        ("config/paper/toy.yaml", 4, 3, None),
        ("config/paper/moons.yaml", 1, 1, None),
        ("config/paper/tabular.yaml", 5, 3, None),
        ("config/paper/ablation.yaml", 25, 3, None),
        ("config/paper/gaussians.yaml", 1, 3, None),
        ("config/paper/gaussians_rnode.yaml", 1, 1, None),
        ("config/paper/gaussians_l4h64.yaml", 1, 1, None),
        ("config/paper/spirals.yaml", 2, 1, None),
        ("config/paper/gaussians_concatsquash.yaml", 1, 1, None),
        ("config/paper/images.yaml", 3, 1, None),
        ("config/paper/images_smoke.yaml", 1, 1, None),
    ],
)
def test_dry_run_plans_every_stage(tmp_path, name, datasets, seeds, rounds_of):
    cfg = yaml.safe_load((REPO / name).read_text())
    counts = dry_run(REPO / name, tmp_path)
    exps = cfg["experiments"]
    # rounds per experiment, computed here from the config independently of the workflow;
    # every checkpoint gets an NLL job, one for samples (2-D flows) or robustness
    # (classifiers) and one for the Hessian unless they are disabled
    total_rounds = 0
    checkpoints = {"nll": 0, "samples": 0, "hessian": 0, "robustness": 0}
    for exp in exps.values():
        p = exp["prune"]
        sweep = exp.get("sweep") or {}
        n_combos = 1
        for values in sweep.values():
            n_combos *= len(values)
        if p.get("schedule") == "paper_toy":
            r = 29
        elif p.get("schedule") == "paper_images":
            r = 12
        elif p.get("target_prune_ratio"):
            r, keep = 0, 1.0
            while 1 - keep < p["target_prune_ratio"] - 1e-12:
                keep *= 1 - p["prune_ratio_per_round"]
                r += 1
        else:
            r = p["rounds"]
        chain = n_combos * len(exp["seeds"]) * len(p["methods"]) * r
        total_rounds += chain
        n = chain + n_combos * len(exp["seeds"])
        ev = exp.get("evaluation") or {}
        checkpoints["nll"] += n
        classifier = (exp.get("model") or {}).get("family") == "classifier"
        if classifier:
            enabled = (ev.get("robustness") or {}).get("enabled", True)
            checkpoints["robustness"] += n if enabled else 0
        elif exp["dataset"] not in TABULAR:  # every other data set here is 2-D
            checkpoints["samples"] += n if (ev.get("samples") or {}).get("enabled", True) else 0
        checkpoints["hessian"] += n if (ev.get("hessian") or {}).get("enabled", True) else 0
    assert counts["train_dense"] == datasets * seeds
    assert counts["prune_round"] == total_rounds
    assert counts["evaluate_nll"] == datasets * seeds + total_rounds == checkpoints["nll"]
    for metric in ("samples", "hessian", "robustness"):
        assert counts.get(f"evaluate_{metric}", 0) == checkpoints[metric]
    flows = {
        e["dataset"]
        for e in exps.values()
        if (e.get("model") or {}).get("family") in (None, "multiscale")
    }
    assert counts["summary"] == 1 and counts.get("nll_figure", 0) == min(1, len(flows))
    assert counts.get("nll_table", 0) == len(flows)
    with_classifier = int(checkpoints["robustness"] > 0)
    assert counts.get("classifier_table", 0) == with_classifier
    assert counts.get("decision_boundaries", 0) == with_classifier
    images = {e["dataset"] for e in exps.values() if e["dataset"] in ("mnist", "cifar10")}
    assert counts.get("image_data", 0) == len(images)
    assert counts.get("sample_grids", 0) == min(1, len(images))
    if "tabular" in name:
        assert counts["download_maf"] == 1 and counts["tabular_data"] == 5
        # rounds to the last published row of Tables S4-S8 (POWER, GAS, HEPMASS, MINIBOONE, BSDS300)
        assert total_rounds == 3 * 2 * (8 + 8 + 12 + 18 + 8)


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"trian": {}}, r"experiments\.bad.*'trian' was unexpected"),
        ({"dataset": "mnist2"}, r"experiments\.bad\.dataset.*use one of"),
        (
            {"prune": {"prune_ratio_per_round": 1.5}},
            r"experiments\.bad\.prune\.prune_ratio_per_round",
        ),
        ({"train": {"epochs": -3}}, r"experiments\.bad\.train\.epochs.*minimum"),
        ({"solver": {"method": "rk4"}}, r"step_size"),
        ({"train": {"epochs": 0}}, r"experiments\.bad\.train\.epochs.*minimum of 1"),
        (
            {"evaluation": {"solver": {"method": "rk4"}}},
            r"set experiments\.bad\.evaluation\.solver\.step_size",
        ),
    ],
)
def test_invalid_config_fails_before_any_job(tmp_path, edit, message):
    exp = {"dataset": "gaussians", **edit}
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({"experiments": {"bad": exp}}))
    res = snakemake(["-n", "--cores", "1", "--configfile", str(cfg)], tmp_path)
    assert res.returncode != 0
    assert re.search(message, res.stderr + res.stdout), res.stderr
    assert "Job stats" not in res.stdout
    assert not (tmp_path / "results").exists()


DUPLICATE_KEY = """
experiments:
  bad: {dataset: gaussians}
  bad: {dataset: spiral}
"""
SWEEP_COLLISION = """
experiments:
  bad__lr-0.1: {dataset: gaussians}
  bad: {dataset: gaussians, sweep: {train.lr: [0.1, 0.2]}}
"""


@pytest.mark.parametrize(
    "text, message",
    [
        (DUPLICATE_KEY, r"'experiments\.bad'.*appears twice.*lines 3 and 4"),
        (SWEEP_COLLISION, r"'bad__lr-0\.1' is defined twice"),
        ('results: ""\nexperiments: {bad: {dataset: gaussians}}', r"'results'.*empty"),
        ('results: "/"\nexperiments: {bad: {dataset: gaussians}}', r"'results'.*root"),
        ("results: a_file\nexperiments: {bad: {dataset: gaussians}}", r"'results'.*existing file"),
        (
            "compute: {device: cuda}\nexperiments: {bad: {dataset: gaussians}}",
            r"'compute\.device'.*CUDA device",
        ),
    ],
)
def test_unsafe_settings_fail_before_any_job(tmp_path, text, message):
    if "cuda" in text:
        import torch

        if torch.cuda.is_available():
            pytest.skip("the refusal of compute.device: cuda shows only on a machine without a GPU")
    (tmp_path / "a_file").write_text("not a directory")
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    res = snakemake(["-n", "--cores", "1", "--configfile", str(cfg)], tmp_path)
    assert res.returncode != 0
    assert re.search(message, res.stderr + res.stdout), res.stderr
    assert "Job stats" not in res.stdout and "Traceback" not in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".snakemake") == [
        "a_file",
        "bad.yaml",
    ]


def tiny_config(
    tmp_path: Path,
    epochs: int = 2,
    n_per_mode: int = 100,
    extra: dict | None = None,
    lr: float = 1.0e-2,
) -> Path:
    base = {
        "dataset": "gaussians",
        "data": {"n_per_mode": n_per_mode},
        "seeds": [0],
        "model": {"hidden_dims": [16, 16], "activation": "tanh", "trace": "exact"},
        "solver": {"method": "rk4", "step_size": 0.5},
        "train": {"optimizer": "adamw", "lr": lr, "epochs": epochs, "batch_size": 128},
        "evaluation": {"trace": "exact"},
        "prune": {
            "methods": ["unstructured", "structured"],
            "prune_ratio_per_round": 0.4,
            "rounds": 2,
        },
    }
    cfg = {
        "results": "results",
        "report": {"published_dir": str(REPO / "config" / "published")},
        "compute": {"device": "cpu", "threads": 1},
        "experiments": {"tiny": base, **(extra or {})},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    """One tiny study run end to end (workdir, configfile), shared by the tests below: the
    ``tiny`` experiment (both methods, 2 rounds, every metric), ``stopper`` (early stop
    after round 1 of 3), ``clf``, a neural-ODE classifier on the moons (§4.6), and ``img``, a
    multiscale image flow on a tiny synthetic set in MNIST's file format, read from a mirror
    directory (§4.3)."""
    workdir = tmp_path_factory.mktemp("tiny_run")
    stop = {
        "dataset": "gaussians",
        "data": {"n_per_mode": 100},
        "model": {"hidden_dims": [8], "trace": "exact"},
        "solver": {"method": "rk4", "step_size": 0.5},
        "train": {"epochs": 1, "batch_size": 128},
        "evaluation": {"trace": "exact"},
        "prune": {
            "methods": ["unstructured"],
            "prune_ratio_per_round": 0.3,
            "rounds": 3,
            "patience": 1,
            "min_delta": 1.0e9,
        },
    }
    clf = {
        "dataset": "moons",
        "data": {"n_samples": 400},
        "model": {"family": "classifier", "hidden_dims": [16]},
        "solver": {"method": "rk4", "step_size": 0.25},
        "train": {"lr": 1.0e-2, "epochs": 3, "batch_size": 128},
        "evaluation": {
            "hessian": {"power_iters": 5, "lanczos_steps": 5, "lanczos_runs": 1},
            "robustness": {
                "grid_resolution": 40,
                "noise_draws": 2,
                "snapshot_resolution": 16,
                "trajectories": 8,
                "trajectory_steps": 5,
            },
        },
        "prune": {
            "methods": ["unstructured", "structured"],
            "prune_ratio_per_round": 0.3,
            "rounds": 2,
        },  # fmt: skip
    }
    img = {
        "dataset": "mnist",
        "model": {"family": "multiscale", "hidden_dims": [4], "activation": "softplus"},
        "solver": {"method": "rk4", "step_size": 0.5},
        "train": {"epochs": 1, "batch_size": 25},
        "evaluation": {
            "batch_size": 50,
            "hessian": {"num_points": 4, "power_iters": 2, "lanczos_steps": 3,
                        "lanczos_runs": 1, "trace_samples": 2},
        },
        "prune": {"methods": ["unstructured", "structured"], "prune_ratio_per_round": 0.3,
                  "rounds": 2},
    }  # fmt: skip
    cfg = tiny_config(workdir, extra={"stopper": stop, "clf": clf, "img": img})
    tiny_cfg = yaml.safe_load(cfg.read_text())
    mirror = workdir / "mirror"
    tiny_cfg["data"] = {"mirror": str(mirror), "image_md5": write_mnist_mirror(mirror)}
    tiny_cfg["experiments"]["tiny"]["train"]["val_every"] = 2  # reaches the jobs untracked
    cfg.write_text(yaml.safe_dump(tiny_cfg))
    # no wall-time assertion: the run's time is measured in docs/REPRODUCTION.md, and a
    # machine shared with other jobs must not fail the test
    res = snakemake(["--cores", "2", "--configfile", str(cfg)], workdir, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    return workdir, cfg


def test_tiny_run_summary_has_every_round_and_metric(tiny_run):
    df = pd.read_parquet(tiny_run[0] / "results" / "summary.parquet")
    required = {
        "experiment",
        "dataset",
        "method",
        "seed",
        "round",
        "prune_ratio",
        "params_total",
        "params_nonzero",
        "val_nll",
        "test_nll",
        "nll_unit",
        "nfe_forward",
        "train_seconds",
        "config_hash",
    }
    assert required <= set(df.columns)
    tiny = df[df.experiment == "tiny"]
    assert sorted(tiny.groupby("method")["round"].apply(list).sum()) == [0, 0, 1, 1, 2, 2]
    assert tiny["test_nll"].notna().all()
    assert tiny["lambda_max"].notna().all() and tiny["good_pct_3"].between(0, 100).all()
    assert (tiny["family"] == "ffjord").all() and tiny["test_accuracy"].isna().all()
    # the classifier: same rounds, its cross-entropy as the NLL, accuracy and robustness
    clf = df[df.experiment == "clf"]
    assert sorted(clf.groupby("method")["round"].apply(list).sum()) == [0, 0, 1, 1, 2, 2]
    assert (clf["family"] == "classifier").all() and clf["test_accuracy"].between(0, 1).all()
    assert clf["test_nll"].gt(0).all() and clf["lambda_max"].notna().all()
    assert (clf["boundary_distance_p5"] <= clf["boundary_distance_mean"]).all()
    assert clf["noise_accuracy_0.1"].between(0, 1).all()
    assert clf["good_pct_3"].isna().all()  # good samples are a flow's metric
    # the image flow: bits/dim of the 8-bit images, = NLL / (D log 2), D = 64 pixels
    img = df[df.experiment == "img"]
    assert sorted(img.groupby("method")["round"].apply(list).sum()) == [0, 0, 1, 1, 2, 2]
    assert (img["family"] == "multiscale").all() and img["lambda_max"].notna().all()
    bits = img["test_nll"] / (64 * np.log(2))
    np.testing.assert_allclose(img["test_bits_per_dim"], bits, rtol=1e-9)
    assert (img["test_bits_per_dim"] > 0).all()  # an 8-bit image has a probability below 1


def test_tiny_run_early_stop_leaves_pass_through_rounds(tiny_run):
    results = tiny_run[0] / "results"
    df = pd.read_parquet(results / "summary.parquet")
    # early stop after round 1: round 2 and 3 are pass-throughs without rows
    assert sorted(df[df.experiment == "stopper"]["round"]) == [0, 1]
    skipped = results / "stopper/seed0/unstructured/round003/round.json"
    assert '"skipped": true' in skipped.read_text()
    assert "skipped" in (results / "logs/stopper/seed0/unstructured/round002.log").read_text()


def test_tiny_run_tables_figures_and_progress_logs(tiny_run):
    results = tiny_run[0] / "results"
    assert (results / "tables/nll_gaussians.md").read_text().count("tiny") >= 3
    assert (results / "figures/nll_vs_prune_ratio.png").stat().st_size > 10_000
    table = (results / "tables/classifier.md").read_text()
    assert table.count("| clf ") == 6 and "acc. σ=0.2" in table
    for figure in ("decision_boundaries", "classifier_vs_prune_ratio"):
        assert (results / f"figures/{figure}.png").stat().st_size > 10_000
    assert not (results / "tables/nll_moons.md").exists()
    assert "bits/dim" in (results / "tables/nll_mnist.md").read_text()
    assert (results / "figures/sample_grids.png").stat().st_size > 5_000
    grid = np.load(results / "img/seed0/structured/round002/metrics/snapshot.npz")["images"]
    assert grid.shape == (100, 1, 8, 8) and grid.dtype == np.uint8
    # progress in the logs: epochs, NFE, round r of R
    log = (results / "logs/tiny/seed0/unstructured/round002.log").read_text()
    assert "round 2/2 | epoch 2/2" in log and "NFE" in log
    assert re.search(r"round 2/2 \| epoch 1/2 \| loss [-\d.]+ \| val NLL – \|", log)
    assert re.search(r"round 2/2 \| epoch 2/2 \| loss [-\d.]+ \| val NLL [-\d.]+ \|", log)


def test_tiny_run_html_report_bundles_figures_and_tables(tiny_run):
    workdir, cfg = tiny_run
    res = snakemake(["--configfile", str(cfg), "--report", "report.html"], workdir)
    assert res.returncode == 0, res.stderr[-3000:]
    html = (workdir / "report.html").read_text(errors="replace")
    assert "nll_vs_prune_ratio.png" in html and "nll_gaussians.md" in html
    assert "decision_boundaries.png" in html and "classifier.md" in html


def test_tiny_run_reruns_only_what_an_edit_touches(tiny_run):
    workdir, cfg = tiny_run
    # editing a figure's script reruns only the report rules
    res = snakemake(
        ["-n", "--cores", "1", "--configfile", str(cfg), "--forcerun", "nll_figure"], workdir
    )
    assert set(job_counts(res.stdout)) == {"nll_figure", "all", "total"}
    # evaluation-only settings re-evaluate the checkpoints without retraining them ...
    edited = yaml.safe_load(cfg.read_text())
    edited["experiments"]["tiny"]["evaluation"]["hessian"] = {"power_iters": 7}
    edited["experiments"]["tiny"]["train"]["val_every"] = 1
    edited_cfg = workdir / "edited.yaml"
    edited_cfg.write_text(yaml.safe_dump(edited))
    counts = dry_run(edited_cfg, workdir)
    assert counts["evaluate_hessian"] == 5 and "prune_round" not in counts
    assert not {"train_dense", "evaluate_nll", "evaluate_samples"} & set(counts)
    # ... while a training setting retrains
    edited["experiments"]["tiny"]["train"]["lr"] = 2.0e-2
    edited_cfg.write_text(yaml.safe_dump(edited))
    counts = dry_run(edited_cfg, workdir)
    assert counts["train_dense"] == 1 and counts["prune_round"] == 4


def test_a_kept_study_continues_on_a_fresh_checkout(tiny_run, tmp_path):
    """A results tree copied without its dates and metadata (a git clone of the kept studies)
    is up to date again after restore_dates: only what is missing is made."""
    from pipeline_lib.layout import restore_dates

    workdir, cfg = tiny_run
    shutil.copytree(workdir / "results", tmp_path / "results")
    shutil.copy(cfg, tmp_path / cfg.name)
    rng = random.Random(0)
    for path in (tmp_path / "results").rglob("*"):  # dates as arbitrary as a checkout's
        stamp = time.time() - rng.uniform(0, 1000)
        os.utime(path, (stamp, stamp))
    args = ["-n", "--cores", "1", "--configfile", str(tmp_path / cfg.name)]
    assert "prune_round" in job_counts(
        snakemake([*args, "--rerun-triggers", "mtime"], tmp_path).stdout
    )
    assert restore_dates(tmp_path / "results") > 50
    res = snakemake([*args, "--rerun-triggers", "mtime"], tmp_path)
    assert res.returncode == 0 and "Nothing to be done" in res.stdout, res.stdout[-2000:]
    (tmp_path / "results/tiny/seed0/structured/round002/metrics/hessian.json").unlink()
    counts = job_counts(snakemake([*args, "--rerun-triggers", "mtime"], tmp_path).stdout)
    assert counts["evaluate_hessian"] == 1
    assert not {"train_dense", "prune_round", "evaluate_nll", "evaluate_samples"} & set(counts)


def summary_rows(results: Path) -> pd.DataFrame:
    df = pd.read_parquet(results / "summary.parquet")
    return (
        df.drop(columns=["train_seconds"]).sort_values(["method", "round"]).reset_index(drop=True)
    )


#: The configuration of the kill tests, and of their uninterrupted reference run.
KILL_CONFIG = dict(epochs=5, n_per_mode=300, lr=2.0e-2)
ROUND2 = "results/tiny/seed0/unstructured/round002"


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory) -> Path:
    """The results of an uninterrupted run of :data:`KILL_CONFIG`."""
    workdir = tmp_path_factory.mktemp("straight")
    cfg = tiny_config(workdir, **KILL_CONFIG)
    t0 = time.time()
    res = snakemake(["--cores", "2", "--configfile", str(cfg)], workdir)
    assert res.returncode == 0, res.stderr[-3000:]
    (workdir / "seconds").write_text(f"{time.time() - t0:.3f}")
    return workdir / "results"


def start(cfg: Path, workdir: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [*SNAKEMAKE, "--directory", str(workdir), "--cores", "1", "--configfile", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=ENV,
    )


def kill_when_round2_trains(proc: subprocess.Popen, workdir: Path) -> None:
    """SIGKILL the whole run as soon as prune round 2 has written its training state."""
    state = workdir / ROUND2 / "train_state.pt"
    try:
        deadline = time.time() + 600  # a hang guard, not a timing check
        while not state.exists():
            assert proc.poll() is None, "workflow finished before round 2 was in flight"
            assert time.time() < deadline, "round 2 never started"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_kill_during_prune_round_then_resume(tmp_path, straight_run):
    cfg = tiny_config(tmp_path, **KILL_CONFIG)
    kill_when_round2_trains(start(cfg, tmp_path), tmp_path)
    r1 = tmp_path / "results/tiny/seed0/unstructured/round001/model.pt"
    dense = tmp_path / "results/tiny/seed0/round000/model.pt"
    stamps = {p: p.stat().st_mtime_ns for p in (r1, dense)}
    assert not (tmp_path / ROUND2 / "model.pt").exists()

    # a SIGKILLed Snakemake leaves its lock behind: --unlock, then the same command again
    assert snakemake(["--unlock", "--configfile", str(cfg)], tmp_path).returncode == 0
    res = snakemake(["--cores", "1", "--configfile", str(cfg), "--rerun-incomplete"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # earlier rounds not retrained
    log = (tmp_path / "results/logs/tiny/seed0/unstructured/round002.log").read_text()
    assert "resuming from" in log
    pd.testing.assert_frame_equal(
        summary_rows(straight_run), summary_rows(tmp_path / "results"), atol=1e-6
    )


def test_setting_changed_after_a_kill_retrains_the_round_in_flight(tmp_path, straight_run):
    """Killed while round 2 trains at lr = 0.01, rerun at lr = 0.02 as an ordinary user: every
    round retrains at 0.02 (the saved state of round 2 is discarded), the write-protection of
    finished models does not block it, and the results equal an uninterrupted 0.02 run."""
    cfg = tiny_config(tmp_path, **{**KILL_CONFIG, "lr": 1.0e-2})
    kill_when_round2_trains(start(cfg, tmp_path), tmp_path)
    cfg = tiny_config(tmp_path, **KILL_CONFIG)  # lr 0.01 -> 0.02
    assert snakemake(["--unlock", "--configfile", str(cfg)], tmp_path).returncode == 0
    res = snakemake(["--cores", "2", "--configfile", str(cfg)], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    log = (tmp_path / "results/logs/tiny/seed0/unstructured/round002.log").read_text()
    assert "discarding the training state" in log
    assert "(experiment.train.lr: 0.01 -> 0.02)" in log
    assert "resuming from" not in log.split("discarding the training state")[-1]
    pd.testing.assert_frame_equal(
        summary_rows(straight_run), summary_rows(tmp_path / "results"), atol=1e-6
    )


def test_recovers_from_kills_at_random_points(tmp_path, straight_run):
    """Fault injection: SIGKILL the whole run at 5 seeded random moments (start-up, data,
    training mid-epoch, evaluation), each at most a sixth of the uninterrupted run's time after
    its start, recover as documented (``--unlock``, then the same command), and get the summary
    of the uninterrupted run."""
    rng = random.Random(20261202)
    cfg = tiny_config(tmp_path, **KILL_CONFIG)
    # five attempts of at most a sixth of the uninterrupted run each cannot finish the run
    longest = max(2.0, float((straight_run.parent / "seconds").read_text()) / 6)
    kills = []
    for _ in range(5):
        delay = rng.uniform(1.0, longest)
        proc = start(cfg, tmp_path)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            kills.append(round(delay, 1))
        assert snakemake(["--unlock", "--configfile", str(cfg)], tmp_path).returncode == 0
    assert len(kills) == 5, f"the run finished before its kill: {kills}"
    res = snakemake(["--cores", "1", "--configfile", str(cfg)], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    pd.testing.assert_frame_equal(
        summary_rows(straight_run), summary_rows(tmp_path / "results"), atol=1e-6
    )


def test_documented_flows_work_for_an_ordinary_user(tmp_path):
    """As an ordinary user: an evaluation setting re-evaluates, reporting rules rerun on
    --forcerun, and a round directory deleted by hand is regenerated (it used to be 'Nothing
    to be done' with the summary still listing it)."""
    cfg = tiny_config(tmp_path, epochs=1)
    base = ["--cores", "2", "--configfile", str(cfg)]
    assert snakemake(base, tmp_path).returncode == 0
    edited = yaml.safe_load(cfg.read_text())
    edited["experiments"]["tiny"]["evaluation"]["hessian"] = {"power_iters": 5}
    cfg.write_text(yaml.safe_dump(edited))
    res = snakemake(base, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "rule evaluate_hessian" in res.stderr + res.stdout
    assert "rule evaluate_nll" not in res.stderr + res.stdout
    assert "rule prune_round" not in res.stderr + res.stdout
    res = snakemake([*base, "--forcerun", "nll_table", "nll_figure"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    before = summary_rows(tmp_path / "results")
    shutil.rmtree(tmp_path / "results/tiny/seed0/unstructured/round001")
    res = snakemake(base, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "results/tiny/seed0/unstructured/round001/model.pt").is_file()
    pd.testing.assert_frame_equal(before, summary_rows(tmp_path / "results"), atol=1e-6)


def test_second_study_in_one_results_directory_is_refused(tmp_path):
    """Two configurations writing one results directory from two working directories used to
    leave a summary with only the last one's experiments."""
    results = tmp_path / "shared_results"
    first, second = tmp_path / "one", tmp_path / "two"
    for workdir, name in ((first, "tiny"), (second, "other")):
        workdir.mkdir()
        cfg = yaml.safe_load(tiny_config(workdir, epochs=1).read_text())
        cfg["results"] = str(results)
        cfg["experiments"] = {name: cfg["experiments"]["tiny"]}
        (workdir / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    res = snakemake(
        ["--cores", "1", "--configfile", str(first / "tiny.yaml"), "--until", "toy_data"], first
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert '"tiny"' in (results / "manifest.json").read_text()
    res = snakemake(["-n", "--cores", "1", "--configfile", str(second / "tiny.yaml")], second)
    assert res.returncode != 0
    assert "holds the experiment(s) tiny of another configuration" in res.stderr + res.stdout
    assert not (results / "other").exists()


def test_config_overrides_keep_the_default_configfile(tmp_path):
    """`--config key=value` overrides one key of config/config.yaml instead of replacing it."""
    res = subprocess.run(
        [*SNAKEMAKE, "-n", "--cores", "1", "--config", f"results={tmp_path}/out"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=ENV,
    )
    assert res.returncode == 0, res.stderr
    assert job_counts(res.stdout)["train_dense"] == 4  # 3 toy flows and the moons classifier
    assert f"{tmp_path}/out/summary.parquet" in res.stdout


@pytest.mark.parametrize("good_md5", [True, False])
def test_tabular_data_is_downloaded_verified_and_extracted_by_the_workflow(tmp_path, good_md5):
    """download_maf -> extract_maf -> tabular_data against a loopback server: the archive's
    MD5 is verified (a wrong one fails the download job and leaves no archive), GAS is read
    through the restricted unpickler."""
    import hashlib

    from data_helpers import FileServer, make_maf_tree, pack_tar_gz

    archive = pack_tar_gz(make_maf_tree(tmp_path / "src"), tmp_path / "data.tar.gz")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest() if good_md5 else "0" * 32
    with FileServer({"data.tar.gz": archive.read_bytes()}) as server:
        cfg = {
            "results": "results",
            "resources": "resources",
            "data": {"maf_url": server.url("data.tar.gz"), "maf_md5": md5},
            "compute": {"device": "cpu"},
            "experiments": {"tab": {"dataset": "gas", "model": {"hidden_dims": [8]}}},
        }
        (tmp_path / "tab.yaml").write_text(yaml.safe_dump(cfg))
        args = ["--cores", "1", "--configfile", str(tmp_path / "tab.yaml")]
        res = snakemake([*args, "--until", "tabular_data"], tmp_path)
    if good_md5:
        assert res.returncode == 0, res.stderr[-3000:]
        meta = yaml.safe_load((tmp_path / "results/data/gas/meta.json").read_text())
        assert meta["dim"] == 8
    else:
        assert res.returncode != 0
        log = (tmp_path / "results/logs/data/download_maf.log").read_text()
        assert f"md5 mismatch: expected {md5}" in log
        assert not (tmp_path / "resources/maf/data.tar.gz").exists()
