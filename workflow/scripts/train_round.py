"""Rules train_dense and prune_round: one round of Algorithm 1."""

from _runtime import torch_job

from pipeline_lib.experiment import expand_experiments
from pipeline_lib.stages import train_round

smk = snakemake  # noqa: F821
with torch_job(smk) as (log, device):
    method = smk.wildcards.get("method")
    # params.exp (what shapes the model) decides reruns; the job runs with the whole experiment,
    # logging and validation frequency included, read from the config
    train_round(
        expand_experiments(smk.config["experiments"])[smk.wildcards.experiment],
        experiment=smk.wildcards.experiment,
        seed=int(smk.wildcards.seed),
        method=method,
        round_index=int(smk.wildcards.get("round", 0)),
        data_dir=smk.input.data,
        out_model=smk.output.model,
        out_record=smk.output.record,
        prev_model=smk.input.get("model"),
        prev_record=smk.input.get("record"),
        device=device,
    )
