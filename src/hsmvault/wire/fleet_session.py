"""What a fleet signs, with its ``sig`` key, when it opens a session (ADR 0010).

The first response of a session (``RegistrationStart``, ``LoginStart``) carries the
fleet's current validation bundle, the fleet id and an Ed25519 signature by the fleet's
``sig`` key over::

    "hsmvault/fleet-session/v1" || 0x00 || fleet_id (32)
    || SHA-256(exact request bytes) || SHA-256(bundle bytes)

The request carries fresh client randomness (KE1's nonce, a blinded OPRF element), so the
signature proves that a holder of the artifact's ``sig`` key answered *this* request with
*this* bundle; the gateway in between can neither replay an old answer nor swap bundles.
Pure: stdlib hashing only.
"""

from __future__ import annotations

import hashlib
from typing import Final

from hsmvault.errors import InvalidParameter

__all__ = ["FLEET_ID_LEN", "SESSION_CONTEXT", "SIGNATURE_LEN", "fleet_session_message"]

SESSION_CONTEXT: Final = b"hsmvault/fleet-session/v1\x00"
FLEET_ID_LEN: Final = 32
SIGNATURE_LEN: Final = 64


def fleet_session_message(fleet_id: bytes, request: bytes, bundle: bytes) -> bytes:
    """The exact bytes the fleet signs for ``request`` answered with ``bundle``."""
    if len(fleet_id) != FLEET_ID_LEN:
        raise InvalidParameter("fleet id must be 32 bytes")
    return (
        SESSION_CONTEXT
        + bytes(fleet_id)
        + hashlib.sha256(bytes(request)).digest()
        + hashlib.sha256(bytes(bundle)).digest()
    )
