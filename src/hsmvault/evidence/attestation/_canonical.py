"""Canonical JSON for attestation documents (internal).

The rules of ADR 0010: UTF-8 restricted to ASCII, ``sort_keys``, no whitespace
(``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)``); the
parser re-serialises and demands byte equality, and refuses duplicate keys, floats,
NaN/Infinity, and (through the field helpers) unknown or missing keys, wrong types,
booleans for integers, non-lowercase hex and non-canonical base64. Every refusal is an
:class:`~hsmvault.evidence.attestation.base.AttestationFormatError`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from hsmvault.evidence.attestation.base import AttestationFormatError

__all__ = [
    "b64_field",
    "bool_field",
    "canonical",
    "hex_field",
    "int_field",
    "keys_field",
    "parse_canonical",
    "str_field",
]

_HEX = re.compile(r"(?:[0-9a-f]{2})+")


def canonical(obj: object) -> bytes:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise AttestationFormatError("attestation document repeats a key")
        result[key] = value
    return result


def _refuse_number(text: str) -> Any:
    raise AttestationFormatError("attestation document holds a non-integer number")


def parse_canonical(data: bytes) -> dict[str, Any]:
    try:
        text = data.decode("ascii")
        obj = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_float=_refuse_number,
            parse_constant=_refuse_number,
        )
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise AttestationFormatError("attestation document is not JSON") from None
    if not isinstance(obj, dict):
        raise AttestationFormatError("attestation document is not a JSON object")
    if canonical(obj) != data:
        raise AttestationFormatError("attestation document is not canonical JSON")
    return obj


def keys_field(obj: object, keys: frozenset[str], what: str) -> dict[str, Any]:
    if not isinstance(obj, dict) or set(obj) != keys:
        raise AttestationFormatError(f"{what} has missing or unknown fields")
    return obj


def str_field(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise AttestationFormatError(f"{what} must be a string")
    return value


def bool_field(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise AttestationFormatError(f"{what} must be a boolean")
    return value


def int_field(value: object, what: str, low: int, high: int) -> int:
    if not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= high):
        raise AttestationFormatError(f"{what} must be an integer in {low}..{high}")
    return value


def hex_field(value: object, what: str, low: int, high: int) -> bytes:
    text = str_field(value, what)
    if not _HEX.fullmatch(text) or not low <= len(text) // 2 <= high:
        raise AttestationFormatError(f"{what} must be {low}..{high} bytes of lowercase hex")
    return bytes.fromhex(text)


def b64_field(value: object, what: str) -> bytes:
    text = str_field(value, what)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise AttestationFormatError(f"{what} must be base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise AttestationFormatError(f"{what} must be canonical base64")
    return raw
