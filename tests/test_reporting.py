"""Tables and figures from a synthetic summary: aggregation, published values beside ours."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline_lib.reporting.figures import (
    plot_metrics_vs_prune_ratio,
    plot_nll_vs_prune_ratio,
)
from pipeline_lib.reporting.published import (
    published_metric_curve,
    published_nll_curve,
    published_sparse_flow,
)
from pipeline_lib.reporting.tables import (
    good_samples_table,
    hessian_table,
    nll_table,
    write_hessian_table,
    write_nll_table,
)

PUBLISHED = Path(__file__).resolve().parents[1] / "config" / "published"


def synthetic_summary() -> pd.DataFrame:
    rows = []
    rng = np.random.default_rng(0)
    for dataset, experiment in (("gaussians", "g"), ("power", "p")):
        for method in ("unstructured", "structured"):
            for seed in (0, 1, 2):
                for rnd, pr in enumerate((0.0, 0.2, 0.52)):
                    rows.append(
                        dict(
                            experiment=experiment,
                            dataset=dataset,
                            method=method,
                            seed=seed,
                            round=rnd,
                            prune_ratio=pr,
                            params_total=1000,
                            params_nonzero=int(1000 * (1 - pr)),
                            val_nll=1.0,
                            test_nll=1.0 + 0.1 * rnd + 0.01 * seed,
                            test_nll_stderr=0.01,
                            nll_unit="nats",
                            nfe_forward=20.0,
                            train_seconds=1.0,
                            config_hash="x",
                            stopped=False,
                            lambda_max=2.0 / (rnd + 1) + 0.01 * seed,
                            hessian_trace=10.0 - rnd,
                            kappa=100.0 * (rnd + 1),
                            train_nll=0.9 + 0.1 * rnd + 0.01 * seed,
                            good_pct_2=70 + rnd + rng.normal(),
                            good_pct_3=90 + rnd,
                        )
                    )
    return pd.DataFrame(rows)


def test_nll_table_means_stds_and_published_neighbour():
    df = synthetic_summary()
    table = nll_table(df, "power", PUBLISHED)
    r1 = table[table["round"] == 1].iloc[0]
    # mean over seeds 0, 1, 2 of 1.1 + 0.01·seed, std 0.01
    assert r1["nll_unstructured_mean"] == pytest.approx(1.11)
    assert r1["nll_unstructured"] == "1.110 ± 0.010"
    assert r1["seeds_unstructured"] == 3
    # POWER has no published row at 20% (Table S4 starts at 30%); it has one at 0% (-0.34)
    assert np.isnan(r1["paper_unstructured"])
    r0 = table[table["round"] == 0].iloc[0]
    assert r0["paper_unstructured"] == pytest.approx(-0.34)
    assert r0["diff_unstructured"] == pytest.approx(1.0 + 0.01 - (-0.34))


def test_hessian_table_normalizes_to_the_unpruned_flow(tmp_path):
    df = synthetic_summary()
    table = hessian_table(df, PUBLISHED)
    g = table[(table["experiment"] == "g") & (table["method"] == "structured")].set_index("round")
    # normalized per seed to that seed's unpruned flow, then averaged (λ = 2/(r+1) + 0.01·seed)
    per_seed = [(2 / 3 + 0.01 * s) / (2 + 0.01 * s) for s in (0, 1, 2)]
    assert g.loc[2, "lambda_max_rel"] == pytest.approx(np.mean(per_seed))
    assert g.loc[0, "kappa_rel"] == pytest.approx(1.0)
    # Table S11: unpruned Gaussians λ_max 0.0190
    assert g.loc[0, "paper_lambda_max"] == pytest.approx(0.019)
    # Table S11's NLL is the training NLL: ours (0.9 + 0.01·seed at round 0) beside it
    assert g.loc[0, "paper_train_nll"] == pytest.approx(1.173)
    assert g.loc[0, "train_nll_mean"] == pytest.approx(0.91)
    assert g.loc[0, "seeds"] == 3
    # the published values are structured pruning: none beside the unstructured rows
    u = table[(table["experiment"] == "g") & (table["method"] == "unstructured")]
    assert u["paper_lambda_max"].isna().all() and u["paper_train_nll"].isna().all()
    summary = tmp_path / "s.parquet"
    df.to_parquet(summary)
    write_hessian_table(
        summary, PUBLISHED, tmp_path / "h.md", tmp_path / "h.csv", tmp_path / "h.tex"
    )
    md = (tmp_path / "h.md").read_text()
    assert "λ_max" in md and "train NLL" in md and "0.910 ± 0.010" in md
    assert (tmp_path / "h.tex").read_text().startswith("\\begin{tabular}")
    assert "positive: above 10⁻⁸ × max |Ritz value| (the former default; 36 of 36 rows" in md
    assert "mix thresholds" not in md


def test_hessian_table_states_kappas_threshold():
    """The caption names the relative threshold κ used, and warns when rows mix thresholds,
    recorded or not (rows from before ``kappa_rtol`` was recorded used 1e-8)."""
    from pipeline_lib.reporting.tables import kappa_threshold_note

    df = synthetic_summary().assign(kappa_rtol=1.1920928955078125e-06)
    assert kappa_threshold_note(df) == "above 1.19e-06 × max |Ritz value|"
    df.loc[df["round"] == 2, "kappa_rtol"] = 0.0
    note = kappa_threshold_note(df)
    assert note.startswith("above 0 (the released definition) or 1.19e-06 × max |Ritz value|")
    assert note.endswith("the rows mix thresholds, so their κ do not compare")
    df.loc[df["round"] == 2, "kappa_rtol"] = np.nan
    note = kappa_threshold_note(df)
    assert "10⁻⁸ × max |Ritz value| (the former default; 12 of 36 rows" in note
    assert note.endswith("the rows mix thresholds, so their κ do not compare")
    assert kappa_threshold_note(df.drop(columns=["lambda_max"])) == "above the threshold"


def test_good_samples_table_matches_published_by_prune_ratio():
    table = good_samples_table(synthetic_summary(), PUBLISHED)
    g = table[(table["experiment"] == "g") & (table["method"] == "structured")].set_index("round")
    assert g.loc[0, "paper_good_pct_2"] == pytest.approx(72.89)  # Table 4, 0%, n=2
    assert g.loc[1, "paper_good_pct_3"] == pytest.approx(93.45)  # 20%, n=3
    assert g.loc[2, "paper_good_pct_2"] == pytest.approx(84.30)  # 52%, n=2
    assert g.loc[1, "good_pct_3_mean"] == pytest.approx(91.0)
    u = table[(table["experiment"] == "g") & (table["method"] == "unstructured")]
    assert u["paper_good_pct_2"].isna().all()


def test_nll_table_of_one_method_keeps_prune_ratio_and_seeds(tmp_path):
    """A run of structured pruning alone: the prune ratio and seed count come from it, and the
    Markdown table has no empty unstructured columns."""
    df = synthetic_summary()
    df = df[df["method"] == "structured"]
    table = nll_table(df, "gaussians", PUBLISHED)
    assert table["prune_ratio"].tolist() == pytest.approx([0.0, 0.2, 0.52])
    assert table["seeds_structured"].tolist() == [3, 3, 3]
    assert table["seeds_unstructured"].tolist() == [0, 0, 0]
    # the paper's Gaussians NLL is Table S11's (structured): 1.173 unpruned, none at 20 / 52 %
    assert table.loc[0, "paper_structured"] == pytest.approx(1.173)
    assert table.loc[1:, "paper_structured"].isna().all()
    summary = tmp_path / "s.parquet"
    df.to_parquet(summary)
    write_nll_table(
        summary, "gaussians", PUBLISHED, tmp_path / "t.md", tmp_path / "t.csv", tmp_path / "t.tex"
    )
    md = (tmp_path / "t.md").read_text()
    assert "| 52%" in md and "nan" not in md
    assert "unstr." not in md and "seeds (str.)" in md


def test_figures_and_markdown_tables_are_written(tmp_path):
    summary = tmp_path / "s.parquet"
    synthetic_summary().to_parquet(summary)
    plot_nll_vs_prune_ratio(summary, tmp_path / "nll.png", tmp_path / "nll.pdf", PUBLISHED)
    plot_metrics_vs_prune_ratio(
        summary, ["lambda_max_rel", "good_pct_2"], tmp_path / "h.png", published_dir=PUBLISHED
    )
    assert (tmp_path / "nll.png").stat().st_size > 10_000 and (tmp_path / "nll.pdf").exists()
    assert (tmp_path / "h.png").stat().st_size > 10_000
    write_nll_table(
        summary, "gaussians", PUBLISHED, tmp_path / "t.md", tmp_path / "t.csv", tmp_path / "t.tex"
    )
    assert pd.read_csv(tmp_path / "t.csv").shape[0] == 3


def test_layout_patterns_and_paths_agree():
    """The rules' patterns (with wildcards) and the concrete paths come from one template."""
    from pipeline_lib.layout import Layout

    layout = Layout("r")
    assert layout.checkpoint_dir("exp_a", None, 2, 0) == "r/exp_a/seed2/round000"
    pruned = layout.checkpoint_dir("exp", "structured", 0, 12)
    assert pruned == "r/exp/seed0/structured/round012"
    wildcards = {"experiment": "exp", "seed": 0, "method": "structured", "round": "012"}
    assert layout.pruned("model.pt").format(**wildcards) == f"{pruned}/model.pt"
    assert layout.dense("round.json").format(experiment="exp_a", seed=2) == (
        "r/exp_a/seed2/round000/round.json"
    )
    path = "structured/round012"
    outputs = {
        k: v.format(experiment="exp", seed=0, path=path)
        for k, v in layout.metric("samples").items()
    }
    assert outputs == layout.metric_files(pruned, "samples")
    assert outputs["snapshot"] == f"{pruned}/metrics/snapshot.npz"


def test_snapshots_name_their_checkpoint_inside(tmp_path):
    """The density figures take (experiment, seed, method, round) from the snapshot itself,
    wherever the file lies."""
    import numpy as np

    from pipeline_lib.io import write_npz
    from pipeline_lib.reporting.figures import _load_arrays

    grid = {"log_density": np.zeros((4, 4)), "available": np.array(True)}
    a, b, c = tmp_path / "a.npz", tmp_path / "x" / "b.npz", tmp_path / "c.npz"
    write_npz(a, {**grid, "experiment": np.array("e1"), "seed": np.array(2),
                  "method": np.array("dense"), "round": np.array(0)})  # fmt: skip
    write_npz(b, {**grid, "experiment": np.array("e1"), "seed": np.array(2),
                  "method": np.array("structured"), "round": np.array(7)})  # fmt: skip
    write_npz(c, {"available": np.array(False), "experiment": np.array("e1"),
                  "seed": np.array(2), "method": np.array("structured"), "round": np.array(8)})  # fmt: skip
    assert sorted(_load_arrays([a, b, c], "log_density")) == [
        ("e1", 2, "dense", 0),
        ("e1", 2, "structured", 7),
    ]


def test_published_nll_curve_reads_the_papers_tables():
    # Gaussians: Table S11's structured NLL, unpruned flow at prune ratio 0
    g = published_nll_curve(PUBLISHED, "gaussians")
    assert set(g["method"]) == {"structured"}
    assert g.set_index("prune_ratio")["nll"].to_dict() == {
        0.0: 1.173,
        0.25: 1.157,
        0.67: 1.148,
        0.82: 1.120,
        0.9: 1.136,
        0.94: 1.173,
        0.96: 1.244,
    }
    # POWER: Table S4, both methods, the same numbers as the side-by-side table reads
    p = published_nll_curve(PUBLISHED, "power")
    wide = published_sparse_flow(PUBLISHED, "power")
    for method in ("unstructured", "structured"):
        mine = p[p["method"] == method].set_index("prune_ratio")["nll"]
        theirs = wide.dropna(subset=[method]).set_index("prune_ratio")[method]
        assert mine.to_dict() == theirs.to_dict()
    assert published_nll_curve(PUBLISHED, "no_such_dataset").empty


def test_published_metric_curve_reads_tables_4_and_5():
    g2, method = published_metric_curve(PUBLISHED, "gaussians", "good_pct_2")
    assert g2.set_index("prune_ratio")["value"][0.52] == pytest.approx(84.30)
    assert method == "structured"  # Table 4's caption
    lam, method = published_metric_curve(PUBLISHED, "gaussians", "lambda_max_rel")
    assert method is None  # Table 5 names no pruning method
    assert lam.set_index("prune_ratio")["value"].to_dict() == {
        0.0: 1.0,
        0.2: 0.976,
        0.6: 0.356,
        0.7: 0.295,
        0.9: 0.416,
    }
    assert published_metric_curve(PUBLISHED, "gaussians", "lambda_max")[0].empty  # raw
    assert published_metric_curve(PUBLISHED, "power", "good_pct_2")[0].empty


def test_tables_use_the_nominal_prune_ratio_and_show_the_measured_one():
    """Structured pruning of the released model keeps the removed neurons' biases, so its
    measured ratio over all parameters lags the nominal one; the paper's tables are matched
    on the nominal axis (Table S11: 1.173 unpruned), and the figure uses the measured one."""
    from pipeline_lib.reporting.summary import prune_ratio_axis

    df = synthetic_summary()
    df = df[(df["method"] == "structured") & (df["dataset"] == "gaussians")].copy()
    df["prune_ratio_nominal"] = df["prune_ratio"]
    df["prune_ratio_params"] = 0.5 * df["prune_ratio"]
    table = nll_table(df, "gaussians", PUBLISHED)
    assert table["prune_ratio"].tolist() == pytest.approx([0.0, 0.2, 0.52])
    assert table["measured_structured"].tolist() == pytest.approx([0.0, 0.1, 0.26])
    assert table.loc[0, "paper_structured"] == pytest.approx(1.173)
    assert prune_ratio_axis(df, "measured").tolist() == pytest.approx(df["prune_ratio_params"])
    older = df.drop(columns=["prune_ratio_nominal", "prune_ratio_params"])
    assert prune_ratio_axis(older, "measured").tolist() == pytest.approx(older["prune_ratio"])


def test_reporting_imports_neither_torch_nor_the_stages():
    """Tables and figures are regenerated without the training stack."""
    import subprocess
    import sys

    code = (
        "import sys; import pipeline_lib.reporting.summary, pipeline_lib.reporting.tables, "
        "pipeline_lib.reporting.figures, pipeline_lib.layout, pipeline_lib.records; "
        "print(sorted(m for m in ('torch', 'pipeline_lib.stages') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_classifier_rows_have_their_own_table_not_the_nll_table(tmp_path):
    """A flow and a classifier on the same data set: the NLL table keeps the flow (the
    classifier's NLL is its cross-entropy), the classifier table has the classifier, with
    accuracy and robustness per round as mean ± std over seeds."""
    from pipeline_lib.reporting.tables import classifier_table, write_classifier_table

    flows = synthetic_summary().assign(family="ffjord")
    flows = flows[flows.dataset == "gaussians"]
    clf = flows.assign(
        experiment="c",
        family="classifier",
        test_nll=0.5,
        test_accuracy=lambda d: 1.0 - 0.1 * d["round"] - 0.01 * d["seed"],
        boundary_distance_mean=0.3,
        boundary_distance_p5=0.1,
        **{"noise_accuracy_0.1": 0.9},
    )
    summary = pd.concat([flows, clf], ignore_index=True)
    table = nll_table(summary, "gaussians", None)
    assert set(table["experiment"]) == {"g"}
    ours = classifier_table(summary)
    assert set(ours["experiment"]) == {"c"} and len(ours) == 6
    r2 = ours[(ours["method"] == "structured") & (ours["round"] == 2)].iloc[0]
    assert r2["test_accuracy_mean"] == pytest.approx(0.79) and r2["seeds"] == 3
    assert r2["test_accuracy_std"] == pytest.approx(0.01)
    path = tmp_path / "summary.parquet"
    summary.to_parquet(path)
    md = tmp_path / "c.md"
    write_classifier_table(path, md, tmp_path / "c.csv", tmp_path / "c.tex")
    assert "0.790 ± 0.010" in md.read_text() and "acc. σ=0.1" in md.read_text()
    with pytest.raises(ValueError, match="no classifier rows"):
        classifier_table(flows)


def test_metric_figures_show_seed_counts_and_geometric_bands_on_log_axes(tmp_path):
    """κ spans orders of magnitude: its curve is the geometric mean over seeds and its band
    exp(mean ± std) of log κ, which stays positive; every panel names its seed count."""
    import matplotlib.pyplot as plt

    df = synthetic_summary()
    df["kappa"] = 10.0 ** (2 + df["seed"])  # 1e2, 1e3, 1e4 over the seeds: arithmetic mean 3700
    df.loc[(df["seed"] == 2) & (df["experiment"] == "p"), "lambda_max"] = float("nan")
    summary = tmp_path / "s.parquet"
    df.to_parquet(summary)
    fig = plot_metrics_vs_prune_ratio(summary, ["kappa", "lambda_max"], tmp_path / "k.png")
    (g_kappa, g_lmax), (_, p_lmax) = fig.axes[0:2], fig.axes[2:4]
    assert g_kappa.get_title() == "g (gaussians, 3 seeds)"
    assert p_lmax.get_title() == "p (power, 2 seeds)"  # seed 2 has no λ_max there
    line = g_kappa.get_lines()[0]
    assert line.get_ydata() == pytest.approx([1e3] * 3)
    band = g_kappa.collections[0].get_paths()[0].vertices[:, 1]
    assert band.min() == pytest.approx(1e2) and band.max() == pytest.approx(1e4)
    assert "geometric mean" in g_kappa.get_ylabel() and g_kappa.get_yscale() == "log"
    assert g_lmax.get_yscale() == "linear"
    plt.close(fig)
