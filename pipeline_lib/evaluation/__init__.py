"""Evaluation of flows: test NLL (Sparse Flows §4), good-quality samples (§4.4), Hessian
eigen-analysis (§4.5) and the density / vector-field snapshot of 2-D flows (Figs. 5–6); and of
classifiers: the robustness of the decision boundary (§4.6)."""

from pipeline_lib.evaluation.density import FieldSnapshot, flow_snapshot
from pipeline_lib.evaluation.hessian import HessianConfig, HessianOperator, hessian_metrics
from pipeline_lib.evaluation.modes import Modes, evaluate_modes, fit_modes, good_sample_fraction
from pipeline_lib.evaluation.nll import NLLResult, evaluate_nll
from pipeline_lib.evaluation.robustness import (
    boundary_distances,
    distance_summary,
    noise_accuracy,
)

__all__ = [
    "FieldSnapshot",
    "HessianConfig",
    "HessianOperator",
    "Modes",
    "NLLResult",
    "boundary_distances",
    "distance_summary",
    "evaluate_modes",
    "evaluate_nll",
    "fit_modes",
    "flow_snapshot",
    "good_sample_fraction",
    "hessian_metrics",
    "noise_accuracy",
]
