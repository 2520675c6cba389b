"""Paper tables from ``summary.parquet`` (Markdown, LaTeX and CSV, made by pandas).

:func:`write_nll_table` gives the layout of Tables S4–S10: prune ratio, number of nonzero
parameters and test NLL for unstructured and structured pruning, mean ± std over seeds with
the number of seeds, and — where the paper has a number at that prune ratio — the published
value and our difference to it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline_lib.reporting.published import published_sparse_flow

__all__ = ["mean_std", "nll_table", "write_nll_table"]

#: A published row matches ours when the prune ratios differ by less than this.
PRUNE_RATIO_MATCH = 0.015


def mean_std(values: pd.Series, digits: int = 3) -> str:
    """``mean ± std`` (sample std; just the mean for one value)."""
    v = values.dropna()
    if v.empty:
        return "—"
    if len(v) == 1:
        return f"{v.iloc[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def nll_table(
    summary: pd.DataFrame, dataset: str, published_dir: str | Path | None = None
) -> pd.DataFrame:
    """One row per prune round of ``dataset``, both methods side by side (Tables S4–S10)."""
    df = summary[summary["dataset"] == dataset]
    if df.empty:
        raise ValueError(f"no results for dataset {dataset!r} in the summary")
    published = published_sparse_flow(published_dir, dataset) if published_dir else None
    rows = []
    for (experiment, rnd), g in df.groupby(["experiment", "round"], sort=True):
        row = {"experiment": experiment, "round": int(rnd)}
        for method in ("unstructured", "structured"):
            m = g[g["method"] == method]
            row[f"prune_ratio_{method}"] = m["prune_ratio"].mean() if len(m) else math.nan
            row[f"params_{method}"] = m["params_nonzero"].mean() if len(m) else math.nan
            row[f"nll_{method}"] = mean_std(m["test_nll"])
            row[f"nll_{method}_mean"] = m["test_nll"].mean() if len(m) else math.nan
            row[f"seeds_{method}"] = int(m["seed"].nunique())
        rows.append(row)
    out = pd.DataFrame(rows)
    if published is not None:
        for method in ("unstructured", "structured"):
            ours = out[f"prune_ratio_{method}"]
            pub = []
            for pr in ours:
                if np.isnan(pr) or published.empty:
                    pub.append(math.nan)
                    continue
                i = (published["prune_ratio"] - pr).abs().idxmin()
                close = abs(published.loc[i, "prune_ratio"] - pr) < PRUNE_RATIO_MATCH
                pub.append(published.loc[i, method] if close else math.nan)
            out[f"paper_{method}"] = pub
            out[f"diff_{method}"] = out[f"nll_{method}_mean"] - out[f"paper_{method}"]
    return out


def _display(table: pd.DataFrame) -> pd.DataFrame:
    """Human-readable columns for Markdown / LaTeX."""
    cols = {
        "experiment": "experiment",
        "round": "round",
        "prune_ratio_unstructured": "prune ratio",
        "params_unstructured": "#params (unstr.)",
        "nll_unstructured": "NLL unstructured",
        "paper_unstructured": "paper (unstr.)",
        "diff_unstructured": "Δ (unstr.)",
        "params_structured": "#params (str.)",
        "nll_structured": "NLL structured",
        "paper_structured": "paper (str.)",
        "diff_structured": "Δ (str.)",
        "seeds_unstructured": "seeds",
    }
    shown = table[[c for c in cols if c in table.columns]].rename(columns=cols).copy()
    if "prune ratio" in shown:
        shown["prune ratio"] = shown["prune ratio"].map(lambda v: f"{100 * v:.0f}%")
    for c in shown.columns:
        if c.startswith("#params"):
            fmt = "{:,.0f}"
        elif c.startswith("Δ"):
            fmt = "{:+.2f}"
        elif c.startswith("paper"):
            fmt = "{:.2f}"
        else:
            continue
        shown[c] = shown[c].map(lambda v, fmt=fmt: "—" if pd.isna(v) else fmt.format(v))
    return shown


def write_nll_table(
    summary_path: str | Path,
    dataset: str,
    published_dir: str | Path | None,
    md: str | Path,
    csv: str | Path,
    tex: str | Path,
) -> pd.DataFrame:
    """Write the NLL table of ``dataset`` as Markdown, CSV (full precision) and LaTeX."""
    table = nll_table(pd.read_parquet(summary_path), dataset, published_dir)
    shown = _display(table)
    unit = "nats"
    Path(md).parent.mkdir(parents=True, exist_ok=True)
    Path(md).write_text(
        f"# {dataset}: test NLL ({unit}) per prune ratio\n\n"
        "Mean ± std over seeds. `paper`: the published Sparse Flow value at the same prune ratio "
        "(Tables S4–S10), `Δ` = ours − paper.\n\n" + shown.to_markdown(index=False) + "\n"
    )
    table.to_csv(csv, index=False)
    Path(tex).write_text(shown.to_latex(index=False, escape=True))
    return table
