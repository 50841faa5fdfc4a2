"""Strict JSON for the witness: canonical encoding, and parsing that refuses anything
but the exact shape expected (ADR 0010 trust-boundary rules).

Parsing refuses: invalid UTF-8, duplicate keys, ``NaN``/``Infinity``, floats, integers
of more than 20 digits, booleans where integers are expected, missing or unknown keys,
non-lowercase or wrong-length hex, and base64 that is not canonical standard base64 with
padding. Every failure is a :class:`~hsmvault.errors.DecodeError` naming the field.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable
from typing import Any, Final

from hsmvault.errors import DecodeError

__all__ = [
    "U64_MAX",
    "b64",
    "canonical_json",
    "fields",
    "loads_strict",
    "parse_decimal_u64",
    "read_b64",
    "read_hex",
    "read_optional_b64",
    "read_str",
    "read_u64",
]

U64_MAX: Final = (1 << 64) - 1
_MAX_INT_DIGITS: Final = 20
_DECIMAL: Final = re.compile(r"0|[1-9][0-9]{0,19}")
_HEX: Final = re.compile(r"[0-9a-f]*")


def canonical_json(obj: object) -> bytes:
    """Sorted keys, no spaces, ASCII only (the artifact's canonical form, ADR 0010)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DecodeError("duplicate key in JSON object")
        out[key] = value
    return out


def _no_float(_text: str) -> float:
    raise DecodeError("floats are not allowed")


def _no_constant(_text: str) -> float:
    raise DecodeError("NaN and Infinity are not allowed")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise DecodeError("integer too long")
    return int(text)


def loads_strict(data: bytes, *, max_len: int) -> Any:
    """Parse a JSON document of at most ``max_len`` bytes (rules above)."""
    if len(data) > max_len:
        raise DecodeError("JSON document too large")
    try:
        text = bytes(data).decode("utf-8")
        return json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_float=_no_float,
            parse_constant=_no_constant,
            parse_int=_bounded_int,
        )
    except DecodeError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise DecodeError("not a JSON document") from None


def fields(value: object, keys: Iterable[str], what: str) -> dict[str, Any]:
    """``value`` as a JSON object with exactly ``keys``."""
    wanted = frozenset(keys)
    if not isinstance(value, dict):
        raise DecodeError(f"{what} must be a JSON object")
    if set(value) != wanted:
        raise DecodeError(f"{what} must have exactly the keys {sorted(wanted)}")
    return value


def read_u64(value: object, what: str) -> int:
    if type(value) is not int or not 0 <= value <= U64_MAX:
        raise DecodeError(f"{what} must be an integer in 0..2^64-1")
    return value


def read_str(value: object, what: str) -> str:
    if type(value) is not str:
        raise DecodeError(f"{what} must be a string")
    return value


def read_hex(value: object, length: int, what: str) -> bytes:
    """Lowercase hex of exactly ``length`` bytes."""
    text = read_str(value, what)
    if len(text) != 2 * length or not _HEX.fullmatch(text):
        raise DecodeError(f"{what} must be {2 * length} lowercase hex digits")
    return bytes.fromhex(text)


def read_b64(
    value: object, what: str, *, length: int | None = None, max_len: int | None = None
) -> bytes:
    """Canonical standard base64 (padded); exactly ``length`` bytes or 1..``max_len``."""
    text = read_str(value, what)
    if not text.isascii():
        raise DecodeError(f"{what} must be base64")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise DecodeError(f"{what} must be base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise DecodeError(f"{what} must be canonical base64")
    if length is not None and len(raw) != length:
        raise DecodeError(f"{what} must be {length} bytes")
    if max_len is not None and not 0 < len(raw) <= max_len:
        raise DecodeError(f"{what} must be 1 to {max_len} bytes")
    return raw


def read_optional_b64(value: object, what: str, *, length: int) -> bytes | None:
    return None if value is None else read_b64(value, what, length=length)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def parse_decimal_u64(text: str, what: str) -> int:
    """A URL path or query number: decimal digits, no sign, no leading zeros, u64."""
    if not _DECIMAL.fullmatch(text) or int(text) > U64_MAX:
        raise DecodeError(f"{what} must be a decimal integer in 0..2^64-1")
    return int(text)
