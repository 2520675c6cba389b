"""Rule evaluate: test NLL, good samples / snapshot and Hessian metrics of one checkpoint."""

from _runtime import torch_job

from pipeline_lib.stages import evaluate_checkpoint

smk = snakemake  # noqa: F821
with torch_job(smk) as (log, device):
    evaluate_checkpoint(
        smk.params.exp,
        data_dir=smk.input.data,
        model_path=smk.input.model,
        record_path=smk.input.record,
        out=dict(smk.output.items()),
        device=device,
        seed=int(smk.wildcards.seed),
    )
