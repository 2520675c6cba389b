"""The workflow's steps as functions of files: one function per Snakemake rule kind.

Where the files lie is :mod:`pipeline_lib.layout`'s business; what a round record holds is
:class:`~pipeline_lib.records.RoundRecord`.

Each function reads its inputs from disk, calls the science in the other modules and writes
its outputs atomically, so the rule scripts in ``workflow/scripts`` stay one call long and the
steps are testable without Snakemake.

Files of one run (the layout documented in ``results/README.md``):

- ``<round dir>/model.pt`` — weights, masks, the model family and its configuration of a
  finished round;
- ``<round dir>/round.json`` — the round's record (prune ratio, parameters, validation NLL,
  timings, early-stopping state, per-epoch history);
- ``<round dir>/train_state.pt`` — the in-flight training checkpoint (not a workflow output:
  it survives a killed job so that the rerun resumes, and is removed when the round is done);
- ``<round dir>/metrics/{nll,samples,hessian,robustness}.json``, ``snapshot.npz``,
  ``boundary.npz`` — test NLL (a classifier's cross-entropy, with its accuracy), good samples
  and the density / vector-field arrays of 2-D flows, Hessian metrics, and a classifier's
  robustness with the arrays of its Fig. 9 panels.

Every model family (:mod:`pipeline_lib.families`) goes through the same functions: the
family decides how a model is built and which rows of the data it trains on.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from pipeline_lib.data import DataSplits, load_splits
from pipeline_lib.evaluation.nll import evaluate_nll
from pipeline_lib.experiment import METRICS, DataConfig, EvaluationConfig, Experiment
from pipeline_lib.families import (
    FAMILIES,
    build_model,
    family_of_model,
    model_config_from_dict,
)
from pipeline_lib.io import (
    DIGEST_KEY,
    UnreadableFileError,
    read_json,
    round_fix,
    write_json,
    write_npz,
)
from pipeline_lib.layout import TRAIN_STATE
from pipeline_lib.sparse_flow import RoundRecord, plan_round, sparse_flow_round
from pipeline_lib.training import load_checkpoint, save_checkpoint

__all__ = [
    "evaluate_checkpoint",
    "load_model",
    "make_toy_data",
    "read_record",
    "train_round",
]

log = logging.getLogger("sparseflows.stages")


def read_record(path: str | Path) -> dict:
    """A round's ``round.json``, verified against its digest (a hand-edited or truncated
    record raises :class:`~pipeline_lib.io.UnreadableFileError`)."""
    return read_json(path, signed=True, fix=round_fix(path))


def load_model(
    checkpoint: str | Path,
    device: str | torch.device = "cpu",
    expected_digest: str | None = None,
) -> torch.nn.Module:
    """Rebuild a model from a round's ``model.pt`` (masks included), after verifying the
    digest of its content and, if given, that it is the checkpoint a record names. The
    checkpoint names its family (one written before families existed is a flow)."""
    state = load_checkpoint(checkpoint, fix=round_fix(checkpoint))
    if expected_digest is not None and state[DIGEST_KEY] != expected_digest:
        raise UnreadableFileError(
            checkpoint,
            "is not the checkpoint its round.json records (replaced after the round finished?)",
            round_fix(checkpoint),
        )
    family = state.get("family", "ffjord")
    config = state.get("model_config", state.get("flow_config"))
    model = build_model(model_config_from_dict(family, config))
    model.load_state_dict(state["model"])
    return model.to(device)


def train_round(
    exp: Experiment,
    *,
    seed: int,
    method: str | None,
    round_index: int,
    data_dir: str | Path,
    out_model: str | Path,
    out_record: str | Path,
    prev_model: str | Path | None = None,
    prev_record: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> RoundRecord:
    """Round 0 (``method=None``): train the dense warm start. Round r ≥ 1: prune PR of the
    remaining weights of round r-1's model and retrain (Algorithm 1, lines 5–6). What the
    round does is :func:`~pipeline_lib.sparse_flow.plan_round`'s decision; this function reads
    and writes the files around it.

    A round after an early stop (Algorithm 1 line 4) is a pass-through: it copies round r-1's
    model and marks its record ``skipped``, at no training cost.
    """
    out_model, out_record = Path(out_model), Path(out_record)
    base = {
        "experiment": exp.name,
        "dataset": exp.dataset,
        "method": method or "dense",
        "seed": seed,
        "round": round_index,
        "rounds_total": exp.rounds,
        "config_hash": exp.rerun_hash,  # what the model was trained under
    }
    prev = RoundRecord.from_dict(read_record(prev_record)) if prev_record is not None else None
    if prev is not None and prev.config_hash != exp.rerun_hash:
        raise ValueError(
            f"{prev_record} was trained under other settings (hash {prev.config_hash}, now "
            f"{exp.rerun_hash}): a chain must not continue from it. Let Snakemake retrain the "
            "chain (run without --rerun-triggers, which tracks the settings), or delete the "
            "experiment's results to start it over"
        )
    plan = plan_round(prev, exp.prune, method, round_index)
    if plan.skip:
        load_model(prev_model, "cpu", prev.model_digest)  # verified before it is copied
        log.info(
            "round %d/%d skipped: pruning stopped early after round %d",
            round_index,
            exp.rounds,
            plan.stopped_at,
        )
        shutil.copyfile(prev_model, out_model)
        record = replace(
            prev,
            **base,
            skipped=True,
            stopped=False,
            stopped_at=plan.stopped_at,
            train_seconds=0.0,
            history=[],
        )
        write_json(out_record, record.to_dict(), signed=True)
        return record

    data = load_splits(data_dir)
    family = FAMILIES[exp.family]
    device = torch.device(device)
    if prev_model is not None:
        model = load_model(prev_model, device, prev.model_digest)
    else:
        torch.manual_seed(seed)
        model = build_model(exp.model_config(data.dim)).to(device)
    t0 = time.perf_counter()
    row = sparse_flow_round(
        model,
        train_x=family.examples(data, "train"),
        val_x=family.examples(data, "val"),
        train_cfg=exp.train_config(seed=seed, device=str(device)),
        method=method,
        keep=plan.keep,
        round_index=round_index,
        total_rounds=exp.rounds,
        # the in-flight training state, resumed only under the same settings
        # (sparse_flow_round adds the round, method, keep ratio and starting weights)
        checkpoint=out_model.parent / TRAIN_STATE,
        reference_nll=prev.val_nll if prev is not None else None,
        key={"experiment": exp.rerun_key, "seed": seed},
    )
    stopped = plan.stops_after(row.val_nll, pruned=method is not None)
    model_digest = save_checkpoint(
        out_model,
        {
            "model": model.state_dict(),
            "family": exp.family,
            "model_config": exp.model_config(data.dim).to_dict(),
            "round": round_index,
            "method": method or "dense",
            "seed": seed,
        },
        model,
    )
    record = RoundRecord(
        **base,
        keep=plan.keep,
        prune_ratio=row.prune_ratio,
        prune_ratio_nominal=1.0 - plan.keep,
        prune_ratio_params=1.0 - row.params_nonzero / row.params_total,
        params_total=row.params_total,
        params_nonzero=row.params_nonzero,
        val_nll=row.val_nll,
        val_nll_reference=row.val_nll_reference,
        diverged=row.diverged,
        nfe_forward=row.nfe_forward,
        train_seconds=row.train_seconds,
        wall_seconds=time.perf_counter() - t0,
        device=str(device),
        stopped=stopped,
        early_stopping=plan.stopper.to_dict(),
        history=row.history,
        model_digest=model_digest,
    )
    write_json(out_record, record.to_dict(), signed=True)
    (out_model.parent / TRAIN_STATE).unlink(missing_ok=True)
    if stopped:
        log.info(
            "early stop at round %d/%d: validation NLL stopped improving", round_index, exp.rounds
        )
    return record


def make_toy_data(dataset: str, data: DataConfig, out_dir: str | Path) -> DataSplits:
    """Draw a toy data set (train / validation / test) and store it."""
    from pipeline_lib.data.toy import generate_toy

    splits = generate_toy(dataset, seed=data.seed, **data.generator_kwargs())
    splits.save(out_dir)
    log.info("%s: train/val/test sizes %s", dataset, splits.sizes)
    return splits


def _split_nll(ev: EvaluationConfig, model, x: torch.Tensor, device, seed: int):
    """NLL of one split's examples with the evaluation settings (``evaluation.trace``/``solver``):
    a flow's −log p(x), a classifier's cross-entropy."""
    gen = torch.Generator(device=torch.device(device)).manual_seed(seed)
    return evaluate_nll(
        model, x.to(device), ev.batch_size, solver=ev.solver, trace=ev.trace, generator=gen
    )


def _test_nll(ev: EvaluationConfig, model, data: DataSplits, device, seed: int):
    """Test NLL (Tables 2–3, S4–S10); for a classifier, its cross-entropy and accuracy."""
    family = family_of_model(model)
    t0 = time.perf_counter()
    res = _split_nll(ev, model, family.examples(data, "test"), device, seed)
    result = {
        "family": family.name,
        "test_nll": res.nll,
        "test_nll_stderr": res.stderr,
        "n_test": res.n,
        "nfe_eval": res.nfe,
        "nll_unit": "nats",
    }
    if family.supervised:
        x, labels = data.test.to(device), data.test_labels.to(device)
        predicted = torch.cat([model.predict(b, ev.solver) for b in x.split(ev.batch_size)])
        result["test_accuracy"] = float((predicted == labels).double().mean())
    else:
        result["test_bits_per_dim"] = res.bits_per_dim
    result["seconds"] = time.perf_counter() - t0
    log.info(
        "test NLL %.4f ± %.4f nats%s (%d points, %.1f s)",
        res.nll,
        res.stderr,
        f", accuracy {result['test_accuracy']:.4f}" if family.supervised else "",
        res.n,
        result["seconds"],
    )
    return result


#: Images in the sample grid of an image flow's checkpoint (10 × 10).
IMAGE_GRID = 100


def _image_samples(ev: EvaluationConfig, model, device, seed: int):
    """A grid of samples of an image flow from fixed latent noise (the same for every round of
    a seed, so that the rounds are comparable): uint8 images ``(IMAGE_GRID, C, H, W)``."""
    import numpy as np

    t0 = time.perf_counter()
    with torch.no_grad():
        images = model.sample(
            IMAGE_GRID, solver=ev.solver, generator=torch.Generator().manual_seed(seed)
        )
    pixels = (images * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
    result = {"enabled": True, "n_images": IMAGE_GRID, "seconds": time.perf_counter() - t0}
    log.info("sample grid: %d images, %.1f s", IMAGE_GRID, result["seconds"])
    return result, {"images": pixels, "available": np.array(True)}


def _samples(ev: EvaluationConfig, model, data: DataSplits, device, seed: int, dataset: str):
    """Good-quality samples (§4.4, Table 4) where the data has Gaussian modes, and the density /
    vector-field snapshot of Figs. 5–6, for 2-D toy flows; a sample grid for image flows."""
    from pipeline_lib.data.toy import GAUSSIAN_MODE_DATASETS
    from pipeline_lib.evaluation.density import flow_snapshot
    from pipeline_lib.evaluation.modes import evaluate_modes

    cfg = ev.samples
    kind = family_of_model(model).sample_kind
    if not cfg.enabled or kind is None:
        return {"enabled": False}, None
    if kind == "images":
        return _image_samples(ev, model, device, seed)
    if data.dim != 2:
        return {"enabled": False}, None
    gen = torch.Generator(device=torch.device(device)).manual_seed(seed)
    t0 = time.perf_counter()
    result: dict[str, Any] = {"enabled": True}
    if dataset in GAUSSIAN_MODE_DATASETS:
        result.update(
            evaluate_modes(
                model,
                data,
                n_samples=cfg.n_samples,
                n_std=cfg.n_std,
                solver=ev.solver,
                generator=gen,
            )
        )
    snap = flow_snapshot(
        model,
        extent=cfg.grid_extent,
        resolution=cfg.grid_resolution,
        n_samples=cfg.snapshot_samples,
        solver=ev.solver,
        trace=ev.trace,
        generator=gen,
    )
    result["seconds"] = time.perf_counter() - t0
    log.info("samples: good %s, %.1f s", result.get("good_pct"), result["seconds"])
    return result, snap.to_npz()


def _hessian(ev: EvaluationConfig, model, data: DataSplits, device, seed: int):
    """Hessian eigen-analysis on training data (§4.5, Table 5, S11–S12): λ_max, trace and κ of
    the NLL Hessian restricted to the unpruned parameters, with the NLL of the whole training
    split beside them (Table S11's NLL column is the training NLL). A classifier's is the
    Hessian of its cross-entropy."""
    from pipeline_lib.evaluation.hessian import hessian_metrics

    if not ev.hessian.enabled:
        return {"enabled": False}
    cfg = replace(ev.hessian, seed=seed, noise_seed=seed)
    model.eval()  # no training-time augmentation (an image flow's flips) in the fixed loss
    train_examples = family_of_model(model).examples(data, "train").to(device)
    result = {"enabled": True, **hessian_metrics(model, train_examples, cfg)}
    train = _split_nll(ev, model, train_examples, device, seed)
    result.update(train_nll=train.nll, train_nll_stderr=train.stderr, n_train=train.n)
    log.info(
        "Hessian: λ_max %.4g, trace %.4g, κ %.4g (%d HVPs, %.1f s); training NLL %.4f nats",
        result["lambda_max"],
        result["trace"],
        result["kappa"],
        result["n_hvp"],
        result["seconds"],
        result["train_nll"],
    )
    return result


def _robustness(ev: EvaluationConfig, model, data: DataSplits, device, seed: int):
    """Robustness of a classifier's decision boundary on the test set (§4.6): boundary
    distances (mean, 5th percentile) and accuracy under Gaussian input noise, with the arrays
    of its Fig. 9 row (decision boundary, state space, trajectories) for 2-D inputs."""
    from pipeline_lib.evaluation.robustness import classifier_robustness, classifier_snapshot

    cfg = ev.robustness
    if not cfg.enabled or "robustness" not in family_of_model(model).metrics:
        return {"enabled": False}, None
    t0 = time.perf_counter()
    x, labels = data.test.to(device), data.test_labels.to(device)
    gen = torch.Generator().manual_seed(seed)

    def predict(batch: torch.Tensor) -> torch.Tensor:
        return model.predict(batch, ev.solver)

    result = {"enabled": True, **classifier_robustness(predict, x, labels, cfg, generator=gen)}
    snapshot = (
        classifier_snapshot(model, x, labels, cfg, generator=gen, solver=ev.solver)
        if data.dim == 2
        else None
    )
    result["seconds"] = time.perf_counter() - t0
    log.info(
        "robustness: boundary distance mean %.4f, 5th percentile %.4f; noisy accuracy %s (%.1f s)",
        result["boundary_distance_mean"],
        result["boundary_distance_p5"],
        result["noise_accuracy"],
        result["seconds"],
    )
    return result, snapshot


#: The array file beside a metric's JSON (:data:`~pipeline_lib.layout.METRIC_FILES`).
_ARRAYS = {"samples": "snapshot", "robustness": "boundary"}


def evaluate_metric(
    metric: str,
    evaluation: EvaluationConfig,
    *,
    dataset: str,
    data_dir: str | Path,
    model_path: str | Path,
    record_path: str | Path,
    out: dict[str, str | Path],
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> dict:
    """Evaluate one metric of one checkpoint (one of :data:`~pipeline_lib.experiment.METRICS`)
    with the ``evaluation`` settings and write ``out``: ``{"nll": file}``,
    ``{"hessian": file}``, ``{"samples": file, "snapshot": file}`` or
    ``{"robustness": file, "boundary": file}``. ``dataset`` says whether the data has
    Gaussian modes to count good samples of. Each file names the checkpoint it measured.
    Rounds skipped after an early stop are not evaluated again (their files say ``skipped``);
    a metric or part that does not apply to the model says ``enabled: false``.
    """
    import numpy as np

    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose among {list(METRICS)}")
    record = read_record(record_path)
    arrays = None
    if record.get("skipped"):
        result: dict = {"skipped": True}
    else:
        data = load_splits(data_dir)
        model = load_model(model_path, device, record["model_digest"])
        if metric == "samples":
            result, arrays = _samples(evaluation, model, data, device, seed, dataset)
        elif metric == "robustness":
            result, arrays = _robustness(evaluation, model, data, device, seed)
        else:
            measure = {"nll": _test_nll, "hessian": _hessian}[metric]
            result = measure(evaluation, model, data, device, seed)
    array_file = _ARRAYS.get(metric)
    if array_file in out:
        # the arrays name their checkpoint, so the figures never parse a path
        key = {k: np.array(record[k]) for k in ("experiment", "seed", "method", "round")}
        write_npz(out[array_file], {**(arrays or {"available": np.array(False)}), **key})
    write_json(out[metric], {**result, "model_digest": record["model_digest"]}, signed=True)
    return result


def evaluate_checkpoint(exp: Experiment, *, out: dict[str, str | Path], **where: Any) -> dict:
    """Every metric of one checkpoint that applies to the experiment's model family:
    :func:`evaluate_metric` for each, with the experiment's evaluation settings and the same
    keyword arguments (``data_dir``, ``model_path``, ``record_path``, ``device``, ``seed``);
    ``out`` maps the keys of :data:`~pipeline_lib.layout.METRIC_FILES` (``nll``, ``samples``,
    ``snapshot``, ``hessian``, ``robustness``, ``boundary``) to the files to write."""
    results = {}
    for metric in FAMILIES[exp.family].metrics:
        keys = (metric, _ARRAYS[metric]) if metric in _ARRAYS else (metric,)
        results[metric] = evaluate_metric(
            metric,
            exp.evaluation,
            dataset=exp.dataset,
            out={k: out[k] for k in keys},
            **where,
        )
    return results
