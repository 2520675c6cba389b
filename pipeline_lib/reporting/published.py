"""The published numbers of the papers, kept as data in ``config/published`` with their source."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

__all__ = ["published_metric_curve", "published_nll_curve", "published_sparse_flow"]


def published_sparse_flow(published_dir: str | Path, dataset: str) -> pd.DataFrame | None:
    """Sparse Flow NLL per prune ratio for ``dataset`` (Tables S4–S10), or None if unpublished.

    Columns: ``prune_ratio``, ``params``, ``unstructured``, ``structured`` (nats for tabular,
    bits/dim for images).
    """
    for name, prefix in (("tabular_sparse_flow.csv", "nll_"), ("images_sparse_flow.csv", "bpd_")):
        path = Path(published_dir) / name
        if not path.exists():
            continue
        df = pd.read_csv(path, comment="#")
        df = df[df["dataset"] == dataset]
        if len(df):
            return df.rename(
                columns={
                    f"{prefix}unstructured": "unstructured",
                    f"{prefix}structured": "structured",
                }
            )[["prune_ratio", "params", "unstructured", "structured"]].reset_index(drop=True)
    return None


def published_nll_curve(published_dir: str | Path, dataset: str) -> pd.DataFrame:
    """The paper's Sparse Flow test NLL against the prune ratio for ``dataset``, long format
    (columns ``method``, ``prune_ratio``, ``nll``), for plotting beside ours.

    Tabular and image datasets: Tables S4–S10, both methods. Toy datasets: the NLL column of
    Tables S11–S12 (structured pruning, the unpruned flow at prune ratio 0). Empty when the
    paper has no curve for the dataset.
    """
    wide = published_sparse_flow(published_dir, dataset)
    if wide is not None:
        long = wide.melt(
            id_vars="prune_ratio",
            value_vars=["unstructured", "structured"],
            var_name="method",
            value_name="nll",
        )
        return long.dropna(subset=["nll"])[["method", "prune_ratio", "nll"]].reset_index(drop=True)
    path = Path(published_dir) / "hessian_raw.csv"
    if path.exists():
        df = pd.read_csv(path, comment="#")
        df = df[df["dataset"] == dataset]
        if len(df):
            return pd.DataFrame(
                {"method": "structured", "prune_ratio": df["prune_ratio"], "nll": df["nll"]}
            ).reset_index(drop=True)
    return pd.DataFrame(columns=["method", "prune_ratio", "nll"])


#: Our metric -> (file, row filter, column, method) of the paper's toy tables: Table 4 (good
#: samples, structured pruning) and Table 5 (Hessian metrics normalized to the unpruned flow;
#: its caption names no pruning method).
_TOY_METRICS = {
    "good_pct_2": ("good_samples.csv", {"n_std": 2}, "good_samples_pct", "structured"),
    "good_pct_3": ("good_samples.csv", {"n_std": 3}, "good_samples_pct", "structured"),
    "good_pct_5": ("good_samples.csv", {"n_std": 5}, "good_samples_pct", "structured"),
    "lambda_max_rel": ("hessian_normalized.csv", {}, "lambda_max_rel", None),
    "hessian_trace_rel": ("hessian_normalized.csv", {}, "trace_rel", None),
    "kappa_rel": ("hessian_normalized.csv", {}, "kappa_rel", None),
}


def published_metric_curve(
    published_dir: str | Path, dataset: str, metric: str
) -> tuple[pd.DataFrame, str | None]:
    """The paper's values of one evaluation metric against the prune ratio (columns
    ``prune_ratio``, ``value``) and the pruning method they were measured with (None where
    the paper does not say): Table 4 for ``good_pct_<n>``, Table 5 for the normalized Hessian
    metrics ``<metric>_rel``. Empty where the paper has none."""
    empty = pd.DataFrame(columns=["prune_ratio", "value"])
    if metric not in _TOY_METRICS:
        return empty, None
    name, where, column, method = _TOY_METRICS[metric]
    path = Path(published_dir) / name
    if not path.exists():
        return empty, method
    df = pd.read_csv(path, comment="#")
    keep = df["dataset"] == dataset
    for key, value in where.items():
        keep &= df[key] == value
    df = df[keep]
    curve = pd.DataFrame({"prune_ratio": df["prune_ratio"], "value": df[column]})
    return curve.reset_index(drop=True), method
