"""The results contract: one row per (experiment, dataset, method, seed, round).

Rows come from each round's ``round.json`` and ``metrics/nll.json``. The dense warm start
(round 0) is shared by both pruning methods and appears once under each, so that every
method's curve starts at prune ratio 0. Rounds skipped after an early stop carry no row.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from pipeline_lib.stages import read_json

__all__ = [
    "SUMMARY_COLUMNS",
    "aggregate_experiment",
    "concat_summaries",
    "with_relative_metrics",
    "write_parquet",
]

SUMMARY_COLUMNS = [
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
    "test_nll_stderr",
    "nll_unit",
    "nfe_forward",
    "train_seconds",
    "config_hash",
    "stopped",
]

#: Optional metric columns: (file in metrics/, key there, column).
METRIC_COLUMNS = [
    ("hessian.json", "lambda_max", "lambda_max"),
    ("hessian.json", "trace", "hessian_trace"),
    ("hessian.json", "kappa", "kappa"),
    ("hessian.json", "lambda_min_positive", "lambda_min_positive"),
    ("hessian.json", "nll", "hessian_nll"),
    ("samples.json", "modes_captured", "modes_captured"),
]


def write_parquet(df: pd.DataFrame, path: str | Path) -> None:
    """Write a DataFrame to parquet atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        df.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def aggregate_experiment(files: Sequence[str | Path], out: str | Path) -> pd.DataFrame:
    """Join round records with their test NLL; ``files`` holds both kinds of JSON."""
    records = [Path(f) for f in files if Path(f).name == "round.json"]
    rows = []
    for rec_path in records:
        rec = read_json(rec_path)
        if rec.get("skipped"):
            continue
        metrics = rec_path.parent / "metrics"
        nll = read_json(metrics / "nll.json")
        row = {
            **{k: rec.get(k) for k in SUMMARY_COLUMNS},
            "test_nll": nll["test_nll"],
            "test_nll_stderr": nll.get("test_nll_stderr"),
            "nll_unit": nll.get("nll_unit", "nats"),
            "stopped": bool(rec.get("stopped", False)),
        }
        extra = {name: _read_optional(metrics / name) for name in ("hessian.json", "samples.json")}
        for name, key, column in METRIC_COLUMNS:
            row[column] = extra[name].get(key, math.nan)
        for n, pct in (extra["samples.json"].get("good_pct") or {}).items():
            row[f"good_pct_{n}"] = pct
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


def _read_optional(path: Path) -> dict:
    return read_json(path) if path.exists() else {}


def concat_summaries(files: Sequence[str | Path], out: str | Path) -> pd.DataFrame:
    """Stack the per-experiment summaries into ``results/summary.parquet``."""
    df = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    write_parquet(df, out)
    return df


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
