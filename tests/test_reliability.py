"""Reliability without the workflow engine: stale and corrupt training states, checkpoint and
record integrity, hostile downloads, configuration checks and divergence (one test per defect;
the workflow-level flows are in test_workflow.py)."""

from __future__ import annotations

import hashlib
import io as _io
import json
import logging
import math
import os
import pickle
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from data_helpers import FileServer
from flow_helpers import cfg, make_flow, toy_data, weights

from pipeline_lib.data import ArchiveError, DownloadError, extract_archive, fetch
from pipeline_lib.data.tabular import (
    MAF_ARCHIVE_MD5,
    preprocess_tabular,
    read_dataframe_pickle,
)
from pipeline_lib.experiment import (
    SamplesConfig,
    check_device,
    check_results_dir,
    check_yaml_keys,
    expand_experiments,
    load_experiments,
)
from pipeline_lib.io import UnreadableFileError, load_checkpoint, read_json, write_json
from pipeline_lib.manifest import register_study
from pipeline_lib.reporting.summary import aggregate_experiment
from pipeline_lib.sparse_flow import sparse_flow_round
from pipeline_lib.stages import load_model, train_round
from pipeline_lib.training import TrainingDivergedError, has_diverged, train

# -- 1. a training state is tied to its settings -----------------------------------------------


def test_stale_training_state_is_discarded_after_a_setting_changes(tmp_path, caplog):
    """Defect 1: a round killed under lr = 0.01 and rerun under lr = 0.02 must train at 0.02
    from the start, not resume the old optimizer state and weights."""
    x, v = toy_data(512, 0), toy_data(128, 1)
    ckpt = tmp_path / "train_state.pt"
    key = {"experiment": {"train": {"lr": 0.01}}, "start_model": "abc"}
    train(make_flow(), x, v, cfg(lr=0.01, epochs=1), checkpoint=ckpt, key=key)  # killed here
    new_key = {"experiment": {"train": {"lr": 0.02}}, "start_model": "abc"}
    with caplog.at_level(logging.WARNING, logger="sparseflows.training"):
        rerun = make_flow()
        res = train(rerun, x, v, cfg(lr=0.02, epochs=3), checkpoint=ckpt, key=new_key)
    assert res.resumed_from_epoch == 0
    assert "other settings (experiment.train.lr: 0.01 -> 0.02)" in caplog.text
    clean = make_flow()
    train(clean, x, v, cfg(lr=0.02, epochs=3))
    for a, b in zip(weights(clean), weights(rerun), strict=True):
        assert torch.equal(a, b)
    # the same settings still resume, and the library's own settings are part of the key
    assert load_checkpoint(ckpt)["key"]["train"]["lr"] == 0.02
    res = train(make_flow(), x, v, cfg(lr=0.02, epochs=4), checkpoint=ckpt, key=new_key)
    assert res.resumed_from_epoch == 3


def test_state_of_another_starting_model_or_beyond_the_epochs_is_discarded(tmp_path, caplog):
    x, v = toy_data(256, 0), toy_data(64, 1)
    ckpt = tmp_path / "train_state.pt"
    train(make_flow(), x, v, cfg(epochs=2), checkpoint=ckpt, key={"start_model": "a"})
    with caplog.at_level(logging.WARNING, logger="sparseflows.training"):
        res = train(make_flow(), x, v, cfg(epochs=2), checkpoint=ckpt, key={"start_model": "b"})
    assert res.resumed_from_epoch == 0 and "start_model: 'a' -> 'b'" in caplog.text
    res = train(make_flow(), x, v, cfg(epochs=1), checkpoint=ckpt, key={"start_model": "b"})
    assert res.resumed_from_epoch == 0 and "beyond train.epochs" in caplog.text


def test_truncated_training_state_restarts_the_round(tmp_path, caplog):
    """Defect 4: a truncated train_state.pt used to fail every rerun until deleted by hand."""
    x, v = toy_data(256, 0), toy_data(64, 1)
    ckpt = tmp_path / "train_state.pt"
    train(make_flow(), x, v, cfg(epochs=1), checkpoint=ckpt)
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="sparseflows.training"):
        resumed = make_flow()
        res = train(resumed, x, v, cfg(epochs=2), checkpoint=ckpt)
    assert res.resumed_from_epoch == 0
    assert "discarding the training state" in caplog.text and "train_state.pt" in caplog.text
    clean = make_flow()
    train(clean, x, v, cfg(epochs=2))
    assert all(torch.equal(a, b) for a, b in zip(weights(clean), weights(resumed), strict=True))


# -- 4. integrity of checkpoints and records ---------------------------------------------------


@pytest.fixture
def finished_round(tmp_path):
    """Round 0 and unstructured round 1 of a tiny experiment, through the stage functions."""
    from pipeline_lib.stages import make_toy_data

    entry = {
        "dataset": "gaussians",
        "data": {"n_per_mode": 60},
        "model": {"hidden_dims": [8], "trace": "exact"},
        "solver": {"method": "rk4", "step_size": 0.5},
        "train": {"epochs": 1, "batch_size": 128},
        "evaluation": {"trace": "exact", "hessian": {"enabled": False}},
        "prune": {"methods": ["unstructured"], "prune_ratio_per_round": 0.2, "rounds": 2},
    }
    exp = load_experiments({"experiments": {"tiny": entry}})["tiny"]
    data = tmp_path / "data"
    make_toy_data(exp.dataset, exp.data, data)
    r0, r1 = tmp_path / "round000", tmp_path / "unstructured" / "round001"
    common = dict(seed=0, data_dir=data)
    train_round(exp, method=None, round_index=0, **common,
                out_model=r0 / "model.pt", out_record=r0 / "round.json")  # fmt: skip
    train_round(exp, method="unstructured", round_index=1, **common,
                out_model=r1 / "model.pt", out_record=r1 / "round.json",
                prev_model=r0 / "model.pt", prev_record=r0 / "round.json")  # fmt: skip
    return {"exp": exp, "data": data, "r0": r0, "r1": r1}


def test_a_chain_does_not_continue_from_a_round_of_other_settings(finished_round, tmp_path):
    """Round 2 refuses round 1's model when the training settings changed since (e.g. under
    --rerun-triggers mtime, which does not track settings)."""
    spec = finished_round["exp"].to_dict()
    spec["train"]["lr"] = 2 * spec["train"]["lr"]
    changed = load_experiments({"experiments": {"tiny": spec}})["tiny"]
    r1, r2 = finished_round["r1"], tmp_path / "unstructured" / "round002"
    with pytest.raises(ValueError, match="trained under other settings"):
        train_round(changed, seed=0, method="unstructured", round_index=2,
                    data_dir=finished_round["data"], out_model=r2 / "model.pt",
                    out_record=r2 / "round.json", prev_model=r1 / "model.pt",
                    prev_record=r1 / "round.json")  # fmt: skip
    assert not (r2 / "model.pt").exists()


def test_truncated_model_names_the_file_and_the_fix(finished_round):
    model = finished_round["r1"] / "model.pt"
    model.write_bytes(model.read_bytes()[:-300])
    with pytest.raises(UnreadableFileError) as err:
        load_model(model)
    message = str(err.value)
    assert str(model) in message and "delete" in message and "trained again" in message


def test_garbled_bytes_inside_a_model_are_refused(finished_round):
    """Defect 4: 64 garbled bytes of weights used to load silently."""
    model = finished_round["r0"] / "model.pt"
    weight = torch.load(model, weights_only=True)["model"]
    tensor = max(weight.values(), key=lambda t: t.numel())
    needle = tensor.numpy().tobytes()[:64]
    data = model.read_bytes()
    assert data.count(needle) == 1
    model.write_bytes(data.replace(needle, bytes(255 - b for b in needle)))
    torch.load(model, weights_only=True)  # torch itself does not notice
    with pytest.raises(UnreadableFileError, match="does not match its recorded digest"):
        load_model(model)


def test_checkpoint_replaced_after_its_record_is_refused(finished_round):
    r0, r1 = finished_round["r0"], finished_round["r1"]
    (r1 / "model.pt").write_bytes((r0 / "model.pt").read_bytes())
    record = read_json(r1 / "round.json", signed=True)
    with pytest.raises(UnreadableFileError, match="not the checkpoint its round.json records"):
        load_model(r1 / "model.pt", expected_digest=record["model_digest"])


def _evaluate(fin, path):
    from pipeline_lib.stages import evaluate_checkpoint

    out = {k: path / "metrics" / f"{k}.json" for k in ("nll", "samples", "hessian")}
    out["snapshot"] = path / "metrics" / "snapshot.npz"
    samples = SamplesConfig(n_samples=500, grid_resolution=8)
    exp = replace(fin["exp"], evaluation=replace(fin["exp"].evaluation, samples=samples))
    evaluate_checkpoint(exp, data_dir=fin["data"], model_path=path / "model.pt",
                        record_path=path / "round.json", out=out)  # fmt: skip
    return [path / "round.json", out["nll"]]


def test_summary_is_built_only_from_records_that_check_out(finished_round, tmp_path):
    files = _evaluate(finished_round, finished_round["r0"])
    files += _evaluate(finished_round, finished_round["r1"])
    df = aggregate_experiment(files, tmp_path / "summary.parquet")
    assert sorted(df["round"]) == [0, 1] and not df["diverged"].any()
    # a hand-edited prune ratio (the JSON stays valid) is refused, naming the file
    record = finished_round["r1"] / "round.json"
    text = record.read_text()
    edited = json.loads(text)
    edited["prune_ratio"] = 0.99
    record.write_text(json.dumps(edited))
    with pytest.raises(UnreadableFileError, match=r"round001/round.json does not match"):
        aggregate_experiment(files, tmp_path / "again.parquet")
    # a truncated record or metrics file names its path
    record.write_text(text[:40])
    with pytest.raises(UnreadableFileError, match=r"round001/round.json is not valid JSON"):
        aggregate_experiment(files, tmp_path / "again.parquet")
    record.write_text(text)
    nll = finished_round["r1"] / "metrics" / "nll.json"
    nll.write_text(nll.read_text()[:20])
    with pytest.raises(UnreadableFileError, match=r"metrics/nll.json is not valid JSON.*again"):
        aggregate_experiment(files, tmp_path / "again.parquet")
    assert not (tmp_path / "again.parquet").exists()


def test_signed_json_round_trips_and_refuses_edits(tmp_path):
    path = tmp_path / "r.json"
    payload = {"a": 1, "b": [1.5, math.nan], "c": {"d": "x"}}
    write_json(path, payload, signed=True)
    back = read_json(path, signed=True)
    assert back["a"] == 1 and back["c"] == {"d": "x"} and math.isnan(back["b"][1])
    unsigned = tmp_path / "u.json"
    write_json(unsigned, payload)
    with pytest.raises(UnreadableFileError, match="has no content_sha256"):
        read_json(unsigned, signed=True)


# -- 3. downloads ------------------------------------------------------------------------------


class _Payload:
    """Runs a shell command when unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_pickle_is_refused_and_a_genuine_dataframe_loads(tmp_path):
    """Defect 3: the GAS pickle of a downloaded archive used to be read with pd.read_pickle."""
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pickle"
    evil.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(pickle.UnpicklingError, match=r"names posix\.system"):
        read_dataframe_pickle(evil)
    assert not marker.exists()
    # inside a real frame, the payload is refused as well
    nested = tmp_path / "nested.pickle"
    frame = pd.DataFrame({"a": [1.0, 2.0]})
    frame.attrs["x"] = _Payload(marker)
    nested.write_bytes(pickle.dumps(frame))
    with pytest.raises(pickle.UnpicklingError):
        read_dataframe_pickle(nested)
    assert not marker.exists()
    # a class patched through BUILD (pandas.Index.equals = 1) is refused, and nothing changes
    patch = b"\x80\x02cpandas\nIndex\n}X\x06\x00\x00\x00equalsK\x01sb."
    (tmp_path / "patch.pickle").write_bytes(patch)
    with pytest.raises(pickle.UnpicklingError, match="sets attributes of the class Index"):
        read_dataframe_pickle(tmp_path / "patch.pickle")
    assert callable(pd.Index.equals)
    # a genuine DataFrame pickle of the installed pandas (string labels in an object index,
    # as in the MAF archive), every protocol
    rng = np.random.default_rng(0)
    labels = pd.Index(["Time", "Meth", "Eth", "s1"], dtype=object)
    genuine = pd.DataFrame(rng.standard_normal((50, 4)), columns=labels)
    for protocol in (2, 4, pickle.HIGHEST_PROTOCOL):
        path = tmp_path / f"genuine{protocol}.pickle"
        path.write_bytes(pickle.dumps(genuine, protocol=protocol))
        pd.testing.assert_frame_equal(read_dataframe_pickle(path), genuine)
    genuine.to_pickle(tmp_path / "to_pickle.pickle")
    pd.testing.assert_frame_equal(read_dataframe_pickle(tmp_path / "to_pickle.pickle"), genuine)


def test_gas_preprocessing_refuses_a_crafted_pickle(tmp_path):
    (tmp_path / "gas").mkdir()
    marker = tmp_path / "pwned"
    (tmp_path / "gas" / "ethylene_CO.pickle").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load it"):
        preprocess_tabular("gas", tmp_path, tmp_path / "out")
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_maf_md5_is_pinned_and_verified(tmp_path):
    import yaml

    from pipeline_lib.data.download import file_digest

    schema_file = Path(__file__).resolve().parents[1] / "workflow/schemas/config.schema.yaml"
    schema = yaml.safe_load(schema_file.read_text())
    assert schema["properties"]["data"]["properties"]["maf_md5"]["default"] == MAF_ARCHIVE_MD5
    assert MAF_ARCHIVE_MD5 == "9b9c9b0375315ad270eba4ce80c093ab"
    body = b"not the MAF archive"
    assert file_digest(_write(tmp_path / "b", body), "md5") == hashlib.md5(body).hexdigest()
    with FileServer({"data.tar.gz": body}) as server:
        with pytest.raises(DownloadError, match="md5 mismatch"):
            fetch(server.url("data.tar.gz"), tmp_path / "x.tar.gz", md5=MAF_ARCHIVE_MD5,
                  retries=0)  # fmt: skip
        assert not (tmp_path / "x.tar.gz").exists()
        good = fetch(server.url("data.tar.gz"), tmp_path / "y.tar.gz",
                     md5=hashlib.md5(body).hexdigest())  # fmt: skip
        assert good.read_bytes() == body


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_extraction_beyond_the_size_cap_is_refused_and_leaves_nothing(tmp_path):
    """Defect 3: a 204 KB archive expanded to 200 MiB with no limit."""
    archive = tmp_path / "bomb.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for i in range(3):
            info = tarfile.TarInfo(f"data/zeros{i}.bin")
            info.size = 4 << 20
            tar.addfile(info, _io.BytesIO(bytes(info.size)))
    assert archive.stat().st_size < 100_000
    with pytest.raises(ArchiveError, match=r"12,582,912 bytes, more than the limit of 10,000,000"):
        extract_archive(archive, tmp_path / "out", max_bytes=10_000_000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.tar.gz"]
    extract_archive(archive, tmp_path / "out", max_bytes=13_000_000)
    assert (tmp_path / "out" / "data" / "zeros2.bin").stat().st_size == 4 << 20


# -- 5. configuration --------------------------------------------------------------------------


def test_configuration_errors_name_the_full_key(tmp_path):
    def load(entry):
        return load_experiments({"experiments": {"e": entry}})

    exp = {"dataset": "gaussians", "evaluation": {"solver": {"method": "rk4"}}}
    with pytest.raises(ValueError, match=r"experiments\.e\.evaluation\.solver\.step_size"):
        load(exp)
    with pytest.raises(ValueError, match=r"'experiments\.e\.train\.epochs'.*minimum of 1"):
        load({"dataset": "gaussians", "train": {"epochs": 0}})
    # inconsistent Hessian settings fail at start-up, not in the first evaluation job
    no_lambda = {
        "dataset": "gaussians",
        "evaluation": {"hessian": {"power_iters": 0, "lanczos_runs": 0}},
    }
    with pytest.raises(ValueError, match=r"'experiments\.e\.evaluation\.hessian'.*lanczos_runs"):
        load(no_lambda)
    for bad, problem in (("", "empty"), ("/", "filesystem root"), ("f.txt", "existing file")):
        (tmp_path / "f.txt").write_text("x")
        with pytest.raises(ValueError, match=rf"'results'.*{problem}"):
            check_results_dir(str(tmp_path / bad) if bad == "f.txt" else bad)
    check_results_dir(str(tmp_path / "new"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"'compute\.device'.*0 CUDA device"):
            check_device("cuda")
    check_device("cpu")


def test_duplicate_keys_and_colliding_names_are_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("experiments:\n  a: {dataset: gaussians}\n  a: {dataset: spiral}\n")
    with pytest.raises(ValueError, match=r"'experiments\.a'.*twice.*lines 2 and 3"):
        check_yaml_keys([path])
    path.write_text("experiments:\n  a:\n    train: {lr: 1, lr: 2}\n")
    with pytest.raises(ValueError, match=r"'experiments\.a\.train\.lr'"):
        check_yaml_keys([path])
    clash = {
        "a__lr-0.1": {"dataset": "gaussians"},
        "a": {"dataset": "gaussians", "sweep": {"train.lr": [0.1, 0.2]}},
    }
    with pytest.raises(ValueError, match=r"'a__lr-0\.1' is defined twice"):
        expand_experiments(clash)


def test_results_directory_holds_one_study(tmp_path):
    results = tmp_path / "results"
    register_study(results, {"a": "h1"}, ["one.yaml"])
    assert (results / "a").is_dir()
    with pytest.raises(ValueError, match=r"holds the experiment\(s\) a of another configuration"):
        register_study(results, {"b": "h2"}, ["two.yaml"], write=False)
    # a superset adds; a configuration file below the working directory is recorded relative
    # to it (Snakemake passes absolute paths), so a kept results tree names no machine's paths
    register_study(results, {"a": "h3", "b": "h2"}, [Path.cwd() / "config" / "three.yaml"])
    manifest = read_json(results / "manifest.json")
    assert manifest["experiments"]["a"]["config_hash"] == "h3"
    assert manifest["experiments"]["a"]["configfiles"] == [str(Path("config") / "three.yaml")]
    (results / "a").rmdir()  # deleting an experiment's directory drops it
    register_study(results, {"b": "h2"}, ["two.yaml"])
    assert list(read_json(results / "manifest.json")["experiments"]) == ["b"]
    # a directory from before manifests: its experiments are those with seed runs
    old = tmp_path / "old"
    (old / "x" / "seed0").mkdir(parents=True)
    (old / "logs" / "x").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"experiment\(s\) x of another"):
        register_study(old, {"y": "h"}, write=False)
    register_study(old, {"x": "h", "y": "h"}, write=False)


# -- divergence --------------------------------------------------------------------------------


def test_divergence_rule():
    assert has_diverged(4.0, 1.5, 2.0) and not has_diverged(3.4, 1.5, 2.0)
    assert has_diverged(math.nan, 1.5, 2.0) and has_diverged(math.inf, 1.5, 2.0)
    assert not has_diverged(100.0, 1.5, None) and not has_diverged(5.0, math.nan, 2.0)


def test_a_diverging_round_is_flagged_or_fails(tmp_path, caplog):
    """Defect 5: lr = 10 finished with test NLL in the thousands of nats and no warning."""
    x, v = toy_data(512, 0), toy_data(128, 1)

    def dense_round(train_cfg, checkpoint=None):
        return sparse_flow_round(
            make_flow(), train_x=x, val_x=v, train_cfg=train_cfg, method=None, keep=1.0,
            round_index=0, total_rounds=1, checkpoint=checkpoint,
        )  # fmt: skip

    with caplog.at_level(logging.WARNING, logger="sparseflows.sparse_flow"):
        row = dense_round(cfg(lr=10.0, epochs=2))
    assert row.diverged and row.val_nll > row.val_nll_reference + 2
    assert "diverged" in caplog.text and "lower train.lr (now 10)" in caplog.text
    good = dense_round(cfg(epochs=2))
    assert not good.diverged and good.val_nll < good.val_nll_reference
    assert len(good.history) == 2  # the round returns its per-epoch history
    # the reference is measured once, before the first epoch, and kept for a resumed round
    ckpt = tmp_path / "state.pt"
    first = dense_round(cfg(lr=10.0, epochs=2), ckpt)
    again = dense_round(cfg(lr=10.0, epochs=2), ckpt)
    assert again.val_nll_reference == first.val_nll_reference == row.val_nll_reference
    assert again.diverged and again.history == first.history
    with pytest.raises(TrainingDivergedError, match=r"on_divergence: fail"):
        dense_round(cfg(lr=10.0, epochs=2, on_divergence="fail"))


def test_every_loader_names_the_unreadable_file(tmp_path):
    from pipeline_lib.data import DataSplits
    from pipeline_lib.io import load_npz, read_parquet, write_parquet
    from pipeline_lib.reporting.tables import write_nll_table

    summary = tmp_path / "summary.parquet"
    write_parquet(pd.DataFrame({"a": [1.0, 2.0]}), summary)
    summary.write_bytes(summary.read_bytes()[:30])
    with pytest.raises(UnreadableFileError, match=r"summary.parquet is unreadable.*rerun"):
        write_nll_table(summary, "gaussians", None, *(tmp_path / f"t.{e}" for e in "abc"))
    with pytest.raises(UnreadableFileError, match="is missing"):
        read_parquet(tmp_path / "absent.parquet")
    snap = tmp_path / "snapshot.npz"
    np.savez_compressed(snap, x=np.arange(1000.0))
    snap.write_bytes(snap.read_bytes()[:100])
    with pytest.raises(UnreadableFileError, match=r"snapshot.npz is unreadable"):
        load_npz(snap)
    splits = DataSplits(train=toy_data(20, 0), val=toy_data(10, 1), test=toy_data(10, 2))
    splits.save(tmp_path / "data")
    (tmp_path / "data" / "val.npy").write_bytes(b"\x93NUMPY")
    with pytest.raises(UnreadableFileError, match=r"data/val.npy is unreadable.*prepared again"):
        DataSplits.load(tmp_path / "data")


def test_library_loop_retrains_a_round_whose_prune_settings_changed(tmp_path, toy_splits):
    """run_sparse_flow resumes from its work directory only what was trained under the same
    round, method, keep ratio and starting weights."""
    from pipeline_lib.sparse_flow import PruneConfig, run_sparse_flow

    data = toy_splits
    prune_cfg = PruneConfig(method="unstructured", prune_ratio_per_round=0.5, rounds=1)
    first = run_sparse_flow(make_flow(), data, cfg(epochs=1), prune_cfg, workdir=tmp_path)
    prune_cfg = PruneConfig(method="unstructured", prune_ratio_per_round=0.2, rounds=1)
    second = run_sparse_flow(make_flow(), data, cfg(epochs=1), prune_cfg, workdir=tmp_path)
    fresh = run_sparse_flow(make_flow(), data, cfg(epochs=1), prune_cfg)
    # the keep ratio counts all parameters (the released budget)
    assert 1 - first[1].params_nonzero / first[1].params_total == pytest.approx(0.5, abs=0.01)
    assert 1 - second[1].params_nonzero / second[1].params_total == pytest.approx(0.2, abs=0.01)
    assert second[1].val_nll == pytest.approx(fresh[1].val_nll, abs=1e-9)
