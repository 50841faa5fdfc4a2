"""Client credential storage and key recovery (RFC 9807 §4): CleartextCredentials, the
randomized password, and the envelope's Store / Recover.

Hazmat: building blocks for :mod:`hsmvault.crypto.opaque.protocol`. Every failure of
:func:`recover` is :class:`~hsmvault.errors.InvalidLogin` with one fixed message, so a
wrong password and a tampered envelope look the same.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field

from hsmvault.crypto.ksf import Ksf
from hsmvault.crypto.opaque.messages import Envelope
from hsmvault.crypto.opaque.suite import (
    NH,
    NN,
    NSEED,
    derive_dh_key_pair,
    expand,
    extract,
    mac,
    random_bytes,
)
from hsmvault.crypto.oprf import i2osp
from hsmvault.crypto.ristretto255 import Element, RandomBytes, Scalar
from hsmvault.errors import DecodeError, InvalidLogin, InvalidParameter

__all__ = [
    "CleartextCredentials",
    "EnvelopeKeys",
    "RecoverResult",
    "StoreResult",
    "create_cleartext_credentials",
    "derive_envelope_keys",
    "derive_randomized_password",
    "masking_key_from",
    "recover",
    "store",
]

LOGIN_FAILED = "OPAQUE login failed"
"""The one message of every OPAQUE authentication failure (it names nothing secret)."""


@dataclass(frozen=True, slots=True)
class CleartextCredentials:
    """RFC 9807 §4 ``CleartextCredentials``. Identities are the effective ones: the
    public keys when the application gives none (see :func:`create_cleartext_credentials`).
    """

    server_public_key: bytes
    server_identity: bytes
    client_identity: bytes

    def to_bytes(self) -> bytes:
        """``server_public_key || I2OSP(len(server_identity), 2) || server_identity ||
        I2OSP(len(client_identity), 2) || client_identity`` (RFC 9807 §4.1.2)."""
        return b"".join(
            [
                self.server_public_key,
                i2osp(len(self.server_identity), 2),
                self.server_identity,
                i2osp(len(self.client_identity), 2),
                self.client_identity,
            ]
        )


def create_cleartext_credentials(
    server_public_key: bytes,
    client_public_key: bytes,
    server_identity: bytes | None,
    client_identity: bytes | None,
) -> CleartextCredentials:
    """RFC 9807 §4 ``CreateCleartextCredentials``: a missing identity defaults to that
    party's public key. Identities must be 1..65535 bytes (:class:`InvalidParameter`)."""
    server_id = server_public_key if server_identity is None else server_identity
    client_id = client_public_key if client_identity is None else client_identity
    for ident in (server_id, client_id):
        if not 1 <= len(ident) <= 0xFFFF:
            raise InvalidParameter("OPAQUE identities must be 1..65535 bytes")
    return CleartextCredentials(server_public_key, server_id, client_id)


def derive_randomized_password(oprf_output: bytes, ksf: Ksf) -> bytes:
    """``randomized_password = Extract("", concat(oprf_output, Stretch(oprf_output)))``
    (RFC 9807 §5.2.3, §6.3.2.3)."""
    return extract(b"", oprf_output + ksf.stretch(oprf_output))


def masking_key_from(randomized_password: bytes) -> bytes:
    """``masking_key = Expand(randomized_password, "MaskingKey", Nh)`` (RFC 9807 §4.1.2)."""
    return expand(randomized_password, b"MaskingKey", NH)


@dataclass(frozen=True, slots=True)
class EnvelopeKeys:
    """The per-envelope keys of RFC 9807 §4.1.2/§4.1.3. All secret (no ``repr``)."""

    auth_key: bytes = field(repr=False)
    export_key: bytes = field(repr=False)
    seed: bytes = field(repr=False)  #: DeriveDiffieHellmanKeyPair seed of the client key


def derive_envelope_keys(randomized_password: bytes, envelope_nonce: bytes) -> EnvelopeKeys:
    """``auth_key``, ``export_key`` and the client key ``seed``::

    Expand(randomized_password, concat(envelope_nonce, "AuthKey"|"ExportKey"|"PrivateKey"),
           Nh | Nh | Nseed)
    """
    return EnvelopeKeys(
        auth_key=expand(randomized_password, envelope_nonce + b"AuthKey", NH),
        export_key=expand(randomized_password, envelope_nonce + b"ExportKey", NH),
        seed=expand(randomized_password, envelope_nonce + b"PrivateKey", NSEED),
    )


def _auth_tag(auth_key: bytes, envelope_nonce: bytes, creds: CleartextCredentials) -> bytes:
    return mac(auth_key, envelope_nonce + creds.to_bytes())


@dataclass(frozen=True, slots=True)
class StoreResult:
    """Outputs of ``Store`` (RFC 9807 §4.1.2)."""

    envelope: Envelope
    client_public_key: Element
    masking_key: bytes = field(repr=False)
    export_key: bytes = field(repr=False)


def store(
    randomized_password: bytes,
    server_public_key: Element,
    server_identity: bytes | None,
    client_identity: bytes | None,
    *,
    envelope_nonce: bytes | None = None,
    rng: RandomBytes | None = None,
) -> StoreResult:
    """RFC 9807 §4.1.2 ``Store``: make the envelope, the client's AKE public key, the
    masking key and the export key. ``envelope_nonce`` fixes the nonce (test vectors);
    otherwise ``Nn`` bytes are drawn from ``rng``."""
    nonce = envelope_nonce if envelope_nonce is not None else random_bytes(rng, NN)
    if len(nonce) != NN:
        raise InvalidParameter("envelope_nonce must be Nn = 32 bytes")
    keys = derive_envelope_keys(randomized_password, nonce)
    client_public_key = derive_dh_key_pair(keys.seed).pk
    creds = create_cleartext_credentials(
        bytes(server_public_key), bytes(client_public_key), server_identity, client_identity
    )
    envelope = Envelope(nonce, _auth_tag(keys.auth_key, nonce, creds))
    return StoreResult(
        envelope=envelope,
        client_public_key=client_public_key,
        masking_key=masking_key_from(randomized_password),
        export_key=keys.export_key,
    )


@dataclass(frozen=True, slots=True)
class RecoverResult:
    """Outputs of ``Recover`` (RFC 9807 §4.1.3); ``server_public_key`` is the decoded
    key from ``cleartext_credentials``."""

    client_private_key: Scalar
    cleartext_credentials: CleartextCredentials
    server_public_key: Element
    export_key: bytes = field(repr=False)


def recover(
    randomized_password: bytes,
    server_public_key: bytes,
    envelope: Envelope,
    server_identity: bytes | None,
    client_identity: bytes | None,
) -> RecoverResult:
    """RFC 9807 §4.1.3 ``Recover``: re-derive the client key pair and check the
    envelope's ``auth_tag`` in constant time.

    ``server_public_key`` is the raw unmasked bytes: they are authenticated by the tag
    *before* being decoded, so a wrong password (which unmasks garbage) fails like any
    other mismatch. Raises :class:`InvalidLogin` (``EnvelopeRecoveryError``).
    """
    keys = derive_envelope_keys(randomized_password, envelope.envelope_nonce)
    client_key_pair = derive_dh_key_pair(keys.seed)
    creds = create_cleartext_credentials(
        server_public_key, bytes(client_key_pair.pk), server_identity, client_identity
    )
    expected_tag = _auth_tag(keys.auth_key, envelope.envelope_nonce, creds)
    if not hmac.compare_digest(envelope.auth_tag, expected_tag):
        raise InvalidLogin(LOGIN_FAILED)
    try:
        server_pk = Element.from_bytes(server_public_key)
    except DecodeError:  # authenticated but not a valid key: only a broken peer does this
        raise InvalidLogin(LOGIN_FAILED) from None
    return RecoverResult(
        client_private_key=client_key_pair.sk,
        cleartext_credentials=creds,
        server_public_key=server_pk,
        export_key=keys.export_key,
    )
