"""Cost regressions of the sealed journal, counted rather than timed: sync calls
(``fsync``/``fdatasync``), renames and whole-file rewrites per operation.

pysyncobj's follower calls ``deleteEntriesFrom`` whenever the leader re-sends entries it
already has, even identical ones; that used to rewrite and fsync the whole journal each
time (bench/README.md, "HSM fleet", item 3). And every append cost three fsyncs (journal,
then the anchor's temporary file and directory).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from hsmvault.fleet.journal import SealedJournal

from .test_journal import Node, cmd, fill


@dataclass
class Counts:
    syncs: int = 0
    renames: int = 0
    rewrites: int = 0

    def reset(self) -> None:
        self.syncs = self.renames = self.rewrites = 0


@pytest.fixture
def counts(monkeypatch: pytest.MonkeyPatch) -> Counts:
    c = Counts()
    real_fsync, real_fdatasync, real_replace = os.fsync, os.fdatasync, os.replace
    real_rewrite = SealedJournal._rewrite

    def fsync(fd: int) -> None:
        c.syncs += 1
        real_fsync(fd)

    def fdatasync(fd: int) -> None:
        c.syncs += 1
        real_fdatasync(fd)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        c.renames += 1
        real_replace(src, dst)

    def rewrite(self: SealedJournal) -> None:
        c.rewrites += 1
        real_rewrite(self)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(SealedJournal, "_rewrite", rewrite)
    return c


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path, "a")


def test_an_add_costs_one_journal_sync_and_one_anchor_sync(node: Node, counts: Counts) -> None:
    j = node.open(fresh=True)
    fill(j, 1, 3)
    counts.reset()
    for i in range(4, 54):
        j.add(cmd(i), i, 1)
    assert (counts.syncs, counts.renames, counts.rewrites) == (2 * 50, 0, 0)
    j.setCurrentTerm(2, "ab")  # a vote costs the same
    assert (counts.syncs, counts.renames) == (2 * 51, 0)


@pytest.mark.parametrize("log_length", [20, 200])
def test_identical_resend_after_delete_writes_nothing(
    node: Node, counts: Counts, log_length: int
) -> None:
    j = node.open(fresh=True)
    fill(j, 1, log_length)
    size, anchor = node.path.stat().st_size, node.anchors.read_anchor()
    counts.reset()
    for back in (1, 10, log_length - 1):  # pysyncobj re-sends from prevLogIdx + 1
        entries = list(j)[-back:]
        j.deleteEntriesFrom(len(j) - back)
        for entry in entries:
            j.add(*entry)
    assert (counts.syncs, counts.renames, counts.rewrites) == (0, 0, 0)
    assert node.path.stat().st_size == size
    assert node.anchors.read_anchor() == anchor
    j._destroy()
    assert len(node.open()) == log_length


def test_a_conflicting_resend_costs_the_new_entries_only(node: Node, counts: Counts) -> None:
    """Re-send of 10 entries, the last of which differs: one write of two records (the
    cut and the entry), one journal sync and one anchor sync, whatever the log length."""
    growth = []
    for length in (30, 300):
        node = Node(node.host.parent, f"n{length}")
        j = node.open(fresh=True)
        fill(j, 1, length)
        before = node.path.stat().st_size
        counts.reset()
        entries = list(j)[-10:]
        j.deleteEntriesFrom(len(j) - 10)
        for entry in entries[:-1]:
            j.add(*entry)
        j.add(cmd(10_000), length, 2)
        assert (counts.syncs, counts.renames, counts.rewrites) == (2, 0, 0)
        growth.append(node.path.stat().st_size - before)
        j._destroy()
        assert node.open()[-1] == (cmd(10_000), length, 2)
    assert growth[0] == growth[1]


def test_compaction_appends_a_record_instead_of_rewriting(node: Node, counts: Counts) -> None:
    j = node.open(fresh=True)
    fill(j, 1, 300)
    counts.reset()
    j.deleteEntriesTo(250)
    assert (counts.syncs, counts.renames, counts.rewrites) == (2, 0, 0)
    j._destroy()
    assert [e[1] for e in node.open()] == list(range(251, 301))
