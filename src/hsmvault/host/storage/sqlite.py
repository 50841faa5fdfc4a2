"""A :class:`~hsmvault.host.storage.base.MetadataStore` in one SQLite file (the default).

* Schema versioned by the ``schema_version`` table; :data:`MIGRATIONS` are applied in
  order inside one ``BEGIN IMMEDIATE`` transaction when the store opens. A database
  newer than this code is refused.
* WAL journal, ``synchronous=FULL`` (a committed backup survives power loss), a 30 s
  busy timeout. The file (and its ``-wal``/``-shm`` companions, which SQLite creates with
  the same mode) is 0600.
* Thread safety: one connection per thread (the gateway runs storage calls on a
  threadpool); writers serialize on ``BEGIN IMMEDIATE``. ``close`` closes every
  connection the store opened; call it once no other thread uses the store.
* ``commit_upload`` is one transaction: it deletes the upload row and upserts the backup
  row, so a crash before it leaves the previous backup current and the upload resumable.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hsmvault.errors import InvalidParameter, ProtocolStateError
from hsmvault.host.storage.base import BackupMeta, UploadMeta
from hsmvault.host.storage.validation import (
    check_backup_id,
    check_upload_fields,
    check_user_id,
)

__all__ = ["MIGRATIONS", "SqliteMetadataStore"]

#: Each migration is a tuple of statements; migration ``i`` brings the schema to ``i+1``.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE uploads (
            user_id    BLOB    NOT NULL,
            backup_id  TEXT    NOT NULL,
            upload_id  TEXT    NOT NULL,
            blob_key   TEXT    NOT NULL,
            size       INTEGER NOT NULL CHECK (size >= 0),
            sha256     TEXT    NOT NULL,
            label      TEXT    NOT NULL,
            created_at REAL    NOT NULL,
            PRIMARY KEY (user_id, backup_id, upload_id),
            UNIQUE (user_id, backup_id, size, sha256)
        )""",
        """CREATE TABLE backups (
            user_id    BLOB    NOT NULL,
            backup_id  TEXT    NOT NULL,
            blob_key   TEXT    NOT NULL,
            size       INTEGER NOT NULL CHECK (size >= 0),
            sha256     TEXT    NOT NULL,
            label      TEXT    NOT NULL,
            created_at REAL    NOT NULL,
            PRIMARY KEY (user_id, backup_id)
        )""",
    ),
)

_Row = tuple[Any, ...]


def _upload(row: _Row) -> UploadMeta:
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


def _backup(row: _Row) -> BackupMeta:
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


class SqliteMetadataStore:
    """Metadata in the SQLite database at ``path`` (created 0600 if missing; its parent
    directory is created 0700)."""

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 30.0) -> None:
        self._path = Path(path)
        if str(path) == ":memory:" or str(path).startswith("file:"):
            raise InvalidParameter("SqliteMetadataStore needs a file path")
        self._timeout = timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._closed = False
        self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        os.close(fd)
        self._migrate()

    # -- connections -----------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if self._closed:
            raise ProtocolStateError("metadata store is closed")
        if conn is None:
            conn = sqlite3.connect(
                self._path,
                timeout=self._timeout,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,  # only for close(); each thread uses its own
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            with self._lock:
                if self._closed:
                    conn.close()
                    raise ProtocolStateError("metadata store is closed")
                self._connections.append(conn)
            self._local.conn = conn
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``: the write lock up front, so two
        writers never deadlock upgrading a read lock)."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _migrate(self) -> None:
        with self._write() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM schema_version").fetchone()
            version = 0 if row is None else int(row[0])
            if version > len(MIGRATIONS):
                raise ProtocolStateError(
                    f"metadata schema version {version} is newer than this code ({len(MIGRATIONS)})"
                )
            for statements in MIGRATIONS[version:]:
                for statement in statements:
                    conn.execute(statement)
            if row is None:
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (len(MIGRATIONS),))
            else:
                conn.execute("UPDATE schema_version SET version = ?", (len(MIGRATIONS),))

    def schema_version(self) -> int:
        row = self._conn().execute("SELECT version FROM schema_version").fetchone()
        return int(row[0])

    # -- MetadataStore ---------------------------------------------------------------

    def create_upload(self, upload: UploadMeta) -> UploadMeta:
        check_user_id(upload.user_id)
        check_backup_id(upload.backup_id)
        check_upload_fields(
            upload.upload_id, upload.blob_key, upload.size, upload.sha256, upload.label
        )
        with self._write() as conn:
            row = conn.execute(
                "SELECT user_id, backup_id, upload_id, blob_key, size, sha256, label, created_at "
                "FROM uploads WHERE user_id = ? AND backup_id = ? AND size = ? AND sha256 = ?",
                (upload.user_id, upload.backup_id, upload.size, upload.sha256),
            ).fetchone()
            if row is not None:
                return _upload(row)
            try:
                conn.execute(
                    "INSERT INTO uploads (user_id, backup_id, upload_id, blob_key, size, sha256, "
                    "label, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
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
            except sqlite3.IntegrityError:
                raise InvalidParameter("upload_id already used for another upload") from None
        return upload

    def get_upload(self, user_id: bytes, backup_id: str, upload_id: str) -> UploadMeta | None:
        row = (
            self._conn()
            .execute(
                "SELECT user_id, backup_id, upload_id, blob_key, size, sha256, label, created_at "
                "FROM uploads WHERE user_id = ? AND backup_id = ? AND upload_id = ?",
                (user_id, backup_id, upload_id),
            )
            .fetchone()
        )
        return None if row is None else _upload(row)

    def commit_upload(self, upload: UploadMeta, committed_at: float) -> str | None:
        """Atomically make ``upload`` the backup's current version; return the replaced
        version's blob key (``None`` if there was none, or on a repeated commit).
        Raises :class:`KeyError` if the upload does not exist."""
        with self._write() as conn:
            row = conn.execute(
                "SELECT user_id, backup_id, upload_id, blob_key, size, sha256, label, created_at "
                "FROM uploads WHERE user_id = ? AND backup_id = ? AND upload_id = ?",
                (upload.user_id, upload.backup_id, upload.upload_id),
            ).fetchone()
            current = conn.execute(
                "SELECT blob_key FROM backups WHERE user_id = ? AND backup_id = ?",
                (upload.user_id, upload.backup_id),
            ).fetchone()
            if row is None:
                if current is not None and current[0] == upload.blob_key:
                    return None  # already committed (a retried commit)
                raise KeyError(upload.upload_id)
            stored = _upload(row)
            if (stored.blob_key, stored.size, stored.sha256) != (
                upload.blob_key,
                upload.size,
                upload.sha256,
            ):
                raise InvalidParameter("upload does not match the stored upload")
            conn.execute(
                "DELETE FROM uploads WHERE user_id = ? AND backup_id = ? AND upload_id = ?",
                (stored.user_id, stored.backup_id, stored.upload_id),
            )
            conn.execute(
                "INSERT INTO backups (user_id, backup_id, blob_key, size, sha256, label, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (user_id, backup_id) DO UPDATE SET blob_key = excluded.blob_key, "
                "size = excluded.size, sha256 = excluded.sha256, label = excluded.label, "
                "created_at = excluded.created_at",
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

    def get_backup(self, user_id: bytes, backup_id: str) -> BackupMeta | None:
        row = (
            self._conn()
            .execute(
                "SELECT user_id, backup_id, blob_key, size, sha256, label, created_at "
                "FROM backups WHERE user_id = ? AND backup_id = ?",
                (user_id, backup_id),
            )
            .fetchone()
        )
        return None if row is None else _backup(row)

    def list_backups(self, user_id: bytes) -> list[BackupMeta]:
        rows = (
            self._conn()
            .execute(
                "SELECT user_id, backup_id, blob_key, size, sha256, label, created_at "
                "FROM backups WHERE user_id = ? ORDER BY backup_id",
                (user_id,),
            )
            .fetchall()
        )
        return [_backup(r) for r in rows]

    def delete_backup(self, user_id: bytes, backup_id: str) -> BackupMeta | None:
        with self._write() as conn:
            rows = conn.execute(
                "DELETE FROM backups WHERE user_id = ? AND backup_id = ? "
                "RETURNING user_id, backup_id, blob_key, size, sha256, label, created_at",
                (user_id, backup_id),
            ).fetchall()
        return _backup(rows[0]) if rows else None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()
