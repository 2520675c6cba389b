# Data: toy generators, the MAF tabular archive (download -> extract -> preprocess), and the
# image sets (download -> verify -> parse -> uint8 splits).


rule toy_data:
    output:
        directory(LAYOUT.data_dir("{data_id}")),
    log:
        LAYOUT.log("data/{data_id}"),
    wildcard_constraints:
        data_id="(" + "|".join(TOY_DATASETS) + ")(-[0-9a-f]{8})?",
    conda:
        ENV
    params:
        exp=data_settings,
    script:
        "../scripts/toy_data.py"


rule download_maf:
    output:
        f"{RESOURCES}/maf/data.tar.gz",
    log:
        LAYOUT.log("data/download_maf"),
    retries: 2
    conda:
        ENV
    params:
        url=config["data"]["maf_url"],
        sha256=config["data"]["maf_sha256"],
        size=config["data"]["maf_size"],
        mirror=config["data"]["mirror"],
    script:
        "../scripts/download.py"


rule extract_maf:
    input:
        f"{RESOURCES}/maf/data.tar.gz",
    output:
        directory(f"{RESOURCES}/maf/extracted"),
    log:
        LAYOUT.log("data/extract_maf"),
    conda:
        ENV
    script:
        "../scripts/extract.py"


rule tabular_data:
    input:
        raw=f"{RESOURCES}/maf/extracted",
    output:
        directory(LAYOUT.data_dir("{data_id}")),
    log:
        LAYOUT.log("data/{data_id}"),
    wildcard_constraints:
        data_id="|".join(TABULAR_DATASETS),
    conda:
        ENV
    script:
        "../scripts/tabular_data.py"


rule image_data:
    output:
        directory(LAYOUT.data_dir("{data_id}")),
    log:
        LAYOUT.log("data/{data_id}"),
    wildcard_constraints:
        data_id="(" + "|".join(IMAGE_DATASETS) + ")(-[0-9a-f]{8})?",
    retries: 2
    conda:
        ENV
    params:
        exp=data_settings,
        url=lambda w: config["data"][f"{DATA_IDS[w.data_id]['dataset']}_url"],
        mirror=config["data"]["mirror"],
    script:
        "../scripts/image_data.py"
