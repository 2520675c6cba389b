# Data: toy generators, and the MAF tabular archive (download -> extract -> preprocess).


rule toy_data:
    output:
        directory(f"{RESULTS}/data/{{data_id}}"),
    log:
        f"{RESULTS}/logs/data/{{data_id}}.log",
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
        f"{RESULTS}/logs/data/download_maf.log",
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
        f"{RESULTS}/logs/data/extract_maf.log",
    conda:
        ENV
    script:
        "../scripts/extract.py"


rule tabular_data:
    input:
        raw=f"{RESOURCES}/maf/extracted",
    output:
        directory(f"{RESULTS}/data/{{data_id}}"),
    log:
        f"{RESULTS}/logs/data/{{data_id}}.log",
    wildcard_constraints:
        data_id="|".join(TABULAR_DATASETS),
    conda:
        ENV
    script:
        "../scripts/tabular_data.py"
