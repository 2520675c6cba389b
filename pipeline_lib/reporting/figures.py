"""Figures from ``summary.parquet`` (seaborn / matplotlib, PNG and PDF, one style).

:func:`plot_nll_vs_prune_ratio` is Sparse Flows Figs. 2, 4, 7 and 8: test NLL against the
overall prune ratio, unstructured vs structured, mean ± std over seeds, the dense flow as a
dashed reference line, the published Sparse Flow values as open markers, one panel per
experiment. :func:`plot_decision_boundaries` is Fig. 9 (§4.6): per prune ratio, a
classifier's decision boundary, its state space and trajectories through depth.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from pipeline_lib.io import read_parquet  # noqa: E402

__all__ = [
    "METHOD_COLORS",
    "plot_decision_boundaries",
    "plot_density_grid",
    "plot_metrics_vs_prune_ratio",
    "plot_nll_vs_prune_ratio",
    "plot_sample_grids",
    "plot_vector_fields",
    "style",
]

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


def _method_curves(
    ax, sub: pd.DataFrame, column: str, axis: str = "nominal", log: bool = False
) -> None:
    """One line per pruning method: mean of ``column`` per round against the mean prune ratio
    (``nominal`` or ``measured``, :func:`prune_ratio_axis`), with a ± std band over seeds.
    With ``log`` (a log-scale axis, e.g. κ over orders of magnitude) the mean and the band are
    taken in log space: the geometric mean, times / divided by the geometric std; values ≤ 0
    are left out."""
    import numpy as np

    from pipeline_lib.reporting.summary import prune_ratio_axis

    sub = sub.assign(pr_axis=prune_ratio_axis(sub, axis))
    back = np.exp if log else np.asarray  # from the averaging scale to the axis
    if log:
        sub = sub.assign(**{column: np.log(sub[column].where(sub[column] > 0))})
    for method, g in sub.groupby("method"):
        agg = g.groupby("round").agg(
            pr=("pr_axis", "mean"), mean=(column, "mean"), std=(column, "std")
        )
        if log:  # rounds without a positive value: no point (linear axes keep their gaps)
            agg = agg.dropna(subset=["mean"])
        color = METHOD_COLORS.get(method)
        band = agg["std"].fillna(0)
        ax.plot(100 * agg["pr"], back(agg["mean"]), "o-", ms=3, color=color, label=method)
        ax.fill_between(
            100 * agg["pr"],
            back(agg["mean"] - band),
            back(agg["mean"] + band),
            color=color,
            alpha=0.2,
        )


def _seeds_title(exp: str, sub: pd.DataFrame, column: str | None = None) -> str:
    """``<experiment> (<dataset>, n seeds)``, counting the seeds with a value of ``column``."""
    rows = sub if column is None else sub[sub[column].notna()]
    seeds = rows["seed"].nunique()
    return f"{exp} ({sub['dataset'].iloc[0]}, {seeds} seed{'s' if seeds != 1 else ''})"


def _paper_curve(ax, prune_ratio: pd.Series, value: pd.Series, method: str | None) -> None:
    """Published values: open markers on a dotted line, in the method's colour (dark grey
    where the paper does not name the method)."""
    ax.plot(
        100 * prune_ratio,
        value,
        ls=":",
        marker="o",
        mfc="none",
        ms=5,
        color=METHOD_COLORS.get(method, "0.25"),
        label=f"paper ({method})" if method else "paper",
    )


def plot_nll_vs_prune_ratio(
    summary_path: str | Path,
    png: str | Path,
    pdf: str | Path | None = None,
    published_dir: str | Path | None = None,
):
    """Test NLL vs prune ratio per experiment, mean ± std over seeds; with ``published_dir``
    the paper's values for the same dataset (:func:`published_nll_curve`) as open markers."""
    from pipeline_lib.reporting.published import published_nll_curve
    from pipeline_lib.reporting.summary import nll_column

    style()
    df = read_parquet(summary_path)
    if "family" in df:  # a classifier's NLL is its cross-entropy: its own figures show it
        df = df[df["family"].fillna("ffjord") != "classifier"]
    experiments = sorted(df["experiment"].unique())
    ncols = min(3, len(experiments))
    nrows = math.ceil(len(experiments) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
    for ax, exp in zip(axes.flat, experiments, strict=False):
        sub = df[df["experiment"] == exp]
        column, unit = nll_column(sub)
        sub = sub.assign(test_nll=sub[column])
        dense = sub[sub["round"] == 0]["test_nll"].mean()
        _method_curves(ax, sub, "test_nll", axis="measured")  # Fig. 4: the measured ratio
        ax.axhline(dense, color="0.3", ls="--", lw=1, label="dense")
        if published_dir is not None:
            paper = published_nll_curve(published_dir, sub["dataset"].iloc[0])
            for method, p in paper.groupby("method"):
                _paper_curve(ax, p["prune_ratio"], p["nll"], method)
        ax.set_title(_seeds_title(exp, sub))
        ax.set_xlabel("prune ratio (%): ours measured over all parameters, paper nominal")
        ax.set_ylabel(f"test NLL ({unit})")
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(experiments) :]:
        ax.set_visible(False)
    fig.tight_layout()
    _save(fig, png, pdf)
    return fig


def _load_arrays(paths, marker: str) -> dict[tuple[str, int, str, int], dict]:
    """The array files holding ``marker`` (``log_density``: density snapshots; ``prob``:
    Fig. 9 arrays) by (experiment, seed, method, round), as each names itself; round 0 is
    'dense'."""
    from pipeline_lib.io import UnreadableFileError, load_npz, metrics_fix

    out = {}
    for p in paths:
        arrays = load_npz(p, fix=metrics_fix(p))
        if "experiment" not in arrays:
            raise UnreadableFileError(
                p, "does not name its checkpoint (written by an older version)", metrics_fix(p)
            )
        if marker in arrays:
            key = (str(arrays["experiment"]), int(arrays["seed"]), str(arrays["method"]))
            out[(*key, int(arrays["round"]))] = arrays
    return out


def _prune_ratios(
    df: pd.DataFrame, kind: str | None = None
) -> dict[tuple[str, int, str, int], float]:
    """Prune ratio by (experiment, seed, method, round): of the prunable weights, or of
    :func:`~pipeline_lib.reporting.summary.prune_ratio_axis` ``kind``."""
    from pipeline_lib.reporting.summary import prune_ratio_axis

    values = df["prune_ratio"] if kind is None else prune_ratio_axis(df, kind)
    ratios = {}
    for row, value in zip(df.itertuples(), values, strict=True):
        method = "dense" if row.round == 0 else row.method
        ratios[(row.experiment, row.seed, method, row.round)] = value
    return ratios


def _chains(arrays) -> list[tuple[str, int, str]]:
    """The (experiment, seed, method) chains of ``arrays``' keys, pruned ones only, or the
    dense flows when nothing was pruned."""
    rows = sorted({(e, s, m) for (e, s, m, r) in arrays if m != "dense"})
    return rows or sorted({(e, s, "dense") for (e, s, m, r) in arrays})


def _chain_keys(arrays, chain: tuple[str, int, str], columns: int | None = None) -> list:
    """The keys of one chain in ``arrays``: its dense flow, then its rounds in order; with
    ``columns``, at most that many of them, spread evenly from the first to the last."""
    import numpy as np

    exp, seed, method = chain
    rounds = sorted(r for (e, s, m, r) in arrays if (e, s, m) == chain)
    keys = [(exp, seed, "dense", 0)] + [(exp, seed, method, r) for r in rounds]
    keys = [k for k in dict.fromkeys(keys) if k in arrays]
    if columns is None or not keys:
        return keys
    pick = np.unique(np.linspace(0, len(keys) - 1, min(columns, len(keys))).round().astype(int))
    return [keys[i] for i in pick]


def _placeholder(text: str, png: str | Path, pdf: str | Path | None):
    """A figure that says why it is empty, so that the rule's output exists."""
    fig, ax = plt.subplots(figsize=(4, 2))
    ax.text(0.5, 0.5, text, ha="center", va="center")
    ax.axis("off")
    _save(fig, png, pdf)
    return fig


def plot_density_grid(
    summary_path: str | Path,
    snapshot_paths,
    png: str | Path,
    pdf: str | Path | None = None,
    max_columns: int = 6,
):
    """Learned density per prune ratio (Sparse Flows Fig. 5): one row per 2-D experiment and
    method (first seed), columns from the dense flow to the sparsest round."""
    import numpy as np

    style()
    snaps = _load_arrays(snapshot_paths, "log_density")
    ratios = _prune_ratios(read_parquet(summary_path))
    rows = _chains(snaps)
    fig, axes = plt.subplots(
        len(rows), max_columns, figsize=(1.9 * max_columns, 2.0 * len(rows)), squeeze=False
    )
    for ax_row, (exp, seed, method) in zip(axes, rows, strict=True):
        keys = _chain_keys(snaps, (exp, seed, method), max_columns)
        for ax in ax_row:
            ax.axis("off")
        for ax, key in zip(ax_row, keys, strict=False):
            snap = snaps[key]
            g = snap["grid"]
            ax.imshow(
                np.exp(snap["log_density"]),
                origin="lower",
                extent=(g[0], g[-1], g[0], g[-1]),
                cmap="magma",
                interpolation="bilinear",
            )
            ax.set_title(f"PR {100 * ratios.get(key, 0.0):.0f}%", fontsize=8)
        ax_row[0].text(
            -0.08,
            0.5,
            f"{exp}\n{method}",
            transform=ax_row[0].transAxes,
            ha="right",
            va="center",
            fontsize=8,
        )
    fig.tight_layout()
    _save(fig, png, pdf)
    return fig


def plot_vector_fields(
    summary_path: str | Path,
    snapshot_paths,
    png: str | Path,
    pdf: str | Path | None = None,
    target_prune_ratio: float = 0.7,
):
    """Vector field f(z, t=0) with samples, dense vs pruned near ``target_prune_ratio``
    (Sparse Flows Fig. 6 and S1), one row per 2-D experiment (first seed, unstructured)."""
    import numpy as np

    style()
    snaps = _load_arrays(snapshot_paths, "log_density")
    ratios = _prune_ratios(read_parquet(summary_path))
    exps = sorted({(e, s) for (e, s, m, r) in snaps})
    exps = [min(g for g in exps if g[0] == e) for e in sorted({e for e, _ in exps})]
    fig, axes = plt.subplots(len(exps), 2, figsize=(7.5, 3.6 * len(exps)), squeeze=False)
    for ax_row, (exp, seed) in zip(axes, exps, strict=True):
        pruned = [k for k in snaps if k[:2] == (exp, seed) and k[2] == "unstructured"]
        pruned = pruned or [k for k in snaps if k[:2] == (exp, seed) and k[2] != "dense"]
        choices = [(exp, seed, "dense", 0)]
        if pruned:
            choices.append(min(pruned, key=lambda k: abs(ratios.get(k, 0.0) - target_prune_ratio)))
        for ax, key in zip(ax_row, choices, strict=False):
            snap = snaps[key]
            g = snap["field_grid"]
            gx, gy = np.meshgrid(g, g, indexing="xy")
            ax.scatter(
                snap["samples"][:, 0], snap["samples"][:, 1], s=1, alpha=0.3, color="#1f77b4"
            )
            ax.quiver(gx, gy, snap["field"][..., 0], snap["field"][..., 1], color="k", alpha=0.8)
            ax.set_title(
                f"{exp}: {'unpruned' if key[3] == 0 else f'pruned {100 * ratios.get(key, 0):.0f}%'}"
            )
            ax.set_aspect("equal")
        for ax in ax_row[len(choices) :]:
            ax.set_visible(False)
    fig.tight_layout()
    _save(fig, png, pdf)
    return fig


#: Metrics that can be drawn against the prune ratio: column -> axis label.
METRIC_LABELS = {
    "lambda_max": r"$\lambda_{max}$ of the NLL Hessian",
    "hessian_trace": "trace of the NLL Hessian",
    "kappa": r"condition number $\kappa$",
    "lambda_max_rel": r"$\lambda_{max}$ / unpruned",
    "hessian_trace_rel": "trace / unpruned",
    "kappa_rel": r"$\kappa$ / unpruned",
    "good_pct_2": "good samples, n=2 (%)",
    "good_pct_3": "good samples, n=3 (%)",
    "test_accuracy": "test accuracy",
    "test_nll": "test NLL (nats)",
    "boundary_distance_mean": "distance to the boundary, mean",
    "boundary_distance_p5": "distance to the boundary, 5th pct.",
}


def _expand(metrics, columns) -> list[str]:
    """Metric names, where ``prefix_*`` stands for every column with that prefix."""
    out = []
    for m in metrics:
        out += sorted(c for c in columns if c.startswith(m[:-1])) if m.endswith("*") else [m]
    return out


def plot_metrics_vs_prune_ratio(
    summary_path: str | Path,
    metrics,
    png: str | Path,
    pdf: str | Path | None = None,
    log_scale=("kappa",),
    published_dir: str | Path | None = None,
):
    """Evaluation metrics against prune ratio (Table 5 / Table 4 as curves), mean ± std over
    seeds (geometric on the ``log_scale`` metrics), the seed count in each title, one column
    per metric and one row per experiment that has it. ``<metric>_rel`` is normalized to the
    unpruned flow (:func:`with_relative_metrics`); with ``published_dir`` the paper's values
    for the same dataset (Tables 4 and 5) are drawn as open markers."""
    from pipeline_lib.reporting.published import published_metric_curve
    from pipeline_lib.reporting.summary import with_relative_metrics

    style()
    df = with_relative_metrics(read_parquet(summary_path))
    metrics = [m for m in _expand(metrics, df.columns) if m in df and df[m].notna().any()]
    experiments = (
        sorted(df[df[metrics].notna().any(axis=1)]["experiment"].unique()) if metrics else []
    )
    if not metrics or not experiments:
        fig, ax = plt.subplots(figsize=(4, 2))
        ax.text(0.5, 0.5, "no such metrics in this run", ha="center", va="center")
        ax.axis("off")
        _save(fig, png, pdf)
        return fig
    fig, axes = plt.subplots(
        len(experiments),
        len(metrics),
        figsize=(3.8 * len(metrics), 3.0 * len(experiments)),
        squeeze=False,
    )
    for ax_row, exp in zip(axes, experiments, strict=True):
        sub = df[df["experiment"] == exp]
        for ax, metric in zip(ax_row, metrics, strict=True):
            _method_curves(ax, sub, metric, log=metric in log_scale)
            if published_dir is not None:
                paper, method = published_metric_curve(
                    published_dir, sub["dataset"].iloc[0], metric
                )
                if len(paper):
                    _paper_curve(ax, paper["prune_ratio"], paper["value"], method)
            if metric in log_scale:
                ax.set_yscale("log")
            ax.set_title(_seeds_title(exp, sub, metric), fontsize=9)
            ax.set_xlabel("prune ratio (%)")
            label = METRIC_LABELS.get(metric, metric)
            if metric in log_scale:
                label += " (geometric mean)"
            if metric.startswith("noise_accuracy_"):
                label = f"accuracy, input noise σ={metric.removeprefix('noise_accuracy_')}"
            ax.set_ylabel(label)
            ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, png, pdf)
    return fig


def plot_decision_boundaries(
    summary_path: str | Path,
    boundary_paths,
    png: str | Path,
    pdf: str | Path | None = None,
    prune_ratios=(0.0, 0.84, 0.96),
):
    """Sparse Flows Fig. 9 for every classifier experiment and method (first seed): one row
    per prune ratio of ``prune_ratios`` (the round whose nominal ratio 1 − keep is nearest;
    the title gives the measured one over all parameters beside it), with

    1. the decision boundary: p(class 1 | x) over the plane, its 0.5 level, the test points;
    2. the state space: the vector field f(z) as arrows, its magnitude ‖f(z)‖ as colour;
    3. trajectories through depth: the first coordinate of test points against t, coloured
       by their class.
    """
    import numpy as np

    style()
    arrays = _load_arrays(boundary_paths, "prob")
    summary = read_parquet(summary_path)
    ratios = _prune_ratios(summary, "nominal")  # the released schedule's, as Fig. 9 names them
    measured = _prune_ratios(summary, "measured")
    rows = []
    for chain in sorted({(e, s, m) for (e, s, m, r) in arrays if m != "dense"}):
        keys = _chain_keys(arrays, chain)
        picked = []
        for target in prune_ratios:
            best = min(keys, key=lambda k, t=target: abs(ratios.get(k, 0.0) - t))
            if best not in picked:
                picked.append(best)
        rows += [(chain[2], k) for k in picked]
    if not rows:
        return _placeholder("no classifier in this run", png, pdf)
    fig, axes = plt.subplots(len(rows), 3, figsize=(11, 3.2 * len(rows)), squeeze=False)
    colors = np.array(["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd"])
    for ax_row, (method, key) in zip(axes, rows, strict=True):
        a = arrays[key]
        gx, gy = a["grid_x"], a["grid_y"]
        extent = (gx[0], gx[-1], gy[0], gy[-1])
        pts, labels = a["points"], a["labels"].astype(int)
        title = (
            f"{key[0]}, {method}, PR {100 * ratios.get(key, 0.0):.0f}% "
            f"(measured {100 * measured.get(key, 0.0):.0f}%)"
        )
        ax = ax_row[0]
        ax.imshow(a["prob"], origin="lower", extent=extent, cmap="RdBu_r", vmin=0, vmax=1,
                  aspect="auto", alpha=0.6)  # fmt: skip
        ax.contour(gx, gy, a["prob"], levels=[0.5], colors="k", linewidths=1.2)
        ax.scatter(pts[:, 0], pts[:, 1], c=colors[labels % 4], s=4, lw=0)
        ax.set_title(f"decision boundary: {title}", fontsize=8)
        ax = ax_row[1]
        image = ax.imshow(a["speed"], origin="lower", extent=extent, cmap="viridis",
                          aspect="auto")  # fmt: skip
        step = max(1, len(gx) // 20)
        field = a["field"][::step, ::step]
        xx, yy = np.meshgrid(gx[::step], gy[::step])
        ax.quiver(xx, yy, field[..., 0], field[..., 1], color="w", alpha=0.8, width=0.003)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02, label="‖f(z)‖")
        ax.set_title("state space: vector field and its magnitude", fontsize=8)
        ax = ax_row[2]
        traj, tl = a["trajectories"], a["trajectory_labels"].astype(int)
        for j in range(traj.shape[1]):
            ax.plot(a["times"], traj[:, j, 0], color=colors[tl[j] % 4], lw=0.8, alpha=0.7)
        ax.set_xlabel("depth t")
        ax.set_ylabel("$z_1(t)$")
        ax.set_title("trajectories through depth", fontsize=8)
    fig.tight_layout()
    _save(fig, png, pdf)
    return fig


def _tile(images, columns: int = 10):
    """uint8 images ``(N, C, H, W)`` as one ``(rows·H, columns·W[, C])`` picture."""
    import numpy as np

    n, c, h, w = images.shape
    rows = math.ceil(n / columns)
    canvas = np.zeros((rows * h, columns * w, c), dtype=np.uint8)
    for i, image in enumerate(images):
        r, k = divmod(i, columns)
        canvas[r * h : (r + 1) * h, k * w : (k + 1) * w] = image.transpose(1, 2, 0)
    return canvas[..., 0] if c == 1 else canvas


def plot_sample_grids(
    summary_path: str | Path,
    snapshot_paths,
    png: str | Path,
    pdf: str | Path | None = None,
    max_columns: int = 6,
):
    """Samples of image flows per prune ratio (Sparse Flows Fig. 1's samples, §4.3): one row
    per image experiment and method (first seed), columns from the dense flow to the sparsest
    round, each a 10 × 10 grid drawn from the same latent noise."""

    style()
    grids = _load_arrays(snapshot_paths, "images")
    ratios = _prune_ratios(read_parquet(summary_path), "nominal")
    rows = _chains(grids)
    if not rows:
        return _placeholder("no image flow in this run", png, pdf)
    columns = {row: _chain_keys(grids, row, max_columns) for row in rows}
    width = max(len(keys) for keys in columns.values())
    fig, axes = plt.subplots(
        len(rows), width, figsize=(2.2 * width, 2.4 * len(rows)), squeeze=False
    )
    for ax_row, (exp, seed, method) in zip(axes, rows, strict=True):
        for ax in ax_row:
            ax.axis("off")
        for ax, key in zip(ax_row, columns[(exp, seed, method)], strict=False):
            ax.imshow(_tile(grids[key]["images"]), cmap="gray", interpolation="nearest")
            ax.set_title(f"PR {100 * ratios.get(key, 0.0):.0f}%", fontsize=8)
        ax_row[0].text(-0.08, 0.5, f"{exp}\n{method}", transform=ax_row[0].transAxes,
                       ha="right", va="center", fontsize=8)  # fmt: skip
    fig.tight_layout()
    _save(fig, png, pdf)
    return fig
