"""Helpers for tests that submit jobs to the local SLURM cluster (launch/local_slurm.sh)."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SUBMIT = REPO / "launch" / "submit.py"
FAKE_TRAIN = Path(__file__).resolve().parent / "fake_train.py"

# A single process: accelerate's simple launcher (the `accelerate` process is the parent of the script).
SINGLE_PROCESS_CONFIG = """\
compute_environment: LOCAL_MACHINE
distributed_type: 'NO'
num_machines: 1
num_processes: 1
use_cpu: true
mixed_precision: 'no'
"""
# N processes per machine through torchrun's agent, gloo on CPU; launch/node_launch.sh sets the machine count,
# rank, address and port per node.
DDP_CPU_CONFIG = """\
compute_environment: LOCAL_MACHINE
distributed_type: MULTI_GPU
num_machines: 1
num_processes: 1
use_cpu: true
gpu_ids: all
mixed_precision: 'no'
rdzv_backend: static
"""


def require_cluster():
    """Skip when sinfo cannot reach a cluster, unless REQUIRE_SLURM is set (CI): then fail."""
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%D %T"], capture_output=True, text=True, timeout=30)
        ok, why = out.returncode == 0, (out.stderr or out.stdout).strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        ok, why = False, str(e)
    if ok:
        return
    reason = f"no SLURM cluster reachable (sinfo: {why or 'failed'}); start one with: bash launch/local_slurm.sh start"
    if os.environ.get("REQUIRE_SLURM"):
        pytest.fail(reason + " [REQUIRE_SLURM is set]")
    pytest.skip(reason)


def submit(script, output_dir, accelerate_config, *, nodes=1, procs_per_node=None, preset=None, extra=(),
           time_limit="15", signal_lead=30, job_name=None):
    cmd = [sys.executable, str(SUBMIT), str(script), "--accelerate-config", str(accelerate_config),
           "--output-dir", str(output_dir), "--nodes", str(nodes), "--time", time_limit,
           "--signal-lead", str(signal_lead)]
    if procs_per_node:
        cmd += ["--procs-per-node", str(procs_per_node)]
    if preset:
        cmd += ["--config", str(preset)]
    if job_name:
        cmd += ["--job-name", job_name]
    # One thread per process: several jobs share this machine's cores (sbatch passes the environment on).
    out = subprocess.run(cmd + ["--", *extra], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, f"submit failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout.strip().splitlines()[-1]


def job_info(job_id):
    """Fields of `scontrol show job -o` (kept by slurmctld for MinJobAge=300 s after the end)."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        return {}
    return dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", out.stdout))


def wait_for_job(job_id, timeout=240):
    """Wait until the job has ended for good (a requeued job passes through PENDING again)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = job_info(job_id)
        if info.get("JobState") in {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}:
            return info
        time.sleep(1)
    subprocess.run(["scancel", job_id])
    pytest.fail(f"job {job_id} did not finish within {timeout}s: {job_info(job_id)}")


def read_log(output_dir, job_id):
    logs = list((Path(output_dir) / "logs").glob(f"*-{job_id}.out"))
    return logs[0].read_text() if logs else ""


def read_events(output_dir, rank):
    path = Path(output_dir) / f"events-rank{rank}.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")
