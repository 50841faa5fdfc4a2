"""DEVELOPMENT ONLY: the token issuer of a local deployment.

In production the app's own auth service signs the short-lived JWTs the gateway accepts
(ADR 0008). A local deployment has no auth service, so ``hsmvault up`` makes one Ed25519
key in ``<data dir>/dev-issuer/`` and the gateway trusts it; ``hsmvault token`` and the
CLI's own commands sign with it. Anyone who can read that directory can act as any user
of the local deployment — which is the point on a laptop, and why nothing but a local
deployment may ever trust :data:`DEV_ISSUER`.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from hsmvault.errors import InvalidParameter

__all__ = [
    "AUDIENCE",
    "DEV_ISSUER",
    "ISSUER_DIR",
    "DevTokenIssuer",
]

#: The ``iss`` of every dev token; only a local deployment's gateway trusts it.
DEV_ISSUER: Final = "hsmvault-dev-issuer (DEVELOPMENT ONLY)"
#: ADR 0008: the gateway requires ``aud = "hsmvault"``.
AUDIENCE: Final = "hsmvault"
ISSUER_DIR: Final = "dev-issuer"
_PRIVATE_FILE: Final = "DEV-ONLY-issuer-key.pem"
_PUBLIC_FILE: Final = "issuer-public-key.pem"
_MAX_LIFETIME_S: Final = 900


@dataclass(frozen=True)
class DevTokenIssuer:
    """The dev signing key of one data directory (``repr`` never shows the key)."""

    directory: Path
    _key: Ed25519PrivateKey

    def __repr__(self) -> str:
        return f"DevTokenIssuer({str(self.directory)!r})"

    @classmethod
    def load_or_create(cls, data_dir: Path) -> DevTokenIssuer:
        """The issuer key of ``data_dir`` (created, mode 0600, on first use)."""
        directory = data_dir / ISSUER_DIR
        private_path = directory / _PRIVATE_FILE
        if private_path.exists():
            loaded = serialization.load_pem_private_key(private_path.read_bytes(), password=None)
            if not isinstance(loaded, Ed25519PrivateKey):
                raise InvalidParameter(f"{private_path} is not an Ed25519 key")
            return cls(directory, loaded)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        tmp = private_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        os.replace(tmp, private_path)
        issuer = cls(directory, key)
        (directory / _PUBLIC_FILE).write_text(issuer.public_key_pem(), encoding="utf-8")
        (directory / "README").write_text(
            "DEVELOPMENT ONLY. This key signs the tokens of a local hsmvault deployment.\n"
            "Anyone who reads it can act as any user of that deployment.\n",
            encoding="utf-8",
        )
        return issuer

    @classmethod
    def exists(cls, data_dir: Path) -> bool:
        return (data_dir / ISSUER_DIR / _PRIVATE_FILE).exists()

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._key.public_key()

    def public_key_pem(self) -> str:
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()

    def mint(self, user: str, lifetime_s: int = 300, *, now: float | None = None) -> str:
        """A JWT for ``user`` (``sub``), EdDSA, ``aud = "hsmvault"``, ``exp`` after
        ``lifetime_s`` (at most 15 minutes, as the gateway requires)."""
        if not 1 <= len(user.encode()) <= 255:
            raise InvalidParameter("user must be 1..255 bytes")
        if not 1 <= lifetime_s <= _MAX_LIFETIME_S:
            raise InvalidParameter(f"lifetime must be 1..{_MAX_LIFETIME_S} s")
        issued = int(time.time() if now is None else now)
        claims = {
            "iss": DEV_ISSUER,
            "aud": AUDIENCE,
            "sub": user,
            "iat": issued,
            "exp": issued + lifetime_s,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._key, algorithm="EdDSA")
