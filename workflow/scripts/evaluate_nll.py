"""Rule evaluate_nll: test NLL of one checkpoint."""

from _runtime import torch_job

from pipeline_lib.stages import evaluate_round

smk = snakemake  # noqa: F821
with torch_job(smk) as (log, device):
    evaluate_round(
        smk.params.exp,
        data_dir=smk.input.data,
        model_path=smk.input.model,
        record_path=smk.input.record,
        out_json=smk.output[0],
        device=device,
        seed=int(smk.wildcards.seed),
    )
