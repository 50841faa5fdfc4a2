"""OPAQUE-3DH (RFC 9807), suite ristretto255-SHA512: OPRF ristretto255-SHA512 (RFC 9497),
HKDF-SHA512, HMAC-SHA512, SHA-512, 3DH over ristretto255, pluggable KSF.

Modules, from the wire up:

``suite``         sizes (Nn, Nh, ...) and primitives: Hash, MAC, Extract/Expand, 3DH keys
``messages``      the RFC wire structures with byte-exact ``to_bytes``/strict ``from_bytes``
``envelope``      CleartextCredentials, randomized password, envelope Store/Recover (§4)
``key_schedule``  Expand-Label, Derive-Secret, Preamble, DeriveKeys (§6.4.2)
``protocol``      the §5/§6 functions under their RFC names, single-use states
``fake``          fake records for unknown users (§6.3.2.2, §10.9)
``config``        :class:`OpaqueConfig` (context, KSF) with documented defaults
``parties``       :class:`OpaqueServer` / :class:`OpaqueClient`, the thin object API

Every authentication failure is :class:`~hsmvault.errors.InvalidLogin`; malformed bytes
are :class:`~hsmvault.errors.DecodeError`; a reused state is
:class:`~hsmvault.errors.ProtocolStateError`.
"""

from __future__ import annotations

from hsmvault.crypto.opaque.config import DEFAULT_CONTEXT, OpaqueConfig
from hsmvault.crypto.opaque.fake import create_fake_record
from hsmvault.crypto.opaque.messages import (
    KE1,
    KE2,
    KE3,
    AuthRequest,
    AuthResponse,
    CredentialRequest,
    CredentialResponse,
    Envelope,
    RegistrationRecord,
    RegistrationRequest,
    RegistrationResponse,
)
from hsmvault.crypto.opaque.parties import (
    ClientLoginResult,
    ClientRegistrationResult,
    OpaqueClient,
    OpaqueServer,
)
from hsmvault.crypto.opaque.protocol import (
    ClientLoginState,
    ClientRegistrationState,
    ServerLoginState,
    create_registration_request,
    create_registration_response,
    finalize_registration_request,
    generate_ke1,
    generate_ke2,
    generate_ke3,
    server_finish,
)

__all__ = [
    "DEFAULT_CONTEXT",
    "KE1",
    "KE2",
    "KE3",
    "AuthRequest",
    "AuthResponse",
    "ClientLoginResult",
    "ClientLoginState",
    "ClientRegistrationResult",
    "ClientRegistrationState",
    "CredentialRequest",
    "CredentialResponse",
    "Envelope",
    "OpaqueClient",
    "OpaqueConfig",
    "OpaqueServer",
    "RegistrationRecord",
    "RegistrationRequest",
    "RegistrationResponse",
    "ServerLoginState",
    "create_fake_record",
    "create_registration_request",
    "create_registration_response",
    "finalize_registration_request",
    "generate_ke1",
    "generate_ke2",
    "generate_ke3",
    "server_finish",
]
