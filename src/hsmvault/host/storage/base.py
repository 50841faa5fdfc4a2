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
from typing import Protocol

__all__ = ["BackupMeta", "BlobStore", "MetadataStore", "UploadMeta"]


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
