"""Rule density_figures: density per prune ratio (Fig. 5) and vector fields (Fig. 6)."""

from _runtime import setup_logging

from pipeline_lib.reporting.figures import plot_density_grid, plot_vector_fields

smk = snakemake  # noqa: F821
setup_logging(smk)
plot_density_grid(smk.input.summary, smk.input.snapshots, smk.output.grid, smk.output.grid_pdf)
plot_vector_fields(smk.input.summary, smk.input.snapshots, smk.output.field, smk.output.field_pdf)
