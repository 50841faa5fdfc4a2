"""The OPAQUE-3DH key schedule (RFC 9807 §6.4.2): Expand-Label, Derive-Secret, the
transcript preamble, and DeriveKeys.

Hazmat: building blocks for :mod:`hsmvault.crypto.opaque.protocol`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hsmvault.crypto.opaque.messages import KE1, CredentialResponse
from hsmvault.crypto.opaque.suite import NX, expand, extract, hash_
from hsmvault.crypto.oprf import i2osp
from hsmvault.crypto.ristretto255 import Element
from hsmvault.errors import InvalidParameter

__all__ = ["DerivedKeys", "derive_keys", "derive_secret", "expand_label", "preamble"]

_LABEL_PREFIX = b"OPAQUE-"
_PREAMBLE_PREFIX = b"OPAQUEv1-"


def expand_label(secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
    """``Expand-Label(Secret, Label, Context, Length)`` (RFC 9807 §6.4.2.1)::

    Expand(Secret, CustomLabel, Length), where CustomLabel is the TLS 1.3-style
    struct { uint16 length; opaque label<8..255> = "OPAQUE-" + Label;
             uint8 context<0..255>; }
    """
    full_label = _LABEL_PREFIX + label
    if len(full_label) > 255 or len(context) > 255:
        raise InvalidParameter("Expand-Label label or context too long")
    custom_label = (
        i2osp(length, 2) + i2osp(len(full_label), 1) + full_label + i2osp(len(context), 1) + context
    )
    return expand(secret, custom_label, length)


def derive_secret(secret: bytes, label: bytes, transcript_hash: bytes) -> bytes:
    """``Derive-Secret(Secret, Label, Transcript-Hash)`` =
    ``Expand-Label(Secret, Label, Transcript-Hash, Nx)`` (RFC 9807 §6.4.2.1)."""
    return expand_label(secret, label, transcript_hash, NX)


def _length_prefixed(value: bytes) -> bytes:
    return i2osp(len(value), 2) + value


def preamble(
    *,
    context: bytes,
    client_identity: bytes,
    ke1: KE1,
    server_identity: bytes,
    credential_response: CredentialResponse,
    server_nonce: bytes,
    server_public_keyshare: Element,
) -> bytes:
    """``Preamble`` (RFC 9807 §6.4.2.1): the transcript that both MACs and the session
    key cover::

        "OPAQUEv1-" || I2OSP(len(context), 2) || context
          || I2OSP(len(client_identity), 2) || client_identity || ke1
          || I2OSP(len(server_identity), 2) || server_identity
          || credential_response || server_nonce || server_public_keyshare

    Keyword-only, in the RFC's order. ``client_identity``/``server_identity`` are the
    effective identities (the public keys when the application sets none).
    ``context`` and the identities must each be shorter than 2^16 bytes
    (:class:`InvalidParameter` otherwise).
    """
    return b"".join(
        [
            _PREAMBLE_PREFIX,
            _length_prefixed(context),
            _length_prefixed(client_identity),
            ke1.to_bytes(),
            _length_prefixed(server_identity),
            credential_response.to_bytes(),
            server_nonce,
            bytes(server_public_keyshare),
        ]
    )


@dataclass(frozen=True, slots=True)
class DerivedKeys:
    """The outputs of ``DeriveKeys`` (RFC 9807 §6.4.2.2), plus ``handshake_secret`` for
    test vectors. All secret: none appears in the ``repr``."""

    handshake_secret: bytes = field(repr=False)
    km2: bytes = field(repr=False)  #: server MAC key
    km3: bytes = field(repr=False)  #: client MAC key
    session_key: bytes = field(repr=False)


def derive_keys(ikm: bytes, preamble_: bytes) -> DerivedKeys:
    """``DeriveKeys(ikm, preamble)`` (RFC 9807 §6.4.2.2)::

    prk = Extract("", ikm)
    handshake_secret = Derive-Secret(prk, "HandshakeSecret", Hash(preamble))
    session_key = Derive-Secret(prk, "SessionKey", Hash(preamble))
    Km2 = Derive-Secret(handshake_secret, "ServerMAC", "")
    Km3 = Derive-Secret(handshake_secret, "ClientMAC", "")
    """
    prk = extract(b"", ikm)
    transcript_hash = hash_(preamble_)
    handshake_secret = derive_secret(prk, b"HandshakeSecret", transcript_hash)
    session_key = derive_secret(prk, b"SessionKey", transcript_hash)
    km2 = derive_secret(handshake_secret, b"ServerMAC", b"")
    km3 = derive_secret(handshake_secret, b"ClientMAC", b"")
    return DerivedKeys(handshake_secret, km2, km3, session_key)
