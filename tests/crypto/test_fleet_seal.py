"""Sealing to the fleet's enc key: round trip, binding, tamper, garbage."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given
from hypothesis import strategies as st

from hsmvault.crypto.fleet_seal import (
    FLEET_SEAL_OVERHEAD,
    PURPOSE_REGISTRATION_UPLOAD,
    open_from_client,
    seal_to_fleet,
)
from hsmvault.errors import DecodeError, VerificationError
from hsmvault.wire import hsm_api as api

KEY = X25519PrivateKey.from_private_bytes(bytes(range(32)))
PUB = KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
OTHER = X25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
P = PURPOSE_REGISTRATION_UPLOAD


@given(st.binary(max_size=2048), st.binary(max_size=64))
def test_round_trip(plaintext: bytes, context: bytes) -> None:
    sealed = seal_to_fleet(PUB, plaintext, purpose=P, context=context)
    assert len(sealed) == len(plaintext) + FLEET_SEAL_OVERHEAD
    assert open_from_client(KEY, sealed, purpose=P, context=context) == plaintext


def test_plaintext_does_not_appear_in_the_seal() -> None:
    secret = b"masking key and wrapped backup key" * 4
    assert secret not in seal_to_fleet(PUB, secret, purpose=P)


@pytest.mark.parametrize(
    ("key", "purpose", "context"),
    [(OTHER, P, b"alice"), (KEY, b"other-purpose", b"alice"), (KEY, P, b"bob")],
)
def test_wrong_key_purpose_or_context_is_refused(
    key: X25519PrivateKey, purpose: bytes, context: bytes
) -> None:
    sealed = seal_to_fleet(PUB, b"upload", purpose=P, context=b"alice")
    with pytest.raises(VerificationError):
        open_from_client(key, sealed, purpose=purpose, context=context)


@given(index=st.integers(min_value=0), flip=st.integers(1, 255))
def test_any_single_byte_change_is_refused(index: int, flip: int) -> None:
    sealed = bytearray(seal_to_fleet(PUB, b"registration upload", purpose=P))
    sealed[index % len(sealed)] ^= flip
    with pytest.raises((DecodeError, VerificationError)):
        open_from_client(KEY, bytes(sealed), purpose=P)


@given(st.binary(max_size=200))
def test_garbage_raises_only_our_errors(data: bytes) -> None:
    with pytest.raises((DecodeError, VerificationError)):
        open_from_client(KEY, data, purpose=P)


def test_the_wire_bound_on_sealed_uploads_matches_the_seal_overhead() -> None:
    # wire imports no crypto, so it writes the overhead down; the two must agree.
    assert api.FLEET_SEAL_OVERHEAD == FLEET_SEAL_OVERHEAD
    context = api.upload_context(b"u" * api.MAX_USER_ID_LEN, bytes(api.CREDENTIAL_NONCE_LEN))
    smallest = api.RegistrationUpload(b"r", b"k", b"w")
    biggest = api.RegistrationUpload(
        b"r" * api.MAX_OPAQUE_MESSAGE_LEN,
        b"k" * api.MAX_KSF_PARAMS_LEN,
        b"w" * api.MAX_WRAPPED_KEY_LEN,
    )
    for upload, bound in (
        (smallest, api.MIN_SEALED_UPLOAD_LEN),
        (biggest, api.MAX_SEALED_UPLOAD_LEN),
    ):
        sealed = seal_to_fleet(PUB, upload.to_bytes(), purpose=P, context=context)
        assert len(sealed) == bound
        request = api.RegisterRequest(b"u", bytes(api.CREDENTIAL_NONCE_LEN), sealed)
        assert api.decode_request(request.to_bytes()) == request
        opened = open_from_client(KEY, request.sealed_upload, purpose=P, context=context)
        assert api.RegistrationUpload.from_bytes(opened) == upload
