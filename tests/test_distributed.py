"""Launcher detection (unit) and real 2-rank CPU jobs via run_distribute.sh, mpirun and msrun."""
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from fcn8s.distributed import DistContext, detect_launcher, free_port, planned_context
from fcn8s.errors import UserError
from tests.conftest import REPO, SMALL_FC_CHANNELS, SMALL_NETWORK, job_tag

VENV_BIN = os.path.dirname(sys.executable)
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


@pytest.mark.parametrize("env, expected", [
    ({}, DistContext()),
    ({"DEVICE_ID": "3"}, DistContext(device_id=3)),
    ({"MS_ROLE": "MS_WORKER", "MS_WORKER_NUM": "4", "MS_NODE_ID": "2", "DEVICE_ID": "0"},
     DistContext(rank=2, size=4, local_rank=0, device_id=0, launcher="msrun")),
    # msrun on server 2 of 2 without DEVICE_ID: MindSpore assigns the local device, never rank 6
    ({"MS_ROLE": "MS_WORKER", "MS_WORKER_NUM": "8", "MS_NODE_ID": "6", "MS_SCHED_HOST": "10.0.0.1"},
     DistContext(rank=6, size=8, local_rank=None, device_id=None, launcher="msrun")),
    # msrun without --node_rank on several servers: the rank too is assigned at init()
    ({"MS_ROLE": "MS_WORKER", "MS_WORKER_NUM": "8", "DEVICE_ID": "3"},
     DistContext(rank=None, size=8, local_rank=3, device_id=3, launcher="msrun")),
    ({"RANK_TABLE_FILE": "/t.json", "RANK_ID": "9", "RANK_SIZE": "16", "DEVICE_ID": "1"},
     DistContext(rank=9, size=16, local_rank=1, device_id=1, launcher="rank_table")),
    ({"MINDSPORE_HCCL_CONFIG_PATH": "/t.json", "RANK_ID": "0", "RANK_SIZE": "8"},
     DistContext(rank=0, size=8, local_rank=0, device_id=0, launcher="rank_table")),
    ({"OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_SIZE": "8", "OMPI_COMM_WORLD_LOCAL_RANK": "1"},
     DistContext(rank=5, size=8, local_rank=1, device_id=1, launcher="openmpi")),
    ({"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "3"},
     DistContext(rank=3, size=4, local_rank=3, device_id=3, launcher="slurm")),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, DistContext()),  # an sbatch shell, not srun tasks
    # mpirun started from a shell with a stale rank table and RANK_ID: OpenMPI's variables win
    ({"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
      "RANK_TABLE_FILE": "/old/hccl_8p.json", "RANK_ID": "0", "RANK_SIZE": "8"},
     DistContext(rank=3, size=4, local_rank=1, device_id=1, launcher="openmpi")),
])
def test_launcher_detection(env, expected):
    assert planned_context(env) == expected
    assert detect_launcher(env) == expected.launcher


def test_stale_rank_variables_under_mpirun_and_srun_are_named_and_dropped(caplog):
    from fcn8s.distributed import stale_variables

    env = {"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2", "RANK_TABLE_FILE": "/t.json", "RANK_ID": "0",
           "RANK_SIZE": "2"}
    assert stale_variables(env, "openmpi", 1, 2) == ("RANK_TABLE_FILE", "RANK_ID")
    assert stale_variables({"SLURM_PROCID": "1", "RANK_ID": "1"}, "slurm", 1, 2) == ()
    assert stale_variables({"RANK_ID": "5"}, "rank_table", 1, 2) == ()


@pytest.mark.parametrize("env, message", [
    ({"RANK_TABLE_FILE": "/t.json", "RANK_ID": "8", "RANK_SIZE": "8"}, "rank 8 is outside 0..7"),
    ({"RANK_TABLE_FILE": "/t.json", "RANK_ID": "0"}, "RANK_SIZE is required"),
    ({"MS_ROLE": "MS_WORKER", "MS_WORKER_NUM": "two"}, "MS_WORKER_NUM='two' is not an integer"),
])
def test_contradictory_or_broken_env_is_a_clear_error(env, message):
    with pytest.raises(UserError, match=re.escape(message)):
        planned_context(env)


def _train_args(mindrecord_dir, out, steps=3):
    return ["--config", "configs/cpu_smoke.yaml", f"data.mindrecord_dir={mindrecord_dir}", f"run.output_dir={out}",
            f"train.max_steps={steps}", "train.log_interval=1", "train.batch_size=2", *SMALL_NETWORK]


def _checksums(text):
    return re.findall(r"\[rank (\d)/2\] INFO fcn8s.trainer: parameter checksum (\w+)", text)


def _assert_data_parallel_result(logs, out):
    sums = dict(_checksums(logs))
    assert set(sums) == {"0", "1"}, logs[-3000:]
    assert sums["0"] == sums["1"]  # identical weights on both ranks
    assert "global batch 4 = 2 x 2 rank(s)" in logs
    assert "checkpoint (written by rank 0)" in logs  # rank 1 wrote nothing
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == ["fcn8s-final.ckpt", "fcn8s-final.json"]


def _run(cmd, env=None, timeout=600):
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_run_distribute_two_cpu_ranks(mindrecord_dir, tmp_path):
    out, logs = tmp_path / "out", tmp_path / "logs"
    result = _run(["bash", "launch/run_distribute.sh", "2", *_train_args(mindrecord_dir, out)[1:]],
                  env={"LOG_DIR": str(logs)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = (logs / "rank_0.log").read_text() + (logs / "rank_1.log").read_text()
    _assert_data_parallel_result(text, str(out))
    assert "launcher msrun: rank 1 of 2" in text
    assert "parameter checksum" in result.stdout  # rank 0's log is tailed to the terminal
    assert (logs / "rank_1").is_dir()


@pytest.mark.slow
def test_mpirun_two_ranks(mindrecord_dir, tmp_path):
    out = tmp_path / "out"
    result = _run([os.path.join(VENV_BIN, "mpirun"), "-n", "2", "--oversubscribe", sys.executable, "-m", "fcn8s.train",
                   *_train_args(mindrecord_dir, out)], env=MPI_ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "launcher openmpi: rank 1 of 2" in result.stderr
    _assert_data_parallel_result(result.stderr, str(out))


@pytest.mark.slow
def test_msrun_two_ranks(mindrecord_dir, tmp_path):
    out, logs = tmp_path / "out", tmp_path / "mslogs"
    env = {"PATH": f"{VENV_BIN}:{os.environ['PATH']}", "PYTHONPATH": REPO}
    result = _run([os.path.join(VENV_BIN, "msrun"), "--worker_num=2", "--local_worker_num=2", f"--master_port={free_port()}",
                   f"--log_dir={logs}", "--join=True", "fcn8s/train.py", *_train_args(mindrecord_dir, out)], env=env)
    text = "".join((logs / f"worker_{k}.log").read_text() for k in range(2))
    assert result.returncode == 0, text[-3000:]
    _assert_data_parallel_result(text, str(out))


@pytest.fixture(scope="module")
def two_rank_run(mindrecord_dir, tmp_path_factory):
    """6 steps on 2 ranks (run_distribute.sh): rank 1 alone overflows at step 3, val evaluation + checkpoint
    at step 4. Returns (output dir, [rank 0 log, rank 1 log])."""
    tmp = tmp_path_factory.mktemp("dp_run")
    out, logs = tmp / "out", tmp / "logs"
    result = _run(["bash", "launch/run_distribute.sh", "2", *_train_args(mindrecord_dir, out, 6)[1:],
                   "train.eval_interval=4", "train.checkpoint_interval=100", "eval.image_size=64"],
                  env={"LOG_DIR": str(logs), "FCN8S_FAULT": "overflow:rank=1:step=3"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    yield out, [(logs / f"rank_{k}.log").read_text() for k in range(2)]
    shutil.rmtree(tmp)


def _step_lines(log):
    """{step: (logged loss, this rank's loss, loss scale, rest of the line)} from a rank's log."""
    found = re.findall(r"step (\d+)/6 loss (\S+) \(this rank (\S+)\) lr \S+ loss_scale (\S+)(.*)", log)
    return {int(step): (float(mean), float(own), float(scale), rest) for step, mean, own, scale, rest in found}


@pytest.mark.slow
def test_an_overflow_on_one_rank_skips_the_update_on_every_rank(two_rank_run):
    _, logs = two_rank_run
    assert "FAULT INJECTION ON" in logs[0]
    for log in logs:
        lines = _step_lines(log)
        assert sorted(lines) == list(range(1, 7)), log[-3000:]
        assert lines[2][2] == 1024 and lines[3][2] == 512  # both ranks shrink the scale...
        assert "(overflow: update skipped)" in lines[3][3]  # ... and skip the update
        assert all("overflow" not in lines[step][3] for step in (1, 2, 4, 5, 6))
    assert math.isinf(_step_lines(logs[1])[3][1]) and math.isfinite(_step_lines(logs[0])[3][1])
    sums = [dict(_checksums(log)) for log in logs]
    assert sums[0]["0"] == sums[1]["1"]  # identical weights


@pytest.mark.slow
def test_the_logged_loss_is_the_mean_over_ranks(two_rank_run):
    out, logs = two_rank_run
    records = {r["step"]: r for r in map(json.loads, open(out / "metrics.jsonl"))}
    own = [_step_lines(log) for log in logs]
    for step in (1, 2, 4, 5, 6):
        losses = [own[rank][step][1] for rank in (0, 1)]  # each rank's own loss, from its own log
        assert abs(losses[0] - losses[1]) > 1e-3  # different data: rank 0's loss alone would not do
        assert records[step]["rank_losses"] == pytest.approx(losses, abs=1e-4)
        assert records[step]["loss"] == pytest.approx(np.mean(records[step]["rank_losses"]), rel=1e-6)
        assert own[0][step][0] == own[1][step][0] == pytest.approx(records[step]["loss"], abs=1e-4)


@pytest.mark.slow
def test_the_miou_recorded_with_a_checkpoint_is_the_miou_of_its_weights(two_rank_run, mindrecord_dir, tmp_path):
    """BatchNorm statistics differ per rank; the periodic evaluation scores the weights rank 0 saves."""
    out, _ = two_rank_run
    ckpt = out / "checkpoints" / "fcn8s-step00000004.ckpt"
    recorded = json.load(open(out / "checkpoints" / "fcn8s-step00000004.json"))["metrics"]
    result = _run([sys.executable, "-m", "fcn8s.eval", "--config", "configs/cpu_smoke.yaml", "--ckpt", str(ckpt),
                   f"data.mindrecord_dir={mindrecord_dir}", "eval.image_size=64", *SMALL_NETWORK,
                   "--out", str(tmp_path / "eval.json"), "--no-plot"])
    assert result.returncode == 0, result.stderr[-3000:]
    evaluated = json.load(open(tmp_path / "eval.json"))
    for key in ("pixel_accuracy", "mean_iou"):
        assert evaluated[key] == pytest.approx(recorded[key], abs=1e-9), (evaluated, recorded)


def _job_pids(*markers):
    """PIDs of processes whose environment contains every one of ``markers``."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                environ = handle.read()
                if all(marker.encode() in environ for marker in markers):
                    pids.append(int(pid))
        except OSError:
            continue
    return pids


@pytest.fixture
def running_job(mindrecord_dir, tmp_path):
    """A 2-rank CPU job via run_distribute.sh, returned once rank 1 has trained two steps."""
    out, logs = tmp_path / "out", tmp_path / "logs"
    tag = job_tag()
    marker = f"FCN8S_TEST_MARKER={tag}"
    env = {**os.environ, "LOG_DIR": str(logs), "FCN8S_TEST_MARKER": tag}
    launcher = subprocess.Popen(["bash", "launch/run_distribute.sh", "2", *_train_args(mindrecord_dir, out, 500)[1:]],
                                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if (logs / "rank_1.log").exists() and "step 2/500" in (logs / "rank_1.log").read_text():
                break
            time.sleep(1)
        else:
            pytest.fail("rank 1 never started training")
        yield launcher, marker
    finally:
        if launcher.poll() is None:
            launcher.kill()
        for pid in _job_pids(marker):
            os.kill(pid, signal.SIGKILL)


def _assert_stopped_cleanly(launcher, marker, since, expected_code, message):
    output, _ = launcher.communicate(timeout=60)
    assert time.monotonic() - since < 30, output[-3000:]
    assert launcher.returncode == expected_code, output[-3000:]
    assert message in output
    time.sleep(1)
    assert [pid for pid in _job_pids(marker) if pid != launcher.pid] == []  # no orphans


@pytest.mark.slow
def test_a_dead_rank_stops_the_job_without_orphans(running_job):
    launcher, marker = running_job
    worker = [pid for pid in _job_pids(marker) if b"MS_NODE_ID=1\0" in open(f"/proc/{pid}/environ", "rb").read()
              and b"fcn8s.train" in open(f"/proc/{pid}/cmdline", "rb").read()]
    assert len(worker) == 1
    killed_at = time.monotonic()
    os.kill(worker[0], signal.SIGKILL)
    _assert_stopped_cleanly(launcher, marker, killed_at, 137, " exited with SIGKILL (code 137) after step ")


@pytest.mark.slow
def test_sigterm_to_the_launcher_is_forwarded(running_job):
    launcher, marker = running_job
    sent_at = time.monotonic()
    launcher.send_signal(signal.SIGTERM)
    _assert_stopped_cleanly(launcher, marker, sent_at, 128 + signal.SIGTERM, "received signal 15; stopping all ranks")


@pytest.mark.parametrize("args, message", [
    (["0"], "error: N must be a positive integer, got '0'"),
    (["-3"], "error: N must be a positive integer"),
    (["2", "configs/nope.yaml"], "error: config file not found: configs/nope.yaml"),
])
def test_run_distribute_rejects_bad_arguments(args, message, tmp_path):
    result = _run(["bash", "launch/run_distribute.sh", *args], env={"LOG_DIR": str(tmp_path / "logs")})
    assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / "logs").exists()  # nothing started


def test_launcher_refuses_more_ranks_than_npus(tmp_path):
    result = _run([sys.executable, "-m", "fcn8s.launch", "--nproc", "4", "--log-dir", str(tmp_path), "--",
                   "--config", "configs/cpu_smoke.yaml"], env={"ASCEND_VISIBLE_DEVICES": "0,1"})
    assert result.returncode == 2
    assert "error: --nproc 4 is more than the 2 visible NPU(s) [0, 1]" in result.stderr
    assert not list(tmp_path.glob("rank_*.log"))


@pytest.mark.slow
def test_two_rank_eval_equals_single_process(mindrecord_dir, tmp_path):
    import mindspore as ms

    from fcn8s.model import FCN8s

    ckpt = str(tmp_path / "net.ckpt")
    ms.save_checkpoint(FCN8s(21, fc_channels=SMALL_FC_CHANNELS), ckpt)
    common = ["configs/cpu_smoke.yaml"]
    overrides = [f"data.mindrecord_dir={mindrecord_dir}", "eval.image_size=64", *SMALL_NETWORK]
    single = _run(["bash", "launch/run_eval.sh", ckpt, *common, "1", *overrides, "--out", str(tmp_path / "one.json")])
    assert single.returncode == 0, single.stderr[-3000:]
    double = _run(["bash", "launch/run_eval.sh", ckpt, *common, "2", *overrides, "--out", str(tmp_path / "two.json")],
                  env={"LOG_DIR": str(tmp_path / "logs")})
    assert double.returncode == 0, double.stdout[-3000:]
    one, two = (json.load(open(tmp_path / name)) for name in ("one.json", "two.json"))
    assert one["pixels"] == two["pixels"] > 0
    assert one.pop("plot").endswith("one.class_iou.png") and two.pop("plot").endswith("two.class_iou.png")
    assert one == two


@pytest.mark.slow
def test_two_ranks_average_their_gradients_through_the_trainers_reducer(tmp_path):
    """The trainer's gradient reduction over 2 ranks x 2 samples == one process applying the mean of the two
    halves' gradients, with ignored pixels (a different number on each rank; BatchNorm-free net).

    FCN-8s itself keeps per-rank BatchNorm statistics (no SyncBN), so only its trainable weights
    are compared across ranks (checksums above); this checks the reduction itself (a sum instead of the
    mean, ``mean=False``, doubles the step).
    """

    single = _run([sys.executable, "-m", "tests.dp_equivalence_worker", str(tmp_path / "one")], env={"PYTHONPATH": REPO})
    assert single.returncode == 0, single.stderr[-3000:]
    double = _run([sys.executable, "-m", "fcn8s.launch", "--nproc", "2", "--log-dir", str(tmp_path / "logs"),
                   "--module", "tests.dp_equivalence_worker", "--", str(tmp_path / "two")])
    assert double.returncode == 0, double.stdout[-3000:]
    one = np.load(tmp_path / "one.rank0.npz")
    rank0, rank1 = (np.load(tmp_path / f"two.rank{r}.npz") for r in (0, 1))
    assert set(one.files) == set(rank0.files) == set(rank1.files)
    for name in one.files:
        np.testing.assert_array_equal(rank0[name], rank1[name])
        np.testing.assert_allclose(rank0[name], one[name], rtol=1e-5, atol=1e-6)
    assert not np.allclose(one[one.files[0]], 0)


def test_ascend_path_generates_a_rank_table_and_sets_rank_env(tmp_path):
    """An 'Ascend host' (ASCEND_VISIBLE_DEVICES) with a fake hccn.conf: real launcher, real processes."""
    hccn = tmp_path / "hccn.conf"
    hccn.write_text("".join(f"address_{d}=192.168.100.{101 + d}\nnetmask_{d}=255.255.255.0\n" for d in range(8)))
    reports, logs = tmp_path / "reports", tmp_path / "logs"
    reports.mkdir()
    result = _run([sys.executable, "-m", "fcn8s.launch", "--nproc", "2", "--log-dir", str(logs),
                   "--module", "tests.env_report_worker", "--", str(reports)],
                  env={"ASCEND_VISIBLE_DEVICES": "4,5,6", "HCCN_CONF": str(hccn)}, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    table_path = str(logs / "rank_table.json")
    table = json.load(open(table_path))
    devices = table["server_list"][0]["device"]
    assert [(d["device_id"], d["device_ip"], d["rank_id"]) for d in devices] == [
        ("4", "192.168.100.105", "0"), ("5", "192.168.100.106", "1")]
    for rank, device in ((0, "0"), (1, "1")):  # logical ids: the process sees NPUs 4, 5, 6 as 0, 1, 2
        report = json.load(open(reports / f"rank{rank}.json"))
        assert report["DEVICE_ID"] == device and report["RANK_ID"] == str(rank) and report["RANK_SIZE"] == "2"
        assert report["RANK_TABLE_FILE"] == table_path and report["MS_ROLE"] is None
        assert report["cwd"] == str(logs / f"rank_{rank}")


def test_rank_table_generation_failure_is_one_line(tmp_path):
    """No hccn.conf and no hccn_tool on an 'Ascend host': the launcher's own one-line error, nothing started."""
    result = _run([sys.executable, "-m", "fcn8s.launch", "--nproc", "2", "--log-dir", str(tmp_path / "logs"),
                   "--dry-run"], env={"ASCEND_VISIBLE_DEVICES": "0,1", "HCCN_CONF": str(tmp_path / "hccn.conf"),
                                      "PATH": os.path.dirname(sys.executable)}, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith(f"error: cannot generate a rank table: cannot find device IPs: {tmp_path}/hccn.conf does "
                           "not exist and hccn_tool is not on PATH") and last.endswith("(or set RANK_TABLE_FILE)")
    assert not os.path.exists(tmp_path / "logs" / "rank_table.json")


FAKE_SCONTROL = """#!/bin/sh
case "$1 $2" in
  "show hostnames") printf 'srv0\\nsrv1\\n' ;;
  "show node") echo "NodeName=$3 Arch=x86_64 CoresPerSocket=1"; echo "   NodeAddr=${FAKE_NODE_ADDR} NodeHostName=$3" ;;
  *) exit 1 ;;
esac
"""


@pytest.mark.parametrize("node_addr, expected", [
    ("198.18.7.1", "198.18.7.1"),  # the node name srv0 does not resolve: its NodeAddr is used
    ("localhost", "127.0.0.1"),
    ("srv0", "error: slurm node srv0: NodeAddr 'srv0' is neither an IP address nor a resolvable host name"),
])
def test_slurm_scheduler_host_is_the_first_nodes_address(tmp_path, monkeypatch, node_addr, expected):
    from fcn8s.distributed import init_distributed

    scontrol = tmp_path / "scontrol"
    scontrol.write_text(FAKE_SCONTROL)
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_NODE_ADDR", node_addr)
    env = {"SLURM_PROCID": "1", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1", "SLURM_NNODES": "2",
           "SLURM_JOB_NODELIST": "srv[0-1]", "SLURM_JOB_ID": "7", "PATH": os.environ["PATH"]}
    if expected.startswith("error: "):
        with pytest.raises(UserError, match=re.escape(expected[len("error: "):])):
            init_distributed(env)
        return
    from fcn8s.distributed import _scheduler_address

    assert _scheduler_address(planned_context(env), env) == (expected, 20007)


def test_mpirun_scheduler_address_is_loopback_on_one_host_and_routable_across_hosts():
    from fcn8s.hostnet import interface_addresses, reachable_address, source_address_towards

    mine = sorted(interface_addresses())
    assert reachable_address(mine, [mine, mine]) == "127.0.0.1"  # all ranks on this host
    if not mine:
        pytest.skip("this host has no non-loopback interface")
    remote = "198.18.200.1"  # never contacted: a UDP connect only asks the routing table
    if source_address_towards(remote) in (None, "127.0.0.1"):
        with pytest.raises(UserError, match="no route from rank 0's host"):
            reachable_address(mine, [[remote]])
    else:
        assert reachable_address(mine, [mine, [remote]]) == source_address_towards(remote) != "127.0.0.1"


def test_hccl_timeouts_come_from_the_config_unless_the_environment_sets_them():
    from fcn8s.config import ConfigError, load_config
    from fcn8s.distributed import export_hccl_timeouts

    cfg = load_config("configs/cpu_smoke.yaml")
    env = {}
    export_hccl_timeouts(cfg.dist.hccl_connect_timeout, cfg.dist.hccl_exec_timeout, env)
    assert env == {"HCCL_CONNECT_TIMEOUT": "600", "HCCL_EXEC_TIMEOUT": "1836"}
    env = {"HCCL_CONNECT_TIMEOUT": "1200"}
    export_hccl_timeouts(900, 68 * 30, env)
    assert env == {"HCCL_CONNECT_TIMEOUT": "1200", "HCCL_EXEC_TIMEOUT": "2040"}
    with pytest.raises(ConfigError, match="dist.hccl_exec_timeout: must be a multiple of 68"):
        load_config("configs/cpu_smoke.yaml", ["dist.hccl_exec_timeout=100"])
    with pytest.raises(ConfigError, match="dist.hccl_connect_timeout: must be >= 120"):
        load_config("configs/cpu_smoke.yaml", ["dist.hccl_connect_timeout=60"])
