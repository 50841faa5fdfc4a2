"""Wrapping the backup key BK under a key-encryption key derived from another secret.

One construction serves every way a user protects BK (ARCHITECTURE §4): the OPAQUE
export key (PIN, password, recovery code) and, later, a passkey's WebAuthn PRF output.
Each caller names its *purpose*, so a wrap made for one purpose never opens for another.

Format (version 1), 93 bytes::

    version (1 byte, 0x01) || salt (32) || nonce (12) || AES-256-GCM(BK) (32 + 16 tag)

``KEK = HKDF-SHA256(ikm=secret, salt=salt, info="hsmvault/key-wrap/v1" || 0x00 || purpose)``
(RFC 5869), and the AEAD's associated data is ``version || salt || len(purpose) ||
purpose || context``. The random salt gives every wrap a fresh KEK, so the random
96-bit nonce is never reused under one key.
"""

from __future__ import annotations

import secrets
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from hsmvault.crypto.backup_stream import BackupKey
from hsmvault.crypto.ristretto255 import RandomBytes
from hsmvault.errors import DecodeError, InvalidParameter, VerificationError

__all__ = [
    "PURPOSE_OPAQUE_EXPORT_KEY",
    "PURPOSE_PASSKEY_PRF",
    "WRAPPED_KEY_LEN",
    "unwrap_backup_key",
    "wrap_backup_key",
]

VERSION = 1
_SALT_LEN = 32
_NONCE_LEN = 12
_BK_LEN = 32
_TAG_LEN = 16
WRAPPED_KEY_LEN = 1 + _SALT_LEN + _NONCE_LEN + _BK_LEN + _TAG_LEN
#: The secret a wrap is made from must carry at least 256 bits.
MIN_SECRET_LEN = 32
_INFO_PREFIX = b"hsmvault/key-wrap/v1\x00"

#: Purpose labels: one per way of protecting BK.
PURPOSE_OPAQUE_EXPORT_KEY = b"opaque-export-key"
PURPOSE_PASSKEY_PRF = b"passkey-prf"


def _kek(secret: bytes, salt: bytes, purpose: bytes) -> AESGCM:
    if len(secret) < MIN_SECRET_LEN:
        raise InvalidParameter("key-wrap secret must be at least 32 bytes")
    if not purpose or len(purpose) > 255:
        raise InvalidParameter("key-wrap purpose must be 1 to 255 bytes")
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_INFO_PREFIX + purpose)
    return AESGCM(hkdf.derive(secret))


def _associated_data(salt: bytes, purpose: bytes, context: bytes) -> bytes:
    return struct.pack(">B", VERSION) + salt + struct.pack(">B", len(purpose)) + purpose + context


def wrap_backup_key(
    secret: bytes,
    backup_key: BackupKey,
    *,
    purpose: bytes,
    context: bytes = b"",
    rng: RandomBytes | None = None,
) -> bytes:
    """Encrypt ``backup_key`` under a KEK derived from ``secret`` for ``purpose``.

    ``context`` (e.g. the user id or credential id) is authenticated, not stored: the
    same context must be given to :func:`unwrap_backup_key`. Returns
    :data:`WRAPPED_KEY_LEN` bytes.
    """
    draw = rng if rng is not None else secrets.token_bytes
    salt = draw(_SALT_LEN)
    nonce = draw(_NONCE_LEN)
    aead = _kek(secret, salt, purpose)
    sealed = aead.encrypt(
        nonce, backup_key.expose_secret(), _associated_data(salt, purpose, context)
    )
    return struct.pack(">B", VERSION) + salt + nonce + sealed


def unwrap_backup_key(
    secret: bytes, wrapped: bytes, *, purpose: bytes, context: bytes = b""
) -> BackupKey:
    """Open a wrap made by :func:`wrap_backup_key`.

    Raises :class:`DecodeError` for a malformed wrap (wrong length or version) and
    :class:`VerificationError` when the secret, purpose or context is wrong or a byte
    was changed — one error for all of these, so a caller learns nothing more.
    """
    wrapped = bytes(wrapped)
    if len(wrapped) != WRAPPED_KEY_LEN:
        raise DecodeError(f"wrapped key must be {WRAPPED_KEY_LEN} bytes")
    if wrapped[0] != VERSION:
        raise DecodeError("unknown wrapped-key version")
    salt = wrapped[1 : 1 + _SALT_LEN]
    nonce = wrapped[1 + _SALT_LEN : 1 + _SALT_LEN + _NONCE_LEN]
    sealed = wrapped[1 + _SALT_LEN + _NONCE_LEN :]
    aead = _kek(secret, salt, purpose)
    try:
        raw = aead.decrypt(nonce, sealed, _associated_data(salt, purpose, context))
    except InvalidTag:
        raise VerificationError("wrapped backup key did not verify") from None
    return BackupKey(raw)
