"""Rule extract_maf: safe extraction (no absolute paths, `..` or links out of the tree)."""

from _runtime import setup_logging

from pipeline_lib.data import extract_archive

smk = snakemake  # noqa: F821
setup_logging(smk)
extract_archive(smk.input[0], smk.output[0], smk.params.max_bytes)
