"""A :class:`~hsmvault.host.storage.base.MetadataStore` on PostgreSQL (psycopg 3).

Same schema and semantics as :mod:`.sqlite`:

* ``schema_version`` table and :data:`MIGRATIONS`, applied at open under a
  transaction-scoped advisory lock (several gateways may start at once); a database
  newer than this code is refused.
* A small bounded connection pool (autocommit connections; every write is an explicit
  transaction). Writes that touch one backup take a transaction-scoped advisory lock on
  ``(user_id, backup_id)``, so concurrent commits of the same backup serialize and each
  replaced blob key is returned to exactly one caller.
* ``commit_upload`` deletes the upload row and upserts the backup row in one transaction.
* It is also the gateway's :class:`~hsmvault.host.storage.base.PasskeyStore` (schema 2);
  its compare-and-set writes are single conditional ``UPDATE`` statements.
* And its :class:`~hsmvault.host.storage.base.FleetAssignmentStore` (schema 3, ADR 0013):
  an upsert and a conditional ``DELETE``, one statement each.

``dsn`` is a libpq connection string or URI (``host=127.0.0.1 port=5432 dbname=vault``).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import pq

from hsmvault.errors import InvalidParameter, ProtocolStateError, Unavailable
from hsmvault.host.storage import sql_common
from hsmvault.host.storage.base import BackupMeta, PasskeyChallenge, PasskeyRecord, UploadMeta
from hsmvault.host.storage.sql_common import Params, Row, pyformat

__all__ = ["MIGRATIONS", "PostgresMetadataStore"]

#: Each migration is a tuple of statements; migration ``i`` brings the schema to ``i+1``.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE uploads (
            user_id    BYTEA            NOT NULL,
            backup_id  TEXT             NOT NULL,
            upload_id  TEXT             NOT NULL,
            blob_key   TEXT             NOT NULL,
            size       BIGINT           NOT NULL CHECK (size >= 0),
            sha256     TEXT             NOT NULL,
            label      TEXT             NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (user_id, backup_id, upload_id),
            UNIQUE (user_id, backup_id, size, sha256)
        )""",
        """CREATE TABLE backups (
            user_id    BYTEA            NOT NULL,
            backup_id  TEXT             NOT NULL,
            blob_key   TEXT             NOT NULL,
            size       BIGINT           NOT NULL CHECK (size >= 0),
            sha256     TEXT             NOT NULL,
            label      TEXT             NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (user_id, backup_id)
        )""",
    ),
    # 2: passkeys and their challenges (ADR 0011)
    sql_common.passkey_tables(
        blob="BYTEA", bigint="BIGINT", real="DOUBLE PRECISION", boolean="BOOLEAN"
    ),
    # 3: which fleet holds each user's vault record (ADR 0013)
    sql_common.fleet_assignment_tables(blob="BYTEA", real="DOUBLE PRECISION"),
)

# An arbitrary constant: the advisory lock that serializes migrations.
_MIGRATION_LOCK = 0x68736D7661756C74  # "hsmvault"

_Conn = psycopg.Connection[tuple[Any, ...]]


class _PgTx:
    """:class:`~hsmvault.host.storage.sql_common.Tx` over one connection (``?``
    placeholders become ``%s``)."""

    def __init__(self, conn: _Conn) -> None:
        self._conn = conn

    def _run(self, sql: str, params: Params | None) -> psycopg.Cursor[Row]:
        return self._conn.execute(pyformat(sql), params)

    def execute(self, sql: str, params: Params | None = None) -> None:
        self._run(sql, params)

    def fetchone(self, sql: str, params: Params | None = None) -> Row | None:
        return self._run(sql, params).fetchone()

    def fetchall(self, sql: str, params: Params | None = None) -> list[Row]:
        return self._run(sql, params).fetchall()


class _Pool:
    """At most ``max_size`` autocommit connections; idle ones are reused (LIFO)."""

    def __init__(self, dsn: str, max_size: int, timeout: float) -> None:
        self._dsn = dsn
        self._timeout = timeout
        self._slots = threading.BoundedSemaphore(max_size)
        self._idle: queue.LifoQueue[_Conn] = queue.LifoQueue()
        self._closed = False

    def _connect(self) -> _Conn:
        try:
            return psycopg.connect(
                self._dsn, autocommit=True, connect_timeout=max(1, int(self._timeout))
            )
        except psycopg.OperationalError:
            raise Unavailable("metadata database unreachable") from None

    @contextmanager
    def connection(self) -> Iterator[_Conn]:
        if self._closed:
            raise ProtocolStateError("metadata store is closed")
        if not self._slots.acquire(timeout=self._timeout):
            raise Unavailable("no free metadata database connection")
        conn: _Conn | None = None
        try:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                conn = self._connect()
            try:
                yield conn
            except psycopg.OperationalError:
                # The server went away mid-call (the connection is dropped below).
                raise Unavailable("metadata database unavailable") from None
        finally:
            if conn is not None:
                healthy = (
                    not self._closed
                    and not conn.closed
                    and conn.info.transaction_status == pq.TransactionStatus.IDLE
                )
                if healthy:
                    self._idle.put(conn)
                else:
                    conn.close()
            self._slots.release()

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


class PostgresMetadataStore:
    """Metadata in the PostgreSQL database named by ``dsn``."""

    def __init__(self, dsn: str, *, max_connections: int = 8, timeout: float = 30.0) -> None:
        if max_connections < 1:
            raise InvalidParameter("max_connections must be at least 1")
        self._pool = _Pool(dsn, max_connections, timeout)
        self._migrate()

    @contextmanager
    def _transaction(self, lock: tuple[bytes, str] | None = None) -> Iterator[_Conn]:
        """One transaction; with ``lock``, first take the advisory lock of that
        ``(user_id, backup_id)`` (held until commit or rollback)."""
        with self._pool.connection() as conn, conn.transaction():
            if lock is not None:
                conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                    (lock[0].hex() + "/" + lock[1],),
                )
            yield conn

    def _migrate(self) -> None:
        with self._transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            sql_common.migrate(_PgTx(conn), MIGRATIONS)

    def schema_version(self) -> int:
        with self._pool.connection() as conn:
            row = conn.execute(sql_common.SELECT_SCHEMA_VERSION).fetchone()
        assert row is not None
        return int(row[0])

    # -- MetadataStore ---------------------------------------------------------------

    def create_upload(self, upload: UploadMeta) -> UploadMeta:
        sql_common.check_upload(upload)
        try:
            with self._transaction((upload.user_id, upload.backup_id)) as conn:
                return sql_common.create_upload(_PgTx(conn), upload)
        except psycopg.errors.UniqueViolation:
            raise InvalidParameter("upload_id already used for another upload") from None

    def get_upload(self, user_id: bytes, backup_id: str, upload_id: str) -> UploadMeta | None:
        with self._pool.connection() as conn:
            return sql_common.get_upload(_PgTx(conn), user_id, backup_id, upload_id)

    def commit_upload(self, upload: UploadMeta, committed_at: float) -> str | None:
        """Atomically make ``upload`` the backup's current version; return the replaced
        version's blob key (``None`` if there was none, or on a repeated commit).
        Raises :class:`KeyError` if the upload does not exist."""
        with self._transaction((upload.user_id, upload.backup_id)) as conn:
            # DELETE ... RETURNING first: raising inside the transaction rolls it back.
            return sql_common.commit_upload(
                _PgTx(conn), upload, committed_at, delete_returning=True
            )

    def get_backup(self, user_id: bytes, backup_id: str) -> BackupMeta | None:
        with self._pool.connection() as conn:
            return sql_common.get_backup(_PgTx(conn), user_id, backup_id)

    def list_backups(self, user_id: bytes) -> list[BackupMeta]:
        with self._pool.connection() as conn:
            return sql_common.list_backups(_PgTx(conn), user_id, collate_c=True)

    def delete_backup(self, user_id: bytes, backup_id: str) -> BackupMeta | None:
        with self._transaction((user_id, backup_id)) as conn:
            return sql_common.delete_backup(_PgTx(conn), user_id, backup_id)

    # -- PasskeyStore (ADR 0011) ------------------------------------------------------

    def add_passkey(self, record: PasskeyRecord) -> None:
        sql_common.check_passkey_record(record)
        try:
            with self._transaction() as conn:
                sql_common.add_passkey(_PgTx(conn), record)
        except psycopg.errors.UniqueViolation:
            raise InvalidParameter("credential id already registered") from None

    def get_passkey(self, user_id: bytes, credential_id: bytes) -> PasskeyRecord | None:
        with self._pool.connection() as conn:
            return sql_common.get_passkey(_PgTx(conn), user_id, credential_id)

    def list_passkeys(self, user_id: bytes) -> list[PasskeyRecord]:
        with self._pool.connection() as conn:
            return sql_common.list_passkeys(_PgTx(conn), user_id)

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
        # One UPDATE: the row lock makes the compare-and-set atomic.
        with self._transaction() as conn:
            return sql_common.update_passkey(
                _PgTx(conn),
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
        with self._transaction() as conn:
            return sql_common.delete_passkey(_PgTx(conn), user_id, credential_id)

    def put_challenge(self, challenge: PasskeyChallenge, *, purge_before: float) -> None:
        sql_common.check_passkey_challenge(challenge)
        try:
            with self._transaction() as conn:
                sql_common.put_challenge(_PgTx(conn), challenge, purge_before)
        except psycopg.errors.UniqueViolation:
            raise InvalidParameter("challenge already issued") from None

    def consume_challenge(self, user_id: bytes, challenge: bytes) -> PasskeyChallenge | None:
        # A conditional UPDATE: of racing transactions, one matches ``consumed = false``.
        with self._transaction() as conn:
            return sql_common.consume_challenge(_PgTx(conn), user_id, challenge)

    # -- FleetAssignmentStore (ADR 0013) ----------------------------------------------

    def get_fleet_assignment(self, user_id: bytes) -> str | None:
        with self._pool.connection() as conn:
            return sql_common.get_fleet_assignment(_PgTx(conn), user_id)

    def set_fleet_assignment(self, user_id: bytes, fleet: str, assigned_at: float) -> None:
        sql_common.check_fleet_assignment(user_id, fleet)
        with self._transaction() as conn:  # one upsert: atomic on its own
            sql_common.set_fleet_assignment(_PgTx(conn), user_id, fleet, assigned_at)

    def clear_fleet_assignment(self, user_id: bytes, fleet: str) -> bool:
        sql_common.check_fleet_assignment(user_id, fleet)
        with self._transaction() as conn:
            return sql_common.clear_fleet_assignment(_PgTx(conn), user_id, fleet)

    def count_fleet_assignments(self, fleet: str) -> int:
        with self._pool.connection() as conn:
            return sql_common.count_fleet_assignments(_PgTx(conn), fleet)

    def close(self) -> None:
        self._pool.close()
