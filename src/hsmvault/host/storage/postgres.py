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


class PostgresMetadataStore(sql_common.SqlMetadataStore):
    """Metadata in the PostgreSQL database named by ``dsn``."""

    _integrity_error = psycopg.errors.UniqueViolation
    # DELETE ... RETURNING first: raising inside the transaction rolls it back.
    _delete_returning = True
    _collate_c = True

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

    @contextmanager
    def _read_tx(self) -> Iterator[sql_common.Tx]:
        with self._pool.connection() as conn:
            yield _PgTx(conn)

    @contextmanager
    def _write_tx(self, lock: tuple[bytes, str] | None = None) -> Iterator[sql_common.Tx]:
        with self._transaction(lock) as conn:
            yield _PgTx(conn)

    def close(self) -> None:
        self._pool.close()
