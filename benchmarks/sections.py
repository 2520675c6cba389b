"""The measurements of the benchmark harness: one function per section (see ``README.md``).

Each section function takes the :class:`Settings` and a :class:`~benchmarks.timing.Clock`,
runs in the current process and returns a JSON-serializable dict. Model settings come from the
project's data: Table S1 (``config/published/hyperparams_toy.csv``) for the toy flow, the
MINIBOONE entry of ``config/paper/tabular.yaml`` for the tabular-size flow, and the Hessian
settings of ``config/config.yaml``.
"""

from __future__ import annotations

import csv
import logging
import math
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import yaml

from benchmarks.reference import ReferenceFlow, load_from_flow, reference_optimizer, store_into_flow
from benchmarks.timing import Clock, median_of, rotated, summarize
from pipeline_lib.cuda_graphs import GraphedTrainingStep
from pipeline_lib.data import load_dataset
from pipeline_lib.data.tabular import TABULAR_DIMS
from pipeline_lib.evaluation.hessian import HessianConfig, hessian_metrics
from pipeline_lib.evaluation.nll import evaluate_nll
from pipeline_lib.experiment import load_experiments
from pipeline_lib.flows import ContinuousFlow, FlowConfig, SolverConfig, build_flow
from pipeline_lib.flows.cnf import TRACE_METHODS
from pipeline_lib.training import (
    TrainConfig,
    apply_step,
    forward_loss,
    make_optimizer,
    training_loss,
)

__all__ = [
    "SECTIONS",
    "ModelSpec",
    "Settings",
    "Variant",
    "hessian_cost",
    "pipeline_run",
    "sampling",
    "tabular_iteration",
    "time_to_quality",
    "toy_iteration",
]

log = logging.getLogger("sparseflows.benchmarks")

REPO = Path(__file__).resolve().parents[1]
TABLE_S1 = REPO / "config" / "published" / "hyperparams_toy.csv"
TABULAR_CONFIG = REPO / "config" / "paper" / "tabular.yaml"
DEFAULT_CONFIG = REPO / "config" / "config.yaml"

#: Section names, in the order they run (``--only`` picks some).
SECTIONS = (
    "toy",
    "tabular",
    "time_to_quality",
    "batched",
    "hessian",
    "sampling",
    "images",
    "pipeline",
)


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class ModelSpec:
    """Architecture, training solver tolerance and optimizer of one benchmarked flow."""

    dim: int
    hidden_dims: tuple[int, ...]
    activation: str
    batch_size: int
    rtol: float
    atol: float
    lr: float
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0
    T: float = 1.0
    train_T: bool = False

    def flow_config(self, trace: str = "hutchinson", solver: SolverConfig | None = None):
        return FlowConfig(
            dim=self.dim,
            hidden_dims=self.hidden_dims,
            layer_type="concatsquash",
            activation=self.activation,
            T=self.T,
            train_T=self.train_T,
            trace=trace,
            solver=solver or self.dopri5(),
        )

    def dopri5(self, adjoint: bool = False) -> SolverConfig:
        return SolverConfig(method="dopri5", rtol=self.rtol, atol=self.atol, adjoint=adjoint)

    def reference(self) -> ReferenceFlow:
        return ReferenceFlow(
            self.dim,
            self.hidden_dims,
            self.activation,
            1,
            self.T,
            self.train_T,
            self.rtol,
            self.atol,
        )


def table_s1_spec(dataset: str = "gaussians") -> ModelSpec:
    """The toy flow of Sparse Flows Table S1 (``config/published/hyperparams_toy.csv``)."""
    with open(TABLE_S1) as f:
        rows = {r["dataset"]: r for r in csv.DictReader(line for line in f if line[0] != "#")}
    r = rows[dataset]
    return ModelSpec(
        dim=2,
        hidden_dims=(int(r["hidden"]),) * int(r["layers"]),
        activation=r["activation"],
        batch_size=int(r["batch_size"]),
        rtol=float(r["rtol"]),
        atol=float(r["atol"]),
        lr=float(r["lr"]),
        beta1=float(r["beta1"]),
        beta2=float(r["beta2"]),
        weight_decay=float(r["weight_decay"]),
    )


def miniboone_spec(tol: float = 1e-5) -> ModelSpec:
    """MINIBOONE's flow (``config/paper/tabular.yaml``) with dopri5 at ``rtol = atol = tol``:
    the paper's atol 1e-8 / rtol 1e-6 is too slow for a CPU benchmark."""
    exp = load_experiments(yaml.safe_load(TABULAR_CONFIG.read_text()))["miniboone"]
    return ModelSpec(
        dim=TABULAR_DIMS["miniboone"],
        hidden_dims=exp.model.hidden_dims,
        activation=exp.model.activation,
        batch_size=exp.train.batch_size,
        rtol=tol,
        atol=tol,
        lr=exp.train.lr,
        weight_decay=exp.train.weight_decay,
        T=exp.model.T,
        train_T=exp.model.train_T,
    )


def default_hessian_settings() -> dict:
    """The Hessian settings of the default configuration's first experiment (what the
    pipeline runs: :func:`~pipeline_lib.experiment.load_experiments`, defaults filled)."""
    first = next(iter(load_experiments(yaml.safe_load(DEFAULT_CONFIG.read_text())).values()))
    settings = first.evaluation.hessian.to_dict()
    return {k: v for k, v in settings.items() if k not in ("solver", "params", "enabled")}


@dataclass
class Settings:
    """Everything a benchmark run depends on; :meth:`preset` gives ``full``/``quick``/``tiny``."""

    mode: str = "full"
    threads: tuple[int, ...] = (1, 2)
    device: str = "cpu"
    seed: int = 0
    # ms per training iteration (toy and tabular sections)
    warmup: int = 3
    repeats: int = 15
    toy: ModelSpec = field(default_factory=table_s1_spec)
    toy_n_per_mode: int = 2730
    rk4_step: float = 0.25
    # RNODE (Finlay et al. 2020): fixed-grid rk4 with kinetic + Jacobian-Frobenius penalties
    rnode_step: float = 0.25
    rnode_lambda: float = 0.01
    tabular: ModelSpec = field(default_factory=miniboone_spec)
    tabular_repeats: int = 5
    tabular_n: int = 10_000
    # time to quality
    ttq_n_per_mode: int = 2730
    ttq_threshold: float = 1.25
    ttq_budget_s: float = 1800.0
    ttq_max_epochs: int = 100
    eval_tol: float = 1e-5
    # several models in one process: numbers of models trained together
    batched_models: tuple[int, ...] = (2, 4)
    # Hessian and sampling
    hessian: dict = field(default_factory=default_hessian_settings)
    hessian_repeats: int = 3
    sampling_n: int = 10_000
    sampling_repeats: int = 5
    # image flows: the released MNIST model, training iterations of batch 200
    image_shape: tuple[int, int, int] = (1, 28, 28)
    image_hidden: tuple[int, ...] = (64, 64, 64)
    image_blocks: int = 2
    image_batch: int = 200
    image_repeats: int = 2
    image_train_size: int = 50_000
    # default pipeline
    pipeline_config: Path = DEFAULT_CONFIG
    pipeline_cores: int = 2

    @classmethod
    def preset(cls, mode: str = "full", **overrides: Any) -> Settings:
        """``full`` (the benchmark), ``quick`` (minutes, small data and budgets) or ``tiny``
        (seconds, tiny models: a smoke test of the harness whose numbers mean nothing)."""
        s = cls(mode=mode)
        if mode == "quick":
            s = replace(
                s,
                warmup=1,
                repeats=3,
                tabular_repeats=2,
                tabular_n=2000,
                ttq_n_per_mode=500,
                ttq_threshold=2.5,
                ttq_budget_s=40.0,
                ttq_max_epochs=100,
                hessian={
                    "num_points": 128,
                    "power_iters": 5,
                    "lanczos_steps": 5,
                    "trace_samples": 5,
                },
                hessian_repeats=1,
                sampling_n=2000,
                sampling_repeats=3,
                image_repeats=1,
                image_batch=50,  # backprop through rk4 at batch 200 needs > 24 GB
            )
        elif mode == "tiny":
            tiny = ModelSpec(2, (8, 8), "sigmoid", 32, 1e-3, 1e-3, 5e-3)
            s = replace(
                s,
                threads=(1,),
                warmup=1,
                repeats=2,
                toy=tiny,
                toy_n_per_mode=20,
                tabular=replace(
                    tiny, dim=5, hidden_dims=(16, 16), activation="softplus", T=0.5, train_T=True
                ),
                tabular_repeats=2,
                tabular_n=64,
                ttq_n_per_mode=20,
                ttq_threshold=2.0,
                ttq_budget_s=2.0,
                ttq_max_epochs=2,
                eval_tol=1e-3,
                hessian={
                    "num_points": 16,
                    "power_iters": 2,
                    "lanczos_steps": 2,
                    "trace_samples": 2,
                },
                hessian_repeats=1,
                sampling_n=50,
                sampling_repeats=2,
                image_shape=(1, 8, 8),
                image_hidden=(4,),
                image_blocks=1,
                image_batch=8,
                image_repeats=1,
            )
        elif mode != "full":
            raise ValueError(f"unknown benchmark mode {mode!r}; choose full, quick or tiny")
        return replace(s, **overrides)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["pipeline_config"] = _relative(self.pipeline_config)
        return d

    def eval_solver(self) -> SolverConfig:
        return SolverConfig(method="dopri5", rtol=self.eval_tol, atol=self.eval_tol)


def _relative(path: Path | str) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name


# --------------------------------------------------------------------------- variants


@dataclass(frozen=True)
class Variant:
    """One way of training: the reference path, or pipeline_lib with a trace and a solver."""

    name: str
    label: str
    trace: str | None = None  # None: the reference path
    solver: SolverConfig | None = None
    rnode_lambda: float = 0.0  # λ_K = λ_J of RNODE's penalties (0: plain maximum likelihood)
    cuda_graph: bool = False  # replay full batches from a CUDA graph (rk4 on a GPU only)

    @property
    def is_reference(self) -> bool:
        return self.trace is None


REFERENCE = Variant("reference", "reference: dopri5 adjoint, autograd Hutchinson per evaluation")


def backprop_hutchinson(spec: ModelSpec) -> Variant:
    """Ours (b): FFJORD's Hutchinson trace, backprop through dopri5 at the spec's tolerances."""
    return Variant(
        "b_backprop_hutchinson",
        "ours (b): dopri5 backprop, hutchinson",
        "hutchinson",
        spec.dopri5(),
    )


def toy_variants(s: Settings) -> list[Variant]:
    """Reference and ours (a)–(d), plus (e) one per further trace method of pipeline_lib."""
    spec = s.toy
    rk4 = SolverConfig(method="rk4", step_size=s.rk4_step)
    nfe = round(4 * spec.T / s.rk4_step)
    variants = [
        REFERENCE,
        Variant(
            "a_adjoint_hutchinson",
            "ours (a): dopri5 adjoint, hutchinson",
            "hutchinson",
            spec.dopri5(adjoint=True),
        ),
        backprop_hutchinson(spec),
        Variant("c_backprop_exact", "ours (c): dopri5 backprop, exact", "exact", spec.dopri5()),
        Variant(
            "d_rk4_exact", f"ours (d): rk4 step {s.rk4_step:g} ({nfe} NFE), exact", "exact", rk4
        ),
        Variant(
            "f_rnode_rk4",
            f"ours (f): RNODE λ={s.rnode_lambda:g}, rk4 step {s.rnode_step:g} "
            f"({round(4 * spec.T / s.rnode_step)} NFE), hutchinson",
            "hutchinson",
            SolverConfig(method="rk4", step_size=s.rnode_step),
            s.rnode_lambda,
        ),
    ]
    for method in TRACE_METHODS:
        if method not in ("hutchinson", "exact"):
            variants.append(
                Variant(
                    f"e_backprop_{method}",
                    f"ours (e): dopri5 backprop, {method}",
                    method,
                    spec.dopri5(),
                )
            )
    if torch.device(s.device).type == "cuda":  # (g): the rk4 variants replayed from a CUDA graph
        by_name = {v.name: v for v in variants}
        for base, name in (("d_rk4_exact", "g_rk4_exact_graph"), ("f_rnode_rk4", "g_rnode_graph")):
            v = by_name[base]
            label = v.label.replace("ours (d)", "ours (g)").replace("ours (f)", "ours (g)")
            variants.append(replace(v, name=name, label=f"{label} + CUDA graph", cuda_graph=True))
    return variants


# --------------------------------------------------------------------------- training


class Trainee:
    """One variant being trained: its own copy of the initial weights and its own AdamW."""

    def __init__(self, variant: Variant, init: ContinuousFlow, spec: ModelSpec, device) -> None:
        self.variant = variant
        self.spec = spec
        self.error: str | None = None
        if variant.is_reference:
            self.model = load_from_flow(spec.reference(), init).to(device)
            self.optimizer = reference_optimizer(
                self.model, spec.lr, (spec.beta1, spec.beta2), spec.weight_decay
            )
            self._eval_flow = build_flow(spec.flow_config()).to(device)
        else:
            self.model = build_flow(spec.flow_config(variant.trace, variant.solver))
            self.model.load_state_dict(init.state_dict())
            self.model.to(device)
            self.config = TrainConfig(
                optimizer="adamw",
                lr=spec.lr,
                beta1=spec.beta1,
                beta2=spec.beta2,
                weight_decay=spec.weight_decay,
                lambda_kinetic=variant.rnode_lambda,
                lambda_jacobian=variant.rnode_lambda,
            )
            params = [p for p in self.model.parameters() if p.requires_grad]
            self.optimizer = make_optimizer(params, self.config)
        self.graphed: GraphedTrainingStep | None = None  # captured at the first full batch

    def _graph(self, x: torch.Tensor) -> GraphedTrainingStep | None:
        """The variant's CUDA graph (captured on first use; the capture's warm-up passes leave
        the weights unchanged), or None for an eager variant."""
        if self.variant.cuda_graph and self.graphed is None:
            self.model.train()
            self.graphed = GraphedTrainingStep(
                self.model, lambda m, b: training_loss(m, b, self.config), x
            )
        return self.graphed

    @property
    def name(self) -> str:
        return self.variant.name

    def step(self, x: torch.Tensor, clock: Clock) -> dict:
        """One training iteration on ``x``, timed: forward (loss), backward + optimizer step.
        Our variants run the pipeline's own step (:func:`~pipeline_lib.training.forward_loss`
        and :func:`~pipeline_lib.training.apply_step`: RNODE penalties, masks and clipping
        included; a graph replay runs forward and backward and is timed as "forward")."""
        model = self.model
        graphed = None if self.variant.is_reference else self._graph(x)  # captured untimed
        t0 = clock.now()
        if self.variant.is_reference:
            self.optimizer.zero_grad(set_to_none=True)
            n0 = model.nfe
            loss = nll = -model.log_prob(x).mean()
            nfe_forward, t1 = model.nfe - n0, clock.now()
            loss.backward()
            self.optimizer.step()
            nfe_backward = model.nfe - n0 - nfe_forward
        else:
            out = forward_loss(model, x, self.config, self.optimizer, graphed)
            nll, nfe_forward, t1 = out.nll, out.nfe_forward, clock.now()
            nfe_backward = apply_step(model, self.optimizer, out, self.config)
        t2 = clock.now()
        value = nll.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"non-finite loss {value}")
        return {
            "ms_iter": 1e3 * (t2 - t0),
            "ms_forward": 1e3 * (t1 - t0),
            "ms_backward": 1e3 * (t2 - t1),
            "nfe_forward": nfe_forward,
            "nfe_backward": nfe_backward,
            "loss": value,
        }

    def eval_flow(self) -> ContinuousFlow:
        """A pipeline_lib flow with the current weights (the reference's copied over)."""
        if self.variant.is_reference:
            return store_into_flow(self.model, self._eval_flow)
        return self.model


def _init_flow(spec: ModelSpec, seed: int) -> ContinuousFlow:
    torch.manual_seed(seed)
    return build_flow(spec.flow_config())


def _summarize_steps(records: list[dict]) -> dict:
    out = {
        key: summarize([r[key] for r in records])
        for key in ("ms_iter", "ms_forward", "ms_backward", "nfe_forward", "nfe_backward")
    }
    out["ms_per_nfe"] = summarize(
        [r["ms_iter"] / max(r["nfe_forward"] + r["nfe_backward"], 1) for r in records]
    )
    out["loss_last"] = records[-1]["loss"] if records else None
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def iteration_benchmark(
    s: Settings,
    clock: Clock,
    spec: ModelSpec,
    variants: list[Variant],
    data: torch.Tensor,
    repeats: int,
) -> list[dict]:
    """ms per training iteration of every variant, interleaved, for each thread count.

    All variants start from the same initial weights (fresh copies for every thread count) and
    see the same batches; ``s.warmup`` iterations of each are run first and not counted.
    """
    device = clock.device
    init = _init_flow(spec, s.seed)
    order = torch.Generator().manual_seed(s.seed)
    total = s.warmup + repeats
    batches = [
        data[torch.randperm(data.shape[0], generator=order)[: spec.batch_size]].to(device)
        for _ in range(total)
    ]
    rows = []
    for threads in s.threads:
        torch.set_num_threads(threads)
        torch.manual_seed(s.seed)
        trainees = [Trainee(v, init, spec, device) for v in variants]
        records: dict[str, list[dict]] = {t.name: [] for t in trainees}
        for k in range(total):
            for t in rotated(trainees, k):
                if t.error is not None:
                    continue
                try:
                    record = t.step(batches[k], clock)
                except Exception as err:  # a variant that fails is reported, not fatal
                    t.error = f"{type(err).__name__}: {err}"
                    continue
                if k >= s.warmup:
                    records[t.name].append(record)
        stats = {t.name: _summarize_steps(records[t.name]) for t in trainees}
        ref = stats.get(REFERENCE.name, {})
        for t in trainees:
            st = stats[t.name]
            rows.append(
                {
                    "threads": threads,
                    "variant": t.name,
                    "label": t.variant.label,
                    "trace": t.variant.trace,
                    "solver": t.variant.solver.to_dict() if t.variant.solver else None,
                    "error": t.error,
                    **st,
                    "ratio_ms_iter": _ratio(median_of(ref, "ms_iter"), median_of(st, "ms_iter")),
                    "ratio_ms_per_nfe": _ratio(
                        median_of(ref, "ms_per_nfe"), median_of(st, "ms_per_nfe")
                    ),
                }
            )
    return rows


def toy_iteration(s: Settings, clock: Clock, state: dict) -> dict:
    """Table S1 Gaussians flow: ms per iteration / per evaluation of the reference and (a)–(e)."""
    data = load_dataset("gaussians", seed=s.seed, n_per_mode=s.toy_n_per_mode).train
    variants = toy_variants(s)
    rows = iteration_benchmark(s, clock, s.toy, variants, data, s.repeats)
    return {"model": asdict(s.toy), "data": "gaussians (train split)", "rows": rows}


def synthetic_tabular(n: int, dim: int, seed: int) -> torch.Tensor:
    """Standardized, correlated, mildly non-Gaussian data: a stand-in for a MAF tabular set."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, dim, generator=g)
    mix = torch.randn(dim, dim, generator=g) / math.sqrt(dim)
    x = z + torch.tanh(z @ mix)
    return (x - x.mean(0)) / x.std(0)


def tabular_iteration(s: Settings, clock: Clock, state: dict) -> dict:
    """MINIBOONE-size flow on synthetic data: reference vs ours (b)."""
    spec = s.tabular
    data = synthetic_tabular(s.tabular_n, spec.dim, s.seed)
    variants = [REFERENCE, backprop_hutchinson(spec)]
    rows = iteration_benchmark(s, clock, spec, variants, data, s.tabular_repeats)
    return {
        "model": asdict(spec),
        "data": f"synthetic {spec.dim}-d standardized (n={s.tabular_n})",
        "note": f"dopri5 rtol=atol={spec.rtol:g} instead of the paper's atol 1e-8 / rtol 1e-6",
        "rows": rows,
    }


# --------------------------------------------------------------------------- time to quality


def time_to_quality(s: Settings, clock: Clock, state: dict) -> dict:
    """Train the reference and ours (f), (d), (b) until the validation NLL reaches a threshold.

    Epochs of the variants are interleaved. The clock counts training iterations only; the
    validation after every epoch (exact trace, dopri5 at ``s.eval_tol``, by
    :func:`~pipeline_lib.evaluation.nll.evaluate_nll` for every variant, the reference's weights
    copied into a pipeline_lib flow) is timed separately. A variant stops at the first epoch
    whose validation NLL is at most the threshold, or when its training time exceeds the budget.
    Runs with the first of ``s.threads`` threads.
    """
    threads = s.threads[0]
    torch.set_num_threads(threads)
    device = clock.device
    spec = s.toy
    data = load_dataset("gaussians", seed=s.seed, n_per_mode=s.ttq_n_per_mode)
    train_x, val_x, test_x = (data.train.to(device), data.val.to(device), data.test.to(device))
    by_name = {v.name: v for v in toy_variants(s)}
    variants = [
        REFERENCE,
        *(
            by_name[k]
            for k in (
                "f_rnode_rk4",
                "d_rk4_exact",
                "b_backprop_hutchinson",
                "g_rk4_exact_graph",
                "g_rnode_graph",
            )
            if k in by_name  # (g) on a GPU only
        ),
    ]
    init = _init_flow(spec, s.seed)
    torch.manual_seed(s.seed)
    trainees = [Trainee(v, init, spec, device) for v in variants]
    solver = s.eval_solver()
    runs = {
        t.name: {
            "variant": t.name,
            "label": t.variant.label,
            "train_seconds": 0.0,
            "eval_seconds": 0.0,
            "epochs": 0,
            "iterations": 0,
            "history": [],
            "reached": False,
            "seconds_to_threshold": None,
            "stopped": None,
        }
        for t in trainees
    }
    shuffle = torch.Generator()
    n = train_x.shape[0]
    for epoch in range(s.ttq_max_epochs):
        active = [t for t in trainees if runs[t.name]["stopped"] is None]
        if not active:
            break
        shuffle.manual_seed(s.seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=shuffle).to(device)
        for t in rotated(active, epoch):
            run = runs[t.name]
            nfe = []
            try:
                for start in range(0, n, spec.batch_size):
                    rec = t.step(train_x[order[start : start + spec.batch_size]], clock)
                    run["train_seconds"] += rec["ms_iter"] / 1e3
                    run["iterations"] += 1
                    nfe.append(rec["nfe_forward"] + rec["nfe_backward"])
                t0 = clock.now()
                val = evaluate_nll(t.eval_flow(), val_x, solver=solver, trace="exact")
                run["eval_seconds"] += clock.now() - t0
            except Exception as err:
                run["stopped"] = f"error: {type(err).__name__}: {err}"
                continue
            run["epochs"] = epoch + 1
            run["history"].append(
                {
                    "epoch": epoch + 1,
                    "train_seconds": run["train_seconds"],
                    "val_nll": val.nll,
                    "nfe_per_iter": sum(nfe) / max(len(nfe), 1),
                }
            )
            log.info(
                "time to quality | epoch %d | %s | val NLL %.4f | NFE/iter %.1f | train %.1f s",
                epoch + 1,
                t.name,
                val.nll,
                run["history"][-1]["nfe_per_iter"],
                run["train_seconds"],
            )
            if val.nll <= s.ttq_threshold:
                run.update(reached=True, seconds_to_threshold=run["train_seconds"])
                run["stopped"] = "threshold"
            elif run["train_seconds"] >= s.ttq_budget_s:
                run["stopped"] = "budget"
    for t in trainees:
        run = runs[t.name]
        run["stopped"] = run["stopped"] or "max_epochs"
        run["final_val_nll"] = run["history"][-1]["val_nll"] if run["history"] else None
        try:
            run["test_nll"] = evaluate_nll(t.eval_flow(), test_x, solver=solver, trace="exact").nll
        except Exception as err:
            run["test_nll"] = None
            run["test_error"] = f"{type(err).__name__}: {err}"
    ref = runs[REFERENCE.name]
    for run in runs.values():
        run["ratio_seconds"] = _ratio(ref["seconds_to_threshold"], run["seconds_to_threshold"])
        # The reference ran out of budget: its time to the threshold is at least its budget.
        run["ratio_seconds_at_least"] = (
            _ratio(ref["train_seconds"], run["seconds_to_threshold"])
            if ref["stopped"] == "budget"
            else None
        )
    fast = next(t for t in trainees if t.name == "d_rk4_exact")
    state["trained_flow"] = fast.eval_flow()
    state["trained_label"] = f"trained by time_to_quality ({fast.variant.label})"
    return {
        "threads": threads,
        "threshold_nats": s.ttq_threshold,
        "budget_seconds": s.ttq_budget_s,
        "n_per_mode": s.ttq_n_per_mode,
        "n_train": n,
        "eval": {"trace": "exact", "solver": solver.to_dict()},
        "runs": list(runs.values()),
    }


# --------------------------------------------------------------------------- Hessian, sampling


def _checkpoint(s: Settings, state: dict, device) -> tuple[ContinuousFlow, str]:
    """The trained toy flow of this run when there is one, else the seeded initial one."""
    if "trained_flow" in state:
        return state["trained_flow"], state["trained_label"]
    return _init_flow(s.toy, s.seed).to(device), "initial weights (time_to_quality did not run)"


def hessian_cost(s: Settings, clock: Clock, state: dict) -> dict:
    """Seconds and HVPs of :func:`hessian_metrics` on one checkpoint of the Table S1 flow."""
    device = clock.device
    flow, weights = _checkpoint(s, state, device)
    x = load_dataset("gaussians", seed=s.seed, n_per_mode=s.toy_n_per_mode).train.to(device)
    solvers = {
        f"dopri5 {s.toy.rtol:g} (Table S1)": s.toy.dopri5(),
        f"rk4 step {s.rk4_step:g}": SolverConfig(method="rk4", step_size=s.rk4_step),
    }
    rows = []
    for threads in s.threads:
        torch.set_num_threads(threads)
        records: dict[str, list[dict]] = {name: [] for name in solvers}
        for k in range(s.hessian_repeats):
            for name in rotated(list(solvers), k):
                cfg = HessianConfig.from_dict({**s.hessian, "solver": solvers[name].to_dict()})
                t0 = clock.now()
                m = hessian_metrics(flow, x, cfg)
                seconds = clock.now() - t0
                per_hvp = (m["seconds"] - m["seconds_setup"]) / max(m["n_hvp"], 1)
                records[name].append(
                    {
                        "seconds": seconds,
                        "seconds_setup": m["seconds_setup"],
                        "n_hvp": m["n_hvp"],
                        "seconds_per_hvp": per_hvp,
                        "lambda_max": m["lambda_max"],
                        "trace": m["trace"],
                        "kappa": m["kappa"],
                    }
                )
        for name, recs in records.items():
            rows.append(
                {
                    "threads": threads,
                    "solver": name,
                    "n_hvp": recs[-1]["n_hvp"],
                    **{
                        key: summarize([r[key] for r in recs])
                        for key in ("seconds", "seconds_setup", "seconds_per_hvp")
                    },
                    "lambda_max": recs[-1]["lambda_max"],
                    "trace": recs[-1]["trace"],
                    "kappa": recs[-1]["kappa"],
                }
            )
    return {"weights": weights, "hessian": dict(s.hessian), "divergence": "exact", "rows": rows}


def sampling(s: Settings, clock: Clock, state: dict) -> dict:
    """Samples per second of ``flow.sample`` with and without log-density (exact trace)."""
    flow, weights = _checkpoint(s, state, clock.device)
    solver = s.eval_solver()
    modes = {"without log-prob": False, "with log-prob (exact trace)": True}
    rows = []
    for threads in s.threads:
        torch.set_num_threads(threads)
        records: dict[str, list[tuple[float, int]]] = {m: [] for m in modes}
        generator = torch.Generator(device=clock.device).manual_seed(s.seed)
        with torch.no_grad():
            for k in range(s.sampling_repeats + 1):  # the first round is a warm-up
                for mode in rotated(list(modes), k):
                    n0, t0 = flow.nfe, clock.now()
                    flow.sample(
                        s.sampling_n,
                        solver=solver,
                        generator=generator,
                        trace="exact",
                        with_log_prob=modes[mode],
                    )
                    if k:
                        records[mode].append((s.sampling_n / (clock.now() - t0), flow.nfe - n0))
        for mode, recs in records.items():
            rows.append(
                {
                    "threads": threads,
                    "mode": mode,
                    "samples_per_second": summarize([r[0] for r in recs]),
                    "nfe": summarize([r[1] for r in recs]),
                }
            )
    return {"weights": weights, "n": s.sampling_n, "solver": solver.to_dict(), "rows": rows}


# --------------------------------------------------------------------------- image flows


def image_training(s: Settings, clock: Clock, state: dict) -> dict:
    """Seconds per training iteration of the multiscale image flow (the released MNIST model
    unless the preset shrinks it; batches of random uint8 images, whose cost is that of real
    digits up to the adaptive solver's step count) with FFJORD's dopri5 1e-5 and adjoint and
    with the RNODE variant (rk4 step 0.25 with backpropagation, kinetic + Jacobian penalties),
    and the epoch they extrapolate to (``image_train_size`` images: MNIST's 50,000 after the
    validation split). The first iteration of each variant is a warm-up."""
    from pipeline_lib.flows.multiscale import MultiscaleConfig, build_multiscale
    from pipeline_lib.pruning import count_parameters
    from pipeline_lib.training import TrainConfig, apply_step, forward_loss, make_optimizer

    variants = {
        "FFJORD (dopri5 1e-5, adjoint, Hutchinson)": (
            SolverConfig(method="dopri5", rtol=1e-5, atol=1e-5, adjoint=True),
            TrainConfig(lr=1e-3, batch_size=s.image_batch),
            False,
        ),
        "RNODE (rk4 0.25, λ_K = λ_J = 0.01)": (
            SolverConfig(method="rk4", step_size=s.rnode_step),
            TrainConfig(
                lr=1e-3,
                batch_size=s.image_batch,
                lambda_kinetic=s.rnode_lambda,
                lambda_jacobian=s.rnode_lambda,
            ),
            False,
        ),
    }
    gen = torch.Generator().manual_seed(s.seed)
    batch = torch.randint(0, 256, (s.image_batch, *s.image_shape), dtype=torch.uint8, generator=gen)
    batch = batch.to(clock.device)
    rows = []
    for threads in s.threads:
        torch.set_num_threads(threads)
        for name, (solver, cfg, train_T) in variants.items():
            torch.manual_seed(s.seed)
            flow = build_multiscale(
                MultiscaleConfig(
                    dim=s.image_shape,
                    hidden_dims=s.image_hidden,
                    num_blocks=s.image_blocks,
                    activation="softplus",
                    train_T=train_T,
                    solver=solver,
                )
            ).to(clock.device)
            optimizer = make_optimizer(flow.parameters(), cfg)
            seconds, nfe = [], []
            for k in range(s.image_repeats + 1):
                n0, t0 = flow.nfe, clock.now()
                out = forward_loss(flow, batch, cfg, optimizer)
                apply_step(flow, optimizer, out, cfg)
                if k:
                    seconds.append(clock.now() - t0)
                    nfe.append(flow.nfe - n0)
            median = statistics.median(seconds)
            rows.append(
                {
                    "threads": threads,
                    "variant": name,
                    "params": count_parameters(flow)[0],
                    "seconds_per_iteration": summarize(seconds),
                    "nfe_forward_backward": summarize(nfe),
                    "epoch_hours": median * math.ceil(s.image_train_size / s.image_batch) / 3600,
                }
            )
    return {
        "image_shape": list(s.image_shape),
        "batch": s.image_batch,
        "train_size": s.image_train_size,
        "rows": rows,
    }


# --------------------------------------------------------------------------- batched models


def batched_training(s: Settings, clock: Clock, state: dict) -> dict:
    """K flows trained in one process with stacked weights against one after another.

    The K copies of variant (d) (the Table S1 flow, rk4 step ``s.rk4_step``, exact trace) have
    their parameters stacked by ``torch.func.stack_module_state`` and one loss evaluated for all
    of them by ``torch.func.vmap`` over ``functional_call`` (every matrix product becomes a
    batched one), then one backward pass; the sequential way runs K ordinary forward and
    backward passes. Forward + backward only (the optimizer step is the same either way), each
    model on its own batch. Reports ms per model and iteration and their ratio, after checking
    that both ways give the same K losses.
    """
    from torch.func import functional_call, stack_module_state, vmap

    device = clock.device
    spec = s.toy
    solver = SolverConfig(method="rk4", step_size=s.rk4_step)
    data = load_dataset("gaussians", seed=s.seed, n_per_mode=s.toy_n_per_mode).train.to(device)
    rows = []
    for threads in s.threads:
        torch.set_num_threads(threads)
        for k in s.batched_models:
            torch.manual_seed(s.seed)
            models = [build_flow(spec.flow_config("exact", solver)).to(device) for _ in range(k)]
            g = torch.Generator().manual_seed(s.seed)
            xs = data[torch.randint(0, data.shape[0], (k, spec.batch_size), generator=g)]
            params, _ = stack_module_state(models)
            template = models[0]
            buffers = dict(template.named_buffers())  # unpruned: the same for every model

            def loss_of(p: dict, x: torch.Tensor, template=template, buffers=buffers):
                return -functional_call(template, (p, buffers), (x,)).log_prob.mean()

            batched_loss = vmap(loss_of)

            def sequential(models=models, xs=xs) -> torch.Tensor:
                losses = []
                for m, x in zip(models, xs, strict=True):
                    m.zero_grad(set_to_none=True)
                    loss = -m(x).log_prob.mean()
                    loss.backward()
                    losses.append(loss.detach())
                return torch.stack(losses)

            def batched(params=params, xs=xs, batched_loss=batched_loss) -> torch.Tensor:
                for p in params.values():
                    p.grad = None
                losses = batched_loss(params, xs)
                losses.sum().backward()
                return losses.detach()

            ways = {"sequential": sequential, "batched": batched}
            check = float((sequential() - batched()).abs().max())
            times: dict[str, list[float]] = {w: [] for w in ways}
            for rep in range(s.warmup + s.repeats):
                for way in rotated(list(ways), rep):
                    t0 = clock.now()
                    ways[way]()
                    if rep >= s.warmup:
                        times[way].append(1e3 * (clock.now() - t0) / k)
            seq, bat = summarize(times["sequential"]), summarize(times["batched"])
            rows.append(
                {
                    "threads": threads,
                    "models": k,
                    "ms_per_model_sequential": seq,
                    "ms_per_model_batched": bat,
                    "ratio": seq["median"] / bat["median"],
                    "max_loss_difference": check,
                }
            )
            log.info("batched: %d threads, %d models: %.2fx", threads, k, rows[-1]["ratio"])
    return {"model": asdict(spec), "solver": solver.to_dict(), "rows": rows}


# --------------------------------------------------------------------------- pipeline


def _shrunk_config(path: Path) -> dict:
    """The first experiment of a configuration, cut to one seed, epoch, method and round."""
    cfg = yaml.safe_load(Path(path).read_text())
    name, exp = next(iter(cfg["experiments"].items()))
    exp = dict(exp)
    exp["seeds"] = exp["seeds"][:1]
    exp["data"] = {**(exp.get("data") or {}), "n_per_mode": 100}
    exp["train"] = {**exp["train"], "epochs": 1}
    exp["prune"] = {**exp["prune"], "methods": exp["prune"]["methods"][:1], "rounds": 1}
    hessian = (exp.get("evaluation") or {}).get("hessian")
    if hessian:
        small = {"num_points": 64, "power_iters": 3, "lanczos_steps": 3, "trace_samples": 3}
        exp["evaluation"] = {**exp["evaluation"], "hessian": {**hessian, **small}}
    return {**cfg, "experiments": {name: exp}}


def _gnu_time() -> str | None:
    path = shutil.which("time") or ("/usr/bin/time" if Path("/usr/bin/time").exists() else None)
    if path is None:
        return None
    ok = subprocess.run([path, "-v", "true"], capture_output=True).returncode == 0
    return path if ok else None


def pipeline_run(s: Settings, clock: Clock, state: dict) -> dict:
    """Wall time and peak RSS of ``snakemake --cores N`` on the default configuration.

    The run goes to a temporary directory (``--directory``, ``--config results=… resources=…``)
    that is removed afterwards. Outside ``full`` mode the configuration is first cut down to
    one experiment, seed, epoch, method and round. Peak RSS is that of the largest single
    process (GNU ``time -v``, else ``getrusage(RUSAGE_CHILDREN)``), not the sum over jobs.
    """
    tmp = Path(tempfile.mkdtemp(prefix="sparseflows-bench-"))
    try:
        config = Path(s.pipeline_config)
        if s.mode != "full":
            shrunk = tmp / "config.yaml"
            shrunk.write_text(yaml.safe_dump(_shrunk_config(config)))
            config = shrunk
        cmd = [
            sys.executable,
            "-m",
            "snakemake",
            "-s",
            str(REPO / "workflow" / "Snakefile"),
            "--directory",
            str(tmp),
            "--cores",
            str(s.pipeline_cores),
            "--configfile",
            str(config.resolve()),
            "--config",
            f"results={tmp / 'results'}",
            f"resources={tmp / 'resources'}",
        ]
        if torch.device(s.device).type == "cuda":  # the GPU workstation's command
            cmd += ["--resources", f"gpu={torch.cuda.device_count()}"]
        timer = _gnu_time()
        if timer:
            cmd = [timer, "-v", "-o", str(tmp / "time.txt"), *cmd]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        wall = time.perf_counter() - t0
        peak_kib = None
        if timer and (tmp / "time.txt").exists():
            found = re.search(
                r"Maximum resident set size \(kbytes\): (\d+)", (tmp / "time.txt").read_text()
            )
            peak_kib = int(found.group(1)) if found else None
        if peak_kib is None:
            peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
        steps = re.findall(r"(\d+) of (\d+) steps \(100%\) done", proc.stdout + proc.stderr)
        return {
            "config": _relative(s.pipeline_config),
            "shrunk": s.mode != "full",
            "cores": s.pipeline_cores,
            "returncode": proc.returncode,
            "wall_seconds": wall,
            "peak_rss_mib": peak_kib / 1024,
            "peak_rss_source": "GNU time -v" if timer else "getrusage(RUSAGE_CHILDREN)",
            "jobs": int(steps[-1][1]) if steps else None,
            "log_tail": (proc.stderr or proc.stdout)[-3000:] if proc.returncode else "",
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


SECTION_FUNCTIONS = {
    "toy": toy_iteration,
    "tabular": tabular_iteration,
    "time_to_quality": time_to_quality,
    "batched": batched_training,
    "hessian": hessian_cost,
    "sampling": sampling,
    "images": image_training,
    "pipeline": pipeline_run,
}
