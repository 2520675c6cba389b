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
    "METRICS",
    "check_device",
    "check_experiment",
    "check_results_dir",
    "check_yaml_keys",
    "config_hash",
    "data_id",
    "describe_validation_error",
    "expand_experiments",
    "flow_config",
    "metric_settings",
    "per_seed_settings",
    "prune_config",
    "round_count",
    "train_config",
    "training_settings",
]

#: Settings that cannot change a trained model: what the evaluation of a checkpoint measures
#: (samples, Hessian), how often training logs and validates (the last epoch is always
#: validated, so the round's validation NLL does not depend on it) and how a diverged round is
#: reported (the summary recomputes the flag with the current threshold).
NOT_TRAINING = {
    "evaluation": ("samples", "hessian"),
    "train": ("log_every", "val_every", "divergence_nats", "on_divergence"),
}


def _slug(value: Any) -> str:
    text = json.dumps(value, separators=(",", ":")) if not isinstance(value, str) else value
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_") or "x"


def expand_experiments(experiments: dict[str, dict]) -> dict[str, dict]:
    """Expand each experiment's ``sweep`` ({"section.key": [values]}) into one experiment per
    combination, named ``<name>__<key>-<value>[__...]``; experiments without a sweep pass through.

    Raises:
        ValueError: a generated name collides with another experiment's (one of them would be
            lost), naming both.
    """
    out: dict[str, dict] = {}
    origin: dict[str, str] = {}

    def add(new: str, exp: dict, source: str) -> None:
        if new in out:
            raise ValueError(
                f"invalid configuration: experiment name {new!r} is defined twice "
                f"({origin[new]} and {source}); rename one of them (or change the sweep values "
                "so that their names differ)"
            )
        out[new], origin[new] = exp, source

    for name, exp in experiments.items():
        sweep = exp.get("sweep") or {}
        base = {k: v for k, v in exp.items() if k != "sweep"}
        if not sweep:
            add(name, copy.deepcopy(base), f"experiments.{name}")
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
            add(f"{name}__{'__'.join(parts)}", e, f"the sweep of experiments.{name}")
    return out


def per_seed_settings(exp: dict) -> dict:
    """The experiment as one (seed, method) chain of it sees it: without the list of seeds and
    the list of pruning methods, which are wildcards of the jobs. Adding a seed or a method to
    an experiment therefore plans new jobs and leaves the finished ones alone."""
    out = copy.deepcopy(exp)
    out.pop("seeds", None)
    if isinstance(out.get("prune"), dict):
        out["prune"].pop("methods", None)
    return out


def training_settings(exp: dict) -> dict:
    """:func:`per_seed_settings` without the settings of :data:`NOT_TRAINING`: the parameters of
    the training jobs, so that editing them re-evaluates checkpoints instead of retraining."""
    out = per_seed_settings(exp)
    for section, keys in NOT_TRAINING.items():
        if isinstance(out.get(section), dict):
            for key in keys:
                out[section].pop(key, None)
    return out


#: The per-checkpoint metrics, one evaluation job each: test NLL, good samples with the
#: density snapshot (2-D data), and the Hessian eigen-analysis.
METRICS = ("nll", "samples", "hessian")

#: The evaluation settings every metric reads: how the NLL is integrated.
_NLL_SETTINGS = ("trace", "solver", "batch_size")


def metric_settings(exp: dict, metric: str) -> dict:
    """What one metric's evaluation job reads of an experiment, and nothing else: the
    ``evaluation`` keys of the NLL integration, plus the metric's own section (``samples``,
    ``hessian``) and, for samples, the dataset (whether it has Gaussian modes). These are the
    parameters of its job, so that editing e.g. ``evaluation.hessian`` re-runs only the
    Hessian jobs. The model's own settings come with the checkpoint."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose among {list(METRICS)}")
    ev = exp.get("evaluation") or {}
    out: dict[str, Any] = {"evaluation": {k: ev.get(k) for k in _NLL_SETTINGS if k in ev}}
    if metric != "nll":
        out["evaluation"][metric] = copy.deepcopy(ev.get(metric) or {})
    if metric == "samples":
        out["dataset"] = exp["dataset"]
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


def _qualify(message: str, sections: dict[str, str]) -> str:
    """Spell the keys a library message names (``solver.step_size``) as full key paths."""
    for short, full in sections.items():
        message = re.sub(rf"(?<![\w.]){short}\.", f"{full}.", message)
    return message


def check_experiment(name: str, exp: dict) -> None:
    """Build every typed configuration of an experiment so that inconsistent settings (e.g. a
    fixed-grid solver without a step size) fail at start-up; the message names the full key
    path (``experiments.<name>.evaluation.solver.step_size``)."""
    where = f"experiments.{name}"
    ev_solver = (exp.get("evaluation") or {}).get("solver")
    checks = [
        (f"{where}.solver", lambda: SolverConfig(**(exp.get("solver") or {}))),
        (f"{where}.evaluation.solver", lambda: ev_solver and SolverConfig(**ev_solver)),
        (f"{where}.model", lambda: flow_config(exp, dim=2)),
        (f"{where}.train", lambda: train_config(exp, seed=0)),
    ]
    for method in (exp.get("prune") or {}).get("methods", ["unstructured"]):
        checks.append((f"{where}.prune", lambda m=method: prune_config(exp, m).keep_ratios()))
    for key, build in checks:
        try:
            build()
        except (TypeError, ValueError) as err:
            section = key.rsplit(".", 1)[-1]
            message = _qualify(str(err), {section: key})
            raise ValueError(f"invalid configuration at '{key}': {message}") from None


def check_results_dir(results: str) -> None:
    """``results`` must name a directory other than the filesystem root: not empty, not
    ``/``, not an existing file."""
    from pathlib import Path

    if not str(results).strip():
        raise ValueError(
            "invalid configuration at 'results': it is empty; set it to the directory for all "
            "outputs, e.g. results: results"
        )
    path = Path(results)
    if path.resolve() == Path(path.resolve().anchor):
        raise ValueError(
            f"invalid configuration at 'results': {results!r} is the filesystem root; set it "
            "to a directory of its own, e.g. results: results"
        )
    if path.exists() and not path.is_dir():
        raise ValueError(
            f"invalid configuration at 'results': {results!r} is an existing file, not a "
            "directory; choose another path or move the file away"
        )


def check_device(spec: str) -> None:
    """A ``cuda`` device must exist on this machine (the planning host and, again, every job);
    ``auto`` and ``cpu`` always pass."""
    if not spec.startswith("cuda"):
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(spec.split(":")[1]) if ":" in spec else 0
    if index >= count:
        raise ValueError(
            f"invalid configuration at 'compute.device': {spec!r} but this machine has "
            f"{count} CUDA device(s); set compute.device to 'auto' or 'cpu', or run on a GPU "
            "machine"
        )


def check_yaml_keys(paths) -> None:
    """Refuse YAML files that repeat a key in one mapping (a YAML loader keeps the last one
    silently), naming the file, the key path and both lines."""
    import yaml

    def walk(node, where: str, path) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key_node, value_node in node.value:
                key = str(key_node.value)
                full = f"{where}.{key}" if where else key
                if key in seen and key != "<<":
                    raise ValueError(
                        f"invalid configuration at '{full}': the key appears twice in {path} "
                        f"(lines {seen[key] + 1} and {key_node.start_mark.line + 1}) and YAML "
                        "would keep only the last one; remove or rename one of them"
                    )
                seen[key] = key_node.start_mark.line
                walk(value_node, full, path)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, f"{where}[{i}]", path)

    for path in paths:
        with open(path) as handle:
            walk(yaml.compose(handle, Loader=yaml.SafeLoader), "", path)
