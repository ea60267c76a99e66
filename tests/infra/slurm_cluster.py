"""An S-node Slurm cluster on the simulated servers of tests/infra/netns.py (root only).

Node srvK is server K (NodeAddr 198.18.7.(K+1)): ``slurmd -N srvK`` runs in its network namespace
with its own hostname, slurmctld on srv0. The cluster has its own slurm.conf and ports, next to the
host's single-node Slurm (tests/infra/slurm.sh), with which it shares munged (through its socket).
Clients must run on a server with ``SLURM_CONF`` set: use ``run``/``popen``/``env``.

    with SimulatedServers(2) as servers, SlurmCluster(servers, str(tmp_path)) as slurm:
        slurm.run(["srun", "-N", "2", "-n", "4", "hostname"], check=True).stdout

The names srvK do not resolve (no DNS), as on clusters without it: take addresses from
``scontrol show node`` (NodeAddr).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from typing import Dict, Iterator, List, Mapping, Optional, Sequence

import pytest

from tests.infra import run_script, unavailable
from tests.infra.netns import SimulatedServers, require_netns

CTLD_PORT = 6917
SLURMD_PORT = 6918
START_TIMEOUT = 60.0


def munge_running() -> bool:
    """Whether the host's munged answers (a credential encodes and decodes)."""
    encoded = subprocess.run(["munge", "-n"], capture_output=True, stdin=subprocess.DEVNULL)
    return encoded.returncode == 0 and subprocess.run(["unmunge"], input=encoded.stdout,
                                                      capture_output=True).returncode == 0


def ensure_munge() -> None:
    """Start munged (and the host's single-node Slurm) through tests/infra/slurm.sh unless it runs."""
    if munge_running():
        return
    started = run_script("slurm.sh", "start", timeout=120)
    if started.returncode != 0 or not munge_running():
        raise RuntimeError(f"munged is not running and tests/infra/slurm.sh start failed:\n"
                           f"{started.stdout}{started.stderr}")


class SlurmCluster:
    """slurmctld on server 0 and one slurmd per server; a context manager (``stop()`` on exit).

    ``workdir`` (the caller's, e.g. tmp_path) holds slurm.conf, state, spool, pid and log files;
    ``extra_conf`` lines are appended to slurm.conf (e.g. ``SlurmdTimeout=10``).
    """

    def __init__(self, servers: SimulatedServers, workdir: str, cpus: int = 2,
                 extra_conf: Sequence[str] = ()) -> None:
        self.servers = servers
        self.workdir = os.path.abspath(workdir)
        self.conf = os.path.join(self.workdir, "slurm.conf")
        self.log_dir = os.path.join(self.workdir, "log")
        self.nodes: List[str] = [srv.name for srv in servers]
        self._cpus = cpus
        self._extra_conf = list(extra_conf)
        self._daemons: List[subprocess.Popen] = []

    def __enter__(self) -> "SlurmCluster":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def env(self, base: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
        """``base`` (default ``os.environ``) with ``SLURM_CONF`` pointing at this cluster."""
        return {**(os.environ if base is None else base), "SLURM_CONF": self.conf}

    def popen(self, argv: Sequence[str], env: Optional[Mapping[str, str]] = None, server: int = 0,
              **kwargs: object) -> subprocess.Popen:
        """Start a Slurm client (``sbatch``, ``srun``...) on ``server``, as from a login shell there.

        ``env`` defaults to ``os.environ``; ``SLURM_CONF`` is added, and the hostname is srvK
        unless ``hostname=False``. Other keywords go to ``SimulatedServers.popen``.
        """
        kwargs.setdefault("hostname", True)
        return self.servers.popen(server, argv, env=self.env(env), **kwargs)

    def run(self, argv: Sequence[str], env: Optional[Mapping[str, str]] = None, server: int = 0,
            **kwargs: object) -> subprocess.CompletedProcess:
        """Like ``popen`` but to completion (``SimulatedServers.run``: text captured, 120 s timeout)."""
        kwargs.setdefault("hostname", True)
        return self.servers.run(server, argv, env=self.env(env), **kwargs)

    def log(self, name: str) -> str:
        """Path of a daemon log: ``slurmctld`` or a node name (``srv1``)."""
        return os.path.join(self.log_dir, "slurmctld.log" if name == "slurmctld" else f"slurmd-{name}.log")

    def node_states(self) -> Dict[str, str]:
        """Node name -> Slurm state (``idle``, ``down*``...), from sinfo; empty if the controller is not up."""
        result = self.run(["sinfo", "-h", "-N", "-o", "%N %T"], timeout=30)
        return dict(line.split() for line in result.stdout.splitlines() if len(line.split()) == 2)

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Write slurm.conf, start the daemons and wait (bounded) until every node is idle."""
        ensure_munge()
        for sub in ("ctld", "run", "log", *(f"spool/{node}" for node in self.nodes)):
            os.makedirs(os.path.join(self.workdir, sub), exist_ok=True)
        with open(self.conf, "w", encoding="utf-8") as handle:
            handle.write(self._render())
        env = self.env()
        with open(os.path.join(self.log_dir, "slurmctld.out"), "ab") as out:
            self._daemons.append(self.servers.popen(0, ["slurmctld", "-D", "-f", self.conf], env=env, hostname=True,
                                                    stdout=out, stderr=subprocess.STDOUT))
        for srv in self.servers:
            with open(os.path.join(self.log_dir, f"slurmd-{srv.name}.out"), "ab") as out:
                self._daemons.append(self.servers.popen(srv.index, ["slurmd", "-D", "-N", srv.name, "-f", self.conf],
                                                        env=env, hostname=True, stdout=out,
                                                        stderr=subprocess.STDOUT))
        self._wait_idle(timeout)

    def stop(self) -> None:
        """Stop the daemons and their job steps (SIGTERM, then SIGKILL after 10 s)."""
        for daemon in self._daemons:
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for daemon in self._daemons:
            try:
                daemon.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(timeout=10)
        self._daemons.clear()
        for k in range(len(self.servers)):
            for pid in self.servers.pids(k):
                if _comm(pid).startswith("slurm"):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass

    def _render(self) -> str:
        work = self.workdir
        ctld = self.servers[0]
        lines = [
            "# Written by tests/infra/slurm_cluster.py: simulated servers, no systemd, no cgroups.",
            "ClusterName=fcn8s-sim",
            f"SlurmctldHost={ctld.name}({ctld.ip})",
            f"SlurmctldPort={CTLD_PORT}",
            f"SlurmdPort={SLURMD_PORT}",
            "SlurmUser=root",
            "AuthType=auth/munge",
            f"StateSaveLocation={work}/ctld",
            f"SlurmdSpoolDir={work}/spool/%n",
            f"SlurmctldPidFile={work}/run/slurmctld.pid",
            f"SlurmdPidFile={work}/run/slurmd-%n.pid",
            f"SlurmctldLogFile={work}/log/slurmctld.log",
            f"SlurmdLogFile={work}/log/slurmd-%n.log",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "MpiDefault=none",
            "SchedulerType=sched/backfill",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "ReturnToService=2",
            "MinJobAge=3600",
            *(f"NodeName={srv.name} NodeAddr={srv.ip} CPUs={self._cpus} State=UNKNOWN" for srv in self.servers),
            f"PartitionName=sim Nodes={','.join(self.nodes)} Default=YES MaxTime=INFINITE "
            "OverSubscribe=FORCE:4 State=UP",
            *self._extra_conf,
        ]
        return "\n".join(lines) + "\n"

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        states: Dict[str, str] = {}
        while time.monotonic() < deadline:
            dead = [daemon.args for daemon in self._daemons if daemon.poll() is not None]
            if dead:
                raise RuntimeError(f"Slurm daemon exited during start: {dead[0]}; see {self.log_dir}/")
            states = self.node_states()
            if len(states) == len(self.nodes) and all(state.startswith("idle") for state in states.values()):
                return
            time.sleep(0.5)
        raise RuntimeError(f"simulated Slurm nodes not idle after {timeout:.0f} s (states {states or 'unknown'}); "
                           f"see {self.log_dir}/ (slurmctld.log, slurmd-srvK.log, *.out)")


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def require_slurm() -> None:
    """Skip (or fail under FCN8S_REQUIRE_INFRA=1) unless the simulated Slurm can run here."""
    require_netns()
    missing = [tool for tool in ("slurmctld", "slurmd", "srun", "sinfo", "munge") if shutil.which(tool) is None]
    if missing:
        unavailable(f"simulated Slurm needs {', '.join(missing)}: run `make infra` as root (tests/infra/slurm.sh)")


@pytest.fixture
def simulated_slurm(tmp_path) -> Iterator[SlurmCluster]:
    """A running 2-node Slurm cluster on 2 simulated servers (stopped and torn down after the test)."""
    require_slurm()
    with SimulatedServers(2) as servers, SlurmCluster(servers, str(tmp_path / "slurm")) as cluster:
        yield cluster
