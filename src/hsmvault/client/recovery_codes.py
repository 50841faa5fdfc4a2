"""The secrets a user holds: recovery codes, PINs, passwords, and the 64-digit key.

**Recovery codes** are generated, never chosen: 26 random Crockford base32 symbols (130
bits of entropy) followed by 4 check symbols, shown as six groups of five::

    7Q3KD-M0XWA-49RTE-B8HZN-1VJC5-GFP2Y

The check symbols are a Reed-Solomon code over GF(32) (generator roots ``a^0..a^3``,
field polynomial ``x^5 + x^2 + 1``): 30 symbols with minimum distance 5, so *any* change
of up to four symbols — a mistyped character, two swapped characters, a dropped and an
inserted one — is detected, locally, before a guess is spent at the fleet. Input is
normalised first: NFKC, case folded, spaces, dashes, dots and underscores dropped, and
the look-alikes Crockford names mapped (``O`` → ``0``, ``I``/``L`` → ``1``). ``U`` is not
in the alphabet.

**PINs and passwords** are chosen by the user and checked against a
:class:`SecretPolicy`. Short PINs are acceptable *here* because the fleet counts guesses
(default limit 10, ADR 0007): an attacker gets ``limit`` tries, not an offline
dictionary attack. A 4-digit PIN with 10 guesses is a 1-in-1000 chance; the default
minimum is therefore 6 digits (1 in 100,000).

**The 64-digit key** is the backup key BK itself as 64 hex digits in groups of four
(ARCHITECTURE §4: no server involved); :func:`parse_64_digit_key` tolerates spaces,
dashes, line breaks and either case.

Every secret type has a redacted ``repr``, compares in constant time, is unhashable and
refuses to be pickled; :meth:`secret_bytes` is the one way to get the bytes the vault
protocol uses.
"""

from __future__ import annotations

import hmac
import secrets
import unicodedata
from dataclasses import dataclass
from typing import ClassVar, Final, Protocol

from hsmvault.client.errors import RecoveryCodeError, WeakSecret
from hsmvault.crypto.backup_stream import BackupKey, RandomBytes
from hsmvault.errors import InvalidParameter

__all__ = [
    "ALPHABET",
    "DEFAULT_SECRET_POLICY",
    "RECOVERY_CODE_CHECK_SYMBOLS",
    "RECOVERY_CODE_DATA_SYMBOLS",
    "Password",
    "Pin",
    "RecoveryCode",
    "SecretPolicy",
    "VaultSecret",
    "format_64_digit_key",
    "login_secret_from_text",
    "parse_64_digit_key",
]

#: Crockford's base32 alphabet (no I, L, O, U).
ALPHABET: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_VALUE: Final = {c: i for i, c in enumerate(ALPHABET)}
#: Look-alikes folded into the alphabet on input (Crockford's decoding rules).
_LOOKALIKES: Final = {"O": "0", "I": "1", "L": "1"}
#: Characters dropped from input: group separators people type or paste.
_SEPARATORS: Final = frozenset(" \t\r\n-_.")
#: Random symbols per code (26 * 5 = 130 bits) and check symbols after them.
RECOVERY_CODE_DATA_SYMBOLS: Final = 26
RECOVERY_CODE_CHECK_SYMBOLS: Final = 4
_CODE_SYMBOLS: Final = RECOVERY_CODE_DATA_SYMBOLS + RECOVERY_CODE_CHECK_SYMBOLS
_GROUP: Final = 5

# ------------------------------------------------------------------ GF(32) Reed-Solomon

_FIELD_POLY: Final = 0b100101  # x^5 + x^2 + 1 (primitive: a = x generates GF(32)*)
_EXP: list[int] = [0] * 62
_LOG: list[int] = [0] * 32
_x = 1
for _i in range(31):
    _EXP[_i] = _EXP[_i + 31] = _x
    _LOG[_x] = _i
    _x <<= 1
    if _x & 0b100000:
        _x ^= _FIELD_POLY
del _i, _x


def _mul(a: int, b: int) -> int:
    if a == 0 or b == 0:
        return 0
    return _EXP[_LOG[a] + _LOG[b]]


def _generator() -> list[int]:
    """prod(x - a^i) for i in 0..3, coefficients highest degree first."""
    g = [1]
    for i in range(RECOVERY_CODE_CHECK_SYMBOLS):
        root = _EXP[i]
        nxt = [*g, 0]
        for j, coeff in enumerate(g):
            nxt[j + 1] ^= _mul(coeff, root)
        g = nxt
    return g


_GEN: Final = _generator()


def _check_symbols(data: list[int]) -> list[int]:
    """The remainder of ``data(x) · x^4`` modulo the generator: the check symbols."""
    rem = [0] * RECOVERY_CODE_CHECK_SYMBOLS
    for symbol in data:
        factor = symbol ^ rem[0]
        rem = [*rem[1:], 0]
        for i in range(RECOVERY_CODE_CHECK_SYMBOLS):
            rem[i] ^= _mul(_GEN[i + 1], factor)
    return rem


# ------------------------------------------------------------------ secret base


class VaultSecret(Protocol):
    """What the vault protocol needs from a secret: its bytes and a kind for messages."""

    @property
    def kind(self) -> str:
        """``"pin"``, ``"password"`` or ``"recovery code"`` (never the secret)."""
        ...

    def secret_bytes(self) -> bytes:
        """The bytes OPAQUE registers and logs in with."""
        ...


class _Secret:
    """Shared behaviour: redacted repr, constant-time equality, no hash, no pickle."""

    __slots__ = ("_bytes",)
    __hash__ = None  # type: ignore[assignment]
    KIND: ClassVar[str] = "secret"

    def __init__(self, raw: bytes) -> None:
        self._bytes = raw

    @property
    def kind(self) -> str:
        return self.KIND

    def secret_bytes(self) -> bytes:
        """The bytes OPAQUE registers and logs in with."""
        return self._bytes

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<redacted>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, _Secret)
        return hmac.compare_digest(self._bytes, other._bytes)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError(f"{type(self).__name__} holds a secret and cannot be pickled")


@dataclass(frozen=True, slots=True)
class SecretPolicy:
    """Rules for user-chosen secrets, in one place.

    * ``min_pin_digits`` (default 6) / ``max_pin_digits`` (default 16): PINs are ASCII
      digits only (full-width digits are folded; spaces are dropped).
    * ``min_password_chars`` (default 8, counted after NFC normalisation) and
      ``max_secret_bytes`` (default 1024, UTF-8) bound passwords.
    * A password that has the shape of a recovery code (30 Crockford symbols) is refused,
      so text typed at recovery can be routed without ambiguity
      (:func:`login_secret_from_text`).
    """

    min_pin_digits: int = 6
    max_pin_digits: int = 16
    min_password_chars: int = 8
    max_secret_bytes: int = 1024

    def __post_init__(self) -> None:
        if not 1 <= self.min_pin_digits <= self.max_pin_digits < _CODE_SYMBOLS:
            raise InvalidParameter(
                f"PIN length bounds must satisfy 1 <= min <= max < {_CODE_SYMBOLS}"
            )
        if self.min_password_chars < 1 or self.max_secret_bytes < self.min_password_chars:
            raise InvalidParameter("password length bounds are inconsistent")


DEFAULT_SECRET_POLICY: Final = SecretPolicy()


def _fold_digits(text: str) -> str:
    return "".join(ch for ch in unicodedata.normalize("NFKC", text) if not ch.isspace())


class Pin(_Secret):
    """A numeric PIN (ASCII digits; full-width digits and spaces are normalised away).
    Raises :class:`WeakSecret` if it breaks ``policy``."""

    __slots__ = ()
    KIND: ClassVar[str] = "pin"

    def __init__(self, text: str, *, policy: SecretPolicy = DEFAULT_SECRET_POLICY) -> None:
        if not isinstance(text, str):
            raise InvalidParameter("a PIN is a str")
        digits = _fold_digits(text)
        if not digits.isascii() or not digits.isdigit():
            raise WeakSecret("a PIN must consist of digits only")
        if not policy.min_pin_digits <= len(digits) <= policy.max_pin_digits:
            raise WeakSecret(
                f"a PIN must have {policy.min_pin_digits} to {policy.max_pin_digits} digits"
            )
        super().__init__(digits.encode("ascii"))


class Password(_Secret):
    """A password, NFC-normalised and UTF-8 encoded (RFC 8265's OpaqueString idea:
    the same text typed on two keyboards gives the same bytes). Raises
    :class:`WeakSecret` if it breaks ``policy``."""

    __slots__ = ()
    KIND: ClassVar[str] = "password"

    def __init__(self, text: str, *, policy: SecretPolicy = DEFAULT_SECRET_POLICY) -> None:
        if not isinstance(text, str):
            raise InvalidParameter("a password is a str")
        normal = unicodedata.normalize("NFC", text)
        raw = normal.encode("utf-8")
        if len(normal) < policy.min_password_chars:
            raise WeakSecret(f"a password needs at least {policy.min_password_chars} characters")
        if len(raw) > policy.max_secret_bytes:
            raise WeakSecret(f"a password is at most {policy.max_secret_bytes} bytes")
        if _code_symbols(text) is not None:
            raise WeakSecret("a password must not look like a recovery code")
        super().__init__(raw)


class _LoginText(_Secret):
    """Text typed at recovery that is not a recovery code: used as is (NFC, UTF-8),
    without policy checks (the policy may have changed since enrolment)."""

    __slots__ = ()
    KIND: ClassVar[str] = "password"


# ------------------------------------------------------------------ recovery codes


def _code_symbols(text: str) -> list[str] | None:
    """The normalised symbols of ``text`` if it has the shape of a recovery code (30
    symbols of the alphabet once separators are dropped and look-alikes folded)."""
    folded = unicodedata.normalize("NFKC", text).upper()
    symbols = [_LOOKALIKES.get(ch, ch) for ch in folded if ch not in _SEPARATORS]
    if len(symbols) != _CODE_SYMBOLS or any(ch not in _VALUE for ch in symbols):
        return None
    return symbols


class RecoveryCode(_Secret):
    """A generated recovery code (see the module docstring). Build one with
    :meth:`generate` or :meth:`parse`; :meth:`display` is the grouped form to show the
    user once; :meth:`secret_bytes` is the canonical 30-symbol ASCII string."""

    __slots__ = ()
    KIND: ClassVar[str] = "recovery code"

    def __init__(self, canonical: str) -> None:
        """The canonical form (30 symbols, checksum verified); prefer :meth:`generate`
        or :meth:`parse`."""
        if len(canonical) != _CODE_SYMBOLS or any(ch not in _VALUE for ch in canonical):
            raise RecoveryCodeError("not a canonical recovery code")
        values = [_VALUE[ch] for ch in canonical]
        data, check = values[:RECOVERY_CODE_DATA_SYMBOLS], values[RECOVERY_CODE_DATA_SYMBOLS:]
        if not hmac.compare_digest(bytes(_check_symbols(data)), bytes(check)):
            raise RecoveryCodeError("the recovery code's checksum does not match: check for typos")
        super().__init__(canonical.encode("ascii"))

    @classmethod
    def generate(cls, rng: RandomBytes | None = None) -> RecoveryCode:
        """A fresh code: 130 random bits from ``rng`` (default ``secrets.token_bytes``)."""
        draw = rng if rng is not None else secrets.token_bytes
        bits = RECOVERY_CODE_DATA_SYMBOLS * 5
        raw = draw((bits + 7) // 8)
        value = int.from_bytes(raw, "big") >> (8 * len(raw) - bits)
        data = [
            (value >> (5 * (RECOVERY_CODE_DATA_SYMBOLS - 1 - i))) & 31
            for i in range(RECOVERY_CODE_DATA_SYMBOLS)
        ]
        symbols = data + _check_symbols(data)
        return cls("".join(ALPHABET[s] for s in symbols))

    @classmethod
    def parse(cls, text: str) -> RecoveryCode:
        """Parse what a user typed. Raises :class:`RecoveryCodeError` for a wrong length,
        a character outside the alphabet, or a checksum mismatch (a typo)."""
        if not isinstance(text, str):
            raise RecoveryCodeError("a recovery code is a str")
        folded = unicodedata.normalize("NFKC", text).upper()
        symbols = [_LOOKALIKES.get(ch, ch) for ch in folded if ch not in _SEPARATORS]
        if any(ch not in _VALUE for ch in symbols):
            raise RecoveryCodeError("a recovery code uses only 0-9 and A-Z without I, L, O, U")
        if len(symbols) != _CODE_SYMBOLS:
            raise RecoveryCodeError(f"a recovery code has {_CODE_SYMBOLS} characters")
        return cls("".join(symbols))

    def display(self) -> str:
        """The grouped form, ``XXXXX-XXXXX-XXXXX-XXXXX-XXXXX-XXXXX`` (secret: show once)."""
        text = self._bytes.decode("ascii")
        return "-".join(text[i : i + _GROUP] for i in range(0, len(text), _GROUP))


def login_secret_from_text(text: str) -> VaultSecret:
    """Route what a user typed at recovery to the right secret type.

    All digits (spaces allowed) → the PIN bytes; the shape of a recovery code → a
    :class:`RecoveryCode` (raising :class:`RecoveryCodeError` on a typo, *before* a guess
    is spent); anything else → the NFC UTF-8 password bytes. No policy is applied: the
    rules may have changed since enrolment. (:class:`Password` refuses code-shaped
    passwords and :class:`Pin` refuses 30-digit PINs, so the routing is unambiguous.)
    """
    if not isinstance(text, str):
        raise InvalidParameter("secret text must be a str")
    digits = _fold_digits(text)
    if digits and digits.isascii() and digits.isdigit() and len(digits) < _CODE_SYMBOLS:
        return _LoginText(digits.encode("ascii"))
    if _code_symbols(text) is not None:
        return RecoveryCode.parse(text)
    if not text:
        raise InvalidParameter("empty secret")
    return _LoginText(unicodedata.normalize("NFC", text).encode("utf-8"))


# ------------------------------------------------------------------ the 64-digit key

_KEY_DIGITS: Final = 64
_KEY_GROUP: Final = 4


def format_64_digit_key(key: BackupKey) -> str:
    """BK as 64 lowercase hexadecimal digits in groups of four (the no-server option).
    Secret: show it to the user, never log it."""
    digits = key.expose_secret().hex()
    return " ".join(digits[i : i + _KEY_GROUP] for i in range(0, _KEY_DIGITS, _KEY_GROUP))


def parse_64_digit_key(text: str) -> BackupKey:
    """Parse a 64-digit key as typed: spaces, line breaks and dashes are ignored, either
    case is accepted. Raises :class:`InvalidParameter` (without echoing the input)."""
    if not isinstance(text, str):
        raise InvalidParameter("a 64-digit key is a str")
    digits = "".join(ch for ch in text if ch not in _SEPARATORS).lower()
    if len(digits) != _KEY_DIGITS:
        raise InvalidParameter(f"a 64-digit key has {_KEY_DIGITS} hex digits, got {len(digits)}")
    if any(ch not in "0123456789abcdef" for ch in digits):
        raise InvalidParameter("a 64-digit key uses only the digits 0-9 and a-f")
    return BackupKey(bytes.fromhex(digits))
