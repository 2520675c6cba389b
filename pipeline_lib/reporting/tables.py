"""Paper tables from ``summary.parquet`` (Markdown, LaTeX and CSV, made by pandas).

:func:`write_classifier_table` is §4.6's numbers as a table: accuracy, cross-entropy,
robustness and parameters of neural-ODE classifiers per prune ratio.

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

from pipeline_lib.io import read_parquet
from pipeline_lib.reporting.published import published_metric_curve, published_nll_curve
from pipeline_lib.reporting.summary import nll_column, prune_ratio_axis, with_relative_metrics

__all__ = [
    "classifier_table",
    "good_samples_table",
    "hessian_table",
    "mean_std",
    "nll_table",
    "write_classifier_table",
    "write_good_samples_table",
    "write_hessian_table",
    "write_nll_table",
]

#: A published row matches ours when the prune ratios differ by less than this.
PRUNE_RATIO_MATCH = 0.015

#: Tables 4 and S11–S12 report structured pruning only: their values stand beside our
#: structured rows, not the unstructured ones.
PUBLISHED_TOY_METHOD = "structured"


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
    """One row per prune round of ``dataset``, both methods side by side (Tables S4–S10); the
    NLL in nats, or in bits/dim for image flows (:func:`nll_column`)."""
    df = summary[summary["dataset"] == dataset]
    if "family" in df:  # a classifier's NLL is its cross-entropy: the classifier table has it
        df = df[df["family"].fillna("ffjord") != "classifier"]
    if df.empty:
        raise ValueError(f"no flow results for dataset {dataset!r} in the summary")
    column, _ = nll_column(df)
    df = df.assign(test_nll=df[column])
    # the paper's tables are on the nominal prune ratio; the measured one is shown beside it
    df = df.assign(
        pr_axis=prune_ratio_axis(df, "nominal"), pr_measured=prune_ratio_axis(df, "measured")
    )
    published = published_nll_curve(published_dir, dataset) if published_dir else None
    rows = []
    for (experiment, rnd), g in df.groupby(["experiment", "round"], sort=True):
        # One prune ratio per row, as in Tables S4–S10 (the methods' achieved ratios differ by
        # a fraction of a percent: structured pruning removes whole neurons).
        row = {"experiment": experiment, "round": int(rnd), "prune_ratio": g["pr_axis"].mean()}
        for method in ("unstructured", "structured"):
            m = g[g["method"] == method]
            row[f"prune_ratio_{method}"] = m["pr_axis"].mean() if len(m) else math.nan
            row[f"measured_{method}"] = m["pr_measured"].mean() if len(m) else math.nan
            row[f"params_{method}"] = m["params_nonzero"].mean() if len(m) else math.nan
            row[f"nll_{method}"] = mean_std(m["test_nll"])
            row[f"nll_{method}_mean"] = m["test_nll"].mean() if len(m) else math.nan
            row[f"seeds_{method}"] = int(m["seed"].nunique())
        rows.append(row)
    out = pd.DataFrame(rows)
    for method in ("unstructured", "structured"):
        paper = None if published is None else published[published["method"] == method]
        paper = None if paper is None else paper.reset_index(drop=True)
        out[f"paper_{method}"] = [
            _nearest_published(paper, pr, "nll") for pr in out[f"prune_ratio_{method}"]
        ]
        out[f"diff_{method}"] = out[f"nll_{method}_mean"] - out[f"paper_{method}"]
    return out


def _display(table: pd.DataFrame) -> pd.DataFrame:
    """Human-readable columns for Markdown / LaTeX."""
    cols = {
        "experiment": "experiment",
        "round": "round",
        "prune_ratio": "prune ratio",
        "measured_unstructured": "measured PR (unstr.)",
        "params_unstructured": "#params (unstr.)",
        "nll_unstructured": "NLL unstructured",
        "paper_unstructured": "paper (unstr.)",
        "diff_unstructured": "Δ (unstr.)",
        "measured_structured": "measured PR (str.)",
        "params_structured": "#params (str.)",
        "nll_structured": "NLL structured",
        "paper_structured": "paper (str.)",
        "diff_structured": "Δ (str.)",
        "seeds_unstructured": "seeds (unstr.)",
        "seeds_structured": "seeds (str.)",
    }
    # A method without results (a run of one method) gets no columns.
    absent = [
        m
        for m in ("unstructured", "structured")
        if table.get(f"seeds_{m}", pd.Series([0])).max() == 0
    ]
    keep = [c for c in cols if c in table.columns and not any(c.endswith(f"_{m}") for m in absent)]
    shown = table[keep].rename(columns=cols).copy()
    for c in shown.columns:
        if c == "prune ratio" or c.startswith("measured PR"):
            shown[c] = shown[c].map(lambda v: "—" if pd.isna(v) else f"{100 * v:.0f}%")
    for c in shown.columns:
        if c.startswith("#params"):
            fmt = "{:,.0f}"
        elif c.startswith("Δ"):
            fmt = "{:+.3f}"
        elif c.startswith("paper"):
            fmt = "{:g}"  # as published
        else:
            continue
        shown[c] = shown[c].map(lambda v, fmt=fmt: "—" if pd.isna(v) else fmt.format(v))
    return shown


def _write(table: pd.DataFrame, shown: pd.DataFrame, title: str, note: str, md, csv, tex) -> None:
    """Markdown (display), CSV (full precision) and LaTeX (display) of one table."""
    Path(md).parent.mkdir(parents=True, exist_ok=True)
    Path(md).write_text(
        f"# {title}\n\n{note}\n\n" + shown.to_markdown(index=False, disable_numparse=True) + "\n"
    )
    table.to_csv(csv, index=False)
    Path(tex).write_text(shown.to_latex(index=False, escape=True))


def write_nll_table(
    summary_path: str | Path,
    dataset: str,
    published_dir: str | Path | None,
    md: str | Path,
    csv: str | Path,
    tex: str | Path,
) -> pd.DataFrame:
    """Write the NLL table of ``dataset`` as Markdown, CSV (full precision) and LaTeX."""
    summary = read_parquet(summary_path)
    table = nll_table(summary, dataset, published_dir)
    _, unit = nll_column(summary[summary["dataset"] == dataset])
    _write(
        table,
        _display(table),
        f"{dataset}: test NLL ({unit}) per prune ratio",
        "Mean ± std over seeds. `paper`: the published Sparse Flow value at the same prune ratio "
        "(Tables S4–S10; for toy data the structured NLL of Tables S11–S12), `Δ` = ours − paper.",
        md,
        csv,
        tex,
    )
    return table


def _nearest_published(pub: pd.DataFrame, pr: float, column: str) -> float:
    if pub is None or pub.empty or np.isnan(pr):
        return math.nan
    i = (pub["prune_ratio"] - pr).abs().idxmin()
    return (
        pub.loc[i, column] if abs(pub.loc[i, "prune_ratio"] - pr) < PRUNE_RATIO_MATCH else math.nan
    )


def _per_round(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Mean, std and seed count per (experiment, dataset, method, round)."""
    keys = ["experiment", "dataset", "method", "round"]
    g = df.assign(pr_axis=prune_ratio_axis(df, "nominal")).groupby(keys)
    out = g["pr_axis"].mean().to_frame("prune_ratio")  # nominal, as the paper's tables
    out["seeds"] = g["seed"].nunique()
    for c in columns:
        out[f"{c}_mean"] = g[c].mean()
        out[f"{c}_std"] = g[c].std()
    return out.reset_index()


def good_samples_table(summary: pd.DataFrame, published_dir: str | Path | None) -> pd.DataFrame:
    """Table 4: % good-quality samples within n std of the nearest mode, per prune round,
    beside the published values (structured pruning) at the same prune ratio."""
    cols = sorted(c for c in summary.columns if c.startswith("good_pct_"))
    df = summary.dropna(subset=cols, how="all") if cols else summary.iloc[0:0]
    out = _per_round(df, cols)
    for c in cols:
        curves = {}  # one read of Table 4 per dataset and n
        papers = []
        for row in out.itertuples():
            if published_dir and row.dataset not in curves:
                curves[row.dataset] = published_metric_curve(published_dir, row.dataset, c)
            curve, method = curves.get(row.dataset, (None, None))
            papers.append(
                _nearest_published(curve, row.prune_ratio, "value")
                if row.method == method
                else math.nan
            )
        out[f"paper_{c}"] = papers
    return out


def _hessian_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary rows that have a Hessian evaluation (none in a summary without one)."""
    return summary.dropna(subset=["lambda_max"]) if "lambda_max" in summary else summary.iloc[0:0]


def hessian_table(summary: pd.DataFrame, published_dir: str | Path | None) -> pd.DataFrame:
    """Table 5 / S11–S12: NLL, λ_max, trace and κ per prune round, raw and normalized to the
    unpruned flow, beside the published raw values (structured pruning)."""
    hessian = ["lambda_max", "hessian_trace", "kappa"]
    cols = ["train_nll", "test_nll", *hessian, "lambda_max_power", "trace_hutchinson"]
    df = _hessian_rows(summary)
    df = df.assign(**{c: math.nan for c in cols if c not in df})  # older summaries lack some
    rel = [f"{c}_rel" for c in hessian]
    out = _per_round(with_relative_metrics(df, hessian), cols + rel)
    for c in rel:
        out[c] = out[f"{c}_mean"]
    pub = None
    if published_dir and (Path(published_dir) / "hessian_raw.csv").exists():
        pub = pd.read_csv(Path(published_dir) / "hessian_raw.csv", comment="#")
    for ours, theirs in (
        ("train_nll", "nll"),
        ("lambda_max", "lambda_max"),
        ("hessian_trace", "trace"),
        ("kappa", "kappa"),
    ):
        out[f"paper_{ours}"] = [
            _nearest_published(
                None
                if pub is None or row.method != PUBLISHED_TOY_METHOD
                else pub[pub["dataset"] == row.dataset].reset_index(drop=True),
                row.prune_ratio,
                theirs,
            )
            for row in out.itertuples()
        ]
    return out


def _pm(mean: pd.Series, std: pd.Series, fmt: str) -> pd.Series:
    return pd.Series(
        [
            "—" if pd.isna(m) else fmt.format(m) + ("" if pd.isna(s) else " ± " + fmt.format(s))
            for m, s in zip(mean, std, strict=True)
        ],
        index=mean.index,
    )


def write_good_samples_table(summary_path, published_dir, md, csv, tex) -> pd.DataFrame:
    """Write Table 4 (good-quality samples) as Markdown, CSV and LaTeX."""
    table = good_samples_table(read_parquet(summary_path), published_dir)
    shown = table[["experiment", "method", "round", "seeds"]].copy()
    shown.insert(3, "prune ratio", table["prune_ratio"].map(lambda v: f"{100 * v:.0f}%"))
    for c in sorted(c for c in table.columns if c.startswith("good_pct_") and c.endswith("_mean")):
        n = c.removeprefix("good_pct_").removesuffix("_mean")
        shown[f"good % (n={n})"] = _pm(table[c], table[f"good_pct_{n}_std"], "{:.1f}")
        shown[f"paper (n={n})"] = table[f"paper_good_pct_{n}"].map(
            lambda v: "—" if pd.isna(v) else f"{v:.1f}"
        )
    _write(
        table,
        shown,
        "Good-quality samples per prune ratio (Table 4)",
        "% of 20,000 samples within n standard deviations (Mahalanobis) of their nearest mode, "
        "mean ± std over seeds. `paper`: Table 4 (structured pruning) at the same prune ratio, "
        "beside our structured rows.",
        md,
        csv,
        tex,
    )
    return table


def kappa_threshold_note(summary: pd.DataFrame) -> str:
    """Which Ritz values κ counted as positive: the thresholds relative to max |θ|
    (``kappa_rtol``, :func:`pipeline_lib.evaluation.hessian.rounding_rtol` by default) of the
    rows with a Hessian, with a warning where rows mix thresholds. Rows evaluated before the
    threshold was recorded used the former default, 10⁻⁸."""
    rows = _hessian_rows(summary)
    if rows.empty:
        return "above the threshold"
    rtol = rows["kappa_rtol"] if "kappa_rtol" in rows else pd.Series(math.nan, index=rows.index)
    recorded = sorted(rtol.dropna().unique())
    shown = [
        f"{v:.3g} × max |Ritz value|" if v > 0 else "0 (the released definition)" for v in recorded
    ]
    missing = int(rtol.isna().sum())
    if missing:
        shown.append(
            f"10⁻⁸ × max |Ritz value| (the former default; {missing} of {len(rows)} "
            "rows, evaluated before the threshold was recorded)"
        )
    note = "above " + " or ".join(shown)
    if len(shown) > 1:
        note += "; the rows mix thresholds, so their κ do not compare"
    return note


def write_hessian_table(summary_path, published_dir, md, csv, tex) -> pd.DataFrame:
    """Write Table 5 / S11–S12 (Hessian eigen-analysis) as Markdown, CSV and LaTeX."""
    summary = read_parquet(summary_path)
    table = hessian_table(summary, published_dir)
    shown = table[["experiment", "method", "round", "seeds"]].copy()
    shown.insert(3, "prune ratio", table["prune_ratio"].map(lambda v: f"{100 * v:.0f}%"))
    shown["train NLL"] = _pm(table["train_nll_mean"], table["train_nll_std"], "{:.3f}")
    shown["paper NLL"] = table["paper_train_nll"].map(lambda v: "—" if pd.isna(v) else f"{v:.3f}")
    shown["test NLL"] = _pm(table["test_nll_mean"], table["test_nll_std"], "{:.3f}")
    for c, label in (("lambda_max", "λ_max"), ("hessian_trace", "trace"), ("kappa", "κ")):
        shown[label] = _pm(table[f"{c}_mean"], table[f"{c}_std"], "{:.4g}")
        shown[f"{label} rel."] = table[f"{c}_rel"].map(lambda v: "—" if pd.isna(v) else f"{v:.3f}")
        shown[f"paper {label}"] = table[f"paper_{c}"].map(
            lambda v: "—" if pd.isna(v) else f"{v:.4g}"
        )
    shown["λ_max (power)"] = _pm(
        table["lambda_max_power_mean"], table["lambda_max_power_std"], "{:.4g}"
    )
    shown["tr H (Hutchinson)"] = _pm(
        table["trace_hutchinson_mean"], table["trace_hutchinson_std"], "{:.4g}"
    )
    _write(
        table,
        shown,
        "Hessian eigen-analysis per prune ratio (Table 5, S11–S12)",
        "Hessian of the NLL on 10 % of the training split w.r.t. the unpruned parameters, "
        "with the released definitions (SLQ, 3 runs of 100 Lanczos steps): λ_max = largest "
        "Ritz value, trace = sum of the positive Ritz values, κ = λ_max / smallest positive "
        f"Ritz value (positive: {kappa_threshold_note(summary)}), arithmetic mean ± std "
        "over seeds (the figure's κ is the geometric mean); `rel.` = normalized to the "
        "unpruned flow of the same seed, then averaged over seeds (Table 5). Extra columns: "
        "λ_max by power iteration and tr H by Hutchinson. "
        "train NLL: the whole training split (Table S11's NLL column), mean ± std over seeds; "
        "for a classifier the NLL is its cross-entropy. "
        "`paper`: Tables S11–S12 (structured pruning) at the same nominal prune ratio, beside "
        "our structured rows.",
        md,
        csv,
        tex,
    )
    return table


#: The classifier table's columns: (summary column, label, format).
_CLASSIFIER_COLUMNS = (
    ("test_accuracy", "accuracy", "{:.3f}"),
    ("test_nll", "cross-entropy", "{:.3f}"),
    ("boundary_distance_mean", "boundary dist. mean", "{:.3f}"),
    ("boundary_distance_p5", "boundary dist. p5", "{:.3f}"),
)


def classifier_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Neural-ODE classifiers (§4.6) per prune round: test accuracy, test cross-entropy,
    distance to the decision boundary (mean, 5th percentile), accuracy under input noise per
    σ and nonzero parameters, mean and std over seeds."""
    if "family" not in summary:
        raise ValueError("the summary has no classifier rows (no 'family' column)")
    df = summary[summary["family"] == "classifier"]
    if df.empty:
        raise ValueError("the summary has no classifier rows")
    noisy = sorted(c for c in df.columns if c.startswith("noise_accuracy_"))
    cols = [c for c, _, _ in _CLASSIFIER_COLUMNS] + noisy + ["params_nonzero"]
    df = df.assign(pr_measured=prune_ratio_axis(df, "measured"))
    out = _per_round(df, [*cols, "pr_measured"])
    return out.drop(columns=["pr_measured_std"]).rename(
        columns={"pr_measured_mean": "prune_ratio_measured"}
    )


def write_classifier_table(summary_path, md, csv, tex) -> pd.DataFrame:
    """Write the classifier table (§4.6) as Markdown, CSV and LaTeX."""
    table = classifier_table(read_parquet(summary_path))
    shown = table[["experiment", "method", "round", "seeds"]].copy()
    shown.insert(3, "prune ratio", table["prune_ratio"].map(lambda v: f"{100 * v:.0f}%"))
    shown.insert(4, "measured PR", table["prune_ratio_measured"].map(lambda v: f"{100 * v:.1f}%"))
    shown["#params"] = table["params_nonzero_mean"].map(lambda v: f"{v:,.0f}")
    for c, label, fmt in _CLASSIFIER_COLUMNS:
        shown[label] = _pm(table[f"{c}_mean"], table[f"{c}_std"], fmt)
    for c in sorted(c for c in table.columns if c.startswith("noise_accuracy_")):
        if c.endswith("_mean"):
            sigma = c.removeprefix("noise_accuracy_").removesuffix("_mean")
            shown[f"acc. σ={sigma}"] = _pm(table[c], table[c.replace("_mean", "_std")], "{:.3f}")
    _write(
        table,
        shown,
        "Neural-ODE classifiers per prune ratio (§4.6)",
        "Test accuracy, test cross-entropy (nats), distance of the test points to the decision "
        "boundary (bisection along the segment to the nearest grid point of another predicted "
        "class; mean and 5th percentile) and accuracy under Gaussian input noise N(0, σ²I), "
        "mean ± std over seeds; #params: nonzero parameters. `prune ratio` is nominal "
        "(1 − keep), `measured PR` counts all parameters.",
        md,
        csv,
        tex,
    )
    return table
