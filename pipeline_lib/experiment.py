"""One experiment, typed: dataset × data × model × training × evaluation × pruning × seeds.

:func:`load_experiments` is the only way from a workflow configuration (``config/README.md``)
to experiments: it validates the configuration against the schema (which fills in its
defaults), expands ``sweep`` entries into the product of their values (the ablations of Sparse
Flows §S7) and builds one frozen :class:`Experiment` per name, whose every section is the
library's own typed configuration. Every inconsistent setting fails here, at start-up, with a
message that names the full key path. The Snakefile and every rule script use the same
objects: a job receives its experiment as ``params`` (:meth:`Experiment.to_dict`, rebuilt with
:meth:`Experiment.from_dict`) and never reads the configuration again.

Where each setting lives (its default included) is one dataclass per section:

============================  ====================================================
``data``                      :class:`DataConfig` (toy generator)
``model``                     :data:`~pipeline_lib.families.FAMILIES` by
                              ``model.family``: ``ffjord`` →
                              :class:`~pipeline_lib.flows.FlowConfig`, ``classifier``
                              → :class:`~pipeline_lib.classifier.ClassifierConfig`
``solver``                    :class:`~pipeline_lib.flows.SolverConfig`
``train``                     :class:`~pipeline_lib.training.TrainConfig`
``evaluation``                :class:`EvaluationConfig`, with ``samples``
                              (:class:`SamplesConfig`), ``hessian``
                              (:class:`~pipeline_lib.evaluation.hessian.HessianConfig`)
                              and ``robustness`` (:class:`~pipeline_lib.evaluation.
                              robustness.RobustnessConfig`)
``prune``                     :class:`~pipeline_lib.sparse_flow.PruneConfig` and ``methods``
============================  ====================================================

The schema keeps types, ranges and ``additionalProperties: false``; its defaults equal the
dataclasses' (a test compares them). A model family (:mod:`pipeline_lib.families`) is an
entry of :data:`~pipeline_lib.families.FAMILIES` and of the schema's ``model.family`` enum;
the ``model`` keys that belong to another family must keep their defaults (checked here).

Example::

    exps = load_experiments(config)           # validates, expands, builds
    exp = exps["gaussians"]
    model = build_model(exp.model_config(dim=2))
    exp.rounds, exp.data_id, exp.rerun_key
"""

from __future__ import annotations

import copy
import functools
import hashlib
import itertools
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline_lib.data import IMAGE_DATASETS, TOY_DATASETS
from pipeline_lib.data.toy import CLASSIFICATION_DATASETS
from pipeline_lib.evaluation.hessian import HessianConfig
from pipeline_lib.evaluation.robustness import RobustnessConfig
from pipeline_lib.families import FAMILIES, family_of
from pipeline_lib.flows import SolverConfig
from pipeline_lib.sparse_flow import PruneConfig
from pipeline_lib.training import TrainConfig

__all__ = [
    "METRICS",
    "SCHEMA",
    "DataConfig",
    "EvaluationConfig",
    "Experiment",
    "SamplesConfig",
    "check_device",
    "check_results_dir",
    "check_yaml_keys",
    "describe_validation_error",
    "expand_experiments",
    "load_experiments",
    "training_settings",
]

#: The workflow configuration's schema: types, ranges, defaults (equal to the dataclasses').
SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"

#: The per-checkpoint metrics, one evaluation job each: test NLL (a classifier's: its
#: cross-entropy and accuracy), good samples with the density snapshot (2-D flows), the Hessian
#: eigen-analysis, and the decision-boundary robustness of classifiers. Which apply to an
#: experiment is its family's choice (:attr:`~pipeline_lib.families.ModelFamily.metrics`).
METRICS = ("nll", "samples", "hessian", "robustness")

#: Settings that cannot change a trained model: what the evaluation of a checkpoint measures
#: (samples, Hessian), how often training logs and validates (the last epoch is always
#: validated, so the round's validation NLL does not depend on it) and how a diverged round is
#: reported (the summary recomputes the flag with the current threshold).
NOT_TRAINING = {
    "evaluation": ("samples", "hessian", "robustness"),
    "train": ("log_every", "val_every", "divergence_nats", "on_divergence"),
}

#: The evaluation settings every metric reads: how the NLL is integrated.
_NLL_SETTINGS = ("trace", "solver", "batch_size")


@dataclass(frozen=True)
class DataConfig:
    """Toy data generator settings (ignored for tabular data); ``None`` keeps the dataset's
    own value (:func:`~pipeline_lib.data.toy.generate_toy`). ``subset``: image data sets
    only, the first n images of each split (:func:`~pipeline_lib.data.images.prepare_images`)."""

    seed: int = 0
    n_per_mode: int | None = None
    n_samples: int | None = None
    noise: float | None = None
    subset: int | None = None

    def generator_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`~pipeline_lib.data.toy.generate_toy` (seed apart)."""
        return {
            k: v for k, v in asdict(self).items() if k not in ("seed", "subset") and v is not None
        }


@dataclass(frozen=True)
class SamplesConfig:
    """Sample-based evaluation of 2-D flows: good-quality samples (§4.4, Table 4) from
    ``n_samples`` draws within ``n_std`` standard deviations of a mode, and the density /
    vector-field snapshot of Figs. 5–6 on a ``grid_resolution``² grid over
    [−``grid_extent``, ``grid_extent``]² with ``snapshot_samples`` drawn points."""

    enabled: bool = True
    n_samples: int = 20_000
    n_std: tuple[float, ...] = (2, 3, 5)
    grid_extent: float = 3.0
    grid_resolution: int = 100
    snapshot_samples: int = 2000

    def __post_init__(self) -> None:
        object.__setattr__(self, "n_std", tuple(self.n_std))


@dataclass(frozen=True)
class EvaluationConfig:
    """How every checkpoint is evaluated: the NLL integration (``trace``: None = the model's
    own; ``solver``: None = the training solver; ``batch_size``), shared by validation and
    every metric, and the settings of the sample, Hessian and robustness metrics."""

    trace: str | None = None
    batch_size: int = 10_000
    solver: SolverConfig | None = None
    samples: SamplesConfig = field(default_factory=SamplesConfig)
    hessian: HessianConfig = field(default_factory=HessianConfig)
    robustness: RobustnessConfig = field(default_factory=RobustnessConfig)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "evaluation") -> EvaluationConfig:
        """Build from a config mapping (missing keys take their defaults); an inconsistent
        setting raises a ``ValueError`` naming its key below ``where``."""
        d = dict(d)
        solver = d.pop("solver", None)
        samples = d.pop("samples", None) or {}
        hessian = d.pop("hessian", None) or {}
        robustness = d.pop("robustness", None) or {}
        return _section(
            where,
            lambda: cls(
                solver=_section(
                    f"{where}.solver", lambda: SolverConfig(**solver) if solver else None
                ),
                samples=_section(f"{where}.samples", lambda: SamplesConfig(**samples)),
                hessian=_section(f"{where}.hessian", lambda: HessianConfig.from_dict(hessian)),
                robustness=_section(
                    f"{where}.robustness", lambda: RobustnessConfig.from_dict(robustness)
                ),
                **d,
            ),
        )

    def enabled(self, metric: str) -> bool:
        """Whether ``metric`` (one of :data:`METRICS`) is evaluated."""
        _check_metric(metric)
        return metric == "nll" or getattr(self, metric).enabled


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose among {list(METRICS)}")


def _section(where: str, build):
    """Build one section; a library error becomes one naming the section's full key path."""
    try:
        return build()
    except (TypeError, ValueError) as err:
        if str(err).startswith("invalid configuration"):  # a nested section named its key
            raise
        section = where.rsplit(".", 1)[-1]
        message = re.sub(rf"(?<![\w.]){section}\.", f"{where}.", str(err))
        raise ValueError(f"invalid configuration at '{where}': {message}") from None


@dataclass(frozen=True)
class Experiment:
    """One experiment of a study, as validated and expanded: every section typed.

    ``spec`` is the configuration entry it was built from, with the schema's defaults filled
    in (never modify it: the hashes are computed from it); :meth:`to_dict` returns a copy and
    :meth:`from_dict` builds the same experiment from it, which is how a job receives its
    experiment through ``params``. ``train`` holds the ``train`` section only: the
    configuration a round trains with, validation settings, seed and device included, is
    :meth:`train_config`.
    """

    name: str
    dataset: str
    seeds: tuple[int, ...]
    data: DataConfig
    model: Any  # the family's configuration (FlowConfig, ClassifierConfig)
    train: TrainConfig
    evaluation: EvaluationConfig
    prune: PruneConfig
    methods: tuple[str, ...]
    spec: Mapping[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @classmethod
    def from_dict(cls, name: str, entry: Mapping[str, Any]) -> Experiment:
        """Build from one schema-validated (defaults filled) experiment entry.

        Raises:
            ValueError: an inconsistent setting (e.g. a fixed-grid solver without a step size),
                naming the full key path (``experiments.<name>.solver.step_size``).
        """
        where = f"experiments.{name}"
        e = copy.deepcopy(dict(entry))
        model = dict(e.get("model") or {})
        family = model.pop("family", "ffjord")
        if family not in FAMILIES:
            raise ValueError(
                f"invalid configuration at '{where}.model.family': unknown model family "
                f"{family!r}; use one of {sorted(FAMILIES)}"
            )
        model = _family_settings(family, model, where)
        if (family == "multiscale") != (e["dataset"] in IMAGE_DATASETS):
            raise ValueError(
                f"invalid configuration at '{where}.model.family': image data sets "
                f"({', '.join(IMAGE_DATASETS)}) need model.family: multiscale, and the "
                f"multiscale flow needs one of them; got family {family!r} on "
                f"{e['dataset']!r}"
            )
        if family == "multiscale":  # FFJORD flips CIFAR-10's training images
            model["hflip"] = e["dataset"] == "cifar10"
        data = e.get("data") or {}
        image = e["dataset"] in IMAGE_DATASETS
        toy_keys = [k for k in ("n_per_mode", "n_samples", "noise") if data.get(k) is not None]
        if (data.get("subset") is not None and not image) or (image and toy_keys):
            key = "subset" if not image else toy_keys[0]
            raise ValueError(
                f"invalid configuration at '{where}.data.{key}': it does not apply to data set "
                f"{e['dataset']!r} (data.subset is for image sets, the other data keys for toy "
                "sets); remove it"
            )
        if FAMILIES[family].supervised and e["dataset"] not in CLASSIFICATION_DATASETS:
            raise ValueError(
                f"invalid configuration at '{where}.dataset': model family {family!r} needs a "
                f"two-class data set (its logits are the final state of the 2-D input), and "
                f"{e['dataset']!r} is none; use one of {list(CLASSIFICATION_DATASETS)} or "
                "model.family: ffjord"
            )
        solver = _section(f"{where}.solver", lambda: SolverConfig(**(e.get("solver") or {})))
        prune = dict(e.get("prune") or {})
        methods = tuple(prune.pop("methods", ("unstructured", "structured")))
        evaluation = EvaluationConfig.from_dict(
            e.get("evaluation") or {}, where=f"{where}.evaluation"
        )
        exp = cls(
            name=name,
            dataset=e["dataset"],
            seeds=tuple(int(s) for s in e.get("seeds", (0,))),
            data=_section(f"{where}.data", lambda: DataConfig(**(e.get("data") or {}))),
            model=_section(
                f"{where}.model",
                lambda: FAMILIES[family].config.from_dict({**model, "solver": solver}),
            ),
            train=_section(f"{where}.train", lambda: TrainConfig(**(e.get("train") or {}))),
            evaluation=evaluation,
            prune=_section(f"{where}.prune", lambda: PruneConfig(**prune)),
            methods=methods,
            spec=e,
        )
        _section(f"{where}.prune", lambda: exp.prune.keep_ratios())
        return exp

    def to_dict(self) -> dict[str, Any]:
        """The configuration entry (schema defaults filled in), inverse of :meth:`from_dict`."""
        return copy.deepcopy(dict(self.spec))

    # -- what the workflow derives from an experiment --------------------------------------

    @property
    def family(self) -> str:
        """The model family (a key of :data:`~pipeline_lib.families.FAMILIES`)."""
        return family_of(self.model).name

    def evaluates(self, metric: str) -> bool:
        """Whether the checkpoints are evaluated for ``metric``: it applies to the family
        (good samples and snapshots to 2-D flows only) and is enabled."""
        _check_metric(metric)
        if metric not in family_of(self.model).metrics:
            return False
        if metric == "samples" and self.family == "ffjord" and self.dataset not in _TWO_D:
            return False  # good samples and density snapshots: 2-D flows
        return self.evaluation.enabled(metric)

    @property
    def rounds(self) -> int:
        """Number of prune rounds R (Algorithm 1)."""
        return len(self.prune.keep_ratios())

    @property
    def data_id(self) -> str:
        """Name of the data directory: the dataset, plus a hash of toy-generator settings."""
        data = {k: v for k, v in asdict(self.data).items() if v is not None and k != "seed"}
        if not data and self.data.seed == 0:
            return self.dataset
        payload = json.dumps([data, self.data.seed], sort_keys=True).encode()
        return f"{self.dataset}-{hashlib.sha1(payload).hexdigest()[:8]}"

    @property
    def rerun_key(self) -> dict[str, Any]:
        """What shapes a trained model (:func:`training_settings`): the parameters that decide
        whether a training job reruns, and what a saved training state must match."""
        return training_settings(self.spec)

    @property
    def config_hash(self) -> str:
        """Short stable hash of the experiment's settings (seeds excluded): the study manifest's."""
        return _settings_hash(self.spec)

    @property
    def rerun_hash(self) -> str:
        """Short stable hash of :attr:`rerun_key`: what a round's model was trained under."""
        return _settings_hash(self.rerun_key)

    def runs(self) -> list[tuple[str | None, int, int]]:
        """``(method, seed, round)`` of every checkpoint; round 0 (dense) once per seed."""
        out: list[tuple[str | None, int, int]] = []
        for seed in self.seeds:
            out.append((None, seed, 0))
            for method in self.methods:
                out += [(method, seed, r) for r in range(1, self.rounds + 1)]
        return out

    # -- the library's configurations for one job ----------------------------------------

    def model_config(self, dim: int) -> Any:
        """The model's architecture with its training solver, for data of dimension ``dim``
        (a :class:`~pipeline_lib.flows.FlowConfig` or
        :class:`~pipeline_lib.classifier.ClassifierConfig`)."""
        return replace(self.model, dim=dim)

    def train_config(self, seed: int, device: str = "auto") -> TrainConfig:
        """Training hyperparameters (Tables S1–S3), validating with the evaluation settings."""
        ev = self.evaluation
        return replace(
            self.train,
            eval_batch_size=ev.batch_size,
            eval_solver=ev.solver,
            eval_trace=ev.trace,
            device=device,
            seed=seed,
        )

    def prune_config(self, method: str) -> PruneConfig:
        """Pruning settings for one method."""
        return replace(self.prune, method=method)

    def metric_settings(self, metric: str) -> dict[str, Any]:
        """What one metric's evaluation job reads, and nothing else: the ``evaluation`` keys of
        the NLL integration, plus the metric's own section (``samples``, ``hessian``) and, for
        samples, the dataset (whether it has Gaussian modes). These are the parameters of its
        job, so that editing e.g. ``evaluation.hessian`` re-runs only the Hessian jobs. The
        model's own settings come with the checkpoint. :meth:`EvaluationConfig.from_dict`
        reads the ``evaluation`` part back."""
        _check_metric(metric)
        ev = self.spec.get("evaluation") or {}
        out: dict[str, Any] = {"evaluation": {k: ev.get(k) for k in _NLL_SETTINGS if k in ev}}
        if metric != "nll" and metric in ev:
            out["evaluation"][metric] = copy.deepcopy(ev.get(metric) or {})
        if metric == "samples":
            out["dataset"] = self.dataset
        return out


#: Data sets whose flows are 2-D (good samples and density snapshots apply).
_TWO_D = frozenset(TOY_DATASETS)


def _family_settings(family: str, model: dict[str, Any], where: str) -> dict[str, Any]:
    """The ``model`` keys of one family. The schema fills every ``model`` key's default,
    those of the other families included; such a key must keep its default (the family
    ignores it), else the configuration names it."""
    fields = set(FAMILIES[family].config.__dataclass_fields__) - {"dim", "solver"}
    defaults = _model_defaults()
    out = {}
    for key, value in model.items():
        if key in fields:
            out[key] = value
        elif key in defaults and value != defaults[key]:
            raise ValueError(
                f"invalid configuration at '{where}.model.{key}': the key does not apply to "
                f"model family {family!r} (its keys: {', '.join(sorted(fields))}); remove it"
            )
    return out


@functools.cache
def _model_defaults() -> dict[str, Any]:
    """The schema's default of every ``model`` key (the keys of all families)."""
    import yaml

    props = yaml.safe_load(SCHEMA.read_text())["$defs"]["experiment"]["properties"]
    return {k: v["default"] for k, v in props["model"]["properties"].items() if "default" in v}


def _settings_hash(settings: Mapping[str, Any]) -> str:
    payload = {k: v for k, v in settings.items() if k not in ("seeds", "sweep")}
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


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
                section, name_ = key.split(".", 1)
                e.setdefault(section, {})
                if e[section] is None:
                    e[section] = {}
                e[section][name_] = copy.deepcopy(value)
                parts.append(f"{name_}-{_slug(value)}")
            add(f"{name}__{'__'.join(parts)}", e, f"the sweep of experiments.{name}")
    return out


def load_experiments(config: dict[str, Any]) -> dict[str, Experiment]:
    """Validate a workflow configuration, expand its sweeps and build its experiments.

    The schema's defaults are filled into ``config`` in place (``results``, ``compute``, ...
    included), so the caller reads them from it.

    Raises:
        ValueError: the configuration is invalid; one line naming the key, the problem and
            the fix (:func:`describe_validation_error`).
    """
    from snakemake.utils import validate

    try:
        validate(config, str(SCHEMA))
        entries = expand_experiments(config["experiments"])
        validate({"experiments": entries}, str(SCHEMA))
    except ValueError as err:
        if str(err).startswith("invalid configuration"):
            raise
        raise ValueError(describe_validation_error(err)) from None
    except Exception as err:
        raise ValueError(describe_validation_error(err)) from None
    return {name: Experiment.from_dict(name, e) for name, e in entries.items()}


def per_seed_settings(exp: Mapping[str, Any]) -> dict:
    """An experiment entry as one (seed, method) chain sees it: without the list of seeds and
    the list of pruning methods, which are wildcards of the jobs, and without the ``sweep``
    that generated it. Adding a seed or a method to
    an experiment therefore plans new jobs and leaves the finished ones alone."""
    out = copy.deepcopy(dict(exp))
    out.pop("seeds", None)
    out.pop("sweep", None)  # already expanded into the experiment's settings
    if isinstance(out.get("prune"), dict):
        out["prune"].pop("methods", None)
    return out


def training_settings(exp: Mapping[str, Any]) -> dict:
    """:func:`per_seed_settings` without the settings of :data:`NOT_TRAINING`: what shapes a
    trained model (:attr:`Experiment.rerun_key`), so that editing the others re-evaluates
    checkpoints instead of retraining."""
    out = per_seed_settings(exp)
    for section, keys in NOT_TRAINING.items():
        if isinstance(out.get(section), dict):
            for key in keys:
                out[section].pop(key, None)
    return out


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
