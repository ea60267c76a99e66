"""The launchers of a multi-server job agree on its shape, then live and stop together.

Node 0's launcher (the *coordinator*) listens on ``MASTER_ADDR:MASTER_PORT``; every other node's
launcher (a *member*) connects, says who it is (node rank, node count, world size, its ranks) and
is refused with the reason if that contradicts node 0. Afterwards each side sends a heartbeat
every ``HEARTBEAT_SECONDS``: a node whose connection closes (its launcher died: the kernel closes
the socket) or that is silent for ``PEER_TIMEOUT_SECONDS`` (its link or host is gone) is *lost*,
and the whole job stops, naming it. A failed rank is reported to node 0, which decides for every
node: stop (``stop``), or, with restarts allowed (fcn8s/restarts.py), restart together: node 0
sends ``restart N``, every node stops its ranks and answers ``ready N``, and once all have,
node 0 waits the back-off and sends ``go N``; then all start their ranks again. Messages carry
the attempt number, so what a node said about an earlier attempt is ignored.
One JSON object per line on a plain TCP connection; nothing is sent to other hosts than the job's.
"""
from __future__ import annotations

import json
import logging
import socket
import threading
import time
from dataclasses import asdict, dataclass
from queue import Empty, Queue
from typing import Any, Callable, Dict, List, Optional, Set

from fcn8s.errors import UserError
from fcn8s.restarts import MAX_BACKOFF_SECONDS

LOG = logging.getLogger("fcn8s.rendezvous")
HEARTBEAT_SECONDS = 2.0
PEER_TIMEOUT_SECONDS = 15.0
CONNECT_RETRY_SECONDS = 1.0
FINISH_TIMEOUT_SECONDS = 120.0
REGROUP_TIMEOUT_SECONDS = 120.0  # for every node to stop its ranks before a restart
EXIT_NODE_LOST = 1


@dataclass(frozen=True)
class NodeInfo:
    """What a launcher says about its node when it joins."""

    node_rank: int
    nnodes: int
    world_size: int
    ranks: List[int]
    host: str
    source: str

    def describe(self) -> str:
        ranks = (f"ranks {self.ranks[0]}-{self.ranks[-1]}" if len(self.ranks) > 1
                 else f"rank {self.ranks[0]}" if self.ranks else "no ranks")
        return f"node {self.node_rank} ({self.host}, {ranks})"


@dataclass(frozen=True)
class Verdict:
    """Why the job must stop here, and with which exit code.

    ``restartable`` is False for what a restart cannot fix from here (a lost node, a signal sent to
    a launcher, node 0's final decision); ``restart`` is set when node 0 ordered restart number N;
    ``local`` is False for what another node said; ``process`` names what failed when it is not a
    rank (e.g. "scheduler").
    """

    code: int
    message: str
    rank: Optional[int] = None
    process: Optional[str] = None
    restartable: bool = True
    restart: Optional[int] = None
    local: bool = True


def wait_unless_cancelled(seconds: float, cancelled: Callable[[], bool]) -> None:
    """Sleep ``seconds``, or less if ``cancelled()`` turns true (a signal to the launcher)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not cancelled():
        time.sleep(0.2)


class Channel:
    """One launcher-to-launcher connection: JSON lines out, a reader thread queueing what comes in."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.events: "Queue[Dict[str, Any]]" = Queue()
        self.last_seen = time.monotonic()
        self.closed = False
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def send(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, **fields}) + "\n"
        with self._lock:
            try:
                self.sock.sendall(line.encode())
            except OSError:
                self.closed = True

    def _read(self) -> None:
        try:
            for line in self.sock.makefile("r", encoding="utf-8"):
                self.last_seen = time.monotonic()
                message = json.loads(line)
                if message.get("event") != "heartbeat":
                    self.events.put(message)
        except (OSError, ValueError):
            pass
        self.closed = True

    def wait_for(self, event: str, attempt: int, timeout: float,
                 cancelled: Callable[[], bool]) -> Optional[Dict[str, Any]]:
        """The next ``event`` of ``attempt`` (or a ``stop``); None after ``timeout``, when lost or cancelled."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not cancelled():
            message = self.next_event(timeout=0.2)
            if message and (message["event"] == "stop" or
                            (message["event"] == event and message.get("attempt", 0) == attempt)):
                return message
            if message is None and self.lost():
                return None
        return None

    def next_event(self, timeout: float = 0.0) -> Optional[Dict[str, Any]]:
        try:
            return self.events.get(timeout=timeout) if timeout else self.events.get_nowait()
        except Empty:
            return None

    def lost(self) -> Optional[str]:
        """Why this peer counts as gone (None while it is alive)."""
        if self.closed and self.events.empty():
            return "its launcher's connection closed"
        silent = time.monotonic() - self.last_seen
        if silent > PEER_TIMEOUT_SECONDS:
            return f"no heartbeat for {silent:.0f} s (host or link down?)"
        return None

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class _Heartbeats:
    """Sends a heartbeat on every channel until stopped."""

    def __init__(self, channels: List[Channel]) -> None:
        self.channels = channels
        self.stopped = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self.stopped.wait(HEARTBEAT_SECONDS):
            for channel in self.channels:
                channel.send("heartbeat")


class Coordinator:
    """Node 0's side: gathers the other nodes, watches them, tells them to stop or that the job finished."""

    def __init__(self, me: NodeInfo, port: int, timeout: float) -> None:
        self.me = me
        self.members: Dict[int, NodeInfo] = {}
        self.channels: Dict[int, Channel] = {}
        self.done: Set[int] = set()  # nodes whose ranks all finished
        self.attempt = 0  # restarts so far
        self._gather(port, timeout)
        self._heartbeats = _Heartbeats(list(self.channels.values()))

    def _gather(self, port: int, timeout: float) -> None:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            server.bind(("", port))
        except OSError as err:
            raise UserError(f"node 0 cannot listen on MASTER_PORT {port}: {err.strerror}") from None
        server.listen(self.me.nnodes)
        LOG.info("rendezvous: node 0 waiting up to %.0f s for %d other node(s) on port %d",
                 timeout, self.me.nnodes - 1, port)
        deadline = time.monotonic() + timeout
        try:
            while len(self.members) < self.me.nnodes - 1:
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = sorted(set(range(1, self.me.nnodes)) - set(self.members))
                    raise UserError(f"rendezvous: node rank(s) {', '.join(map(str, missing))} did not join "
                                    f"within {timeout:.0f} s (started with NNODES={self.me.nnodes}, same "
                                    f"MASTER_ADDR/MASTER_PORT, port {port} reachable?)")
                server.settimeout(min(left, 1.0))
                try:
                    sock, _ = server.accept()
                except socket.timeout:
                    continue
                self._admit(Channel(sock))
        finally:
            server.close()
        LOG.info("rendezvous: all %d node(s) joined, world size %d", self.me.nnodes, self.me.world_size)

    def _admit(self, channel: Channel) -> None:
        hello = channel.next_event(timeout=10.0)
        if not hello or hello.get("event") != "hello":
            channel.close()
            return
        node = NodeInfo(**hello["node"])
        problem = self._contradiction(node)
        if problem:
            channel.send("refused", reason=problem)
            channel.close()
            raise UserError(f"rendezvous: {problem}")
        channel.send("welcome")
        self.members[node.node_rank] = node
        self.channels[node.node_rank] = channel
        LOG.info("rendezvous: %s joined", node.describe())

    def _contradiction(self, node: NodeInfo) -> Optional[str]:
        me = self.me
        if (node.nnodes, node.world_size, node.source) != (me.nnodes, me.world_size, me.source):
            return (f"node {node.node_rank} ({node.host}) says {node.nnodes} node(s), world size {node.world_size} "
                    f"({node.source}) but node 0 says {me.nnodes} node(s), world size {me.world_size} "
                    f"({me.source}): start every node with the same NNODES and N")
        if not 0 < node.node_rank < me.nnodes or node.node_rank in self.members:
            return f"node rank {node.node_rank} from {node.host} is taken or outside 1..{me.nnodes - 1}"
        taken = set(me.ranks).union(*(set(m.ranks) for m in self.members.values()))
        if taken & set(node.ranks):
            return f"node {node.node_rank} ({node.host}) claims ranks already taken: {sorted(taken & set(node.ranks))}"
        return None

    def poll(self) -> Optional[Verdict]:
        for node_rank in self.channels:
            verdict = self._check(node_rank)
            if verdict:
                return verdict
        return None

    def _check(self, node_rank: int) -> Optional[Verdict]:
        """Read what node ``node_rank`` said (remembering "done"); a verdict if it failed or is lost."""
        channel, node = self.channels[node_rank], self.members[node_rank]
        event = channel.next_event()
        while event:
            current = event.get("attempt", 0) == self.attempt
            if event["event"] == "failed" and current:
                return Verdict(int(event["code"]), f"{node.describe()}: {event['reason']}",
                               restartable=bool(event.get("restartable", True)), local=False)
            if event["event"] == "done" and current:
                self.done.add(node_rank)
            event = channel.next_event()
        reason = channel.lost()
        if reason and node_rank not in self.done:
            return Verdict(EXIT_NODE_LOST, f"lost {node.describe()}: {reason}", restartable=False, local=False)
        return None

    def tell(self, verdict: Verdict) -> None:
        """Node 0's own failures need no message: it decides (:meth:`report_failure` or :meth:`regroup`)."""

    def report_failure(self, verdict: Verdict) -> None:
        """Tell every other node to stop its ranks: the job ends."""
        for channel in self.channels.values():
            channel.send("stop", code=verdict.code, reason=verdict.message)

    def regroup(self, restart: int, reason: str, delay: float, cancelled: Callable[[], bool]) -> Optional[Verdict]:
        """Order restart number ``restart``: wait until every node stopped its ranks, then ``delay`` s, then go.

        Returns why the job must end instead (a node did not answer), else None.
        """
        self.attempt, self.done = restart, set()
        for channel in self.channels.values():
            channel.send("restart", attempt=restart, reason=reason)
        for node_rank, channel in self.channels.items():
            answer = channel.wait_for("ready", restart, REGROUP_TIMEOUT_SECONDS, cancelled)
            if not answer or answer["event"] != "ready":
                verdict = Verdict(EXIT_NODE_LOST, f"{self.members[node_rank].describe()} did not get ready for "
                                                  f"restart {restart}", restartable=False)
                self.report_failure(verdict)
                return verdict
        wait_unless_cancelled(delay, cancelled)
        for channel in self.channels.values():
            channel.send("go", attempt=restart)
        return None

    def finish(self) -> Optional[Verdict]:
        """After node 0's ranks succeeded: wait for every node's, then release them."""
        deadline = time.monotonic() + FINISH_TIMEOUT_SECONDS
        while set(self.channels) - self.done:
            verdict = self.poll()
            if verdict:
                return verdict
            if time.monotonic() > deadline:
                names = ", ".join(self.members[k].describe() for k in sorted(set(self.channels) - self.done))
                return Verdict(EXIT_NODE_LOST, f"{names} did not finish within {FINISH_TIMEOUT_SECONDS:.0f} s "
                                               "of node 0")
            time.sleep(0.2)
        for channel in self.channels.values():
            channel.send("finished")
        return None

    def close(self) -> None:
        self._heartbeats.stopped.set()
        for channel in self.channels.values():
            channel.close()


class Member:
    """Another node's side: joins node 0, reports its failures, obeys its stop."""

    def __init__(self, me: NodeInfo, master: str, port: int, timeout: float) -> None:
        self.me = me
        self.master = master
        self.channel = self._join(master, port, timeout)
        self._heartbeats = _Heartbeats([self.channel])
        self.attempt = 0  # restarts so far, as node 0 ordered them

    def _join(self, master: str, port: int, timeout: float) -> Channel:
        deadline = time.monotonic() + timeout
        LOG.info("rendezvous: node %d joining node 0 at %s:%d (up to %.0f s)", self.me.node_rank, master, port, timeout)
        while True:
            try:
                sock = socket.create_connection((master, port), timeout=5.0)
                break
            except OSError as err:
                if time.monotonic() + CONNECT_RETRY_SECONDS > deadline:
                    raise UserError(f"rendezvous: cannot reach node 0 at {master}:{port} within {timeout:.0f} s "
                                    f"({err.strerror or err}); is MASTER_ADDR right and node 0 started?") from None
                time.sleep(CONNECT_RETRY_SECONDS)
        sock.settimeout(None)
        channel = Channel(sock)
        channel.send("hello", node=asdict(self.me))
        reply = channel.next_event(timeout=max(deadline - time.monotonic(), 30.0))
        if not reply or reply["event"] != "welcome":
            reason = reply["reason"] if reply and reply["event"] == "refused" else "no answer"
            raise UserError(f"rendezvous: node 0 refused node {self.me.node_rank}: {reason}")
        LOG.info("rendezvous: node %d joined node 0 at %s:%d", self.me.node_rank, master, port)
        return channel

    def poll(self) -> Optional[Verdict]:
        event = self.channel.next_event()
        while event and event["event"] not in ("stop", "restart"):
            event = self.channel.next_event()
        if event:
            return self._order(event)
        reason = self.channel.lost()
        if reason:
            return Verdict(EXIT_NODE_LOST, f"lost node 0 ({self.master}), the job's coordinator: {reason}",
                           restartable=False, local=False)
        return None

    @staticmethod
    def _order(event: Dict[str, Any]) -> Verdict:
        """Node 0's ``stop`` (final) or ``restart N`` as a verdict."""
        if event["event"] == "restart":
            return Verdict(1, f"node 0 restarts the job: {event['reason']}", restart=int(event["attempt"]),
                           local=False)
        return Verdict(int(event["code"]), f"node 0 stopped the job: {event['reason']}", restartable=False,
                       local=False)

    def tell(self, verdict: Verdict) -> None:
        """Tell node 0 at once why this node's ranks failed (it decides for every node)."""
        self.channel.send("failed", code=verdict.code, reason=verdict.message, restartable=verdict.restartable,
                          attempt=self.attempt)

    def decision(self, verdict: Verdict, cancelled: Callable[[], bool]) -> Verdict:
        """After :meth:`tell`: node 0's answer, ``stop`` or ``restart N``, as a verdict."""
        answer = self.channel.wait_for("restart", self.attempt + 1, REGROUP_TIMEOUT_SECONDS, cancelled)
        if answer:
            return self._order(answer)
        return Verdict(verdict.code, f"{verdict.message} (node 0 did not answer)", verdict.rank, restartable=False)

    def regroup(self, restart: int, cancelled: Callable[[], bool]) -> Optional[Verdict]:
        """This node's ranks stopped: say so, and wait for node 0's ``go`` (None) or why not."""
        self.attempt = restart
        self.channel.send("ready", attempt=restart)
        answer = self.channel.wait_for("go", restart, REGROUP_TIMEOUT_SECONDS + MAX_BACKOFF_SECONDS, cancelled)
        if answer and answer["event"] == "go":
            return None
        if answer:
            return self._order(answer)
        return Verdict(EXIT_NODE_LOST, f"node 0 ({self.master}) did not restart the job", restartable=False)

    def finish(self) -> Optional[Verdict]:
        """After this node's ranks succeeded: tell node 0 and wait for the whole job to finish."""
        self.channel.send("done", attempt=self.attempt)
        deadline = time.monotonic() + FINISH_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            event = self.channel.next_event(timeout=0.5)
            if event and event["event"] == "finished":
                return None
            if event and event["event"] in ("stop", "restart"):
                return self._order(event)
            if self.channel.lost():
                return Verdict(EXIT_NODE_LOST, f"lost node 0 ({self.master}) before the job finished",
                               restartable=False, local=False)
        return Verdict(EXIT_NODE_LOST, f"node 0 ({self.master}) did not confirm the end of the job",
                       restartable=False, local=False)

    def close(self) -> None:
        self._heartbeats.stopped.set()
        self.channel.close()
