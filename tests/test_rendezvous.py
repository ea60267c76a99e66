"""Launcher rendezvous over real TCP sockets: shape checks, failure relay, lost nodes, a clean finish."""
import threading
import time

import pytest

from fcn8s import rendezvous
from fcn8s.distributed import free_port
from fcn8s.errors import UserError
from fcn8s.rendezvous import Coordinator, Member, NodeInfo, Verdict


def node(rank, nnodes=2, world=4, per_node=2):
    return NodeInfo(node_rank=rank, nnodes=nnodes, world_size=world, ranks=list(range(rank * per_node, (rank + 1) * per_node)),
                    host=f"198.18.7.{rank + 1}", source="dynamic_cluster")


def form(members, port=None, timeout=20.0):
    """A coordinator for node(0) and Member objects for ``members`` (NodeInfo), joined concurrently."""
    port = port or free_port()
    joined, errors = {}, {}

    def join(info):
        try:
            joined[info.node_rank] = Member(info, "127.0.0.1", port, timeout)
        except UserError as err:
            errors[info.node_rank] = str(err)

    threads = [threading.Thread(target=join, args=(m,)) for m in members]
    for thread in threads:
        thread.start()
    try:
        first = members[0]
        coordinator = Coordinator(node(0, nnodes=first.nnodes, world=first.world_size), port, timeout)
    finally:
        for thread in threads:
            thread.join()
    return coordinator, joined, errors


def wait_for(poll, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        verdict = poll()
        if verdict:
            return verdict
        time.sleep(0.1)
    return None


def test_nodes_that_disagree_on_the_world_size_are_refused():
    port = free_port()
    errors = {}

    def join():
        try:
            Member(node(1, world=6, per_node=3), "127.0.0.1", port, 20)
        except UserError as err:
            errors[1] = str(err)

    thread = threading.Thread(target=join)
    thread.start()
    with pytest.raises(UserError, match="node 1 .* says 2 node\\(s\\), world size 6 .* node 0 says 2 node\\(s\\), world size 4"):
        Coordinator(node(0), port, 20)
    thread.join()
    assert "node 0 refused node 1" in errors[1] and "world size 6" in errors[1]


def test_a_node_that_never_comes_is_named_after_the_timeout():
    started = time.monotonic()
    with pytest.raises(UserError, match=r"node rank\(s\) 2 did not join within 2 s"):
        form([node(1, nnodes=3, world=6)], timeout=2.0)
    assert time.monotonic() - started < 10


def test_a_member_without_a_coordinator_gives_up_with_the_address():
    with pytest.raises(UserError, match=r"cannot reach node 0 at 127.0.0.1:\d+ within 2 s"):
        Member(node(1), "127.0.0.1", free_port(), 2.0)


def test_a_failed_rank_is_relayed_and_a_clean_end_is_confirmed():
    coordinator, members, errors = form([node(1)])
    assert not errors
    members[1].tell(Verdict(137, "rank 3 exited with code 137", rank=3))
    verdict = wait_for(coordinator.poll, 5)
    assert verdict == Verdict(137, "node 1 (198.18.7.2, ranks 2-3): rank 3 exited with code 137", local=False)
    coordinator.report_failure(verdict)
    stop = members[1].decision(verdict, lambda: False)
    assert stop.code == 137 and stop.message.startswith("node 0 stopped the job: node 1")
    assert stop.restart is None and not stop.restartable
    coordinator.close(), members[1].close()

    coordinator, members, _ = form([node(1)])
    done = {}
    thread = threading.Thread(target=lambda: done.update(verdict=members[1].finish()))
    thread.start()
    assert coordinator.finish() is None
    thread.join(10)
    assert done == {"verdict": None}
    coordinator.close(), members[1].close()


def test_a_lost_node_is_named_when_its_connection_closes_or_goes_silent(monkeypatch):
    coordinator, members, _ = form([node(1)])
    members[1].close()  # its launcher is killed: the kernel closes the socket
    verdict = wait_for(coordinator.poll, 5)
    assert verdict.code == rendezvous.EXIT_NODE_LOST
    assert verdict.message == "lost node 1 (198.18.7.2, ranks 2-3): its launcher's connection closed"
    coordinator.close()

    monkeypatch.setattr(rendezvous, "PEER_TIMEOUT_SECONDS", 1.5)
    coordinator, members, _ = form([node(1)])
    members[1]._heartbeats.stopped.set()  # alive socket, no heartbeats: a cut link looks like this
    coordinator._heartbeats.stopped.set()
    started = time.monotonic()
    verdict = wait_for(coordinator.poll, 10)
    assert "lost node 1" in verdict.message and "no heartbeat for" in verdict.message
    assert time.monotonic() - started < 5
    lost_master = wait_for(members[1].poll, 5)
    assert lost_master.message.startswith("lost node 0 (127.0.0.1), the job's coordinator: no heartbeat")
    coordinator.close(), members[1].close()


def test_a_node_that_finishes_first_is_not_forgotten():
    """Node 1's ranks end while node 0's still train: its "done" arrives during the supervision polls."""
    coordinator, members, _ = form([node(1)])
    done = {}
    thread = threading.Thread(target=lambda: done.update(verdict=members[1].finish()))
    thread.start()
    deadline = time.monotonic() + 5
    while 1 not in coordinator.done and time.monotonic() < deadline:
        assert coordinator.poll() is None
        time.sleep(0.05)
    assert coordinator.done == {1}
    assert coordinator.finish() is None
    thread.join(10)
    assert done == {"verdict": None}
    coordinator.close(), members[1].close()


def test_a_restart_is_ordered_by_node_0_and_started_together():
    """Node 1 fails; node 0 orders restart 1; node 1 stops, says ready; node 0 waits the back-off, then go."""
    coordinator, members, _ = form([node(1)])
    member = members[1]
    member.tell(Verdict(124, "rank 2 hung", rank=2))
    failure = wait_for(coordinator.poll, 5)
    assert failure.code == 124 and failure.restartable and not failure.local
    answers = {}

    def follow():
        order = member.decision(failure, lambda: False)
        answers["order"] = order
        answers["ready_at"] = time.monotonic()
        answers["go"] = member.regroup(order.restart, lambda: False)
        answers["go_at"] = time.monotonic()

    thread = threading.Thread(target=follow)
    thread.start()
    assert coordinator.regroup(1, failure.message, 1.0, lambda: False) is None
    thread.join(10)
    assert answers["order"].restart == 1 and "node 0 restarts the job: node 1" in answers["order"].message
    assert answers["go"] is None and answers["go_at"] - answers["ready_at"] >= 0.9  # the back-off
    assert (coordinator.attempt, member.attempt) == (1, 1)
    # what node 1 says about the earlier attempt is ignored; about this one it is not
    member.channel.send("failed", code=1, reason="late news", restartable=True, attempt=0)
    member.channel.send("done", attempt=0)
    time.sleep(0.5)
    assert coordinator.poll() is None and coordinator.done == set()
    member.tell(Verdict(137, "rank 3 exited with SIGKILL (code 137)", rank=3))
    assert wait_for(coordinator.poll, 5).message.endswith("rank 3 exited with SIGKILL (code 137)")
    coordinator.close(), member.close()


def test_a_node_that_does_not_get_ready_ends_the_job(monkeypatch):
    monkeypatch.setattr(rendezvous, "REGROUP_TIMEOUT_SECONDS", 1.0)
    coordinator, members, _ = form([node(1)])
    problem = coordinator.regroup(1, "rank 0 hung", 0.1, lambda: False)  # node 1 never answers
    assert problem.code == rendezvous.EXIT_NODE_LOST and not problem.restartable
    assert "node 1 (198.18.7.2, ranks 2-3) did not get ready for restart 1" in problem.message
    order = wait_for(members[1].poll, 5)
    assert order.restart == 1
    stop = members[1].regroup(1, lambda: False)  # node 1 comes too late: it is told to stop, not left waiting
    assert stop.message.startswith("node 0 stopped the job") and stop.restart is None and not stop.restartable
    coordinator.close(), members[1].close()
