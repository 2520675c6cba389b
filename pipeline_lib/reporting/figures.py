"""Figures from ``summary.parquet`` (seaborn / matplotlib, PNG and PDF, one style).

:func:`plot_nll_vs_prune_ratio` is Sparse Flows Figs. 2, 4, 7 and 8: test NLL against the
overall prune ratio, unstructured vs structured, mean ± std over seeds, the dense flow as a
dashed reference line, one panel per experiment.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

__all__ = ["METHOD_COLORS", "plot_nll_vs_prune_ratio", "style"]

METHOD_COLORS = {"unstructured": "#1f77b4", "structured": "#d62728"}


def style() -> None:
    """The project's plot style."""
    sns.set_theme(context="paper", style="whitegrid", font_scale=1.1)


def _save(fig, png: str | Path, pdf: str | Path | None) -> None:
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=150, bbox_inches="tight")
    if pdf is not None:
        fig.savefig(pdf, bbox_inches="tight")
    plt.close(fig)


def plot_nll_vs_prune_ratio(
    summary_path: str | Path, png: str | Path, pdf: str | Path | None = None
):
    """Test NLL vs prune ratio per experiment, mean ± std over seeds."""
    style()
    df = pd.read_parquet(summary_path)
    experiments = sorted(df["experiment"].unique())
    ncols = min(3, len(experiments))
    nrows = math.ceil(len(experiments) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
    for ax, exp in zip(axes.flat, experiments, strict=False):
        sub = df[df["experiment"] == exp]
        dense = sub[sub["round"] == 0]["test_nll"].mean()
        for method, g in sub.groupby("method"):
            agg = g.groupby("round").agg(
                pr=("prune_ratio", "mean"), mean=("test_nll", "mean"), std=("test_nll", "std")
            )
            color = METHOD_COLORS.get(method)
            ax.plot(100 * agg["pr"], agg["mean"], "o-", ms=3, color=color, label=method)
            ax.fill_between(
                100 * agg["pr"],
                agg["mean"] - agg["std"].fillna(0),
                agg["mean"] + agg["std"].fillna(0),
                color=color,
                alpha=0.2,
            )
        ax.axhline(dense, color="0.3", ls="--", lw=1, label="dense")
        seeds = sub["seed"].nunique()
        ax.set_title(f"{exp} ({sub['dataset'].iloc[0]}, {seeds} seed{'s' if seeds > 1 else ''})")
        ax.set_xlabel("prune ratio (%)")
        ax.set_ylabel(f"test NLL ({sub['nll_unit'].iloc[0]})")
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(experiments) :]:
        ax.set_visible(False)
    fig.tight_layout()
    _save(fig, png, pdf)
    return fig
