"""Rule nll_figure: NLL vs prune ratio, one panel per dataset (Sparse Flows Figs. 2, 4, 7, 8)."""

from _runtime import setup_logging

from pipeline_lib.reporting.figures import plot_nll_vs_prune_ratio

smk = snakemake  # noqa: F821
setup_logging(smk)
plot_nll_vs_prune_ratio(
    smk.input.summary, smk.output.png, smk.output.pdf, published_dir=smk.params.published
)
