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
from hsmvault.host.storage.base import PASSKEY_CEREMONIES, PasskeyChallenge, PasskeyRecord

__all__ = [
    "MAX_KEY_LENGTH",
    "MAX_SEGMENTS",
    "MAX_SEGMENT_LENGTH",
    "check_backup_id",
    "check_blob_key",
    "check_chunk_size",
    "check_credential_id",
    "check_fleet_name",
    "check_passkey_challenge",
    "check_passkey_record",
    "check_prf_salt",
    "check_sign_count",
    "check_upload_fields",
    "check_user_id",
    "check_wrapped_key",
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


#: Fleet names (the gateway config's routing-table names) as stored in assignments.
MAX_FLEET_NAME_LEN = 128


def check_fleet_name(name: str) -> str:
    """A routing-table fleet name: 1..128 printable characters (ADR 0013)."""
    if (
        not isinstance(name, str)
        or not 1 <= len(name) <= MAX_FLEET_NAME_LEN
        or not name.isprintable()
    ):
        raise InvalidParameter(f"fleet name must be 1..{MAX_FLEET_NAME_LEN} printable characters")
    return name


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


# -- passkeys (ADR 0011) --------------------------------------------------------------

#: WebAuthn Level 3 §5.1: a credential id is at most 1023 bytes.
MAX_CREDENTIAL_ID_LEN = 1023
#: Bound on a stored COSE public key (an RSA-4096 key is ~550 bytes).
MAX_PUBLIC_KEY_LEN = 2048
#: Bound on a stored wrapped key (the ADR 0011 wrap is 93 bytes).
MAX_WRAPPED_KEY_LEN = 1024
PRF_SALT_LEN = 32


def _is_bytes(value: object, low: int, high: int) -> bool:
    return isinstance(value, bytes) and low <= len(value) <= high


def _is_time(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_credential_id(credential_id: bytes) -> bytes:
    if not _is_bytes(credential_id, 1, MAX_CREDENTIAL_ID_LEN):
        raise InvalidParameter(f"credential_id must be 1..{MAX_CREDENTIAL_ID_LEN} bytes")
    return credential_id


def check_prf_salt(salt: bytes) -> bytes:
    if not _is_bytes(salt, PRF_SALT_LEN, PRF_SALT_LEN):
        raise InvalidParameter(f"a PRF salt is {PRF_SALT_LEN} bytes")
    return salt


def check_sign_count(count: int) -> int:
    if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count < 1 << 32:
        raise InvalidParameter("a sign count is an unsigned 32-bit integer")
    return count


def check_wrapped_key(wrapped: bytes | None) -> bytes | None:
    if wrapped is not None and not _is_bytes(wrapped, 1, MAX_WRAPPED_KEY_LEN):
        raise InvalidParameter(f"a wrapped key is 1..{MAX_WRAPPED_KEY_LEN} bytes")
    return wrapped


def check_passkey_record(record: PasskeyRecord) -> None:
    """Field checks for a new passkey row."""
    check_user_id(record.user_id)
    check_credential_id(record.credential_id)
    if not _is_bytes(record.public_key, 1, MAX_PUBLIC_KEY_LEN):
        raise InvalidParameter(f"public_key must be 1..{MAX_PUBLIC_KEY_LEN} bytes")
    check_sign_count(record.sign_count)
    check_prf_salt(record.prf_salt)
    check_wrapped_key(record.wrapped_key)
    if not _is_time(record.created_at) or not (
        record.last_used_at is None or _is_time(record.last_used_at)
    ):
        raise InvalidParameter("created_at and last_used_at must be numbers")


def check_passkey_challenge(challenge: PasskeyChallenge) -> None:
    """Field checks for a new challenge row."""
    if not _is_bytes(challenge.challenge, 16, 64):
        raise InvalidParameter("a challenge is 16..64 bytes")
    check_user_id(challenge.user_id)
    if challenge.ceremony not in PASSKEY_CEREMONIES:
        raise InvalidParameter(f"ceremony must be one of {PASSKEY_CEREMONIES}")
    if not _is_time(challenge.expires_at):
        raise InvalidParameter("expires_at must be a number")
    if challenge.credential_id is not None:
        check_credential_id(challenge.credential_id)
    if challenge.new_prf_salt is not None:
        check_prf_salt(challenge.new_prf_salt)
    for credential_id, salt in challenge.offered_salts:
        check_credential_id(credential_id)
        check_prf_salt(salt)
    if challenge.consumed:
        raise InvalidParameter("a new challenge is not consumed")
