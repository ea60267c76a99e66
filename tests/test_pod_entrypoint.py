"""launch/pod_entrypoint.sh: Volcano rank-table pods and MindX DL AscendJob pods, with real processes."""
import json
import os
import signal
import subprocess
import time

import pytest

from fcn8s.cluster.entrypoint import ascendjob_envs, default_log_dir, rank_table_envs
from fcn8s.distributed import free_port
from fcn8s.errors import UserError
from fcn8s.placement import find_server
from tests.conftest import REPO

ENTRYPOINT = os.path.join(REPO, "launch", "pod_entrypoint.sh")
POD_ENV_KEYS = ("RANK_TABLE_FILE", "MINDSPORE_HCCL_CONFIG_PATH", "RANK_ID", "RANK_SIZE", "DEVICE_ID", "MS_ROLE",
                "MS_NODE_ID", "MS_WORKER_NUM", "MS_LOCAL_WORKER", "MS_NODE_RANK", "MS_SCHED_HOST", "MS_SCHED_PORT",
                "XDL_IP", "POD_IP", "FCN8S_RANK_TABLE_TIMEOUT", "NPU_POD", "ASCEND_VISIBLE_DEVICES",
                "ASCEND_RT_VISIBLE_DEVICES", "SERVER_ID")


def server(ip, devices, first_rank, **extra):
    return {"server_id": ip, "device": [{"device_id": str(d), "device_ip": f"192.168.{first_rank}.{d}",
                                         "rank_id": str(first_rank + k)} for k, d in enumerate(devices)],
            **({"host_nic_ip": "reserve"} if not extra else extra)}


def table(*servers):
    return {"version": "1.0", "server_count": str(len(servers)), "server_list": list(servers), "status": "completed"}


TWO_BY_TWO = table(server("10.0.0.1", [0, 1], 0), server("10.0.0.2", [5, 4], 2))


def start_pod(tmp_path, env, *args, module="tests.env_report_worker", stderr=subprocess.PIPE):
    """The entrypoint as a pod would run it (clean launcher env); returns (Popen, reports dir, log dir)."""
    reports, logs = tmp_path / "reports", tmp_path / "logs"
    reports.mkdir(parents=True, exist_ok=True)
    clean = {k: v for k, v in os.environ.items() if k not in POD_ENV_KEYS}
    proc = subprocess.Popen(["bash", ENTRYPOINT, "--log-dir", str(logs), "--module", module, *args, "--", str(reports)],
                            cwd=REPO, env={**clean, **env}, stdout=subprocess.PIPE, stderr=stderr, text=True)
    return proc, reports, logs


def write_json(path, data):
    """Replace ``path`` atomically, as the ConfigMap volume update does."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as handle:
        json.dump(data, handle)
    os.replace(tmp, path)


def reports_of(reports):
    return {int(p.stem[4:]): json.loads(p.read_text()) for p in reports.glob("rank*.json")}


def test_waits_for_the_rank_table_then_starts_one_rank_per_local_device(tmp_path):
    path = tmp_path / "hccl.json"
    write_json(path, {"status": "initializing"})
    started = time.monotonic()
    proc, reports, logs = start_pod(tmp_path, {"RANK_TABLE_FILE": str(path), "XDL_IP": "10.0.0.2",
                                               "POD_IP": "172.16.0.9"})
    time.sleep(1.5)
    assert proc.poll() is None and not reports_of(reports)  # still waiting, nothing started
    write_json(path, TWO_BY_TWO)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    assert time.monotonic() - started >= 1.5
    assert "waiting up to 600 s" in err and "status initializing" in err
    found = reports_of(reports)
    assert sorted(found) == [2, 3]  # this pod's global ranks only
    # rank 2 is physical device 5, rank 3 device 4; in the container they are logical devices 1 and 0
    for rank, device in ((2, "1"), (3, "0")):
        assert {k: found[rank][k] for k in ("DEVICE_ID", "RANK_ID", "RANK_SIZE", "RANK_TABLE_FILE")} == \
            {"DEVICE_ID": device, "RANK_ID": str(rank), "RANK_SIZE": "4", "RANK_TABLE_FILE": str(path)}
        assert found[rank]["MS_ROLE"] is None
        assert found[rank]["cwd"] == str(logs / f"rank_{rank}")
    assert sorted(p.name for p in logs.glob("rank_*.log")) == ["rank_2.log", "rank_3.log"]


def test_rank_table_that_never_completes_times_out_with_a_clear_message(tmp_path):
    path = tmp_path / "hccl.json"
    write_json(path, {"status": "initializing"})
    started = time.monotonic()
    proc, reports, logs = start_pod(tmp_path, {"RANK_TABLE_FILE": str(path), "XDL_IP": "10.0.0.2",
                                               "FCN8S_RANK_TABLE_TIMEOUT": "1.5"})
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert 1.5 <= time.monotonic() - started < 30
    assert err.strip().splitlines()[-1].startswith(
        f"error: rank table {path} is still 'initializing' after 2 s: is the job labelled ring-controller.atlas")
    assert not reports_of(reports) and not logs.exists()


def test_a_configured_but_missing_rank_table_times_out_naming_it(tmp_path):
    path = tmp_path / "not-mounted" / "hccl.json"
    proc, _, _ = start_pod(tmp_path, {"RANK_TABLE_FILE": str(path), "XDL_IP": "10.0.0.2"}, "--rank-table-timeout", "0.5")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert f"error: rank table {path} is still 'missing'" in err


def test_without_rank_table_or_operator_variables_a_single_server_job_starts_at_once(tmp_path):
    """`docker run` of the image on one server: no Volcano table mounted, no AscendJob variables."""
    assert not os.path.exists("/user/serverid/devindex/config/hccl.json")
    started = time.monotonic()
    proc, reports, _ = start_pod(tmp_path, {"XDL_IP": "10.0.0.2"})
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert time.monotonic() - started < 60 and "waiting" not in err
    assert "single-server job on 1 CPU rank" in err
    found = reports_of(reports)
    assert sorted(found) == [0] and found[0]["RANK_SIZE"] == "1" and found[0]["MS_WORKER_NUM"] == "1"


@pytest.mark.parametrize("env, broken, message", [
    ({"XDL_IP": "10.9.9.9", "POD_IP": "172.16.0.9"}, None,
     "no server entry in the rank table matches this server (10.9.9.9, 172.16.0.9); servers: 10.0.0.1, 10.0.0.2"),
    ({"XDL_IP": "10.0.0.2"}, "rank", "rank table {path}: duplicate rank_id '1'"),
])
def test_unusable_rank_table_is_a_one_line_error(tmp_path, env, broken, message):
    path = tmp_path / "hccl.json"
    data = json.loads(json.dumps(TWO_BY_TWO))
    if broken == "rank":
        data["server_list"][1]["device"][0]["rank_id"] = "1"
    write_json(path, data)
    proc, reports, _ = start_pod(tmp_path, {"RANK_TABLE_FILE": str(path), **env})
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert err.strip().splitlines()[-1].startswith("error: " + message.format(path=path)), err
    assert not reports_of(reports)


def test_sigterm_while_waiting_ends_the_pod_at_once(tmp_path):
    """The entrypoint is PID 1 in a container, where an unhandled SIGTERM would be ignored."""
    path, stderr = tmp_path / "hccl.json", tmp_path / "stderr.txt"
    write_json(path, {"status": "initializing"})
    with open(stderr, "w") as handle:
        proc, _, _ = start_pod(tmp_path, {"RANK_TABLE_FILE": str(path)}, stderr=handle)
    deadline = time.monotonic() + 30
    while "waiting up to" not in stderr.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=10)
    assert proc.returncode == 128 + signal.SIGTERM and time.monotonic() - sent < 5


def test_ascend_operator_table_is_matched_by_container_ip():
    """Two pods on the same node: host_ip is shared, container_ip tells them apart; server_id is a node id."""
    data = table(server("node-a", [0, 1], 0, host_ip="10.0.0.1", container_ip="172.16.0.5"),
                 server("node-a", [2, 3], 2, host_ip="10.0.0.1", container_ip="172.16.0.6"))
    data["server_list"][1]["server_id"] = "node-a-2"
    assert find_server(data, {"pod": {"172.16.0.6"}, "host": {"10.0.0.1"}}, {}, []) == 1
    pod = {"POD_IP": "172.16.0.6", "XDL_IP": "10.0.0.1", "ASCEND_VISIBLE_DEVICES": "2,3"}
    assert rank_table_envs(data, pod, "/t/hccl.json") == {
        2: {"DEVICE_ID": "0", "RANK_ID": "2", "RANK_SIZE": "4", "RANK_TABLE_FILE": "/t/hccl.json"},
        3: {"DEVICE_ID": "1", "RANK_ID": "3", "RANK_SIZE": "4", "RANK_TABLE_FILE": "/t/hccl.json"}}
    with pytest.raises(UserError, match="no server entry"):
        find_server(data, {"pod": {"172.16.0.7"}, "host": {"10.0.0.1"}}, {}, [])


@pytest.mark.parametrize("env, expected", [
    ({"MS_LOCAL_WORKER": "4", "MS_NODE_RANK": "1", "MS_WORKER_NUM": "8"},
     {4 + i: {"MS_NODE_ID": str(4 + i), "RANK_ID": str(4 + i), "RANK_SIZE": "8", "DEVICE_ID": str(i)}
      for i in range(4)}),
    ({"MS_LOCAL_WORKER": "4", "MS_NODE_RANK": "2", "MS_WORKER_NUM": "8"},
     "MS_NODE_RANK=2 x MS_LOCAL_WORKER=4 does not fit in MS_WORKER_NUM=8"),
    ({"MS_LOCAL_WORKER": "0", "MS_NODE_RANK": "0", "MS_WORKER_NUM": "8"}, "MS_LOCAL_WORKER='0': expected"),
    ({"MS_NODE_RANK": "0", "MS_WORKER_NUM": "8"}, "MS_LOCAL_WORKER='': expected an integer >= 1"),
])
def test_ascendjob_worker_ranks(env, expected):
    if isinstance(expected, str):
        with pytest.raises(UserError, match=expected.replace("=", ".")):
            ascendjob_envs(env)
    else:
        assert ascendjob_envs(env) == expected


def test_ascendjob_worker_pod_starts_its_local_workers(tmp_path):
    env = {"MS_ROLE": "MS_WORKER", "MS_SCHED_HOST": "10.1.1.1", "MS_SCHED_PORT": "2222", "MS_WORKER_NUM": "4",
           "MS_LOCAL_WORKER": "2", "MS_NODE_RANK": "1"}
    proc, reports, _ = start_pod(tmp_path, env)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    found = reports_of(reports)
    assert sorted(found) == [2, 3]
    for rank in (2, 3):
        assert {k: found[rank][k] for k in ("MS_ROLE", "MS_NODE_ID", "MS_WORKER_NUM", "DEVICE_ID", "RANK_SIZE")} == \
            {"MS_ROLE": "MS_WORKER", "MS_NODE_ID": str(rank), "MS_WORKER_NUM": "4", "DEVICE_ID": str(rank - 2),
             "RANK_SIZE": "4"}


def test_a_failing_rank_fails_the_pod(tmp_path):
    env = {"MS_ROLE": "MS_WORKER", "MS_SCHED_HOST": "10.1.1.1", "MS_SCHED_PORT": "2222", "MS_WORKER_NUM": "2",
           "MS_LOCAL_WORKER": "2", "MS_NODE_RANK": "0"}
    proc, _, logs = start_pod(tmp_path, env, module="tests.no_such_module")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "exited with code 1; stopping the other ranks" in err
    assert "No module named tests.no_such_module" in (logs / "rank_0.log").read_text()


def test_logs_default_to_the_output_dir_of_the_training_config(tmp_path, monkeypatch):
    monkeypatch.setenv("HOSTNAME", "fcn8s-voc-worker-1")
    args = ["--config", "configs/cpu_smoke.yaml", "--set", f"run.output_dir={tmp_path}/run", "--resume", "auto"]
    assert default_log_dir(args) == f"{tmp_path}/run/logs/fcn8s-voc-worker-1"


@pytest.mark.slow
@pytest.mark.parametrize("scheduler_holds_npus", [False, True])
def test_ascendjob_scheduler_and_worker_pods_form_a_real_mindspore_cluster(tmp_path, scheduler_holds_npus):
    """Scheduler pod + worker pods (1 CPU worker each): MindSpore init and an AllReduce across pods.

    When the Scheduler replica holds NPUs the operator sets NPU_POD=true on it, numbers the worker
    pods from MS_NODE_RANK=1 and counts the scheduler's chips in MS_WORKER_NUM: the scheduler pod
    then runs rank 0 itself.
    """
    common = {"MS_SCHED_HOST": "127.0.0.1", "MS_SCHED_PORT": str(free_port()), "MS_WORKER_NUM": "2",
              "MS_LOCAL_WORKER": "1"}
    scheduler = {**common, "MS_ROLE": "MS_SCHED", "MS_NODE_RANK": "0", "NPU_POD": str(scheduler_holds_npus).lower()}
    worker_pods = (1,) if scheduler_holds_npus else (0, 1)
    pods = [start_pod(tmp_path / "pod0" if scheduler_holds_npus else tmp_path / "sched", scheduler,
                      module="tests.cluster_allreduce_worker")]
    for node in worker_pods:
        pods.append(start_pod(tmp_path / f"pod{node}", {**common, "MS_ROLE": "MS_WORKER", "MS_NODE_RANK": str(node)},
                              module="tests.cluster_allreduce_worker"))
    try:
        results = [proc.communicate(timeout=300) for proc, _, _ in pods]
    finally:
        for proc, _, _ in pods:
            if proc.poll() is None:
                proc.kill()
    for (proc, _, logs), (_, err) in zip(pods, results):
        log_text = "".join(p.read_text() for p in logs.glob("rank_*.log")) if logs.exists() else ""
        assert proc.returncode == 0, err[-2000:] + log_text[-2000:]
    for node in (0, 1):
        report = reports_of(tmp_path / f"pod{node}" / "reports")[node]
        assert report == {"rank": node, "size": 2, "launcher": "msrun", "allreduce": 3.0, "DEVICE_ID": "0",
                          "MS_NODE_ID": str(node)}
