"""Evaluation of flows: test NLL (and, per the paper's §4.4–4.5, further metrics)."""

from pipeline_lib.evaluation.nll import NLLResult, evaluate_nll

__all__ = ["NLLResult", "evaluate_nll"]
