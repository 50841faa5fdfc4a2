"""Sealing to and authenticating under an OPAQUE session key."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hsmvault.crypto import session_box as sb
from hsmvault.errors import DecodeError, InvalidParameter, VerificationError

KEY = bytes(range(64))
OTHER_KEY = bytes(range(1, 65))
LABEL = sb.LABEL_WRAPPED_KEY


@given(st.binary(max_size=2048), st.binary(min_size=1, max_size=255))
def test_seal_then_open_round_trips(plaintext: bytes, label: bytes) -> None:
    sealed = sb.seal_to_session(KEY, plaintext, label=label)
    assert len(sealed) == len(plaintext) + sb.BOX_OVERHEAD
    assert sb.open_from_session(KEY, sealed, label=label) == plaintext


def test_box_format_is_stable() -> None:
    sealed = sb.seal_to_session(KEY, b"bk", label=LABEL, rng=bytes)
    assert sealed[:13] == b"\x01" + bytes(12)
    assert sealed == sb.seal_to_session(KEY, b"bk", label=LABEL, rng=bytes)


def test_wrong_session_key_is_refused() -> None:
    sealed = sb.seal_to_session(KEY, b"wrapped key", label=LABEL)
    with pytest.raises(VerificationError):
        sb.open_from_session(OTHER_KEY, sealed, label=LABEL)


def test_box_for_one_label_does_not_open_under_another() -> None:
    sealed = sb.seal_to_session(KEY, b"wrapped key", label=LABEL)
    with pytest.raises(VerificationError):
        sb.open_from_session(KEY, sealed, label=sb.LABEL_DELETE)


@given(st.data())
def test_any_bit_flip_is_refused(data: st.DataObject) -> None:
    sealed = bytearray(sb.seal_to_session(KEY, b"wrapped key", label=LABEL))
    index = data.draw(st.integers(1, len(sealed) - 1))
    sealed[index] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises(VerificationError):
        sb.open_from_session(KEY, bytes(sealed), label=LABEL)


def test_malformed_boxes_are_decode_errors() -> None:
    sealed = sb.seal_to_session(KEY, b"", label=LABEL)
    with pytest.raises(DecodeError, match="too short"):
        sb.open_from_session(KEY, sealed[:-1], label=LABEL)
    with pytest.raises(DecodeError, match="version"):
        sb.open_from_session(KEY, b"\x02" + sealed[1:], label=LABEL)


@given(st.binary(max_size=200))
def test_garbage_raises_only_decode_or_verification_error(data: bytes) -> None:
    with pytest.raises((DecodeError, VerificationError)):
        sb.open_from_session(KEY, data, label=LABEL)


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(InvalidParameter):
        sb.seal_to_session(KEY[:31], b"x", label=LABEL)
    with pytest.raises(InvalidParameter):
        sb.seal_to_session(KEY, b"x", label=b"")
    with pytest.raises(InvalidParameter):
        sb.seal_to_session(KEY, b"x", label=b"l" * 256)


def test_authenticator_verifies_and_binds_key_label_and_message() -> None:
    tag = sb.session_authenticator(KEY, b"request", label=sb.LABEL_DELETE)
    assert len(tag) == sb.AUTHENTICATOR_LEN
    sb.verify_session_authenticator(KEY, b"request", tag, label=sb.LABEL_DELETE)
    for key, message, label in [
        (OTHER_KEY, b"request", sb.LABEL_DELETE),
        (KEY, b"requesT", sb.LABEL_DELETE),
        (KEY, b"request", sb.LABEL_CHANGE_SECRET),
    ]:
        with pytest.raises(VerificationError):
            sb.verify_session_authenticator(key, message, tag, label=label)
    with pytest.raises(VerificationError):
        sb.verify_session_authenticator(KEY, b"request", tag[:-1], label=sb.LABEL_DELETE)
