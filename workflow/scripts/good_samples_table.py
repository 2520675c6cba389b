"""Rule good_samples_table: Table 4 (good-quality samples) beside the published values."""

from _runtime import setup_logging

from pipeline_lib.reporting.tables import write_good_samples_table

smk = snakemake  # noqa: F821
setup_logging(smk)
write_good_samples_table(
    smk.input.summary, smk.params.published, smk.output.md, smk.output.csv, smk.output.tex
)
