"""Sealing and authenticating data under an OPAQUE session key (pure, no I/O).

After a successful OPAQUE login, node and client share ``session_key`` (RFC 9807 §6.2.4),
which the untrusted host relaying their messages never sees. Two recipes use it:

* :func:`seal_to_session` / :func:`open_from_session` — the node releases the wrapped
  backup key *inside* the authenticated session; the client opens it.
* :func:`session_authenticator` / :func:`verify_session_authenticator` — the client
  proves, for a follow-up request (change secret, delete), that it holds the session
  key; a session id alone is only a handle the host could replay.

Every use names a ``label`` (1..255 bytes); keys for different labels and different
recipes are independent, so a box sealed for one purpose never opens for another.

Box format (version 1)::

    0x01 || nonce (12) || AES-256-GCM(plaintext) (len(plaintext) + 16 tag)

``key = HKDF-SHA512(ikm=session_key, salt="", info=INFO_PREFIX || "seal" || 0x00 ||
label)``, 32 bytes; AEAD associated data is ``0x01 || len(label) || label``. A session
key seals only a handful of boxes, so random 96-bit nonces are safe.

Authenticator: ``HMAC-SHA512(HKDF-SHA512(..., info=INFO_PREFIX || "mac" || 0x00 ||
label), message)``, 64 bytes, checked in constant time.

Failures: malformed box → :class:`~hsmvault.errors.DecodeError`; wrong key, label or a
changed byte → :class:`~hsmvault.errors.VerificationError` (one error, no detail);
a session key shorter than 32 bytes or a bad label → :class:`InvalidParameter`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from hsmvault.crypto.ristretto255 import RandomBytes
from hsmvault.errors import DecodeError, InvalidParameter, VerificationError

__all__ = [
    "AUTHENTICATOR_LEN",
    "BOX_OVERHEAD",
    "LABEL_CHANGE_SECRET",
    "LABEL_DELETE",
    "LABEL_WRAPPED_KEY",
    "open_from_session",
    "seal_to_session",
    "session_authenticator",
    "verify_session_authenticator",
]

VERSION: Final = 1
_NONCE_LEN: Final = 12
_TAG_LEN: Final = 16
#: Bytes a box adds to its plaintext.
BOX_OVERHEAD: Final = 1 + _NONCE_LEN + _TAG_LEN
#: Length of :func:`session_authenticator` output (HMAC-SHA512).
AUTHENTICATOR_LEN: Final = 64
#: Minimum session-key length (OPAQUE's is Nx = 64 bytes).
MIN_SESSION_KEY_LEN: Final = 32
_INFO_PREFIX: Final = b"hsmvault/session-box/v1\x00"

#: The node releases the client's wrapped backup key at login finish under this label.
LABEL_WRAPPED_KEY: Final = b"login-finish/wrapped-key"
#: Authenticator label of a change-secret request.
LABEL_CHANGE_SECRET: Final = b"change-secret"
#: Authenticator label of a delete request.
LABEL_DELETE: Final = b"delete"


def _derive(session_key: bytes, recipe: bytes, label: bytes) -> bytes:
    if not isinstance(session_key, bytes) or len(session_key) < MIN_SESSION_KEY_LEN:
        raise InvalidParameter("session key must be at least 32 bytes")
    if not isinstance(label, bytes) or not 1 <= len(label) <= 255:
        raise InvalidParameter("label must be 1 to 255 bytes")
    hkdf = HKDF(
        algorithm=hashes.SHA512(),
        length=32,
        salt=None,
        info=_INFO_PREFIX + recipe + b"\x00" + label,
    )
    return hkdf.derive(session_key)


def _associated_data(label: bytes) -> bytes:
    return bytes([VERSION, len(label)]) + label


def seal_to_session(
    session_key: bytes, plaintext: bytes, *, label: bytes, rng: RandomBytes | None = None
) -> bytes:
    """Encrypt and authenticate ``plaintext`` for the holder of ``session_key``.

    Returns ``len(plaintext) + BOX_OVERHEAD`` bytes. ``rng`` draws the nonce
    (``secrets.token_bytes`` by default).
    """
    key = _derive(session_key, b"seal", label)
    nonce = (rng if rng is not None else secrets.token_bytes)(_NONCE_LEN)
    if len(nonce) != _NONCE_LEN:
        raise InvalidParameter("rng returned the wrong number of bytes")
    sealed = AESGCM(key).encrypt(nonce, bytes(plaintext), _associated_data(label))
    return bytes([VERSION]) + nonce + sealed


def open_from_session(session_key: bytes, sealed: bytes, *, label: bytes) -> bytes:
    """Open a box made by :func:`seal_to_session` with the same key and label.

    Raises :class:`DecodeError` if ``sealed`` is too short or has an unknown version,
    and :class:`VerificationError` if it does not authenticate.
    """
    key = _derive(session_key, b"seal", label)
    sealed = bytes(sealed)
    if len(sealed) < BOX_OVERHEAD:
        raise DecodeError("session box is too short")
    if sealed[0] != VERSION:
        raise DecodeError("unknown session box version")
    nonce, body = sealed[1 : 1 + _NONCE_LEN], sealed[1 + _NONCE_LEN :]
    try:
        return AESGCM(key).decrypt(nonce, body, _associated_data(label))
    except InvalidTag:
        raise VerificationError("session box did not verify") from None


def session_authenticator(session_key: bytes, message: bytes, *, label: bytes) -> bytes:
    """A 64-byte MAC over ``message`` proving possession of ``session_key``."""
    key = _derive(session_key, b"mac", label)
    return hmac.new(key, bytes(message), hashlib.sha512).digest()


def verify_session_authenticator(
    session_key: bytes, message: bytes, authenticator: bytes, *, label: bytes
) -> None:
    """Check :func:`session_authenticator` output in constant time; raises
    :class:`VerificationError` if it does not match (never returns a bool)."""
    expected = session_authenticator(session_key, message, label=label)
    if not hmac.compare_digest(expected, bytes(authenticator)):
        raise VerificationError("session authenticator did not verify")
