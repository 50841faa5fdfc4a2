"""Raft fixes over pysyncobj 0.3.17 (ADR 0009), on a real 3-node fleet on loopback.

Crafted messages are fed to a node's pysyncobj handler *on that node's tick thread* (an
on-tick callback), so nothing races with the node's own processing: each test is
deterministic. The messages are exactly what the real leader sends when its ``nextIndex``
for a follower is stale (its own entries, its term, a ``prevLogIdx`` that matches).
"""

from __future__ import annotations

import importlib.metadata
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from hsmvault.fleet import pysyncobj_patches
from hsmvault.fleet.codec import MAX_COMMAND_SIZE
from hsmvault.fleet.pysyncobj_patches import PysyncobjVersionError, require_pinned_pysyncobj
from hsmvault.fleet.raft_node import RaftNode

from .conftest import Fleet, wait_for

MakeFleet = Callable[[int], Fleet]
T = TypeVar("T")

BATCH = 64 * 1024  # pysyncobj's appendEntriesBatchSizeBytes (default, not overridden)
LARGE = 12  # commands of MAX_COMMAND_SIZE: the follower's log is ~3 batches long


def on_tick(node: RaftNode, fn: Callable[[], T], timeout: float = 5.0) -> T:
    """Run ``fn`` once on ``node``'s tick thread and return its result."""
    done = threading.Event()
    box: list[Any] = []

    def callback() -> None:
        if done.is_set():
            return
        try:
            box.append((True, fn()))
        except BaseException as exc:  # re-raised in the test thread
            box.append((False, exc))
        done.set()

    node._obj.addOnTickCallback(callback)
    try:
        assert done.wait(timeout), "tick callback did not run"
    finally:
        node._obj.removeOnTickCallback(callback)
    ok, value = box[0]
    if not ok:
        raise value
    result: T = value
    return result


def last_index(node: RaftNode) -> int:
    idx: int = node._journal[-1][1]
    return idx


def _node_obj(holder: RaftNode, node_id: str) -> Any:
    """The pysyncobj node object ``holder`` uses for ``node_id``."""
    for other in holder._obj.otherNodes:
        if other.id == node_id:
            return other
    raise AssertionError("unknown node")


def _settled_fleet(make_fleet: MakeFleet) -> tuple[Fleet, RaftNode, RaftNode, int]:
    """A 3-node fleet with LARGE big commands committed and acknowledged by every
    follower: (fleet, leader, follower, index the follower acknowledged)."""
    fleet = make_fleet(3)
    for i in range(3):
        fleet.start(i)
    leader = fleet.leader()
    for n in range(LARGE):
        command = bytes([n]) * MAX_COMMAND_SIZE
        leader.submit(command, timeout=10.0)
    follower = next(n for n in fleet.running() if n is not leader)
    end = last_index(leader)

    def acknowledged() -> bool:
        match = leader._obj._SyncObj__raftMatchIndex.get(_node_obj(leader, follower.node_id))
        return last_index(follower) == end and match == end and follower.commit_index == end

    wait_for(acknowledged, 10.0, "the follower to acknowledge the whole log")
    assert last_index(leader) == end, "the fleet must be idle"
    return fleet, leader, follower, end


def _stale_resend(follower: RaftNode, prev: int, *, entries: bool = True) -> dict[str, Any]:
    """The append_entries the leader sends when its nextIndex for ``follower`` is
    ``prev + 1``: the leader's own entries (identical on the follower), one batch."""
    log = follower._journal
    first = log[0][1]
    batch: list[tuple[bytes, int, int]] = []
    size = 0
    for entry in log[prev + 1 - first :] if entries else []:
        batch.append(entry)
        size += len(entry[0])
        if size >= BATCH:
            break
    return {
        "type": "append_entries",
        "term": follower.term,
        "commit_index": follower.commit_index,
        "prevLogIdx": prev,
        "prevLogTerm": log[prev - first][2],
        "entries": batch,
    }


def _deliver(follower: RaftNode, message: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
    """Hand ``message`` from the leader to ``follower``'s handler on its tick thread;
    returns (its last log index right after, the replies it sent)."""
    replies: list[dict[str, Any]] = []
    transport = follower._transport
    real_send = transport.send

    def deliver() -> int:
        def spy(node: Any, msg: dict[str, Any]) -> Any:
            replies.append(msg)
            return real_send(node, msg)

        transport.send = spy  # type: ignore[method-assign, assignment]
        try:
            leader_node = follower._obj._getLeader()
            follower._obj._SyncObj__onMessageReceived(leader_node, message)
        finally:
            del transport.send  # back to the class's method
        return last_index(follower)

    return on_tick(follower, deliver), replies


def test_stale_resend_never_shrinks_the_followers_log(make_fleet: MakeFleet) -> None:
    _, _, follower, acked = _settled_fleet(make_fleet)
    prev = acked - LARGE + 1  # more than one 64 KiB batch behind the follower's end
    message = _stale_resend(follower, prev)
    sent = len(message["entries"])
    assert sent > 0
    assert prev + sent < acked, "the re-send must cover less than the tail"

    after, replies = _deliver(follower, message)

    # pysyncobj 0.3.17 deletes everything after prevLogIdx and re-adds one batch: the log
    # would end at prev + sent, below what the follower acknowledged (and votes from).
    assert after >= acked, f"log shrank to {after} below acknowledged index {acked}"
    assert follower.log_length == acked
    # The reply acknowledges exactly what the message proved (Fig. 2: prevLogIdx + len).
    assert replies == [
        {"type": "next_node_idx", "next_node_idx": prev + sent + 1, "reset": False, "success": True}
    ]
    assert follower.commit_index == acked


def test_stale_heartbeat_never_shrinks_the_followers_log(make_fleet: MakeFleet) -> None:
    _, _, follower, acked = _settled_fleet(make_fleet)
    prev = acked - 5
    after, replies = _deliver(follower, _stale_resend(follower, prev, entries=False))
    assert after == acked
    assert [r["next_node_idx"] for r in replies] == [prev + 1]
    assert replies[0]["success"] is True


def test_stale_reset_reply_does_not_move_the_leaders_next_index(make_fleet: MakeFleet) -> None:
    _, leader, follower, acked = _settled_fleet(make_fleet)
    peer = _node_obj(leader, follower.node_id)
    stale = {"type": "next_node_idx", "next_node_idx": acked - 6, "reset": True, "success": False}

    def deliver() -> tuple[int, int]:
        leader._obj._SyncObj__onMessageReceived(peer, stale)
        return (
            leader._obj._SyncObj__raftNextIndex[peer],
            leader._obj._SyncObj__raftMatchIndex[peer],
        )

    next_index, match_index = on_tick(leader, deliver)
    assert match_index == acked
    assert next_index >= match_index + 1
    # And the follower's log never shrinks in the aftermath.
    floor: list[int] = []
    journal = follower._journal
    real_delete = journal.deleteEntriesFrom

    def recording_delete(position: int) -> None:
        real_delete(position)
        floor.append(len(journal))

    journal.deleteEntriesFrom = recording_delete  # type: ignore[method-assign, assignment]
    try:
        leader.submit(b"after the stale reply", timeout=5.0)
        wait_for(lambda: last_index(follower) == acked + 1, 5.0, "replication")
    finally:
        del journal.deleteEntriesFrom
    assert all(n >= acked for n in floor)


def test_conflicts_truncate_from_the_first_conflict_only(make_fleet: MakeFleet) -> None:
    _, _, follower, acked = _settled_fleet(make_fleet)
    noop = b"\x01"  # pysyncobj's no-op command: never applied here (never committed)

    def scenario() -> list[tuple[int, int]]:
        obj = follower._obj
        leader_node = obj._getLeader()
        term = follower.term
        tail = [(noop, acked + k, term) for k in (1, 2, 3)]
        base = {"type": "append_entries", "commit_index": acked, "prevLogTerm": term}
        # An uncommitted tail of three entries at the current term...
        obj._SyncObj__onMessageReceived(
            leader_node, {**base, "term": term, "prevLogIdx": acked, "entries": tail}
        )
        # ... a stale re-send of its first entry keeps the whole tail ...
        obj._SyncObj__onMessageReceived(
            leader_node, {**base, "term": term, "prevLogIdx": acked, "entries": tail[:1]}
        )
        assert last_index(follower) == acked + 3
        # ... and a newer leader's entry conflicting at acked + 2 replaces it and what
        # follows, keeping acked + 1 (Fig. 2 rule 3), with commit capped at the new entry.
        newer = [tail[0], (noop, acked + 2, term + 1)]
        obj._SyncObj__onMessageReceived(
            leader_node,
            {**base, "term": term + 1, "prevLogIdx": acked, "entries": newer},
        )
        return [(e[1], e[2]) for e in follower._journal[acked - 1 :]]

    entries = on_tick(follower, scenario)
    term = entries[1][1]
    assert entries == [(acked, term), (acked + 1, term), (acked + 2, term + 1)]


def test_conflict_with_a_committed_entry_stops_the_node(make_fleet: MakeFleet) -> None:
    _, _, follower, acked = _settled_fleet(make_fleet)
    before = list(follower._journal)
    message = _stale_resend(follower, acked - 3)
    message["term"] = follower.term + 1
    message["entries"] = [(e[0], e[1], e[2] + 1) for e in message["entries"]]
    after, replies = _deliver(follower, message)
    assert after == acked
    assert replies == []
    assert list(follower._journal) == before
    wait_for(lambda: follower.failed, 5.0, "fail-stop")


def test_other_pysyncobj_versions_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    require_pinned_pysyncobj()
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.3.18")
    with pytest.raises(PysyncobjVersionError, match=r"0\.3\.17"):
        require_pinned_pysyncobj()
    monkeypatch.undo()
    monkeypatch.setattr(pysyncobj_patches, "_MODULE_VERSION", "0.3.16")
    with pytest.raises(PysyncobjVersionError):
        require_pinned_pysyncobj()
