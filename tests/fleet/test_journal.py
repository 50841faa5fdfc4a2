"""The sealed Raft journal on its own: what a node accepts back from the host's disk.

One test per attack on the journal file: an older copy, truncation, a flipped byte,
another node's file, a fork after a crash, a replayed incarnation. Plus the happy paths
(restart, rewrite after truncation of the log, a crash between the file write and the
NVRAM anchor) and a check that loading never unpickles anything.
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import pytest
from pysyncobj import pickle as psy_pickle  # type: ignore[import-untyped]

from hsmvault.errors import RollbackError, Unavailable, VerificationError
from hsmvault.fleet import codec
from hsmvault.fleet.codec import make_app_command
from hsmvault.fleet.journal import (
    FileAnchorStore,
    JournalAnchor,
    JournalConfig,
    MemoryAnchorStore,
    SealedJournal,
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


def test_log_truncation_rewrites_and_an_older_file_is_refused(node: Node) -> None:
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
