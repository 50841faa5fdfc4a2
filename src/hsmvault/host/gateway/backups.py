"""Backup storage behind ``/v1/backups`` (ADR 0008): resumable, idempotent uploads and
an atomic switch on commit.

The gateway stores ciphertext it cannot read; what it checks is only size and SHA-256.

* **Start** (``POST …/uploads``): the metadata store returns the existing upload of the
  same user, backup, size and digest (resume), or records a new one with its own staging
  blob key ``users/<user key>/backups/<backup id>/<upload id>``. The answer is the
  upload id and the staging blob's current size (the offset to continue from).
* **Chunk** (``PUT …/uploads/{id}``): appended only at the current offset (else 409 with
  that offset) and never past the declared size.
* **Commit**: the staging blob must have the declared size (else 409) and digest (else
  400, and the staging blob is discarded so the upload restarts at offset 0); then the
  metadata store switches the backup to it in one transaction and the replaced blob is
  deleted. A crash before the switch leaves the previous backup intact; a crash after it
  leaves at most an orphaned old blob. A repeated commit returns the committed backup.

``<user key>`` is a hash of the user id, so blob keys have a fixed shape whatever the
user id holds. All methods block (storage I/O): call them from a worker thread.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import Final

from hsmvault.errors import InvalidParameter
from hsmvault.host.storage.base import BackupMeta, BlobStore, MetadataStore, UploadMeta

from .errors import ApiError

__all__ = ["BACKUP_ID_PATTERN", "UPLOAD_ID_PATTERN", "BackupService"]

#: ADR 0008: 1..64 characters of ``[A-Za-z0-9_-]``.
BACKUP_ID_PATTERN: Final = r"^[A-Za-z0-9_-]{1,64}$"
#: Upload ids are 16 random bytes in lowercase hex.
UPLOAD_ID_PATTERN: Final = r"^[0-9a-f]{32}$"
_USER_KEY_LABEL: Final = b"hsmvault/gateway/blob-user-key/v1\x00"
_LOCK_STRIPES: Final = 64


def _user_key(user_id: bytes) -> str:
    return hashlib.sha256(_USER_KEY_LABEL + user_id).hexdigest()


def _not_found(what: str) -> ApiError:
    return ApiError(404, "not_found", f"no such {what}")


class BackupService:
    """The upload, commit, list, read and delete logic over a blob and a metadata store."""

    def __init__(
        self,
        blobs: BlobStore,
        metadata: MetadataStore,
        *,
        max_backup_size: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._blobs = blobs
        self._metadata = metadata
        self._max_size = max_backup_size
        self._clock = clock
        # Serializes chunk appends and commits of one upload inside this process; the
        # blob store's offset check is what protects against other gateway processes.
        self._locks = [threading.Lock() for _ in range(_LOCK_STRIPES)]

    def _lock(self, blob_key: str) -> threading.Lock:
        digest = hashlib.sha256(blob_key.encode()).digest()
        return self._locks[digest[0] % _LOCK_STRIPES]

    def blob_key(self, user_id: bytes, backup_id: str, upload_id: str) -> str:
        return f"users/{_user_key(user_id)}/backups/{backup_id}/{upload_id}"

    # ------------------------------------------------------------------ uploads

    def start_upload(
        self, user_id: bytes, backup_id: str, size: int, sha256: str, label: str
    ) -> tuple[str, int]:
        """``(upload_id, offset)`` of a new or resumed upload."""
        if size > self._max_size:
            raise ApiError(413, "too_large", f"a backup is at most {self._max_size} bytes")
        upload_id = secrets.token_hex(16)
        wanted = UploadMeta(
            user_id=user_id,
            backup_id=backup_id,
            upload_id=upload_id,
            blob_key=self.blob_key(user_id, backup_id, upload_id),
            size=size,
            sha256=sha256.lower(),
            label=label,
            created_at=self._clock(),
        )
        upload = self._metadata.create_upload(wanted)
        return upload.upload_id, self._blobs.size(upload.blob_key) or 0

    def _upload(self, user_id: bytes, backup_id: str, upload_id: str) -> UploadMeta:
        upload = self._metadata.get_upload(user_id, backup_id, upload_id)
        if upload is None:
            raise _not_found("upload")
        return upload

    def put_chunk(
        self, user_id: bytes, backup_id: str, upload_id: str, offset: int, data: bytes
    ) -> int:
        """Append ``data`` at ``offset``; the new offset."""
        upload = self._upload(user_id, backup_id, upload_id)
        with self._lock(upload.blob_key):
            current = self._blobs.size(upload.blob_key) or 0
            if offset != current:
                raise _offset_conflict(current)
            if offset + len(data) > upload.size:
                raise ApiError(400, "bad_request", "the chunk goes past the declared size")
            if not data:
                return current
            try:
                return self._blobs.append(upload.blob_key, offset, data)
            except InvalidParameter:
                raise _offset_conflict(self._blobs.size(upload.blob_key) or 0) from None

    def commit(self, user_id: bytes, backup_id: str, upload_id: str) -> BackupMeta:
        """Verify the staged blob and make it the backup; the committed backup."""
        upload = self._metadata.get_upload(user_id, backup_id, upload_id)
        if upload is None:
            # A repeated commit (its first answer lost): the backup already points here.
            backup = self._metadata.get_backup(user_id, backup_id)
            expected = self.blob_key(user_id, backup_id, upload_id)
            if backup is not None and hmac.compare_digest(backup.blob_key, expected):
                return backup
            raise _not_found("upload")
        with self._lock(upload.blob_key):
            current = self._blobs.size(upload.blob_key) or 0
            if current != upload.size:
                raise ApiError(
                    409,
                    "upload_incomplete",
                    f"{current} of {upload.size} bytes uploaded",
                    headers={"Upload-Offset": str(current)},
                    extra={"offset": current},
                )
            digest = hashlib.sha256()
            try:
                for chunk in self._blobs.read(upload.blob_key):
                    digest.update(chunk)
            except KeyError:
                raise _offset_conflict(0) from None
            if not hmac.compare_digest(digest.hexdigest(), upload.sha256):
                self._blobs.delete(upload.blob_key)  # restart this upload from offset 0
                raise ApiError(
                    400,
                    "digest_mismatch",
                    "the uploaded bytes do not have the declared SHA-256; upload again",
                )
            replaced = self._metadata.commit_upload(upload, self._clock())
            if replaced is not None and replaced != upload.blob_key:
                self._blobs.delete(replaced)
        backup = self._metadata.get_backup(user_id, backup_id)
        if backup is None:  # deleted concurrently, right after the commit
            raise _not_found("backup")
        return backup

    # ------------------------------------------------------------------ backups

    def list(self, user_id: bytes) -> list[BackupMeta]:
        return sorted(self._metadata.list_backups(user_id), key=lambda b: b.backup_id)

    def open(self, user_id: bytes, backup_id: str) -> tuple[BackupMeta, Iterator[bytes]]:
        """The backup and an iterator over its bytes. The first chunk is read here, so a
        missing blob is a 404 before any response starts."""
        backup = self._metadata.get_backup(user_id, backup_id)
        if backup is None:
            raise _not_found("backup")
        try:
            chunks = iter(self._blobs.read(backup.blob_key))
            first = next(chunks, b"")
        except KeyError:
            raise _not_found("backup") from None
        return backup, itertools.chain([first], chunks)

    def delete(self, user_id: bytes, backup_id: str) -> None:
        backup = self._metadata.delete_backup(user_id, backup_id)
        if backup is None:
            raise _not_found("backup")
        self._blobs.delete(backup.blob_key)


def _offset_conflict(current: int) -> ApiError:
    return ApiError(
        409,
        "offset_mismatch",
        f"the upload continues at offset {current}",
        headers={"Upload-Offset": str(current)},
        extra={"offset": current},
    )
