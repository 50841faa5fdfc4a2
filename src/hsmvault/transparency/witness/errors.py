"""What the witness raises: a refusal of one request (rendered as an HTTP error by the
app) or an inconsistent data directory (the witness refuses to start).

Messages name the rule that failed, never a key, a PIN or the admin token.
"""

from __future__ import annotations

from typing import Final

from hsmvault.errors import VaultError

__all__ = [
    "ALREADY_COUNTERSIGNED",
    "ALREADY_REGISTERED",
    "BAD_COUNTERSIGNATURE",
    "BAD_SUBMISSION_SIGNATURE",
    "DIGEST_MISMATCH",
    "DUPLICATE_DIGEST",
    "FORBIDDEN",
    "MALFORMED",
    "NOT_FOUND",
    "OUT_OF_ORDER_EPOCH",
    "TOO_LARGE",
    "UNAUTHORIZED",
    "UNAVAILABLE",
    "WitnessRefusal",
    "WitnessStateError",
]

#: Error codes (the ``error`` field of an error body) and their HTTP statuses.
MALFORMED: Final = "malformed"  # 400
DIGEST_MISMATCH: Final = "digest_mismatch"  # 400
UNAUTHORIZED: Final = "unauthorized"  # 401: no or malformed admin bearer token
BAD_SUBMISSION_SIGNATURE: Final = "bad_submission_signature"  # 401
BAD_COUNTERSIGNATURE: Final = "bad_countersignature"  # 401
FORBIDDEN: Final = "forbidden"  # 403: wrong admin token
NOT_FOUND: Final = "not_found"  # 404
OUT_OF_ORDER_EPOCH: Final = "out_of_order_epoch"  # 409
DUPLICATE_DIGEST: Final = "duplicate_digest"  # 409
ALREADY_COUNTERSIGNED: Final = "already_countersigned"  # 409
ALREADY_REGISTERED: Final = "already_registered"  # 409
TOO_LARGE: Final = "too_large"  # 413
UNAVAILABLE: Final = "unavailable"  # 503: no usable key, or the store failed


class WitnessRefusal(VaultError):
    """The witness refuses one request; ``status`` is the HTTP status, ``code`` the
    machine-readable error code, ``detail`` a human-readable reason."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail


class WitnessStateError(VaultError):
    """The witness's data directory is missing, malformed or inconsistent (a truncated or
    edited store, a signature that does not verify, a swapped key): it refuses to start."""
