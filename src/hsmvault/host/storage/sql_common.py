"""The engine-independent half of the SQL :class:`~hsmvault.host.storage.base.MetadataStore`
adapters (:mod:`.sqlite`, :mod:`.postgres`).

The flows here run inside a transaction (or on a plain connection, for reads) that the
adapter opens; they talk to it through :class:`Tx`, a tiny cursor interface. Statements
are written with ``?`` placeholders; :func:`pyformat` turns them into ``%s`` for
PostgreSQL. Connections, locking, migration locking and the mapping of driver errors stay
in the adapters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from hsmvault.errors import InvalidParameter, ProtocolStateError
from hsmvault.host.storage.base import BackupMeta, UploadMeta
from hsmvault.host.storage.validation import (
    check_backup_id,
    check_upload_fields,
    check_user_id,
)

__all__ = [
    "SELECT_SCHEMA_VERSION",
    "Params",
    "Row",
    "Tx",
    "backup_from_row",
    "check_upload",
    "commit_upload",
    "create_upload",
    "delete_backup",
    "get_backup",
    "get_upload",
    "list_backups",
    "migrate",
    "pyformat",
    "upload_from_row",
]

Row = tuple[Any, ...]
Params = Sequence[Any]


class Tx(Protocol):
    """What the shared flows need of a connection (statements use ``?`` placeholders)."""

    def execute(self, sql: str, params: Params | None = None) -> None: ...

    def fetchone(self, sql: str, params: Params | None = None) -> Row | None: ...

    def fetchall(self, sql: str, params: Params | None = None) -> list[Row]: ...


def pyformat(sql: str) -> str:
    """``sql`` with its ``?`` placeholders as ``%s`` (psycopg's style)."""
    return sql.replace("?", "%s")


SELECT_SCHEMA_VERSION = "SELECT version FROM schema_version"

_SELECT_UPLOAD_BY_CONTENT = (
    "SELECT user_id, backup_id, upload_id, blob_key, size, sha256, label, created_at "
    "FROM uploads WHERE user_id = ? AND backup_id = ? AND size = ? AND sha256 = ?"
)
_SELECT_UPLOAD = (
    "SELECT user_id, backup_id, upload_id, blob_key, size, sha256, label, created_at "
    "FROM uploads WHERE user_id = ? AND backup_id = ? AND upload_id = ?"
)
_INSERT_UPLOAD = (
    "INSERT INTO uploads (user_id, backup_id, upload_id, blob_key, size, sha256, "
    "label, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_DELETE_UPLOAD = "DELETE FROM uploads WHERE user_id = ? AND backup_id = ? AND upload_id = ?"
_DELETE_UPLOAD_RETURNING = (
    "DELETE FROM uploads WHERE user_id = ? AND backup_id = ? AND upload_id = ? "
    "RETURNING user_id, backup_id, upload_id, blob_key, size, sha256, label, created_at"
)
_SELECT_CURRENT_BLOB_KEY = "SELECT blob_key FROM backups WHERE user_id = ? AND backup_id = ?"
_UPSERT_BACKUP = (
    "INSERT INTO backups (user_id, backup_id, blob_key, size, sha256, label, "
    "created_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (user_id, backup_id) DO UPDATE SET blob_key = excluded.blob_key, "
    "size = excluded.size, sha256 = excluded.sha256, label = excluded.label, "
    "created_at = excluded.created_at"
)
_SELECT_BACKUP = (
    "SELECT user_id, backup_id, blob_key, size, sha256, label, created_at "
    "FROM backups WHERE user_id = ? AND backup_id = ?"
)
_LIST_BACKUPS = (
    "SELECT user_id, backup_id, blob_key, size, sha256, label, created_at "
    "FROM backups WHERE user_id = ? ORDER BY backup_id"
)
_LIST_BACKUPS_COLLATE_C = (
    "SELECT user_id, backup_id, blob_key, size, sha256, label, created_at "
    'FROM backups WHERE user_id = ? ORDER BY backup_id COLLATE "C"'
)
_DELETE_BACKUP_RETURNING = (
    "DELETE FROM backups WHERE user_id = ? AND backup_id = ? "
    "RETURNING user_id, backup_id, blob_key, size, sha256, label, created_at"
)


def upload_from_row(row: Row) -> UploadMeta:
    user_id, backup_id, upload_id, blob_key, size, sha256, label, created_at = row
    return UploadMeta(
        user_id=bytes(user_id),
        backup_id=str(backup_id),
        upload_id=str(upload_id),
        blob_key=str(blob_key),
        size=int(size),
        sha256=str(sha256),
        label=str(label),
        created_at=float(created_at),
    )


def backup_from_row(row: Row) -> BackupMeta:
    user_id, backup_id, blob_key, size, sha256, label, created_at = row
    return BackupMeta(
        user_id=bytes(user_id),
        backup_id=str(backup_id),
        blob_key=str(blob_key),
        size=int(size),
        sha256=str(sha256),
        label=str(label),
        created_at=float(created_at),
    )


def check_upload(upload: UploadMeta) -> None:
    """The ADR 0008 checks ``create_upload`` makes before touching the database."""
    check_user_id(upload.user_id)
    check_backup_id(upload.backup_id)
    check_upload_fields(upload.upload_id, upload.blob_key, upload.size, upload.sha256, upload.label)


def migrate(tx: Tx, migrations: Sequence[Sequence[str]]) -> None:
    """Bring the schema to ``len(migrations)`` (the caller holds the transaction and any
    lock); refuse a database newer than that."""
    tx.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = tx.fetchone(SELECT_SCHEMA_VERSION)
    version = 0 if row is None else int(row[0])
    if version > len(migrations):
        raise ProtocolStateError(
            f"metadata schema version {version} is newer than this code ({len(migrations)})"
        )
    for statements in migrations[version:]:
        for statement in statements:
            tx.execute(statement)
    if row is None:
        tx.execute("INSERT INTO schema_version (version) VALUES (?)", (len(migrations),))
    else:
        tx.execute("UPDATE schema_version SET version = ?", (len(migrations),))


def create_upload(tx: Tx, upload: UploadMeta) -> UploadMeta:
    """Return the existing upload of the same user, backup, size and sha256, or insert
    ``upload``. A clash on ``upload_id`` raises the driver's integrity error (the
    adapter maps it)."""
    row = tx.fetchone(
        _SELECT_UPLOAD_BY_CONTENT,
        (upload.user_id, upload.backup_id, upload.size, upload.sha256),
    )
    if row is not None:
        return upload_from_row(row)
    tx.execute(
        _INSERT_UPLOAD,
        (
            upload.user_id,
            upload.backup_id,
            upload.upload_id,
            upload.blob_key,
            upload.size,
            upload.sha256,
            upload.label,
            upload.created_at,
        ),
    )
    return upload


def get_upload(tx: Tx, user_id: bytes, backup_id: str, upload_id: str) -> UploadMeta | None:
    row = tx.fetchone(_SELECT_UPLOAD, (user_id, backup_id, upload_id))
    return None if row is None else upload_from_row(row)


def commit_upload(
    tx: Tx, upload: UploadMeta, committed_at: float, *, delete_returning: bool
) -> str | None:
    """Make ``upload`` the backup's current version inside the caller's transaction;
    return the replaced version's blob key (``None`` if there was none, or on a repeated
    commit). Raises :class:`KeyError` if the upload does not exist.

    With ``delete_returning`` the upload row is taken with ``DELETE ... RETURNING`` up
    front (an exception then rolls the delete back); otherwise it is read first and
    deleted once it has been checked."""
    key = (upload.user_id, upload.backup_id, upload.upload_id)
    if delete_returning:
        row = tx.fetchone(_DELETE_UPLOAD_RETURNING, key)
    else:
        row = tx.fetchone(_SELECT_UPLOAD, key)
    current = tx.fetchone(_SELECT_CURRENT_BLOB_KEY, (upload.user_id, upload.backup_id))
    if row is None:
        if current is not None and current[0] == upload.blob_key:
            return None  # already committed (a retried commit)
        raise KeyError(upload.upload_id)
    stored = upload_from_row(row)
    if (stored.blob_key, stored.size, stored.sha256) != (
        upload.blob_key,
        upload.size,
        upload.sha256,
    ):
        raise InvalidParameter("upload does not match the stored upload")
    if not delete_returning:
        tx.execute(
            _DELETE_UPLOAD,
            (stored.user_id, stored.backup_id, stored.upload_id),
        )
    tx.execute(
        _UPSERT_BACKUP,
        (
            stored.user_id,
            stored.backup_id,
            stored.blob_key,
            stored.size,
            stored.sha256,
            stored.label,
            committed_at,
        ),
    )
    if current is None or current[0] == stored.blob_key:
        return None
    return str(current[0])


def get_backup(tx: Tx, user_id: bytes, backup_id: str) -> BackupMeta | None:
    row = tx.fetchone(_SELECT_BACKUP, (user_id, backup_id))
    return None if row is None else backup_from_row(row)


def list_backups(tx: Tx, user_id: bytes, *, collate_c: bool = False) -> list[BackupMeta]:
    """The user's backups ordered by ``backup_id`` (with ``collate_c``, under an explicit
    ``COLLATE "C"``: byte order whatever the database's default collation)."""
    rows = tx.fetchall(_LIST_BACKUPS_COLLATE_C if collate_c else _LIST_BACKUPS, (user_id,))
    return [backup_from_row(r) for r in rows]


def delete_backup(tx: Tx, user_id: bytes, backup_id: str) -> BackupMeta | None:
    """Delete and return the backup (all rows are fetched, so the statement has run to
    completion before the caller commits)."""
    rows = tx.fetchall(_DELETE_BACKUP_RETURNING, (user_id, backup_id))
    return backup_from_row(rows[0]) if rows else None
