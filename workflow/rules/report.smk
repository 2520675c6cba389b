# Aggregation, tables and figures. Cheap rules: they run on the submit host, and editing a
# table or plot reruns only these (training outputs are protected and upstream).


localrules:
    aggregate_experiment,
    summary,
    tables,
    figures,


rule aggregate_experiment:
    input:
        experiment_records,
    output:
        f"{RESULTS}/{{experiment}}/summary.parquet",
    log:
        f"{RESULTS}/logs/{{experiment}}/aggregate.log",
    conda:
        ENV
    script:
        "../scripts/aggregate.py"


rule summary:
    input:
        all_experiment_summaries(),
    output:
        SUMMARY,
    log:
        f"{RESULTS}/logs/summary.log",
    conda:
        ENV
    script:
        "../scripts/summary.py"


rule tables:
    input:
        summary=SUMMARY,
    output:
        md=report(
            f"{RESULTS}/tables/nll_{{dataset}}.md",
            caption="../report/table_nll.rst",
            category="Tables",
        ),
        csv=f"{RESULTS}/tables/nll_{{dataset}}.csv",
        tex=f"{RESULTS}/tables/nll_{{dataset}}.tex",
    log:
        f"{RESULTS}/logs/tables/nll_{{dataset}}.log",
    conda:
        ENV
    params:
        published=config["report"]["published_dir"],
    script:
        "../scripts/tables.py"


rule figures:
    input:
        summary=SUMMARY,
    output:
        png=report(
            f"{RESULTS}/figures/nll_vs_prune_ratio.png",
            caption="../report/nll_vs_prune_ratio.rst",
            category="Figures",
        ),
        pdf=f"{RESULTS}/figures/nll_vs_prune_ratio.pdf",
    log:
        f"{RESULTS}/logs/figures/nll_vs_prune_ratio.log",
    conda:
        ENV
    script:
        "../scripts/figures.py"
