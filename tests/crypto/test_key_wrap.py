"""The backup-key wrap: round trip, purpose/context binding, tamper and garbage."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hsmvault.crypto.backup_stream import BackupKey
from hsmvault.crypto.key_wrap import (
    PURPOSE_OPAQUE_EXPORT_KEY,
    PURPOSE_PASSKEY_PRF,
    WRAPPED_KEY_LEN,
    unwrap_backup_key,
    wrap_backup_key,
)
from hsmvault.errors import DecodeError, InvalidParameter, VerificationError

SECRET = bytes(range(64))
BK = BackupKey(bytes(range(32, 64)))


def test_round_trip_returns_the_same_backup_key() -> None:
    wrapped = wrap_backup_key(SECRET, BK, purpose=PURPOSE_OPAQUE_EXPORT_KEY, context=b"alice")
    assert len(wrapped) == WRAPPED_KEY_LEN
    got = unwrap_backup_key(SECRET, wrapped, purpose=PURPOSE_OPAQUE_EXPORT_KEY, context=b"alice")
    assert got == BK


def test_two_wraps_of_one_key_differ() -> None:
    a = wrap_backup_key(SECRET, BK, purpose=PURPOSE_OPAQUE_EXPORT_KEY)
    b = wrap_backup_key(SECRET, BK, purpose=PURPOSE_OPAQUE_EXPORT_KEY)
    assert a != b


@pytest.mark.parametrize(
    ("secret", "purpose", "context"),
    [
        (bytes(64), PURPOSE_OPAQUE_EXPORT_KEY, b"alice"),  # wrong secret
        (SECRET, PURPOSE_PASSKEY_PRF, b"alice"),  # wrong purpose
        (SECRET, PURPOSE_OPAQUE_EXPORT_KEY, b"bob"),  # wrong context
    ],
)
def test_wrong_secret_purpose_or_context_is_refused(
    secret: bytes, purpose: bytes, context: bytes
) -> None:
    wrapped = wrap_backup_key(SECRET, BK, purpose=PURPOSE_OPAQUE_EXPORT_KEY, context=b"alice")
    with pytest.raises(VerificationError):
        unwrap_backup_key(secret, wrapped, purpose=purpose, context=context)


def test_short_secret_is_a_caller_error() -> None:
    with pytest.raises(InvalidParameter):
        wrap_backup_key(bytes(16), BK, purpose=PURPOSE_OPAQUE_EXPORT_KEY)


@given(index=st.integers(min_value=0, max_value=WRAPPED_KEY_LEN - 1), flip=st.integers(1, 255))
def test_any_single_byte_change_is_refused(index: int, flip: int) -> None:
    wrapped = bytearray(wrap_backup_key(SECRET, BK, purpose=PURPOSE_OPAQUE_EXPORT_KEY))
    wrapped[index] ^= flip
    with pytest.raises((DecodeError, VerificationError)):
        unwrap_backup_key(SECRET, bytes(wrapped), purpose=PURPOSE_OPAQUE_EXPORT_KEY)


@given(st.binary(max_size=2 * WRAPPED_KEY_LEN))
def test_garbage_raises_only_our_errors(data: bytes) -> None:
    with pytest.raises((DecodeError, VerificationError)):
        unwrap_backup_key(SECRET, data, purpose=PURPOSE_OPAQUE_EXPORT_KEY)


def test_repr_of_unwrapped_key_is_redacted() -> None:
    wrapped = wrap_backup_key(SECRET, BK, purpose=PURPOSE_OPAQUE_EXPORT_KEY)
    got = unwrap_backup_key(SECRET, wrapped, purpose=PURPOSE_OPAQUE_EXPORT_KEY)
    assert BK.expose_secret().hex() not in repr(got)
