"""Sealing bytes to the fleet's encryption key (HPKE, RFC 9180).

A client seals what only the HSM fleet may read — its OPAQUE registration upload and
wrapped backup key — to the fleet's ``enc`` public key, so the gateway and storage that
relay it learn nothing (ARCHITECTURE §4). HPKE base mode with
DHKEM(X25519, HKDF-SHA256), HKDF-SHA256 and AES-256-GCM, from ``cryptography``'s
``hpke`` module (OpenSSL).

The HPKE ``info`` binds every seal to a purpose and a context (e.g. fleet id, user id,
credential nonce): a blob sealed for one registration never opens for another.

Format: ``version (0x01) || HPKE enc (32) || AES-256-GCM ciphertext``.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from hsmvault.errors import DecodeError, InvalidParameter, VerificationError

__all__ = [
    "FLEET_SEAL_OVERHEAD",
    "PURPOSE_REGISTRATION_UPLOAD",
    "open_from_client",
    "seal_to_fleet",
]

VERSION = 1
_ENC_LEN = 32
_TAG_LEN = 16
#: Bytes a seal adds to its plaintext.
FLEET_SEAL_OVERHEAD = 1 + _ENC_LEN + _TAG_LEN
_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
_INFO_PREFIX = b"hsmvault/fleet-seal/v1\x00"

#: Purpose label of the registration upload (record, KSF parameters, wrapped key).
PURPOSE_REGISTRATION_UPLOAD = b"registration-upload"


def _info(purpose: bytes, context: bytes) -> bytes:
    if not purpose or len(purpose) > 255:
        raise InvalidParameter("fleet-seal purpose must be 1 to 255 bytes")
    return _INFO_PREFIX + struct.pack(">B", len(purpose)) + purpose + context


def seal_to_fleet(
    fleet_enc_public_key: bytes, plaintext: bytes, *, purpose: bytes, context: bytes = b""
) -> bytes:
    """Seal ``plaintext`` so that only the holder of the fleet's ``enc`` private key opens
    it, for ``purpose`` and ``context`` (both authenticated, neither stored)."""
    if len(fleet_enc_public_key) != 32:
        raise InvalidParameter("the fleet enc key is a 32-byte X25519 public key")
    public = X25519PublicKey.from_public_bytes(fleet_enc_public_key)
    return struct.pack(">B", VERSION) + _SUITE.encrypt(
        plaintext, public, info=_info(purpose, context)
    )


def open_from_client(
    fleet_enc_private_key: X25519PrivateKey, sealed: bytes, *, purpose: bytes, context: bytes = b""
) -> bytes:
    """Open a seal made by :func:`seal_to_fleet` (inside the fleet only).

    Raises :class:`DecodeError` for a malformed seal and :class:`VerificationError` when
    it was sealed to another key, for another purpose or context, or altered.
    """
    sealed = bytes(sealed)
    if len(sealed) < FLEET_SEAL_OVERHEAD:
        raise DecodeError("fleet seal too short")
    if sealed[0] != VERSION:
        raise DecodeError("unknown fleet-seal version")
    try:
        return _SUITE.decrypt(sealed[1:], fleet_enc_private_key, info=_info(purpose, context))
    except InvalidTag:
        raise VerificationError("fleet seal did not verify") from None
    except ValueError:
        # the encapsulated key is not a valid X25519 public value
        raise VerificationError("fleet seal did not verify") from None
