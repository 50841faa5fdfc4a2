"""A software passkey authenticator — **for tests and demos only**.

:class:`SoftwareAuthenticator` keeps its credentials' private keys in process memory:
anyone who can read that memory (or pickle the object) holds the passkeys. It exists so
the SDK's passkey flows can run end to end without a browser or a security key. Real
apps plug their platform's API into :class:`~.authenticator.Authenticator`.

It behaves like a CTAP2 authenticator behind a WebAuthn client:

* ES256 (P-256, via ``cryptography``) credentials with 32-byte random ids (RS256 or
  EdDSA on request, to test a relying party's algorithm rules); ``none`` attestation;
  flags UP and UV on every ceremony (plus AT at creation, and ED with the
  ``hmac-secret: true`` extension output);
* a signature counter per credential, incremented by every assertion;
* a random 32-byte ``credRandom`` per credential, and the PRF exactly as WebAuthn Level
  3 §10.1.4 maps it onto CTAP2 ``hmac-secret``: ``salt = SHA-256("WebAuthn PRF" || 0x00
  || input)``, ``output = HMAC-SHA-256(credRandom, salt)`` (one ``credRandom``: every
  ceremony here is user-verified);
* ``clientDataJSON`` = ``{"type", "challenge", "origin", "crossOrigin"}`` for its
  ``origin``; the RP id must be valid for that origin (python-fido2's
  ``verify_rp_id``), as a browser would insist;
* several credentials, chosen by the request's ``allowCredentials`` order.

For negative tests, :attr:`SoftwareAuthenticator.faults` (:class:`Faults`) makes it
produce bad answers (another origin or RP id, no UV, a broken signature, ...),
:meth:`~SoftwareAuthenticator.set_sign_count` rewinds a counter and
:meth:`~SoftwareAuthenticator.clone` copies the credentials (a cloned authenticator).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from fido2.cose import ES256, RS256, CoseKey, EdDSA
from fido2.rpid import verify_rp_id
from fido2.webauthn import (
    Aaguid,
    AttestationObject,
    AttestedCredentialData,
    AuthenticatorData,
    CollectedClientData,
)

from hsmvault.errors import InvalidParameter, VaultError

from .authenticator import CreateResult, GetResult

__all__ = [
    "ALGORITHMS",
    "AuthenticatorRefused",
    "Faults",
    "SoftwareAuthenticator",
    "webauthn_prf",
]

_PRF_LABEL: Final = b"WebAuthn PRF\x00"
_FLAG = AuthenticatorData.FLAG
_PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
#: The COSE algorithms it can make credentials for.
ALGORITHMS: Final = (ES256.ALGORITHM, RS256.ALGORITHM, EdDSA.ALGORITHM)


class AuthenticatorRefused(VaultError):
    """The authenticator refused the ceremony (as ``NotAllowedError``,
    ``InvalidStateError``, ``SecurityError`` or ``NotSupportedError`` in a browser)."""


def webauthn_prf(cred_random: bytes, prf_input: bytes) -> bytes:
    """WebAuthn L3 §10.1.4 over CTAP2 ``hmac-secret``: ``HMAC-SHA-256(credRandom,
    SHA-256("WebAuthn PRF" || 0x00 || input))``."""
    salt = hashlib.sha256(_PRF_LABEL + prf_input).digest()
    return hmac.new(cred_random, salt, hashlib.sha256).digest()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise InvalidParameter(f"{what} must be a base64url string")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except ValueError:
        raise InvalidParameter(f"{what} must be base64url") from None


@dataclass
class Faults:
    """Ways to misbehave on the next ceremonies (all off by default): another
    ``origin`` or ``ceremony_type`` in ``clientDataJSON``, ``cross_origin``, the
    rpIdHash of another ``rp_id``, a ``challenge`` other than the options', no UV or
    UP flag, or a ``corrupt_signature`` (its last byte flipped)."""

    origin: str | None = None
    ceremony_type: str | None = None
    cross_origin: bool = False
    rp_id: str | None = None
    challenge: bytes | None = None
    user_verified: bool = True
    user_present: bool = True
    corrupt_signature: bool = False


@dataclass
class _Credential:
    rp_id: str
    user_handle: bytes
    private_key: _PrivateKey = field(repr=False)
    cred_random: bytes = field(repr=False)
    sign_count: int = 0


class SoftwareAuthenticator:
    """A CTAP2-like authenticator in memory, for ``origin`` — TESTS AND DEMOS ONLY
    (see the module docstring)."""

    def __init__(
        self,
        origin: str,
        *,
        algorithm: int = ES256.ALGORITHM,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        if algorithm not in ALGORITHMS:
            raise InvalidParameter(f"algorithm must be one of {ALGORITHMS}")
        self.origin = origin
        self.algorithm = algorithm
        self.faults = Faults()
        self._random = random_bytes
        self._credentials: dict[bytes, _Credential] = {}

    def __repr__(self) -> str:
        return (
            f"SoftwareAuthenticator({self.origin!r}, {len(self._credentials)} credentials,"
            " TEST ONLY)"
        )

    # ------------------------------------------------------------------ inspection

    @property
    def credential_ids(self) -> list[bytes]:
        """The credentials it holds, oldest first."""
        return list(self._credentials)

    def sign_count(self, credential_id: bytes) -> int:
        return self._credentials[credential_id].sign_count

    def set_sign_count(self, credential_id: bytes, count: int) -> None:
        """Set a credential's counter (e.g. back, as a cloned authenticator would)."""
        self._credentials[credential_id].sign_count = count

    def prf(self, credential_id: bytes, prf_input: bytes) -> bytes:
        """The PRF output this authenticator would give for ``prf_input``."""
        return webauthn_prf(self._credentials[credential_id].cred_random, prf_input)

    def forget(self, credential_id: bytes) -> None:
        """Delete a credential from the authenticator (the user removed it)."""
        del self._credentials[credential_id]

    def clone(self) -> SoftwareAuthenticator:
        """Another authenticator holding copies of the same credentials and counters."""
        twin = SoftwareAuthenticator(
            self.origin, algorithm=self.algorithm, random_bytes=self._random
        )
        twin._credentials = {
            cid: _Credential(c.rp_id, c.user_handle, c.private_key, c.cred_random, c.sign_count)
            for cid, c in self._credentials.items()
        }
        twin.faults = copy.copy(self.faults)
        return twin

    # ------------------------------------------------------------------ ceremonies

    def _rp_id(self, rp_id: object) -> str:
        if rp_id is None:
            host = self.origin.split("://", 1)[-1].split(":", 1)[0]
            rp_id = host
        if not isinstance(rp_id, str) or not verify_rp_id(rp_id, self.origin):
            raise AuthenticatorRefused("SecurityError: the RP id is not valid for this origin")
        return rp_id

    def _flags(self, *extra: AuthenticatorData.FLAG) -> AuthenticatorData.FLAG:
        flags = _FLAG(0)
        if self.faults.user_present:
            flags |= _FLAG.UP
        if self.faults.user_verified:
            flags |= _FLAG.UV
        for flag in extra:
            flags |= flag
        return flags

    def _client_data(self, ceremony: str, challenge: bytes) -> CollectedClientData:
        f = self.faults
        return CollectedClientData.create(
            type=f.ceremony_type or ceremony,
            challenge=f.challenge if f.challenge is not None else challenge,
            origin=f.origin or self.origin,
            cross_origin=f.cross_origin,
        )

    def _rp_id_hash(self, rp_id: str) -> bytes:
        return hashlib.sha256((self.faults.rp_id or rp_id).encode("utf-8")).digest()

    def _new_key(self) -> tuple[_PrivateKey, CoseKey]:
        private_key: _PrivateKey
        if self.algorithm == RS256.ALGORITHM:
            private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            cose_type: type[CoseKey] = RS256
        elif self.algorithm == EdDSA.ALGORITHM:
            private_key = ed25519.Ed25519PrivateKey.generate()
            cose_type = EdDSA
        else:
            private_key = ec.generate_private_key(ec.SECP256R1())
            cose_type = ES256
        return private_key, cose_type.from_cryptography_key(private_key.public_key())

    @staticmethod
    def _sign(key: _PrivateKey, message: bytes) -> bytes:
        """WebAuthn signatures: ECDSA (DER) or PKCS#1 v1.5 over SHA-256, or Ed25519."""
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key.sign(message, ec.ECDSA(hashes.SHA256()))
        if isinstance(key, rsa.RSAPrivateKey):
            return key.sign(message, padding.PKCS1v15(), hashes.SHA256())
        return key.sign(message)

    def create(self, options: Mapping[str, Any], prf_input: bytes | None) -> CreateResult:
        """``navigator.credentials.create`` with ``options`` (creation options JSON)."""
        rp = options.get("rp")
        if not isinstance(rp, Mapping):
            raise InvalidParameter("options.rp must be an object")
        rp_id = self._rp_id(rp.get("id"))
        user = options.get("user")
        if not isinstance(user, Mapping):
            raise InvalidParameter("options.user must be an object")
        handle = _b64url_decode(user.get("id"), "options.user.id")
        challenge = _b64url_decode(options.get("challenge"), "options.challenge")
        params = options.get("pubKeyCredParams") or []
        if self.algorithm == ES256.ALGORITHM and not any(
            isinstance(p, Mapping) and p.get("alg") == ES256.ALGORITHM for p in params
        ):
            raise AuthenticatorRefused("NotSupportedError: ES256 is not among the algorithms")
        for descriptor in options.get("excludeCredentials") or []:
            excluded = _b64url_decode(descriptor.get("id"), "excludeCredentials.id")
            held = self._credentials.get(excluded)
            if held is not None and held.rp_id == rp_id:
                raise AuthenticatorRefused("InvalidStateError: a credential is already here")

        credential_id = self._random(32)
        private_key, cose_key = self._new_key()
        credential = _Credential(rp_id, handle, private_key, self._random(32))
        attested = AttestedCredentialData.create(Aaguid.NONE, credential_id, cose_key)
        auth_data = AuthenticatorData.create(
            self._rp_id_hash(rp_id),
            self._flags(_FLAG.AT, _FLAG.ED),
            credential.sign_count,
            attested,
            extensions={"hmac-secret": True},
        )
        attestation = AttestationObject.create("none", auth_data, {})
        client_data = self._client_data("webauthn.create", challenge)
        self._credentials[credential_id] = credential
        response = {
            "id": _b64url(credential_id),
            "rawId": _b64url(credential_id),
            "type": "public-key",
            "authenticatorAttachment": "platform",
            "clientExtensionResults": {"prf": {"enabled": True}},
            "response": {
                "clientDataJSON": _b64url(client_data),
                "attestationObject": _b64url(attestation),
                "transports": ["internal"],
            },
        }
        prf_output = None if prf_input is None else webauthn_prf(credential.cred_random, prf_input)
        return CreateResult(response, prf_output)

    def get(self, options: Mapping[str, Any], prf_inputs: Mapping[bytes, bytes]) -> GetResult:
        """``navigator.credentials.get`` with ``options`` (request options JSON)."""
        rp_id = self._rp_id(options.get("rpId"))
        challenge = _b64url_decode(options.get("challenge"), "options.challenge")
        allowed = [
            _b64url_decode(d.get("id"), "allowCredentials.id")
            for d in options.get("allowCredentials") or []
        ]
        candidates = allowed or list(self._credentials)
        credential_id = next(
            (
                c
                for c in candidates
                if c in self._credentials and self._credentials[c].rp_id == rp_id
            ),
            None,
        )
        if credential_id is None:
            raise AuthenticatorRefused("NotAllowedError: no allowed credential is here")
        credential = self._credentials[credential_id]
        credential.sign_count += 1
        auth_data = AuthenticatorData.create(
            self._rp_id_hash(rp_id), self._flags(), credential.sign_count
        )
        client_data = self._client_data("webauthn.get", challenge)
        signature = self._sign(credential.private_key, bytes(auth_data) + client_data.hash)
        if self.faults.corrupt_signature:
            signature = signature[:-1] + bytes([signature[-1] ^ 0x01])
        response = {
            "id": _b64url(credential_id),
            "rawId": _b64url(credential_id),
            "type": "public-key",
            "authenticatorAttachment": "platform",
            "clientExtensionResults": {},
            "response": {
                "clientDataJSON": _b64url(client_data),
                "authenticatorData": _b64url(auth_data),
                "signature": _b64url(signature),
                "userHandle": _b64url(credential.user_handle),
            },
        }
        prf_input = prf_inputs.get(credential_id)
        prf_output = None if prf_input is None else webauthn_prf(credential.cred_random, prf_input)
        return GetResult(response, credential_id, prf_output)
