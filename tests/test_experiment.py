"""Experiments as configured: what the jobs of a chain see (pipeline_lib.experiment)."""

from __future__ import annotations


def test_training_settings_leave_out_evaluation_only_keys():
    from pipeline_lib.experiment import training_settings

    exp = {
        "dataset": "gaussians",
        "seeds": [0, 1],
        "train": {"lr": 1e-3, "val_every": 5, "log_every": 0},
        "evaluation": {"trace": "exact", "solver": None, "hessian": {"power_iters": 3}},
        "prune": {"methods": ["structured"], "schedule": "paper_toy"},
    }
    tracked = training_settings(exp)
    # the lists of seeds and methods are wildcards: adding a seed retrains no finished seed
    assert tracked == {
        "dataset": "gaussians",
        "train": {"lr": 1e-3},
        "evaluation": {"trace": "exact", "solver": None},
        "prune": {"schedule": "paper_toy"},
    }
    assert exp["train"]["val_every"] == 5  # the input is not modified
