"""``expand_message_xmd`` (RFC 9380 §5.3.1) against the official vectors.

Vectors: ``expand_message_xmd_rfc9380.json`` (Appendix K.1 SHA-256, K.2 SHA-256 with a
DST longer than 255 bytes, K.3 SHA-512); see the vectors README for provenance. The
hash-to-group step is covered end to end by the RFC 9497 vectors in ``test_oprf.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hsmvault.crypto.hash_to_curve import (
    expand_message_xmd,
    hash_to_ristretto255,
    hash_to_scalar_bytes,
)
from hsmvault.errors import InvalidParameter
from tests.vectors import load_vectors, unhex

_XMD: Any = load_vectors("expand_message_xmd_rfc9380.json")
_HASH_NAMES = {"SHA256": "sha256", "SHA512": "sha512"}


def _run_suite(suite: Any) -> int:
    dst = suite["DST"].encode("ascii")
    hash_name = _HASH_NAMES[suite["hash"]]
    ran = 0
    for test in suite["tests"]:
        msg = test["msg"].encode("ascii")
        length = int(test["len_in_bytes"], 16)
        out = expand_message_xmd(msg, dst, length, hash_name)
        assert out == unhex(test["uniform_bytes"]), (suite["rfc_section"], test["msg"][:16])
        assert len(out) == length
        ran += 1
    return ran


def test_expand_message_xmd_all_rfc9380_vectors() -> None:
    ran_per_section: dict[str, int] = {}
    for suite in _XMD["suites"]:
        assert suite["name"] == "expand_message_xmd"
        ran_per_section[suite["rfc_section"]] = _run_suite(suite)
    assert len(ran_per_section) == 3
    assert all(n == 10 for n in ran_per_section.values()), ran_per_section
    assert sum(ran_per_section.values()) == 30


def test_expand_message_xmd_sha256_k1() -> None:
    (suite,) = [s for s in _XMD["suites"] if s["rfc_section"].startswith("K.1")]
    assert len(suite["DST"]) <= 255
    assert _run_suite(suite) == 10


def test_expand_message_xmd_sha256_long_dst_k2() -> None:
    """K.2: a DST over 255 bytes is replaced by H("H2C-OVERSIZE-DST-" || DST)."""
    (suite,) = [s for s in _XMD["suites"] if s["rfc_section"].startswith("K.2")]
    assert len(suite["DST"]) > 255
    assert _run_suite(suite) == 10


def test_expand_message_xmd_sha512_k3() -> None:
    (suite,) = [s for s in _XMD["suites"] if s["rfc_section"].startswith("K.3")]
    assert suite["hash"] == "SHA512"
    assert _run_suite(suite) == 10


@pytest.mark.parametrize(
    ("length", "hash_name"),
    [(65536, "sha512"), (255 * 32 + 1, "sha256"), (255 * 64 + 1, "sha512"), (-1, "sha512")],
)
def test_expand_message_xmd_rejects_out_of_range_lengths(length: int, hash_name: str) -> None:
    with pytest.raises(InvalidParameter):
        expand_message_xmd(b"msg", b"DST", length, hash_name)


@pytest.mark.parametrize(("length", "hash_name"), [(255 * 32, "sha256"), (255 * 64, "sha512")])
def test_expand_message_xmd_accepts_maximum_lengths(length: int, hash_name: str) -> None:
    assert len(expand_message_xmd(b"msg", b"DST", length, hash_name)) == length


@given(st.binary(max_size=300), st.binary(min_size=1, max_size=300))
def test_hash_to_ristretto255_is_deterministic_and_domain_separated(msg: bytes, dst: bytes) -> None:
    p = hash_to_ristretto255(msg, dst)
    assert p == hash_to_ristretto255(msg, dst)
    assert p != hash_to_ristretto255(msg, dst + b"!")
    assert len(hash_to_scalar_bytes(msg, dst)) == 64
