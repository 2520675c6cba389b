"""The results contract: one row per (experiment, dataset, method, seed, round).

Rows come from each round's ``round.json`` and ``metrics/nll.json``, with the columns of the
other metrics where they were evaluated (Hessian, good samples, a classifier's robustness).
``family`` says what ``test_nll`` is: a flow's NLL of the data, a classifier's
cross-entropy (the NLL of the labels; ``test_accuracy`` beside it), or an image flow's NLL of
the 8-bit images (``test_bits_per_dim`` beside it, the unit of the paper's image tables). The dense warm start
(round 0) is shared by both pruning methods and appears once under each, so that every
method's curve starts at prune ratio 0. Rounds skipped after an early stop carry no row.

A row is built only from files that check out: every record and metrics file must match its
digest (:mod:`pipeline_lib.io`), a record must have the fields and ranges of
:func:`check_record`, and the metrics must name the checkpoint of their record. Anything else
stops the aggregation with an error naming the file and the fix, so no row is silently wrong
or dropped. ``diverged`` is recomputed from the record with the experiment's current
threshold (:func:`~pipeline_lib.records.has_diverged`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from pipeline_lib.io import (
    UnreadableFileError,
    metrics_fix,
    read_json,
    read_parquet,
    round_fix,
    write_parquet,
)
from pipeline_lib.records import has_diverged

__all__ = [
    "SUMMARY_COLUMNS",
    "aggregate_experiment",
    "concat_summaries",
    "nll_column",
    "check_record",
    "prune_ratio_axis",
    "with_relative_metrics",
]

SUMMARY_COLUMNS = [
    "experiment",
    "dataset",
    "method",
    "seed",
    "round",
    "prune_ratio",
    "prune_ratio_nominal",
    "prune_ratio_params",
    "params_total",
    "params_nonzero",
    "val_nll",
    "test_nll",
    "test_nll_stderr",
    "nll_unit",
    "family",
    "test_accuracy",
    "test_bits_per_dim",
    "nfe_forward",
    "train_seconds",
    "config_hash",
    "stopped",
    "diverged",
]

#: Optional metric columns: (file in metrics/, key there, column).
METRIC_COLUMNS = [
    ("hessian.json", "lambda_max", "lambda_max"),
    ("hessian.json", "trace", "hessian_trace"),
    ("hessian.json", "kappa", "kappa"),
    ("hessian.json", "lambda_min_positive", "lambda_min_positive"),
    ("hessian.json", "kappa_rtol", "kappa_rtol"),
    ("hessian.json", "nll", "hessian_nll"),
    ("hessian.json", "train_nll", "train_nll"),
    ("hessian.json", "lambda_max_power", "lambda_max_power"),
    ("hessian.json", "trace_hutchinson", "trace_hutchinson"),
    ("samples.json", "modes_captured", "modes_captured"),
    ("robustness.json", "boundary_distance_mean", "boundary_distance_mean"),
    ("robustness.json", "boundary_distance_p5", "boundary_distance_p5"),
]

#: The metrics files beside ``nll.json`` whose columns a row carries where they exist.
_OPTIONAL_METRICS = ("hessian.json", "samples.json", "robustness.json")


#: Fields of a round record and the type each must have.
RECORD_FIELDS: dict[str, type | tuple[type, ...]] = {
    "experiment": str,
    "dataset": str,
    "method": str,
    "seed": int,
    "round": int,
    "rounds_total": int,
    "config_hash": str,
    "model_digest": str,
    "skipped": bool,
}

#: Fields of a trained (not skipped) round record.
TRAINED_FIELDS: dict[str, type | tuple[type, ...]] = {
    "keep": (int, float),
    "prune_ratio": (int, float),
    "params_total": int,
    "params_nonzero": int,
    "val_nll": (int, float),
    "stopped": bool,
}


def check_record(rec: dict, path: str | Path) -> None:
    """Check a round record's fields, types and ranges; raise :class:`UnreadableFileError`
    naming the first problem."""
    path = Path(path)
    fields = {**RECORD_FIELDS, **({} if rec.get("skipped") else TRAINED_FIELDS)}
    for key, kind in fields.items():
        if key not in rec:
            raise UnreadableFileError(path, f"has no field {key!r}", round_fix(path))
        if not isinstance(rec[key], kind) or (kind is int and isinstance(rec[key], bool)):
            raise UnreadableFileError(
                path, f"has {key}={rec[key]!r} of the wrong type", round_fix(path)
            )
    if rec["skipped"]:
        return
    total, nonzero = rec["params_total"], rec["params_nonzero"]
    if not 0 <= nonzero <= total or total <= 0:
        raise UnreadableFileError(
            path, f"has params_nonzero={nonzero} of params_total={total}", round_fix(path)
        )
    # prune_ratio counts prunable weights: 1 where the budget leaves none (the floor)
    if not (0 <= rec["prune_ratio"] <= 1 and 0 < rec["keep"] <= 1):
        raise UnreadableFileError(
            path,
            f"has prune_ratio={rec['prune_ratio']} / keep={rec['keep']} out of range",
            round_fix(path),
        )


def _read_metrics(path: Path, record: dict, required: bool) -> dict:
    fix = metrics_fix(path)
    if not required and not path.exists():
        return {}
    metrics = read_json(path, signed=True, fix=fix)
    if metrics.get("model_digest") != record["model_digest"]:
        raise UnreadableFileError(path, "measured another checkpoint than its round.json's", fix)
    return metrics


def aggregate_experiment(
    files: Sequence[str | Path], out: str | Path, divergence_nats: float | None = 2.0
) -> pd.DataFrame:
    """Join round records with their test NLL; ``files`` holds both kinds of JSON. Every
    file is verified (module docstring); ``diverged`` uses ``divergence_nats``."""
    records = [Path(f) for f in files if Path(f).name == "round.json"]
    rows = []
    for rec_path in records:
        rec = read_json(rec_path, signed=True, fix=round_fix(rec_path))
        check_record(rec, rec_path)
        if rec.get("skipped"):
            continue
        metrics = rec_path.parent / "metrics"
        nll = _read_metrics(metrics / "nll.json", rec, required=True)
        row = {
            **{k: rec.get(k) for k in SUMMARY_COLUMNS},
            "test_nll": nll["test_nll"],
            "test_nll_stderr": nll.get("test_nll_stderr"),
            "nll_unit": nll.get("nll_unit", "nats"),
            "family": nll.get("family", "ffjord"),
            "test_accuracy": nll.get("test_accuracy", math.nan),
            "test_bits_per_dim": nll.get("test_bits_per_dim", math.nan),
            "stopped": bool(rec.get("stopped", False)),
            "diverged": has_diverged(
                rec["val_nll"], rec.get("val_nll_reference", math.nan), divergence_nats
            ),
        }
        extra = {
            name: _read_metrics(metrics / name, rec, required=False) for name in _OPTIONAL_METRICS
        }
        for name, key, column in METRIC_COLUMNS:
            row[column] = extra[name].get(key, math.nan)
        for n, pct in (extra["samples.json"].get("good_pct") or {}).items():
            row[f"good_pct_{n}"] = pct
        for sigma, acc in (extra["robustness.json"].get("noise_accuracy") or {}).items():
            row[f"noise_accuracy_{sigma}"] = acc
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        df = pd.DataFrame(columns=SUMMARY_COLUMNS)
    methods = sorted(set(df["method"]) - {"dense"}) or ["dense"]
    dense = df[df["method"] == "dense"]
    df = pd.concat(
        [df[df["method"] != "dense"], *[dense.assign(method=m) for m in methods]],
        ignore_index=True,
    )
    df = df.sort_values(["experiment", "method", "seed", "round"]).reset_index(drop=True)
    write_parquet(df, out)
    return df


def concat_summaries(files: Sequence[str | Path], out: str | Path) -> pd.DataFrame:
    """Stack the per-experiment summaries into ``results/summary.parquet``."""
    df = pd.concat([read_parquet(f) for f in files], ignore_index=True)
    write_parquet(df, out)
    return df


def nll_column(df: pd.DataFrame) -> tuple[str, str]:
    """The summary column and unit in which the paper reports these rows' NLL: bits/dim for
    image flows (Table 3, S9–S10), nats otherwise."""
    if "family" in df and (df["family"] == "multiscale").any():
        return "test_bits_per_dim", "bits/dim"
    return "test_nll", "nats"


def prune_ratio_axis(df: pd.DataFrame, kind: str) -> pd.Series:
    """The prune ratio a table or figure puts on its axis: ``nominal`` (1 − keep, the paper's
    tables) or ``measured`` (1 − nonzero / total over all parameters, the paper's Fig. 4);
    rows written before these columns existed give ``prune_ratio`` for both."""
    column = {"nominal": "prune_ratio_nominal", "measured": "prune_ratio_params"}[kind]
    if column not in df:
        return df["prune_ratio"]
    return df[column].fillna(df["prune_ratio"])  # row by row: older records lack the column


def with_relative_metrics(df: pd.DataFrame, metrics=("lambda_max", "hessian_trace", "kappa")):
    """Add ``<metric>_rel``: the metric divided by the unpruned flow's (round 0) of the same
    experiment, seed and method — Table 5's normalization."""
    df = df.copy()
    keys = ["experiment", "seed", "method"]
    for m in metrics:
        if m not in df:
            continue
        dense = df[df["round"] == 0].set_index(keys)[m]
        ref = df.set_index(keys).index.map(lambda k, dense=dense: dense.get(k, float("nan")))
        df[f"{m}_rel"] = df[m].to_numpy() / ref.to_numpy(dtype=float)
    return df
