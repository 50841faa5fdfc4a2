"""Log compaction with sealed snapshots: restart from snapshot + journal tail, catch-up of
a lagging follower from the leader's snapshot, and attacks on the snapshot file."""

from __future__ import annotations

import os
import shutil
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hsmvault.errors import (
    DecodeError,
    InvalidParameter,
    RollbackError,
    Unavailable,
    VerificationError,
)
from hsmvault.fleet import codec
from hsmvault.fleet.journal import FileAnchorStore, JournalConfig
from hsmvault.fleet.membership import SoftwareIdentitySigner
from hsmvault.fleet.raft_node import RaftNode
from hsmvault.fleet.snapshots import SNAPSHOT_FILE, SnapshotConfig
from hsmvault.hsm.custody.software import SoftwareCustody
from hsmvault.hsm.nvram import SoftwareKeyMaterial

from .conftest import PickleSpy, make_membership, wait_for

INCARNATION = 1


class Machine:
    """A state machine that can snapshot itself: the list of applied commands."""

    def __init__(self) -> None:
        self.log: list[bytes] = []
        self.restores = 0
        self.lock = threading.Lock()

    def apply(self, command: bytes) -> bytes:
        with self.lock:
            self.log.append(command)
            return b"ok"

    def snapshot(self) -> bytes:
        with self.lock:
            return b"".join(struct.pack(">I", len(c)) + c for c in self.log)

    def restore(self, state: bytes) -> None:
        log, pos = [], 0
        while pos < len(state):
            (size,) = struct.unpack_from(">I", state, pos)
            log.append(state[pos + 4 : pos + 4 + size])
            pos += 4 + size
        with self.lock:
            self.log = log
            self.restores += 1

    def applied(self) -> list[bytes]:
        with self.lock:
            return list(self.log)


class SnapshotFleet:
    def __init__(self, root: Path, n: int) -> None:
        self.signers = [SoftwareIdentitySigner.generate() for _ in range(n)]
        self.membership = make_membership(self.signers)
        self.key = os.urandom(32)  # the fleet snapshot key, shared by every member
        self.custody = [SoftwareCustody(SoftwareKeyMaterial.generate()) for _ in range(n)]
        self.anchors = [FileAnchorStore(root / f"nvram-{i}") for i in range(n)]
        self.hosts = [root / f"host-{i}" for i in range(n)]
        for host in self.hosts:
            host.mkdir()
        self.machines = [Machine() for _ in range(n)]
        self.nodes: list[RaftNode | None] = [None] * n

    def start(self, i: int, *, fresh: bool = False) -> RaftNode:
        machine = self.machines[i] = Machine()
        node = RaftNode(
            self.signers[i],
            self.membership,
            machine.apply,
            incarnation=INCARNATION,
            incarnations=dict.fromkeys(self.membership, INCARNATION),
            journal=JournalConfig(self.hosts[i], self.custody[i], self.anchors[i], fresh=fresh),
            snapshots=SnapshotConfig(
                self.key, machine.snapshot, machine.restore, min_entries=10_000, min_time=3600
            ),
        )
        self.nodes[i] = node
        return node

    def kill(self, i: int) -> None:
        node = self.nodes[i]
        if node is not None:
            node.destroy()
            self.nodes[i] = None

    def running(self) -> list[RaftNode]:
        return [n for n in self.nodes if n is not None]

    def leader(self) -> RaftNode:
        found: list[RaftNode] = []

        def one() -> bool:
            found[:] = [n for n in self.running() if n.is_leader]
            return len(found) == 1

        wait_for(one, 5.0, "a single leader")
        return found[0]

    def snapshot_path(self, i: int) -> Path:
        return self.hosts[i] / SNAPSHOT_FILE

    def compact(self, indexes: list[int]) -> None:
        for i in indexes:
            node = self.nodes[i]
            assert node is not None
            node.compact()
        wait_for(
            lambda: all((n := self.nodes[i]) is not None and n.log_length <= 3 for i in indexes),
            5.0,
            "log compaction",
        )


def submit(node: RaftNode, command: bytes) -> None:
    deadline = time.monotonic() + 5.0
    while True:
        try:
            node.submit(command, timeout=1.0)
            return
        except Unavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


@pytest.fixture
def fleets(tmp_path: Path) -> Iterator[Any]:
    made: list[SnapshotFleet] = []

    def build(n: int) -> SnapshotFleet:
        fleet = SnapshotFleet(tmp_path / f"fleet-{len(made)}", n)
        made.append(fleet)
        return fleet

    yield build
    for fleet in made:
        for i in range(len(fleet.nodes)):
            fleet.kill(i)


def converged(fleet: SnapshotFleet, expected: list[bytes], indexes: list[int]) -> None:
    wait_for(
        lambda: all(fleet.machines[i].applied() == expected for i in indexes),
        8.0,
        "state machines to converge",
    )


def test_restart_restores_from_sealed_snapshot_and_journal_tail(fleets: Any) -> None:
    fleet: SnapshotFleet = fleets(3)
    for i in range(3):
        fleet.start(i, fresh=True)
    written = [b"w%d" % i for i in range(12)]
    for command in written[:10]:
        submit(fleet.leader(), command)
    converged(fleet, written[:10], [0, 1, 2])
    fleet.compact([0, 1, 2])
    for command in written[10:]:
        submit(fleet.leader(), command)  # the journal tail after the snapshot
    converged(fleet, written, [0, 1, 2])
    assert all(fleet.snapshot_path(i).exists() for i in range(3))
    for i in range(3):
        fleet.kill(i)
    for i in range(3):
        fleet.start(i)
    converged(fleet, written, [0, 1, 2])
    assert all(m.restores == 1 for m in fleet.machines)
    submit(fleet.leader(), b"after")
    converged(fleet, [*written, b"after"], [0, 1, 2])


def test_lagging_follower_catches_up_from_the_leaders_snapshot(
    fleets: Any, pickle_spy: PickleSpy
) -> None:
    fleet: SnapshotFleet = fleets(3)
    for i in range(3):
        fleet.start(i, fresh=True)
    submit(fleet.leader(), b"first")
    converged(fleet, [b"first"], [0, 1, 2])
    fleet.kill(2)
    written = [b"first"] + [b"while C is down %d" % i for i in range(8)]
    for command in written[1:]:
        submit(fleet.leader(), command)
    fleet.compact([0, 1])
    submit(fleet.leader(), b"tail")
    fleet.start(2)  # resumes from its (older, valid) journal; the leader sends a snapshot
    converged(fleet, [*written, b"tail"], [0, 1, 2])
    assert fleet.machines[2].restores == 1
    pickle_spy.assert_only_local_bytes_unpickled()


def _compacted_and_stopped(fleets: Any) -> tuple[SnapshotFleet, Path]:
    fleet: SnapshotFleet = fleets(3)
    for i in range(3):
        fleet.start(i, fresh=True)
    for i in range(4):
        submit(fleet.leader(), b"a%d" % i)
    converged(fleet, [b"a%d" % i for i in range(4)], [0, 1, 2])
    fleet.compact([0])
    old = fleet.hosts[0] / "old-snapshot"
    shutil.copy(fleet.snapshot_path(0), old)
    for i in range(4):
        submit(fleet.leader(), b"b%d" % i)
    converged(fleet, [b"a%d" % i for i in range(4)] + [b"b%d" % i for i in range(4)], [0])
    fleet.compact([0])
    fleet.kill(0)
    return fleet, old


def test_tampered_snapshot_is_refused(fleets: Any) -> None:
    fleet, _ = _compacted_and_stopped(fleets)
    data = bytearray(fleet.snapshot_path(0).read_bytes())
    data[len(data) // 2] ^= 0x01
    fleet.snapshot_path(0).write_bytes(bytes(data))
    with pytest.raises(VerificationError, match="authentication"):
        fleet.start(0)


def test_snapshot_sealed_under_another_fleet_key_is_refused(fleets: Any) -> None:
    fleet, _ = _compacted_and_stopped(fleets)
    fleet.key = os.urandom(32)
    with pytest.raises(VerificationError):
        fleet.start(0)


def test_older_snapshot_is_refused(fleets: Any) -> None:
    fleet, old = _compacted_and_stopped(fleets)
    shutil.copy(old, fleet.snapshot_path(0))
    with pytest.raises(RollbackError, match="older than the journal"):
        fleet.start(0)


def test_missing_snapshot_with_a_compacted_journal_is_refused(fleets: Any) -> None:
    fleet, _ = _compacted_and_stopped(fleets)
    fleet.snapshot_path(0).unlink()
    with pytest.raises(RollbackError, match="missing"):
        fleet.start(0)


def test_leader_does_not_ship_an_older_snapshot_put_on_its_disk(fleets: Any) -> None:
    fleet: SnapshotFleet = fleets(3)
    for i in range(3):
        fleet.start(i, fresh=True)
    submit(fleet.leader(), b"first")
    converged(fleet, [b"first"], [0, 1, 2])
    fleet.kill(2)
    written = [b"first"] + [b"x%d" % i for i in range(4)]
    for command in written[1:3]:
        submit(fleet.leader(), command)
    fleet.compact([0, 1])
    for i in (0, 1):
        shutil.copy(fleet.snapshot_path(i), fleet.hosts[i] / "old-snapshot")
    for command in written[3:]:
        submit(fleet.leader(), command)
    fleet.compact([0, 1])
    current = {i: fleet.snapshot_path(i).read_bytes() for i in (0, 1)}
    for i in (0, 1):  # the host swaps in the older (validly sealed) snapshot
        shutil.copy(fleet.hosts[i] / "old-snapshot", fleet.snapshot_path(i))
    fleet.start(2)
    time.sleep(1.5)
    assert fleet.machines[2].restores == 0
    assert fleet.machines[2].applied() == [b"first"]
    for i in (0, 1):  # the right file back: the follower catches up
        fleet.snapshot_path(i).write_bytes(current[i])
    converged(fleet, written, [0, 1, 2])


def test_snapshot_chunks_need_snapshots_enabled() -> None:
    message = {"type": "append_entries", "term": 3, "commit_index": 7, "serialized": None}
    chunk = {**message, "serialized": (b"sealed bytes", True, False)}
    for m in (message, chunk):
        wire = codec.encode(m, snapshot_chunks=True)
        assert codec.decode(wire, snapshot_chunks=True) == m
        with pytest.raises(DecodeError):
            codec.decode(wire)
    with pytest.raises(InvalidParameter):
        codec.encode(chunk)
    with pytest.raises(InvalidParameter):
        codec.encode(
            {**message, "serialized": (bytes(codec.MAX_SNAPSHOT_CHUNK + 1), True, True)},
            snapshot_chunks=True,
        )
