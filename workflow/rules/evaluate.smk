# Evaluation of every checkpoint, one job per metric, each with only its own settings as
# parameters (editing evaluation.hessian re-runs only the Hessian jobs): test NLL (Tables 2-3,
# S4-S10; a classifier's cross-entropy and accuracy), good-quality samples with the density /
# vector-field snapshot of 2-D flows (4.4, Figs. 5-6), the Hessian eigen-analysis (4.5,
# Table 5), and a classifier's decision-boundary robustness with its Fig. 9 arrays (4.6).
# Metrics that are disabled or do not apply to the model family are not requested.


rule evaluate_nll:
    input:
        data=experiment_data,
        model=LAYOUT.checkpoint("model.pt"),
        record=LAYOUT.checkpoint("round.json"),
    output:
        **LAYOUT.metric("nll"),
    log:
        LAYOUT.log("{experiment}/seed{seed}/{path}/evaluate_nll"),
    benchmark:
        LAYOUT.benchmark("{experiment}/seed{seed}/{path}/evaluate_nll")
    wildcard_constraints:
        path=CHECKPOINT_PATH,
    conda:
        ENV
    threads: COMPUTE["threads"]
    resources:
        gpu=GPU,
        runtime=COMPUTE["runtime_minutes"],
        mem_mb=COMPUTE["mem_mb"],
    params:
        metric="nll",
        exp=metric_params("nll"),
        device=COMPUTE["device"],
    script:
        "../scripts/evaluate.py"


use rule evaluate_nll as evaluate_samples with:
    output:
        **LAYOUT.metric("samples"),
    log:
        LAYOUT.log("{experiment}/seed{seed}/{path}/evaluate_samples"),
    benchmark:
        LAYOUT.benchmark("{experiment}/seed{seed}/{path}/evaluate_samples")
    params:
        metric="samples",
        exp=metric_params("samples"),
        device=COMPUTE["device"],


use rule evaluate_nll as evaluate_hessian with:
    output:
        **LAYOUT.metric("hessian"),
    log:
        LAYOUT.log("{experiment}/seed{seed}/{path}/evaluate_hessian"),
    benchmark:
        LAYOUT.benchmark("{experiment}/seed{seed}/{path}/evaluate_hessian")
    params:
        metric="hessian",
        exp=metric_params("hessian"),
        device=COMPUTE["device"],


use rule evaluate_nll as evaluate_robustness with:
    output:
        **LAYOUT.metric("robustness"),
    log:
        LAYOUT.log("{experiment}/seed{seed}/{path}/evaluate_robustness"),
    benchmark:
        LAYOUT.benchmark("{experiment}/seed{seed}/{path}/evaluate_robustness")
    params:
        metric="robustness",
        exp=metric_params("robustness"),
        device=COMPUTE["device"],
