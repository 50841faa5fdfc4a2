"""Plexi ``SignatureMessage`` encoding. No Plexi-produced byte vectors are available, so
the expected bytes below are hand-derived from the documented field table (see the module
docstring): they check our encoder against that table, not against Plexi itself."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsmvault.errors import DecodeError, InvalidParameter
from hsmvault.transparency.plexi import (
    CIPHERSUITE_PROTOBUF_ED25519,
    SignatureMessage,
    decode_signature_message,
)

_DIGEST = bytes(range(32))


def test_hand_derived_encoding() -> None:
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
