"""What flushing subnormal floats to zero buys on a trained flow (``devices.flush_denormals``).

A trained sigmoid flow saturates, and products of ``σ'`` underflow into float32's subnormal
range, where x86 arithmetic is tens of times slower. This measures, on one trained round's
checkpoint, the two costs that dominate a study on a CPU, with the flush off and on,
interleaved (the order alternates every repeat), in one process:

- a training step: forward and backward of the mean NLL of one batch, with the flow's own
  trace estimator and solver (what ``train`` runs);
- one Hessian-vector product of the evaluation's operator (``HessianOperator`` on a random
  10 % of the training split, graph reused, as ``hessian_metrics`` runs it): the operator is
  built under each setting, its first HVP is not timed, the next 3 are.

It also reports how far the flushed results are from the unflushed ones (the loss, and the
relative difference of the HVP). Usage, from the repository root::

    python -m benchmarks.denormals --checkpoint \\
        results/paper/spirals/gaussianspiral/seed0/round000/model.pt

The training split defaults to ``<study>/data/<dataset>/train.npy`` of the checkpoint's study
(the dataset is read from the round's ``round.json``). Results go to ``--out`` as JSON and
are printed as Markdown.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pipeline_lib.devices import flush_denormals
from pipeline_lib.evaluation.hessian import HessianOperator
from pipeline_lib.stages import load_model

log = logging.getLogger("sparseflows.benchmarks.denormals")


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def default_data(checkpoint: Path) -> Path:
    """``<study>/data/<dataset>/train.npy`` for ``<study>/<exp>/seed<s>/[<method>/]roundNNN/model.pt``."""
    record = json.loads((checkpoint.parent / "round.json").read_text())
    depth = 3 if record.get("method") == "dense" else 4
    return checkpoint.parents[depth] / "data" / record["dataset"] / "train.npy"


def _timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), _cpu_seconds()
    fn()
    return time.perf_counter() - wall, _cpu_seconds() - cpu


def measure(
    checkpoint: Path,
    data: Path,
    batch_size: int = 1024,
    hessian_fraction: float = 0.1,
    repeats: int = 7,
    seed: int = 0,
) -> dict:
    """Median wall and CPU seconds of a training step and of an HVP, flush off and on."""
    model = load_model(checkpoint)
    x = torch.from_numpy(np.load(data)).float()
    g = torch.Generator().manual_seed(seed)
    batch = x[torch.randperm(x.shape[0], generator=g)[:batch_size]]
    points = x[torch.randperm(x.shape[0], generator=g)[: int(hessian_fraction * x.shape[0])]]
    v = torch.randn(sum(p.numel() for p in model.parameters()), generator=g, dtype=torch.float64)
    hvp_repeats = 3

    def step() -> float:
        model.zero_grad(set_to_none=True)
        noise = torch.Generator().manual_seed(seed)  # the same Hutchinson noise every step
        loss = -model(batch, generator=noise).log_prob.mean()
        loss.backward()
        return float(loss.detach())

    def hvps(flush: bool, record: bool) -> tuple[float, torch.Tensor]:
        """Build the operator under the setting (one graph alive at a time), then time HVPs."""
        op = HessianOperator(model, points, noise_seed=seed)
        out = op(v)  # the first HVP allocates the double-backward buffers: not timed
        for _ in range(hvp_repeats if record else 0):
            wall, cpu = _timed(lambda: op(v))
            results[flush]["hvp_wall"].append(wall)
            results[flush]["hvp_cpu"].append(cpu)
        return op.loss_value, out

    keys = ("step_wall", "step_cpu", "hvp_wall", "hvp_cpu")
    results: dict[bool, dict[str, list[float]]] = {f: {k: [] for k in keys} for f in (False, True)}
    outputs: dict[bool, dict] = {}
    supported = flush_denormals(True)
    try:
        for flush in (False, True):  # warm up; keep the outputs to compare
            flush_denormals(flush)
            loss = step()
            hessian_loss, hvp = hvps(flush, record=False)
            outputs[flush] = {"loss": loss, "hessian_loss": hessian_loss, "hvp": hvp}
        for k in range(repeats):
            for flush in (False, True) if k % 2 == 0 else (True, False):
                flush_denormals(flush)
                wall, cpu = _timed(step)
                results[flush]["step_wall"].append(wall)
                results[flush]["step_cpu"].append(cpu)
                hvps(flush, record=True)
                log.info(
                    "repeat %d flush=%s: step %.3f s, HVP %.3f s",
                    k,
                    flush,
                    wall,
                    results[flush]["hvp_wall"][-1],
                )
    finally:
        flush_denormals(False)  # torch's default
    med = {f: {k: statistics.median(v) for k, v in r.items()} for f, r in results.items()}
    hvp_off, hvp_on = outputs[False]["hvp"], outputs[True]["hvp"]
    return {
        "checkpoint": str(checkpoint),
        "data": str(data),
        "supported": supported,
        "threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "hessian_points": int(points.shape[0]),
        "repeats": repeats,
        "median": {"off": med[False], "on": med[True]},
        "raw": {"off": results[False], "on": results[True]},
        "speedup": {k: med[False][k] / med[True][k] for k in med[False]},
        "loss_difference": abs(outputs[False]["loss"] - outputs[True]["loss"]),
        "hessian_loss_difference": abs(
            outputs[False]["hessian_loss"] - outputs[True]["hessian_loss"]
        ),
        "hvp_relative_difference": float(
            (hvp_off - hvp_on).norm() / hvp_off.norm().clamp_min(1e-300)
        ),
    }


def render(res: dict) -> str:
    lines = [
        f"Flush of subnormals on `{res['checkpoint']}` ({res['threads']} thread(s), batch "
        f"{res['batch_size']}, HVP on {res['hessian_points']} points), medians of "
        f"{res['repeats']} interleaved repeats:",
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
    p.add_argument("--data", type=Path, help="training split .npy (default: the study's)")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/denormals.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    data = args.data or default_data(args.checkpoint)
    res = measure(args.checkpoint, data, args.batch_size, repeats=args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(render(res))


if __name__ == "__main__":
    main()
