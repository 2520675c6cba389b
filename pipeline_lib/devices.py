"""GPU slot assignment for concurrently running pipeline jobs, and torch thread limits.

Snakemake runs at most ``N`` GPU-tagged rules at once (``--resources gpu=N``, every such rule
declares ``resources: gpu=1``), but it does not tell a job *which* GPU it got. Left alone,
every job would train on ``cuda:0``. :func:`acquire_device` closes this gap: each job takes
one of the visible devices by holding an exclusive lock file ``gpu<id>.lock`` in a lock
directory shared by all jobs of the machine, and gives it back when it is done.

**Why** ``flock``. The locks are :func:`fcntl.flock` locks on an open file. The kernel
releases them when the holding process exits for whatever reason (an exception, Ctrl-C,
``kill -9``, the out-of-memory killer), so a crashed job never leaks a slot and there are
no stale files to clean up. A lock belongs to the open file, not to the process, so two
leases taken in the same process also exclude each other. Lock files are never deleted:
deleting a file that another job is about to lock would let two jobs hold "the same" slot.
Each lock file holds the pid, host and start time of its current holder, for debugging.

**Which devices.** :func:`visible_devices` lists the devices this process may use:
``CUDA_VISIBLE_DEVICES`` when it is set (a SLURM allocation, or a user who reserves GPUs
for something else), otherwise all devices torch sees. Lock files are named after these
ids, so jobs that see the same GPUs under the same ids coordinate. Inside a SLURM job the
scheduler has already isolated the allocated GPUs: with one visible device it is used
without any lock, and with several (Snakemake running many jobs inside one allocation)
the default lock directory is private to the SLURM job, since device ids there are
relative to the allocation and another job on the same node may see *its* GPUs under the
same ids.

**Threads.** :func:`set_torch_threads` limits torch's intra- and inter-op thread pools to
the ``threads:`` of the rule, so that ``--cores`` is respected when many jobs run at once.

**Subnormal numbers.** :func:`flush_denormals` makes the CPU treat subnormal floats as zero.
Every torch rule calls it before any torch work: trained sigmoid flows saturate, and the
products of ``σ'`` in the divergence and in the Hessian's double backward then underflow into
the subnormal range, where x86 arithmetic is tens of times slower.

Example (the script of a GPU rule with ``threads: 4`` and ``resources: gpu=1``)::

    set_torch_threads(snakemake.threads)
    with acquire_device(cfg.device) as lease:  # "auto": a free GPU, else CPU
        result = train(flow, data.train, data.val, replace(cfg, device=str(lease.device)))
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

import torch

try:  # POSIX only; on Windows GPU slots cannot be locked (see _lock_slot).
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "LOCK_DIR_ENV",
    "DeviceLease",
    "acquire_device",
    "default_lock_dir",
    "denormals_flushed",
    "flush_denormals",
    "flushed_denormals",
    "set_torch_threads",
    "visible_devices",
]

log = logging.getLogger("sparseflows.devices")

LOCK_DIR_ENV = "SPARSEFLOWS_GPU_LOCK_DIR"
"""Environment variable naming the lock directory (overrides the default under the temp dir)."""


class DeviceLease:
    """A device held by this job until :meth:`release` (or the end of the ``with`` block).

    Attributes:
        device: the :class:`torch.device` to train on, e.g. ``cuda:1``. Its index counts
            within this process's visible devices, as torch does.
        index: the visible-device id as ``CUDA_VISIBLE_DEVICES`` spells it (``"3"``,
            ``"GPU-8e2f…"``), or ``None`` on CPU and other non-CUDA devices.
        lock_path: the lock file held, or ``None`` when nothing needed locking (CPU, or the
            single GPU of a SLURM job).
    """

    def __init__(
        self,
        device: torch.device,
        index: str | None = None,
        lock_path: Path | None = None,
        lock_file: IO[str] | None = None,
    ) -> None:
        self.device = device
        self.index = index
        self.lock_path = lock_path
        self._lock_file = lock_file

    @property
    def held(self) -> bool:
        """Whether this lease still holds its lock file (always False for unlocked leases)."""
        return self._lock_file is not None

    def release(self) -> None:
        """Give the device back. Safe to call more than once."""
        lock_file, self._lock_file = self._lock_file, None
        if lock_file is None:
            return
        try:
            lock_file.seek(0)
            lock_file.truncate()
            lock_file.flush()
        finally:
            lock_file.close()  # closing the file releases the flock
        log.debug("released %s (%s)", self.device, self.lock_path)

    def __enter__(self) -> DeviceLease:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"DeviceLease(device={self.device!r}, index={self.index!r}, lock_path={self.lock_path!r})"


def _parse_visible(value: str) -> list[str]:
    """Device ids of a ``CUDA_VISIBLE_DEVICES`` value, with CUDA's rules.

    Entries are comma separated and may be indices or UUIDs (``GPU-…``, ``MIG-…``); CUDA
    ignores the first invalid entry (empty, or negative like ``-1``) and everything after.
    """
    ids: list[str] = []
    for entry in value.split(","):
        entry = entry.strip()
        if not entry or entry.startswith("-"):
            break
        ids.append(entry)
    return ids


def visible_devices() -> list[str]:
    """The CUDA devices this process may use, as ids; an empty list means CPU only.

    With ``CUDA_VISIBLE_DEVICES`` set, its entries (``"0,1"`` → ``["0", "1"]``, ``""`` →
    ``[]``, UUIDs kept as they are), at most as many as torch counts. Unset: ``"0"`` …
    ``"n-1"`` for the ``n`` devices torch sees. Empty whenever torch has no CUDA.
    """
    if not torch.cuda.is_available():
        return []
    count = torch.cuda.device_count()
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return [str(i) for i in range(count)]
    return _parse_visible(value)[:count]


def _in_slurm_allocation() -> bool:
    """Whether a SLURM job set up this process's GPUs (it sets ``CUDA_VISIBLE_DEVICES``)."""
    return "SLURM_JOB_ID" in os.environ and "CUDA_VISIBLE_DEVICES" in os.environ


def default_lock_dir() -> Path:
    """The lock directory used when :func:`acquire_device` is given none.

    ``$SPARSEFLOWS_GPU_LOCK_DIR`` if set, else ``<temp dir>/sparseflows-gpu-locks-<user>``;
    inside a SLURM job a subdirectory ``slurm-<job id>``, since device ids there are
    relative to the job's allocation. The directory must be local to the machine whose
    GPUs it guards, and shared by all jobs that share these GPUs.
    """
    base = os.environ.get(LOCK_DIR_ENV)
    if base:
        path = Path(base)
    else:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # no passwd entry, e.g. in some containers
            user = str(os.getuid())
        path = Path(tempfile.gettempdir()) / f"sparseflows-gpu-locks-{user}"
    if _in_slurm_allocation():
        path = path / f"slurm-{os.environ['SLURM_JOB_ID']}"
    return path


def _lock_name(device_id: str) -> str:
    return "gpu" + re.sub(r"[^A-Za-z0-9_.-]", "_", device_id) + ".lock"


def _lock_slot(path: Path) -> IO[str] | None:
    """Try to lock ``path`` without waiting; the open file while held, else None."""
    if fcntl is None:  # pragma: no cover
        raise RuntimeError(
            "GPU slots are locked with fcntl.flock, which this platform lacks; "
            "pass an explicit device such as 'cuda:0' per job, or 'cpu'"
        )
    try:
        lock_file = open(path, "a+", encoding="utf-8")  # creates, never truncates
    except OSError as e:
        raise RuntimeError(
            f"cannot open GPU lock file {path}: {e}. Make the directory writable, or set "
            f"{LOCK_DIR_ENV} to a writable directory on this machine"
        ) from e
    try:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.close()
        return None
    except BaseException:
        lock_file.close()
        raise
    lock_file.seek(0)
    lock_file.truncate()
    lock_file.write(
        f"pid={os.getpid()} host={socket.gethostname()} "
        f"since={time.strftime('%Y-%m-%dT%H:%M:%S')}\n"
    )
    lock_file.flush()
    return lock_file


def _holders(lock_dir: Path, ids: Sequence[str]) -> str:
    """Who holds each slot, from the lock files (best effort, for error messages)."""
    lines = []
    for device_id in ids:
        try:
            text = (lock_dir / _lock_name(device_id)).read_text(encoding="utf-8").strip()
        except OSError:
            text = ""
        lines.append(f"  {_lock_name(device_id)}: {text or '(holder unknown)'}")
    return "\n".join(lines)


def acquire_device(
    spec: str = "auto",
    lock_dir: str | Path | None = None,
    timeout: float | None = 600.0,
    *,
    devices: Sequence[str] | None = None,
    poll_interval: float = 0.5,
    set_device: bool = True,
) -> DeviceLease:
    """Take a device for this job; hold it until the lease is released.

    Arguments:
        spec: ``auto`` (a free GPU if CUDA is available, else CPU), ``cuda`` (a free GPU;
            an error without CUDA), ``cuda:N`` (the ``N``-th visible GPU, waiting until it
            is free), or any other torch device such as ``cpu`` or ``mps`` (no locking).
        lock_dir: directory of the lock files; default :func:`default_lock_dir`.
        timeout: seconds to wait for a free GPU before raising :class:`TimeoutError`;
            ``None`` waits forever, ``0`` tries once.
        devices: visible device ids to choose from instead of :func:`visible_devices`
            (for tests, or to restrict a job to some GPUs).
        poll_interval: seconds between attempts while all GPUs are busy.
        set_device: make the leased GPU torch's current device
            (:func:`torch.cuda.set_device`), so code that says just ``"cuda"`` uses it.

    Returns:
        A :class:`DeviceLease`, also a context manager that releases it on exit. If the
        process dies, the operating system releases it.

    Raises:
        TimeoutError: every candidate GPU stayed busy for ``timeout`` seconds; the message
            names the lock directory and the holders.
        RuntimeError: ``cuda`` or ``cuda:N`` was requested but no CUDA device is visible.
        ValueError: ``spec`` is not a device, or ``cuda:N`` is beyond the visible devices.

    Example:
        >>> with acquire_device("cpu") as lease:
        ...     lease.device
        device(type='cpu')
    """
    spec = spec.strip().lower()
    if spec != "auto":
        try:
            requested = torch.device(spec)
        except RuntimeError as e:
            raise ValueError(
                f"unknown device {spec!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'"
            ) from e
        if requested.type != "cuda":
            return DeviceLease(requested)
    ids = list(visible_devices() if devices is None else devices)
    if not ids:
        if spec != "auto":
            raise RuntimeError(
                f"device {spec!r} requested but no CUDA device is visible "
                f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}, "
                f"torch CUDA build: {torch.version.cuda is not None}); "
                "set the device to 'auto' or 'cpu', or run on a machine with a GPU"
            )
        log.info("no CUDA device visible: running on CPU")
        return DeviceLease(torch.device("cpu"))

    if spec in ("auto", "cuda"):
        candidates = list(range(len(ids)))
    else:
        wanted = torch.device(spec).index or 0
        if wanted >= len(ids):
            raise ValueError(
                f"device {spec!r} requested but only {len(ids)} CUDA device(s) are visible "
                f"({', '.join(ids)}); use 'auto' to take any free one"
            )
        candidates = [wanted]

    if len(ids) == 1 and _in_slurm_allocation():
        # The scheduler gave this job exactly this GPU: nobody else can see it.
        lease = DeviceLease(torch.device("cuda", candidates[0]), ids[candidates[0]])
        log.info(
            "using %s (visible device %s) of SLURM job %s",
            lease.device,
            lease.index,
            os.environ["SLURM_JOB_ID"],
        )
        return _activate(lease, set_device)

    lock_path = Path(lock_dir) if lock_dir is not None else default_lock_dir()
    try:
        lock_path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RuntimeError(
            f"cannot create the GPU lock directory {lock_path}: {e}. "
            f"Set {LOCK_DIR_ENV} to a writable directory on this machine"
        ) from e

    start = time.monotonic()
    warned = False
    while True:
        for k in candidates:
            path = lock_path / _lock_name(ids[k])
            lock_file = _lock_slot(path)
            if lock_file is not None:
                lease = DeviceLease(torch.device("cuda", k), ids[k], path, lock_file)
                log.info("acquired %s (visible device %s, lock %s)", lease.device, ids[k], path)
                return _activate(lease, set_device)
        waited = time.monotonic() - start
        if timeout is not None and waited >= timeout:
            busy = [ids[k] for k in candidates]
            raise TimeoutError(
                f"no free GPU after {waited:.0f} s: all {len(busy)} candidate device(s) "
                f"({', '.join(busy)}) are held by other jobs, per the lock files in "
                f"{lock_path}:\n{_holders(lock_path, busy)}\n"
                "Most likely more GPU jobs run at once than there are GPUs: run snakemake "
                f"with --resources gpu=N where N <= {len(ids)} (the number of visible GPUs), "
                "or wait for the other pipeline using these GPUs. A lock is released as soon "
                "as its process exits; a lock held by a live process is in use."
            )
        if not warned:
            log.warning(
                "all %d candidate GPU(s) are busy (locks in %s); waiting for one to be free",
                len(candidates),
                lock_path,
            )
            warned = True
        sleep = poll_interval if timeout is None else min(poll_interval, timeout - waited)
        time.sleep(max(sleep, 0.0))


def _activate(lease: DeviceLease, set_device: bool) -> DeviceLease:
    """Make the leased GPU torch's current device (skipped where torch has no CUDA)."""
    if set_device and lease.device.type == "cuda" and torch.cuda.is_available():
        try:
            torch.cuda.set_device(lease.device)
        except BaseException:
            lease.release()
            raise
    return lease


def denormals_flushed() -> bool:
    """Whether the calling thread's CPU arithmetic flushes subnormal floats to zero (the
    smallest float32 subnormal, made by reinterpreting the bits of the integer 1, times 1)."""
    smallest = torch.ones(1, dtype=torch.int32).view(torch.float32)
    return bool(smallest * 1.0 == 0)


def flush_denormals(enabled: bool = True) -> bool:
    """Flush subnormal floats to zero on the CPU (``torch.set_flush_denormal``); returns
    whether the CPU supports it (False, and nothing changes, where it does not).

    Why: a sigmoid flow trained on the toy data saturates (pre-activations of tens), so
    ``σ'(a) = σ(a)(1 − σ(a))`` and its products in the divergence and in Hessian-vector
    products fall below float32's smallest normal number (1.2e-38). Arithmetic on such
    subnormals is ≈ 30 times slower on x86 (a [1638, 64] product: 14 µs on normal numbers,
    424 µs on subnormals). ``python -m benchmarks.denormals`` measures the effect on a trained
    round (benchmarks/README.md): 1.16× per training step and per HVP on the dense l4_h64
    GaussianSpiral flow (learning rate 5e-2), none on a Gaussians l2_h128 flow (5e-3).

    What it changes: values below 1.2e-38 in magnitude (2.2e-308 in float64) become 0.
    Every quantity the pipeline reports is a log-density, a mean or a Ritz value far above
    that, and log-densities are computed in log space; on the checkpoints measured, the loss
    and the HVP were bit-identical, and ``tests/test_devices.py`` checks a saturated flow's
    log-density and HVP to rounding level.

    Scope: the setting is a CPU control register of the *calling thread*; threads created
    afterwards inherit it, threads that already exist keep theirs. Call it before any parallel
    torch work (torch starts its intra-op pool lazily, at the first parallel operation), as
    the workflow's ``torch_job`` does. GPU arithmetic is unaffected.
    """
    return bool(torch.set_flush_denormal(bool(enabled)))


@contextlib.contextmanager
def flushed_denormals(enabled: bool = True) -> Iterator[bool]:
    """:func:`flush_denormals` inside the block, the calling thread's previous setting after
    it; yields whether the CPU supports the flush."""
    before = denormals_flushed()
    try:
        yield flush_denormals(enabled)
    finally:
        flush_denormals(before)


def set_torch_threads(n: int) -> None:
    """Limit torch to ``n`` threads, the ``threads:`` Snakemake gave the rule.

    Sets the intra-op pool (:func:`torch.set_num_threads`) and, when torch still allows it,
    the inter-op pool (:func:`torch.set_num_interop_threads` may be set only once per process
    and only before any parallel work; later calls keep the earlier value).

    Raises:
        ValueError: ``n`` is smaller than 1.
    """
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(
            f"threads must be a positive integer, got {n!r}; check the rule's threads:"
        )
    n = int(n)
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:
        log.debug("inter-op threads already fixed at %d", torch.get_num_interop_threads())
