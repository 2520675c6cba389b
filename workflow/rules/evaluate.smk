# Evaluation of every checkpoint, one job per metric, each with only its own settings as
# parameters (editing evaluation.hessian re-runs only the Hessian jobs): test NLL (Tables 2-3,
# S4-S10), good-quality samples with the density / vector-field snapshot of 2-D flows (4.4,
# Figs. 5-6), and the Hessian eigen-analysis (4.5, Table 5). Disabled metrics are not requested.


rule evaluate_nll:
    input:
        data=experiment_data,
        model=f"{RESULTS}/{{experiment}}/seed{{seed}}/{{path}}/model.pt",
        record=f"{RESULTS}/{{experiment}}/seed{{seed}}/{{path}}/round.json",
    output:
        nll=f"{RESULTS}/{{experiment}}/seed{{seed}}/{{path}}/metrics/nll.json",
    log:
        f"{RESULTS}/logs/{{experiment}}/seed{{seed}}/{{path}}/evaluate_nll.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{experiment}}/seed{{seed}}/{{path}}/evaluate_nll.tsv"
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
        samples=f"{RESULTS}/{{experiment}}/seed{{seed}}/{{path}}/metrics/samples.json",
        snapshot=f"{RESULTS}/{{experiment}}/seed{{seed}}/{{path}}/metrics/snapshot.npz",
    log:
        f"{RESULTS}/logs/{{experiment}}/seed{{seed}}/{{path}}/evaluate_samples.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{experiment}}/seed{{seed}}/{{path}}/evaluate_samples.tsv"
    params:
        metric="samples",
        exp=metric_params("samples"),
        device=COMPUTE["device"],


use rule evaluate_nll as evaluate_hessian with:
    output:
        hessian=f"{RESULTS}/{{experiment}}/seed{{seed}}/{{path}}/metrics/hessian.json",
    log:
        f"{RESULTS}/logs/{{experiment}}/seed{{seed}}/{{path}}/evaluate_hessian.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{experiment}}/seed{{seed}}/{{path}}/evaluate_hessian.tsv"
    params:
        metric="hessian",
        exp=metric_params("hessian"),
        device=COMPUTE["device"],
