"""The storage contracts of the gateway (ADR 0008). Every adapter passes the same
contract tests.

Blobs are addressed by opaque keys chosen by the gateway (e.g.
``"users/<hex user>/backups/<id>/<generation>"``). A committed backup is switched in
metadata only after its blob is complete, so a crash mid-upload leaves the previous
backup intact.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, Protocol, runtime_checkable

__all__ = [
    "PASSKEY_CEREMONIES",
    "BackupMeta",
    "BlobStore",
    "FleetAssignmentStore",
    "MetadataStore",
    "PasskeyChallenge",
    "PasskeyRecord",
    "PasskeyStore",
    "UploadMeta",
]


class BlobStore(Protocol):
    """Append-friendly object storage for ciphertext.

    Contract: ``append`` at an offset other than the current size raises
    :class:`hsmvault.errors.InvalidParameter`; ``read`` streams the whole object in
    chunks; a missing key raises :class:`KeyError`; ``delete`` of a missing key is a
    no-op; ``size`` of a missing key is ``None``.

    Details every adapter follows (checked by ``tests/host/storage/``):

    * Keys follow the strict grammar of :mod:`hsmvault.host.storage.validation`
      (``/``-separated segments of ``[A-Za-z0-9_-][A-Za-z0-9_.-]*``); any other key
      raises ``InvalidParameter`` in every method.
    * ``append(key, 0, b"")`` creates an empty object; an append past the end of a
      missing key creates nothing. Of racing appends at one offset exactly one wins.
    * ``read`` raises ``KeyError`` when called, before the first chunk, so a caller can
      answer 404 before it starts streaming; chunks are at most ``chunk_size`` bytes.
    """

    def append(self, key: str, offset: int, data: bytes) -> int:
        """Write ``data`` at ``offset`` (must equal the current size); return new size."""
        ...

    def size(self, key: str) -> int | None: ...

    def read(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]: ...

    def delete(self, key: str) -> None: ...


@dataclass(frozen=True, slots=True)
class BackupMeta:
    """A committed backup as the gateway lists it (no secrets: sizes and digests of
    ciphertext)."""

    user_id: bytes
    backup_id: str
    blob_key: str
    size: int
    sha256: str
    label: str
    created_at: float


@dataclass(frozen=True, slots=True)
class UploadMeta:
    """An upload in progress (resumable: same size and digest resume it)."""

    user_id: bytes
    backup_id: str
    upload_id: str
    blob_key: str
    size: int
    sha256: str
    label: str
    created_at: float


class MetadataStore(Protocol):
    """Transactional metadata. ``commit_upload`` atomically makes the upload the
    backup's current version and returns the blob key of the version it replaced (for
    the caller to delete), or ``None``.

    ``commit_upload`` of an upload that does not exist raises :class:`KeyError` (a
    repeated commit of the already current version returns ``None``); one whose
    ``blob_key``, ``size`` or ``sha256`` differ from the stored upload raises
    ``InvalidParameter``. Ids outside ADR 0008's ranges raise ``InvalidParameter`` in
    ``create_upload``."""

    def create_upload(self, upload: UploadMeta) -> UploadMeta:
        """Insert, or return the existing upload of the same user, backup, size and
        sha256 (idempotent resume)."""
        ...

    def get_upload(self, user_id: bytes, backup_id: str, upload_id: str) -> UploadMeta | None: ...

    def commit_upload(self, upload: UploadMeta, committed_at: float) -> str | None: ...

    def get_backup(self, user_id: bytes, backup_id: str) -> BackupMeta | None: ...

    def list_backups(self, user_id: bytes) -> list[BackupMeta]: ...

    def delete_backup(self, user_id: bytes, backup_id: str) -> BackupMeta | None:
        """Remove and return the backup (its blob is the caller's to delete)."""
        ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------- passkeys

#: The WebAuthn ceremonies a challenge can be issued for (ADR 0011).
PASSKEY_CEREMONIES: Final = ("registration", "authentication", "salt-rotation")


@dataclass(frozen=True, slots=True)
class PasskeyRecord:
    """One WebAuthn credential of a user (ADR 0011). Nothing here is secret: the public
    key, the PRF salt (an input, not the PRF output) and the wrapped key (ciphertext
    under a key the gateway never sees).

    ``credential_id`` is globally unique (1..1023 bytes); ``public_key`` is the
    credential's COSE_Key, CBOR-encoded as the authenticator sent it; ``prf_salt`` is
    32 bytes; ``sign_count`` is the authenticator's last signature counter (u32)."""

    user_id: bytes
    credential_id: bytes
    public_key: bytes
    sign_count: int
    prf_salt: bytes
    wrapped_key: bytes | None
    created_at: float
    last_used_at: float | None


@dataclass(frozen=True, slots=True)
class PasskeyChallenge:
    """A WebAuthn challenge the gateway issued, bound to ``user_id`` and ``ceremony``
    (one of :data:`PASSKEY_CEREMONIES`), valid until ``expires_at``.

    * ``credential_id`` — the only credential that may answer (salt rotation, or an
      authentication asked for one credential); ``None``: any of the user's.
    * ``new_prf_salt`` — registration: the new credential's salt; salt rotation: the
      salt that replaces the current one.
    * ``offered_salts`` — authentication: ``(credential id, salt)`` pairs the options
      named, so an answer made with a salt that has since been rotated is detected.
    * ``consumed`` — as returned by :meth:`PasskeyStore.consume_challenge`: ``True`` if
      the challenge had already been consumed before that call (a replay)."""

    challenge: bytes
    user_id: bytes
    ceremony: str
    expires_at: float
    credential_id: bytes | None = None
    new_prf_salt: bytes | None = None
    offered_salts: tuple[tuple[bytes, bytes], ...] = ()
    consumed: bool = False


@runtime_checkable
class PasskeyStore(Protocol):
    """Passkey credentials and their single-use challenges (ADR 0011), kept by the
    metadata store. Every adapter passes ``tests/host/storage/test_passkey_contract.py``.

    Contract:

    * ``add_passkey`` raises :class:`~hsmvault.errors.InvalidParameter` if the credential
      id is already registered (to any user) or a field is out of range.
    * ``get_passkey``/``update_passkey``/``delete_passkey`` see only the credentials of
      the given user.
    * ``list_passkeys`` orders by ``created_at``, then credential id (bytewise).
    * ``update_passkey`` is a compare-and-set: it applies only while the stored sign
      count and PRF salt still equal the expected ones, sets the new count and
      ``last_used_at``, and — when given — the new salt and wrapped key *together*, in
      one transaction (a new salt without a new wrapped key is refused with
      ``InvalidParameter``: it would orphan the stored wrap). It returns the updated
      record, or ``None`` if the credential is gone or changed meanwhile.
    * ``put_challenge`` stores a challenge (unique) and may delete challenges that
      expired before ``purge_before``.
    * ``consume_challenge`` atomically marks the user's challenge consumed and returns
      it as it was (``consumed`` tells whether it had been consumed before); ``None``
      if the user has no such challenge. Of racing calls exactly one sees
      ``consumed=False``.
    """

    def add_passkey(self, record: PasskeyRecord) -> None: ...

    def get_passkey(self, user_id: bytes, credential_id: bytes) -> PasskeyRecord | None: ...

    def list_passkeys(self, user_id: bytes) -> list[PasskeyRecord]: ...

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
    ) -> PasskeyRecord | None: ...

    def delete_passkey(self, user_id: bytes, credential_id: bytes) -> bool: ...

    def put_challenge(self, challenge: PasskeyChallenge, *, purge_before: float) -> None: ...

    def consume_challenge(self, user_id: bytes, challenge: bytes) -> PasskeyChallenge | None: ...


# --------------------------------------------------------------------------- fleet routing


@runtime_checkable
class FleetAssignmentStore(Protocol):
    """Which fleet holds each registered user's vault record (ADR 0013), kept by the
    metadata store. The gateway routes a user with an assignment to that fleet, a user
    without one to the active fleets. Fleet names are the gateway config's routing-table
    names (1..128 printable characters). Every adapter passes
    ``tests/host/storage/test_assignment_contract.py``.

    Contract:

    * ``set_fleet_assignment`` inserts or replaces the user's assignment (last write
      wins); ``get_fleet_assignment`` returns it, or ``None``.
    * ``clear_fleet_assignment`` removes the assignment only while it still names
      ``fleet`` (a compare-and-delete: a user who already moved keeps the new one) and
      says whether it did.
    * ``count_fleet_assignments`` is how many users are assigned to ``fleet`` (how many
      still have to move before a retiring fleet is decommissioned).
    * Bad user ids or fleet names raise :class:`~hsmvault.errors.InvalidParameter`.
    """

    def get_fleet_assignment(self, user_id: bytes) -> str | None: ...

    def set_fleet_assignment(self, user_id: bytes, fleet: str, assigned_at: float) -> None: ...

    def clear_fleet_assignment(self, user_id: bytes, fleet: str) -> bool: ...

    def count_fleet_assignments(self, fleet: str) -> int: ...
