"""Rules train_dense and prune_round: one round of Algorithm 1."""

from _runtime import torch_job

from pipeline_lib.experiment import Experiment
from pipeline_lib.stages import train_round

smk = snakemake  # noqa: F821
with torch_job(smk) as (log, device):
    # params.exp is the whole experiment (logging and validation frequency included);
    # params.key, what shapes the model, is the parameter that decides reruns
    exp = Experiment.from_dict(smk.wildcards.experiment, smk.params.exp)
    train_round(
        exp,
        seed=int(smk.wildcards.seed),
        method=smk.wildcards.get("method"),
        round_index=int(smk.wildcards.get("round", 0)),
        data_dir=smk.input.data,
        out_model=smk.output.model,
        out_record=smk.output.record,
        prev_model=smk.input.get("model"),
        prev_record=smk.input.get("record"),
        device=device,
    )
