"""Rule nll_table: per-dataset NLL table (Tables S4-S10 layout) beside the published values."""

from _runtime import setup_logging

from pipeline_lib.reporting.tables import write_nll_table

smk = snakemake  # noqa: F821
setup_logging(smk)
write_nll_table(
    smk.input.summary,
    smk.wildcards.dataset,
    published_dir=smk.params.published,
    md=smk.output.md,
    csv=smk.output.csv,
    tex=smk.output.tex,
)
