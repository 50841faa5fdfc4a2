"""ristretto255 (RFC 9496) against the official vectors, plus group-law properties.

Vectors: ``ristretto255_rfc9496.json`` (Appendix A.1-A.3); see the vectors README for
provenance. Every vector loop asserts how many vectors it ran.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hsmvault.crypto.ristretto255 import (
    ORDER,
    Element,
    Scalar,
    base_mult,
    element_from_uniform_bytes,
    scalar_mult,
)
from hsmvault.errors import DecodeError, InvalidParameter
from tests.vectors import load_vectors, unhex

_R255: Any = load_vectors("ristretto255_rfc9496.json")["ristretto255"]

# --- strategies -------------------------------------------------------------------------

scalars = st.binary(min_size=64, max_size=64).map(Scalar.from_uniform_bytes)
nonzero_scalars = scalars.filter(lambda s: not s.is_zero())
elements = st.binary(min_size=64, max_size=64).map(element_from_uniform_bytes)


# --- RFC 9496 Appendix A vectors --------------------------------------------------------


def test_multiples_of_generator_match_rfc9496_a1() -> None:
    """A.1: k*G for k = 0..15, each encoding decodes and re-encodes to itself, and
    B[k] = B[k-1] + G."""
    generator = Element.generator()
    previous = Element.identity()
    ran = 0
    for entry in _R255["multiples_of_generator"]:
        k = int(entry["k"])
        expected = unhex(entry["encoding"])
        point = base_mult(Scalar.from_int(k))
        assert bytes(point) == expected
        assert bytes(Element.from_bytes(expected, allow_identity=True)) == expected
        if k == 0:
            assert point.is_identity()
        else:
            assert previous + generator == point
            assert bytes(Element.from_bytes(expected)) == expected
        previous = point
        ran += 1
    assert ran == 16


def test_identity_rejected_unless_allowed() -> None:
    with pytest.raises(DecodeError):
        Element.from_bytes(bytes(32))
    assert Element.from_bytes(bytes(32), allow_identity=True).is_identity()


def test_invalid_encodings_rejected_rfc9496_a2() -> None:
    """A.2: all 29 bad encodings are refused with DecodeError (even when the identity
    is allowed)."""
    ran = 0
    categories: set[str] = set()
    for entry in _R255["invalid_encodings"]:
        encoding = unhex(entry["encoding"])
        with pytest.raises(DecodeError):
            Element.from_bytes(encoding)
        with pytest.raises(DecodeError):
            Element.from_bytes(encoding, allow_identity=True)
        categories.add(entry["category"])
        ran += 1
    assert ran == 29
    assert len(categories) == 5


def test_element_derivation_rfc9496_a3() -> None:
    """A.3: the element derivation function (from 64 uniform bytes)."""
    ran = 0
    for entry in _R255["from_uniform_bytes"]:
        assert bytes(element_from_uniform_bytes(unhex(entry["input"]))) == unhex(entry["output"])
        ran += 1
    assert ran == 7


def test_element_derivation_same_output_rfc9496_a3() -> None:
    """A.3, second list: four different inputs that map to one element."""
    same = _R255["from_uniform_bytes_same_output"]
    expected = unhex(same["output"])
    ran = 0
    for hex_input in same["inputs"]:
        assert bytes(element_from_uniform_bytes(unhex(hex_input))) == expected
        ran += 1
    assert ran == 4


def test_element_derivation_needs_64_bytes() -> None:
    with pytest.raises(InvalidParameter):
        element_from_uniform_bytes(bytes(63))


# --- scalars ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [ORDER, ORDER + 1, 2 * ORDER, 2**255 - 19, 2**256 - 1],
    ids=["L", "L+1", "2L", "p", "2^256-1"],
)
def test_non_canonical_scalar_rejected(value: int) -> None:
    with pytest.raises(DecodeError):
        Scalar.from_bytes(value.to_bytes(32, "little"))


@pytest.mark.parametrize("value", [0, 1, ORDER - 1])
def test_canonical_scalar_edges_accepted(value: int) -> None:
    encoded = value.to_bytes(32, "little")
    assert bytes(Scalar.from_bytes(encoded)) == encoded


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_scalar_wrong_length_rejected(length: int) -> None:
    with pytest.raises(DecodeError):
        Scalar.from_bytes(bytes(length))


@given(st.binary(min_size=32, max_size=32))
def test_scalar_decoding_matches_range_check(data: bytes) -> None:
    """A 32-byte string is a scalar exactly when its little-endian value is below L."""
    if int.from_bytes(data, "little") < ORDER:
        assert bytes(Scalar.from_bytes(data)) == data
    else:
        with pytest.raises(DecodeError):
            Scalar.from_bytes(data)


def test_scalar_repr_is_redacted() -> None:
    secret = Scalar.from_int(0x1234567890ABCDEF)
    for text in (repr(secret), str(secret), f"{secret!r}"):
        assert "redacted" in text
        assert bytes(secret).hex() not in text
        assert "1234567890abcdef" not in text.lower()
        assert "efcdab" not in text.lower()


def test_scalar_is_not_hashable() -> None:
    with pytest.raises(TypeError):
        hash(Scalar.from_int(7))


def test_zero_has_no_inverse() -> None:
    with pytest.raises(InvalidParameter):
        Scalar.from_int(0).invert()


def test_scalar_from_uniform_bytes_needs_64_bytes() -> None:
    with pytest.raises(InvalidParameter):
        Scalar.from_uniform_bytes(bytes(32))


# --- Hypothesis: round trips and decoding ----------------------------------------------


@given(scalars)
def test_scalar_round_trip(x: Scalar) -> None:
    assert Scalar.from_bytes(bytes(x)) == x


@given(elements)
def test_element_round_trip(p: Element) -> None:
    if p.is_identity():
        assert Element.from_bytes(bytes(p), allow_identity=True) == p
    else:
        assert Element.from_bytes(bytes(p)) == p


@given(st.binary(max_size=40))
def test_element_decoding_raises_only_decode_error(data: bytes) -> None:
    """Arbitrary bytes either decode to an element that re-encodes to them, or raise
    DecodeError and nothing else."""
    try:
        p = Element.from_bytes(data)
    except DecodeError:
        return
    assert bytes(p) == data
    assert not p.is_identity()


@given(st.binary(min_size=32, max_size=32))
def test_element_decoding_of_32_bytes_raises_only_decode_error(data: bytes) -> None:
    try:
        p = Element.from_bytes(data, allow_identity=True)
    except DecodeError:
        return
    assert bytes(p) == data


@given(st.binary(max_size=40))
def test_scalar_decoding_raises_only_decode_error(data: bytes) -> None:
    try:
        x = Scalar.from_bytes(data)
    except DecodeError:
        return
    assert bytes(x) == data


# --- Hypothesis: group and field laws --------------------------------------------------


@given(elements, elements, elements)
def test_addition_is_associative(p: Element, q: Element, r: Element) -> None:
    assert (p + q) + r == p + (q + r)


@given(elements, elements)
def test_addition_is_commutative(p: Element, q: Element) -> None:
    assert p + q == q + p


@given(elements)
def test_identity_and_inverse(p: Element) -> None:
    zero = Element.identity()
    assert p + zero == p
    assert zero + p == p
    assert (p - p).is_identity()
    assert (zero - p) + p == zero


@given(scalars, scalars, elements)
def test_scalar_multiplication_distributes(a: Scalar, b: Scalar, p: Element) -> None:
    assert p * (a + b) == p * a + p * b
    assert p * (a - b) == p * a - p * b


@given(scalars, scalars, elements)
def test_scalar_multiplication_is_compatible(a: Scalar, b: Scalar, p: Element) -> None:
    assert p * (a * b) == (p * b) * a


@given(scalars, elements, elements)
def test_scalar_multiplication_is_linear_in_the_point(a: Scalar, p: Element, q: Element) -> None:
    assert (p + q) * a == p * a + q * a


@given(scalars)
def test_base_mult_agrees_with_scalar_mult(a: Scalar) -> None:
    assert base_mult(a) == scalar_mult(a, Element.generator())


@given(elements)
def test_zero_and_one_scalars(p: Element) -> None:
    assert (p * Scalar.from_int(0)).is_identity()
    assert p * Scalar.from_int(1) == p
    assert p * Scalar.from_int(-1) == Element.identity() - p


@given(nonzero_scalars, elements)
def test_inverse_scalar_undoes_multiplication(a: Scalar, p: Element) -> None:
    assert a * a.invert() == Scalar.from_int(1)
    assert (p * a) * a.invert() == p


@given(scalars, scalars, scalars)
def test_scalar_field_laws(a: Scalar, b: Scalar, c: Scalar) -> None:
    assert a + b == b + a
    assert a * b == b * a
    assert (a + b) + c == a + (b + c)
    assert a * (b + c) == a * b + a * c
    assert a + (-a) == Scalar.from_int(0)
    assert (a - b) + b == a


@given(elements)
def test_order_times_element_is_identity(p: Element) -> None:
    # L * P = 0: L reduces to the zero scalar, so check (L - 1) * P + P instead.
    assert (p * Scalar.from_int(ORDER - 1) + p).is_identity()


@given(a=scalars, p=elements)
def test_scalar_times_element_equals_element_times_scalar(a: Scalar, p: Element) -> None:
    """``scalar * element`` must never read the element's bytes as a scalar."""
    assert a * p == p * a == scalar_mult(a, p)


@given(p=elements)
def test_encoding_with_bit_255_set_is_rejected(p: Element) -> None:
    """libsodium 1.0.18 ignores bit 255; a valid point with it set must not decode to a
    second byte string for the same element (RFC 9496 §4.3.1)."""
    malleated = bytearray(bytes(p))
    malleated[31] |= 0x80
    with pytest.raises(DecodeError):
        Element.from_bytes(bytes(malleated), allow_identity=True)
