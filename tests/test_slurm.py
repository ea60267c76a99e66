"""Real Slurm: ``sbatch`` the script rendered by ``python -m fcn8s.cluster render --scheduler slurm``.

A single-node cluster on loopback (tests/infra/slurm.sh: munge, slurmctld, slurmd) runs 1 node x
2 tasks of a short CPU training; srun starts one fcn8s.train per task and fcn8s.distributed turns
SLURM_PROCID/NTASKS/LOCALID into a MindSpore dynamic cluster. The requeue test interrupts a job
with ``scontrol requeue`` and checks that its second attempt ends where an uninterrupted run does.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.conftest import HEAVY, REPO, SMALL_NETWORK, run_module
from tests.infra import run_script, unavailable
from tests.test_distributed import _job_pids

# The host's one Slurm node: one test at a time. The full-network job is in the heavy group instead
# (memory, a 1 GB checkpoint: not while an image builds); Slurm's queue runs it after any other job.
pytestmark = pytest.mark.xdist_group("slurm")
CLUSTER = "fcn8s-test"  # tests/infra/slurm.sh; the simulated servers' Slurm numbers its jobs from 1 as well
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED")
JOB_TIMEOUT = 1200
FULL_NETWORK_STEPS = 3
STEPS = 16
# The small network, checkpoints every 2 steps (one kept): the requeue test interrupts the job once
# step 4's exists.
RESUMABLE = (*SMALL_NETWORK, "train.checkpoint_interval=2", "train.keep_checkpoints=1")
CHECKSUM = re.compile(r"\[rank (\d)/2\] INFO fcn8s.trainer: parameter checksum (\w+) after (\d+) steps")


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


def _render(tmp_path, name, steps, overrides=()):
    """The sbatch script for 1 node x 2 CPU ranks of configs/cpu_smoke.yaml, as users would render it."""
    extra = [arg for override in overrides for arg in ("--set", override)]
    run_module("fcn8s.cluster", "render", "--scheduler", "slurm", "--nodes", "1", "--devices-per-node", "2",
               "--config", "configs/cpu_smoke.yaml", "--job-name", name, "--log", str(tmp_path / "%x-%j.out"),
               "--set", f"data.mindrecord_dir={tmp_path.parent / 'mr'}", "--set", f"train.max_steps={steps}",
               "--set", "train.batch_size=2", "--set", "train.log_interval=1", *extra, "--out", tmp_path, check=True)
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
    """PIDs of processes that belong to Slurm job ``job_id`` of this host's cluster (by their environment)."""
    return _job_pids(f"SLURM_JOB_ID={job_id}\0", f"SLURM_CLUSTER_NAME={CLUSTER}\0")


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
    yield root
    shutil.rmtree(root)  # the jobs' checkpoints


class Run(NamedTuple):
    """A finished sbatch job: its id, final ``scontrol show job`` fields, output file text, run.output_dir."""

    job_id: str
    job: dict
    log: str
    out: Path
    seconds: float


def _run(script, name, out, between=None):
    """Submit ``script`` with run.output_dir ``out``, call ``between(job_id)`` if given, wait for the end."""
    started = time.monotonic()
    job_id = _submit(script, {"PYTHON": sys.executable, "OUTPUT_DIR": str(out)})
    if between:
        between(job_id)
    job = _wait(job_id)
    log = (script.parent / f"{name}-{job_id}.out").read_text()
    return Run(job_id, job, log, out, time.monotonic() - started)


def _metrics(out):
    with open(out / "metrics.jsonl", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


@pytest.fixture(scope="module")
def resumable_script(job_dir):
    """The script both the uninterrupted and the requeued job run (only OUTPUT_DIR differs)."""
    work = job_dir / "resumable"
    work.mkdir()
    return _render(work, "fcn8s-test-ok", STEPS, RESUMABLE)


@pytest.fixture(scope="module")
def uninterrupted(slurm, resumable_script):
    """One uninterrupted job of the small network: the reference of the requeue test."""
    return _run(resumable_script, "fcn8s-test-ok", resumable_script.parent / "uninterrupted")


@pytest.mark.slow
@HEAVY
def test_sbatch_two_cpu_ranks_completes_with_identical_weights(slurm, job_dir):
    """The tutorial's full network under srun."""
    work = job_dir / "full"
    work.mkdir()
    run = _run(_render(work, "fcn8s-test-full", FULL_NETWORK_STEPS), "fcn8s-test-full", work / "out")
    job, log, out = run.job, run.log, run.out
    assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", f"{job}\n{log[-4000:]}"
    assert job["Restarts"] == "0" and "attempt 1 (SLURM_RESTART_COUNT=0)" in log
    assert "launcher slurm: rank 0 of 2" in log and "launcher slurm: rank 1 of 2" in log
    sums = {rank: checksum for rank, checksum, _ in CHECKSUM.findall(log)}
    assert set(sums) == {"0", "1"} and sums["0"] == sums["1"], log[-4000:]
    assert (out / "checkpoints" / "fcn8s-final.ckpt").is_file()
    assert "checkpoint (written by rank 0)" in log  # rank 1 saved nothing
    assert _no_processes_left(run.job_id) == []
    shutil.rmtree(out / "checkpoints")  # 1 GB


def _wait_for_checkpoint(job_id, directory, at_least):
    """Newest complete step checkpoint (its sidecar JSON is written last) once it is >= ``at_least``."""
    deadline = time.monotonic() + JOB_TIMEOUT
    while time.monotonic() < deadline:
        names = os.listdir(directory) if directory.is_dir() else []
        steps = [int(step) for name in names for step in re.findall(r"^fcn8s-step(\d+)\.json$", name)]
        if steps and max(steps) >= at_least:
            return max(steps)
        job = _job(job_id)
        if job.get("JobState") in TERMINAL:
            pytest.fail(f"job {job_id} ended before writing checkpoint {at_least}: {job}")
        time.sleep(1)
    subprocess.run(["scancel", job_id])
    pytest.fail(f"job {job_id}: no checkpoint at step >= {at_least} within {JOB_TIMEOUT} s")


def _start_requeued_job_now(job_id):
    """Let the requeued job start as soon as its first attempt has ended.

    Slurm holds a requeued batch job until BeginTime = requeue time + its launch-credential expiry
    window (120 s) + 1 s, measured here (slurm 22.05: Reason=BeginTime, EligibleTime 121 s on), so that
    the new launch credential postdates the revoked one. The node is free once the job is PENDING, so
    moving BeginTime to now only saves two idle minutes; it does not change what is tested.
    """
    deadline = time.monotonic() + JOB_TIMEOUT
    while time.monotonic() < deadline:
        job = _job(job_id)
        if job.get("JobState") == "PENDING" and job.get("Reason") == "BeginTime":
            subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], check=True)
            return
        if job.get("JobState") in ("RUNNING", *TERMINAL) and job.get("Restarts") == "1":
            return
        time.sleep(1)


@pytest.mark.slow
def test_requeued_job_resumes_from_its_checkpoint_and_ends_like_an_uninterrupted_one(uninterrupted,
                                                                                    resumable_script):
    """``scontrol requeue`` mid-run (as on preemption or node failure): the job's second attempt resumes."""
    run_out = resumable_script.parent / "requeued"
    interrupted_at = []

    def requeue_mid_run(job_id):
        interrupted_at.append(_wait_for_checkpoint(job_id, run_out / "checkpoints", at_least=4))
        subprocess.run(["scontrol", "requeue", job_id], check=True)
        _start_requeued_job_now(job_id)

    run = _run(resumable_script, "fcn8s-test-ok", run_out, between=requeue_mid_run)
    job, log = run.job, run.log
    assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", f"{job}\n{log[-4000:]}"
    assert job["Restarts"] == "1", job
    # --open-mode=append: both attempts are in the one output file.
    first, marker, second = log.partition("attempt 2 (SLURM_RESTART_COUNT=1)")
    assert "attempt 1 (SLURM_RESTART_COUNT=0)" in first and marker, log[-4000:]
    assert "DUE TO JOB REQUEUE" in first
    resumed = dict(re.findall(r"\[rank (\d)/2\] INFO fcn8s.trainer: resumed from \S+ at step (\d+)", second))
    assert set(resumed) == {"0", "1"} and len(set(resumed.values())) == 1, second[-4000:]
    resumed_step = int(resumed["0"])
    assert resumed_step >= 4, resumed
    expected = {(rank, checksum, steps) for rank, checksum, steps in CHECKSUM.findall(uninterrupted.log)}
    assert len(expected) == 2 and len({checksum for _, checksum, _ in expected}) == 1, uninterrupted.log[-4000:]
    assert set(CHECKSUM.findall(second)) == expected, second[-4000:]
    records, reference = _metrics(run_out), _metrics(uninterrupted.out)
    assert [record["step"] for record in records] == list(range(1, STEPS + 1))  # each step once
    assert [record["step"] for record in reference] == list(range(1, STEPS + 1))
    for record, ref in zip(records, reference):
        assert abs(record["loss"] - ref["loss"]) <= 1e-5, (record, ref)
    assert _no_processes_left(run.job_id) == []
    print(f"uninterrupted job {uninterrupted.seconds:.0f} s; requeued job {run.seconds:.0f} s (requeued after "
          f"checkpoint {interrupted_at[0]}, resumed at step {resumed_step})")


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
    job_id = _submit(_render(work, "fcn8s-test-fail", steps=50, overrides=SMALL_NETWORK),
                     {"PYTHON": str(wrapper), "OUTPUT_DIR": str(work / "out")})
    job = _wait(job_id)
    log = (work / f"fcn8s-test-fail-{job_id}.out").read_text()
    assert job["JobState"] == "FAILED" and job["ExitCode"] != "0:0", f"{job}\n{log[-4000:]}"
    assert re.search(r"^1: error: .*" + re.escape(str(tmp_path)), log, flags=re.M), log[-4000:]
    assert _no_processes_left(job_id) == []
    assert not (work / "out" / "checkpoints" / "fcn8s-final.ckpt").exists()
