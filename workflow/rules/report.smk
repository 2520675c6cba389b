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
    classifier_table,
    decision_boundaries,
    sample_grids,


rule aggregate_experiment:
    input:
        experiment_records,
    output:
        LAYOUT.experiment_summary("{experiment}"),
    log:
        LAYOUT.log("{experiment}/aggregate"),
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
        LAYOUT.log("summary"),
    conda:
        ENV
    script:
        "../scripts/summary.py"


rule nll_table:
    input:
        summary=SUMMARY,
    output:
        md=report(
            LAYOUT.table("nll_{dataset}"),
            caption="../report/table_nll.rst",
            category="Tables",
        ),
        csv=LAYOUT.table("nll_{dataset}", "csv"),
        tex=LAYOUT.table("nll_{dataset}", "tex"),
    log:
        LAYOUT.log("tables/nll_{dataset}"),
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
            LAYOUT.figure("nll_vs_prune_ratio"),
            caption="../report/nll_vs_prune_ratio.rst",
            category="Figures",
        ),
        pdf=LAYOUT.figure("nll_vs_prune_ratio", "pdf"),
    log:
        LAYOUT.log("figures/nll_vs_prune_ratio"),
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
            LAYOUT.table("good_samples"),
            caption="../report/table_good_samples.rst",
            category="Tables",
        ),
        csv=LAYOUT.table("good_samples", "csv"),
        tex=LAYOUT.table("good_samples", "tex"),
    log:
        LAYOUT.log("tables/good_samples"),
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
            LAYOUT.table("hessian"),
            caption="../report/table_hessian.rst",
            category="Tables",
        ),
        csv=LAYOUT.table("hessian", "csv"),
        tex=LAYOUT.table("hessian", "tex"),
    log:
        LAYOUT.log("tables/hessian"),
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
            LAYOUT.figure("density_grid"),
            caption="../report/density_grid.rst",
            category="Figures",
        ),
        grid_pdf=LAYOUT.figure("density_grid", "pdf"),
        field=report(
            LAYOUT.figure("vector_field"),
            caption="../report/vector_field.rst",
            category="Figures",
        ),
        field_pdf=LAYOUT.figure("vector_field", "pdf"),
    log:
        LAYOUT.log("figures/density_figures"),
    conda:
        ENV
    script:
        "../scripts/density_figures.py"


rule metric_figures:
    input:
        summary=SUMMARY,
    output:
        png=report(
            LAYOUT.figure("{metric}_vs_prune_ratio"),
            caption="../report/metric_vs_prune_ratio.rst",
            category="Figures",
        ),
        pdf=LAYOUT.figure("{metric}_vs_prune_ratio", "pdf"),
    log:
        LAYOUT.log("figures/{metric}_vs_prune_ratio"),
    wildcard_constraints:
        metric="hessian|good_samples|classifier",
    conda:
        ENV
    params:
        published=config["report"]["published_dir"],
    script:
        "../scripts/metric_figures.py"


rule classifier_table:
    input:
        summary=SUMMARY,
    output:
        md=report(
            LAYOUT.table("classifier"),
            caption="../report/table_classifier.rst",
            category="Tables",
        ),
        csv=LAYOUT.table("classifier", "csv"),
        tex=LAYOUT.table("classifier", "tex"),
    log:
        LAYOUT.log("tables/classifier"),
    conda:
        ENV
    script:
        "../scripts/classifier_table.py"


rule decision_boundaries:
    input:
        summary=SUMMARY,
        boundaries=boundaries,
    output:
        png=report(
            LAYOUT.figure("decision_boundaries"),
            caption="../report/decision_boundaries.rst",
            category="Figures",
        ),
        pdf=LAYOUT.figure("decision_boundaries", "pdf"),
    log:
        LAYOUT.log("figures/decision_boundaries"),
    conda:
        ENV
    params:
        prune_ratios=config["report"]["boundary_prune_ratios"],
    script:
        "../scripts/decision_boundaries.py"


rule sample_grids:
    input:
        summary=SUMMARY,
        snapshots=snapshots,
    output:
        png=report(
            LAYOUT.figure("sample_grids"),
            caption="../report/sample_grids.rst",
            category="Figures",
        ),
        pdf=LAYOUT.figure("sample_grids", "pdf"),
    log:
        LAYOUT.log("figures/sample_grids"),
    conda:
        ENV
    script:
        "../scripts/sample_grids.py"
