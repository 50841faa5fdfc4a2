"""Strict binary codec primitives for every wire message: a :class:`Writer` and a
:class:`Reader`.

Integers are unsigned and big-endian (``u8``, ``u16``, ``u32``, ``u64``). Variable-length
byte strings carry a big-endian length prefix of 1, 2 or 4 bytes and a declared maximum
(and optional minimum) length; the maximum is checked on both sides, so the writer can
never produce what the reader would refuse. Booleans are one byte, exactly 0 or 1.

Contract of :class:`Reader`: every short read, over-long or too-short field, non-0/1
boolean, and every byte left over at :meth:`Reader.finish` raises
:class:`~hsmvault.errors.DecodeError` and nothing else. :class:`Writer` raises
:class:`~hsmvault.errors.InvalidParameter` for a value it cannot encode (a caller bug).

Imports nothing of ours but :mod:`hsmvault.errors`.
"""

from __future__ import annotations

from typing import Final

from hsmvault.errors import DecodeError, InvalidParameter

__all__ = ["PREFIX_WIDTHS", "Reader", "Writer"]

#: Allowed widths, in bytes, of a length prefix.
PREFIX_WIDTHS: Final = (1, 2, 4)
_INT_WIDTHS: Final = {"u8": 1, "u16": 2, "u32": 4, "u64": 8}


def _check_prefix(prefix: int, max_len: int, min_len: int) -> None:
    if prefix not in PREFIX_WIDTHS:
        raise InvalidParameter("length prefix must be 1, 2 or 4 bytes")
    if not 0 <= min_len <= max_len < 1 << (8 * prefix):
        raise InvalidParameter("length bounds do not fit the length prefix")


class Writer:
    """Builds one encoding; :meth:`getvalue` returns the bytes written so far."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def _int(self, value: int, width: int) -> Writer:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidParameter("an integer field must be an int")
        if not 0 <= value < 1 << (8 * width):
            raise InvalidParameter(f"integer does not fit in {width} byte(s)")
        self._parts.append(value.to_bytes(width, "big"))
        return self

    def u8(self, value: int) -> Writer:
        """Append one unsigned byte."""
        return self._int(value, 1)

    def u16(self, value: int) -> Writer:
        """Append a big-endian unsigned 16-bit integer."""
        return self._int(value, 2)

    def u32(self, value: int) -> Writer:
        """Append a big-endian unsigned 32-bit integer."""
        return self._int(value, 4)

    def u64(self, value: int) -> Writer:
        """Append a big-endian unsigned 64-bit integer."""
        return self._int(value, 8)

    def boolean(self, value: bool) -> Writer:
        """Append ``0x01`` for ``True``, ``0x00`` for ``False``."""
        if not isinstance(value, bool):
            raise InvalidParameter("a boolean field must be a bool")
        return self._int(int(value), 1)

    def fixed(self, value: bytes, length: int) -> Writer:
        """Append exactly ``length`` bytes, no prefix."""
        if not isinstance(value, bytes) or len(value) != length:
            raise InvalidParameter(f"field must be exactly {length} bytes")
        self._parts.append(value)
        return self

    def var_bytes(self, value: bytes, *, prefix: int, max_len: int, min_len: int = 0) -> Writer:
        """Append ``len(value)`` as a ``prefix``-byte integer, then ``value``."""
        _check_prefix(prefix, max_len, min_len)
        if not isinstance(value, bytes) or not min_len <= len(value) <= max_len:
            raise InvalidParameter(f"field must be {min_len}..{max_len} bytes")
        self._int(len(value), prefix)
        self._parts.append(value)
        return self

    def getvalue(self) -> bytes:
        """Everything written, concatenated."""
        return b"".join(self._parts)


class Reader:
    """Reads one encoding front to back; call :meth:`finish` when done."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise DecodeError("input must be bytes")
        self._data = bytes(data)
        self._pos = 0

    @property
    def remaining(self) -> int:
        """Bytes not read yet."""
        return len(self._data) - self._pos

    def _take(self, length: int) -> bytes:
        if length > self.remaining:
            raise DecodeError("input is truncated")
        out = self._data[self._pos : self._pos + length]
        self._pos += length
        return out

    def _int(self, width: int) -> int:
        return int.from_bytes(self._take(width), "big")

    def u8(self) -> int:
        """One unsigned byte."""
        return self._int(1)

    def u16(self) -> int:
        """A big-endian unsigned 16-bit integer."""
        return self._int(2)

    def u32(self) -> int:
        """A big-endian unsigned 32-bit integer."""
        return self._int(4)

    def u64(self) -> int:
        """A big-endian unsigned 64-bit integer."""
        return self._int(8)

    def boolean(self) -> bool:
        """One byte that must be 0 or 1."""
        value = self._int(1)
        if value > 1:
            raise DecodeError("boolean field must be 0 or 1")
        return value == 1

    def fixed(self, length: int) -> bytes:
        """Exactly ``length`` bytes."""
        return self._take(length)

    def var_bytes(self, *, prefix: int, max_len: int, min_len: int = 0) -> bytes:
        """A ``prefix``-byte length, checked against the bounds, then that many bytes."""
        _check_prefix(prefix, max_len, min_len)
        length = self._int(prefix)
        if not min_len <= length <= max_len:
            raise DecodeError(f"field length must be {min_len}..{max_len} bytes")
        return self._take(length)

    def finish(self) -> None:
        """Raise :class:`DecodeError` if any byte is left over."""
        if self.remaining:
            raise DecodeError("trailing bytes after the message")
