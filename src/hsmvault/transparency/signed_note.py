"""C2SP signed notes (c2sp.org/signed-note), Ed25519 keys only (pure: no I/O).

A note is ``text || "\\n" || signature lines``. The text is non-empty, ends in a newline and
is valid UTF-8 without ASCII control characters other than newline. Each signature line is
``"\\u2014 " || key name || " " || base64(key ID[4] || signature) || "\\n"``; the key ID is the
first 4 bytes of ``SHA-256(name || 0x0A || 0x01 || Ed25519 public key)``.

Keys are written as in golang.org/x/mod/sumdb/note:

* verifier key: ``<name>+<key ID, 8 lowercase hex digits>+base64(0x01 || public key)``;
* signer key: ``PRIVATE+KEY+<name>+<key ID>+base64(0x01 || 32-byte seed)``.

Parsing is strict: anything malformed raises :class:`DecodeError` (base64 must be canonical,
the key ID must match the key). :func:`open_note` raises :class:`VerificationError` when a
signature by a trusted key is invalid or when no signature is by a trusted key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from hsmvault.errors import DecodeError, InvalidParameter, VerificationError

__all__ = [
    "ALG_ED25519",
    "MAX_SIGNATURES",
    "NoteSignature",
    "OpenedNote",
    "ParsedNote",
    "Signer",
    "Verifier",
    "format_note",
    "key_id",
    "open_note",
    "parse_note",
    "sign_note",
]

ALG_ED25519 = 0x01
MAX_SIGNATURES = 100
_SIG_PREFIX = "\u2014 "
_SIGNER_PREFIX = "PRIVATE+KEY+"


def key_id(name: str, public_key: bytes, alg: int = ALG_ED25519) -> bytes:
    """The 4-byte key ID: ``SHA-256(name || 0x0A || alg || public_key)[:4]``."""
    if not 0 <= alg <= 0xFF:
        raise InvalidParameter("algorithm identifier is one byte")
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([alg]) + public_key).digest()[:4]


def _is_valid_name(name: str) -> bool:
    return (
        name != ""
        and "+" not in name
        and not any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in name)
    )


def _b64decode(value: str) -> bytes:
    """Strict standard base64 with padding; non-canonical encodings are rejected."""
    if not value.isascii():
        raise DecodeError("base64 is not ASCII")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise DecodeError("invalid base64") from None
    if base64.b64encode(raw).decode("ascii") != value:
        raise DecodeError("non-canonical base64")
    return raw


def _b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _parse_key_id(hex8: str) -> bytes:
    if len(hex8) != 8 or any(c not in "0123456789abcdef" for c in hex8):
        raise DecodeError("key ID must be 8 lowercase hex digits")
    return bytes.fromhex(hex8)


@dataclass(frozen=True)
class Verifier:
    """An Ed25519 verifier key with its name and key ID."""

    name: str
    key_id: bytes
    public_key: bytes

    def __post_init__(self) -> None:
        if not _is_valid_name(self.name):
            raise InvalidParameter("invalid key name")
        if len(self.public_key) != 32:
            raise InvalidParameter("Ed25519 public keys are 32 bytes")
        if self.key_id != key_id(self.name, self.public_key):
            raise InvalidParameter("key ID does not match the key")

    @classmethod
    def from_public_key(cls, name: str, public_key: bytes) -> Verifier:
        return cls(name, key_id(name, public_key), bytes(public_key))

    @classmethod
    def from_vkey(cls, vkey: str) -> Verifier:
        """Parse ``<name>+<hex8>+base64(0x01 || pub)``; raises :class:`DecodeError`."""
        parts = vkey.split("+", 2)
        if len(parts) != 3:
            raise DecodeError("malformed verifier key")
        name, hex8, b64 = parts
        if not _is_valid_name(name):
            raise DecodeError("invalid key name")
        kid = _parse_key_id(hex8)
        raw = _b64decode(b64)
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise DecodeError("unsupported verifier key")
        pub = raw[1:]
        if key_id(name, pub) != kid:
            raise DecodeError("key ID does not match the verifier key")
        return cls(name, kid, pub)

    def to_vkey(self) -> str:
        return (
            f"{self.name}+{self.key_id.hex()}+{_b64encode(bytes([ALG_ED25519]) + self.public_key)}"
        )

    def verify(self, message: bytes, signature: bytes) -> None:
        """Raises :class:`VerificationError` unless ``signature`` is valid over ``message``."""
        if len(signature) != 64:
            raise VerificationError("invalid signature")
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, message)
        except (InvalidSignature, ValueError):
            raise VerificationError("invalid signature") from None


class Signer:
    """An Ed25519 signer key (seed held in memory; never printed)."""

    __slots__ = ("_private", "key_id", "name", "public_key")

    def __init__(self, name: str, seed: bytes) -> None:
        if not _is_valid_name(name):
            raise InvalidParameter("invalid key name")
        if len(seed) != 32:
            raise InvalidParameter("Ed25519 seeds are 32 bytes")
        self.name = name
        self._private = Ed25519PrivateKey.from_private_bytes(bytes(seed))
        self.public_key = self._private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.key_id = key_id(name, self.public_key)

    def __repr__(self) -> str:
        return f"Signer({self.name!r}, key_id={self.key_id.hex()})"

    @classmethod
    def from_skey(cls, skey: str) -> Signer:
        """Parse ``PRIVATE+KEY+<name>+<hex8>+base64(0x01 || seed)``; raises DecodeError."""
        if not skey.startswith(_SIGNER_PREFIX):
            raise DecodeError("malformed signer key")
        parts = skey[len(_SIGNER_PREFIX) :].split("+", 2)
        if len(parts) != 3:
            raise DecodeError("malformed signer key")
        name, hex8, b64 = parts
        if not _is_valid_name(name):
            raise DecodeError("invalid key name")
        kid = _parse_key_id(hex8)
        raw = _b64decode(b64)
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise DecodeError("unsupported signer key")
        signer = cls(name, raw[1:])
        if signer.key_id != kid:
            raise DecodeError("key ID does not match the signer key")
        return signer

    def to_skey(self) -> str:
        raw = bytes([ALG_ED25519]) + self._private.private_bytes_raw()
        return f"{_SIGNER_PREFIX}{self.name}+{self.key_id.hex()}+{_b64encode(raw)}"

    def verifier(self) -> Verifier:
        return Verifier(self.name, self.key_id, self.public_key)

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message)


@dataclass(frozen=True)
class NoteSignature:
    """One signature line: key name, 4-byte key ID and the signature bytes after it."""

    name: str
    key_id: bytes
    signature: bytes

    def line(self) -> str:
        return f"{_SIG_PREFIX}{self.name} {_b64encode(self.key_id + self.signature)}\n"


@dataclass(frozen=True)
class ParsedNote:
    text: str
    signatures: tuple[NoteSignature, ...]


@dataclass(frozen=True)
class OpenedNote:
    """A note with at least one valid signature by a trusted key."""

    text: str
    verified: tuple[NoteSignature, ...]
    unverified: tuple[NoteSignature, ...]


def _check_text_chars(text: str) -> bool:
    return not any(ord(c) < 0x20 and c != "\n" for c in text)


def _valid_text(text: str) -> bool:
    return text != "" and text.endswith("\n") and _check_text_chars(text)


def parse_note(data: bytes) -> ParsedNote:
    """Split a signed note into text and signature lines; raises :class:`DecodeError`."""
    try:
        msg = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError("malformed note: not UTF-8") from None
    if not _check_text_chars(msg):
        raise DecodeError("malformed note: control character")
    split = msg.rfind("\n\n")
    if split < 0:
        raise DecodeError("malformed note: no signature block")
    text, block = msg[: split + 1], msg[split + 2 :]
    if block == "" or not block.endswith("\n"):
        raise DecodeError("malformed note: signature block")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise DecodeError("malformed note: too many signatures")
    sigs: list[NoteSignature] = []
    for line in lines:
        if not line.startswith(_SIG_PREFIX):
            raise DecodeError("malformed note: not a signature line")
        name, sep, b64 = line[len(_SIG_PREFIX) :].partition(" ")
        if not sep or not _is_valid_name(name):
            raise DecodeError("malformed note: signature key name")
        raw = _b64decode(b64)
        if len(raw) < 5:
            raise DecodeError("malformed note: signature too short")
        sigs.append(NoteSignature(name, raw[:4], raw[4:]))
    return ParsedNote(text, tuple(sigs))


def format_note(text: str, signatures: Iterable[NoteSignature]) -> bytes:
    if not _valid_text(text):
        raise InvalidParameter("note text must be non-empty, end in a newline, no controls")
    sigs = list(signatures)
    if not sigs or len(sigs) > MAX_SIGNATURES:
        raise InvalidParameter("a note carries 1 to 100 signatures")
    for s in sigs:
        if not _is_valid_name(s.name) or len(s.key_id) != 4 or not s.signature:
            raise InvalidParameter("invalid signature name, key ID or signature")
    lines = [s.line() for s in sigs]
    return (text + "\n" + "".join(lines)).encode("utf-8")


def sign_note(text: str, signers: Sequence[Signer]) -> bytes:
    """Sign ``text`` with each signer in order; the note bytes (Go ``note.Sign``)."""
    if not _valid_text(text):
        raise InvalidParameter("note text must be non-empty, end in a newline, no controls")
    msg = text.encode("utf-8")
    return format_note(text, [NoteSignature(s.name, s.key_id, s.sign(msg)) for s in signers])


def open_note(data: bytes, verifiers: Iterable[Verifier]) -> OpenedNote:
    """Parse and verify a note against trusted verifiers (Go ``note.Open`` semantics).

    Signatures by unknown (name, key ID) pairs are returned as unverified; a signature by a
    known key that does not verify raises :class:`VerificationError`, as does a note with no
    signature by a known key. Repeated signatures by the same key are dropped.
    """
    note = parse_note(data)
    known = {(v.name, v.key_id): v for v in verifiers}
    msg = note.text.encode("utf-8")
    verified: list[NoteSignature] = []
    unverified: list[NoteSignature] = []
    seen: set[tuple[str, bytes]] = set()
    seen_unverified: set[tuple[str, bytes]] = set()
    for sig in note.signatures:
        ident = (sig.name, sig.key_id)
        v = known.get(ident)
        if v is None:
            if ident not in seen_unverified:
                seen_unverified.add(ident)
                unverified.append(sig)
            continue
        v.verify(msg, sig.signature)
        if ident not in seen:
            seen.add(ident)
            verified.append(sig)
    if not verified:
        raise VerificationError("note has no verifiable signatures")
    return OpenedNote(note.text, tuple(verified), tuple(unverified))
