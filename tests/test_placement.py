"""Which ranks a server runs: `python -m fcn8s.launch --dry-run` plans (real processes) and their errors."""
import json
import os
import sys

import pytest

from fcn8s.errors import UserError
from fcn8s.placement import find_server, rank_table_plan, visible_npus
from tests.conftest import REPO, run_module

LAUNCH_ENV_KEYS = ("RANK_TABLE_FILE", "MINDSPORE_HCCL_CONFIG_PATH", "ASCEND_VISIBLE_DEVICES", "ASCEND_RT_VISIBLE_DEVICES",
                   "SERVER_ID", "RANK_ID", "RANK_SIZE", "DEVICE_ID", "MS_ROLE")


def server(ip, devices, first_rank, **extra):
    return {"server_id": ip, "device": [{"device_id": str(d), "device_ip": f"192.168.{first_rank}.{d}",
                                         "rank_id": str(first_rank + k)} for k, d in enumerate(devices)],
            "host_nic_ip": "reserve", **extra}


def table(*servers):
    return {"version": "1.0", "server_count": str(len(servers)), "server_list": list(servers), "status": "completed"}


def dry_run(tmp_path, *args, env=None):
    """`python -m fcn8s.launch --dry-run` with a clean launcher environment: (returncode, plan or stderr)."""
    clean = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV_KEYS}
    result = run_module("fcn8s.launch", "--log-dir", tmp_path / "logs", "--dry-run", *args, "--",
                        "--config", "configs/cpu_smoke.yaml", env={**clean, **(env or {})}, timeout=120)
    if result.returncode == 0:
        return 0, json.loads(result.stdout)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, result.stderr.strip()


def write_table(tmp_path, data, name="hccl.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def test_dynamic_cluster_plan_of_the_second_server(tmp_path):
    code, plan = dry_run(tmp_path, "--nproc", "2", "--nnodes", "2", "--node-rank", "1",
                         "--master-addr", "198.18.7.1", "--master-port", "29600")
    assert code == 0, plan
    assert (plan["world_size"], plan["node_rank"], plan["scheduler"]) == (4, 1, None)  # node 0 runs it
    assert [r["rank"] for r in plan["ranks"]] == [2, 3]
    for local, rank in enumerate(plan["ranks"]):
        env = rank["env"]
        assert env["MS_NODE_ID"] == env["RANK_ID"] == str(2 + local) and env["RANK_SIZE"] == env["MS_WORKER_NUM"] == "4"
        assert (env["MS_SCHED_HOST"], env["MS_SCHED_PORT"]) == ("198.18.7.1", "29601")
        assert env["DEVICE_ID"] == str(local)  # the local device, not the global rank
    assert not (tmp_path / "logs").exists()  # a dry run starts and writes nothing


def test_run_distribute_maps_the_node_environment_to_the_launcher(tmp_path):
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV_KEYS}
    env.update({"NNODES": "3", "NODE_RANK": "2", "MASTER_ADDR": "198.18.7.1", "MASTER_PORT": "29700", "DRY_RUN": "1",
                "LOG_DIR": str(tmp_path / "logs"), "PYTHON": sys.executable})
    result = subprocess.run(["bash", "launch/run_distribute.sh", "2", "configs/cpu_smoke.yaml"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert [r["rank"] for r in plan["ranks"]] == [4, 5] and plan["world_size"] == 6
    assert plan["ranks"][0]["env"]["MS_SCHED_PORT"] == "29701"


@pytest.mark.parametrize("args, message", [
    (["--nnodes", "2", "--node-rank", "2", "--master-addr", "198.18.7.1"], "NODE_RANK (--node-rank) 2 must be in 0..1"),
    (["--nnodes", "2", "--node-rank", "1"], "MASTER_ADDR (--master-addr) 127.0.0.1 is a loopback address"),
    (["--nnodes", "2", "--node-rank", "1", "--master-addr", "no-such-host.invalid"],
     "MASTER_ADDR (--master-addr) 'no-such-host.invalid' is neither an IP address nor a resolvable host name"),
    (["--nnodes", "0"], "NNODES (--nnodes) must be >= 1"),
])
def test_contradictory_node_arguments_are_one_line_errors(tmp_path, args, message):
    code, stderr = dry_run(tmp_path, "--nproc", "2", *args)
    assert code == 2 and message in stderr and len(stderr.splitlines()) == 1


MERGED = table(server("198.18.7.1", range(8), 0), server("198.18.7.2", range(8), 8))


@pytest.mark.parametrize("server_id, ranks", [("0", range(8)), ("1", range(8, 16)), ("198.18.7.2", range(8, 16))])
def test_merged_rank_table_decides_this_servers_ranks(tmp_path, server_id, ranks):
    path = write_table(tmp_path, MERGED)
    code, plan = dry_run(tmp_path, "--nproc", "8",
                         env={"RANK_TABLE_FILE": path, "SERVER_ID": server_id, "ASCEND_VISIBLE_DEVICES": "0-7"})
    assert code == 0, plan
    assert (plan["source"], plan["world_size"], plan["nnodes"]) == ("rank_table", 16, 2)
    assert [r["rank"] for r in plan["ranks"]] == list(ranks)
    assert [r["env"]["RANK_SIZE"] for r in plan["ranks"]] == ["16"] * 8
    assert [r["env"]["DEVICE_ID"] for r in plan["ranks"]] == [str(d) for d in range(8)]
    assert {r["env"]["RANK_TABLE_FILE"] for r in plan["ranks"]} == {path}


def test_devices_4_to_7_keep_their_ids_on_the_host_and_become_0_to_3_in_a_container(tmp_path):
    path = write_table(tmp_path, table(server("198.18.7.1", [4, 5, 6, 7], 0)))
    env = {"RANK_TABLE_FILE": path, "SERVER_ID": "0"}
    _, host = dry_run(tmp_path, "--nproc", "4", env={**env, "ASCEND_VISIBLE_DEVICES": "0-7"})
    assert [r["env"]["DEVICE_ID"] for r in host["ranks"]] == ["4", "5", "6", "7"]
    assert [r["env"]["RANK_ID"] for r in host["ranks"]] == ["0", "1", "2", "3"]
    for name in ("ASCEND_VISIBLE_DEVICES", "ASCEND_RT_VISIBLE_DEVICES"):  # a container / runtime seeing 4-7
        _, inside = dry_run(tmp_path, "--nproc", "4", env={**env, name: "4-7"})
        assert [r["env"]["DEVICE_ID"] for r in inside["ranks"]] == ["0", "1", "2", "3"], name


@pytest.mark.parametrize("env, args, message", [
    ({"SERVER_ID": "198.18.9.9"}, ["--nproc", "8"], "SERVER_ID='198.18.9.9' names no single server"),
    ({}, ["--nproc", "8"], "no server entry in the rank table matches this server"),
    ({"SERVER_ID": "1", "ASCEND_VISIBLE_DEVICES": "0-3"}, ["--nproc", "8"],
     "lists NPU(s) [0, 1, 2, 3, 4, 5, 6, 7] but 4, 5, 6, 7 not visible here"),
    ({"SERVER_ID": "1"}, ["--nproc", "4"], "lists 8 device(s) for this server, but N (--nproc) is 4"),
    ({"SERVER_ID": "1"}, ["--nproc", "8", "--nnodes", "3"], "NNODES (--nnodes) is 3 but rank table"),
    ({"SERVER_ID": "1"}, ["--nproc", "8", "--node-rank", "0"], "NODE_RANK (--node-rank) is 0 but rank table"),
])
def test_rank_table_mismatches_are_refused_before_anything_starts(tmp_path, env, args, message):
    path = write_table(tmp_path, MERGED)
    code, stderr = dry_run(tmp_path, *args, env={"RANK_TABLE_FILE": path, "ASCEND_VISIBLE_DEVICES": "0-7", **env})
    assert code == 2 and message in stderr, stderr


def test_pods_sharing_a_node_are_told_apart_by_their_npus():
    """hccl-controller: one entry per pod, server_id = the node, so two entries share it."""
    shared = table(server("198.18.7.1", [0, 1, 2, 3], 0), server("198.18.7.1", [4, 5, 6, 7], 4))
    addresses = {"pod": {"198.18.7.1"}, "host": {"198.18.7.1"}}
    assert find_server(shared, addresses, {}, [4, 5, 6, 7]) == 1
    assert find_server(shared, addresses, {}, [0, 1, 2, 3]) == 0
    plan = rank_table_plan(shared, 1, "/t.json", [4, 5, 6, 7])
    assert [(r.rank, r.env["DEVICE_ID"]) for r in plan.ranks] == [(4, "0"), (5, "1"), (6, "2"), (7, "3")]
    with pytest.raises(UserError, match="2 server entries in the rank table match"):
        find_server(shared, addresses, {}, [0, 1])


def test_visible_npus_prefers_the_runtime_list():
    assert visible_npus({"ASCEND_RT_VISIBLE_DEVICES": "6,7", "ASCEND_VISIBLE_DEVICES": "0-7"}) == [6, 7]
    assert visible_npus({"ASCEND_VISIBLE_DEVICES": "[4,8)"}) == [4, 5, 6, 7]
    with pytest.raises(UserError, match="ASCEND_RT_VISIBLE_DEVICES"):
        visible_npus({"ASCEND_RT_VISIBLE_DEVICES": "x"})
