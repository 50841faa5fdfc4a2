"""The ristretto255 prime-order group (RFC 9496) on libsodium, through ``pysodium``.

Two value types:

* :class:`Scalar` — an integer mod the group order L, held as its 32-byte canonical
  little-endian encoding. Scalars are usually secret: the ``repr`` is redacted and
  equality is constant-time.
* :class:`Element` — a group element, held as its 32-byte canonical encoding. Elements
  built by :meth:`Element.from_bytes` are valid and, unless explicitly allowed, never the
  identity (RFC 9497 §2.1 ``DeserializeElement``).

All arithmetic is done by libsodium; this module only checks encodings and wraps calls.
Every decoding failure raises :class:`hsmvault.errors.DecodeError`.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass

import pysodium

from hsmvault.errors import DecodeError, InvalidParameter

#: Encoded sizes (RFC 9496 §4.3): elements and scalars are 32 bytes.
ELEMENT_LEN = 32
SCALAR_LEN = 32
#: The prime order of the group, L = 2^252 + 27742317777372353535851937790883648493.
ORDER = 2**252 + 27742317777372353535851937790883648493

RandomBytes = Callable[[int], bytes]
"""A source of uniformly random bytes (``secrets.token_bytes`` by default); tests and
test vectors inject deterministic sources."""

_IDENTITY_ENCODING = bytes(ELEMENT_LEN)


def _reduce64(wide: bytes) -> bytes:
    return bytes(pysodium.crypto_core_ristretto255_scalar_reduce(wide))


@dataclass(frozen=True, slots=True, eq=False)
class Scalar:
    """A scalar mod L in canonical little-endian encoding. Secret by default."""

    encoded: bytes

    def __post_init__(self) -> None:
        if len(self.encoded) != SCALAR_LEN:
            raise DecodeError("scalar must be 32 bytes")
        # Canonical iff reducing it (zero-extended to 64 bytes) changes nothing. The
        # comparison is constant-time because the scalar may be a secret key.
        if not hmac.compare_digest(_reduce64(self.encoded + bytes(32)), self.encoded):
            raise DecodeError("scalar is not canonical (not below the group order)")

    @classmethod
    def from_bytes(cls, data: bytes) -> Scalar:
        """Decode a canonical scalar (RFC 9497 ``DeserializeScalar``); zero is allowed."""
        return cls(bytes(data))

    @classmethod
    def from_int(cls, value: int) -> Scalar:
        """The scalar ``value mod L`` (for tests and constants; not constant-time)."""
        return cls((value % ORDER).to_bytes(SCALAR_LEN, "little"))

    @classmethod
    def from_uniform_bytes(cls, wide: bytes) -> Scalar:
        """Reduce 64 uniform bytes mod L (libsodium ``scalar_reduce``)."""
        if len(wide) != 64:
            raise InvalidParameter("scalar reduction takes 64 bytes")
        return cls(_reduce64(wide))

    @classmethod
    def random(cls, rng: RandomBytes | None = None) -> Scalar:
        """A uniformly random non-zero scalar (RFC 9497 ``RandomScalar``)."""
        draw = rng if rng is not None else secrets.token_bytes
        while True:
            s = cls.from_uniform_bytes(draw(64))
            if not s.is_zero():
                return s

    def is_zero(self) -> bool:
        return hmac.compare_digest(self.encoded, bytes(SCALAR_LEN))

    def __bytes__(self) -> bytes:
        return self.encoded

    def __add__(self, other: Scalar) -> Scalar:
        return Scalar(
            bytes(pysodium.crypto_core_ristretto255_scalar_add(self.encoded, other.encoded))
        )

    def __sub__(self, other: Scalar) -> Scalar:
        return Scalar(
            bytes(pysodium.crypto_core_ristretto255_scalar_sub(self.encoded, other.encoded))
        )

    def __mul__(self, other: Scalar) -> Scalar:
        if not isinstance(other, Scalar):
            # ``scalar * element`` must reach Element.__rmul__, never read the element
            # as a scalar.
            return NotImplemented
        return Scalar(
            bytes(pysodium.crypto_core_ristretto255_scalar_mul(self.encoded, other.encoded))
        )

    def __neg__(self) -> Scalar:
        return Scalar(bytes(pysodium.crypto_core_ristretto255_scalar_negate(self.encoded)))

    def invert(self) -> Scalar:
        """The multiplicative inverse mod L. Raises :class:`InvalidParameter` for zero."""
        if self.is_zero():
            raise InvalidParameter("zero has no inverse")
        return Scalar(bytes(pysodium.crypto_core_ristretto255_scalar_invert(self.encoded)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Scalar):
            return NotImplemented
        return hmac.compare_digest(self.encoded, other.encoded)

    def __hash__(self) -> int:
        raise TypeError("scalars are secret-bearing and not hashable")

    def __repr__(self) -> str:
        return "Scalar(<redacted>)"


@dataclass(frozen=True, slots=True)
class Element:
    """A ristretto255 group element in canonical encoding (public data)."""

    encoded: bytes

    @classmethod
    def from_bytes(cls, data: bytes, *, allow_identity: bool = False) -> Element:
        """Decode an element (RFC 9497 ``DeserializeElement``).

        Rejects wrong lengths, non-canonical encodings (RFC 9496 §4.3.1) and — unless
        ``allow_identity`` — the identity element.
        """
        data = bytes(data)
        if len(data) != ELEMENT_LEN:
            raise DecodeError("group element must be 32 bytes")
        if data == _IDENTITY_ENCODING:
            if allow_identity:
                return cls(data)
            raise DecodeError("group element is the identity")
        # RFC 9496 §4.3.1: a canonical encoding is below p < 2^255, so bit 255 is clear.
        # libsodium 1.0.18 (Debian 12's libsodium23) ignores that bit and decodes such a
        # string to the same point as the canonical one; we refuse the malleable form.
        if data[-1] & 0x80 or not pysodium.crypto_core_ristretto255_is_valid_point(data):
            raise DecodeError("bytes are not a canonical ristretto255 encoding")
        return cls(data)

    @classmethod
    def identity(cls) -> Element:
        return cls(_IDENTITY_ENCODING)

    @classmethod
    def generator(cls) -> Element:
        return base_mult(Scalar.from_int(1))

    def is_identity(self) -> bool:
        return self.encoded == _IDENTITY_ENCODING

    def __repr__(self) -> str:
        return f"Element({self.encoded.hex()})"

    def __bytes__(self) -> bytes:
        return self.encoded

    def __add__(self, other: Element) -> Element:
        if self.is_identity():
            return other
        if other.is_identity():
            return self
        return Element(bytes(pysodium.crypto_core_ristretto255_add(self.encoded, other.encoded)))

    def __sub__(self, other: Element) -> Element:
        if other.is_identity():
            return self
        if self.is_identity():
            return Element(
                bytes(pysodium.crypto_core_ristretto255_sub(_IDENTITY_ENCODING, other.encoded))
            )
        return Element(bytes(pysodium.crypto_core_ristretto255_sub(self.encoded, other.encoded)))

    def __mul__(self, scalar: Scalar) -> Element:
        return scalar_mult(scalar, self)

    __rmul__ = __mul__


def element_from_uniform_bytes(uniform: bytes) -> Element:
    """RFC 9496 §4.3.4 element derivation from 64 uniform bytes."""
    if len(uniform) != 64:
        raise InvalidParameter("element derivation takes 64 bytes")
    return Element(bytes(pysodium.crypto_core_ristretto255_from_hash(uniform)))


def scalar_mult(scalar: Scalar, element: Element) -> Element:
    """``scalar * element``. A zero scalar or identity input gives the identity."""
    if scalar.is_zero() or element.is_identity():
        return Element.identity()
    try:
        return Element(
            bytes(pysodium.crypto_scalarmult_ristretto255(scalar.encoded, element.encoded))
        )
    except ValueError:  # libsodium refuses to return the identity
        return Element.identity()


def base_mult(scalar: Scalar) -> Element:
    """``scalar * G`` for the standard generator G."""
    if scalar.is_zero():
        return Element.identity()
    return Element(bytes(pysodium.crypto_scalarmult_ristretto255_base(scalar.encoded)))
