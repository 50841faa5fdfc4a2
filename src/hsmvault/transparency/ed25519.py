"""Ed25519 signature checks against raw public keys (RFC 8032 section 5.1.7, through
``cryptography``), for the witness and operator signatures of ADR 0010.

Pure: no I/O.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = ["ed25519_verifies"]


def ed25519_verifies(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """Whether ``signature`` is a valid Ed25519 signature of ``message`` under the raw
    32-byte ``public_key``. A key that does not decode counts as not verifying (``False``);
    never raises for bad input bytes."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True
