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


# -- one typed experiment -----------------------------------------------------------------------

#: Fields of the library's configurations that the workflow sets per job (or that have no
#: configuration key), and keys of the schema that are not a field of the section's class.
RUNTIME_ONLY = {
    "FlowConfig": {"dim", "solver"},
    "TrainConfig": {
        "eval_batch_size",
        "eval_solver",
        "eval_trace",
        "device",
        "seed",
        "cuda_graphs",
    },
    "HessianConfig": {"seed", "noise_seed", "solver", "reuse_graph", "params"},
    "PruneConfig": {"method"},
    "ClassifierConfig": {"dim", "solver"},
    # alpha is the released logit transform's; hflip follows the data set (CIFAR-10)
    "MultiscaleConfig": {"dim", "solver", "alpha", "hflip"},
}
#: Keys the schema fills no default for (so that the settings hash of an experiment that leaves
#: them out does not depend on them); their dataclass default is None.
UNFILLED = {"DataConfig": {"subset"}}
SCHEMA_ONLY = {
    "FlowConfig": {"family"},
    "PruneConfig": {"methods"},
    # the model section holds the keys of every family (each keeps the others' defaults)
    "ClassifierConfig": {"family", "num_blocks", "layer_type", "train_T", "trace", "noise"},
    "MultiscaleConfig": {"family", "layer_type"},
}


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def test_every_schema_default_is_the_dataclass_default():
    """Defaults live in the dataclasses; the schema repeats them for Snakemake, and a test
    (this one) fails as soon as the two disagree or a key exists on one side only."""
    import dataclasses
    from dataclasses import MISSING, fields

    import yaml

    from pipeline_lib.classifier import ClassifierConfig
    from pipeline_lib.evaluation.hessian import HessianConfig
    from pipeline_lib.evaluation.robustness import RobustnessConfig
    from pipeline_lib.experiment import (
        SCHEMA,
        DataConfig,
        EvaluationConfig,
        SamplesConfig,
    )
    from pipeline_lib.flows import FlowConfig, SolverConfig
    from pipeline_lib.flows.multiscale import MultiscaleConfig
    from pipeline_lib.sparse_flow import PruneConfig
    from pipeline_lib.training import TrainConfig

    schema = yaml.safe_load(SCHEMA.read_text())
    props = schema["$defs"]["experiment"]["properties"]
    evaluation = props["evaluation"]["properties"]
    sections = {
        DataConfig: props["data"]["properties"],
        FlowConfig: props["model"]["properties"],
        SolverConfig: schema["$defs"]["solver"]["properties"],
        TrainConfig: props["train"]["properties"],
        EvaluationConfig: evaluation,
        SamplesConfig: evaluation["samples"]["properties"],
        HessianConfig: evaluation["hessian"]["properties"],
        RobustnessConfig: evaluation["robustness"]["properties"],
        ClassifierConfig: props["model"]["properties"],
        MultiscaleConfig: props["model"]["properties"],
        PruneConfig: props["prune"]["properties"],
    }
    for cls, entries in sections.items():
        name = cls.__name__
        own = {f.name: f for f in fields(cls)}
        keys = set(own) - RUNTIME_ONLY.get(name, set())
        assert set(entries) - SCHEMA_ONLY.get(name, set()) == keys, name
        for key in keys:
            f = own[key]
            default = f.default if f.default is not MISSING else f.default_factory()
            if dataclasses.is_dataclass(default):  # a nested section: compared on its own
                # filled in as {} (or, as robustness, left out so existing hashes hold)
                assert entries[key].get("default", {}) == {}, f"{name}.{key}"
                continue
            if "default" not in entries[key]:
                assert key in UNFILLED.get(name, set()) and default is None, f"{name}.{key}"
                continue
            assert entries[key]["default"] == _plain(default), f"{name}.{key}"


def test_load_experiments_builds_one_frozen_typed_experiment():
    import dataclasses

    import pytest

    from pipeline_lib.experiment import Experiment, load_experiments
    from pipeline_lib.flows import FlowConfig

    config = {
        "experiments": {
            "g": {
                "dataset": "gaussians",
                "seeds": [0, 2],
                "model": {"hidden_dims": [16], "layer_type": "mlp"},
                "train": {"epochs": 3, "val_every": 2},
                "prune": {"methods": ["structured"], "schedule": "paper_toy"},
                "sweep": {"train.lr": [0.01, 0.02]},
            }
        }
    }
    exps = load_experiments(config)
    assert sorted(exps) == ["g__lr-0.01", "g__lr-0.02"]
    assert config["results"] == "results"  # the schema's defaults are filled in
    exp = exps["g__lr-0.02"]
    assert isinstance(exp.model, FlowConfig) and exp.model.hidden_dims == (16,)
    assert exp.family == "ffjord" and exp.train.lr == 0.02 and exp.seeds == (0, 2)
    assert exp.rounds == 29 and exp.methods == ("structured",) and exp.data_id == "gaussians"
    assert exp.model_config(2).dim == 2 and exp.train_config(seed=2).seed == 2
    assert exp.runs()[:2] == [(None, 0, 0), ("structured", 0, 1)] and len(exp.runs()) == 60
    # a job rebuilds the same experiment from its params
    assert Experiment.from_dict(exp.name, exp.to_dict()) == exp
    # the rerun key leaves out what cannot change the model, and the lists of seeds / methods
    assert "val_every" not in exp.rerun_key["train"] and "seeds" not in exp.rerun_key
    assert "sweep" not in exp.rerun_key  # the sweep is in the settings it generated
    assert exps["g__lr-0.01"].rerun_hash != exp.rerun_hash
    with pytest.raises(dataclasses.FrozenInstanceError):
        exp.train.lr = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError, match=r"'experiments\.g\.model\.family'.*'ffjord'"):
        load_experiments({"experiments": {"g": {"dataset": "gaussians", "model": {"family": "x"}}}})


#: The first ablation experiment and its rerun hash, as computed before the typed experiment.
PINNED_SWEPT = ("activation__activation-elu", "cdcb405afe0f")


def test_settings_hashes_of_the_default_study_are_stable():
    """Refactors must not change what a study's settings hash to: the rerun key decides which
    training jobs rerun and which in-flight training states resume (values of this release)."""
    import yaml

    from pipeline_lib.experiment import SCHEMA, load_experiments

    config = yaml.safe_load((SCHEMA.parents[2] / "config" / "config.yaml").read_text())
    exp = load_experiments(config)["gaussians"]
    assert (exp.config_hash, exp.rerun_hash) == ("37e45c55160e", "26bbef1b766f")
    ablation = yaml.safe_load((SCHEMA.parents[2] / "config/paper/ablation.yaml").read_text())
    swept = load_experiments(ablation)
    name = sorted(swept)[0]
    assert (name, swept[name].rerun_hash) == PINNED_SWEPT


def test_nested_errors_name_their_key_once():
    import pytest

    from pipeline_lib.experiment import load_experiments

    bad = {"dataset": "gaussians", "evaluation": {"solver": {"method": "rk4"}}}
    with pytest.raises(ValueError) as err:
        load_experiments({"experiments": {"x": bad}})
    assert str(err.value).count("invalid configuration") == 1
    assert "'experiments.x.evaluation.solver'" in str(err.value)


def test_a_classifier_experiment_is_a_model_family():
    """The §4.6 classifier: its own model keys, its metrics, labelled data required."""
    import pytest

    from pipeline_lib.classifier import ClassifierConfig
    from pipeline_lib.experiment import load_experiments

    entry = {
        "dataset": "moons",
        "model": {"family": "classifier", "hidden_dims": [128], "activation": "tanh"},
        "solver": {"method": "dopri5", "rtol": 1e-4, "atol": 1e-4, "adjoint": True},
        "evaluation": {"robustness": {"sigmas": [0.1]}},
    }
    exp = load_experiments({"experiments": {"m": entry}})["m"]
    assert exp.family == "classifier" and isinstance(exp.model, ClassifierConfig)
    cfg = exp.model_config(2)
    assert cfg.hidden_dims == (128,) and cfg.solver.adjoint and cfg.dim == 2
    assert [m for m in ("nll", "samples", "hessian", "robustness") if exp.evaluates(m)] == [
        "nll",
        "hessian",
        "robustness",
    ]
    assert exp.evaluation.robustness.sigmas == (0.1,)
    assert exp.metric_settings("robustness")["evaluation"]["robustness"]["sigmas"] == [0.1]
    # robustness settings never retrain; an experiment without them keeps its hash
    assert "robustness" not in exp.rerun_key["evaluation"]
    flow = load_experiments({"experiments": {"g": {"dataset": "gaussians"}}})["g"]
    assert "robustness" not in flow.spec["evaluation"] and not flow.evaluates("robustness")
    bad = {**entry, "model": {**entry["model"], "layer_type": "concat"}}
    with pytest.raises(ValueError, match=r"'experiments\.m\.model\.layer_type'.*classifier"):
        load_experiments({"experiments": {"m": bad}})
    for dataset in ("power", "gaussians"):  # no labels; six classes for two logits
        with pytest.raises(ValueError, match=r"'experiments\.m\.dataset'.*two-class"):
            load_experiments({"experiments": {"m": {**entry, "dataset": dataset}}})
