"""What flushing subnormal floats to zero buys on a trained flow (``devices.flush_denormals``).

A trained sigmoid flow saturates, and products of ``σ'`` underflow into float32's subnormal
range, where x86 arithmetic is tens of times slower. This measures, on one trained round's
checkpoint of a vector-data flow, the two costs that dominate a toy study on a CPU, with the
flush off and on, interleaved (the order alternates every repeat), in one process and on one
thread (the flush is a per-thread setting: one thread keeps the comparison clean, and the
toy studies train on one thread per job):

- a training step: forward and backward of the mean NLL of one batch, with the flow's own
  trace estimator (fixed noise) and solver, as ``train`` runs it;
- Hessian-vector products of the evaluation's operator: ``HessianOperator`` on the points
  ``hessian_metrics`` selects with the default ``HessianConfig`` (10 % of the training split)
  and the flow's own solver and divergence, graph reused. The operator is built under each
  setting; its first HVP is not timed, the next ``hvp_repeats`` are.

It reports medians of wall and CPU seconds (CPU seconds are less affected by other jobs on
the machine), and how far the flushed results are from the unflushed ones. Usage, from the
repository root::

    python -m benchmarks.denormals --checkpoint \\
        results/paper/spirals/gaussianspiral/seed0/round000/model.pt

The training split is the study's prepared data directory of the round's dataset
(``<study>/data/<dataset>`` or the one ``<study>/data/<dataset>-<hash>``); give ``--data``
where that is ambiguous. Results go to ``--out`` as JSON and are printed as Markdown.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.timing import rotated, summarize
from pipeline_lib.data import DataSplits, load_splits
from pipeline_lib.devices import flushed_denormals
from pipeline_lib.evaluation.hessian import HessianConfig, HessianOperator, _select_points
from pipeline_lib.layout import Layout
from pipeline_lib.manifest import MANIFEST_NAME
from pipeline_lib.stages import load_model, read_record

log = logging.getLogger("sparseflows.benchmarks.denormals")

#: Timed HVPs per operator and repeat.
HVP_REPEATS = 3

_KEYS = ("step_wall", "step_cpu", "hvp_wall", "hvp_cpu")


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _timed(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall and CPU seconds of ``fn()``."""
    wall, cpu = time.perf_counter(), _cpu_seconds()
    fn()
    return time.perf_counter() - wall, _cpu_seconds() - cpu


def default_data(checkpoint: Path) -> Path:
    """The prepared data directory of a round's dataset in the round's own study.

    The study root is the nearest parent holding the study manifest; the round's record must
    sit where :class:`Layout` puts it. A study's data directory is ``data/<data id>``, where
    the id is the dataset name or, with non-default data settings, the name and a hash: the
    one matching directory is taken.

    Raises:
        SystemExit: the checkpoint is not inside a study, or the data directory is missing
            or ambiguous (the message asks for ``--data``).
    """
    checkpoint = checkpoint.resolve()
    root = next((p for p in checkpoint.parents if (p / MANIFEST_NAME).is_file()), None)
    if root is None:
        raise SystemExit(f"{checkpoint} is not inside a study (no {MANIFEST_NAME}); give --data")
    rec = read_record(checkpoint.parent / "round.json")
    layout = Layout(str(root))
    method = None if rec["method"] == "dense" else rec["method"]
    expected = layout.checkpoint_dir(rec["experiment"], method, rec["seed"], rec["round"])
    if Path(expected) != checkpoint.parent:
        raise SystemExit(f"{checkpoint} is not where its study keeps that round; give --data")
    plain = Path(layout.data_dir(rec["dataset"]))
    candidates = [p for p in [plain, *sorted(plain.parent.glob(f"{plain.name}-*"))] if p.is_dir()]
    if len(candidates) != 1:
        found = ", ".join(str(p) for p in candidates) or "none"
        raise SystemExit(
            f"found {len(candidates)} data directories for {rec['dataset']!r} in {root}/data "
            f"({found}); give --data"
        )
    return candidates[0]


def measure(
    checkpoint: Path,
    data: Path,
    batch_size: int = 1024,
    repeats: int = 7,
    hvp_repeats: int = HVP_REPEATS,
    seed: int = 0,
) -> dict[str, Any]:
    """Median wall and CPU seconds of a training step and of an HVP, flush off and on."""
    splits = load_splits(data)
    if not isinstance(splits, DataSplits):
        raise SystemExit(f"{data} holds images; this benchmark measures vector-data flows")
    model = load_model(checkpoint)
    x = torch.as_tensor(splits.train, dtype=torch.float32)
    batch = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))]
    batch = batch[:batch_size]
    hcfg = HessianConfig(seed=seed, noise_seed=seed)
    points = _select_points(x, hcfg.num_points, hcfg.fraction, hcfg.seed)
    n_params = sum(p.numel() for p in model.parameters())
    v = torch.randn(n_params, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    results: dict[bool, dict[str, list[float]]] = {f: {k: [] for k in _KEYS} for f in (False, True)}

    def step() -> float:
        model.zero_grad(set_to_none=True)
        noise = torch.Generator().manual_seed(seed)  # the same Hutchinson noise every step
        loss = -model(batch, generator=noise).log_prob.mean()
        loss.backward()
        return float(loss.detach())

    def hvps(flush: bool, record: bool) -> tuple[float, torch.Tensor]:
        """Build the operator under the setting (one graph alive at a time), then time HVPs."""
        op = HessianOperator(model, points, noise_seed=hcfg.noise_seed)
        out = op(v)  # the first HVP allocates the double-backward buffers: not timed
        for _ in range(hvp_repeats if record else 0):
            wall, cpu = _timed(lambda: op(v))
            results[flush]["hvp_wall"].append(wall)
            results[flush]["hvp_cpu"].append(cpu)
        return op.loss_value, out

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    outputs: dict[bool, dict[str, Any]] = {}
    try:
        for flush in (False, True):  # warm up; keep the outputs to compare
            with flushed_denormals(flush) as supported:
                if flush and not supported:
                    raise SystemExit("this CPU cannot flush subnormals: nothing to measure")
                loss = step()
                hessian_loss, hvp = hvps(flush, record=False)
            outputs[flush] = {"loss": loss, "hessian_loss": hessian_loss, "hvp": hvp}
        for k in range(repeats):
            for flush in rotated([False, True], k):
                with flushed_denormals(flush):
                    wall, cpu = _timed(step)
                    results[flush]["step_wall"].append(wall)
                    results[flush]["step_cpu"].append(cpu)
                    hvps(flush, record=True)
                log.info(
                    "repeat %d, flush %s: step %.3f s, HVP %.3f s",
                    k,
                    "on" if flush else "off",
                    wall,
                    results[flush]["hvp_wall"][-1],
                )
    finally:
        torch.set_num_threads(threads)
    med = {f: {k: summarize(v)["median"] for k, v in r.items()} for f, r in results.items()}
    hvp_off, hvp_on = outputs[False]["hvp"], outputs[True]["hvp"]
    return {
        "checkpoint": str(checkpoint),
        "data": str(data),
        "threads": 1,
        "batch_size": int(batch.shape[0]),
        "hessian_points": int(points.shape[0]),
        "repeats": repeats,
        "hvp_repeats": hvp_repeats,
        "median": {"off": med[False], "on": med[True]},
        "raw": {"off": results[False], "on": results[True]},
        "speedup": {k: med[False][k] / med[True][k] for k in _KEYS},
        "loss_difference": abs(outputs[False]["loss"] - outputs[True]["loss"]),
        "hessian_loss_difference": abs(
            outputs[False]["hessian_loss"] - outputs[True]["hessian_loss"]
        ),
        "hvp_relative_difference": float(
            (hvp_off - hvp_on).norm() / hvp_off.norm().clamp_min(1e-300)
        ),
    }


def render(res: dict[str, Any]) -> str:
    """The result of :func:`measure` as a Markdown table with the agreement line."""
    lines = [
        f"Flush of subnormals on `{res['checkpoint']}` (1 thread, batch {res['batch_size']}, "
        f"HVP on {res['hessian_points']} points), medians of {res['repeats']} interleaved "
        f"repeats ({res['hvp_repeats']} HVPs each):",
        "",
        "| cost | flush off | flush on | speed-up |",
        "|---|---|---|---|",
    ]
    for key, label in (
        ("step_wall", "training step, wall s"),
        ("step_cpu", "training step, CPU s"),
        ("hvp_wall", "HVP, wall s"),
        ("hvp_cpu", "HVP, CPU s"),
    ):
        lines.append(
            f"| {label} | {res['median']['off'][key]:.3f} | {res['median']['on'][key]:.3f} "
            f"| {res['speedup'][key]:.2f}× |"
        )
    lines += [
        "",
        f"|Δ loss| = {res['loss_difference']:.2e} nats (batch), "
        f"{res['hessian_loss_difference']:.2e} nats (Hessian points); HVP relative difference "
        f"{res['hvp_relative_difference']:.2e}.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="a round's model.pt")
    p.add_argument("--data", type=Path, help="prepared data directory (default: the study's)")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/denormals.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    data = args.data or default_data(args.checkpoint)
    res = measure(args.checkpoint, data, args.batch_size, repeats=args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(render(res))


if __name__ == "__main__":
    main()
