"""The errors of the passkey flows (beyond :mod:`hsmvault.client.errors`).

Like every SDK error: no message and no attribute holds a secret.
"""

from __future__ import annotations

from hsmvault import errors as _errors
from hsmvault.client.errors import GatewayError

__all__ = ["NoWrappedKey", "PasskeyConflict", "PasskeyError", "PasskeyRefused", "PrfUnavailable"]


class PasskeyError(_errors.VaultError):
    """A passkey flow could not finish on the client's side."""


class PrfUnavailable(PasskeyError):
    """The authenticator gave no PRF output (it does not support the WebAuthn PRF /
    CTAP2 ``hmac-secret`` extension): such a passkey cannot protect a backup key."""


class NoWrappedKey(PasskeyError):
    """The passkey that answered protects no backup key (it was registered without
    one): use another passkey, or another way to recover."""


class PasskeyRefused(GatewayError):
    """HTTP 403 from the gateway's relying party: it refused the WebAuthn answer (wrong
    origin or RP id, unknown challenge, bad signature, no user verification, a sign
    count that did not increase). The message names the check."""


class PasskeyConflict(GatewayError):
    """HTTP 409 from ``/v1/passkeys``: ``code`` is ``challenge_replayed``,
    ``challenge_expired``, ``salt_changed`` or ``conflict`` (start the ceremony again)
    or ``credential_exists``."""
