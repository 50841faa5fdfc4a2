"""The OPAQUE-3DH ciphersuite ristretto255-SHA512: sizes and primitives (RFC 9807 §2, §7).

OPRF ristretto255-SHA512 (RFC 9497), KDF HKDF-SHA512, MAC HMAC-SHA512, Hash SHA-512,
3DH over ristretto255 (RFC 9807 §6.4.1.1). Every primitive here is a thin call into
``hashlib``/``hmac``, ``cryptography`` or libsodium (through
:mod:`hsmvault.crypto.ristretto255`); nothing is implemented by hand.

Hazmat: these are building blocks for :mod:`hsmvault.crypto.opaque.protocol`, not an
API for applications.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from hsmvault.crypto import oprf
from hsmvault.crypto.ristretto255 import Element, RandomBytes, Scalar
from hsmvault.errors import InvalidLogin, InvalidParameter

# Sizes in bytes (RFC 9807 §2 and §7 for this suite).
NN: Final = 32  #: nonce length
NSEED: Final = 32  #: seed length
NH: Final = 64  #: Hash output length (SHA-512)
NM: Final = 64  #: MAC output length (HMAC-SHA512)
NX: Final = 64  #: KDF Extract output length (HKDF-SHA512)
NPK: Final = 32  #: encoded AKE public key (ristretto255 element)
NSK: Final = 32  #: encoded AKE private key (ristretto255 scalar)
NOE: Final = 32  #: encoded OPRF element
NOK: Final = 32  #: OPRF private key

#: RFC 9807 §5.2.2: the DeriveKeyPair ``info`` for per-credential OPRF keys.
OPRF_KEY_INFO: Final = b"OPAQUE-DeriveKeyPair"
#: RFC 9807 §6.4.1.1: the DeriveKeyPair ``info`` for 3DH key pairs.
DH_KEY_INFO: Final = b"OPAQUE-DeriveDiffieHellmanKeyPair"

_SHA512 = hashes.SHA512()

KeyPair = oprf.KeyPair
"""A group key pair ``(sk: Scalar, pk: Element)``; ``sk``'s repr is redacted."""


def random_bytes(rng: RandomBytes | None, length: int) -> bytes:
    """``random(length)`` from ``rng`` (default :func:`secrets.token_bytes`), length-checked."""
    out = (rng or secrets.token_bytes)(length)
    if len(out) != length:
        raise InvalidParameter("random source returned the wrong number of bytes")
    return bytes(out)


def hash_(msg: bytes) -> bytes:
    """``Hash(msg)``: SHA-512 (RFC 9807 §2.3)."""
    return hashlib.sha512(msg).digest()


def mac(key: bytes, msg: bytes) -> bytes:
    """``MAC(key, msg)``: HMAC-SHA512 (RFC 9807 §2.2)."""
    return hmac.new(key, msg, hashlib.sha512).digest()


def extract(salt: bytes, ikm: bytes) -> bytes:
    """``Extract(salt, ikm)``: HKDF-Extract with SHA-512 (RFC 5869 §2.2); ``Nx`` bytes."""
    return hmac.new(salt, ikm, hashlib.sha512).digest()


def expand(prk: bytes, info: bytes, length: int) -> bytes:
    """``Expand(prk, info, L)``: HKDF-Expand with SHA-512 (RFC 5869 §2.3)."""
    return HKDFExpand(_SHA512, length, info).derive(prk)


def derive_dh_key_pair(seed: bytes) -> KeyPair:
    """``DeriveDiffieHellmanKeyPair(seed)`` for ristretto255 (RFC 9807 §6.4.1.1):
    RFC 9497 ``DeriveKeyPair(seed, "OPAQUE-DeriveDiffieHellmanKeyPair")``."""
    return oprf.derive_key_pair(seed, DH_KEY_INFO)


def diffie_hellman(k: Scalar, b: Element) -> bytes:
    """``DiffieHellman(k, B)`` (RFC 9807 §6.4.1.1): the encoding of ``k * B``.

    ``B`` is already a decoded, non-identity element (messages decode strictly). The
    shared secret must not be the identity (RFC 9807 §10.7); that would mean a zero or
    malicious input, so it fails the login with :class:`InvalidLogin`.
    """
    shared = b * k
    if shared.is_identity():
        raise InvalidLogin("OPAQUE login failed")
    return bytes(shared)


def derive_oprf_key(oprf_seed: bytes, credential_identifier: bytes) -> Scalar:
    """The per-credential OPRF key (RFC 9807 §5.2.2, §6.3.2.2)::

    seed = Expand(oprf_seed, concat(credential_identifier, "OprfKey"), Nok)
    (oprf_key, _) = DeriveKeyPair(seed, "OPAQUE-DeriveKeyPair")
    """
    if len(oprf_seed) != NH:
        raise InvalidParameter("oprf_seed must be Nh = 64 bytes")
    seed = expand(oprf_seed, credential_identifier + b"OprfKey", NOK)
    return oprf.derive_key_pair(seed, OPRF_KEY_INFO).sk
