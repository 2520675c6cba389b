"""Rule summary: all experiments' rows -> results/summary.parquet."""

from _runtime import setup_logging

from pipeline_lib.reporting.summary import concat_summaries

smk = snakemake  # noqa: F821
setup_logging(smk)
concat_summaries(list(smk.input), smk.output[0])
