"""The engine-independent half of the SQL :class:`~hsmvault.host.storage.base.MetadataStore`
adapters (:mod:`.sqlite`, :mod:`.postgres`).

The flows here run inside a transaction (or on a plain connection, for reads) that the
adapter opens; they talk to it through :class:`Tx`, a tiny cursor interface. Statements
are written with ``?`` placeholders; :func:`pyformat` turns them into ``%s`` for
PostgreSQL. :class:`SqlMetadataStore` holds the adapters' store methods, each a call of
the flow of the same name; connections, locking, migration locking and the driver's
integrity error stay in the adapters.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, ClassVar, Protocol

from hsmvault.errors import InvalidParameter, ProtocolStateError
from hsmvault.host.storage.base import BackupMeta, PasskeyChallenge, PasskeyRecord, UploadMeta
from hsmvault.host.storage.validation import (
    check_backup_id,
    check_credential_id,
    check_fleet_name,
    check_passkey_challenge,
    check_passkey_record,
    check_prf_salt,
    check_sign_count,
    check_upload_fields,
    check_user_id,
    check_wrapped_key,
)

__all__ = [
    "SELECT_SCHEMA_VERSION",
    "Params",
    "Row",
    "SqlMetadataStore",
    "Tx",
    "add_passkey",
    "backup_from_row",
    "challenge_from_row",
    "check_fleet_assignment",
    "check_passkey_challenge",
    "check_passkey_ids",
    "check_passkey_record",
    "check_passkey_update",
    "check_upload",
    "clear_fleet_assignment",
    "commit_upload",
    "consume_challenge",
    "count_fleet_assignments",
    "create_upload",
    "decode_offered_salts",
    "delete_backup",
    "delete_passkey",
    "encode_offered_salts",
    "fleet_assignment_tables",
    "get_backup",
    "get_fleet_assignment",
    "get_passkey",
    "get_upload",
    "list_backups",
    "list_passkeys",
    "migrate",
    "passkey_from_row",
    "passkey_tables",
    "put_challenge",
    "pyformat",
    "set_fleet_assignment",
    "update_passkey",
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


# -- passkeys (ADR 0011) --------------------------------------------------------------


def passkey_tables(*, blob: str, bigint: str, real: str, boolean: str) -> tuple[str, ...]:
    """The passkey tables' DDL with the engine's type names filled in."""
    return (
        f"""CREATE TABLE passkeys (
            credential_id {blob}   NOT NULL PRIMARY KEY,
            user_id       {blob}   NOT NULL,
            public_key    {blob}   NOT NULL,
            sign_count    {bigint} NOT NULL CHECK (sign_count >= 0),
            prf_salt      {blob}   NOT NULL,
            wrapped_key   {blob},
            created_at    {real}   NOT NULL,
            last_used_at  {real}
        )""",
        "CREATE INDEX passkeys_by_user ON passkeys (user_id, created_at)",
        f"""CREATE TABLE passkey_challenges (
            challenge     {blob}    NOT NULL PRIMARY KEY,
            user_id       {blob}    NOT NULL,
            ceremony      TEXT      NOT NULL,
            expires_at    {real}    NOT NULL,
            credential_id {blob},
            new_prf_salt  {blob},
            offered_salts {blob}    NOT NULL,
            consumed      {boolean} NOT NULL
        )""",
        "CREATE INDEX passkey_challenges_by_expiry ON passkey_challenges (expires_at)",
    )


_INSERT_PASSKEY = (
    "INSERT INTO passkeys (user_id, credential_id, public_key, sign_count, prf_salt, "
    "wrapped_key, created_at, last_used_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_SELECT_PASSKEY = (
    "SELECT user_id, credential_id, public_key, sign_count, prf_salt, wrapped_key, "
    "created_at, last_used_at FROM passkeys WHERE user_id = ? AND credential_id = ?"
)
_LIST_PASSKEYS = (
    "SELECT user_id, credential_id, public_key, sign_count, prf_salt, wrapped_key, "
    "created_at, last_used_at FROM passkeys WHERE user_id = ? "
    "ORDER BY created_at, credential_id"
)
_DELETE_PASSKEY = (
    "DELETE FROM passkeys WHERE user_id = ? AND credential_id = ? RETURNING credential_id"
)
# The compare-and-set updates: (count, last used) [, wrapped key [, salt]].
_UPDATE_PASSKEY_USE = (
    "UPDATE passkeys SET sign_count = ?, last_used_at = ? "
    "WHERE user_id = ? AND credential_id = ? AND sign_count = ? AND prf_salt = ? "
    "RETURNING user_id, credential_id, public_key, sign_count, prf_salt, wrapped_key, "
    "created_at, last_used_at"
)
_UPDATE_PASSKEY_WRAP = (
    "UPDATE passkeys SET sign_count = ?, last_used_at = ?, wrapped_key = ? "
    "WHERE user_id = ? AND credential_id = ? AND sign_count = ? AND prf_salt = ? "
    "RETURNING user_id, credential_id, public_key, sign_count, prf_salt, wrapped_key, "
    "created_at, last_used_at"
)
_UPDATE_PASSKEY_SALT_AND_WRAP = (
    "UPDATE passkeys SET sign_count = ?, last_used_at = ?, wrapped_key = ?, prf_salt = ? "
    "WHERE user_id = ? AND credential_id = ? AND sign_count = ? AND prf_salt = ? "
    "RETURNING user_id, credential_id, public_key, sign_count, prf_salt, wrapped_key, "
    "created_at, last_used_at"
)
_INSERT_CHALLENGE = (
    "INSERT INTO passkey_challenges (challenge, user_id, ceremony, expires_at, "
    "credential_id, new_prf_salt, offered_salts, consumed) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_PURGE_CHALLENGES = "DELETE FROM passkey_challenges WHERE expires_at < ?"
_CONSUME_CHALLENGE = (
    "UPDATE passkey_challenges SET consumed = ? "
    "WHERE challenge = ? AND user_id = ? AND consumed = ? "
    "RETURNING challenge, user_id, ceremony, expires_at, credential_id, new_prf_salt, "
    "offered_salts, consumed"
)
_SELECT_CHALLENGE = (
    "SELECT challenge, user_id, ceremony, expires_at, credential_id, new_prf_salt, "
    "offered_salts, consumed FROM passkey_challenges WHERE challenge = ? AND user_id = ?"
)


def encode_offered_salts(pairs: Sequence[tuple[bytes, bytes]]) -> bytes:
    """``(credential id, salt)`` pairs as one column value: per pair, the id's length
    (2 bytes, big-endian), the id, then the 32-byte salt."""
    out = bytearray()
    for credential_id, salt in pairs:
        out += len(credential_id).to_bytes(2, "big") + credential_id + salt
    return bytes(out)


def decode_offered_salts(data: bytes) -> tuple[tuple[bytes, bytes], ...]:
    """Inverse of :func:`encode_offered_salts`; :class:`InvalidParameter` if malformed."""
    pairs: list[tuple[bytes, bytes]] = []
    view, at = bytes(data), 0
    while at < len(view):
        if at + 2 > len(view):
            raise InvalidParameter("stored offered salts are malformed")
        length = int.from_bytes(view[at : at + 2], "big")
        end = at + 2 + length + 32
        if length == 0 or end > len(view):
            raise InvalidParameter("stored offered salts are malformed")
        pairs.append((view[at + 2 : at + 2 + length], view[at + 2 + length : end]))
        at = end
    return tuple(pairs)


def _optional_bytes(value: object) -> bytes | None:
    return None if value is None else bytes(value)  # type: ignore[call-overload]


def passkey_from_row(row: Row) -> PasskeyRecord:
    user_id, credential_id, public_key, sign_count, salt, wrapped, created, last_used = row
    return PasskeyRecord(
        user_id=bytes(user_id),
        credential_id=bytes(credential_id),
        public_key=bytes(public_key),
        sign_count=int(sign_count),
        prf_salt=bytes(salt),
        wrapped_key=_optional_bytes(wrapped),
        created_at=float(created),
        last_used_at=None if last_used is None else float(last_used),
    )


def challenge_from_row(row: Row) -> PasskeyChallenge:
    challenge, user_id, ceremony, expires, credential_id, new_salt, offered, consumed = row
    return PasskeyChallenge(
        challenge=bytes(challenge),
        user_id=bytes(user_id),
        ceremony=str(ceremony),
        expires_at=float(expires),
        credential_id=_optional_bytes(credential_id),
        new_prf_salt=_optional_bytes(new_salt),
        offered_salts=decode_offered_salts(bytes(offered)),
        consumed=bool(consumed),
    )


def add_passkey(tx: Tx, record: PasskeyRecord) -> None:
    """Insert ``record`` (the adapter maps the driver's integrity error, a taken
    credential id, to :class:`InvalidParameter`)."""
    tx.execute(
        _INSERT_PASSKEY,
        (
            record.user_id,
            record.credential_id,
            record.public_key,
            record.sign_count,
            record.prf_salt,
            record.wrapped_key,
            record.created_at,
            record.last_used_at,
        ),
    )


def get_passkey(tx: Tx, user_id: bytes, credential_id: bytes) -> PasskeyRecord | None:
    row = tx.fetchone(_SELECT_PASSKEY, (user_id, credential_id))
    return None if row is None else passkey_from_row(row)


def list_passkeys(tx: Tx, user_id: bytes) -> list[PasskeyRecord]:
    return [passkey_from_row(r) for r in tx.fetchall(_LIST_PASSKEYS, (user_id,))]


def check_passkey_update(
    sign_count: int, prf_salt: bytes | None, wrapped_key: bytes | None
) -> None:
    """The argument checks of ``PasskeyStore.update_passkey`` (before any transaction;
    the tests' in-memory store makes them too)."""
    check_sign_count(sign_count)
    if prf_salt is not None:
        check_prf_salt(prf_salt)
        if wrapped_key is None:
            raise InvalidParameter("a new PRF salt needs a new wrapped key")
    check_wrapped_key(wrapped_key)


def update_passkey(
    tx: Tx,
    user_id: bytes,
    credential_id: bytes,
    *,
    expected_sign_count: int,
    expected_prf_salt: bytes,
    sign_count: int,
    last_used_at: float,
    prf_salt: bytes | None,
    wrapped_key: bytes | None,
) -> PasskeyRecord | None:
    """The compare-and-set of ``PasskeyStore.update_passkey`` (arguments already
    checked by :func:`check_passkey_update`)."""
    where = [user_id, credential_id, expected_sign_count, expected_prf_salt]
    if prf_salt is not None and wrapped_key is not None:
        sql, params = (
            _UPDATE_PASSKEY_SALT_AND_WRAP,
            [sign_count, last_used_at, wrapped_key, prf_salt],
        )
    elif wrapped_key is not None:
        sql, params = _UPDATE_PASSKEY_WRAP, [sign_count, last_used_at, wrapped_key]
    else:
        sql, params = _UPDATE_PASSKEY_USE, [sign_count, last_used_at]
    rows = tx.fetchall(sql, params + where)
    return passkey_from_row(rows[0]) if rows else None


def delete_passkey(tx: Tx, user_id: bytes, credential_id: bytes) -> bool:
    return bool(tx.fetchall(_DELETE_PASSKEY, (user_id, credential_id)))


def put_challenge(tx: Tx, challenge: PasskeyChallenge, purge_before: float) -> None:
    tx.execute(_PURGE_CHALLENGES, (purge_before,))
    tx.execute(
        _INSERT_CHALLENGE,
        (
            challenge.challenge,
            challenge.user_id,
            challenge.ceremony,
            challenge.expires_at,
            challenge.credential_id,
            challenge.new_prf_salt,
            encode_offered_salts(challenge.offered_salts),
            False,
        ),
    )


def consume_challenge(tx: Tx, user_id: bytes, challenge: bytes) -> PasskeyChallenge | None:
    """Mark consumed (a conditional UPDATE: of racing callers one wins) and return
    the challenge as it was before."""
    rows = tx.fetchall(_CONSUME_CHALLENGE, (True, challenge, user_id, False))
    if rows:
        return dataclasses.replace(challenge_from_row(rows[0]), consumed=False)
    row = tx.fetchone(_SELECT_CHALLENGE, (challenge, user_id))
    return None if row is None else challenge_from_row(row)


def check_passkey_ids(user_id: bytes, credential_id: bytes) -> None:
    check_user_id(user_id)
    check_credential_id(credential_id)


# -- fleet assignments (ADR 0013) -------------------------------------------------------


def fleet_assignment_tables(*, blob: str, real: str) -> tuple[str, ...]:
    """The fleet assignment table's DDL with the engine's type names filled in."""
    return (
        f"""CREATE TABLE fleet_assignments (
            user_id     {blob} NOT NULL PRIMARY KEY,
            fleet       TEXT   NOT NULL,
            assigned_at {real} NOT NULL
        )""",
        "CREATE INDEX fleet_assignments_by_fleet ON fleet_assignments (fleet)",
    )


_SELECT_ASSIGNMENT = "SELECT fleet FROM fleet_assignments WHERE user_id = ?"
_UPSERT_ASSIGNMENT = (
    "INSERT INTO fleet_assignments (user_id, fleet, assigned_at) VALUES (?, ?, ?) "
    "ON CONFLICT (user_id) DO UPDATE SET fleet = excluded.fleet, "
    "assigned_at = excluded.assigned_at"
)
_CLEAR_ASSIGNMENT = (
    "DELETE FROM fleet_assignments WHERE user_id = ? AND fleet = ? RETURNING user_id"
)
_COUNT_ASSIGNMENTS = "SELECT COUNT(*) FROM fleet_assignments WHERE fleet = ?"


def check_fleet_assignment(user_id: bytes, fleet: str) -> None:
    """The argument checks of the assignment calls (before any transaction)."""
    check_user_id(user_id)
    check_fleet_name(fleet)


def get_fleet_assignment(tx: Tx, user_id: bytes) -> str | None:
    check_user_id(user_id)
    row = tx.fetchone(_SELECT_ASSIGNMENT, (user_id,))
    return None if row is None else str(row[0])


def set_fleet_assignment(tx: Tx, user_id: bytes, fleet: str, assigned_at: float) -> None:
    """Insert or replace (arguments already checked by :func:`check_fleet_assignment`)."""
    tx.execute(_UPSERT_ASSIGNMENT, (user_id, fleet, float(assigned_at)))


def clear_fleet_assignment(tx: Tx, user_id: bytes, fleet: str) -> bool:
    """Delete the assignment if it still names ``fleet``; whether it did."""
    return bool(tx.fetchall(_CLEAR_ASSIGNMENT, (user_id, fleet)))


def count_fleet_assignments(tx: Tx, fleet: str) -> int:
    check_fleet_name(fleet)
    row = tx.fetchone(_COUNT_ASSIGNMENTS, (fleet,))
    return 0 if row is None else int(row[0])


# -- the adapters' methods ---------------------------------------------------------------


class SqlMetadataStore(abc.ABC):
    """The :class:`~hsmvault.host.storage.base.MetadataStore`,
    :class:`~hsmvault.host.storage.base.PasskeyStore` and
    :class:`~hsmvault.host.storage.base.FleetAssignmentStore` methods of the SQL
    adapters, written once over the flows above. An adapter supplies connections and
    transactions (:meth:`_read_tx`, :meth:`_write_tx`), :meth:`close` and three class
    attributes. Each method checks its arguments before any transaction is opened, then
    runs the module-level flow of the same name."""

    #: The driver's exception for a violated ``UNIQUE``/``PRIMARY KEY`` constraint
    #: (mapped to :class:`InvalidParameter`).
    _integrity_error: ClassVar[type[Exception]]
    #: How ``commit_upload`` takes the upload row (see :func:`commit_upload`).
    _delete_returning: ClassVar[bool]
    #: Whether ``list_backups`` orders under an explicit ``COLLATE "C"``.
    _collate_c: ClassVar[bool]

    @abc.abstractmethod
    def _read_tx(self) -> AbstractContextManager[Tx]:
        """A connection for reads outside an explicit transaction."""

    @abc.abstractmethod
    def _write_tx(self, lock: tuple[bytes, str] | None = None) -> AbstractContextManager[Tx]:
        """One write transaction: committed when the block exits normally, rolled back
        if it raises. With ``lock``, writes of that ``(user_id, backup_id)`` serialize
        (so each replaced blob key is returned to exactly one caller)."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def schema_version(self) -> int:
        with self._read_tx() as tx:
            row = tx.fetchone(SELECT_SCHEMA_VERSION)
        assert row is not None
        return int(row[0])

    # -- MetadataStore ---------------------------------------------------------------

    def create_upload(self, upload: UploadMeta) -> UploadMeta:
        check_upload(upload)
        try:
            with self._write_tx((upload.user_id, upload.backup_id)) as tx:
                return create_upload(tx, upload)
        except self._integrity_error:
            raise InvalidParameter("upload_id already used for another upload") from None

    def get_upload(self, user_id: bytes, backup_id: str, upload_id: str) -> UploadMeta | None:
        with self._read_tx() as tx:
            return get_upload(tx, user_id, backup_id, upload_id)

    def commit_upload(self, upload: UploadMeta, committed_at: float) -> str | None:
        """Atomically make ``upload`` the backup's current version; return the replaced
        version's blob key (``None`` if there was none, or on a repeated commit).
        Raises :class:`KeyError` if the upload does not exist."""
        with self._write_tx((upload.user_id, upload.backup_id)) as tx:
            return commit_upload(tx, upload, committed_at, delete_returning=self._delete_returning)

    def get_backup(self, user_id: bytes, backup_id: str) -> BackupMeta | None:
        with self._read_tx() as tx:
            return get_backup(tx, user_id, backup_id)

    def list_backups(self, user_id: bytes) -> list[BackupMeta]:
        with self._read_tx() as tx:
            return list_backups(tx, user_id, collate_c=self._collate_c)

    def delete_backup(self, user_id: bytes, backup_id: str) -> BackupMeta | None:
        with self._write_tx((user_id, backup_id)) as tx:
            return delete_backup(tx, user_id, backup_id)

    # -- PasskeyStore (ADR 0011) ------------------------------------------------------

    def add_passkey(self, record: PasskeyRecord) -> None:
        check_passkey_record(record)
        try:
            with self._write_tx() as tx:
                add_passkey(tx, record)
        except self._integrity_error:
            raise InvalidParameter("credential id already registered") from None

    def get_passkey(self, user_id: bytes, credential_id: bytes) -> PasskeyRecord | None:
        with self._read_tx() as tx:
            return get_passkey(tx, user_id, credential_id)

    def list_passkeys(self, user_id: bytes) -> list[PasskeyRecord]:
        with self._read_tx() as tx:
            return list_passkeys(tx, user_id)

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
        """One conditional ``UPDATE`` in a write transaction: the compare-and-set is
        atomic."""
        check_passkey_update(sign_count, prf_salt, wrapped_key)
        with self._write_tx() as tx:
            return update_passkey(
                tx,
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
        with self._write_tx() as tx:
            return delete_passkey(tx, user_id, credential_id)

    def put_challenge(self, challenge: PasskeyChallenge, *, purge_before: float) -> None:
        check_passkey_challenge(challenge)
        try:
            with self._write_tx() as tx:
                put_challenge(tx, challenge, purge_before)
        except self._integrity_error:
            raise InvalidParameter("challenge already issued") from None

    def consume_challenge(self, user_id: bytes, challenge: bytes) -> PasskeyChallenge | None:
        with self._write_tx() as tx:
            return consume_challenge(tx, user_id, challenge)

    # -- FleetAssignmentStore (ADR 0013) ----------------------------------------------

    def get_fleet_assignment(self, user_id: bytes) -> str | None:
        with self._read_tx() as tx:
            return get_fleet_assignment(tx, user_id)

    def set_fleet_assignment(self, user_id: bytes, fleet: str, assigned_at: float) -> None:
        check_fleet_assignment(user_id, fleet)
        with self._write_tx() as tx:  # one upsert: atomic on its own
            set_fleet_assignment(tx, user_id, fleet, assigned_at)

    def clear_fleet_assignment(self, user_id: bytes, fleet: str) -> bool:
        check_fleet_assignment(user_id, fleet)
        with self._write_tx() as tx:
            return clear_fleet_assignment(tx, user_id, fleet)

    def count_fleet_assignments(self, fleet: str) -> int:
        with self._read_tx() as tx:
            return count_fleet_assignments(tx, fleet)
