"""Rule metric_figures: Hessian metrics, good samples or classifier accuracy and robustness
against the prune ratio."""

from _runtime import setup_logging

from pipeline_lib.reporting.figures import plot_metrics_vs_prune_ratio

METRICS = {
    "hessian": ["lambda_max", "lambda_max_rel", "hessian_trace_rel", "kappa"],
    "good_samples": ["good_pct_2", "good_pct_3"],
    "classifier": [
        "test_accuracy",
        "boundary_distance_mean",
        "boundary_distance_p5",
        "noise_accuracy_*",
    ],
}

smk = snakemake  # noqa: F821
setup_logging(smk)
plot_metrics_vs_prune_ratio(
    smk.input.summary,
    METRICS[smk.wildcards.metric],
    smk.output.png,
    smk.output.pdf,
    published_dir=smk.params.published,
)
