"""python -m fcn8s.preflight: each check's failure case with real files and sockets, the CLI, the launchers."""
import json
import os
import shutil
import socket
import subprocess
import time

import pytest

from fcn8s.config import load_config
from fcn8s.preflight import (OK, PROBLEM, SKIPPED, Job, check_dataset, check_hccl, check_master, check_memory,
                             check_npus, check_output_dir, check_pretrained, check_rank_table, check_resume,
                             run_checks)
from tests.conftest import PYTHON, REPO, SMALL_FC_CHANNELS, SMALL_NETWORK, run_module
from tests.test_placement import server, table, write_table

CONFIG = "configs/cpu_smoke.yaml"
LAUNCH_ENV = ("NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "RANK_TABLE_FILE", "ASCEND_VISIBLE_DEVICES",
              "ASCEND_RT_VISIBLE_DEVICES", "HCCL_CONNECT_TIMEOUT", "HCCL_EXEC_TIMEOUT", "NO_PREFLIGHT", "SERVER_ID")


def _clean_env(**extra):
    return {**{k: v for k, v in os.environ.items() if k not in LAUNCH_ENV}, **extra}


def _train_args(mindrecord_dir, out, *extra):
    return ["--config", CONFIG, f"data.mindrecord_dir={mindrecord_dir}", f"run.output_dir={out}",
            "train.batch_size=2", *SMALL_NETWORK, *extra]


def _cfg(mindrecord_dir, out, *extra):
    return load_config(CONFIG, [f"data.mindrecord_dir={mindrecord_dir}", f"run.output_dir={out}", *SMALL_NETWORK,
                                *extra])


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_dataset_sizes_steps_and_a_global_batch_too_large(mindrecord_dir, tmp_path):
    good = check_dataset(_cfg(mindrecord_dir, tmp_path, "train.batch_size=2", "train.max_steps=0",
                              "train.epochs=3"), world_size=2)
    assert good.status == OK and "train 24 samples, val 6 samples" in good.detail
    assert "global batch 4, 6 steps per epoch, 18 steps in total" in good.detail
    bad = check_dataset(_cfg(mindrecord_dir, tmp_path, "train.batch_size=8"), world_size=4)
    assert bad.status == PROBLEM and "fewer than one global batch of 32" in bad.detail


def test_missing_dataset_is_a_problem(tmp_path):
    checks = {c.name: c for c in run_checks(_train_args(tmp_path / "nothing", tmp_path / "out"), Job(),
                                            env=_clean_env())}
    assert checks["dataset"].status == PROBLEM and "dataset not found" in checks["dataset"].detail


def test_output_dir_not_writable_and_too_little_space(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    blocked = check_output_dir(str(a_file / "run"), 1, "checkpoints")
    assert blocked.status == PROBLEM and "not writable" in blocked.detail
    full = check_output_dir(str(tmp_path / "run"), 1 << 62, "7 checkpoints")
    assert full.status == PROBLEM and "free, 7 checkpoints need" in full.detail
    assert check_output_dir(str(tmp_path / "run"), 1 << 20, "checkpoints").status == OK
    assert not (tmp_path / "run").exists()  # checked, not created


def test_memory_estimate_vs_available(mindrecord_dir, tmp_path):
    cfg = _cfg(mindrecord_dir, tmp_path)
    low = check_memory(cfg, 2, available=1 << 30)
    assert low.status == PROBLEM and "estimate" in low.detail and "x 2" in low.detail
    assert check_memory(cfg, 2, available=1 << 40).status == OK


def test_parameter_count_and_checkpoint_size_match_a_real_checkpoint(tmp_path):
    import mindspore.nn as nn
    from mindspore import amp

    from fcn8s.checkpoint import CheckpointManager, training_state
    from fcn8s.config import ModelConfig
    from fcn8s.model import build_model
    from fcn8s.model_size import checkpoint_bytes, parameter_counts

    net = build_model(ModelConfig(fc_channels=SMALL_FC_CHANNELS), "matmul")
    assert parameter_counts(21, SMALL_FC_CHANNELS) == (sum(p.size for p in net.get_parameters()),
                                                       sum(p.size for p in net.trainable_params()))
    assert parameter_counts(21)[0] == 134_526_944  # the tutorial's network (built once by hand: 134.5 M)
    optimizer = nn.Momentum(net.trainable_params(), learning_rate=0.01, momentum=0.9)
    manager = CheckpointManager(str(tmp_path / "run" / "checkpoints"), 3, "digest")
    path = manager.save(training_state(net, optimizer, amp.DynamicLossScaler(1024, 2, 50)), 4, {"epoch": 0})
    actual = os.path.getsize(path) + os.path.getsize(path[:-5] + ".json")
    assert abs(checkpoint_bytes(21, SMALL_FC_CHANNELS) - actual) / actual < 0.01


@pytest.fixture(scope="module")
def checkpoint_run(tmp_path_factory, mindrecord_dir):
    """An output dir with one real, complete training checkpoint (2 steps of the small network)."""
    out = tmp_path_factory.mktemp("preflight") / "run"
    run_module("fcn8s.train", *_train_args(mindrecord_dir, out, "train.max_steps=2", "train.eval_interval=0"),
               check=True)
    yield out
    shutil.rmtree(out)


@pytest.mark.slow
def test_resume_auto_names_the_checkpoint_and_refuses_one_that_does_not_verify(checkpoint_run, mindrecord_dir):
    cfg = _cfg(mindrecord_dir, checkpoint_run)
    good = check_resume(cfg, "auto")
    assert good.status == OK and good.detail.endswith("fcn8s-final.ckpt (step 2) verifies")
    path = checkpoint_run / "checkpoints" / "fcn8s-final.ckpt"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    bad = check_resume(cfg, "auto")
    assert bad.status == PROBLEM and "does not verify" in bad.detail
    assert check_resume(cfg, str(path.with_name("nothing.ckpt"))).status == PROBLEM
    assert check_resume(cfg, None).status == SKIPPED


def test_pretrained_bad_file_and_a_good_one(mindrecord_dir, tmp_path):
    from tests.test_pretrained import backbone_arrays, save

    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(os.urandom(4096))
    bad = check_pretrained(_cfg(mindrecord_dir, tmp_path, f"model.pretrained={junk}"))
    assert bad.status == PROBLEM and str(junk) in bad.detail
    wrong = save(tmp_path / "other.ckpt", {"something.weight": backbone_arrays()["features.0.weight"]})
    assert check_pretrained(_cfg(mindrecord_dir, tmp_path, f"model.pretrained={wrong}")).status == PROBLEM
    good = check_pretrained(_cfg(mindrecord_dir, tmp_path,
                                 f"model.pretrained={save(tmp_path / 'vgg.ckpt', backbone_arrays())}"))
    assert good.status == OK and "maps 65 parameter(s), 0 unused" in good.detail
    assert check_pretrained(_cfg(mindrecord_dir, tmp_path)).status == SKIPPED


def test_npus_fewer_than_ranks_and_cpu_host_skipped():
    env = {"ASCEND_VISIBLE_DEVICES": "0,1"}
    few = check_npus(Job(nproc=4), [0, 1], env)
    assert few.status == PROBLEM and "from ASCEND_VISIBLE_DEVICES" in few.detail
    assert check_npus(Job(nproc=2), [0, 1], env).status == OK
    assert check_npus(Job(nproc=2), [], {}).status == SKIPPED


def test_rank_table_without_this_host(tmp_path):
    path = write_table(tmp_path, table(server("10.99.99.1", [0, 1], 0), server("10.99.99.2", [0, 1], 2)))
    env = _clean_env(RANK_TABLE_FILE=path, ASCEND_VISIBLE_DEVICES="0,1")
    missing = check_rank_table(Job(nproc=2), [0, 1], env)
    assert missing.status == PROBLEM and "no server entry in the rank table matches this server" in missing.detail
    chosen = check_rank_table(Job(nproc=2), [0, 1], {**env, "SERVER_ID": "10.99.99.2"})
    assert chosen.status == OK and "ranks [2, 3] of 4" in chosen.detail
    broken = write_table(tmp_path, {"version": "1.0"}, name="broken.json")
    assert check_rank_table(Job(nproc=2), [0, 1], {**env, "RANK_TABLE_FILE": broken}).status == PROBLEM


def test_hccl_timeouts_out_of_range(mindrecord_dir, tmp_path):
    cfg = _cfg(mindrecord_dir, tmp_path)
    bad = check_hccl(cfg, [0], {"HCCL_EXEC_TIMEOUT": "100"})
    assert bad.status == PROBLEM and "HCCL_EXEC_TIMEOUT=100 (environment) must be 68..17340, a multiple of 68" \
        in bad.detail
    good = check_hccl(cfg, [0], {})
    assert good.status == OK and "HCCL_CONNECT_TIMEOUT=600 (config)" in good.detail
    assert check_hccl(cfg, [], {}).status == SKIPPED


def test_master_port_in_use_on_node_0_and_closed_port_from_node_1():
    from fcn8s.hostnet import interface_addresses

    addresses = sorted(interface_addresses())
    if not addresses:
        pytest.skip("this host has no non-loopback address")
    host = addresses[0]
    with socket.socket() as listener:
        listener.bind(("0.0.0.0", 0))
        listener.listen()
        port = listener.getsockname()[1]
        busy = check_master(Job(nproc=1, nnodes=2, node_rank=0, master_addr=host, master_port=port))
        assert busy.status == PROBLEM and "must be free" in busy.detail
        reached = check_master(Job(nproc=1, nnodes=2, node_rank=1, master_addr=host, master_port=port))
        assert reached.status == OK and "reachable from node 1" in reached.detail
    closed = _free_port()
    started = time.monotonic()
    refused = check_master(Job(nproc=1, nnodes=2, node_rank=1, master_addr=host, master_port=closed))
    assert refused.status == PROBLEM and "cannot connect" in refused.detail and time.monotonic() - started < 5
    free = check_master(Job(nproc=1, nnodes=2, node_rank=0, master_addr=host, master_port=closed))
    assert free.status == OK
    unknown = check_master(Job(nproc=1, nnodes=2, node_rank=1, master_addr="no-such-host.invalid"))
    assert unknown.status == PROBLEM and "no-such-host.invalid" in unknown.detail
    assert check_master(Job(nproc=1, nnodes=2, master_addr="127.0.0.1")).status == PROBLEM
    assert check_master(Job()).status == SKIPPED


def test_invalid_config_is_the_only_line(tmp_path):
    checks = run_checks(["--config", CONFIG, "train.lr=-1"], Job(), env=_clean_env())
    assert [(c.name, c.status) for c in checks] == [("config", PROBLEM)] and "train.lr" in checks[0].detail


def test_cli_good_setup_bad_setup_and_json(mindrecord_dir, tmp_path):
    started = time.monotonic()
    good = run_module("fcn8s.preflight", "--nproc", "2", *_train_args(mindrecord_dir, tmp_path / "out"),
                      env=_clean_env(), timeout=120)
    assert good.returncode == 0, good.stdout + good.stderr
    lines = good.stdout.splitlines()
    assert [line.split()[0] for line in lines[:-1]] == ["config", "dataset", "output_dir", "memory", "npus",
                                                        "rank_table", "hccl", "master", "pretrained", "resume"]
    assert lines[-1].startswith("preflight ok") and time.monotonic() - started < 30
    a_file = tmp_path / "file"
    a_file.write_text("x")
    bad_args = ["--nproc", "4", *_train_args(mindrecord_dir, a_file / "out", "train.batch_size=8")]
    bad = run_module("fcn8s.preflight", *bad_args, env=_clean_env(), timeout=120)
    assert bad.returncode == 2, bad.stdout + bad.stderr
    problems = [line for line in bad.stdout.splitlines() if " problem " in line]
    assert [line.split()[0] for line in problems] == ["dataset", "output_dir"]
    assert bad.stdout.splitlines()[-1] == "preflight FAILED: 2 problem(s) (dataset, output_dir)"
    as_json = run_module("fcn8s.preflight", "--json", *bad_args, env=_clean_env(), timeout=120)
    report = json.loads(as_json.stdout)
    assert as_json.returncode == 2 and report["ok"] is False
    assert {c["name"]: c["status"] for c in report["checks"]}["dataset"] == PROBLEM


def test_run_distribute_refuses_a_failed_preflight_and_no_preflight_skips_it(tmp_path):
    logs = tmp_path / "logs"
    args = ["bash", "launch/run_distribute.sh", "2", CONFIG, f"data.mindrecord_dir={tmp_path / 'missing'}",
            f"run.output_dir={tmp_path / 'out'}", *SMALL_NETWORK]
    started = time.monotonic()
    refused = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120,
                             env=_clean_env(LOG_DIR=str(logs), PYTHON=PYTHON))
    elapsed = time.monotonic() - started
    assert refused.returncode == 2, refused.stderr
    assert "dataset     problem  dataset not found" in refused.stderr and "preflight FAILED" in refused.stderr
    assert "--no-preflight" in refused.stderr and elapsed < 15
    assert not logs.exists()  # no rank (and no scheduler) was started
    skipped = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300,
                             env=_clean_env(LOG_DIR=str(logs), PYTHON=PYTHON, NO_PREFLIGHT="1"))
    assert skipped.returncode == 2  # the ranks started and refused the missing dataset themselves
    assert "preflight" not in skipped.stderr
    assert "dataset not found" in (logs / "rank_0.log").read_text()


def test_pod_entrypoint_refuses_a_failed_preflight(tmp_path):
    logs = tmp_path / "logs"
    result = subprocess.run(["bash", "launch/pod_entrypoint.sh", "--log-dir", str(logs), "--", "--config", CONFIG,
                             f"data.mindrecord_dir={tmp_path / 'missing'}", f"run.output_dir={tmp_path / 'out'}"],
                            cwd=REPO, capture_output=True, text=True, timeout=120,
                            env={**_clean_env(PYTHON=PYTHON), "MS_ROLE": ""})
    assert result.returncode == 2, result.stderr
    assert "dataset     problem  dataset not found" in result.stderr and "preflight FAILED" in result.stderr
    assert not logs.exists()
