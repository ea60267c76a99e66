"""The simulated-servers infrastructure (tests/infra/netns.py, netns_agent.sh, slurm_cluster.py).

Two network namespaces on a private bridge stand in for two servers: TCP between them, isolated
addresses and hostnames, teardown, OpenMPI across them and a 2-node Slurm cluster on them.
"""
import os
import subprocess
import sys
import time

import pytest

from tests.infra.netns import BRIDGE_NS, PREFIX, SimulatedServers, mpirun_argv, mpirun_env, require_netns
from tests.infra.netns import simulated_servers  # noqa: F401  (fixture)
from tests.infra.slurm_cluster import simulated_slurm  # noqa: F401  (fixture)

pytestmark = pytest.mark.xdist_group("netns")  # the namespaces, their Slurm and munge: one test at a time
PYTHON = sys.executable
PORT = 40123
# Prints "ready", accepts one client on argv[1]:argv[2], sends back the client's address.
TCP_SERVER = ("import socket, sys; s = socket.create_server((sys.argv[1], int(sys.argv[2]))); "
              "print('ready', flush=True); c, a = s.accept(); c.sendall(a[0].encode()); c.close()")
# Connects to argv[1]:argv[2] within argv[3] seconds, prints what the server sends.
TCP_CLIENT = ("import socket, sys; c = socket.create_connection((sys.argv[1], int(sys.argv[2])), "
              "timeout=float(sys.argv[3])); print(c.recv(64).decode())")
MPI_HELLO = ("import socket, subprocess; from mpi4py import MPI; comm = MPI.COMM_WORLD; "
             "ip = subprocess.run(['ip', '-4', '-o', 'addr', 'show', 'eth0'], capture_output=True, text=True)"
             ".stdout.split()[3].split('/')[0]; total = comm.allreduce(comm.Get_rank()); "
             "print(comm.Get_rank(), comm.Get_size(), socket.gethostname(), ip, total, flush=True)")


def _our_netns():
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout.split()
    return [name for name in names if name.startswith((PREFIX, BRIDGE_NS))]


def _in_servers(servers, pids, indices, timeout=10.0):
    """Whether every pid is in one of the servers ``indices`` within ``timeout`` s: ``nsenter`` joins the
    namespace only after Popen has returned, later on a loaded machine."""
    deadline = time.monotonic() + timeout
    while not set(pids) <= {pid for k in indices for pid in servers.pids(k)}:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _alive(pid):
    """Whether ``pid`` runs (a zombie waiting for its parent does not)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _tcp_exchange(servers, client, host, timeout=5.0):
    """Client on server ``client`` connects to ``host``; returns (client result, address the server saw)."""
    listener = servers.popen(1, [PYTHON, "-c", TCP_SERVER, servers[1].ip, str(PORT)], stdout=subprocess.PIPE,
                             text=True)
    assert listener.stdout.readline().strip() == "ready"
    result = servers.run(client, [PYTHON, "-c", TCP_CLIENT, host, str(PORT), str(timeout)], timeout=30)
    return result, listener


def test_servers_talk_tcp_and_are_isolated(simulated_servers):  # noqa: F811
    servers = simulated_servers(2)
    result, listener = _tcp_exchange(servers, 0, servers[1].ip)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == servers[0].ip
    listener.wait(timeout=10)
    for srv in servers:
        addrs = servers.run(srv.index, ["ip", "-4", "-o", "addr"], check=True).stdout
        assert sorted(line.split()[3] for line in addrs.splitlines()) == ["127.0.0.1/8", f"{srv.ip}/24"]
        for family in ("-4", "-6"):
            routes = servers.run(srv.index, ["ip", family, "route"], check=True).stdout
            assert "default" not in routes, routes
        named = servers.run(srv.index, ["hostname"], hostname=True, check=True).stdout.strip()
        assert named == srv.name
    env = {**os.environ, "FCN8S_PROBE": "through nsenter"}
    probe = servers.run(1, [PYTHON, "-c", "import os; print(os.environ['FCN8S_PROBE'])"], env=env, hostname=True)
    assert probe.stdout.strip() == "through nsenter", probe.stderr


def test_link_down_cuts_one_server_off(simulated_servers):  # noqa: F811
    servers = simulated_servers(2)
    servers.link_down(1)
    result = servers.run(0, [PYTHON, "-c", TCP_CLIENT, servers[1].ip, str(PORT), "1"], timeout=30)
    assert result.returncode != 0 and ("timed out" in result.stderr or "unreachable" in result.stderr.lower())
    servers.link_up(1)
    result, listener = _tcp_exchange(servers, 0, servers[1].ip)
    assert result.returncode == 0, result.stderr
    listener.wait(timeout=10)


def test_kill_all_and_teardown_leave_nothing(simulated_servers):  # noqa: F811
    subprocess.run(["ip", "netns", "add", f"{PREFIX}249"], capture_output=True)  # stale, as after a crash
    assert f"{PREFIX}249" in _our_netns()
    servers = simulated_servers(2)
    assert sorted(_our_netns()) == sorted([BRIDGE_NS, f"{PREFIX}0", f"{PREFIX}1"])
    sleeper = servers.popen(1, ["sleep", "300"])
    assert _in_servers(servers, [sleeper.pid], [1])
    servers.kill_all(1)
    assert servers.pids(1) == [] and sleeper.wait(timeout=10) == -9
    # a foreground process, a daemonised one (reparented away from us) and one with its own hostname
    started = [servers.popen(0, ["sleep", "300"]).pid, servers.popen(1, ["sleep", "300"], hostname=True).pid]
    started += [int(servers.run(1, ["sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!"], check=True).stdout)]
    assert _in_servers(servers, started, [0, 1])
    servers.close()
    assert _our_netns() == []
    assert not [pid for pid in started if _alive(pid)]


def test_teardown_when_the_body_raises():
    require_netns()
    with pytest.raises(RuntimeError, match="boom"):
        with SimulatedServers(2) as servers:
            pid = servers.popen(0, ["sleep", "300"]).pid
            raise RuntimeError("boom")
    assert _our_netns() == []
    assert not _alive(pid)


def test_mpirun_across_two_servers(simulated_servers):  # noqa: F811
    servers = simulated_servers(2)
    job = servers.mpirun(2, [PYTHON, "-c", MPI_HELLO], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = job.communicate(timeout=120)
    assert job.returncode == 0, err
    ranks = sorted(tuple(line.split()) for line in out.splitlines() if line.strip())
    assert ranks == [(str(rank), "4", f"srv{rank // 2}", f"198.18.7.{rank // 2 + 1}", "6") for rank in range(4)]
    # As over ssh: ranks on other servers get only the variables exported with -x.
    code = "import os, socket; print(socket.gethostname(), os.environ.get('EXPORTED'), os.environ.get('LOCAL'))"
    argv = mpirun_argv(servers.servers, 1, [PYTHON, "-c", code], env_names=["EXPORTED"])
    env = mpirun_env({**os.environ, "EXPORTED": "yes", "LOCAL": "yes"})
    probe = servers.run(0, argv, env=env, hostname=True, timeout=120)
    assert sorted(probe.stdout.splitlines()) == ["srv0 yes yes", "srv1 yes None"], probe.stderr


def test_slurm_on_two_servers(simulated_slurm, tmp_path):  # noqa: F811
    slurm = simulated_slurm
    tasks = slurm.run(["srun", "-N", "2", "-n", "4", "--ntasks-per-node=2", "-O", "hostname"], timeout=120)
    assert tasks.returncode == 0, tasks.stderr
    assert sorted(tasks.stdout.split()) == ["srv0", "srv0", "srv1", "srv1"]
    node = slurm.run(["scontrol", "show", "node", "srv1"], check=True).stdout
    assert "NodeAddr=198.18.7.2 " in node
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\nsrun -l sh -c 'echo $(hostname) $SLURM_NODEID $SLURM_SUBMIT_HOST'\n")
    batch = slurm.run(["sbatch", "--wait", "-N", "2", "--ntasks-per-node=1", "-o", str(tmp_path / "job.out"),
                       str(script)], timeout=120)
    assert batch.returncode == 0, batch.stderr
    assert sorted((tmp_path / "job.out").read_text().splitlines()) == ["0: srv0 0 srv0", "1: srv1 1 srv0"]
