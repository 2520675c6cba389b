"""Benchmark harness: ``python -m benchmarks.run [--quick] [--out benchmarks/out] [--only NAME]``.

Runs the sections of :mod:`benchmarks.sections` in one process, writes ``<out>/<name>.json``
per section plus ``<out>/device.json``, renders ``<out>/summary.md`` from every section JSON
present in ``<out>`` and prints it. See ``benchmarks/README.md`` for what each section measures.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from benchmarks.sections import SECTION_FUNCTIONS, SECTIONS, Settings, miniboone_spec
from benchmarks.timing import Clock, environment, median_of

__all__ = ["main", "render_summary", "run"]

DEFAULT_OUT = Path(__file__).resolve().parent / "out"
log = logging.getLogger("sparseflows.benchmarks")


def _clean(value):
    """JSON-safe: NaN/inf become null, tuples lists, paths strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(payload), indent=2, allow_nan=False) + "\n")


def run(settings: Settings, out: Path, only: Sequence[str] | None = None) -> str:
    """Run the selected sections (all but ``pipeline`` in ``tiny`` mode when ``only`` is None),
    write their JSON and the summary; return the summary's Markdown."""
    out = Path(out)
    if only:
        unknown = sorted(set(only) - set(SECTIONS))
        if unknown:
            raise SystemExit(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
        selected = [name for name in SECTIONS if name in only]
    else:
        selected = [n for n in SECTIONS if not (n == "pipeline" and settings.mode == "tiny")]
    device = torch.device(settings.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    clock = Clock(device)
    env = environment(device, settings.threads)
    write_json(out / "device.json", {"section": "device", "mode": settings.mode, **env})
    threads_before = torch.get_num_threads()
    state: dict = {}
    try:
        for name in selected:
            log.info("section %s (%s mode) ...", name, settings.mode)
            t0 = time.perf_counter()
            results = SECTION_FUNCTIONS[name](settings, clock, state)
            payload = {
                "section": name,
                "mode": settings.mode,
                "seconds": time.perf_counter() - t0,
                "environment": env,
                "settings": settings.to_dict(),
                "results": results,
            }
            write_json(out / f"{name}.json", payload)
            log.info("section %s done in %.1f s", name, payload["seconds"])
    finally:
        torch.set_num_threads(threads_before)
    summary = render_summary(out)
    (out / "summary.md").write_text(summary)
    return summary


# --------------------------------------------------------------------------- Markdown


def _num(x, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, int):
        return str(x)
    if x == 0:
        return "0"
    return f"{x:.{digits}g}" if abs(x) < 10**digits else f"{x:.0f}"


def _mi(stat: dict | None) -> str:
    """``median (IQR)`` of a summarized statistic."""
    if not stat or stat.get("median") is None:
        return "–"
    return f"{_num(stat['median'])} ({_num(stat['iqr'], 2)})"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _ratio(x, at_least=None) -> str:
    if x is not None:
        return f"{x:.2f}×"
    return f"≥ {at_least:.2f}×" if at_least is not None else "–"


def _iteration_lines(res: dict) -> list[str]:
    header = [
        "threads",
        "variant",
        "ms/iter",
        "ms fwd",
        "ms bwd+step",
        "NFE fwd/bwd",
        "ms/NFE",
        "ref/ours ms/iter",
        "ref/ours ms/NFE",
    ]
    rows = []
    for r in res["rows"]:
        nfe = f"{_num(median_of(r, 'nfe_forward'))}/{_num(median_of(r, 'nfe_backward'))}"
        label = r["label"] + (f" **failed: {r['error'][:80]}**" if r.get("error") else "")
        rows.append(
            [
                r["threads"],
                label,
                _mi(r["ms_iter"]),
                _mi(r["ms_forward"]),
                _mi(r["ms_backward"]),
                nfe,
                _mi(r["ms_per_nfe"]),
                _ratio(r["ratio_ms_iter"]),
                _ratio(r["ratio_ms_per_nfe"]),
            ]
        )
    return _table(header, rows)


def _architecture(m: dict) -> str:
    return f"concatsquash {len(m['hidden_dims'])}×{m['hidden_dims'][0]} {m['activation']}"


def _section_toy(res: dict) -> list[str]:
    m = res["model"]
    head = (
        f"Table S1 Gaussians flow: {_architecture(m)}, batch {m['batch_size']}, "
        f"dopri5 rtol={m['rtol']:g} atol={m['atol']:g}, AdamW."
    )
    return [head, "", *_iteration_lines(res)]


def _section_tabular(res: dict) -> list[str]:
    m = res["model"]
    head = (
        f"MINIBOONE-size flow: {_architecture(m)}, d={m['dim']}, T={m['T']:g} (trained), "
        f"batch {m['batch_size']}, {res['data']}; {res['note']}."
    )
    return [head, "", *_iteration_lines(res)]


def _section_ttq(res: dict) -> list[str]:
    head = (
        f"Gaussians ({res['n_per_mode']} per mode, {res['n_train']} training points), "
        f"{res['threads']} thread(s): training seconds (validation excluded) until the "
        f"validation NLL (exact trace, dopri5 {res['eval']['solver']['rtol']:g}) is at most "
        f"{res['threshold_nats']:g} nats; budget {res['budget_seconds']:g} s per variant."
    )
    header = [
        "variant",
        "reached",
        "epochs",
        "iterations",
        "train s to threshold",
        "train s total",
        "final val NLL",
        "test NLL",
        "ref/ours s",
    ]
    rows = [
        [
            r["label"],
            "yes" if r["reached"] else f"no ({r['stopped']})",
            r["epochs"],
            r["iterations"],
            _num(r["seconds_to_threshold"]),
            _num(r["train_seconds"]),
            _num(r["final_val_nll"], 4),
            _num(r["test_nll"], 4),
            _ratio(r["ratio_seconds"], r.get("ratio_seconds_at_least")),
        ]
        for r in res["runs"]
    ]
    return [head, "", *_table(header, rows)]


def _section_hessian(res: dict) -> list[str]:
    h = res["hessian"]
    head = (
        f"`hessian_metrics` on one checkpoint ({res['weights']}); settings {h}, "
        f"divergence {res['divergence']}."
    )
    header = ["threads", "solver", "s per checkpoint", "HVPs", "s/HVP", "setup s"]
    rows = [
        [
            r["threads"],
            r["solver"],
            _mi(r["seconds"]),
            r["n_hvp"],
            _mi(r["seconds_per_hvp"]),
            _mi(r["seconds_setup"]),
        ]
        for r in res["rows"]
    ]
    return [head, "", *_table(header, rows)]


def _section_sampling(res: dict) -> list[str]:
    head = f"`flow.sample({res['n']})`, dopri5 rtol={res['solver']['rtol']:g}, {res['weights']}."
    header = ["threads", "mode", "samples/s", "NFE"]
    rows = [
        [r["threads"], r["mode"], _mi(r["samples_per_second"]), _num(median_of(r, "nfe"))]
        for r in res["rows"]
    ]
    return [head, "", *_table(header, rows)]


def _section_batched(res: dict) -> list[str]:
    head = (
        f"Variant (d) (Table S1 flow, rk4 step {res['solver']['step_size']:g}, exact trace): "
        "forward + backward of K models, stacked weights under `torch.func.vmap` vs one after "
        "another. Ratio > 1: training them together is faster."
    )
    header = [
        "threads",
        "models",
        "ms/model sequential",
        "ms/model batched",
        "ratio",
        "max |Δloss|",
    ]
    rows = [
        [
            r["threads"],
            r["models"],
            _mi(r["ms_per_model_sequential"]),
            _mi(r["ms_per_model_batched"]),
            f"{r['ratio']:.2f}×",
            f"{r['max_loss_difference']:.1e}",
        ]
        for r in res["rows"]
    ]
    return [head, "", *_table(header, rows)]


def _section_pipeline(res: dict) -> list[str]:
    cfg = res["config"] + (" (cut to 1 experiment/seed/epoch/round)" if res["shrunk"] else "")
    header = ["config", "cores", "wall s", "peak RSS MiB", "jobs", "status"]
    status = "ok" if res["returncode"] == 0 else f"failed (rc {res['returncode']})"
    rows = [
        [
            cfg,
            res["cores"],
            _num(res["wall_seconds"]),
            _num(res["peak_rss_mib"]),
            res["jobs"] if res["jobs"] is not None else "–",
            status,
        ]
    ]
    return [
        f"Peak RSS: largest single process, from {res['peak_rss_source']}.",
        "",
        *_table(header, rows),
    ]


def _section_images(res: dict) -> list[str]:
    shape = "×".join(str(v) for v in res["image_shape"])
    head = (
        f"One training iteration of the multiscale image flow on {shape} images, batch "
        f"{res['batch']}; the epoch extrapolated to {res['train_size']:,} training images."
    )
    header = ["threads", "variant", "params", "s/iteration", "NFE", "h/epoch"]
    rows = [
        [
            r["threads"],
            r["variant"],
            f"{r['params']:,}",
            _mi(r["seconds_per_iteration"]),
            _num(median_of(r, "nfe_forward_backward")),
            f"{r['epoch_hours']:.2f}",
        ]
        for r in res["rows"]
    ]
    return [head, "", *_table(header, rows)]


RENDERERS = {
    "toy": ("ms per training iteration, toy (Table S1)", _section_toy),
    "tabular": ("ms per training iteration, tabular size", _section_tabular),
    "time_to_quality": ("Time to quality", _section_ttq),
    "batched": ("Several models in one process", _section_batched),
    "hessian": ("Hessian metrics cost", _section_hessian),
    "sampling": ("Sampling throughput", _section_sampling),
    "images": ("Image flows: cost of a training epoch", _section_images),
    "pipeline": ("Default pipeline", _section_pipeline),
}


def render_summary(out: Path) -> str:
    """Markdown tables of every section JSON in ``out`` (ratios are reference / ours)."""
    out = Path(out)
    lines = ["# Benchmark summary", ""]
    device = out / "device.json"
    if device.exists():
        d = json.loads(device.read_text())
        gpu = f", CUDA {d['cuda_device']}" if d.get("cuda_device") else ""
        lines += [
            f"Device: {d['cpu_model']} ({d['cpu_count']} CPUs){gpu}; torch {d['torch']}, "
            f"torchdiffeq {d['torchdiffeq']}; threads {d['threads']}; trace methods "
            f"{d.get('trace_methods')}; fast paths {d.get('fast_paths')}.",
            "",
            "Timings: median (IQR) over interleaved repeats. Ratios are reference / ours "
            "(> 1: ours is faster).",
            "",
        ]
    for name in SECTIONS:
        path = out / f"{name}.json"
        if not path.exists():
            continue
        payload = json.loads(path.read_text())
        title, render = RENDERERS[name]
        lines += [f"## {title} ({payload['mode']} mode)", "", *render(payload["results"]), ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Benchmark the sparseflows training, evaluation and pipeline against a "
        "reference FFJORD code path. Writes <out>/<section>.json and <out>/summary.md.",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small data, few repeats, low budgets")
    mode.add_argument(
        "--tiny", action="store_true", help="seconds-long smoke test on tiny models (no pipeline)"
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    p.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help=f"run only this section (repeatable or comma-separated): {', '.join(SECTIONS)}",
    )
    p.add_argument("--threads", type=int, nargs="+", help="torch threads to measure (default 1 2)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--repeats", type=int, help="timed iterations per variant (toy section)")
    p.add_argument("--n-per-mode", type=int, help="Gaussians per mode for time to quality")
    p.add_argument("--threshold", type=float, help="validation NLL target (nats)")
    p.add_argument("--budget", type=float, help="training-seconds budget per variant")
    p.add_argument(
        "--tabular-tol", type=float, help="dopri5 rtol=atol of the tabular section (default 1e-5)"
    )
    p.add_argument("--pipeline-cores", type=int, help="snakemake --cores of the pipeline section")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress")
    return p.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> Settings:
    mode = "quick" if args.quick else "tiny" if args.tiny else "full"
    overrides: dict = {"device": args.device}
    if args.threads:
        overrides["threads"] = tuple(args.threads)
    if args.repeats:
        overrides["repeats"] = args.repeats
    if args.n_per_mode:
        overrides["ttq_n_per_mode"] = args.n_per_mode
    if args.threshold is not None:
        overrides["ttq_threshold"] = args.threshold
    if args.budget is not None:
        overrides["ttq_budget_s"] = args.budget
    if args.pipeline_cores:
        overrides["pipeline_cores"] = args.pipeline_cores
    if args.tabular_tol is not None:
        overrides["tabular"] = miniboone_spec(args.tabular_tol)
    return Settings.preset(mode, **overrides)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(message)s",
    )
    only = [name for item in args.only or [] for name in item.split(",") if name]
    summary = run(settings_from_args(args), args.out, only or None)
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
