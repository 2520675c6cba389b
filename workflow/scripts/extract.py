"""Rule extract_maf: safe extraction (no absolute paths, `..` or links out of the tree)."""

from _runtime import setup_logging

from pipeline_lib.data import extract_archive

smk = snakemake  # noqa: F821
setup_logging(smk)
# the cap is read from the config, not a parameter: raising it must not extract again
extract_archive(smk.input[0], smk.output[0], smk.config["data"]["max_extract_bytes"])
