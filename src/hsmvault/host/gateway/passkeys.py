"""Passkeys: the WebAuthn relying party behind ``/v1/passkeys`` (ADR 0011).

A passkey's PRF output (WebAuthn Level 3 §10.1.4) wraps the backup key on the client;
the gateway stores the wrapped key next to the credential and hands it out only after a
verified assertion by that credential. The gateway never sees the PRF output, the
backup key, or anything that opens the wrap; the guess limit is the authenticator's
user verification. WebAuthn parsing and verification (CBOR, COSE keys, signatures,
origin and RP-id checks) are python-fido2's :class:`~fido2.server.Fido2Server`.

Routes (JWT-authenticated like every ``/v1`` route; byte strings are base64url without
padding; the JSON of the ``publicKey`` and ``credential`` members is WebAuthn Level 3's
``PublicKeyCredential*OptionsJSON`` / ``*ResponseJSON``):

=========================================  ============================================
``POST /v1/passkeys/registration/options``  ``{}`` → ``{"publicKey", "prfSalt"}``
``POST /v1/passkeys/registration``          ``{"credential", "wrappedKey"?}`` →
                                            ``{"credentialId"}``
``POST /v1/passkeys/authentication/options`` ``{"credentialId"?}`` →
                                            ``{"publicKey", "prfSalts": {id: salt}}``
``POST /v1/passkeys/authentication``        ``{"credential"}`` →
                                            ``{"credentialId", "prfSalt", "wrappedKey"}``
``POST /v1/passkeys/{id}/salt-rotation``    ``{}`` → ``{"publicKey", "prfSalt"}``
``PUT /v1/passkeys/{id}/wrapped-key``       ``{"credential", "wrappedKey"}`` →
                                            ``{"credentialId", "prfSalt"}``
``GET /v1/passkeys``                        → ``{"passkeys": [{"credentialId",
                                            "createdAt", "lastUsedAt", "hasWrappedKey"}]}``
``DELETE /v1/passkeys/{id}``                → 204
=========================================  ============================================

The options carry no ``extensions``: the client adds ``extensions.prf`` itself with the
salt(s) given next to them as PRF input(s) (``eval.first`` / ``evalByCredential``), and
must strip ``clientExtensionResults.prf.results`` before sending a response (one that
carries PRF results is refused with 400: they are the secret).

Rules enforced (ADR 0011):

* user verification is **required** (UV flag), user presence too (UP flag);
* the origin must be one of ``passkey_origins`` exactly, ``crossOrigin`` must be false,
  and ``rpIdHash`` must be SHA-256 of ``passkey_rp_id``;
* attestation ``none`` (statements are not verified); credential keys ES256 (-7) or
  RS256 (-257) only;
* a challenge is 32 random bytes, single use, bound to the user and the ceremony
  (``registration``, ``authentication``, ``salt-rotation``) and valid 5 minutes. It is
  consumed (atomically, in the metadata store) *before* the answer is verified, so an
  answer is never verified twice; a second use is 409 ``challenge_replayed``, a late
  one 409 ``challenge_expired``;
* sign counts: if the stored or the new count is non-zero, the new one must be greater
  (else 403: a cloned authenticator);
* every credential has its own server-chosen 32-byte PRF salt. A salt rotation commits
  the new salt together with the new wrapped key, in one compare-and-set, and only with
  a fresh assertion by that credential over the rotation's challenge. An answer made
  with a salt that has since been replaced is 409 ``salt_changed``;
* several credentials per user; a removed credential is gone at once.

Errors are JSON ``{"error", "detail"}``: 400 ``bad_request`` (malformed), 401
``unauthorized``, 403 ``passkey_refused`` (the detail names the failed check), 404
``not_found``, 409 (``challenge_replayed``, ``challenge_expired``, ``credential_exists``,
``salt_changed``, ``conflict``), 413, 429, 503 (no passkey storage). No detail ever
holds a token, a key, a salt or request bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable, Collection, Hashable, Mapping
from typing import Annotated, Any, Final, Protocol, TypeVar

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import APIRouter, Depends, Request, Security
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fido2 import cbor
from fido2.cose import ES256, RS256, CoseKey
from fido2.server import Fido2Server
from fido2.utils import websafe_encode
from fido2.webauthn import (
    Aaguid,
    AttestationConveyancePreference,
    AttestedCredentialData,
    AuthenticationResponse,
    AuthenticatorData,
    PublicKeyCredentialDescriptor,
    PublicKeyCredentialParameters,
    PublicKeyCredentialRpEntity,
    PublicKeyCredentialType,
    PublicKeyCredentialUserEntity,
    RegistrationResponse,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from hsmvault.crypto.key_wrap import WRAPPED_KEY_LEN
from hsmvault.errors import InvalidParameter
from hsmvault.host.storage.base import PasskeyChallenge, PasskeyRecord, PasskeyStore

from .config import GatewayConfig
from .errors import ApiError, ErrorBody
from .ratelimit import TokenBuckets

__all__ = [
    "CHALLENGE_TTL",
    "COSE_ALGORITHMS",
    "CREDENTIAL_ID_PATTERN",
    "MAX_BODY",
    "PasskeyService",
    "passkeys_router",
    "user_handle",
]

_log = logging.getLogger(__name__)

#: ADR 0011: a challenge is valid for 5 minutes (also the ceremonies' ``timeout``).
CHALLENGE_TTL: Final = 300.0
#: Consumed and expired challenges are kept this long after expiry (so a late replay
#: is still told apart from an unknown challenge), then purged.
_PURGE_AFTER: Final = 300.0
#: ES256 and RS256 are offered (in that order); nothing else is accepted.
COSE_ALGORITHMS: Final = (ES256.ALGORITHM, RS256.ALGORITHM)
#: Largest request body of these routes (an answer with RSA keys is a few KiB).
MAX_BODY: Final = 64 * 1024
#: 16..1023 bytes (WebAuthn L3 §5.1: at most 1023; at least 16 by §4 "Credential ID")
#: in base64url without padding.
CREDENTIAL_ID_PATTERN: Final = r"^[A-Za-z0-9_-]{22,1364}$"
_CREDENTIAL_ID_MIN: Final = 16
_CREDENTIAL_ID_MAX: Final = 1023
_CHALLENGE_LEN: Final = 32
_PRF_SALT_LEN: Final = 32
_WRAP_VERSION: Final = 1  # first byte of an ADR 0011 wrap (crypto.key_wrap, version 1)
_RP_NAME: Final = "hsmvault"
_USER_HANDLE_LABEL: Final = b"hsmvault/passkey-user-handle/v1\x00"
_MIN_RSA_BITS: Final = 2048

_CREDENTIAL_KEYS: Final = frozenset(
    {"id", "rawId", "response", "authenticatorAttachment", "clientExtensionResults", "type"}
)
_ATTESTATION_RESPONSE_KEYS: Final = frozenset(
    {
        "clientDataJSON",
        "attestationObject",
        "authenticatorData",
        "transports",
        "publicKey",
        "publicKeyAlgorithm",
    }
)
_ASSERTION_RESPONSE_KEYS: Final = frozenset(
    {"clientDataJSON", "authenticatorData", "signature", "userHandle", "attestationObject"}
)

#: python-fido2's refusals (fixed strings), as the check that failed.
_FIDO2_REFUSALS: Final[Mapping[str, str]] = {
    "Incorrect type in CollectedClientData.": "clientDataJSON.type is not this ceremony's",
    "Invalid origin in CollectedClientData.": "the origin is not allowed",
    "Wrong challenge in response.": "the challenge does not match",
    "Wrong RP ID hash in response.": "rpIdHash is not this relying party's",
    "User Present flag not set.": "user presence (UP) is missing",
    "User verification required, but User Verified flag not set.": (
        "user verification (UV) is required"
    ),
    "User verification required, but user verified flag not set.": (
        "user verification (UV) is required"
    ),
    "Invalid signature.": "the signature does not verify",
}

_M = TypeVar("_M", bound=BaseModel)


# --------------------------------------------------------------------------- helpers


def b64url(data: bytes) -> str:
    """base64url without padding (WebAuthn's JSON encoding of bytes)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str, what: str) -> bytes:
    if not isinstance(text, str) or not text or len(text) % 4 == 1:
        raise _bad(f"{what} must be base64url")
    if not all(c.isascii() and (c.isalnum() or c in "-_") for c in text):
        raise _bad(f"{what} must be base64url without padding")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise _bad(f"{what} must be base64url") from None


def _bad(detail: str) -> ApiError:
    return ApiError(400, "bad_request", detail)


def _refused(detail: str) -> ApiError:
    _log.info("passkey answer refused: %s", detail)  # fixed texts: nothing secret
    return ApiError(403, "passkey_refused", detail)


def _not_found(detail: str) -> ApiError:
    return ApiError(404, "not_found", detail)


def user_handle(user_id: bytes) -> bytes:
    """The WebAuthn ``user.id`` of a vault user: 32 bytes, a hash of the user id (so
    the authenticator stores no account name as the handle)."""
    return hashlib.sha256(_USER_HANDLE_LABEL + user_id).digest()


def _credential_id(text: str) -> bytes:
    raw = _b64url_decode(text, "credentialId")
    if not _CREDENTIAL_ID_MIN <= len(raw) <= _CREDENTIAL_ID_MAX:
        raise _bad(f"a credential id is {_CREDENTIAL_ID_MIN}..{_CREDENTIAL_ID_MAX} bytes")
    return raw


def _wrapped_key(text: str) -> bytes:
    """A wrapped key in the ADR 0011 format (length and version; its content only the
    client can check)."""
    raw = _b64url_decode(text, "wrappedKey")
    if len(raw) != WRAPPED_KEY_LEN or raw[0] != _WRAP_VERSION:
        raise _bad(f"wrappedKey must be a version-1 wrap of {WRAPPED_KEY_LEN} bytes")
    return raw


def _check_credential_json(body: Mapping[str, Any], response_keys: frozenset[str]) -> None:
    """Strict shape of a ``*ResponseJSON`` before python-fido2 parses it."""
    unknown = set(body) - _CREDENTIAL_KEYS
    if unknown:
        raise _bad("credential has unknown members")
    if body.get("type") != "public-key":
        raise _bad("credential.type must be 'public-key'")
    if not isinstance(body.get("id"), str) or not isinstance(body.get("rawId"), str):
        raise _bad("credential.id and credential.rawId must be strings")
    response = body.get("response")
    if not isinstance(response, dict):
        raise _bad("credential.response must be an object")
    if set(response) - response_keys:
        raise _bad("credential.response has unknown members")
    for key, value in response.items():
        if key not in ("transports", "publicKeyAlgorithm") and not (
            value is None or isinstance(value, str)
        ):
            raise _bad(f"credential.response.{key} must be a string")
    extensions = body.get("clientExtensionResults", {})
    if not isinstance(extensions, dict):
        raise _bad("credential.clientExtensionResults must be an object")
    prf = extensions.get("prf")
    if isinstance(prf, dict) and "results" in prf:
        # The PRF results are the secret that opens the wrap: never accept them.
        raise _bad("PRF results must never be sent to the server")


def _check_public_key(key: CoseKey) -> None:
    """The credential key is ES256 on P-256 or RS256 of at least 2048 bits, and loads
    (on the curve / a valid modulus)."""
    try:
        if isinstance(key, ES256) and key.ALGORITHM == ES256.ALGORITHM:
            x, y = key[-2], key[-3]
            if key[1] != 2 or key[-1] != 1 or not (len(x) == len(y) == 32):
                raise ValueError("not an uncompressed P-256 key")
            ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + x + y)
            return
        if isinstance(key, RS256):
            n, e = int.from_bytes(key[-1], "big"), int.from_bytes(key[-2], "big")
            if key[1] != 3 or n.bit_length() < _MIN_RSA_BITS:
                raise ValueError("RSA key too small")
            rsa.RSAPublicNumbers(e, n).public_key()
            return
    except (KeyError, TypeError, ValueError):
        raise _refused("the credential public key is malformed") from None
    raise _refused("the credential algorithm is not ES256 or RS256")


def _fido2_refusal(exc: Exception) -> ApiError:
    message = str(exc) if isinstance(exc, ValueError) else ""
    return _refused(_FIDO2_REFUSALS.get(message, "the WebAuthn answer does not verify"))


def _check_sign_count(stored: int, new: int) -> None:
    """ADR 0011: if either count is non-zero, the new one must be greater."""
    if (stored or new) and new <= stored:
        raise _refused("the sign count did not increase (a cloned authenticator?)")


# --------------------------------------------------------------------------- service


class PasskeyService:
    """The ceremonies, over a :class:`PasskeyStore` (``None``: every call is 503).
    Methods block (storage I/O): call them from a worker thread. ``origins`` is passed
    per call: the default origin depends on the port a request came in on."""

    def __init__(
        self,
        store: PasskeyStore | None,
        *,
        rp_id: str,
        clock: Callable[[], float] = time.time,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self._store = store
        self._rp = PublicKeyCredentialRpEntity(name=_RP_NAME, id=rp_id)
        self._clock = clock
        self._random = random_bytes

    # -------------------------------------------------------------- plumbing

    def _passkeys(self) -> PasskeyStore:
        if self._store is None:
            raise ApiError(503, "unavailable", "this gateway's metadata store keeps no passkeys")
        return self._store

    def _server(self, origins: Collection[str]) -> Fido2Server:
        allowed = frozenset(origins)
        server = Fido2Server(
            self._rp,
            attestation=AttestationConveyancePreference.NONE,
            verify_origin=allowed.__contains__,
        )
        server.allowed_algorithms = [
            PublicKeyCredentialParameters(type=PublicKeyCredentialType.PUBLIC_KEY, alg=alg)
            for alg in COSE_ALGORITHMS
        ]
        server.timeout = int(CHALLENGE_TTL * 1000)  # type: ignore[assignment]
        return server

    def _issue(
        self,
        user_id: bytes,
        ceremony: str,
        *,
        credential_id: bytes | None = None,
        new_prf_salt: bytes | None = None,
        offered: tuple[tuple[bytes, bytes], ...] = (),
    ) -> bytes:
        """Store a new challenge for ``user_id`` and ``ceremony``; return its bytes."""
        now = self._clock()
        value = self._random(_CHALLENGE_LEN)
        challenge = PasskeyChallenge(
            challenge=value,
            user_id=user_id,
            ceremony=ceremony,
            expires_at=now + CHALLENGE_TTL,
            credential_id=credential_id,
            new_prf_salt=new_prf_salt,
            offered_salts=offered,
        )
        self._passkeys().put_challenge(challenge, purge_before=now - _PURGE_AFTER)
        return value

    def _consume(
        self, user_id: bytes, value: bytes, ceremonies: Collection[str]
    ) -> PasskeyChallenge:
        """The user's challenge ``value``, consumed now: 403 unknown or for another
        ceremony, 409 replayed or expired."""
        if len(value) != _CHALLENGE_LEN:
            raise _refused("the challenge was not issued by this gateway")
        challenge = self._passkeys().consume_challenge(user_id, value)
        if challenge is None:
            raise _refused("the challenge was not issued by this gateway for this user")
        if challenge.consumed:
            raise ApiError(409, "challenge_replayed", "the challenge was already used")
        if self._clock() > challenge.expires_at:
            raise ApiError(409, "challenge_expired", "the challenge expired; ask for new options")
        if challenge.ceremony not in ceremonies:
            raise _refused("the challenge was issued for another ceremony")
        return challenge

    def _record(self, user_id: bytes, credential_id: bytes) -> PasskeyRecord:
        record = self._passkeys().get_passkey(user_id, credential_id)
        if record is None:
            raise _not_found("no such passkey")
        return record

    @staticmethod
    def _descriptor(credential_id: bytes) -> PublicKeyCredentialDescriptor:
        return PublicKeyCredentialDescriptor(
            type=PublicKeyCredentialType.PUBLIC_KEY, id=credential_id
        )

    def _request_options(
        self, challenge: bytes, credential_ids: list[bytes], origins: Collection[str]
    ) -> dict[str, Any]:
        options, _state = self._server(origins).authenticate_begin(
            [self._descriptor(c) for c in credential_ids],
            user_verification=UserVerificationRequirement.REQUIRED,
            challenge=challenge,
        )
        return dict(options)["publicKey"]  # type: ignore[no-any-return]

    # -------------------------------------------------------------- registration

    def registration_options(
        self, user_id: bytes, origins: Collection[str]
    ) -> tuple[dict[str, Any], bytes]:
        """Creation options JSON (the user's credentials excluded) and the new
        credential's PRF salt, bound to a fresh ``registration`` challenge."""
        existing = self._passkeys().list_passkeys(user_id)
        salt = self._random(_PRF_SALT_LEN)
        challenge = self._issue(user_id, "registration", new_prf_salt=salt)
        name = user_id.decode("utf-8", errors="replace")
        options, _state = self._server(origins).register_begin(
            PublicKeyCredentialUserEntity(name=name, id=user_handle(user_id), display_name=name),
            credentials=[self._descriptor(r.credential_id) for r in existing],
            resident_key_requirement=ResidentKeyRequirement.PREFERRED,
            user_verification=UserVerificationRequirement.REQUIRED,
            challenge=challenge,
        )
        return dict(options)["publicKey"], salt

    def register(
        self,
        user_id: bytes,
        credential: Mapping[str, Any],
        wrapped_key: bytes | None,
        origins: Collection[str],
    ) -> PasskeyRecord:
        """Verify a registration answer and store the credential (with ``wrapped_key``
        if given, made with the PRF of the salt the options named)."""
        _check_credential_json(credential, _ATTESTATION_RESPONSE_KEYS)
        try:
            response = RegistrationResponse.from_dict(credential)
            client_data = response.response.client_data
            attestation = response.response.attestation_object
        except Exception:  # python-fido2 raises assorted types on garbage
            raise _bad("credential is not a well-formed RegistrationResponseJSON") from None
        challenge = self._consume(user_id, client_data.challenge, ("registration",))
        if client_data.cross_origin:
            raise _refused("cross-origin ceremonies are refused")
        state = {
            "challenge": websafe_encode(challenge.challenge),
            "user_verification": UserVerificationRequirement.REQUIRED,
        }
        try:
            auth_data = self._server(origins).register_complete(state, response)
        except Exception as exc:
            raise _fido2_refusal(exc) from None
        attested = auth_data.credential_data
        if attested is None or not attestation.auth_data.is_attested():
            raise _refused("the attestation carries no credential")
        if not hmac.compare_digest(attested.credential_id, response.raw_id):
            raise _refused("rawId is not the attested credential id")
        if not _CREDENTIAL_ID_MIN <= len(attested.credential_id) <= _CREDENTIAL_ID_MAX:
            raise _refused("the credential id length is out of range")
        _check_public_key(attested.public_key)
        assert challenge.new_prf_salt is not None  # a registration challenge has one
        record = PasskeyRecord(
            user_id=user_id,
            credential_id=attested.credential_id,
            public_key=cbor.encode(dict(attested.public_key)),
            sign_count=auth_data.counter,
            prf_salt=challenge.new_prf_salt,
            wrapped_key=wrapped_key,
            created_at=self._clock(),
            last_used_at=None,
        )
        try:
            self._passkeys().add_passkey(record)
        except InvalidParameter:
            raise ApiError(
                409, "credential_exists", "the credential is already registered"
            ) from None
        return record

    # -------------------------------------------------------------- authentication

    def authentication_options(
        self, user_id: bytes, credential_id: bytes | None, origins: Collection[str]
    ) -> tuple[dict[str, Any], dict[bytes, bytes]]:
        """Request options JSON for one credential, or for all of the user's, and the
        PRF salt of each, bound to a fresh ``authentication`` challenge."""
        if credential_id is not None:
            records = [self._record(user_id, credential_id)]
        else:
            records = self._passkeys().list_passkeys(user_id)
            if not records:
                raise _not_found("this user has no passkeys")
        offered = tuple((r.credential_id, r.prf_salt) for r in records)
        challenge = self._issue(
            user_id, "authentication", credential_id=credential_id, offered=offered
        )
        public_key = self._request_options(challenge, [r.credential_id for r in records], origins)
        return public_key, dict(offered)

    def _verify_assertion(
        self,
        user_id: bytes,
        credential: Mapping[str, Any],
        ceremonies: Collection[str],
        origins: Collection[str],
    ) -> tuple[PasskeyChallenge, PasskeyRecord, AuthenticatorData]:
        """Parse, consume the challenge, and verify an assertion by one of the user's
        credentials (every ADR 0011 rule but the final compare-and-set)."""
        _check_credential_json(credential, _ASSERTION_RESPONSE_KEYS)
        try:
            response = AuthenticationResponse.from_dict(credential)
            client_data = response.response.client_data
            auth_data = response.response.authenticator_data
            if not isinstance(response.response.signature, bytes):
                raise TypeError("signature")
        except Exception:  # python-fido2 raises assorted types on garbage
            raise _bad("credential is not a well-formed AuthenticationResponseJSON") from None
        challenge = self._consume(user_id, client_data.challenge, ceremonies)
        credential_id = response.raw_id
        if challenge.credential_id is not None and not hmac.compare_digest(
            challenge.credential_id, credential_id
        ):
            raise _refused("the challenge was issued for another credential")
        if challenge.ceremony == "authentication" and not any(
            hmac.compare_digest(c, credential_id) for c, _salt in challenge.offered_salts
        ):
            raise _refused("the credential was not among those the options allowed")
        record = self._record(user_id, credential_id)
        if client_data.cross_origin:
            raise _refused("cross-origin ceremonies are refused")
        handle = response.response.user_handle
        if handle is not None and not hmac.compare_digest(handle, user_handle(user_id)):
            raise _refused("userHandle is not this user's")
        state = {
            "challenge": websafe_encode(challenge.challenge),
            "user_verification": UserVerificationRequirement.REQUIRED,
        }
        try:
            decoded = cbor.decode(record.public_key)
            if not isinstance(decoded, Mapping):
                raise TypeError("stored public key is not a COSE map")
            key = CoseKey.parse(decoded)
            stored = AttestedCredentialData.create(Aaguid.NONE, record.credential_id, key)
            self._server(origins).authenticate_complete(state, [stored], response)
        except Exception as exc:
            raise _fido2_refusal(exc) from None
        _check_sign_count(record.sign_count, auth_data.counter)
        return challenge, record, auth_data

    @staticmethod
    def _check_offered_salt(challenge: PasskeyChallenge, record: PasskeyRecord) -> None:
        for credential_id, salt in challenge.offered_salts:
            if credential_id == record.credential_id:
                if not hmac.compare_digest(salt, record.prf_salt):
                    raise ApiError(
                        409, "salt_changed", "the passkey's PRF salt changed; ask for new options"
                    )
                return
        raise _refused("the credential was not among those the options allowed")

    def _changed(self) -> ApiError:
        return ApiError(409, "conflict", "the passkey changed meanwhile; ask for new options")

    def authenticate(
        self, user_id: bytes, credential: Mapping[str, Any], origins: Collection[str]
    ) -> PasskeyRecord:
        """Verify an assertion over an ``authentication`` challenge; the credential as
        updated (its wrapped key is released to the caller only now)."""
        challenge, record, auth_data = self._verify_assertion(
            user_id, credential, ("authentication",), origins
        )
        self._check_offered_salt(challenge, record)
        return self._commit_use(user_id, record, auth_data)

    def _commit_use(
        self,
        user_id: bytes,
        record: PasskeyRecord,
        auth_data: AuthenticatorData,
        *,
        prf_salt: bytes | None = None,
        wrapped_key: bytes | None = None,
    ) -> PasskeyRecord:
        """The final compare-and-set of a verified assertion: the new sign count and
        last use (and ``prf_salt``/``wrapped_key`` when given), only if the record is
        still the one verified against; else the 409 of :meth:`_changed`."""
        updated = self._passkeys().update_passkey(
            user_id,
            record.credential_id,
            expected_sign_count=record.sign_count,
            expected_prf_salt=record.prf_salt,
            sign_count=auth_data.counter,
            last_used_at=self._clock(),
            prf_salt=prf_salt,
            wrapped_key=wrapped_key,
        )
        if updated is None:
            raise self._changed()
        return updated

    # -------------------------------------------------------------- wrapped key, salt

    def salt_rotation_options(
        self, user_id: bytes, credential_id: bytes, origins: Collection[str]
    ) -> tuple[dict[str, Any], bytes]:
        """Request options for that credential over a ``salt-rotation`` challenge that
        carries a new PRF salt (committed only by :meth:`put_wrapped_key`)."""
        record = self._record(user_id, credential_id)
        salt = self._random(_PRF_SALT_LEN)
        challenge = self._issue(
            user_id, "salt-rotation", credential_id=record.credential_id, new_prf_salt=salt
        )
        return self._request_options(challenge, [record.credential_id], origins), salt

    def put_wrapped_key(
        self,
        user_id: bytes,
        credential_id: bytes,
        credential: Mapping[str, Any],
        wrapped_key: bytes,
        origins: Collection[str],
    ) -> PasskeyRecord:
        """Store a new wrapped key, given a fresh assertion *by that credential* over an
        ``authentication`` or ``salt-rotation`` challenge; in the second case the new
        salt is committed with it (atomically)."""
        challenge, record, auth_data = self._verify_assertion(
            user_id, credential, ("authentication", "salt-rotation"), origins
        )
        if not hmac.compare_digest(record.credential_id, credential_id):
            raise _refused("the assertion is by another credential than the path names")
        new_salt = None
        if challenge.ceremony == "salt-rotation":
            new_salt = challenge.new_prf_salt
        else:
            self._check_offered_salt(challenge, record)
        return self._commit_use(
            user_id, record, auth_data, prf_salt=new_salt, wrapped_key=wrapped_key
        )

    # -------------------------------------------------------------- listing, removal

    def list_passkeys(self, user_id: bytes) -> list[PasskeyRecord]:
        return self._passkeys().list_passkeys(user_id)

    def remove_passkey(self, user_id: bytes, credential_id: bytes) -> None:
        if not self._passkeys().delete_passkey(user_id, credential_id):
            raise _not_found("no such passkey")


# --------------------------------------------------------------------------- bodies


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmptyBody(_Strict):
    """``{}``."""


class RegistrationOptionsBody(BaseModel):
    public_key: dict[str, Any] = Field(
        alias="publicKey", description="PublicKeyCredentialCreationOptionsJSON"
    )
    prf_salt: str = Field(alias="prfSalt", description="the new credential's PRF input")


class RegistrationBody(_Strict):
    credential: dict[str, Any] = Field(description="RegistrationResponseJSON (no PRF results)")
    wrapped_key: str | None = Field(
        default=None,
        alias="wrappedKey",
        description="the backup key wrapped under the PRF output (docs/formats/passkey-wrap.md)",
    )


class CredentialIdBody(BaseModel):
    credential_id: str = Field(alias="credentialId")


class AuthenticationOptionsRequest(_Strict):
    credential_id: str | None = Field(
        default=None, alias="credentialId", description="one credential, or null for all"
    )


class AuthenticationOptionsBody(BaseModel):
    public_key: dict[str, Any] = Field(
        alias="publicKey", description="PublicKeyCredentialRequestOptionsJSON"
    )
    prf_salts: dict[str, str] = Field(alias="prfSalts", description="credential id → its PRF input")


class AuthenticationBody(_Strict):
    credential: dict[str, Any] = Field(description="AuthenticationResponseJSON (no PRF results)")


class AuthenticatedBody(BaseModel):
    credential_id: str = Field(alias="credentialId")
    prf_salt: str = Field(alias="prfSalt")
    wrapped_key: str | None = Field(alias="wrappedKey")


class SaltRotationBody(BaseModel):
    public_key: dict[str, Any] = Field(
        alias="publicKey", description="PublicKeyCredentialRequestOptionsJSON"
    )
    prf_salt: str = Field(alias="prfSalt", description="the new PRF input")


class WrappedKeyBody(_Strict):
    credential: dict[str, Any] = Field(
        description="AuthenticationResponseJSON by this credential (no PRF results)"
    )
    wrapped_key: str = Field(alias="wrappedKey")


class WrappedKeyStored(BaseModel):
    credential_id: str = Field(alias="credentialId")
    prf_salt: str = Field(alias="prfSalt")


class PasskeyInfo(BaseModel):
    credential_id: str = Field(alias="credentialId")
    created_at: float = Field(alias="createdAt", description="seconds since the epoch")
    last_used_at: float | None = Field(alias="lastUsedAt")
    has_wrapped_key: bool = Field(alias="hasWrappedKey")


class PasskeyList(BaseModel):
    passkeys: list[PasskeyInfo]


# --------------------------------------------------------------------------- routes


class _Gateway(Protocol):
    """What this router needs of ``app.state.gateway`` (see :mod:`.app`)."""

    @property
    def address_buckets(self) -> TokenBuckets: ...

    def limit(self, buckets: TokenBuckets, key: Hashable) -> None: ...

    def authenticate(self, credentials: HTTPAuthorizationCredentials | None) -> bytes: ...


_bearer = HTTPBearer(auto_error=False, bearerFormat="JWT", description="the app's JWT")


async def _authenticated(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> bytes:
    """The same checks as every ``/v1`` route: address budget, token, user budget."""
    gateway: _Gateway = request.app.state.gateway
    address = request.client.host if request.client is not None else "unknown"
    gateway.limit(gateway.address_buckets, address)
    return gateway.authenticate(credentials)


_UserId = Annotated[bytes, Depends(_authenticated)]


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        raise ApiError(413, "too_large", f"at most {MAX_BODY} bytes per request")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise ApiError(413, "too_large", f"at most {MAX_BODY} bytes per request")
    return bytes(body)


async def _parse(request: Request, model: type[_M], *, empty_ok: bool = False) -> _M:
    """The JSON body as ``model``; 400 (never 422) when it is not: these routes answer
    every malformed request with 400 (ADR 0011)."""
    raw = await _read_body(request)
    if empty_ok and not raw.strip():
        raw = b"{}"
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError):
        raise _bad("the body is not JSON") from None
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        parts = []
        for err in exc.errors()[:3]:  # loc and msg only: never the input
            loc = ".".join(str(p) for p in err.get("loc", ())) or "body"
            parts.append(f"{loc}: {err.get('msg', 'invalid')}")
        raise _bad("; ".join(parts)) from None


def _path_credential_id(request: Request) -> bytes:
    return _credential_id(str(request.path_params.get("credentialId", "")))


def _origins(config: GatewayConfig, request: Request) -> tuple[str, ...]:
    """``passkey_origins``, or ``http://localhost:<port this request came in on>``."""
    if config.passkey_origins:
        return config.passkey_origins
    server = request.scope.get("server")
    if not server or len(server) < 2 or server[1] is None:
        return ()
    return (f"http://localhost:{int(server[1])}",)


_DESCRIPTIONS: Final = {
    400: "Malformed request or WebAuthn answer",
    401: "Missing, expired or invalid bearer token",
    403: "WebAuthn answer refused (origin, RP id, challenge, signature, UV, sign count)",
    404: "No such passkey",
    409: "Challenge replayed or expired, credential exists, salt changed, or a race",
    413: "Request body too large",
    429: "Rate limited (see Retry-After)",
    503: "This gateway keeps no passkeys",
}


def _responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": ErrorBody, "description": _DESCRIPTIONS[s]} for s in statuses}


def _body_doc(model: type[BaseModel], *, required: bool = True) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True, mode="validation")
    return {
        "requestBody": {
            "required": required,
            "content": {"application/json": {"schema": schema}},
        }
    }


def _with_path(extra: dict[str, Any]) -> dict[str, Any]:
    parameter = {
        "name": "credentialId",
        "in": "path",
        "required": True,
        "description": "base64url (no padding) of the credential id, 16..1023 bytes",
        "schema": {"type": "string", "pattern": CREDENTIAL_ID_PATTERN},
    }
    return {**extra, "parameters": [parameter]}


def _info(record: PasskeyRecord) -> PasskeyInfo:
    return PasskeyInfo(
        credentialId=b64url(record.credential_id),
        createdAt=record.created_at,
        lastUsedAt=record.last_used_at,
        hasWrappedKey=record.wrapped_key is not None,
    )


def passkeys_router(
    config: GatewayConfig, store: object, *, clock: Callable[[], float] = time.time
) -> APIRouter:
    """The ``/v1/passkeys`` routes over ``store`` (the gateway's metadata store: used
    if it is a :class:`PasskeyStore`, else the routes answer 503)."""
    passkey_store = store if isinstance(store, PasskeyStore) else None
    service = PasskeyService(passkey_store, rp_id=config.passkey_rp_id, clock=clock)
    router = APIRouter(prefix="/v1/passkeys", tags=["passkeys"])
    common = (400, 401, 403, 404, 409, 413, 429, 503)

    @router.post(
        "/registration/options",
        response_model=RegistrationOptionsBody,
        responses=_responses(400, 401, 413, 429, 503),
        openapi_extra=_body_doc(EmptyBody, required=False),
    )
    async def passkey_registration_options(
        request: Request, user_id: _UserId
    ) -> RegistrationOptionsBody:
        """Creation options and the new credential's PRF salt (a fresh challenge)."""
        await _parse(request, EmptyBody, empty_ok=True)
        public_key, salt = await run_in_threadpool(
            service.registration_options, user_id, _origins(config, request)
        )
        return RegistrationOptionsBody(publicKey=public_key, prfSalt=b64url(salt))

    @router.post(
        "/registration",
        response_model=CredentialIdBody,
        responses=_responses(400, 401, 403, 409, 413, 429, 503),
        openapi_extra=_body_doc(RegistrationBody),
    )
    async def passkey_registration(request: Request, user_id: _UserId) -> CredentialIdBody:
        """Verify the new credential (UV, origin, RP id, challenge) and store it, with
        the backup key wrapped under its PRF output if given."""
        body = await _parse(request, RegistrationBody)
        wrapped = None if body.wrapped_key is None else _wrapped_key(body.wrapped_key)
        record = await run_in_threadpool(
            service.register, user_id, body.credential, wrapped, _origins(config, request)
        )
        return CredentialIdBody(credentialId=b64url(record.credential_id))

    @router.post(
        "/authentication/options",
        response_model=AuthenticationOptionsBody,
        responses=_responses(400, 401, 404, 413, 429, 503),
        openapi_extra=_body_doc(AuthenticationOptionsRequest, required=False),
    )
    async def passkey_authentication_options(
        request: Request, user_id: _UserId
    ) -> AuthenticationOptionsBody:
        """Request options for one credential or all of the user's, with their salts."""
        body = await _parse(request, AuthenticationOptionsRequest, empty_ok=True)
        wanted = None if body.credential_id is None else _credential_id(body.credential_id)
        public_key, salts = await run_in_threadpool(
            service.authentication_options, user_id, wanted, _origins(config, request)
        )
        return AuthenticationOptionsBody(
            publicKey=public_key, prfSalts={b64url(c): b64url(s) for c, s in salts.items()}
        )

    @router.post(
        "/authentication",
        response_model=AuthenticatedBody,
        responses=_responses(*common),
        openapi_extra=_body_doc(AuthenticationBody),
    )
    async def passkey_authentication(request: Request, user_id: _UserId) -> AuthenticatedBody:
        """Verify an assertion; only then release the credential's salt and wrapped key."""
        body = await _parse(request, AuthenticationBody)
        record = await run_in_threadpool(
            service.authenticate, user_id, body.credential, _origins(config, request)
        )
        return AuthenticatedBody(
            credentialId=b64url(record.credential_id),
            prfSalt=b64url(record.prf_salt),
            wrappedKey=None if record.wrapped_key is None else b64url(record.wrapped_key),
        )

    @router.get(
        "",
        response_model=PasskeyList,
        responses=_responses(401, 429, 503),
    )
    async def list_passkeys(request: Request, user_id: _UserId) -> PasskeyList:
        """The caller's passkeys (no keys, no salts)."""
        records = await run_in_threadpool(service.list_passkeys, user_id)
        return PasskeyList(passkeys=[_info(r) for r in records])

    @router.post(
        "/{credentialId}/salt-rotation",
        response_model=SaltRotationBody,
        responses=_responses(400, 401, 404, 413, 429, 503),
        openapi_extra=_with_path(_body_doc(EmptyBody, required=False)),
    )
    async def passkey_salt_rotation(request: Request, user_id: _UserId) -> SaltRotationBody:
        """Request options for this credential and a new PRF salt; the salt replaces
        the current one only with the new wrapped key (``PUT …/wrapped-key``)."""
        credential_id = _path_credential_id(request)
        await _parse(request, EmptyBody, empty_ok=True)
        public_key, salt = await run_in_threadpool(
            service.salt_rotation_options, user_id, credential_id, _origins(config, request)
        )
        return SaltRotationBody(publicKey=public_key, prfSalt=b64url(salt))

    @router.put(
        "/{credentialId}/wrapped-key",
        response_model=WrappedKeyStored,
        responses=_responses(*common),
        openapi_extra=_with_path(_body_doc(WrappedKeyBody)),
    )
    async def passkey_wrapped_key(request: Request, user_id: _UserId) -> WrappedKeyStored:
        """Store a new wrapped key given a fresh assertion by this credential (and
        commit a rotated salt with it, if the challenge came from a salt rotation)."""
        credential_id = _path_credential_id(request)
        body = await _parse(request, WrappedKeyBody)
        wrapped = _wrapped_key(body.wrapped_key)
        record = await run_in_threadpool(
            service.put_wrapped_key,
            user_id,
            credential_id,
            body.credential,
            wrapped,
            _origins(config, request),
        )
        return WrappedKeyStored(
            credentialId=b64url(record.credential_id), prfSalt=b64url(record.prf_salt)
        )

    @router.delete(
        "/{credentialId}",
        status_code=204,
        response_class=Response,
        responses=_responses(400, 401, 404, 429, 503),
        openapi_extra=_with_path({}),
    )
    async def delete_passkey(request: Request, user_id: _UserId) -> Response:
        """Remove the passkey at once (with its wrapped key)."""
        credential_id = _path_credential_id(request)
        await run_in_threadpool(service.remove_passkey, user_id, credential_id)
        return Response(status_code=204)

    return router
