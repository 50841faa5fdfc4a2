"""Who is calling: verification of the app's bearer tokens (ADR 0008, "Authentication").

The app's auth service signs short-lived JWTs; the gateway holds only its public keys.
:meth:`TokenVerifier.verify` is the one place a token is accepted, as a checklist:

1. the token is a compact JWS of sane length whose header names ``EdDSA`` or ``ES256``
   (``none``, ``HS*``, ``RS*`` and everything else are refused before any key is
   touched, so an issuer public key can never be used as an HMAC secret);
2. the signature verifies under one of the configured keys of that algorithm's type;
3. ``exp``, ``iat``, ``sub``, ``aud`` and ``iss`` are all present; ``aud`` and ``iss``
   equal the configured values;
4. ``iat`` is not in the future and ``exp`` not in the past (both with ``leeway``), and
   ``exp - iat`` is at most ``token_max_lifetime`` (15 min);
5. ``sub`` is a string of 1..255 UTF-8 bytes: those bytes are the vault user id.

Every failure raises :class:`InvalidToken`, whose message names the failed check and
never echoes the token. Times come from an injectable clock, not from PyJWT, so tests
and the gateway agree on "now".

:class:`DevTokenIssuer` mints tokens with a throwaway Ed25519 key. It is for local
deployments (``hsmvault up``) and tests only: whoever holds it can impersonate any user.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519

from hsmvault.errors import InvalidParameter, VerificationError
from hsmvault.wire.hsm_api import MAX_USER_ID_LEN

from .config import DEFAULT_AUDIENCE, MAX_TOKEN_LIFETIME

__all__ = ["ALGORITHMS", "DevTokenIssuer", "InvalidToken", "TokenVerifier"]

#: The only signature algorithms a token may use.
ALGORITHMS: Final = ("EdDSA", "ES256")
#: Longest token accepted (a compact EdDSA/ES256 JWT is a few hundred bytes).
MAX_TOKEN_LEN: Final = 8192
_REQUIRED_CLAIMS: Final = ["exp", "iat", "sub", "aud", "iss"]

_PublicKey = ed25519.Ed25519PublicKey | ed448.Ed448PublicKey | ec.EllipticCurvePublicKey


class InvalidToken(VerificationError):
    """A bearer token was refused (the message names the check, never the token)."""


def _load_public_key(pem: str | bytes) -> _PublicKey:
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise InvalidParameter("issuer public key is not a PEM public key") from None
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise InvalidParameter("issuer public keys must be Ed25519/Ed448 (EdDSA) or P-256 (ES256)")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class TokenVerifier:
    """Verifies bearer tokens against the configured issuer keys (see module docstring)."""

    def __init__(
        self,
        public_keys: Sequence[str | bytes],
        *,
        issuer: str,
        audience: str = DEFAULT_AUDIENCE,
        max_lifetime: float = MAX_TOKEN_LIFETIME,
        leeway: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not public_keys:
            raise InvalidParameter("a token verifier needs at least one issuer public key")
        keys = [_load_public_key(k) for k in public_keys]
        self._keys: dict[str, list[_PublicKey]] = {
            "EdDSA": [k for k in keys if not isinstance(k, ec.EllipticCurvePublicKey)],
            "ES256": [k for k in keys if isinstance(k, ec.EllipticCurvePublicKey)],
        }
        self._issuer = issuer
        self._audience = audience
        self._max_lifetime = max_lifetime
        self._leeway = leeway
        self._clock = clock

    def verify(self, token: str) -> bytes:
        """The user id (``sub`` as UTF-8) of a valid token; :class:`InvalidToken` else."""
        # 1. shape and algorithm, before any key is used
        if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_LEN:
            raise InvalidToken("malformed token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("malformed token") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise InvalidToken("token algorithm not allowed")
        # 2. + 3. signature, required claims, audience and issuer
        claims = self._decode(token, str(alg))
        # 4. times and lifetime, with our clock
        now = self._clock()
        exp, iat = claims["exp"], claims["iat"]
        if not (_is_number(exp) and _is_number(iat)):
            raise InvalidToken("exp and iat must be numbers")
        if exp <= now - self._leeway:
            raise InvalidToken("token expired")
        if iat > now + self._leeway:
            raise InvalidToken("token issued in the future")
        if exp - iat > self._max_lifetime:
            raise InvalidToken("token lifetime exceeds the limit")
        nbf = claims.get("nbf")
        if nbf is not None and (not _is_number(nbf) or nbf > now + self._leeway):
            raise InvalidToken("token not yet valid")
        # 5. the user id
        sub = claims["sub"]
        if not isinstance(sub, str):
            raise InvalidToken("sub must be a string")
        try:
            user_id = sub.encode("utf-8", errors="strict")
        except UnicodeEncodeError:
            raise InvalidToken("sub must be valid UTF-8") from None
        if not 1 <= len(user_id) <= MAX_USER_ID_LEN:
            raise InvalidToken(f"sub must be 1..{MAX_USER_ID_LEN} UTF-8 bytes")
        return user_id

    def _decode(self, token: str, alg: str) -> dict[str, Any]:
        options: Any = {
            "require": _REQUIRED_CLAIMS,
            "verify_signature": True,
            "verify_aud": True,
            "verify_iss": True,
            # checked in verify() against the injected clock
            "verify_exp": False,
            "verify_iat": False,
            "verify_nbf": False,
        }
        for key in self._keys[alg]:
            try:
                claims: dict[str, Any] = jwt.decode(
                    token,
                    key=key,
                    algorithms=[alg],
                    audience=self._audience,
                    issuer=self._issuer,
                    options=options,
                )
            except jwt.InvalidSignatureError:
                continue
            except jwt.MissingRequiredClaimError as exc:
                raise InvalidToken(f"token lacks the {exc.claim!r} claim") from None
            except jwt.InvalidAudienceError:
                raise InvalidToken("token audience is not this gateway") from None
            except jwt.InvalidIssuerError:
                raise InvalidToken("token issuer is not trusted") from None
            except (jwt.PyJWTError, ValueError, TypeError):
                raise InvalidToken("malformed token") from None
            return claims
        raise InvalidToken("token signature does not verify")


class DevTokenIssuer:
    """**Development only**: an in-process auth service with a throwaway Ed25519 key.

    Use it for ``hsmvault up`` on one machine and in tests. Anyone holding this object
    (or its key) can mint a token for any user; a production gateway trusts only the
    public keys of the app's real auth service.
    """

    def __init__(
        self,
        *,
        issuer: str = "hsmvault-dev-issuer",
        audience: str = DEFAULT_AUDIENCE,
        private_key: ed25519.Ed25519PrivateKey | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = private_key or ed25519.Ed25519PrivateKey.generate()
        self.issuer = issuer
        self.audience = audience
        self._clock = clock

    def public_key_pem(self) -> str:
        """The PEM to put in ``GatewayConfig.issuer_public_keys``."""
        public = self._key.public_key()
        pem = public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return pem.decode()

    def mint(self, user: str, *, lifetime: float = 300.0, **extra_claims: Any) -> str:
        """A token for ``user`` (the ``sub``) valid for ``lifetime`` seconds from now.
        ``extra_claims`` override the defaults (tests use it to forge bad tokens)."""
        now = int(self._clock())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": user,
            "iat": now,
            "exp": now + int(lifetime),
            "jti": uuid.uuid4().hex,
        }
        claims.update(extra_claims)
        return jwt.encode(claims, self._key, algorithm="EdDSA")

    def __repr__(self) -> str:
        return f"DevTokenIssuer(issuer={self.issuer!r}, DEVELOPMENT ONLY)"
