"""The passkey flows over the gateway's ``/v1/passkeys`` API (ADR 0011).

:class:`PasskeyApi` is the HTTP half (one method per route, strict parsing of the
answers); the functions are the ceremonies:

* :func:`protect` — register a new passkey and store the backup key wrapped under its
  PRF output. Adding a passkey needs the backup key itself: the caller has it on the
  device, or gets it first with a PIN, a recovery code or another passkey
  (``VaultClient.recover`` / :func:`recover`). If the authenticator gives no PRF output
  at creation, the credential is registered first and the wrap is stored after one
  assertion; if it gives none then either, the new credential is removed again and
  :class:`~.errors.PrfUnavailable` is raised.
* :func:`recover` — one assertion; the gateway releases the wrapped key only after
  verifying it; the PRF output opens it here.
* :func:`rotate_salt` — a new server-chosen PRF salt and a new wrap of the backup key,
  committed together by the gateway with a fresh assertion.
* :func:`list_passkeys`, :func:`remove`.

The wrap is :mod:`.wrap` (``docs/formats/passkey-wrap.md``). The PRF output and the
backup key never leave this process; requests carry only WebAuthn answers (without PRF
results) and wrapped keys. Nothing is retried: a ceremony that failed starts again.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from hsmvault.client.errors import GatewayError
from hsmvault.client.http import GatewayHttp
from hsmvault.crypto.backup_stream import BackupKey
from hsmvault.crypto.key_wrap import WRAPPED_KEY_LEN
from hsmvault.errors import DecodeError, InvalidParameter, VerificationError

from .authenticator import Authenticator
from .errors import NoWrappedKey, PasskeyConflict, PasskeyRefused, PrfUnavailable
from .wrap import unwrap_with_prf, wrap_with_prf

__all__ = [
    "AuthenticatedPasskey",
    "PasskeyApi",
    "PasskeyInfo",
    "list_passkeys",
    "protect",
    "recover",
    "remove",
    "rotate_salt",
]

_log = logging.getLogger(__name__)
_SALT_LEN: Final = 32


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _decode(value: object, what: str) -> bytes:
    if not isinstance(value, str) or not value or "=" in value:
        raise DecodeError(f"gateway answer: {what} must be base64url")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise DecodeError(f"gateway answer: {what} must be base64url") from None


def _salt(value: object, what: str) -> bytes:
    salt = _decode(value, what)
    if len(salt) != _SALT_LEN:
        raise DecodeError(f"gateway answer: {what} must be {_SALT_LEN} bytes")
    return salt


def _wrapped(value: object) -> bytes:
    wrapped = _decode(value, "wrappedKey")
    if len(wrapped) != WRAPPED_KEY_LEN:
        raise DecodeError(f"gateway answer: wrappedKey must be {WRAPPED_KEY_LEN} bytes")
    return wrapped


def _object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DecodeError(f"gateway answer: {what} must be an object")
    return value


def _number(value: object, what: str, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise DecodeError(f"gateway answer: {what} must be a number")
    return float(value)


@dataclass(frozen=True, slots=True)
class PasskeyInfo:
    """A registered passkey as ``GET /v1/passkeys`` lists it (nothing secret)."""

    credential_id: bytes
    created_at: float
    last_used_at: float | None
    has_wrapped_key: bool


@dataclass(frozen=True, slots=True)
class AuthenticatedPasskey:
    """What ``POST /v1/passkeys/authentication`` releases after a verified assertion."""

    credential_id: bytes
    prf_salt: bytes
    wrapped_key: bytes | None


class PasskeyApi:
    """The ``/v1/passkeys`` routes over a :class:`~hsmvault.client.http.GatewayHttp`
    (its token provider, client and error mapping). 403 becomes
    :class:`~.errors.PasskeyRefused` and 409 :class:`~.errors.PasskeyConflict`; other
    statuses raise as :func:`hsmvault.client.http.raise_for_status` says."""

    def __init__(self, http: GatewayHttp) -> None:
        self._http = http

    def _call(self, method: str, path: str, body: object = None) -> Any:
        try:
            response = self._http.call_json(method, path, body)
        except GatewayError as exc:
            if exc.status == 403:
                raise PasskeyRefused(str(exc), status=403, code=exc.code) from None
            if exc.status == 409:
                raise PasskeyConflict(str(exc), status=409, code=exc.code) from None
            raise
        if response.status_code == 204:
            return None
        try:
            return response.json()
        except (ValueError, UnicodeDecodeError):
            raise DecodeError("gateway answered with malformed JSON") from None

    def registration_options(self) -> tuple[dict[str, Any], bytes]:
        """``(creation options JSON, the new credential's PRF salt)``."""
        body = _object(self._call("POST", "passkeys/registration/options", {}), "answer")
        return _object(body.get("publicKey"), "publicKey"), _salt(body.get("prfSalt"), "prfSalt")

    def register(self, credential: Mapping[str, Any], wrapped_key: bytes | None) -> bytes:
        """Store the new credential (and its wrap); its id."""
        request = {
            "credential": dict(credential),
            "wrappedKey": None if wrapped_key is None else b64url(wrapped_key),
        }
        body = _object(self._call("POST", "passkeys/registration", request), "answer")
        return _decode(body.get("credentialId"), "credentialId")

    def authentication_options(
        self, credential_id: bytes | None = None
    ) -> tuple[dict[str, Any], dict[bytes, bytes]]:
        """``(request options JSON, credential id → PRF salt)``."""
        request = {"credentialId": None if credential_id is None else b64url(credential_id)}
        body = _object(self._call("POST", "passkeys/authentication/options", request), "answer")
        salts = _object(body.get("prfSalts"), "prfSalts")
        return _object(body.get("publicKey"), "publicKey"), {
            _decode(k, "prfSalts key"): _salt(v, "prfSalts value") for k, v in salts.items()
        }

    def authenticate(self, credential: Mapping[str, Any]) -> AuthenticatedPasskey:
        """Send an assertion; what the gateway releases."""
        request = {"credential": dict(credential)}
        body = _object(self._call("POST", "passkeys/authentication", request), "answer")
        wrapped = body.get("wrappedKey")
        return AuthenticatedPasskey(
            credential_id=_decode(body.get("credentialId"), "credentialId"),
            prf_salt=_salt(body.get("prfSalt"), "prfSalt"),
            wrapped_key=None if wrapped is None else _wrapped(wrapped),
        )

    def salt_rotation(self, credential_id: bytes) -> tuple[dict[str, Any], bytes]:
        """``(request options JSON for that credential, the new PRF salt)``."""
        path = f"passkeys/{b64url(credential_id)}/salt-rotation"
        body = _object(self._call("POST", path, {}), "answer")
        return _object(body.get("publicKey"), "publicKey"), _salt(body.get("prfSalt"), "prfSalt")

    def put_wrapped_key(
        self, credential_id: bytes, credential: Mapping[str, Any], wrapped_key: bytes
    ) -> bytes:
        """Store a new wrap (with a rotated salt, if the assertion answered a salt
        rotation); the salt now stored."""
        path = f"passkeys/{b64url(credential_id)}/wrapped-key"
        request = {"credential": dict(credential), "wrappedKey": b64url(wrapped_key)}
        body = _object(self._call("PUT", path, request), "answer")
        return _salt(body.get("prfSalt"), "prfSalt")

    def list_passkeys(self) -> list[PasskeyInfo]:
        body = _object(self._call("GET", "passkeys"), "answer")
        items = body.get("passkeys")
        if not isinstance(items, list):
            raise DecodeError("gateway answer: passkeys must be a list")
        out: list[PasskeyInfo] = []
        for item in items:
            entry = _object(item, "passkey")
            has_wrap = entry.get("hasWrappedKey")
            if not isinstance(has_wrap, bool):
                raise DecodeError("gateway answer: hasWrappedKey must be a boolean")
            created = _number(entry.get("createdAt"), "createdAt")
            assert created is not None
            out.append(
                PasskeyInfo(
                    credential_id=_decode(entry.get("credentialId"), "credentialId"),
                    created_at=created,
                    last_used_at=_number(entry.get("lastUsedAt"), "lastUsedAt", optional=True),
                    has_wrapped_key=has_wrap,
                )
            )
        return out

    def remove(self, credential_id: bytes) -> None:
        self._call("DELETE", f"passkeys/{b64url(credential_id)}")


# --------------------------------------------------------------------------- flows


def _rp_id(options: Mapping[str, Any], *, creation: bool) -> str:
    """The RP id the options name (the wrap's context uses it)."""
    if creation:
        rp = options.get("rp")
        rp_id = rp.get("id") if isinstance(rp, Mapping) else None
    else:
        rp_id = options.get("rpId")
    if not isinstance(rp_id, str) or not rp_id:
        raise DecodeError("gateway answer: the options name no RP id")
    return rp_id


def _check_backup_key(backup_key: BackupKey) -> None:
    if not isinstance(backup_key, BackupKey):
        raise InvalidParameter("backup_key must be a BackupKey")


def _credential_id_of(response_json: Mapping[str, Any]) -> bytes:
    raw = response_json.get("rawId")
    if not isinstance(raw, str):
        raise InvalidParameter("the authenticator's response has no rawId")
    return _decode(raw, "rawId")


def protect(api: PasskeyApi, authenticator: Authenticator, backup_key: BackupKey) -> bytes:
    """Register a new passkey that protects ``backup_key``; its credential id."""
    _check_backup_key(backup_key)
    options, salt = api.registration_options()
    rp_id = _rp_id(options, creation=True)
    created = authenticator.create(options, salt)
    credential_id = _credential_id_of(created.response_json)
    if created.prf_output is not None:
        wrapped = wrap_with_prf(
            created.prf_output, backup_key, rp_id=rp_id, credential_id=credential_id
        )
        registered = api.register(created.response_json, wrapped)
        if registered != credential_id:
            raise DecodeError("gateway answer: another credential id than registered")
        return credential_id
    # No PRF at creation (common with CTAP2.1 hmac-secret): register, then assert once.
    registered = api.register(created.response_json, None)
    if registered != credential_id:
        raise DecodeError("gateway answer: another credential id than registered")
    try:
        _store_wrap(api, authenticator, credential_id, backup_key)
    except PrfUnavailable:
        api.remove(credential_id)
        raise
    return credential_id


def _store_wrap(
    api: PasskeyApi, authenticator: Authenticator, credential_id: bytes, backup_key: BackupKey
) -> None:
    options, salts = api.authentication_options(credential_id)
    salt = salts.get(credential_id)
    if salt is None:
        raise DecodeError("gateway answer: no PRF salt for the credential")
    _wrap_and_put(
        api,
        authenticator,
        options,
        credential_id=credential_id,
        salt=salt,
        backup_key=backup_key,
        salt_mismatch="gateway answer: the stored salt is not the one used",
    )


def _wrap_and_put(
    api: PasskeyApi,
    authenticator: Authenticator,
    options: Mapping[str, Any],
    *,
    credential_id: bytes,
    salt: bytes,
    backup_key: BackupKey,
    salt_mismatch: str,
) -> None:
    """Assert with ``credential_id`` under request ``options``, evaluating the PRF on
    ``salt``; store ``backup_key`` wrapped under that PRF output. Raises
    InvalidParameter (another credential answered), PrfUnavailable, and
    DecodeError(``salt_mismatch``) when the gateway reports another stored salt."""
    asserted = authenticator.get(options, {credential_id: salt})
    if asserted.credential_id != credential_id:
        raise InvalidParameter("the authenticator answered with another credential")
    if asserted.prf_output is None:
        raise PrfUnavailable("the authenticator gives no PRF output")
    wrapped = wrap_with_prf(
        asserted.prf_output,
        backup_key,
        rp_id=_rp_id(options, creation=False),
        credential_id=credential_id,
    )
    stored = api.put_wrapped_key(credential_id, asserted.response_json, wrapped)
    if stored != salt:
        raise DecodeError(salt_mismatch)


def recover(
    api: PasskeyApi, authenticator: Authenticator, credential_id: bytes | None = None
) -> BackupKey:
    """The backup key protected by one of the user's passkeys (``credential_id``: only
    that one). Raises :class:`~.errors.NoWrappedKey`, :class:`~.errors.PrfUnavailable`,
    :class:`~hsmvault.errors.VerificationError` (the PRF output does not open the
    wrap), :class:`~.errors.PasskeyRefused`, :class:`~.errors.PasskeyConflict`."""
    options, salts = api.authentication_options(credential_id)
    rp_id = _rp_id(options, creation=False)
    asserted = authenticator.get(options, salts)
    released = api.authenticate(asserted.response_json)
    if released.credential_id != asserted.credential_id:
        raise DecodeError("gateway answer: another credential than the one that answered")
    if released.wrapped_key is None:
        raise NoWrappedKey("this passkey protects no backup key")
    if asserted.prf_output is None:
        raise PrfUnavailable("the authenticator gives no PRF output")
    if released.prf_salt != salts.get(asserted.credential_id):
        raise VerificationError("the passkey's PRF salt changed meanwhile; try again")
    return unwrap_with_prf(
        asserted.prf_output,
        released.wrapped_key,
        rp_id=rp_id,
        credential_id=asserted.credential_id,
    )


def rotate_salt(
    api: PasskeyApi, authenticator: Authenticator, credential_id: bytes, backup_key: BackupKey
) -> None:
    """Give the passkey a new PRF salt and store ``backup_key`` wrapped under the new
    PRF output (the gateway commits both together; the old wrap is gone)."""
    _check_backup_key(backup_key)
    options, salt = api.salt_rotation(credential_id)
    _wrap_and_put(
        api,
        authenticator,
        options,
        credential_id=credential_id,
        salt=salt,
        backup_key=backup_key,
        salt_mismatch="gateway answer: the stored salt is not the new one",
    )
    _log.info("passkey salt rotated")


def list_passkeys(api: PasskeyApi) -> list[PasskeyInfo]:
    """The user's passkeys."""
    return api.list_passkeys()


def remove(api: PasskeyApi, credential_id: bytes) -> None:
    """Remove a passkey at once (404 → :class:`~hsmvault.client.errors.NotFound`)."""
    if not isinstance(credential_id, bytes) or not credential_id:
        raise InvalidParameter("credential_id must be non-empty bytes")
    api.remove(credential_id)
