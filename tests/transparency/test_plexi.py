"""Plexi ``SignatureMessage`` encoding: checked against Plexi's own test vectors
(cloudflare/plexi, see the module docstring) and against the field table by hand."""

from __future__ import annotations

import contextlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from hsmvault.errors import DecodeError, InvalidParameter
from hsmvault.transparency.plexi import (
    CIPHERSUITE_PROTOBUF_ED25519,
    SignatureMessage,
    decode_signature_message,
)

_DIGEST = bytes(range(32))

# cloudflare/plexi plexi_core/tests/test-vectors.json, ciphersuite 1 (protobuf + Ed25519):
# at commit 0108f7d22adb4671f8b3ac776b7b6e01160a4dd0 (file as of cc326bb62358b285b4b1760352b2),
# and the earlier version at commit 289489600a317bc6a084f0222f13d2f2b1776d4c.
_PLEXI_SEED = "d6af1bca3db4fc2766b0c483706c20bf4837a46d54c1d39c2a34a9088572d712"
_PLEXI_PUBLIC = "606a878700158d92b3a14a0fd37ec82e0f05f92fcf23146abfda2e3a2f10a9bc"
_PLEXI_VECTORS = [
    (
        "log1.example.com",
        "769d1ae73792dd8da1515793ba29f2f33f2fca84ba7386f9a01d8272e67c4379"
        "bdcfd91ea4fa49eafd8f243ac36fe3a7aae90ae92f1729c3c468ddf4e6d2a309",
    ),
    (
        "log1.example.test",
        "31fbef3ed02ea0c8570e3740857d343857118102698a0822ee070a03d7a20637"
        "d6507fc855669ac30b959d6a0d35cba455a39e287ce2a101dbc16236027a400c",
    ),
]


@pytest.mark.parametrize(("namespace", "signature"), _PLEXI_VECTORS)
def test_plexi_test_vector(namespace: str, signature: str) -> None:
    """Plexi signs ``SignatureMessage::to_vec()``; Ed25519 is deterministic, so getting
    Plexi's signature from our bytes proves the bytes are Plexi's."""
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(_PLEXI_SEED))
    assert key.public_key().public_bytes_raw().hex() == _PLEXI_PUBLIC
    assert key.public_key().public_bytes_raw()[-1] == 188  # Plexi's one-byte key_id
    msg = SignatureMessage(
        CIPHERSUITE_PROTOBUF_ED25519, namespace, 1717084639921, 1, bytes([0x11]) * 32
    )
    encoded = msg.encode()
    assert key.sign(encoded).hex() == signature
    key.public_key().verify(bytes.fromhex(signature), encoded)
    assert decode_signature_message(encoded) == msg
    assert encoded[:2] == b"\x08\x01"  # ciphersuite 1 first
    assert encoded[-34:] == b"\x2a\x20" + bytes([0x11]) * 32  # digest last


def test_plexi_vector_fails_with_any_field_changed() -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(_PLEXI_SEED))
    want = bytes.fromhex(_PLEXI_VECTORS[0][1])
    base = ("log1.example.com", 1717084639921, 1, bytes([0x11]) * 32)
    variants = [
        ("log1.example.co", *base[1:]),
        (base[0], 1717084639, *base[2:]),  # seconds instead of milliseconds
        (base[0], base[1], 2, base[3]),
        (*base[:3], bytes([0x12]) * 32),
    ]
    for namespace, timestamp, epoch, digest in variants:
        msg = SignatureMessage(CIPHERSUITE_PROTOBUF_ED25519, namespace, timestamp, epoch, digest)
        assert key.sign(msg.encode()) != want


def test_hand_derived_encoding() -> None:
    """The field table applied by hand (independent of the Plexi vectors)."""
    msg = SignatureMessage(CIPHERSUITE_PROTOBUF_ED25519, "ns", 300, 1, _DIGEST)
    want = (
        bytes([0x08, 0x01])  # field 1 varint: 1
        + bytes([0x12, 0x02])
        + b"ns"  # field 2 length-delimited
        + bytes([0x18, 0xAC, 0x02])  # field 3 varint: 300
        + bytes([0x22, 0x02, 0x08, 0x01])  # field 4 Epoch { field 1 varint: 1 }
        + bytes([0x2A, 0x20])
        + _DIGEST  # field 5 length-delimited, 32 bytes
    )
    assert msg.encode() == want
    assert decode_signature_message(want) == msg


def test_zero_values_are_still_written() -> None:
    enc = SignatureMessage(0, "", 0, 0, bytes(32)).encode()
    assert enc == bytes([0x08, 0, 0x12, 0, 0x18, 0, 0x22, 2, 0x08, 0, 0x2A, 0x20]) + bytes(32)


def test_invalid_parameters() -> None:
    with pytest.raises(InvalidParameter):
        SignatureMessage(1, "ns", 0, 0, bytes(31))
    with pytest.raises(InvalidParameter):
        SignatureMessage(1 << 32, "ns", 0, 0, bytes(32))
    with pytest.raises(InvalidParameter):
        SignatureMessage(1, "ns", -1, 0, bytes(32))
    with pytest.raises(InvalidParameter):
        SignatureMessage(1, "ns", 0, 1 << 64, bytes(32))


def test_decoder_rejects_non_canonical() -> None:
    good = SignatureMessage(1, "ns", 5, 7, _DIGEST).encode()
    padded_varint = bytes([0x08, 0x81, 0x00]) + good[2:]
    for bad in (good + b"\x00", good[:-1], padded_varint, good[2:]):
        with pytest.raises(DecodeError):
            decode_signature_message(bad)


_messages = st.builds(
    SignatureMessage,
    st.integers(0, (1 << 32) - 1),
    st.text(max_size=40),
    st.integers(0, (1 << 64) - 1),
    st.integers(0, (1 << 64) - 1),
    st.binary(min_size=32, max_size=32),
)


@settings(max_examples=200, deadline=None)
@given(msg=_messages)
def test_round_trip(msg: SignatureMessage) -> None:
    assert decode_signature_message(msg.encode()) == msg


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=120))
def test_decoder_raises_only_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_signature_message(data)
