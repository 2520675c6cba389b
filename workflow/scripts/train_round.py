"""Rules train_dense and prune_round: one round of Algorithm 1."""

from _runtime import torch_job

from pipeline_lib.experiment import expand_experiments, with_untracked_settings
from pipeline_lib.stages import train_round

smk = snakemake  # noqa: F821
with torch_job(smk) as (log, device):
    method = smk.wildcards.get("method")
    # params.exp holds what shapes the model; logging / validation frequency come from the config
    full = expand_experiments(smk.config["experiments"])[smk.wildcards.experiment]
    train_round(
        with_untracked_settings(smk.params.exp, full),
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
