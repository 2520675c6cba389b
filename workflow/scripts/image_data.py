"""Rule image_data: MNIST or CIFAR-10 downloaded, verified and stored as uint8 splits (4.3)."""

from pathlib import Path

from _runtime import setup_logging

from pipeline_lib.data import prepare_images

smk = snakemake  # noqa: F821
setup_logging(smk)
settings = smk.params.exp
out = Path(smk.output[0])
prepare_images(
    settings["dataset"],
    Path(smk.config["resources"]) / "images" / settings["dataset"],
    out,
    url=smk.params.url,
    mirror=smk.params.mirror,
    subset=(settings["data"] or {}).get("subset"),
    md5=smk.config["data"]["image_md5"],  # not a parameter: adding it must not re-download
)
