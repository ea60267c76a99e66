"""Real Slurm: ``sbatch`` the script rendered by ``python -m fcn8s.cluster render --scheduler slurm``.

A single-node cluster on loopback (tests/infra/slurm.sh: munge, slurmctld, slurmd) runs 1 node x
2 tasks of a short CPU training; srun starts one fcn8s.train per task and fcn8s.distributed turns
SLURM_PROCID/NTASKS/LOCALID into a MindSpore dynamic cluster.
"""
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, run_module
from tests.infra import run_script, unavailable

TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED")
JOB_TIMEOUT = 1200


@pytest.fixture(scope="module")
def slurm():
    """A running single-node Slurm cluster (started here when we are root and it is installed)."""
    if shutil.which("sbatch") is None:
        unavailable("Slurm is not installed: run `make infra` as root (tests/infra/slurm.sh)")
    if os.geteuid() == 0:
        started = run_script("slurm.sh", "start", timeout=120)
        if started.returncode != 0:
            pytest.fail(f"cannot start Slurm:\n{started.stdout}{started.stderr}")
    ping = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    if ping.returncode != 0 or not re.match(r"(idle|mixed|allocated)", ping.stdout.strip()):
        unavailable(f"no idle Slurm node here (sinfo: {ping.stdout.strip() or ping.stderr.strip()})")


def _render(tmp_path, name, steps):
    """The sbatch script for 1 node x 2 CPU ranks of configs/cpu_smoke.yaml, as users would render it."""
    run_module("fcn8s.cluster", "render", "--scheduler", "slurm", "--nodes", "1", "--devices-per-node", "2",
               "--config", "configs/cpu_smoke.yaml", "--job-name", name, "--log", str(tmp_path / "%x-%j.out"),
               "--set", f"data.mindrecord_dir={tmp_path.parent / 'mr'}", "--set", f"train.max_steps={steps}",
               "--set", "train.batch_size=2", "--set", "train.log_interval=1", "--out", tmp_path, check=True)
    return tmp_path / "fcn8s.sbatch"


def _submit(script, env):
    result = subprocess.run(["sbatch", "--parsable", str(script)], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, **env}, check=True)
    return result.stdout.strip().split(";")[0]


def _job(job_id):
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S+)", out))


def _wait(job_id):
    deadline = time.monotonic() + JOB_TIMEOUT
    while time.monotonic() < deadline:
        job = _job(job_id)
        if job.get("JobState") in TERMINAL:
            return job
        time.sleep(2)
    subprocess.run(["scancel", job_id])
    pytest.fail(f"job {job_id} did not finish within {JOB_TIMEOUT} s: {_job(job_id)}")


def _job_processes(job_id):
    """PIDs of processes that belong to Slurm job ``job_id`` (by their environment)."""
    marker = f"SLURM_JOB_ID={job_id}\0".encode()
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                if marker in handle.read():
                    pids.append(int(pid))
        except OSError:
            continue
    return pids


def _no_processes_left(job_id, grace=60):
    deadline = time.monotonic() + grace
    while _job_processes(job_id) and time.monotonic() < deadline:
        time.sleep(1)
    return _job_processes(job_id)


@pytest.fixture(scope="module")
def job_dir(mindrecord_dir, tmp_path_factory):
    """A scratch dir next to a copy of the synthetic MindRecord set (``../mr``)."""
    root = tmp_path_factory.mktemp("slurm")
    shutil.copytree(mindrecord_dir, root / "mr")
    return root


@pytest.mark.slow
def test_sbatch_two_cpu_ranks_completes_with_identical_weights(slurm, job_dir):
    work = job_dir / "ok"
    work.mkdir()
    out = work / "out"
    job_id = _submit(_render(work, "fcn8s-test-ok", steps=3), {"PYTHON": sys.executable, "OUTPUT_DIR": str(out)})
    job = _wait(job_id)
    log = (work / f"fcn8s-test-ok-{job_id}.out").read_text()
    assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", f"{job}\n{log[-4000:]}"
    assert "launcher slurm: rank 0 of 2" in log and "launcher slurm: rank 1 of 2" in log
    sums = dict(re.findall(r"\[rank (\d)/2\] INFO fcn8s.trainer: parameter checksum (\w+)", log))
    assert set(sums) == {"0", "1"} and sums["0"] == sums["1"], log[-4000:]
    assert (out / "checkpoints" / "fcn8s-final.ckpt").is_file()
    assert "checkpoint (written by rank 0)" in log  # rank 1 saved nothing
    assert _no_processes_left(job_id) == []


@pytest.mark.slow
def test_a_failing_rank_fails_the_job_and_leaves_no_process(slurm, job_dir, tmp_path):
    work = job_dir / "fail"
    work.mkdir()
    # Rank 1 gets a data dir without a train split: it dies with a user error after joining the cluster.
    wrapper = work / "python-rank1-fails"
    wrapper.write_text("#!/usr/bin/env bash\nset -euo pipefail\n"
                       'if [[ "${SLURM_PROCID}" == 1 ]]; then\n'
                       f'  exec {sys.executable} "$@" data.mindrecord_dir={tmp_path}\nfi\n'
                       f'exec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    job_id = _submit(_render(work, "fcn8s-test-fail", steps=50),
                     {"PYTHON": str(wrapper), "OUTPUT_DIR": str(work / "out")})
    job = _wait(job_id)
    log = (work / f"fcn8s-test-fail-{job_id}.out").read_text()
    assert job["JobState"] == "FAILED" and job["ExitCode"] != "0:0", f"{job}\n{log[-4000:]}"
    assert re.search(r"^1: error: .*" + re.escape(str(tmp_path)), log, flags=re.M), log[-4000:]
    assert _no_processes_left(job_id) == []
    assert not (work / "out" / "checkpoints" / "fcn8s-final.ckpt").exists()
