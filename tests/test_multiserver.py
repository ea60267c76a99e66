"""Real training across simulated servers (network namespaces with their own IPs): every launcher.

Each job is the small FCN-8s of tests/conftest.py (SMALL_NETWORK) on CPU, 2 servers x 2 ranks,
32 px crops, 3 steps (global batch 8). In every
case all 4 ranks must end with the same parameter checksum, only global rank 0 writes a
checkpoint, and the final checkpoint must equal the one of a 1 x 4 job on one server (same seed,
data and steps) within 1e-5: the cluster's shape does not change the math.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, SMALL_NETWORK, run_module
from tests.infra.netns import SimulatedServers, mpirun_argv, mpirun_env, require_netns
from tests.infra.slurm_cluster import SlurmCluster

# Four ranks (and the launchers) at once: tests/conftest.py runs this module first, while the test
# runner itself is still small (in-process tests later build networks it never gives back).
pytestmark = [pytest.mark.slow, pytest.mark.multiserver, pytest.mark.xdist_group("netns")]

VENV_BIN = os.path.dirname(sys.executable)
STEPS = 3
JOB_TIMEOUT = 900
MASTER = "198.18.7.1"
LAUNCH_KEYS = ("RANK_TABLE_FILE", "MINDSPORE_HCCL_CONFIG_PATH", "RANK_ID", "RANK_SIZE", "DEVICE_ID", "MS_ROLE",
               "MS_SCHED_HOST", "MS_SCHED_PORT", "MS_WORKER_NUM", "MS_NODE_ID", "ASCEND_VISIBLE_DEVICES",
               "ASCEND_RT_VISIBLE_DEVICES", "SERVER_ID", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")


def clean_env(**extra):
    """The test's environment without launcher variables, the venv first on PATH, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_KEYS}
    env.update(PATH=f"{VENV_BIN}:{os.environ['PATH']}", PYTHONPATH=REPO, PYTHONUNBUFFERED="1")
    return {**env, **{k: str(v) for k, v in extra.items()}}


def train_args(data, out, steps=STEPS):
    return ["--config", "configs/cpu_smoke.yaml", f"data.mindrecord_dir={data}", f"run.output_dir={out}",
            f"train.max_steps={steps}", "train.batch_size=2", "train.log_interval=1", *SMALL_NETWORK]


@pytest.fixture(scope="module")
def servers():
    """Three simulated servers (198.18.7.1-3); most jobs use the first two."""
    require_netns()
    with SimulatedServers(3) as made:
        yield made


@pytest.fixture(scope="module")
def data(mindrecord_dir, tmp_path_factory):
    return str(mindrecord_dir)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """The same job as 1 server x 4 ranks: the path of its final checkpoint (deleted after the module)."""
    root = tmp_path_factory.mktemp("ref")
    result = run_module("fcn8s.launch", "--nproc", "4", "--log-dir", root / "logs", "--",
                        *train_args(data, root / "out"), timeout=JOB_TIMEOUT, env=clean_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    yield str(root / "out" / "checkpoints" / "fcn8s-final.ckpt")
    shutil.rmtree(root)


def checksums(text):
    return dict(re.findall(r"\[rank (\d)/4\] INFO fcn8s.trainer: parameter checksum (\w+)", text))


def assert_same_job_as_reference(logs, out, reference):
    """4 equal checksums, one checkpoint by rank 0, weights equal to the 1 x 4 job; frees the disk."""
    sums = checksums(logs)
    assert sorted(sums) == ["0", "1", "2", "3"], logs[-4000:]
    assert len(set(sums.values())) == 1, sums
    assert "global batch 8 = 2 x 4 rank(s)" in logs
    assert logs.count("checkpoint (written by rank 0)") == 3, logs[-4000:]  # ranks 1-3 saved nothing
    ckpt_dir = os.path.join(out, "checkpoints")
    assert sorted(os.listdir(ckpt_dir)) == ["fcn8s-final.ckpt", "fcn8s-final.json"]
    diff = run_module("tests.ckpt_diff", os.path.join(ckpt_dir, "fcn8s-final.ckpt"), reference, check=True)
    result = json.loads(diff.stdout)
    assert result["same_names"] and result["max_abs_diff"] <= 1e-5, f"|2x2 - 1x4|: {result}"
    shutil.rmtree(out)


def wait_all(procs, timeout=JOB_TIMEOUT):
    """Wait for every Popen; on a time-out kill them all and fail."""
    deadline = time.monotonic() + timeout
    try:
        return [proc.wait(timeout=max(deadline - time.monotonic(), 1)) for proc in procs]
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        pytest.fail(f"job did not finish within {timeout} s")


def read(path):
    return open(path, errors="replace").read() if os.path.exists(path) else ""


def start_run_distribute(servers, k, nproc, tmp_path, out, port, steps=STEPS, **env):
    logs = tmp_path / f"logs{k}"
    return servers.popen(k, ["bash", "launch/run_distribute.sh", str(nproc), *train_args(data_dir(tmp_path), out,
                                                                                          steps)[1:]],
                         cwd=REPO, env=clean_env(NNODES=2, NODE_RANK=k, MASTER_ADDR=MASTER, MASTER_PORT=port,
                                                 LOG_DIR=logs, **env),
                         stdout=open(tmp_path / f"launcher{k}.out", "w"), stderr=subprocess.STDOUT), logs


def data_dir(tmp_path):
    return (tmp_path / "data").resolve()


@pytest.fixture
def job_dir(tmp_path, data):
    os.symlink(data, tmp_path / "data")
    return tmp_path


def test_run_distribute_on_each_server(servers, job_dir, reference):
    out = job_dir / "out"
    started = [start_run_distribute(servers, k, 2, job_dir, out, 29610) for k in (0, 1)]
    codes = wait_all([proc for proc, _ in started])
    text = "".join(read(logs / f"rank_{r}.log") for _, logs in started for r in range(4))
    launchers = read(job_dir / "launcher0.out") + read(job_dir / "launcher1.out")
    assert codes == [0, 0], launchers[-3000:] + text[-3000:]
    assert "rendezvous: node 1 (198.18.7.2, ranks 2-3) joined" in launchers
    assert sorted(os.listdir(started[0][1])) == ["rank_0", "rank_0.log", "rank_1", "rank_1.log", "scheduler.log"]
    assert sorted(p for p in os.listdir(started[1][1]) if p.endswith(".log")) == ["rank_2.log", "rank_3.log"]
    assert_same_job_as_reference(text, str(out), reference)


def test_msrun_on_each_server(servers, job_dir, reference):
    out = job_dir / "out"
    procs = []
    for k in (0, 1):
        procs.append(servers.popen(k, [os.path.join(VENV_BIN, "msrun"), "--worker_num=4", "--local_worker_num=2",
                                       f"--master_addr={MASTER}", "--master_port=29620", f"--node_rank={k}",
                                       f"--log_dir={job_dir / f'ms{k}'}", "--join=True", "fcn8s/train.py",
                                       *train_args(data_dir(job_dir), out)],
                                   cwd=REPO, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    codes = wait_all(procs)
    text = "".join(read(job_dir / f"ms{k}" / f"worker_{r}.log") for k in (0, 1) for r in range(4))
    assert codes == [0, 0], text[-4000:]
    assert "local rank 0, device CPU:0" in read(job_dir / "ms1" / "worker_2.log")  # the local device, not 2
    assert_same_job_as_reference(text, str(out), reference)


def test_mpirun_across_two_hosts(servers, job_dir, reference):
    out = job_dir / "out"
    log = job_dir / "mpirun.out"
    with open(log, "w") as handle:
        argv = mpirun_argv(servers.servers[:2], 2, [sys.executable, "-m", "fcn8s.train",
                                                     *train_args(data_dir(job_dir), out)],
                           env_names=("PYTHONPATH", "PYTHONUNBUFFERED"))
        proc = servers.popen(0, argv, env=mpirun_env(clean_env()), hostname=True, cwd=REPO, stdout=handle,
                             stderr=subprocess.STDOUT)
        codes = wait_all([proc])
    text = read(log)
    assert codes == [0], text[-4000:]
    assert f"openmpi bootstrap: scheduler at {MASTER}:" in text  # reachable from the other host, not 127.0.0.1
    assert_same_job_as_reference(text, str(out), reference)


def test_sbatch_on_two_slurm_nodes(servers, job_dir, reference):
    out = job_dir / "out"
    run_module("fcn8s.cluster", "render", "--scheduler", "slurm", "--nodes", "2", "--devices-per-node", "2",
               "--config", "configs/cpu_smoke.yaml", "--job-name", "fcn8s-2nodes", "--log", str(job_dir / "%x-%j.out"),
               *[item for arg in train_args(data_dir(job_dir), out)[2:] if not arg.startswith("run.output_dir")
                 for item in ("--set", arg)],
               "--out", job_dir, check=True)
    with SlurmCluster(servers, str(job_dir / "slurm")) as slurm:
        submitted = slurm.run(["sbatch", "--parsable", str(job_dir / "fcn8s.sbatch")], cwd=REPO,
                              env=clean_env(PYTHON=sys.executable, OUTPUT_DIR=out), check=True)
        job_id = submitted.stdout.strip().split(";")[0]
        state = wait_for_slurm_job(slurm, job_id)
    text = read(job_dir / f"fcn8s-2nodes-{job_id}.out")
    assert state["JobState"] == "COMPLETED", f"{state}\n{text[-4000:]}"
    assert re.search(r"launcher slurm: rank 3 of 4", text)
    assert re.search(r"slurm bootstrap: scheduler at 198\.18\.7\.\d:", text)  # a NodeAddr: names do not resolve
    assert_same_job_as_reference(text, str(out), reference)


def wait_for_slurm_job(slurm, job_id):
    deadline = time.monotonic() + JOB_TIMEOUT
    while time.monotonic() < deadline:
        shown = slurm.run(["scontrol", "-o", "show", "job", job_id], timeout=30).stdout
        state = dict(re.findall(r"(\w+)=(\S+)", shown))
        if state.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            return state
        time.sleep(2)
    slurm.run(["scancel", job_id])
    pytest.fail(f"Slurm job {job_id} did not finish within {JOB_TIMEOUT} s")


def test_ascendjob_pods_in_their_own_namespaces(servers, job_dir, reference):
    """Scheduler pod on server 2, worker pods on servers 0 and 1, as the Ascend Operator sets them up."""
    out = job_dir / "out"
    sched = servers[2].ip
    common = dict(MS_SCHED_HOST=sched, MS_SCHED_PORT=29630, MS_WORKER_NUM=4, MS_LOCAL_WORKER=2)
    entry = ["bash", "launch/pod_entrypoint.sh"]
    pods = [servers.popen(2, [*entry, "--log-dir", job_dir / "sched", "--", *train_args(data_dir(job_dir), out)],
                          cwd=REPO, env=clean_env(MS_ROLE="MS_SCHED", MS_NODE_RANK=0, POD_IP=sched, **common),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    for k in (0, 1):
        pods.append(servers.popen(k, [*entry, "--log-dir", job_dir / f"pod{k}", "--",
                                      *train_args(data_dir(job_dir), out)],
                                  cwd=REPO, env=clean_env(MS_ROLE="MS_WORKER", MS_NODE_RANK=k, POD_IP=servers[k].ip,
                                                          **common),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    codes = wait_all(pods)
    text = "".join(read(job_dir / f"pod{k}" / f"rank_{r}.log") for k in (0, 1) for r in range(4))
    assert codes == [0, 0, 0], text[-4000:]
    assert_same_job_as_reference(text, str(out), reference)


def test_rank_table_dry_run_each_server_finds_itself_by_its_ip(servers, tmp_path):
    """Volcano / rank-table path (needs HCCL to run): the plan of each server of a merged 2 x 8 table."""
    table = {"version": "1.0", "server_count": "2", "status": "completed", "server_list": [
        {"server_id": servers[k].ip, "host_nic_ip": "reserve",
         "device": [{"device_id": str(d), "device_ip": f"192.168.{k}.{d}", "rank_id": str(8 * k + d)}
                    for d in range(8)]} for k in (0, 1)]}
    path = tmp_path / "hccl_2x8.json"
    path.write_text(json.dumps(table))
    for k in (0, 1):
        result = servers.run(k, [sys.executable, "-m", "fcn8s.launch", "--nproc", "8", "--dry-run", "--",
                                 "--config", "configs/cpu_smoke.yaml"], cwd=REPO,
                             env=clean_env(RANK_TABLE_FILE=path, ASCEND_VISIBLE_DEVICES="0-7"))
        assert result.returncode == 0, result.stderr
        plan = json.loads(result.stdout)
        assert (plan["server"], plan["node_rank"], plan["nnodes"], plan["world_size"]) == (servers[k].ip, k, 2, 16)
        for local, rank in enumerate(plan["ranks"]):
            assert rank["rank"] == 8 * k + local
            assert {key: rank["env"][key] for key in ("RANK_ID", "RANK_SIZE", "DEVICE_ID", "RANK_TABLE_FILE")} == \
                {"RANK_ID": str(8 * k + local), "RANK_SIZE": "16", "DEVICE_ID": str(local), "RANK_TABLE_FILE": str(path)}
    outsider = servers.run(2, [sys.executable, "-m", "fcn8s.launch", "--nproc", "8", "--dry-run", "--",
                               "--config", "configs/cpu_smoke.yaml"], cwd=REPO,
                           env=clean_env(RANK_TABLE_FILE=path, ASCEND_VISIBLE_DEVICES="0-7"))
    assert outsider.returncode == 2
    assert f"no server entry in the rank table matches this server ({servers[2].ip}" in outsider.stderr


def test_servers_that_disagree_on_the_world_size_fail_at_once(servers, job_dir):
    started = [start_run_distribute(servers, k, 2 + k, job_dir, job_dir / "out", 29640) for k in (0, 1)]
    codes = wait_all([proc for proc, _ in started], timeout=120)
    launchers = read(job_dir / "launcher0.out") + read(job_dir / "launcher1.out")
    assert codes == [2, 2], launchers
    assert "node 1 (198.18.7.2) says 2 node(s), world size 6 (dynamic_cluster) but node 0 says 2 node(s), " \
           "world size 4" in launchers
    assert not any(list((job_dir / f"logs{k}").glob("rank_*.log")) for k in (0, 1))  # no rank started


def start_long_job(servers, job_dir, port):
    """A 500-step 2 x 2 job through run_distribute.sh, returned once rank 2 (server 1) finished step 2."""
    started = [start_run_distribute(servers, k, 2, job_dir, job_dir / "out", port, steps=500,
                                    FCN8S_SIGNAL_GRACE_SECONDS=5) for k in (0, 1)]
    rank2 = started[1][1] / "rank_2.log"
    deadline = time.monotonic() + JOB_TIMEOUT
    while "step 2/500" not in read(rank2):
        assert time.monotonic() < deadline and all(p.poll() is None for p, _ in started), read(rank2)[-3000:]
        time.sleep(1)
    return started


def test_losing_a_server_stops_the_job_on_the_other_naming_it(servers, job_dir):
    started = start_long_job(servers, job_dir, 29650)
    killed = time.monotonic()
    servers.kill_all(1)  # server 1 crashes: its launcher, ranks and everything else
    code = wait_all([started[0][0]], timeout=120)[0]
    detected = time.monotonic() - killed
    launcher0 = read(job_dir / "launcher0.out")
    print(f"server 0 stopped {detected:.1f} s after server 1 was lost")
    assert code != 0 and detected < 60, launcher0[-3000:]
    assert "lost node 1 (198.18.7.2, ranks 2-3): its launcher's connection closed" in launcher0
    time.sleep(1)
    assert servers.pids(0) == [] and servers.pids(1) == []  # nothing of the job left on any server
    shutil.rmtree(job_dir / "out", ignore_errors=True)


def test_cutting_a_servers_link_stops_the_job_on_both_sides(servers, job_dir):
    """No connection closes when a link goes down: the launchers' heartbeats (15 s) notice."""
    started = start_long_job(servers, job_dir, 29660)
    cut = time.monotonic()
    servers.link_down(1)
    try:
        stopped = []
        for proc, _ in started:
            wait_all([proc], timeout=120)
            stopped.append(time.monotonic() - cut)
    finally:
        servers.link_up(1)
    launchers = [read(job_dir / f"launcher{k}.out") for k in (0, 1)]
    print(f"link cut: server 0 stopped after {stopped[0]:.1f} s, server 1 after {stopped[1]:.1f} s")
    assert [proc.returncode for proc, _ in started] == [1, 1], launchers
    assert "lost node 1 (198.18.7.2, ranks 2-3): no heartbeat for" in launchers[0]
    assert "lost node 0 (198.18.7.1), the job's coordinator: no heartbeat for" in launchers[1]
    assert max(stopped) < 45, stopped
    time.sleep(1)
    assert servers.pids(0) == [] and servers.pids(1) == []
    shutil.rmtree(job_dir / "out", ignore_errors=True)


def test_a_failed_rank_restarts_every_server_together(servers, job_dir, reference):
    """Rank 3 (server 1) fails after step 2 of the first run: node 0 decides to restart, both servers
    stop their ranks, say ready, and start again with --resume auto; the result equals the 1 x 4 job."""
    out = job_dir / "out"
    started = [start_run_distribute(servers, k, 2, job_dir, out, 29670, MAX_RESTARTS=1, RESTART_BACKOFF=1,
                                    FCN8S_FAULT="exit:rank=3:step=2:code=1") for k in (0, 1)]
    codes = wait_all([proc for proc, _ in started])
    launchers = [read(job_dir / f"launcher{k}.out") for k in (0, 1)]
    text = "".join(read(logs / f"rank_{r}.log") for _, logs in started for r in range(4))
    assert codes == [0, 0], launchers[0][-3000:] + launchers[1][-3000:]
    assert re.search(r"restart 1/1 after node 1 \(198\.18\.7\.2, ranks 2-3\): rank 3 on .* exited with code 1",
                     launchers[0]), launchers[0][-3000:]
    assert "restart 1 ordered by node 0 (node 0 restarts the job: node 1 (198.18.7.2" in launchers[1]
    assert text.count("===== restart 1 =====") == 4  # every rank on both servers ran again
    sums = checksums(text)  # the last checksum line of each rank: the restarted run's
    assert sorted(sums) == ["0", "1", "2", "3"] and len(set(sums.values())) == 1, sums
    diff = run_module("tests.ckpt_diff", os.path.join(out, "checkpoints", "fcn8s-final.ckpt"), reference, check=True)
    assert json.loads(diff.stdout)["max_abs_diff"] <= 1e-5
    time.sleep(1)
    assert servers.pids(0) == [] and servers.pids(1) == []
    shutil.rmtree(out)
