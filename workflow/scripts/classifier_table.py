"""Rule classifier_table: accuracy, robustness and #params of classifiers (4.6)."""

from _runtime import setup_logging

from pipeline_lib.reporting.tables import write_classifier_table

smk = snakemake  # noqa: F821
setup_logging(smk)
write_classifier_table(smk.input.summary, smk.output.md, smk.output.csv, smk.output.tex)
