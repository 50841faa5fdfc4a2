"""Canonical JSON and strict JSON field readers, shared by every JSON format of ours
(ADR 0010: validation bundles, the fleet-key artifact, the witness API and its data
files, the client trust store, attestation and ceremony documents).

The canonical encoding is ``json.dumps(obj, sort_keys=True, separators=(",", ":"),
ensure_ascii=True, allow_nan=False)`` encoded as ASCII.

Strict parsing refuses duplicate object keys, floats, ``NaN``/``Infinity``, integers of
more than 20 digits, invalid JSON and excessive nesting; the field readers refuse wrong
types (booleans are not integers), missing or unknown keys, out-of-range integers,
non-lowercase or wrong-length hex, and base64 that is not canonical standard padded
base64 (RFC 4648 section 4; re-encoding must give the input back).

Every refusal is raised as ``error(message)``, where ``error`` is the caller's error
factory (an exception class or a function returning an exception; default
:class:`~hsmvault.errors.DecodeError`), so each format keeps its own error type.
Messages name the field, never its value. Pure; imports nothing of ours but
:mod:`hsmvault.errors` (this module runs inside the HSM too: it is measured with
``hsmvault/wire``).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Iterable
from typing import Any, Final

from hsmvault.errors import DecodeError

__all__ = [
    "U64_MAX",
    "ErrorFactory",
    "b64",
    "canonical_json",
    "fields",
    "loads_strict",
    "parse_canonical_json",
    "read_b64",
    "read_hex",
    "read_int",
    "read_str",
]

#: Builds the exception a refusal raises from its message.
ErrorFactory = Callable[[str], Exception]

U64_MAX: Final = (1 << 64) - 1
_MAX_INT_DIGITS: Final = 20
_HEX: Final = re.compile(r"[0-9a-f]*")


class _Refused(Exception):
    """Raised by the ``json.loads`` hooks; turned into the caller's error outside it."""


def canonical_json(obj: object) -> bytes:
    """The canonical encoding of a JSON value: sorted keys, no spaces, ASCII, no NaN.

    Raises ``ValueError``/``TypeError`` (from :func:`json.dumps`) for a value JSON cannot
    hold; that is a caller bug, not a parse failure.
    """
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Refused("duplicate JSON key")
        out[key] = value
    return out


def _no_float(_text: str) -> float:
    raise _Refused("floats are not allowed")


def _no_constant(_text: str) -> float:
    raise _Refused("NaN and Infinity are not allowed")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise _Refused("integer too large")
    return int(text)


def _loads(text: str, what: str, error: ErrorFactory) -> Any:
    try:
        return json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_float=_no_float,
            parse_int=_bounded_int,
            parse_constant=_no_constant,
        )
    except _Refused as exc:
        raise error(f"{what}: {exc}") from None
    except (ValueError, RecursionError):
        raise error(f"{what} is not valid JSON") from None


def loads_strict(
    data: bytes, *, max_len: int, what: str = "JSON document", error: ErrorFactory = DecodeError
) -> Any:
    """Parse UTF-8 JSON of at most ``max_len`` bytes with the strict rules (no
    canonical-form check: for answers and requests of other parties). Schema checks are
    the caller's."""
    if len(data) > max_len:
        raise error(f"{what} is too large")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{what} is not valid JSON") from None
    return _loads(text, what, error)


def parse_canonical_json(
    data: object, *, max_len: int | None, what: str, error: ErrorFactory = DecodeError
) -> Any:
    """Parse ``data`` (bytes) as canonical JSON and return the JSON value.

    Refuses: non-bytes, empty or longer than ``max_len`` (no bound when ``None``),
    non-ASCII, the strict-parsing refusals above, and any encoding that is not
    byte-for-byte :func:`canonical_json` of the parsed value. Schema checks are the
    caller's.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise error(f"{what} must be bytes")
    raw = bytes(data)
    if not raw or (max_len is not None and len(raw) > max_len):
        raise error(f"{what} is empty or too large")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise error(f"{what} is not ASCII") from None
    value = _loads(text, what, error)
    try:
        again = canonical_json(value)
    except (ValueError, TypeError):  # pragma: no cover - strict loads output always dumps
        raise error(f"{what} is not canonical JSON") from None
    if again != raw:
        raise error(f"{what} is not canonical JSON")
    return value


# --- field readers ------------------------------------------------------------------


def fields(
    value: object, keys: Iterable[str], what: str, *, error: ErrorFactory = DecodeError
) -> dict[str, Any]:
    """``value`` as a JSON object with exactly ``keys`` (none missing, none unknown)."""
    if not isinstance(value, dict) or set(value) != frozenset(keys):
        raise error(f"{what}: unexpected or missing fields")
    return value


def read_int(
    value: object,
    what: str,
    lo: int = 0,
    hi: int = U64_MAX,
    *,
    error: ErrorFactory = DecodeError,
) -> int:
    """An integer (not a boolean) in ``lo..hi``."""
    if type(value) is not int or not lo <= value <= hi:
        raise error(f"{what} must be an integer in {lo}..{hi}")
    return value


def read_str(value: object, what: str, *, error: ErrorFactory = DecodeError) -> str:
    """A string."""
    if type(value) is not str:
        raise error(f"{what} must be a string")
    return value


def read_hex(
    value: object,
    what: str,
    low: int,
    high: int | None = None,
    *,
    error: ErrorFactory = DecodeError,
) -> bytes:
    """Lowercase hex of exactly ``low`` bytes, or of ``low..high`` bytes when ``high``
    is given."""
    text = read_str(value, what, error=error)
    top = low if high is None else high
    if len(text) % 2 or not low <= len(text) // 2 <= top or not _HEX.fullmatch(text):
        if high is None:
            raise error(f"{what} must be {2 * low} lowercase hex digits")
        raise error(f"{what} must be {low}..{high} bytes of lowercase hex")
    return bytes.fromhex(text)


def read_b64(
    value: object,
    what: str,
    *,
    length: int | None = None,
    max_len: int | None = None,
    error: ErrorFactory = DecodeError,
) -> bytes:
    """Canonical standard padded base64: exactly ``length`` bytes if given, 1 to
    ``max_len`` bytes if given, any length (even empty) if neither."""
    text = read_str(value, what, error=error)
    if not text.isascii():
        raise error(f"{what} must be base64")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise error(f"{what} must be base64") from None
    if b64(raw) != text:
        raise error(f"{what} must be canonical base64")
    if length is not None and len(raw) != length:
        raise error(f"{what} must be {length} bytes")
    if max_len is not None and not 0 < len(raw) <= max_len:
        raise error(f"{what} must be 1 to {max_len} bytes")
    return raw


def b64(raw: bytes) -> str:
    """Standard padded base64 of ``raw`` (the form :func:`read_b64` accepts)."""
    return base64.b64encode(raw).decode("ascii")
