"""Rule sample_grids: samples of image flows per prune ratio (4.3)."""

from _runtime import setup_logging

from pipeline_lib.reporting.figures import plot_sample_grids

smk = snakemake  # noqa: F821
setup_logging(smk)
plot_sample_grids(smk.input.summary, smk.input.snapshots, smk.output.png, smk.output.pdf)
