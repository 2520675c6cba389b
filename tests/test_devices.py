"""Tests for pipeline_lib.devices: GPU slots shared by concurrent jobs, simulated without a GPU.

Concurrency is tested with real OS processes (flock locks are per open file and released by
the kernel), each one a job that leases one of two simulated devices.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from multiprocessing.process import BaseProcess
from pathlib import Path

import pytest
import torch

from pipeline_lib import devices as devices_module
from pipeline_lib.devices import (
    LOCK_DIR_ENV,
    DeviceLease,
    acquire_device,
    default_lock_dir,
    denormals_flushed,
    flush_denormals,
    flushed_denormals,
    set_torch_threads,
    visible_devices,
)

# Jobs are forked from a forkserver that imported torch once: as isolated as spawned
# processes (no locks or files inherited from the test process), but they start in
# milliseconds instead of each importing torch.
_MP = multiprocessing.get_context("forkserver")
_MP.set_forkserver_preload(["pipeline_lib.devices"])


def _job(lock_dir: Path, work: Path, name: str, hold: float) -> None:
    """A GPU job: signal readiness, wait for the common start, lease a device, hold, report."""
    (work / f"{name}.ready").touch()
    while not (work / "go").exists():
        time.sleep(0.005)
    asked = time.time()
    with acquire_device("auto", lock_dir, 30, devices=["0", "1"], poll_interval=0.02) as lease:
        start = time.time()
        (work / f"{name}.held").write_text(lease.lock_path.read_text())
        time.sleep(hold)
        end = time.time()
    record = {"index": lease.index, "device": str(lease.device), "asked": asked}
    (work / f"{name}.json").write_text(json.dumps({**record, "start": start, "end": end}))


def _start_job(lock_dir: Path, work: Path, name: str, hold: float) -> BaseProcess:
    process = _MP.Process(target=_job, args=(lock_dir, work, name, hold), name=name)
    process.start()
    return process


def _wait_for(path: Path, procs: list[BaseProcess], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        for p in procs:
            assert p.exitcode in (None, 0), f"{p.name} failed with exit code {p.exitcode}"
        assert time.monotonic() < deadline, f"timed out waiting for {path.name}"
        time.sleep(0.01)


def _stop(procs: list[BaseProcess]) -> None:
    for p in procs:
        if p.is_alive():
            p.kill()
        p.join(timeout=10)


@pytest.fixture
def no_cuda_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """An environment without scheduler or user GPU settings."""
    for var in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", LOCK_DIR_ENV):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


@pytest.fixture
def fake_cuda(no_cuda_env: pytest.MonkeyPatch) -> list[int]:
    """Pretend torch sees 4 GPUs; returns the list of indices passed to set_device."""
    calls: list[int] = []
    no_cuda_env.setattr(torch.cuda, "is_available", lambda: True)
    no_cuda_env.setattr(torch.cuda, "device_count", lambda: 4)
    no_cuda_env.setattr(torch.cuda, "set_device", lambda d: calls.append(torch.device(d).index))
    return calls


def test_four_jobs_share_two_devices_without_overlap(tmp_path: Path) -> None:
    lock_dir, work = tmp_path / "locks", tmp_path / "work"
    work.mkdir()
    hold, names = 0.5, [f"job{i}" for i in range(4)]
    procs = [_start_job(lock_dir, work, name, hold) for name in names]
    try:
        for name in names:  # all jobs are up and wait at the barrier
            _wait_for(work / f"{name}.ready", procs)
        (work / "go").touch()
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0, f"{p.name} failed with exit code {p.exitcode}"
    finally:
        _stop(procs)
    records = [json.loads((work / f"{name}.json").read_text()) for name in names]
    assert len(records) == 4  # every job completed
    assert {r["index"] for r in records} == {"0", "1"}  # both devices were used
    for r in records:
        assert r["device"] == f"cuda:{r['index']}"
    for index in ("0", "1"):
        intervals = sorted((r["start"], r["end"]) for r in records if r["index"] == index)
        for (_, end), (next_start, _) in zip(intervals, intervals[1:], strict=False):
            assert next_start >= end, f"two jobs held device {index} at once: {intervals}"
    events = sorted([(r["start"], 1) for r in records] + [(r["end"], -1) for r in records])
    held = [sum(change for _, change in events[: i + 1]) for i in range(len(events))]
    assert max(held) == 2  # both slots in use at once, never more
    waits = sorted(r["start"] - r["asked"] for r in records)
    assert waits[2] > hold / 4  # so two of the four jobs had to wait for a slot
    # while held, each lock file named its holder
    assert all("pid=" in (work / f"{name}.held").read_text() for name in names)


def test_killed_job_does_not_leak_its_slot(tmp_path: Path) -> None:
    lock_dir, work = tmp_path / "locks", tmp_path / "work"
    work.mkdir()
    (work / "go").touch()
    job = _start_job(lock_dir, work, "victim", hold=60)
    try:
        _wait_for(work / "victim.held", [job])
        assert f"pid={job.pid} " in (work / "victim.held").read_text()
        with pytest.raises(TimeoutError):  # the slot is really taken...
            acquire_device(lock_dir=lock_dir, timeout=0, devices=["0"])
        os.kill(job.pid, signal.SIGKILL)
        job.join(timeout=10)
    finally:
        _stop([job])
    assert job.exitcode == -signal.SIGKILL
    # ...and free again once its holder died, without any cleanup
    with acquire_device(lock_dir=lock_dir, timeout=5, devices=["0"], poll_interval=0.01) as lease:
        assert lease.index == "0" and lease.device == torch.device("cuda:0")
        assert f"pid={os.getpid()} " in lease.lock_path.read_text()


def test_leases_in_one_process_exclude_each_other_and_release(tmp_path: Path) -> None:
    first = acquire_device(lock_dir=tmp_path, devices=["0", "1"])
    second = acquire_device(lock_dir=tmp_path, devices=["0", "1"])
    assert (first.index, second.index) == ("0", "1")
    assert first.lock_path == tmp_path / "gpu0.lock" and first.held
    with pytest.raises(TimeoutError):
        acquire_device(lock_dir=tmp_path, timeout=0, devices=["0", "1"])
    second.release()
    second.release()  # idempotent
    assert not second.held and second.lock_path.read_text() == ""
    with acquire_device(lock_dir=tmp_path, timeout=0, devices=["0", "1"]) as third:
        assert third.index == "1"
    first.release()


def test_explicit_cuda_index_locks_that_device_only(tmp_path: Path) -> None:
    with acquire_device("cuda:1", tmp_path, devices=["5", "7"]) as lease:
        assert (lease.device, lease.index) == (torch.device("cuda:1"), "7")
        assert lease.lock_path == tmp_path / "gpu7.lock"
        with pytest.raises(TimeoutError):
            acquire_device("cuda:1", tmp_path, timeout=0, devices=["5", "7"])
        assert acquire_device("cuda:0", tmp_path, timeout=0, devices=["5", "7"]).index == "5"
    with pytest.raises(ValueError, match="only 2 CUDA device"):
        acquire_device("cuda:2", tmp_path, devices=["5", "7"])


def test_timeout_error_names_lock_dir_and_gpu_resource_advice(tmp_path: Path) -> None:
    with (
        acquire_device(lock_dir=tmp_path, devices=["0", "1"]),
        acquire_device(lock_dir=tmp_path, devices=["0", "1"]),
    ):
        started = time.monotonic()
        with pytest.raises(TimeoutError) as err:
            acquire_device(lock_dir=tmp_path, timeout=0.2, devices=["0", "1"], poll_interval=0.05)
        assert 0.2 <= time.monotonic() - started < 2
    message = str(err.value)
    assert str(tmp_path) in message
    assert "--resources gpu=N" in message and "N <= 2" in message
    assert f"pid={os.getpid()}" in message  # names the holders


def test_uuid_device_ids_get_file_safe_lock_names(tmp_path: Path) -> None:
    uuid = "GPU-8e2f4c1a-0b7d-4f3e-9a61-2c5d7e8f9a0b"
    with acquire_device(lock_dir=tmp_path, devices=[uuid, "MIG-1/2"]) as lease:
        assert lease.index == uuid and lease.lock_path.name == f"gpu{uuid}.lock"
        with acquire_device(lock_dir=tmp_path, devices=[uuid, "MIG-1/2"]) as other:
            assert other.lock_path.name == "gpuMIG-1_2.lock"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ["0", "1", "2", "3"]),
        ("", []),
        ("0,1", ["0", "1"]),
        (" 2 , 0 ", ["2", "0"]),
        ("-1", []),
        ("1,-1,2", ["1"]),  # CUDA hides everything from the first invalid entry on
        ("0,1,2,3,4,5", ["0", "1", "2", "3"]),  # at most what torch counts
        (
            "GPU-8e2f4c1a-0b7d-4f3e-9a61-2c5d7e8f9a0b,MIG-3b1c2d4e-5f60-7182-93a4-b5c6d7e8f901",
            [
                "GPU-8e2f4c1a-0b7d-4f3e-9a61-2c5d7e8f9a0b",
                "MIG-3b1c2d4e-5f60-7182-93a4-b5c6d7e8f901",
            ],
        ),
    ],
)
def test_visible_devices_follows_cuda_visible_devices(
    fake_cuda: list[int], monkeypatch: pytest.MonkeyPatch, value: str | None, expected: list[str]
) -> None:
    if value is not None:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    assert visible_devices() == expected


def test_visible_devices_is_empty_without_cuda(no_cuda_env: pytest.MonkeyPatch) -> None:
    no_cuda_env.setattr(torch.cuda, "is_available", lambda: False)
    no_cuda_env.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert visible_devices() == []


def test_no_cuda_gives_a_cpu_lease(
    no_cuda_env: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    no_cuda_env.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.INFO, logger="sparseflows.devices"):
        with acquire_device("auto", tmp_path) as lease:
            assert lease.device == torch.device("cpu")
            assert lease.index is None and lease.lock_path is None
    assert "running on CPU" in caplog.text
    assert list(tmp_path.iterdir()) == []  # nothing locked
    assert acquire_device("auto", devices=[]).device == torch.device("cpu")
    with pytest.raises(RuntimeError, match="no CUDA device is visible.*'auto' or 'cpu'"):
        acquire_device("cuda")


def test_cpu_and_other_specs_need_no_lock(tmp_path: Path) -> None:
    lease = acquire_device(" CPU ", tmp_path, devices=["0"])
    assert isinstance(lease, DeviceLease)
    assert lease.device == torch.device("cpu") and lease.lock_path is None
    with pytest.raises(ValueError, match="unknown device 'gpu0'.*'cuda:N'"):
        acquire_device("gpu0")


def test_slurm_job_with_one_gpu_uses_it_without_locking(
    fake_cuda: list[int], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    with acquire_device("auto", tmp_path / "locks") as lease:
        assert (lease.device, lease.index, lease.lock_path) == (torch.device("cuda:0"), "3", None)
        with acquire_device("cuda", tmp_path / "locks") as again:  # the job owns it
            assert again.index == "3"
    assert not (tmp_path / "locks").exists()
    assert fake_cuda == [0, 0]  # made the current device


def test_slurm_job_with_several_gpus_locks_in_a_per_job_dir(
    fake_cuda: list[int], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(devices_module.tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert default_lock_dir().name == "slurm-4242"
    assert default_lock_dir().parent.parent == tmp_path
    with acquire_device() as a, acquire_device() as b:
        assert (a.device, b.device) == (torch.device("cuda:0"), torch.device("cuda:1"))
        assert a.lock_path.parent == default_lock_dir()
    assert fake_cuda == [0, 1]


def test_default_lock_dir_env_override(no_cuda_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    no_cuda_env.setattr(devices_module.tempfile, "tempdir", str(tmp_path))
    assert default_lock_dir().parent == tmp_path
    assert default_lock_dir().name.startswith("sparseflows-gpu-locks-")
    no_cuda_env.setenv(LOCK_DIR_ENV, str(tmp_path / "shared"))
    assert default_lock_dir() == tmp_path / "shared"


def test_set_torch_threads() -> None:
    before = torch.get_num_threads()
    try:
        set_torch_threads(1)
        assert torch.get_num_threads() == 1
        set_torch_threads(2)  # a second call must not fail on the inter-op pool
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            set_torch_threads(bad)


def test_flush_denormals_zeroes_subnormals_and_keeps_a_saturated_flows_numbers() -> None:
    """With the flush on, float32 subnormals become 0; a saturated sigmoid flow (pre-
    activations of tens, as trained toy flows have; its log-density and HVP pass through
    hundreds of subnormals unflushed) gives the same log-density and HVP as with the flush
    off, to float32 rounding. The context manager restores the previous setting."""
    from pipeline_lib.evaluation.hessian import HessianOperator
    from pipeline_lib.flows import FlowConfig, SolverConfig, build_flow

    torch.manual_seed(0)
    cfg = FlowConfig(
        dim=2,
        hidden_dims=(16, 16),
        activation="sigmoid",
        layer_type="mlp",
        trace="hutchinson",
        solver=SolverConfig(method="rk4", step_size=0.25),
    )
    flow = build_flow(cfg)
    with torch.no_grad():
        for p in flow.parameters():
            p.mul_(25.0)  # saturate the sigmoids
    x = torch.randn(256, 2)
    v = torch.randn(sum(p.numel() for p in flow.parameters()), dtype=torch.float64)
    before = denormals_flushed()
    results = {}
    for flush in (False, True):
        with flushed_denormals(flush) as supported:
            if flush and not supported:
                pytest.skip("this CPU cannot flush subnormals")
            assert denormals_flushed() == flush
            logp = flow.log_prob(x, generator=torch.Generator().manual_seed(1))
            hvp = HessianOperator(flow, x, noise_seed=1)(v)
            results[flush] = (logp.detach(), hvp)
        assert denormals_flushed() == before
    (logp_off, hvp_off), (logp_on, hvp_on) = results[False], results[True]
    assert torch.isfinite(logp_on).all()
    torch.testing.assert_close(logp_on, logp_off, rtol=1e-5, atol=1e-5)
    assert float((hvp_on - hvp_off).norm() / hvp_off.norm()) < 1e-5


_TORCH_JOB_PROBE = """
import sys, types
sys.path.insert(0, "workflow/scripts")
import torch
from _runtime import torch_job
from pipeline_lib.devices import denormals_flushed
smk = types.SimpleNamespace(log=[], rule="probe", wildcards={}, threads=2, params={})
assert not denormals_flushed()
with torch_job(smk) as (log, device):
    big = torch.ones(200_000, dtype=torch.int32).view(torch.float32)  # subnormals, 2 threads
    print(denormals_flushed(), int((big * 1.0 == 0).sum()), big.numel())
"""


def test_torch_job_flushes_subnormals_on_every_thread() -> None:
    """The start-up of every torch rule flushes subnormals before torch starts its threads, so
    a multi-threaded product of subnormals is all zeros, not only on the main thread."""
    if not flush_denormals(False):  # probe support without changing this process
        pytest.skip("this CPU cannot flush subnormals")
    proc = subprocess.run(
        [sys.executable, "-c", _TORCH_JOB_PROBE],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    flushed, zeros, total = proc.stdout.split()
    assert flushed == "True" and int(zeros) == int(total)
    assert "subnormals flushed to zero: yes" in proc.stderr
