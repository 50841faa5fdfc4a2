"""Grammar checks shared by the storage adapters.

Blob keys are chosen by the gateway, but every adapter still checks them strictly so a
bug upstream can never turn a key into a path outside the store (``..``, absolute paths,
backslashes, NUL, control or non-ASCII characters).

Blob key grammar (ASCII only)::

    key     = segment *( "/" segment )          ; 1..16 segments, at most 512 chars
    segment = safe *( safe / "." )              ; 1..128 chars
    safe    = ALPHA / DIGIT / "_" / "-"

So a segment never starts with a dot (no ``.``/``..``, no hidden files), and there are
no empty segments, leading or trailing slashes.
"""

from __future__ import annotations

import re

from hsmvault.errors import InvalidParameter

__all__ = [
    "MAX_KEY_LENGTH",
    "MAX_SEGMENTS",
    "MAX_SEGMENT_LENGTH",
    "check_backup_id",
    "check_blob_key",
    "check_chunk_size",
    "check_upload_fields",
    "check_user_id",
    "is_valid_blob_key",
]

MAX_KEY_LENGTH = 512
MAX_SEGMENTS = 16
MAX_SEGMENT_LENGTH = 128

_SEGMENT = rf"[A-Za-z0-9_-][A-Za-z0-9_.-]{{0,{MAX_SEGMENT_LENGTH - 1}}}"
_KEY_RE = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT}){{0,{MAX_SEGMENTS - 1}}}")
_BACKUP_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


def is_valid_blob_key(key: object) -> bool:
    """Whether ``key`` is a string in the blob key grammar."""
    return (
        isinstance(key, str) and len(key) <= MAX_KEY_LENGTH and _KEY_RE.fullmatch(key) is not None
    )


def check_blob_key(key: str) -> str:
    """Return ``key`` if it is in the blob key grammar, else raise InvalidParameter."""
    if not is_valid_blob_key(key):
        # The key is not secret, but it may be long or binary: do not echo it.
        raise InvalidParameter("blob key is not in the key grammar")
    return key


def check_chunk_size(chunk_size: int) -> int:
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size <= 0:
        raise InvalidParameter("chunk_size must be a positive integer")
    return chunk_size


def check_user_id(user_id: bytes) -> bytes:
    """User ids are the token's ``sub`` as UTF-8: 1..255 bytes (ADR 0008)."""
    if not isinstance(user_id, bytes) or not 1 <= len(user_id) <= 255:
        raise InvalidParameter("user_id must be 1..255 bytes")
    return user_id


def check_backup_id(backup_id: str) -> str:
    """Backup ids are 1..64 chars of ``[A-Za-z0-9_-]`` (ADR 0008)."""
    if not isinstance(backup_id, str) or _BACKUP_ID_RE.fullmatch(backup_id) is None:
        raise InvalidParameter("backup_id must be 1..64 characters of [A-Za-z0-9_-]")
    return backup_id


def check_upload_fields(upload_id: str, blob_key: str, size: int, sha256: str, label: str) -> None:
    """Field checks for a new upload row (sizes, lowercase hex digest, bounded label)."""
    if not isinstance(upload_id, str) or _BACKUP_ID_RE.fullmatch(upload_id) is None:
        raise InvalidParameter("upload_id must be 1..64 characters of [A-Za-z0-9_-]")
    check_blob_key(blob_key)
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size < 1 << 62:
        raise InvalidParameter("size must be a non-negative integer")
    if not isinstance(sha256, str) or _SHA256_RE.fullmatch(sha256) is None:
        raise InvalidParameter("sha256 must be 64 lowercase hex digits")
    if not isinstance(label, str) or len(label) > 1024 or "\x00" in label:
        raise InvalidParameter("label must be at most 1024 characters without NUL")
