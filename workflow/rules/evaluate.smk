# Evaluation of every checkpoint: test NLL (Sparse Flows §4, Tables 2-3, S4-S10).


rule evaluate_nll:
    input:
        data=experiment_data,
        model=f"{RESULTS}/{{experiment}}/seed{{seed}}/{{path}}/model.pt",
        record=f"{RESULTS}/{{experiment}}/seed{{seed}}/{{path}}/round.json",
    output:
        f"{RESULTS}/{{experiment}}/seed{{seed}}/{{path}}/metrics/nll.json",
    log:
        f"{RESULTS}/logs/{{experiment}}/seed{{seed}}/{{path}}/evaluate_nll.log",
    wildcard_constraints:
        path="round000|(unstructured|structured)/round[0-9]{3}",
    conda:
        ENV
    threads: COMPUTE["threads"]
    resources:
        gpu=GPU,
        runtime=COMPUTE["runtime_minutes"],
        mem_mb=COMPUTE["mem_mb"],
    params:
        exp=experiment_params,
        device=COMPUTE["device"],
    script:
        "../scripts/evaluate_nll.py"
