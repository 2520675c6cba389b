"""Rule tabular_data: MAF preprocessing of one tabular data set (Sparse Flows §4.2)."""

from _runtime import setup_logging

from pipeline_lib.data import preprocess_tabular

smk = snakemake  # noqa: F821
setup_logging(smk)
preprocess_tabular(smk.wildcards.data_id, smk.input.raw, smk.output[0])
