"""The errors the SDK raises beyond :mod:`hsmvault.errors`.

Each class here subclasses the matching class of :mod:`hsmvault.errors`, so code that
catches the shared tree (``except hsmvault.errors.InvalidLogin``) keeps working; the
subclasses only add fields a caller needs to act (guesses left, when to retry).

Contract (as for the shared tree): no message and no attribute ever holds a secret.
"""

from __future__ import annotations

from hsmvault import errors as _errors

__all__ = [
    "AlreadyEnrolled",
    "ArchiveError",
    "FleetDecommissioned",
    "GatewayError",
    "InvalidLogin",
    "KsfParametersRefused",
    "NotFound",
    "RateLimited",
    "RecoveryCodeError",
    "RequestRefused",
    "Unauthorized",
    "Unavailable",
    "UploadOffsetMismatch",
    "WeakSecret",
]


class InvalidLogin(_errors.InvalidLogin):
    """A wrong secret (or a forged/garbled login message: outward they are one error).

    ``attempts_remaining`` is how many guesses the record has left *after* this one, as
    the fleet reported at the start of the attempt (``None`` when unknown). For an
    unknown user id the number is the fleet's fixed default minus one (ADR 0007 §6).
    """

    def __init__(self, message: str = "login failed", *, attempts_remaining: int | None = None):
        super().__init__(message)
        self.attempts_remaining = attempts_remaining


class Unavailable(_errors.Unavailable):
    """The gateway or the fleet cannot answer now. ``retry_after`` (seconds) is the
    server's hint, when it gave one."""

    def __init__(self, message: str = "service unavailable", *, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class RateLimited(Unavailable):
    """HTTP 429: the gateway's rate limit for this user or address. Wait
    ``retry_after`` seconds (``None`` if the gateway sent no usable hint)."""

    def __init__(self, message: str = "rate limited", *, retry_after: float | None = None):
        super().__init__(message, retry_after=retry_after)


class AlreadyEnrolled(_errors.VaultError):
    """Enrolment without ``replace=True`` for a user id that already has a record."""


class FleetDecommissioned(_errors.VaultError):
    """The fleet that answered was decommissioned (ADR 0013): the records it held are
    erased. A user who was not moved to an active fleet before that must enrol again
    (with the backup key from the device or the 64-digit key)."""


class KsfParametersRefused(_errors.VerificationError):
    """Key-stretching parameters outside the client's :class:`KsfPolicy
    <hsmvault.client.vault_protocol.KsfPolicy>`: weaker than the floor, above the
    ceiling (a denial of service on the device), or the identity KSF without the unsafe
    flag. Raised for parameters the fleet (or whoever relayed its answer) named at login,
    and for parameters a caller asks to enrol with."""


class RequestRefused(_errors.VaultError):
    """The fleet answered ``BAD_REQUEST``: it did not accept the request (a client bug
    or a version mismatch). Nothing changed."""


class WeakSecret(_errors.InvalidParameter):
    """A PIN or password refused by the :class:`~hsmvault.client.recovery_codes.SecretPolicy`
    (too short, not digits, ...). The message says which rule, never the secret."""


class RecoveryCodeError(_errors.InvalidParameter):
    """Text that is not a well-formed recovery code: wrong length, a character outside
    the alphabet, or a checksum that does not match (a typo). Raised before anything is
    sent, so a typo never costs a guess."""


class ArchiveError(_errors.VaultError):
    """A backup archive entry was refused on restore (absolute path, ``..``, a link out
    of the destination, a device file, a duplicate), or a source could not be archived."""


class GatewayError(_errors.VaultError):
    """The gateway answered with an HTTP error the SDK has no finer class for.

    ``status`` is the HTTP status and ``code`` the gateway's ``error`` field (if any).
    """

    def __init__(self, message: str, *, status: int, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


class Unauthorized(GatewayError):
    """HTTP 401/403: the token was refused (expired, forged, wrong audience) or names
    another user than the request."""


class NotFound(GatewayError):
    """HTTP 404: no such backup (or upload)."""


class UploadOffsetMismatch(GatewayError):
    """HTTP 409 on an upload chunk: the server holds ``offset`` bytes, not the offset the
    chunk was sent for. The SDK resumes from ``offset`` itself; this escapes only when
    the server's answer carries no usable offset."""

    def __init__(self, message: str, *, offset: int | None, code: str | None = None):
        super().__init__(message, status=409, code=code)
        self.offset = offset
