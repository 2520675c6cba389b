"""Rules evaluate_nll, evaluate_samples, evaluate_hessian: one metric of one checkpoint."""

from _runtime import torch_job

from pipeline_lib.stages import evaluate_metric

smk = snakemake  # noqa: F821
with torch_job(smk) as (log, device):
    evaluate_metric(
        smk.params.metric,
        smk.params.exp,  # the metric's settings only (experiment.metric_settings)
        data_dir=smk.input.data,
        model_path=smk.input.model,
        record_path=smk.input.record,
        out=dict(smk.output.items()),
        device=device,
        seed=int(smk.wildcards.seed),
    )
