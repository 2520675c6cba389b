"""Rule download_maf: stream the MAF archive (resume, retries, verification, atomic move)."""

from _runtime import setup_logging

from pipeline_lib.data import fetch

smk = snakemake  # noqa: F821
setup_logging(smk)
fetch(
    smk.params.url,
    smk.output[0],
    sha256=smk.params.sha256,
    md5=smk.config["data"]["maf_md5"],  # not a parameter: adding it must not re-download
    size=smk.params.size,
    mirror=smk.params.mirror,
)
