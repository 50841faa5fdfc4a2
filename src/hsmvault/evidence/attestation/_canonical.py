"""Canonical JSON for attestation documents (internal).

The rules of ADR 0010: UTF-8 restricted to ASCII, ``sort_keys``, no whitespace
(``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)``); the
parser re-serialises and demands byte equality, and refuses duplicate keys, floats,
NaN/Infinity, integers over 20 digits, and (through the field helpers) unknown or
missing keys, wrong types, booleans for integers, non-lowercase hex and non-canonical
base64. Every refusal is an
:class:`~hsmvault.evidence.attestation.base.AttestationFormatError`. The rules are
:mod:`hsmvault.wire.canonical_json`'s (measured with ``hsmvault/wire``); this module
binds them to that error.
"""

from __future__ import annotations

from typing import Any

from hsmvault.evidence.attestation.base import AttestationFormatError
from hsmvault.wire import canonical_json as cj
from hsmvault.wire.canonical_json import canonical_json as canonical

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

_E = AttestationFormatError


def parse_canonical(data: bytes) -> dict[str, Any]:
    """A canonical JSON object (:func:`hsmvault.wire.canonical_json.parse_canonical_json`,
    no size bound: callers bound their inputs)."""
    obj = cj.parse_canonical_json(data, max_len=None, what="attestation document", error=_E)
    if not isinstance(obj, dict):
        raise AttestationFormatError("attestation document is not a JSON object")
    return obj


def keys_field(obj: object, keys: frozenset[str], what: str) -> dict[str, Any]:
    return cj.fields(obj, keys, what, error=_E)


def str_field(value: object, what: str) -> str:
    return cj.read_str(value, what, error=_E)


def bool_field(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise AttestationFormatError(f"{what} must be a boolean")
    return value


def int_field(value: object, what: str, low: int, high: int) -> int:
    return cj.read_int(value, what, low, high, error=_E)


def hex_field(value: object, what: str, low: int, high: int) -> bytes:
    """Lowercase hex of ``low..high`` bytes (``low`` is at least 1 at every caller)."""
    return cj.read_hex(value, what, low, high, error=_E)


def b64_field(value: object, what: str) -> bytes:
    """Canonical standard padded base64 of any length."""
    return cj.read_b64(value, what, error=_E)
