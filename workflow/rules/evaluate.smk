# Evaluation of every checkpoint, one job each: test NLL (Tables 2-3, S4-S10), good-quality
# samples and the density / vector-field snapshot of 2-D flows (4.4, Figs. 5-6), and the Hessian
# eigen-analysis (4.5, Table 5). Parts that are disabled or do not apply write a placeholder.


rule evaluate:
    input:
        data=experiment_data,
        model=f"{RESULTS}/{{experiment}}/seed{{seed}}/{{path}}/model.pt",
        record=f"{RESULTS}/{{experiment}}/seed{{seed}}/{{path}}/round.json",
    output:
        nll=f"{RESULTS}/{{experiment}}/seed{{seed}}/{{path}}/metrics/nll.json",
        samples=f"{RESULTS}/{{experiment}}/seed{{seed}}/{{path}}/metrics/samples.json",
        snapshot=f"{RESULTS}/{{experiment}}/seed{{seed}}/{{path}}/metrics/snapshot.npz",
        hessian=f"{RESULTS}/{{experiment}}/seed{{seed}}/{{path}}/metrics/hessian.json",
    log:
        f"{RESULTS}/logs/{{experiment}}/seed{{seed}}/{{path}}/evaluate.log",
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
        "../scripts/evaluate.py"
