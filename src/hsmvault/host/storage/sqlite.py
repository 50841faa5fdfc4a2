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
from hsmvault.host.storage.base import BackupMeta, PasskeyChallenge, PasskeyRecord, UploadMeta
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
            sql_common.migrate(_SqliteTx(conn), MIGRATIONS)

    def schema_version(self) -> int:
        row = self._conn().execute(sql_common.SELECT_SCHEMA_VERSION).fetchone()
        return int(row[0])

    # -- MetadataStore ---------------------------------------------------------------

    def create_upload(self, upload: UploadMeta) -> UploadMeta:
        sql_common.check_upload(upload)
        try:
            with self._write() as conn:
                return sql_common.create_upload(_SqliteTx(conn), upload)
        except sqlite3.IntegrityError:
            raise InvalidParameter("upload_id already used for another upload") from None

    def get_upload(self, user_id: bytes, backup_id: str, upload_id: str) -> UploadMeta | None:
        return sql_common.get_upload(_SqliteTx(self._conn()), user_id, backup_id, upload_id)

    def commit_upload(self, upload: UploadMeta, committed_at: float) -> str | None:
        """Atomically make ``upload`` the backup's current version; return the replaced
        version's blob key (``None`` if there was none, or on a repeated commit).
        Raises :class:`KeyError` if the upload does not exist."""
        with self._write() as conn:
            return sql_common.commit_upload(
                _SqliteTx(conn), upload, committed_at, delete_returning=False
            )

    def get_backup(self, user_id: bytes, backup_id: str) -> BackupMeta | None:
        return sql_common.get_backup(_SqliteTx(self._conn()), user_id, backup_id)

    def list_backups(self, user_id: bytes) -> list[BackupMeta]:
        return sql_common.list_backups(_SqliteTx(self._conn()), user_id)

    def delete_backup(self, user_id: bytes, backup_id: str) -> BackupMeta | None:
        with self._write() as conn:
            return sql_common.delete_backup(_SqliteTx(conn), user_id, backup_id)

    # -- PasskeyStore (ADR 0011) ------------------------------------------------------

    def add_passkey(self, record: PasskeyRecord) -> None:
        sql_common.check_passkey_record(record)
        try:
            with self._write() as conn:
                sql_common.add_passkey(_SqliteTx(conn), record)
        except sqlite3.IntegrityError:
            raise InvalidParameter("credential id already registered") from None

    def get_passkey(self, user_id: bytes, credential_id: bytes) -> PasskeyRecord | None:
        return sql_common.get_passkey(_SqliteTx(self._conn()), user_id, credential_id)

    def list_passkeys(self, user_id: bytes) -> list[PasskeyRecord]:
        return sql_common.list_passkeys(_SqliteTx(self._conn()), user_id)

    def update_passkey(
        self,
        user_id: bytes,
        credential_id: bytes,
        *,
        expected_sign_count: int,
        expected_prf_salt: bytes,
        sign_count: int,
        last_used_at: float,
        prf_salt: bytes | None = None,
        wrapped_key: bytes | None = None,
    ) -> PasskeyRecord | None:
        sql_common.check_passkey_update(sign_count, prf_salt, wrapped_key)
        with self._write() as conn:
            return sql_common.update_passkey(
                _SqliteTx(conn),
                user_id,
                credential_id,
                expected_sign_count=expected_sign_count,
                expected_prf_salt=expected_prf_salt,
                sign_count=sign_count,
                last_used_at=last_used_at,
                prf_salt=prf_salt,
                wrapped_key=wrapped_key,
            )

    def delete_passkey(self, user_id: bytes, credential_id: bytes) -> bool:
        with self._write() as conn:
            return sql_common.delete_passkey(_SqliteTx(conn), user_id, credential_id)

    def put_challenge(self, challenge: PasskeyChallenge, *, purge_before: float) -> None:
        sql_common.check_passkey_challenge(challenge)
        try:
            with self._write() as conn:
                sql_common.put_challenge(_SqliteTx(conn), challenge, purge_before)
        except sqlite3.IntegrityError:
            raise InvalidParameter("challenge already issued") from None

    def consume_challenge(self, user_id: bytes, challenge: bytes) -> PasskeyChallenge | None:
        with self._write() as conn:
            return sql_common.consume_challenge(_SqliteTx(conn), user_id, challenge)

    # -- FleetAssignmentStore (ADR 0013) ----------------------------------------------

    def get_fleet_assignment(self, user_id: bytes) -> str | None:
        return sql_common.get_fleet_assignment(_SqliteTx(self._conn()), user_id)

    def set_fleet_assignment(self, user_id: bytes, fleet: str, assigned_at: float) -> None:
        sql_common.check_fleet_assignment(user_id, fleet)
        with self._write() as conn:
            sql_common.set_fleet_assignment(_SqliteTx(conn), user_id, fleet, assigned_at)

    def clear_fleet_assignment(self, user_id: bytes, fleet: str) -> bool:
        sql_common.check_fleet_assignment(user_id, fleet)
        with self._write() as conn:
            return sql_common.clear_fleet_assignment(_SqliteTx(conn), user_id, fleet)

    def count_fleet_assignments(self, fleet: str) -> int:
        return sql_common.count_fleet_assignments(_SqliteTx(self._conn()), fleet)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()
