# Aggregation, tables and figures. Cheap rules: they run on the submit host, and editing a
# table or plot reruns only these (training outputs are upstream).


localrules:
    aggregate_experiment,
    summary,
    nll_table,
    nll_figure,
    good_samples_table,
    hessian_table,
    density_figures,
    metric_figures,


rule aggregate_experiment:
    input:
        experiment_records,
    output:
        f"{RESULTS}/{{experiment}}/summary.parquet",
    log:
        f"{RESULTS}/logs/{{experiment}}/aggregate.log",
    conda:
        ENV
    params:
        divergence_nats=lambda w: EXPERIMENTS[w.experiment].train.divergence_nats,
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


rule nll_table:
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
        "../scripts/nll_table.py"


rule nll_figure:
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
    params:
        published=config["report"]["published_dir"],
    script:
        "../scripts/nll_figure.py"


rule good_samples_table:
    input:
        summary=SUMMARY,
    output:
        md=report(
            f"{RESULTS}/tables/good_samples.md",
            caption="../report/table_good_samples.rst",
            category="Tables",
        ),
        csv=f"{RESULTS}/tables/good_samples.csv",
        tex=f"{RESULTS}/tables/good_samples.tex",
    log:
        f"{RESULTS}/logs/tables/good_samples.log",
    conda:
        ENV
    params:
        published=config["report"]["published_dir"],
    script:
        "../scripts/good_samples_table.py"


rule hessian_table:
    input:
        summary=SUMMARY,
    output:
        md=report(
            f"{RESULTS}/tables/hessian.md",
            caption="../report/table_hessian.rst",
            category="Tables",
        ),
        csv=f"{RESULTS}/tables/hessian.csv",
        tex=f"{RESULTS}/tables/hessian.tex",
    log:
        f"{RESULTS}/logs/tables/hessian.log",
    conda:
        ENV
    params:
        published=config["report"]["published_dir"],
    script:
        "../scripts/hessian_table.py"


rule density_figures:
    input:
        summary=SUMMARY,
        snapshots=snapshots,
    output:
        grid=report(
            f"{RESULTS}/figures/density_grid.png",
            caption="../report/density_grid.rst",
            category="Figures",
        ),
        grid_pdf=f"{RESULTS}/figures/density_grid.pdf",
        field=report(
            f"{RESULTS}/figures/vector_field.png",
            caption="../report/vector_field.rst",
            category="Figures",
        ),
        field_pdf=f"{RESULTS}/figures/vector_field.pdf",
    log:
        f"{RESULTS}/logs/figures/density_figures.log",
    conda:
        ENV
    script:
        "../scripts/density_figures.py"


rule metric_figures:
    input:
        summary=SUMMARY,
    output:
        png=report(
            f"{RESULTS}/figures/{{metric}}_vs_prune_ratio.png",
            caption="../report/metric_vs_prune_ratio.rst",
            category="Figures",
        ),
        pdf=f"{RESULTS}/figures/{{metric}}_vs_prune_ratio.pdf",
    log:
        f"{RESULTS}/logs/figures/{{metric}}_vs_prune_ratio.log",
    wildcard_constraints:
        metric="hessian|good_samples",
    conda:
        ENV
    params:
        published=config["report"]["published_dir"],
    script:
        "../scripts/metric_figures.py"
