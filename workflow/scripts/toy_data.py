"""Rule toy_data: draw a toy data set (Sparse Flows §4.1) and store its splits."""

from _runtime import setup_logging

from pipeline_lib.experiment import DataConfig
from pipeline_lib.stages import make_toy_data

smk = snakemake  # noqa: F821
setup_logging(smk)
make_toy_data(smk.params.exp["dataset"], DataConfig(**smk.params.exp["data"]), smk.output[0])
