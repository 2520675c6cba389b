# Dense warm start: round 0 of Algorithm 1 (Sparse Flows §3.2, line 2).


rule train_dense:
    input:
        data=experiment_data,
    output:
        model=LAYOUT.dense("model.pt"),
        record=LAYOUT.dense("round.json"),
    log:
        LAYOUT.log("{experiment}/seed{seed}/round000"),
    benchmark:
        LAYOUT.benchmark("{experiment}/seed{seed}/round000")
    conda:
        ENV
    threads: COMPUTE["threads"]
    resources:
        gpu=GPU,
        runtime=COMPUTE["runtime_minutes"],
        mem_mb=COMPUTE["mem_mb"],
    params:
        key=training_key,
        exp=experiment_spec,
        device=COMPUTE["device"],
    script:
        "../scripts/train_round.py"
