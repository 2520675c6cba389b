"""Rule hessian_table: Table 5 / S11-S12 (Hessian eigen-analysis) beside the published values."""

from _runtime import setup_logging

from pipeline_lib.reporting.tables import write_hessian_table

smk = snakemake  # noqa: F821
setup_logging(smk)
write_hessian_table(
    smk.input.summary, smk.params.published, smk.output.md, smk.output.csv, smk.output.tex
)
