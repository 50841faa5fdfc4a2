"""Strict JSON for the witness: canonical encoding, and parsing that refuses anything
but the exact shape expected (ADR 0010 trust-boundary rules). The rules live in
:mod:`hsmvault.wire.canonical_json`; this module names them for the witness.

Parsing refuses: invalid UTF-8, duplicate keys, ``NaN``/``Infinity``, floats, integers
of more than 20 digits, booleans where integers are expected, missing or unknown keys,
non-lowercase or wrong-length hex, and base64 that is not canonical standard base64 with
padding. Every failure is a :class:`~hsmvault.errors.DecodeError` naming the field.
"""

from __future__ import annotations

import re
from typing import Final

from hsmvault.errors import DecodeError
from hsmvault.wire.canonical_json import (
    U64_MAX,
    b64,
    canonical_json,
    fields,
    loads_strict,
    read_b64,
    read_int,
    read_str,
)
from hsmvault.wire.canonical_json import read_hex as _read_hex

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

_DECIMAL: Final = re.compile(r"0|[1-9][0-9]{0,19}")


def read_u64(value: object, what: str) -> int:
    """An integer (not a boolean) in 0..2^64-1."""
    return read_int(value, what)


def read_hex(value: object, length: int, what: str) -> bytes:
    """Lowercase hex of exactly ``length`` bytes."""
    return _read_hex(value, what, length)


def read_optional_b64(value: object, what: str, *, length: int) -> bytes | None:
    return None if value is None else read_b64(value, what, length=length)


def parse_decimal_u64(text: str, what: str) -> int:
    """A URL path or query number: decimal digits, no sign, no leading zeros, u64."""
    if not _DECIMAL.fullmatch(text) or int(text) > U64_MAX:
        raise DecodeError(f"{what} must be a decimal integer in 0..2^64-1")
    return int(text)
