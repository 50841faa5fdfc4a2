"""The leaf a witness appends to its Merkle log for each signature it makes (ADR 0010).

A leaf binds the exact Plexi ``SignatureMessage`` bytes the witness signed and the
signature itself, so a verifier holding a bundle can recompute the leaf and check its
inclusion against a signed checkpoint::

    leaf = "hsmvault/witness-log-entry/v1" || 0x00
           || u32be(len(message)) || message || signature (64 bytes, Ed25519)

The leaf *hash* is RFC 6962's ``SHA-256(0x00 || leaf)`` (:func:`merkle.hash_leaf`).
"""

from __future__ import annotations

import struct
from typing import Final

from hsmvault.errors import DecodeError, InvalidParameter

__all__ = ["LEAF_PREFIX", "SIGNATURE_LEN", "decode_log_leaf", "encode_log_leaf"]

LEAF_PREFIX: Final = b"hsmvault/witness-log-entry/v1\x00"
SIGNATURE_LEN: Final = 64
_MAX_MESSAGE_LEN: Final = 4096


def encode_log_leaf(message: bytes, signature: bytes) -> bytes:
    """The leaf bytes for one signed ``SignatureMessage`` (encoded) and its signature."""
    if not 0 < len(message) <= _MAX_MESSAGE_LEN:
        raise InvalidParameter("signature message must be 1 to 4096 bytes")
    if len(signature) != SIGNATURE_LEN:
        raise InvalidParameter("signature must be 64 bytes")
    return LEAF_PREFIX + struct.pack(">I", len(message)) + bytes(message) + bytes(signature)


def decode_log_leaf(leaf: bytes) -> tuple[bytes, bytes]:
    """Split a leaf into ``(message, signature)``; strict (prefix, length, no trailing bytes)."""
    leaf = bytes(leaf)
    head = len(LEAF_PREFIX) + 4
    if len(leaf) < head + 1 + SIGNATURE_LEN or not leaf.startswith(LEAF_PREFIX):
        raise DecodeError("malformed witness log leaf")
    (length,) = struct.unpack(">I", leaf[len(LEAF_PREFIX) : head])
    if not 0 < length <= _MAX_MESSAGE_LEN or len(leaf) != head + length + SIGNATURE_LEN:
        raise DecodeError("malformed witness log leaf: bad length")
    return leaf[head : head + length], leaf[head + length :]
