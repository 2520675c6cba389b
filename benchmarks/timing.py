"""Timing helpers of the benchmark harness: a synchronizing clock, robust statistics, the machine.

Every timing is repeated and summarized by its median and interquartile range (IQR), which,
unlike mean and standard deviation, are not dragged by the occasional slow repeat of a shared
machine. Variants are measured interleaved (one repeat of each in turn, in a rotating order)
so that a change of machine load affects all of them alike.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Sequence

import torch

__all__ = ["Clock", "environment", "rotated", "summarize"]


class Clock:
    """``perf_counter`` that first waits for queued GPU work, so that a span covers it."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


def median_of(stats: dict, key: str) -> float | None:
    """The median of ``stats[key]`` (a :func:`summarize` result), None when absent."""
    return (stats.get(key) or {}).get("median")


def summarize(samples: Sequence[float]) -> dict:
    """Median, quartiles and IQR of repeated measurements (all samples kept)."""
    values = [float(v) for v in samples]
    if not values:
        return {"median": None, "q1": None, "q3": None, "iqr": None, "n": 0, "samples": []}
    if len(values) == 1:
        q1 = q3 = values[0]
    else:
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return {
        "median": statistics.median(values),
        "q1": q1,
        "q3": q3,
        "iqr": q3 - q1,
        "n": len(values),
        "samples": values,
    }


def rotated(items: Sequence, k: int) -> list:
    """``items`` starting at position ``k`` (mod len): the order of interleaved repeat ``k``."""
    k %= len(items)
    return [*items[k:], *items[:k]]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device, threads: Sequence[int]) -> dict:
    """What the numbers were measured on."""
    import torchdiffeq

    from pipeline_lib.flows import ODENet
    from pipeline_lib.flows.cnf import TRACE_METHODS

    info = {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchdiffeq": getattr(torchdiffeq, "__version__", "unknown"),
        "threads": list(threads),
        "device": str(device),
        "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        # The trace fast paths of pipeline_lib present in this checkout (used automatically).
        "fast_paths": {
            name: hasattr(ODENet, name)
            for name in ("forward_with_jacobian", "forward_with_divergence")
        },
        "trace_methods": list(TRACE_METHODS),
    }
    return info
