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
* It is also the gateway's :class:`~hsmvault.host.storage.base.PasskeyStore` (schema 2):
  every passkey write is one ``BEGIN IMMEDIATE`` transaction.
* And its :class:`~hsmvault.host.storage.base.FleetAssignmentStore` (schema 3, ADR 0013):
  one row per user, each write one ``BEGIN IMMEDIATE`` transaction.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hsmvault.errors import InvalidParameter, ProtocolStateError
from hsmvault.host.storage import sql_common
from hsmvault.host.storage.sql_common import Params, Row

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
    # 2: passkeys and their challenges (ADR 0011)
    sql_common.passkey_tables(blob="BLOB", bigint="INTEGER", real="REAL", boolean="INTEGER"),
    # 3: which fleet holds each user's vault record (ADR 0013)
    sql_common.fleet_assignment_tables(blob="BLOB", real="REAL"),
)


class _SqliteTx:
    """:class:`~hsmvault.host.storage.sql_common.Tx` over one connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Params | None = None) -> None:
        self._conn.execute(sql, () if params is None else params)

    def fetchone(self, sql: str, params: Params | None = None) -> Row | None:
        row: Row | None = self._conn.execute(sql, () if params is None else params).fetchone()
        return row

    def fetchall(self, sql: str, params: Params | None = None) -> list[Row]:
        return self._conn.execute(sql, () if params is None else params).fetchall()


class SqliteMetadataStore(sql_common.SqlMetadataStore):
    """Metadata in the SQLite database at ``path`` (created 0600 if missing; its parent
    directory is created 0700)."""

    _integrity_error = sqlite3.IntegrityError
    _delete_returning = False
    _collate_c = False

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
            sql_common.migrate(_SqliteTx(conn), MIGRATIONS)

    @contextmanager
    def _read_tx(self) -> Iterator[sql_common.Tx]:
        yield _SqliteTx(self._conn())

    @contextmanager
    def _write_tx(self, lock: tuple[bytes, str] | None = None) -> Iterator[sql_common.Tx]:
        # ``lock`` is not needed: BEGIN IMMEDIATE serializes every writer.
        with self._write() as conn:
            yield _SqliteTx(conn)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()
