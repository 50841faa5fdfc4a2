"""Real fleets with sealed journals on loopback: restarts, rollback, majority loss, and a
node that lost its state rejoining as a new incarnation.

Nodes run in this process (threads); "killing" a node is ``destroy()`` after which only its
host directory (journal) and NVRAM directory (anchor) survive, exactly what a SIGKILL
leaves behind: every journal write is fsynced and anchored before pysyncobj acts on it.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hsmvault.errors import InvalidParameter, RollbackError, Unavailable, VerificationError
from hsmvault.fleet.journal import FileAnchorStore, JournalConfig
from hsmvault.fleet.membership import SoftwareIdentitySigner
from hsmvault.fleet.raft_node import RaftNode
from hsmvault.hsm.custody.software import SoftwareCustody
from hsmvault.hsm.nvram import SoftwareKeyMaterial

from .conftest import PickleSpy, Replica, make_membership, wait_for

FORMATION_INCARNATION = 1


class PersistentFleet:
    """``n`` members, each with a custody (sealer), an NVRAM dir and a host dir."""

    def __init__(self, root: Path, n: int) -> None:
        self.signers = [SoftwareIdentitySigner.generate() for _ in range(n)]
        self.membership = make_membership(self.signers)
        self.custody = [SoftwareCustody(SoftwareKeyMaterial.generate()) for _ in range(n)]
        self.anchors = [FileAnchorStore(root / f"nvram-{i}") for i in range(n)]
        self.hosts = [root / f"host-{i}" for i in range(n)]
        for host in self.hosts:
            host.mkdir()
        self.incarnation = [FORMATION_INCARNATION] * n
        self.replicas = [Replica() for _ in range(n)]
        self.nodes: list[RaftNode | None] = [None] * n

    def journal_path(self, i: int) -> Path:
        return self.hosts[i] / JournalConfig.FILE_NAME

    def start(self, i: int, *, fresh: bool = False, joining: bool = False) -> RaftNode:
        """Start node ``i`` with a new, empty state machine (rebuilt from the log)."""
        self.replicas[i] = Replica()
        others = dict.fromkeys(self.membership, FORMATION_INCARNATION)
        node = RaftNode(
            self.signers[i],
            self.membership,
            self.replicas[i].apply,
            incarnation=self.incarnation[i],
            incarnations=others,
            journal=JournalConfig(self.hosts[i], self.custody[i], self.anchors[i], fresh=fresh),
            joining=joining,
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

    def leader(self, timeout: float = 5.0) -> RaftNode:
        found: list[RaftNode] = []

        def one_leader() -> bool:
            found[:] = [n for n in self.running() if n.is_leader]
            return len(found) == 1

        wait_for(one_leader, timeout, "a single leader")
        return found[0]


def submit(node: RaftNode, command: bytes, timeout: float = 5.0) -> bytes:
    """What a client does: retry on Unavailable until a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return node.submit(command, timeout=1.0)
        except Unavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


@pytest.fixture
def fleets(tmp_path: Path) -> Iterator[Any]:
    made: list[PersistentFleet] = []

    def build(n: int) -> PersistentFleet:
        fleet = PersistentFleet(tmp_path / f"fleet-{len(made)}", n)
        made.append(fleet)
        return fleet

    yield build
    for fleet in made:
        for i in range(len(fleet.nodes)):
            fleet.kill(i)


def start_all(fleet: PersistentFleet) -> None:
    for i in range(len(fleet.nodes)):
        fleet.start(i, fresh=True)


def wait_replicas(fleet: PersistentFleet, expected: list[bytes], indexes: list[int]) -> None:
    wait_for(
        lambda: all(fleet.replicas[i].snapshot() == expected for i in indexes),
        8.0,
        "replicas to converge",
    )


def test_whole_fleet_restarts_from_its_sealed_journals(fleets: Any, pickle_spy: PickleSpy) -> None:
    fleet: PersistentFleet = fleets(3)
    start_all(fleet)
    leader = fleet.leader()
    written = [b"write %d" % i for i in range(10)]
    for command in written:
        submit(leader, command)
    wait_replicas(fleet, written, [0, 1, 2])

    for i in range(3):
        fleet.kill(i)
    for i in range(3):
        fleet.start(i)  # resume: same incarnation, journal verified against NVRAM
    wait_replicas(fleet, written, [0, 1, 2])
    submit(fleet.leader(), b"after restart")
    wait_replicas(fleet, [*written, b"after restart"], [0, 1, 2])
    pickle_spy.assert_only_local_bytes_unpickled()


def test_five_nodes_three_killed_refuse_then_lose_nothing(fleets: Any) -> None:
    fleet: PersistentFleet = fleets(5)
    start_all(fleet)
    written = [b"acknowledged %d" % i for i in range(5)]
    for command in written:
        submit(fleet.leader(), command)
    for i in (0, 1, 2):
        fleet.kill(i)
    survivor = fleet.nodes[3]
    assert survivor is not None
    with pytest.raises(Unavailable, match="not committed"):
        survivor.submit(b"without a majority", timeout=1.0)
    for i in (0, 1, 2):
        fleet.start(i)
    submit(fleet.leader(), b"after the majority returned", timeout=8.0)
    expected = [*written, b"after the majority returned"]
    # "without a majority" may still commit later (its outcome was unknown): only the
    # acknowledged writes are required, in order, on every replica.
    wait_for(
        lambda: all(
            [c for c in r.snapshot() if c != b"without a majority"] == expected
            for r in fleet.replicas
        ),
        8.0,
        "replicas to converge",
    )


def test_rolled_back_node_refuses_and_the_fleet_keeps_the_committed_write(
    fleets: Any,
) -> None:
    fleet: PersistentFleet = fleets(3)
    start_all(fleet)
    submit(fleet.leader(), b"before")
    wait_replicas(fleet, [b"before"], [0, 1, 2])
    time.sleep(1.2)  # let the lazily written commit index reach the journals
    shutil.copy(fleet.journal_path(0), fleet.hosts[0] / "old-copy")
    submit(fleet.leader(), b"X: a guess counter increment")
    expected = [b"before", b"X: a guess counter increment"]
    wait_replicas(fleet, expected, [0, 1, 2])

    # A and B go down; the host puts A's older journal back and restarts it.
    fleet.kill(0)
    fleet.kill(1)
    shutil.copy(fleet.hosts[0] / "old-copy", fleet.journal_path(0))
    with pytest.raises(RollbackError, match="older than the NVRAM anchor"):
        fleet.start(0)
    # C alone has no quorum: it refuses rather than let a stale log vote X away.
    c = fleet.nodes[2]
    assert c is not None
    with pytest.raises(Unavailable):
        c.submit(b"Y", timeout=1.0)
    fleet.start(1)
    submit(fleet.leader(), b"after")
    wait_for(
        lambda: all(
            [x for x in fleet.replicas[i].snapshot() if x != b"Y"] == [*expected, b"after"]
            for i in (1, 2)
        ),
        8.0,
        "B and C to keep X",
    )


def test_node_that_lost_its_state_rejoins_as_a_new_incarnation(fleets: Any) -> None:
    fleet: PersistentFleet = fleets(3)
    start_all(fleet)
    submit(fleet.leader(), b"one")
    time.sleep(1.2)
    shutil.copy(fleet.journal_path(0), fleet.hosts[0] / "old-copy")
    for command in (b"two", b"three"):
        submit(fleet.leader(), command)
    wait_replicas(fleet, [b"one", b"two", b"three"], [0, 1, 2])
    fleet.kill(0)
    shutil.copy(fleet.hosts[0] / "old-copy", fleet.journal_path(0))
    with pytest.raises(RollbackError):
        fleet.start(0)

    # The node process advances the NVRAM epoch and starts a new, empty incarnation.
    fleet.incarnation[0] = FORMATION_INCARNATION + 1
    joiner = fleet.start(0, fresh=True, joining=True)
    assert joiner.joining
    # Until the fleet admits it, members refuse it: it cannot commit or vote.
    with pytest.raises(Unavailable, match="joining"):
        joiner.submit(b"from the joiner", timeout=0.5)
    member = fleet.nodes[1]
    assert member is not None
    a_id = joiner.node_id
    record = member.members()[a_id][0]
    with pytest.raises(InvalidParameter, match="remove its current incarnation"):
        member.add_member(record, fleet.incarnation[0], timeout=1.0)
    member.remove_member(a_id, timeout=5.0)
    with pytest.raises(RollbackError):
        member.add_member(record, FORMATION_INCARNATION, timeout=1.0)
    member.add_member(record, fleet.incarnation[0], timeout=5.0)
    wait_for(lambda: not joiner.joining, 5.0, "the joiner to be admitted")
    wait_replicas(fleet, [b"one", b"two", b"three"], [0, 1, 2])
    assert member.members()[a_id][1] == fleet.incarnation[0]

    submit(joiner, b"four")
    wait_replicas(fleet, [b"one", b"two", b"three", b"four"], [0, 1, 2])
    # The new incarnation persists: it restarts from its own journal.
    fleet.kill(0)
    again = fleet.start(0)
    assert not again.joining
    wait_replicas(fleet, [b"one", b"two", b"three", b"four"], [0, 1, 2])
    submit(again, b"five")
    wait_replicas(fleet, [b"one", b"two", b"three", b"four", b"five"], [0, 1, 2])


def test_tampered_or_foreign_journal_is_refused_by_the_node(fleets: Any) -> None:
    fleet: PersistentFleet = fleets(3)
    start_all(fleet)
    submit(fleet.leader(), b"x")
    wait_replicas(fleet, [b"x"], [0, 1, 2])
    fleet.kill(0)
    fleet.kill(1)
    original = fleet.journal_path(0).read_bytes()
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0x40
    fleet.journal_path(0).write_bytes(bytes(flipped))
    with pytest.raises(VerificationError):
        fleet.start(0)
    shutil.copy(fleet.journal_path(1), fleet.journal_path(0))
    with pytest.raises(VerificationError, match="another node"):
        fleet.start(0)
    fleet.journal_path(0).write_bytes(original)
    fleet.start(0)
    fleet.start(1)
    submit(fleet.leader(), b"y")
    wait_replicas(fleet, [b"x", b"y"], [0, 1, 2])
