"""Rule aggregate_experiment: one experiment's round records -> summary rows."""

from _runtime import setup_logging

from pipeline_lib.reporting.summary import aggregate_experiment

smk = snakemake  # noqa: F821
setup_logging(smk)
aggregate_experiment(list(smk.input), smk.output[0], smk.params.divergence_nats)
