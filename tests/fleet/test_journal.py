"""The sealed Raft journal on its own: what a node accepts back from the host's disk.

One test per attack on the journal file: an older copy, truncation, a flipped byte,
another node's file, a fork after a crash, a replayed incarnation. Plus the happy paths
(restart, rewrite after truncation of the log, a crash between the file write and the
NVRAM anchor) and a check that loading never unpickles anything.
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
from pysyncobj import pickle as psy_pickle  # type: ignore[import-untyped]

from hsmvault.errors import DecodeError, RollbackError, Unavailable, VerificationError
from hsmvault.fleet import codec
from hsmvault.fleet.codec import make_app_command
from hsmvault.fleet.journal import (
    FileAnchorStore,
    JournalAnchor,
    JournalConfig,
    MemoryAnchorStore,
    SealedJournal,
    _slot_bytes,
    needs_fresh_journal,
)
from hsmvault.hsm.custody.software import SoftwareCustody
from hsmvault.hsm.nvram import SoftwareKeyMaterial

FLEET = bytes(range(32))
NODE = bytes(range(32, 64))
NOOP = b"\x01"


class Node:
    """One node's journal setup: custody (sealer), NVRAM anchor store, host directory."""

    def __init__(self, root: Path, name: str, node_id: bytes = NODE) -> None:
        self.custody = SoftwareCustody(SoftwareKeyMaterial.generate())
        self.anchors = FileAnchorStore(root / f"nvram-{name}")
        self.host = root / f"host-{name}"
        self.host.mkdir()
        self.node_id = node_id

    def config(self, *, fresh: bool = False) -> JournalConfig:
        return JournalConfig(self.host, self.custody, self.anchors, fresh=fresh)

    def open(self, incarnation: int = 1, *, fresh: bool = False) -> SealedJournal:
        return SealedJournal.open(
            self.config(fresh=fresh), fleet_id=FLEET, node_id=self.node_id, incarnation=incarnation
        )

    @property
    def path(self) -> Path:
        return self.config().path


def cmd(i: int) -> bytes:
    return make_app_command(b"command %d" % i)


def fill(journal: SealedJournal, start: int, count: int, term: int = 1) -> None:
    for i in range(start, start + count):
        journal.add(cmd(i) if i > 1 else NOOP, i, term)


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path, "a")


def test_restart_restores_entries_term_vote_and_commit_index(node: Node) -> None:
    j = node.open(fresh=True)
    fill(j, 1, 5)
    j.setCurrentTerm(3, "ab" * 32)
    j.setRaftCommitIndex(4)
    j._destroy()  # flushes the lazily written commit index

    again = node.open()
    assert list(again) == [(NOOP, 1, 1)] + [(cmd(i), i, 1) for i in range(2, 6)]
    assert again.getCurrentTerm() == 3
    assert again.getVotedForNodeId() == "ab" * 32
    assert again.getRaftCommitIndex() == 4
    again.add(cmd(6), 6, 3)
    again._destroy()
    assert len(node.open()) == 6


def test_nothing_is_unpickled_while_loading(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    j = node.open(fresh=True)
    fill(j, 1, 4)
    j._destroy()
    calls: list[str] = []
    for module, name in [(pickle, "loads"), (pickle, "_loads"), (psy_pickle, "loads")]:
        real = getattr(module, name)

        def spy(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            calls.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    monkeypatch.setattr(codec, "_unpickle_local", lambda data: calls.append("local"))
    monkeypatch.setattr(pickle, "Unpickler", None)  # any unpickler use would crash
    assert len(node.open()) == 4
    assert calls == []


def test_older_copy_of_the_journal_is_refused(node: Node) -> None:
    j = node.open(fresh=True)
    fill(j, 1, 3)
    shutil.copy(node.path, node.path.with_suffix(".old"))
    fill(j, 4, 2)
    j._destroy()
    os.replace(node.path.with_suffix(".old"), node.path)
    with pytest.raises(RollbackError, match="older than the NVRAM anchor"):
        node.open()


@pytest.mark.parametrize("keep", [0.9, 0.5, 0.01])
def test_truncated_journal_is_refused(node: Node, keep: float) -> None:
    j = node.open(fresh=True)
    fill(j, 1, 6)
    j._destroy()
    data = node.path.read_bytes()
    node.path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(RollbackError):
        node.open()


def test_deleted_journal_is_refused(node: Node) -> None:
    j = node.open(fresh=True)
    fill(j, 1, 2)
    j._destroy()
    node.path.unlink()
    with pytest.raises(RollbackError, match="missing"):
        node.open()


def test_any_flipped_byte_is_refused(node: Node) -> None:
    j = node.open(fresh=True)
    fill(j, 1, 3)
    j._destroy()
    original = node.path.read_bytes()
    prefix_len = 4 + 1 + 32 + 32 + 8 + 8 + 32
    length_fields: set[int] = set()
    pos = prefix_len
    while pos < len(original):
        length_fields.update(range(pos, pos + 4))
        pos += 4 + int.from_bytes(original[pos : pos + 4], "big")
    for pos in range(0, len(original), 7):
        tampered = bytearray(original)
        tampered[pos] ^= 0x01
        node.path.write_bytes(bytes(tampered))
        with pytest.raises(VerificationError) as info:
            node.open()
        if pos >= prefix_len and pos not in length_fields:
            # Inside a sealed record: tampering, never "rollback". (A flipped length field
            # may make the file look truncated, which is refused as a rollback.)
            assert type(info.value) is VerificationError, pos
    node.path.write_bytes(original)
    assert len(node.open()) == 3


def test_another_nodes_journal_is_refused(tmp_path: Path) -> None:
    a = Node(tmp_path, "a")
    b = Node(tmp_path, "b", node_id=bytes(range(64, 96)))
    for n in (a, b):
        j = n.open(fresh=True)
        fill(j, 1, 3)
        j._destroy()
    shutil.copy(b.path, a.path)
    with pytest.raises(VerificationError, match="another node"):
        a.open()
    # Same node id but another node's custody (the prefix lies): the seal refuses it.
    c = Node(tmp_path, "c")
    j = c.open(fresh=True)
    fill(j, 1, 3)
    j._destroy()
    shutil.copy(c.path, a.path)
    with pytest.raises(VerificationError) as info:
        a.open()
    assert type(info.value) is VerificationError


def test_journal_of_an_earlier_incarnation_is_refused(node: Node) -> None:
    j = node.open(1, fresh=True)
    fill(j, 1, 3)
    j._destroy()
    shutil.copy(node.path, node.host / "incarnation-1")
    fresh = node.open(2, fresh=True)  # the node process advanced the epoch to 2
    fill(fresh, 1, 1)
    fresh._destroy()
    assert (node.host / (node.path.name + ".retired-2")).exists()
    # Restarting the old incarnation, or putting its journal back, is refused.
    with pytest.raises(RollbackError, match="later incarnation"):
        node.open(1)
    shutil.copy(node.host / "incarnation-1", node.path)
    with pytest.raises(RollbackError, match="earlier incarnation"):
        node.open(2)


def test_fresh_journal_needs_a_new_incarnation(node: Node) -> None:
    node.open(1, fresh=True)._destroy()
    with pytest.raises(RollbackError, match="advance the NVRAM epoch"):
        node.open(1, fresh=True)


def test_resume_without_an_anchor_is_refused(node: Node) -> None:
    with pytest.raises(RollbackError, match="cannot prove"):
        node.open(1)


class DroppingAnchors(MemoryAnchorStore):
    """Simulates a crash between the journal write and the NVRAM write."""

    def __init__(self) -> None:
        super().__init__()
        self.drop = False

    def write_anchor(self, anchor: JournalAnchor) -> None:
        if not self.drop:
            super().write_anchor(anchor)


def test_journal_ahead_of_the_anchor_is_accepted_but_a_fork_is_refused(node: Node) -> None:
    anchors = DroppingAnchors()
    config = JournalConfig(node.host, node.custody, anchors)

    def open_() -> SealedJournal:
        return SealedJournal.open(config, fleet_id=FLEET, node_id=NODE, incarnation=1)

    j = SealedJournal.open(
        JournalConfig(node.host, node.custody, anchors, fresh=True),
        fleet_id=FLEET,
        node_id=NODE,
        incarnation=1,
    )
    fill(j, 1, 3)
    shutil.copy(node.path, node.host / "before-x")
    anchors.drop = True  # "crash" before the NVRAM anchor records entry 4
    j.add(cmd(40), 4, 1)
    j._destroy()
    shutil.copy(node.path, node.host / "with-x")
    anchors.drop = False

    # The host drops the unanchored record: that is a crash before the write. Accepted.
    shutil.copy(node.host / "before-x", node.path)
    j = open_()
    assert len(j) == 3
    j.add(cmd(41), 4, 2)  # the node goes on; this record is anchored
    j._destroy()
    # Putting the other branch back is a fork: refused.
    shutil.copy(node.host / "with-x", node.path)
    with pytest.raises(RollbackError, match="forked"):
        open_()


def test_torn_tail_after_the_anchor_is_cut_off(node: Node) -> None:
    anchors = DroppingAnchors()
    j = SealedJournal.open(
        JournalConfig(node.host, node.custody, anchors, fresh=True),
        fleet_id=FLEET,
        node_id=NODE,
        incarnation=1,
    )
    fill(j, 1, 3)
    anchors.drop = True
    j.add(cmd(4), 4, 1)
    j._destroy()
    data = node.path.read_bytes()
    node.path.write_bytes(data[:-5])  # the last write was torn by the crash
    config = JournalConfig(node.host, node.custody, anchors)
    again = SealedJournal.open(config, fleet_id=FLEET, node_id=NODE, incarnation=1)
    assert len(again) == 3
    again.add(cmd(5), 4, 1)
    again._destroy()
    assert len(SealedJournal.open(config, fleet_id=FLEET, node_id=NODE, incarnation=1)) == 4


def test_log_truncation_and_compaction_survive_restart_and_an_older_file_is_refused(
    node: Node,
) -> None:
    j = node.open(fresh=True)
    fill(j, 1, 6)
    shutil.copy(node.path, node.host / "before-rewrite")
    j.deleteEntriesFrom(4)  # a follower drops a conflicting suffix
    j.add(cmd(99), 5, 2)
    j.deleteEntriesTo(2)  # compaction drops a prefix
    j._destroy()
    again = node.open()
    assert [e[1] for e in again] == [3, 4, 5]
    assert again[-1] == (cmd(99), 5, 2)
    again._destroy()
    shutil.copy(node.host / "before-rewrite", node.path)
    with pytest.raises(RollbackError):
        node.open()


def test_write_failure_breaks_the_journal_for_good(node: Node) -> None:
    j = node.open(fresh=True)
    fill(j, 1, 2)
    failures: list[bool] = []
    j.on_failure = lambda: failures.append(True)
    assert j._file is not None
    j._file.close()  # the next write fails
    with pytest.raises(Unavailable):
        j.add(cmd(3), 3, 1)
    assert failures == [True]
    with pytest.raises(Unavailable):
        j.setCurrentTerm(5, None)
    assert len(j) == 2


def test_anchor_store_never_goes_backwards(tmp_path: Path) -> None:
    store = FileAnchorStore(tmp_path / "nvram")
    store.write_anchor(JournalAnchor(1, 5, bytes(32)))
    store.write_anchor(JournalAnchor(1, 5, bytes(32)))  # replay: no-op
    with pytest.raises(RollbackError):
        store.write_anchor(JournalAnchor(1, 4, bytes(32)))
    with pytest.raises(RollbackError):
        store.write_anchor(JournalAnchor(1, 5, b"\x01" * 32))
    store.write_anchor(JournalAnchor(2, 0, b"\x02" * 32))
    assert FileAnchorStore(tmp_path / "nvram").read_anchor() == JournalAnchor(2, 0, b"\x02" * 32)


def test_needs_fresh_journal_follows_the_epoch(node: Node) -> None:
    assert needs_fresh_journal(node.anchors, 1)
    node.open(1, fresh=True)._destroy()
    assert not needs_fresh_journal(node.anchors, 1)
    assert needs_fresh_journal(node.anchors, 2)  # the epoch was advanced
    with pytest.raises(RollbackError):
        needs_fresh_journal(node.anchors, 0)


# -- truncation records (deleteEntriesFrom / deleteEntriesTo / clear) -------------------


def entries_of(journal: SealedJournal) -> list[tuple[bytes, int, int]]:
    return list(journal)


def test_conflicting_truncate_persists_and_survives_restart(node: Node) -> None:
    j = node.open(fresh=True)
    fill(j, 1, 6)
    j.deleteEntriesFrom(3)  # positions 3.. = indexes 4..6
    j.add(cmd(4), 4, 1)  # identical: nothing written
    j.add(cmd(50), 5, 2)  # conflicts: "truncate from 5" + the entry, durably
    expected = entries_of(j)
    j._destroy()
    again = node.open()
    assert entries_of(again) == expected
    assert [e[1:] for e in again] == [(i, 1) for i in range(1, 5)] + [(5, 2)]
    again.add(cmd(51), 6, 2)
    again._destroy()
    assert entries_of(node.open())[-2:] == [(cmd(50), 5, 2), (cmd(51), 6, 2)]


def test_a_deleted_suffix_that_was_never_replaced_stays_durable(node: Node) -> None:
    """Raft deletes a follower's entries only on a conflict (§5.3). A suffix that
    pysyncobj deleted but that nothing replaced before a crash is still on disk, and
    restarting with it is the state of a crash just before the delete."""
    j = node.open(fresh=True)
    fill(j, 1, 6)
    j.deleteEntriesFrom(2)
    j.add(cmd(3), 3, 1)  # the leader's batch re-sent only index 3
    assert [e[1] for e in j] == [1, 2, 3]
    j._destroy()  # crash / stop before anything differing arrived
    again = node.open()
    assert [e[1] for e in again] == [1, 2, 3, 4, 5, 6]


def test_compaction_with_a_pending_truncation_persists_both(node: Node) -> None:
    j = node.open(fresh=True)
    fill(j, 1, 8)
    j.deleteEntriesFrom(6)  # lazily drops 7, 8
    j.deleteEntriesTo(2)  # compacts 1, 2: both cuts are written now
    assert [e[1] for e in j] == [3, 4, 5, 6]
    j._destroy()
    assert [e[1] for e in node.open()] == [3, 4, 5, 6]


def test_clear_then_snapshot_boundary_entries_survive_restart(node: Node) -> None:
    j = node.open(fresh=True)
    fill(j, 1, 5)
    j.deleteEntriesFrom(3)  # pending, then superseded by clear()
    j.clear()  # pysyncobj, before installing a snapshot
    j.add(cmd(10), 10, 3)
    j.add(cmd(11), 11, 3)
    j._destroy()
    assert entries_of(node.open()) == [(cmd(10), 10, 3), (cmd(11), 11, 3)]


def test_rollback_of_a_journal_with_truncate_records_is_detected(node: Node) -> None:
    j = node.open(fresh=True)
    fill(j, 1, 6)
    j.deleteEntriesFrom(4)
    shutil.copy(node.path, node.host / "before-truncate")  # unchanged: the cut is lazy
    j.add(cmd(90), 5, 2)  # truncate + entry, anchored
    shutil.copy(node.path, node.host / "with-truncate")
    j.deleteEntriesTo(2)
    j.add(cmd(91), 6, 2)
    j._destroy()
    size_with_truncate = (node.host / "with-truncate").stat().st_size
    for older in ("before-truncate", "with-truncate"):
        shutil.copy(node.host / older, node.path)
        with pytest.raises(RollbackError, match="older than the NVRAM anchor"):
            node.open()
    # Dropping only the last records (the anchored truncate + entry) is also refused.
    shutil.copy(node.host / "with-truncate", node.path)
    data = node.path.read_bytes()
    node.path.write_bytes(data[: size_with_truncate - 20])
    with pytest.raises(RollbackError):
        node.open()


def test_a_fork_at_a_truncate_record_is_refused(node: Node) -> None:
    anchors = DroppingAnchors()
    config = JournalConfig(node.host, node.custody, anchors)

    def open_() -> SealedJournal:
        return SealedJournal.open(config, fleet_id=FLEET, node_id=NODE, incarnation=1)

    j = SealedJournal.open(
        JournalConfig(node.host, node.custody, anchors, fresh=True),
        fleet_id=FLEET,
        node_id=NODE,
        incarnation=1,
    )
    fill(j, 1, 4)
    shutil.copy(node.path, node.host / "base")
    anchors.drop = True  # "crash" before NVRAM records the truncate + entry
    j.deleteEntriesFrom(2)
    j.add(cmd(30), 3, 2)
    j._destroy()
    shutil.copy(node.path, node.host / "branch-a")
    anchors.drop = False
    shutil.copy(node.host / "base", node.path)  # the host drops the unanchored records
    j = open_()
    assert [e[1] for e in j] == [1, 2, 3, 4]
    j.add(cmd(5), 5, 1)  # anchored, same sequence number as branch A's truncate record
    j._destroy()
    shutil.copy(node.host / "branch-a", node.path)
    with pytest.raises(RollbackError, match="forked"):
        open_()


def test_dead_records_trigger_an_occasional_rewrite(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    rewrites: list[int] = []
    real = SealedJournal._rewrite

    def counting(self: SealedJournal) -> None:
        rewrites.append(len(self))
        real(self)

    monkeypatch.setattr(SealedJournal, "_rewrite", counting)
    j = node.open(fresh=True)
    rewrites.clear()  # creating the file is one
    j.rewrite_min_dead = 8
    fill(j, 1, 20)
    j.deleteEntriesTo(4)  # 4 dead entries: no rewrite
    assert rewrites == []
    j.deleteEntriesTo(8)  # 12 dead (+ records): more dead than live and than 8
    assert rewrites == [8]
    shutil.copy(node.path, node.host / "after-rewrite")
    first = entries_of(j)
    j.add(cmd(21), 21, 1)
    j._destroy()
    assert entries_of(node.open())[:-1] == first
    shutil.copy(node.host / "after-rewrite", node.path)
    with pytest.raises(RollbackError):
        node.open()


@pytest.mark.parametrize("seed", [5, 11, 23])
def test_random_operations_keep_memory_a_prefix_of_the_durable_log(node: Node, seed: int) -> None:
    """Model check: after any sequence of adds (identical or not), lazy truncations and
    compactions, a restart yields a log of which the in-memory log was a prefix, and
    exactly the in-memory log once nothing is pending."""
    rng = random.Random(seed)
    j = node.open(fresh=True)
    fill(j, 1, 3)
    term = 1
    for step in range(300):
        op = rng.random()
        if op < 0.15 and len(j) > 2:
            j.deleteEntriesFrom(rng.randrange(1, len(j)))
        elif op < 0.2 and len(j) > 4:
            j.deleteEntriesTo(rng.randrange(1, len(j) - 2))
        elif op < 0.25:
            term += 1
            j.setCurrentTerm(term, None)
        else:
            idx = j[-1][1] + 1
            pending = j._tail[0] if j._tail else None
            if pending is not None and rng.random() < 0.7:
                j.add(*pending)  # the leader re-sends what we hold
            else:
                j.add(cmd(1000 + step), idx, term)
        if step % 25 == 0 or step == 299:
            memory = entries_of(j)
            pending_tail = list(j._tail)
            j._destroy()
            j = node.open()
            durable = entries_of(j)
            assert durable == memory + pending_tail
    j._destroy()


# -- the two-slot NVRAM anchor ----------------------------------------------------------


def anchor_file(store_dir: Path) -> Path:
    return store_dir / FileAnchorStore.FILE_NAME


def test_torn_anchor_slot_recovers_from_the_other_slot(tmp_path: Path) -> None:
    nvram = tmp_path / "nvram"
    store = FileAnchorStore(nvram)
    a1, a2 = JournalAnchor(1, 1, b"\x01" * 32), JournalAnchor(1, 2, b"\x02" * 32)
    store.write_anchor(a1)  # slot 0
    store.write_anchor(a2)  # slot 1
    good = anchor_file(nvram).read_bytes()
    # The write of a2 was torn (a crash mid-write): its slot fails its checksum.
    for cut in (1, 20, 50, 91):
        torn = bytearray(good)
        torn[4096 + cut :] = bytes(len(torn) - 4096 - cut)
        anchor_file(nvram).write_bytes(bytes(torn))
        assert FileAnchorStore(nvram).read_anchor() == a1
    # The node goes on from a1: the next write overwrites the torn slot.
    a3 = JournalAnchor(1, 2, b"\x03" * 32)
    store.write_anchor(a3)
    assert FileAnchorStore(nvram).read_anchor() == a3
    # A corrupt *older* slot does not matter either.
    data = bytearray(anchor_file(nvram).read_bytes())
    data[10] ^= 0xFF  # slot 0 holds a1
    anchor_file(nvram).write_bytes(bytes(data))
    assert FileAnchorStore(nvram).read_anchor() == a3


def test_corrupt_anchor_file_is_a_clear_error(tmp_path: Path) -> None:
    nvram = tmp_path / "nvram"
    store = FileAnchorStore(nvram)
    store.write_anchor(JournalAnchor(1, 1, b"\x01" * 32))
    store.write_anchor(JournalAnchor(1, 2, b"\x02" * 32))
    good = anchor_file(nvram).read_bytes()
    both = bytearray(good)
    both[5] ^= 1
    both[4096 + 5] ^= 1
    anchor_file(nvram).write_bytes(bytes(both))
    with pytest.raises(DecodeError, match="no valid slot"):
        store.read_anchor()
    with pytest.raises(DecodeError):  # and no write goes through
        store.write_anchor(JournalAnchor(1, 3, b"\x03" * 32))
    anchor_file(nvram).write_bytes(good[:100])
    with pytest.raises(DecodeError, match="wrong size"):
        store.read_anchor()
    # A newer counter holding an older anchor (never written so) is inconsistent.
    inconsistent = bytearray(good)
    record = _slot_bytes(3, JournalAnchor(1, 0, bytes(32)))
    inconsistent[: len(record)] = record  # slot 1 holds counter 2
    anchor_file(nvram).write_bytes(bytes(inconsistent))
    with pytest.raises(DecodeError, match="inconsistent"):
        store.read_anchor()


def test_anchor_slots_never_move_backwards(tmp_path: Path) -> None:
    nvram = tmp_path / "nvram"
    store = FileAnchorStore(nvram)
    for seq in range(1, 6):
        store.write_anchor(JournalAnchor(1, seq, bytes([seq]) * 32))
    other = FileAnchorStore(nvram)  # a second handle on the same NVRAM sees the same
    for stale in (JournalAnchor(1, 4, b"\x04" * 32), JournalAnchor(0, 9, b"\x09" * 32)):
        for s in (store, other):
            with pytest.raises(RollbackError, match="backwards"):
                s.write_anchor(stale)
    with pytest.raises(RollbackError, match="forked"):
        other.write_anchor(JournalAnchor(1, 5, b"\xff" * 32))
    other.write_anchor(JournalAnchor(1, 5, b"\x05" * 32))  # replay: no-op
    assert store.read_anchor() == JournalAnchor(1, 5, b"\x05" * 32)


def test_journal_resumes_after_a_torn_anchor_write(node: Node) -> None:
    """A torn NVRAM write leaves the previous anchor; the journal record it was meant to
    anchor is then "ahead of the anchor" (never acted on) and is accepted."""
    j = node.open(fresh=True)
    fill(j, 1, 3)
    j._destroy()
    path = anchor_file(node.anchors._dir)
    data = path.read_bytes()
    slot0, slot1 = (int.from_bytes(data[o + 4 : o + 12], "big") for o in (0, 4096))
    newest = 0 if slot0 > slot1 else 4096
    torn = bytearray(data)
    torn[newest + 30] ^= 0x55
    path.write_bytes(bytes(torn))
    again = node.open()
    assert len(again) == 3
    again.add(cmd(4), 4, 1)
    again._destroy()
    assert len(node.open()) == 4
