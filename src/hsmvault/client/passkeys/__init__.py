"""Passkeys protect the backup key (ADR 0011): the WebAuthn PRF output of a passkey
wraps BK on the device; the gateway stores the wrap next to the credential.

* :class:`Authenticator` — where an app plugs its platform's passkey API;
* :class:`SoftwareAuthenticator` — an in-memory authenticator for tests and demos only;
* :mod:`.flows` — protect / recover / list / remove / rotate the salt (also as
  ``VaultClient.protect_with_passkey`` and friends);
* :mod:`.wrap` — the wrap format (``docs/formats/passkey-wrap.md``).
"""

from __future__ import annotations

from .authenticator import Authenticator, CreateResult, GetResult
from .errors import NoWrappedKey, PasskeyConflict, PasskeyError, PasskeyRefused, PrfUnavailable
from .flows import PasskeyApi, PasskeyInfo
from .software_authenticator import AuthenticatorRefused, Faults, SoftwareAuthenticator
from .wrap import unwrap_with_prf, wrap_context, wrap_with_prf

__all__ = [
    "Authenticator",
    "AuthenticatorRefused",
    "CreateResult",
    "Faults",
    "GetResult",
    "NoWrappedKey",
    "PasskeyApi",
    "PasskeyConflict",
    "PasskeyError",
    "PasskeyInfo",
    "PasskeyRefused",
    "PrfUnavailable",
    "SoftwareAuthenticator",
    "unwrap_with_prf",
    "wrap_context",
    "wrap_with_prf",
]
