"""The client's trust store: monotonic state, durable atomic file, strict parsing."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from hsmvault.client.trust_store import (
    FileTrustStore,
    MemoryTrustStore,
    NamespaceTrust,
    StoredCheckpoint,
    TrustStore,
    TrustStoreCorrupted,
)
from hsmvault.errors import InvalidParameter, RollbackError
from hsmvault.transparency.artifact import canonical_json
from tests.transparency.bundle_kit import TestLog, TestWitness

_NS = "hsmvault/test"


def _checkpoint(log: TestLog, size: int | None = None) -> StoredCheckpoint:
    n = len(log.leaf_hashes) if size is None else size
    return StoredCheckpoint(log.origin, n, log.root(n), log.checkpoint_note(n))


def _log(leaves: int, tag: bytes = b"") -> TestLog:
    witness = TestWitness()
    for i in range(leaves):
        witness.log.append(tag + bytes([i]))
    return witness.log


@pytest.fixture(params=["memory", "file"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> TrustStore:
    if request.param == "memory":
        return MemoryTrustStore()
    return FileTrustStore(tmp_path / "trust.json")


def test_empty_then_put_get(store: TrustStore) -> None:
    assert store.get(_NS) is None
    cp = _checkpoint(_log(3))
    store.put(_NS, NamespaceTrust(4, cp))
    assert store.get(_NS) == NamespaceTrust(4, cp)
    assert store.get("other") is None
    store.put("other", NamespaceTrust(0))
    assert store.get("other") == NamespaceTrust(0, None)
    assert store.get(_NS) == NamespaceTrust(4, cp)


def test_refuses_to_move_backwards(store: TrustStore) -> None:
    log = _log(5)
    store.put(_NS, NamespaceTrust(4, _checkpoint(log, 3)))
    forked = _log(5, tag=b"fork")
    other_origin = TestLog("another.witness", log.signer)
    for i in range(5):
        other_origin.append(bytes([i]))
    for bad in (
        NamespaceTrust(3, _checkpoint(log, 3)),  # lower epoch
        NamespaceTrust(4, None),  # drops the checkpoint
        NamespaceTrust(4, _checkpoint(log, 2)),  # smaller tree
        NamespaceTrust(4, _checkpoint(forked, 3)),  # same size, another root
        NamespaceTrust(4, _checkpoint(other_origin, 4)),  # another log
    ):
        with pytest.raises(RollbackError):
            store.put(_NS, bad)
        assert store.get(_NS) == NamespaceTrust(4, _checkpoint(log, 3))
    store.put(_NS, NamespaceTrust(4, _checkpoint(log, 3)))  # idempotent
    store.put(_NS, NamespaceTrust(5, _checkpoint(log, 5)))  # forward
    assert store.get(_NS) == NamespaceTrust(5, _checkpoint(log, 5))


def test_value_checks() -> None:
    log = _log(2)
    cp = _checkpoint(log)
    with pytest.raises(InvalidParameter):
        StoredCheckpoint(cp.origin, cp.tree_size + 1, cp.root_hash, cp.note)
    with pytest.raises(InvalidParameter):
        StoredCheckpoint(cp.origin, cp.tree_size, bytes(32), cp.note)
    with pytest.raises(InvalidParameter):
        StoredCheckpoint("x", cp.tree_size, cp.root_hash, cp.note)
    with pytest.raises(InvalidParameter):
        StoredCheckpoint(cp.origin, cp.tree_size, cp.root_hash, b"garbage")
    with pytest.raises(InvalidParameter):
        NamespaceTrust(-1)
    with pytest.raises(InvalidParameter):
        NamespaceTrust(True)
    with pytest.raises(InvalidParameter):
        MemoryTrustStore().put("has space", NamespaceTrust(1))


def test_file_survives_restart_and_is_canonical(tmp_path: Path) -> None:
    path = tmp_path / "trust.json"
    cp = _checkpoint(_log(4))
    FileTrustStore(path).put(_NS, NamespaceTrust(9, cp))
    again = FileTrustStore(path)
    assert again.get(_NS) == NamespaceTrust(9, cp)
    with pytest.raises(RollbackError):
        again.put(_NS, NamespaceTrust(8, cp))
    data = path.read_bytes()
    assert canonical_json(json.loads(data)) == data
    assert json.loads(data)["namespaces"][_NS]["highest_epoch"] == 9
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trust.json"]  # no temp files


def test_write_is_atomic_and_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "trust.json"
    store = FileTrustStore(path)
    store.put(_NS, NamespaceTrust(1))
    before = path.read_bytes()

    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    store.put(_NS, NamespaceTrust(2))
    assert len(synced) == 2  # the temp file, then the directory

    def broken_replace(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        store.put(_NS, NamespaceTrust(3))
    assert path.read_bytes() != before
    assert FileTrustStore(path).get(_NS) == NamespaceTrust(2)  # old content intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trust.json"]  # temp removed


def _valid_file(tmp_path: Path) -> Path:
    path = tmp_path / "trust.json"
    FileTrustStore(path).put(_NS, NamespaceTrust(3, _checkpoint(_log(2))))
    return path


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda d: b"",
        lambda d: d[: len(d) // 2],
        lambda d: d + b"\n",
        lambda d: d.replace(b'"version":1', b'"version":2'),
        lambda d: d.replace(b'"highest_epoch":3', b'"highest_epoch":-3'),
        lambda d: d.replace(b'"highest_epoch":3', b'"highest_epoch":"3"'),
        lambda d: d.replace(b'"highest_epoch":3', b'"highest_epoch":true'),
        lambda d: d.replace(b'"tree_size":2', b'"tree_size":3'),  # note disagrees
        lambda d: d.replace(b'"root_hash":"', b'"root_hash":"0'),
        lambda d: d.replace(b'"origin":"', b'"origin":"x'),
        lambda d: d.replace(b'"checkpoint":{', b'"checkpoint":{"extra":1,'),
        lambda d: d.replace(
            b'"namespaces":{', b'"namespaces":{"a b":{"checkpoint":null,"highest_epoch":1},'
        ),
        lambda d: b"\xff" + d,
        lambda d: b"[]",
    ],
)
def test_corrupted_file_raises_and_is_never_reset(tmp_path: Path, corrupt: object) -> None:
    path = _valid_file(tmp_path)
    assert callable(corrupt)
    bad = corrupt(path.read_bytes())
    path.write_bytes(bad)
    store = FileTrustStore(path)
    with pytest.raises(TrustStoreCorrupted):
        store.get(_NS)
    with pytest.raises(TrustStoreCorrupted):
        store.put(_NS, NamespaceTrust(10))
    with pytest.raises(TrustStoreCorrupted):
        store.put("fresh/namespace", NamespaceTrust(0))
    assert path.read_bytes() == bad  # untouched


def test_note_base64_must_be_canonical(tmp_path: Path) -> None:
    path = _valid_file(tmp_path)
    obj = json.loads(path.read_bytes())
    note = obj["namespaces"][_NS]["checkpoint"]["note"]
    variants = [note + "=", note.replace("A", "-", 1)]
    if note.endswith("="):  # slack bits before the padding: same bytes, other text
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        head = note.rstrip("=")
        flipped = alphabet[alphabet.index(head[-1]) ^ 1]
        variants.append(head[:-1] + flipped + note[len(head) :])
    for variant in variants:
        obj["namespaces"][_NS]["checkpoint"]["note"] = variant
        path.write_bytes(canonical_json(obj))
        with pytest.raises(TrustStoreCorrupted):
            FileTrustStore(path).get(_NS)
