"""Key-stretching functions: the Argon2id machinery against RFC 9106, the KsfParams
encoding, the documented profiles, and the unsafe identity KSF's guard rails."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hsmvault.crypto.ksf import (
    ARGON2ID_SALT,
    DEFAULT_KSF_PARAMS,
    KSF_OUTPUT_LEN,
    KSF_PARAMS_LEN,
    MAX_ITERATIONS,
    MAX_MEMORY_KIB,
    MAX_PARALLELISM,
    OPAQUE_KE_ARGON2_DEFAULT_PARAMS,
    Argon2idKsf,
    Ksf,
    KsfAlgorithm,
    KsfParams,
    UnsafeIdentityKsf,
    argon2id,
    ksf_from_params,
)
from hsmvault.errors import DecodeError, InvalidParameter
from tests.vectors import load_vectors, unhex

TINY = KsfParams(KsfAlgorithm.ARGON2ID, memory_kib=8, iterations=1, parallelism=1)


def _rfc9106_argon2id_vectors() -> list[dict[str, Any]]:
    return [v for v in load_vectors("argon2id_rfc9106.json")["vectors"] if v["type"] == "argon2id"]


def test_argon2id_machinery_matches_rfc9106_section_5_3() -> None:
    """RFC 9106 §5.3 (version 0x13, with secret and associated data): one vector."""
    ran = 0
    for v in _rfc9106_argon2id_vectors():
        assert v["version"] == 0x13
        params = KsfParams(
            KsfAlgorithm.ARGON2ID,
            memory_kib=v["memory_kib"],
            iterations=v["passes"],
            parallelism=v["parallelism"],
        )
        tag = argon2id(
            unhex(v["password"]),
            salt=unhex(v["salt"]),
            params=params,
            length=v["tag_length"],
            secret=unhex(v["secret"]),
            ad=unhex(v["associated_data"]),
        )
        assert tag == unhex(v["tag"])
        ran += 1
    assert ran == 1


def test_argon2id_ksf_is_argon2id_with_zero_salt_and_64_byte_output() -> None:
    msg = bytes(range(64))
    out = Argon2idKsf(TINY).stretch(msg)
    assert len(out) == KSF_OUTPUT_LEN == 64
    assert bytes(16) == ARGON2ID_SALT
    assert out == argon2id(msg, salt=bytes(16), params=TINY, length=64)
    assert Argon2idKsf(TINY).stretch(msg) == out  # deterministic
    other = KsfParams(KsfAlgorithm.ARGON2ID, memory_kib=16, iterations=1, parallelism=1)
    assert Argon2idKsf(other).stretch(msg) != out


def test_default_profile_is_rfc9106_second_recommended_option() -> None:
    assert KsfParams(KsfAlgorithm.ARGON2ID, 65536, 3, 4) == DEFAULT_KSF_PARAMS
    assert Argon2idKsf().params == DEFAULT_KSF_PARAMS


def test_opaque_ke_profile_is_rust_argon2_crate_default() -> None:
    assert KsfParams(KsfAlgorithm.ARGON2ID, 19456, 2, 1) == OPAQUE_KE_ARGON2_DEFAULT_PARAMS


def test_ksf_params_golden_encoding() -> None:
    assert KSF_PARAMS_LEN == 14
    assert DEFAULT_KSF_PARAMS.to_bytes() == bytes.fromhex("0101000100000000000300000004")
    assert UnsafeIdentityKsf().params.to_bytes() == bytes.fromhex("0100" + "00" * 12)


@given(
    st.integers(1, MAX_PARALLELISM).flatmap(
        lambda p: st.tuples(
            st.integers(8 * p, MAX_MEMORY_KIB), st.integers(1, MAX_ITERATIONS), st.just(p)
        )
    )
)
def test_ksf_params_round_trip(costs: tuple[int, int, int]) -> None:
    params = KsfParams(KsfAlgorithm.ARGON2ID, *costs)
    assert KsfParams.from_bytes(params.to_bytes()) == params


@given(st.binary(max_size=32))
def test_ksf_params_from_arbitrary_bytes_raises_only_decode_error(data: bytes) -> None:
    try:
        params = KsfParams.from_bytes(data)
    except DecodeError:
        return
    assert params.to_bytes() == data


@pytest.mark.parametrize(
    ("encoding", "why"),
    [
        (DEFAULT_KSF_PARAMS.to_bytes() + b"\x00", "trailing byte"),
        (DEFAULT_KSF_PARAMS.to_bytes()[:-1], "truncated"),
        (b"", "empty"),
        (bytes.fromhex("0201000100000000000300000004"), "unknown version"),
        (bytes.fromhex("0001000100000000000300000004"), "version zero"),
        (bytes.fromhex("0102000100000000000300000004"), "unknown algorithm"),
        (bytes.fromhex("0101000100000000000000000004"), "zero iterations"),
        (bytes.fromhex("0101000100000000000300000000"), "zero parallelism"),
        (bytes.fromhex("01010000001f0000000300000004"), "memory below 8p"),
        (bytes.fromhex("0101004000010000000300000004"), "memory above limit"),
        (bytes.fromhex("0101000100000000040100000004"), "iterations above limit"),
        (bytes.fromhex("0101000100000000000300000100"), "parallelism above limit"),
        (bytes.fromhex("0100000000010000000000000000"), "identity with a cost"),
    ],
)
def test_ksf_params_from_bytes_rejects(encoding: bytes, why: str) -> None:
    with pytest.raises(DecodeError):
        KsfParams.from_bytes(encoding)


def test_ksf_params_constructor_rejects_out_of_range() -> None:
    with pytest.raises(InvalidParameter):
        KsfParams(KsfAlgorithm.ARGON2ID, memory_kib=8, iterations=0, parallelism=1)
    with pytest.raises(InvalidParameter):
        KsfParams(KsfAlgorithm.UNSAFE_IDENTITY, memory_kib=8)
    with pytest.raises(InvalidParameter):
        Argon2idKsf(KsfParams(KsfAlgorithm.UNSAFE_IDENTITY))


def test_unsafe_identity_ksf_only_on_request() -> None:
    assert UnsafeIdentityKsf().stretch(b"abc") == b"abc"
    with pytest.raises(InvalidParameter):
        ksf_from_params(KsfParams(KsfAlgorithm.UNSAFE_IDENTITY))
    unsafe: Ksf = ksf_from_params(KsfParams(KsfAlgorithm.UNSAFE_IDENTITY), allow_unsafe=True)
    assert isinstance(unsafe, UnsafeIdentityKsf)
    stored = ksf_from_params(KsfParams.from_bytes(TINY.to_bytes()))
    assert isinstance(stored, Argon2idKsf)
    assert stored.params == TINY
