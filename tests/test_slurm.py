"""Run a small workflow through ``profiles/slurm`` on a real single-node SLURM cluster.

``tests/slurm/start_cluster.sh`` installs SLURM and munge with apt when they are
missing and starts slurmctld/slurmd on loopback; that needs root or passwordless
sudo, so the test is skipped only when neither is available.  The cluster has no
accounting database, which is what the profile's ``slurm-status-command: squeue`` is
for.  Needs the executor plugin: ``pip install "snakemake-executor-plugin-slurm>=2.7.1"``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "profiles" / "slurm"
START = REPO / "tests" / "slurm" / "start_cluster.sh"
STOP = REPO / "tests" / "slurm" / "stop_cluster.sh"
PLUGIN_REQUIREMENT = "snakemake-executor-plugin-slurm>=2.7.1"
SNAKEMAKE_TIMEOUT_S = 300


def _skip_reason() -> str | None:
    if not sys.platform.startswith("linux"):
        return "a local SLURM cluster needs Linux"
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            return "tests/slurm/start_cluster.sh needs root (not root, no sudo)"
        probe = subprocess.run(["sudo", "-n", "true"], capture_output=True)
        if probe.returncode != 0:
            return "tests/slurm/start_cluster.sh needs root (not root, no passwordless sudo)"
    if shutil.which("apt-get") is None and not Path("/usr/sbin/slurmctld").exists():
        return "SLURM is not installed and apt-get is unavailable to install it"
    return None


_SKIP_REASON = _skip_reason()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(_SKIP_REASON is not None, reason=_SKIP_REASON or ""),
]

# Two submitted rules (python one-liners recording the SLURM environment they ran in)
# and a local aggregation rule. @THREADS@ is replaced before writing the file.
SNAKEFILE = r'''
import sys

PY = sys.executable

localrules: all, aggregate


rule all:
    input:
        "summary.txt",


rule part_a:
    output:
        "part_a.txt",
    threads: @THREADS@
    resources:
        mem_mb=300,
        runtime=7,
    shell:
        """{PY} -c 'import os; e = os.environ.get; print("part_a", "jobid=" + e("SLURM_JOB_ID", ""), "cpus=" + e("SLURM_CPUS_PER_TASK", ""), file=open("{output}", "w"))'"""


rule part_b:
    output:
        "part_b.txt",
    shell:
        """{PY} -c 'import os; e = os.environ.get; print("part_b", "jobid=" + e("SLURM_JOB_ID", ""), file=open("{output}", "w"))'"""


rule aggregate:
    input:
        "part_a.txt",
        "part_b.txt",
    output:
        "summary.txt",
    shell:
        "cat {input} > {output} && echo aggregate jobid=${{SLURM_JOB_ID:-none}} >> {output}"
'''


def _slurm_up() -> bool:
    if shutil.which("scontrol") is None:
        return False
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    return "is UP" in ping.stdout


@pytest.fixture(scope="module")
def slurm_cluster():
    """Start the local cluster; stop it afterwards only if this fixture started it."""
    was_up = _slurm_up()
    proc = subprocess.run(
        ["bash", str(START)], capture_output=True, text=True, timeout=900, check=False
    )
    assert proc.returncode == 0, (
        f"start_cluster.sh failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    )
    yield
    if not was_up:
        subprocess.run(["bash", str(STOP)], capture_output=True, timeout=120, check=False)


def _scontrol_job(jobid: str) -> dict[str, str]:
    out = subprocess.run(
        ["scontrol", "--oneliner", "show", "job", jobid],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(re.findall(r"(?:^|\s)([^\s=]+)=(\S*)", out))


def _fields(line: str) -> dict[str, str]:
    name, *pairs = line.split()
    return {"rule": name, **dict(pair.split("=", 1) for pair in pairs)}


def test_profile_runs_workflow_through_slurm(slurm_cluster, tmp_path):
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.fail(f"the SLURM executor plugin is missing: pip install '{PLUGIN_REQUIREMENT}'")

    threads = min(2, len(os.sched_getaffinity(0)))
    (tmp_path / "Snakefile").write_text(SNAKEFILE.replace("@THREADS@", str(threads)))
    env = dict(os.environ)
    env.pop("SPARSEFLOWS_SLURM_ACCOUNT", None)  # no accounting here: no -A
    env["SPARSEFLOWS_SLURM_PARTITION"] = "debug"
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--profile",
        str(PROFILE),
        "--directory",
        str(tmp_path),
        "--snakefile",
        str(tmp_path / "Snakefile"),
        # keep the per-job SLURM logs (deleted on success by default) to check them
        "--slurm-keep-successful-logs",
        # poll squeue soon: the jobs take seconds (MinJobAge=300 >= 3 x 2 s)
        "--slurm-init-seconds-before-status-checks",
        "2",
        "--nocolor",
    ]
    try:
        proc = subprocess.run(
            cmd,
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=SNAKEMAKE_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        log = (exc.stdout or b"").decode() + (exc.stderr or b"").decode()
        run_id = re.search(r"SLURM run ID: (\S+)", log)
        if run_id:
            subprocess.run(["scancel", "--name", run_id.group(1)], check=False)
        squeue = subprocess.run(["squeue", "--states=all"], capture_output=True, text=True)
        pytest.fail(
            f"snakemake did not finish in {SNAKEMAKE_TIMEOUT_S}s\n"
            f"{log[-6000:]}\nsqueue:\n{squeue.stdout}"
        )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"snakemake failed ({proc.returncode}):\n{log[-8000:]}"

    # Outputs: both parts ran inside SLURM jobs, the aggregation ran locally.
    lines = (tmp_path / "summary.txt").read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["part_a", "part_b", "aggregate"]
    part_a, part_b, aggregate = (_fields(line) for line in lines)
    assert (tmp_path / "part_a.txt").read_text().strip() == lines[0]
    assert (tmp_path / "part_b.txt").read_text().strip() == lines[1]
    assert part_a["jobid"].isdigit() and part_b["jobid"].isdigit(), lines
    assert part_a["jobid"] != part_b["jobid"]
    assert part_a["cpus"] == str(threads), lines
    assert aggregate["jobid"] == "none", "the localrule must not run in a SLURM job"

    # Snakemake submitted exactly the two non-local jobs, with these SLURM ids.
    submitted = dict(
        (rule, jobid)
        for jobid, rule in re.findall(
            r"has been submitted with SLURM jobid (\d+) \(log: \S*/rule_(\w+)/\d+\.log\)", log
        )
    )
    assert submitted == {"part_a": part_a["jobid"], "part_b": part_b["jobid"]}, log[-4000:]
    run_id = re.search(r"SLURM run ID: (\S+)", log).group(1)

    # The plugin's per-job SLURM logs.
    logs = tmp_path / ".snakemake" / "slurm_logs"
    for rule, jobid in submitted.items():
        job_log = logs / f"rule_{rule}" / f"{jobid}.log"
        assert job_log.is_file(), sorted(p.name for p in logs.rglob("*"))
        assert f"rule {rule}:" in job_log.read_text()
    assert not (logs / "rule_aggregate").exists()

    # What SLURM itself recorded for the jobs (finished jobs stay for MinJobAge).
    expected = {
        # rule resources: threads, mem_mb=300, runtime=7
        "part_a": {"CPUs/Task": str(threads), "MinMemoryNode": "300M", "TimeLimit": "00:07:00"},
        # profile default-resources: cpus_per_task=threads (1), mem_mb=2000, runtime=60
        "part_b": {"CPUs/Task": "1", "MinMemoryNode": "2000M", "TimeLimit": "01:00:00"},
    }
    for rule, jobid in submitted.items():
        job = _scontrol_job(jobid)
        want = {
            **expected[rule],
            "JobName": run_id,
            "JobState": "COMPLETED",
            "Partition": "debug",
            "Comment": f"rule_{rule}",
            "Account": "(null)",
            "Requeue": "1",
            "WorkDir": str(tmp_path),
        }
        got = {key: job.get(key) for key in want}
        assert got == want, f"scontrol show job {jobid}: {job}"
