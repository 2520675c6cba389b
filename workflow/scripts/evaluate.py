"""Rules evaluate_nll, evaluate_samples, evaluate_hessian, evaluate_robustness: one metric of
one checkpoint."""

from _runtime import torch_job

from pipeline_lib.experiment import EvaluationConfig
from pipeline_lib.stages import evaluate_metric

smk = snakemake  # noqa: F821
settings = smk.params.exp  # the metric's settings only (Experiment.metric_settings)
with torch_job(smk) as (log, device):
    evaluate_metric(
        smk.params.metric,
        EvaluationConfig.from_dict(settings["evaluation"]),
        dataset=settings.get("dataset", ""),
        data_dir=smk.input.data,
        model_path=smk.input.model,
        record_path=smk.input.record,
        out=dict(smk.output.items()),
        device=device,
        seed=int(smk.wildcards.seed),
    )
