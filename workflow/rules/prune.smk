# Prune / retrain rounds r = 1..R with learning-rate rewinding (Algorithm 1, lines 4-7).
# Round r reads round r-1; rounds after an early stop are pass-throughs that cost nothing.


rule prune_round:
    input:
        unpack(previous_round),
        data=experiment_data,
    output:
        model=LAYOUT.pruned("model.pt"),
        record=LAYOUT.pruned("round.json"),
    log:
        LAYOUT.log("{experiment}/seed{seed}/{method}/round{round}"),
    benchmark:
        LAYOUT.benchmark("{experiment}/seed{seed}/{method}/round{round}")
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
