"""Experiments as configured: dataset × model × training × pruning × seeds.

Turns one validated experiment entry of the workflow configuration (see ``config/README.md``)
into the library's typed configurations, expands ``sweep`` entries into the product of their
values (the ablations of Sparse Flows §S7), and gives each experiment a stable hash.

Example::

    exps = expand_experiments(config["experiments"])
    flow_cfg = flow_config(exps["gaussians"], dim=2)
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from typing import Any

from pipeline_lib.flows import FlowConfig, SolverConfig
from pipeline_lib.sparse_flow import PruneConfig
from pipeline_lib.training import TrainConfig

__all__ = [
    "check_experiment",
    "config_hash",
    "data_id",
    "describe_validation_error",
    "expand_experiments",
    "flow_config",
    "prune_config",
    "round_count",
    "train_config",
    "training_settings",
]

#: Settings that cannot change a trained model: what the evaluation of a checkpoint measures
#: (samples, Hessian) and how often training logs and validates (the last epoch is always
#: validated, so the round's validation NLL does not depend on it).
NOT_TRAINING = {"evaluation": ("samples", "hessian"), "train": ("log_every", "val_every")}


def _slug(value: Any) -> str:
    text = json.dumps(value, separators=(",", ":")) if not isinstance(value, str) else value
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_") or "x"


def expand_experiments(experiments: dict[str, dict]) -> dict[str, dict]:
    """Expand each experiment's ``sweep`` ({"section.key": [values]}) into one experiment per
    combination, named ``<name>__<key>-<value>[__...]``; experiments without a sweep pass through.
    """
    out: dict[str, dict] = {}
    for name, exp in experiments.items():
        sweep = exp.get("sweep") or {}
        base = {k: v for k, v in exp.items() if k != "sweep"}
        if not sweep:
            out[name] = copy.deepcopy(base)
            continue
        keys = list(sweep)
        for combo in itertools.product(*(sweep[k] for k in keys)):
            e = copy.deepcopy(base)
            parts = []
            for key, value in zip(keys, combo, strict=True):
                section, field = key.split(".", 1)
                e.setdefault(section, {})
                if e[section] is None:
                    e[section] = {}
                e[section][field] = copy.deepcopy(value)
                parts.append(f"{field}-{_slug(value)}")
            out[f"{name}__{'__'.join(parts)}"] = e
    return out


def training_settings(exp: dict) -> dict:
    """The experiment without the settings of :data:`NOT_TRAINING`: the parameters of the
    training jobs, so that editing them re-evaluates checkpoints instead of retraining."""
    out = copy.deepcopy(exp)
    for section, keys in NOT_TRAINING.items():
        if isinstance(out.get(section), dict):
            for key in keys:
                out[section].pop(key, None)
    return out


def config_hash(exp: dict) -> str:
    """Short stable hash of an experiment's settings (seeds excluded)."""
    payload = {k: v for k, v in exp.items() if k not in ("seeds", "sweep")}
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def data_id(exp: dict) -> str:
    """Name of the data directory: the dataset, plus a hash of toy-generator settings if any."""
    data = {k: v for k, v in (exp.get("data") or {}).items() if v is not None and k != "seed"}
    seed = (exp.get("data") or {}).get("seed", 0) or 0
    if not data and seed == 0:
        return exp["dataset"]
    digest = hashlib.sha1(json.dumps([data, seed], sort_keys=True).encode()).hexdigest()[:8]
    return f"{exp['dataset']}-{digest}"


def flow_config(exp: dict, dim: int) -> FlowConfig:
    """The flow architecture and training solver of an experiment."""
    model = dict(exp.get("model") or {})
    return FlowConfig.from_dict({**model, "dim": dim, "solver": dict(exp.get("solver") or {})})


def train_config(exp: dict, seed: int, device: str = "auto") -> TrainConfig:
    """Training hyperparameters (Tables S1–S3) with the evaluation settings used for validation."""
    ev = exp.get("evaluation") or {}
    solver = ev.get("solver")
    return TrainConfig(
        **dict(exp.get("train") or {}),
        eval_batch_size=ev.get("batch_size", 10_000),
        eval_solver=SolverConfig(**solver) if solver else None,
        eval_trace=ev.get("trace"),
        device=device,
        seed=seed,
    )


def prune_config(exp: dict, method: str) -> PruneConfig:
    """Pruning settings of an experiment for one method."""
    p = {k: v for k, v in (exp.get("prune") or {}).items() if k != "methods"}
    return PruneConfig(method=method, **p)


def round_count(exp: dict) -> int:
    """Number of prune rounds R the experiment asks for."""
    return len(prune_config(exp, "unstructured").keep_ratios())


def describe_validation_error(err: BaseException) -> str:
    """Turn a schema validation failure into one line naming the key, the problem and the fix."""
    inner = err
    while inner is not None and not hasattr(inner, "absolute_path"):
        inner = inner.__cause__ or inner.__context__
    if inner is None:
        return f"invalid configuration: {err}"
    key = ".".join(str(p) for p in inner.absolute_path) or "<top level>"
    message = inner.message
    if inner.validator == "additionalProperties":
        fix = "remove or correct the key (see config/README.md for every valid key)"
    elif inner.validator == "enum":
        fix = f"use one of {inner.validator_value}"
    else:
        fix = "see config/README.md for the allowed values"
    return f"invalid configuration at '{key}': {message}; {fix}"


def check_experiment(name: str, exp: dict) -> None:
    """Build every typed configuration of an experiment so that inconsistent settings (e.g. a
    fixed-grid solver without a step size) fail at start-up, naming the experiment."""
    try:
        flow_config(exp, dim=2)
        train_config(exp, seed=0)
        for method in (exp.get("prune") or {}).get("methods", ["unstructured"]):
            prune_config(exp, method).keep_ratios()
    except (TypeError, ValueError) as err:
        raise ValueError(f"invalid configuration of experiments.{name}: {err}") from None
