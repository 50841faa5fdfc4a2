"""The MetadataStore contract (base.py), run against every adapter: SQLite and
PostgreSQL (a real server started by the fixture)."""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest

from hsmvault.errors import InvalidParameter, ProtocolStateError
from hsmvault.host.storage.base import BackupMeta, MetadataStore, UploadMeta
from hsmvault.host.storage.postgres import PostgresMetadataStore
from hsmvault.host.storage.sqlite import SqliteMetadataStore

from .conftest import MetaOpener

ALICE = b"alice@example.org"
BOB = "bób\x00binary".encode()


def upload(
    user: bytes = ALICE,
    backup_id: str = "main",
    upload_id: str = "up-1",
    *,
    content: bytes = b"v1",
    label: str = "laptop",
    created_at: float = 1000.25,
) -> UploadMeta:
    return UploadMeta(
        user_id=user,
        backup_id=backup_id,
        upload_id=upload_id,
        blob_key=f"users/{user.hex()}/backups/{backup_id}/{upload_id}",
        size=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
        label=label,
        created_at=created_at,
    )


def commit(store: MetadataStore, up: UploadMeta, at: float = 2000.5) -> str | None:
    assert store.create_upload(up) == up
    return store.commit_upload(up, at)


def test_upload_round_trip(metadata_store: MetadataStore) -> None:
    up = upload(BOB, "b_1-X", "u-ABC_def", label="ünïcode label")
    assert metadata_store.create_upload(up) == up
    assert metadata_store.get_upload(BOB, "b_1-X", "u-ABC_def") == up
    assert metadata_store.get_upload(BOB, "b_1-X", "other") is None
    assert metadata_store.get_upload(ALICE, "b_1-X", "u-ABC_def") is None
    assert metadata_store.get_backup(BOB, "b_1-X") is None  # not committed yet


def test_create_upload_is_idempotent_on_size_and_digest(metadata_store: MetadataStore) -> None:
    first = upload(upload_id="first")
    assert metadata_store.create_upload(first) == first
    again = upload(upload_id="second", label="other", created_at=5.0)
    assert metadata_store.create_upload(again) == first  # resumes the existing upload
    assert metadata_store.get_upload(ALICE, "main", "second") is None
    different = upload(upload_id="third", content=b"other content")
    assert metadata_store.create_upload(different) == different
    other_backup = upload(backup_id="second-backup", upload_id="first")
    assert metadata_store.create_upload(other_backup) == other_backup


def test_reused_upload_id_with_other_content_is_rejected(metadata_store: MetadataStore) -> None:
    metadata_store.create_upload(upload(upload_id="same"))
    with pytest.raises(InvalidParameter):
        metadata_store.create_upload(upload(upload_id="same", content=b"different"))


def test_commit_switches_versions_and_returns_the_replaced_key(
    metadata_store: MetadataStore,
) -> None:
    v1 = upload(upload_id="gen-1", content=b"version one", label="one")
    assert commit(metadata_store, v1, at=10.0) is None
    assert metadata_store.get_upload(ALICE, "main", "gen-1") is None  # consumed
    assert metadata_store.get_backup(ALICE, "main") == BackupMeta(
        ALICE, "main", v1.blob_key, v1.size, v1.sha256, "one", 10.0
    )
    v2 = upload(upload_id="gen-2", content=b"version two!", label="two")
    assert commit(metadata_store, v2, at=20.0) == v1.blob_key
    current = metadata_store.get_backup(ALICE, "main")
    assert current is not None
    assert (current.blob_key, current.size, current.label, current.created_at) == (
        v2.blob_key,
        v2.size,
        "two",
        20.0,
    )
    assert [b.blob_key for b in metadata_store.list_backups(ALICE)] == [v2.blob_key]


def test_repeated_commit_is_harmless_and_unknown_upload_is_a_key_error(
    metadata_store: MetadataStore,
) -> None:
    v1 = upload()
    commit(metadata_store, v1)
    assert metadata_store.commit_upload(v1, 3000.0) is None  # a retried commit
    current = metadata_store.get_backup(ALICE, "main")
    assert current is not None
    assert current.created_at == 2000.5
    with pytest.raises(KeyError):
        metadata_store.commit_upload(upload(upload_id="never-created", content=b"x"), 1.0)


def test_commit_of_a_mismatching_upload_changes_nothing(metadata_store: MetadataStore) -> None:
    v1 = upload(upload_id="gen-1")
    commit(metadata_store, v1)
    v2 = upload(upload_id="gen-2", content=b"second")
    metadata_store.create_upload(v2)
    forged = replace(v2, sha256="0" * 64)
    with pytest.raises(InvalidParameter):
        metadata_store.commit_upload(forged, 5.0)
    assert metadata_store.get_upload(ALICE, "main", "gen-2") == v2
    current = metadata_store.get_backup(ALICE, "main")
    assert current is not None
    assert current.blob_key == v1.blob_key


def test_list_and_delete(metadata_store: MetadataStore) -> None:
    for backup_id in ("zeta", "alpha", "Mid", "_x"):
        commit(metadata_store, upload(backup_id=backup_id, upload_id="u"))
    commit(metadata_store, upload(BOB, "alpha", "u"))
    listed = metadata_store.list_backups(ALICE)
    assert [b.backup_id for b in listed] == ["Mid", "_x", "alpha", "zeta"]  # bytewise order
    assert all(b.user_id == ALICE for b in listed)
    assert [b.backup_id for b in metadata_store.list_backups(BOB)] == ["alpha"]
    assert metadata_store.list_backups(b"nobody") == []

    deleted = metadata_store.delete_backup(ALICE, "alpha")
    assert deleted is not None
    assert deleted.blob_key == upload(backup_id="alpha", upload_id="u").blob_key
    assert metadata_store.delete_backup(ALICE, "alpha") is None
    assert metadata_store.get_backup(ALICE, "alpha") is None
    assert metadata_store.get_backup(BOB, "alpha") is not None  # other user untouched
    assert [b.backup_id for b in metadata_store.list_backups(ALICE)] == ["Mid", "_x", "zeta"]
    # A deleted backup id can be used again.
    assert commit(metadata_store, upload(backup_id="alpha", upload_id="u2")) is None


def test_crash_before_commit_keeps_the_previous_backup(open_metadata_store: MetaOpener) -> None:
    before = open_metadata_store()
    v1 = upload(upload_id="gen-1")
    commit(before, v1)
    v2 = upload(upload_id="gen-2", content=b"interrupted")
    before.create_upload(v2)
    # "Crash": the first store is abandoned without close(); a new process opens anew.
    after = open_metadata_store()
    current = after.get_backup(ALICE, "main")
    assert current is not None
    assert current.blob_key == v1.blob_key
    assert after.get_upload(ALICE, "main", "gen-2") == v2
    assert after.create_upload(replace(v2, upload_id="retry")) == v2  # resumable
    assert after.commit_upload(v2, 9.0) == v1.blob_key


def test_schema_is_versioned_and_newer_schemas_are_refused(
    open_metadata_store: MetaOpener,
) -> None:
    store = open_metadata_store()
    version = store.schema_version()  # type: ignore[attr-defined]
    assert version >= 1
    commit(store, upload())
    reopened = open_metadata_store()  # migrations are not re-applied
    assert reopened.schema_version() == version  # type: ignore[attr-defined]
    assert reopened.get_backup(ALICE, "main") is not None
    _set_schema_version(store, version + 1)
    with pytest.raises(ProtocolStateError):
        open_metadata_store()


def _set_schema_version(store: MetadataStore, version: int) -> None:
    if isinstance(store, SqliteMetadataStore):
        with store._write() as conn:
            conn.execute("UPDATE schema_version SET version = ?", (version,))
    else:
        assert isinstance(store, PostgresMetadataStore)
        with store._transaction() as conn:
            conn.execute("UPDATE schema_version SET version = %s", (version,))


@pytest.mark.parametrize(
    "bad",
    [
        {"user_id": b""},
        {"user_id": b"x" * 256},
        {"backup_id": ""},
        {"backup_id": "has space"},
        {"backup_id": "x" * 65},
        {"upload_id": "../up"},
        {"blob_key": "../escape"},
        {"size": -1},
        {"sha256": "ABC"},
        {"sha256": "G" * 64},
        {"label": "nul\x00"},
    ],
)
def test_invalid_upload_fields_are_rejected(
    metadata_store: MetadataStore, bad: dict[str, object]
) -> None:
    with pytest.raises(InvalidParameter):
        metadata_store.create_upload(replace(upload(), **bad))  # type: ignore[arg-type]


def test_closed_store_refuses_calls(open_metadata_store: MetaOpener) -> None:
    store = open_metadata_store()
    store.close()
    with pytest.raises(ProtocolStateError):
        store.get_backup(ALICE, "main")


def test_concurrent_commits_of_one_backup_return_each_replaced_key_once(
    metadata_store: MetadataStore,
) -> None:
    n = 12
    uploads = [upload(upload_id=f"gen-{i}", content=f"v{i}".encode()) for i in range(n)]
    barrier = threading.Barrier(n)

    def run(up: UploadMeta) -> str | None:
        assert metadata_store.create_upload(up) == up
        barrier.wait()
        return metadata_store.commit_upload(up, 1.0)

    with ThreadPoolExecutor(n) as pool:
        replaced = list(pool.map(run, uploads))
    current = metadata_store.get_backup(ALICE, "main")
    assert current is not None
    # Every version is either current or was handed back exactly once for deletion.
    returned = [k for k in replaced if k is not None]
    assert len(returned) == n - 1
    assert sorted([*returned, current.blob_key]) == sorted(u.blob_key for u in uploads)


def test_concurrent_identical_create_upload_yields_one_upload(
    metadata_store: MetadataStore,
) -> None:
    n = 10
    barrier = threading.Barrier(n)

    def run(i: int) -> UploadMeta:
        barrier.wait()
        return metadata_store.create_upload(upload(upload_id=f"try-{i}"))

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(run, range(n)))
    assert len({r.upload_id for r in results}) == 1


def test_concurrent_users_and_backups(metadata_store: MetadataStore) -> None:
    def run(i: int) -> None:
        user = f"user-{i % 3}".encode()
        for g in range(3):
            up = upload(user, f"b{i}", f"g{g}", content=f"{i}/{g}".encode())
            expected = None if g == 0 else upload(user, f"b{i}", f"g{g - 1}").blob_key
            assert commit(metadata_store, up) == expected

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(run, range(6)))
    for u in range(3):
        listed = metadata_store.list_backups(f"user-{u}".encode())
        assert sorted(b.backup_id for b in listed) == sorted(
            f"b{i}" for i in range(6) if i % 3 == u
        )
        assert all(b.blob_key.endswith("/g2") for b in listed)
