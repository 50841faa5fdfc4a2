"""The key ceremony's signed statements and transcript (ADR 0012): one format, used by
the nodes (inside the trust boundary, so this module is in the measured set), the
coordinator, the software vendor and the auditor.

Pure: no I/O, no clock, no key custody; it imports nothing of ``hsm``, so the host-side
coordinator may use it. Canonical JSON follows ADR 0010 (sorted keys, no whitespace,
ASCII; the parser re-serialises and demands byte equality).

**Statement** (what an author signs)::

    {"version": 1, "ceremony_id": "<64 hex>", "kind": "<kind>",
     "author": "node:<64 hex identity node id>" | "officer:<64 hex Ed25519 public key>",
     "issued_at": <int seconds, UTC>, "body": {...}}

* a node signs ``canonical(statement)`` with its identity key through its custody
  (``KeyCustody.sign``, purpose :data:`TRANSCRIPT_PURPOSE`);
* an officer signs ``OFFICER_CONTEXT || canonical(statement)`` with Ed25519
  (:func:`officer_message`).

Statements carry no chain position, so the nodes sign in parallel; the **transcript**
chains them::

    {"version": 1, "ceremony_id": "<64 hex>",
     "entries": [{"seq": n, "prev": "<64 hex>", "statement": {...},
                  "signature": "<base64, 64 bytes>"}, ...]}

``prev`` is :func:`entry_hash` of entry ``n-1`` (64 zeros for entry 0); the **head** is
the hash of the last entry. Every node's ``closing`` statement and every officer's
``seal`` sign a head, so the transcript as a whole is signed by every HSM and every
officer. The body of each kind is fixed by :data:`BODY_KEYS` (exact key sets); the
auditor checks their meaning.

Parsing raises only :class:`CeremonyFormatError` (a ``DecodeError``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from hsmvault.errors import DecodeError, InvalidParameter
from hsmvault.evidence.attestation._canonical import canonical, parse_canonical

__all__ = [
    "AUTHOR_NODE",
    "AUTHOR_OFFICER",
    "BODY_KEYS",
    "CEREMONY_ID_LEN",
    "FLEET_KEYS_SEAL_PURPOSE",
    "GENESIS",
    "KINDS",
    "MAX_TRANSCRIPT_LEN",
    "OFFICER_CONTEXT",
    "TRANSCRIPT_PURPOSE",
    "TRANSCRIPT_VERSION",
    "CeremonyFormatError",
    "Entry",
    "Statement",
    "Transcript",
    "canonical",
    "entry_hash",
    "fleet_keys_seal_context",
    "node_author",
    "officer_author",
    "officer_message",
    "parse_author",
    "sha256_hex",
]

TRANSCRIPT_VERSION: Final = 1
CEREMONY_ID_LEN: Final = 32
#: Custody signing purpose of every node statement (ADR 0003 domain label).
TRANSCRIPT_PURPOSE: Final = b"hsmvault/ceremony/transcript/v1"
#: Prefix of what an officer's Ed25519 key signs.
OFFICER_CONTEXT: Final = b"hsmvault/ceremony/officer/v1\x00"
#: HPKE purpose (``crypto.fleet_seal``) of the fleet keys sealed to a member's transport key.
FLEET_KEYS_SEAL_PURPOSE: Final = b"hsmvault/ceremony/fleet-keys/v1"
#: ``prev`` of entry 0.
GENESIS: Final = "0" * 64
AUTHOR_NODE: Final = "node"
AUTHOR_OFFICER: Final = "officer"
#: Largest transcript file accepted (bytes).
MAX_TRANSCRIPT_LEN: Final = 4 * 1024 * 1024
_MAX_ENTRIES: Final = 4096
_MAX_TIME: Final = 253402300799

#: Statement kinds and the exact keys of their bodies.
BODY_KEYS: Final[Mapping[str, frozenset[str]]] = {
    "inputs": frozenset(
        {
            "deployment",
            "custody",
            "nodes",
            "attestation_format",
            "measurement",
            "officers",
            "operator_public_key",
            "namespace",
            "generator_rule",
        }
    ),
    "vendor-root": frozenset({"format", "certificate_sha256", "public_key_sha256", "subject"}),
    "identity": frozenset(
        {
            "index",
            "region",
            "custody",
            "identity_key",
            "transport_public_key",
            "measurement",
            "key_properties",
        }
    ),
    "attestation": frozenset({"format", "document_sha256"}),
    "fleet-key-statement": frozenset(
        {"fleet_id", "public_keys", "members", "measurement", "transcript_head", "key_source"}
    ),
    "acknowledgement": frozenset(
        {
            "fleet_id",
            "generator",
            "statement_sha256",
            "public_keys_sha256",
            "link_public_key",
            "link_certificate",
            "fleet_node_id",
        }
    ),
    "membership": frozenset({"fleet_id", "members"}),
    "credential-destroyed": frozenset({"credential", "fingerprint", "method", "provable"}),
    "closing": frozenset({"transcript_head", "fleet_id", "pinned_membership", "nvram_epoch"}),
    "seal": frozenset({"transcript_head"}),
}
KINDS: Final = tuple(BODY_KEYS)

_HEX64 = re.compile(r"[0-9a-f]{64}")
_AUTHOR = re.compile(r"(node|officer):([0-9a-f]{64})")


class CeremonyFormatError(DecodeError):
    """A statement, entry or transcript does not follow the format."""


def sha256_hex(data: bytes) -> str:
    """Lowercase hex SHA-256 (what the transcript cites)."""
    return hashlib.sha256(data).hexdigest()


def node_author(node_id: bytes) -> str:
    """The author string of a node: ``node:<identity node id hex>``."""
    if len(node_id) != 32:
        raise InvalidParameter("a node id is 32 bytes")
    return f"{AUTHOR_NODE}:{node_id.hex()}"


def officer_author(public_key: bytes) -> str:
    """The author string of an officer: ``officer:<Ed25519 public key hex>``."""
    if len(public_key) != 32:
        raise InvalidParameter("an officer key is a 32-byte Ed25519 public key")
    return f"{AUTHOR_OFFICER}:{public_key.hex()}"


def parse_author(author: str) -> tuple[str, bytes]:
    """``(AUTHOR_NODE | AUTHOR_OFFICER, 32 bytes)``; CeremonyFormatError otherwise."""
    match = _AUTHOR.fullmatch(author) if isinstance(author, str) else None
    if match is None:
        raise CeremonyFormatError("an author is node:<64 hex> or officer:<64 hex>")
    return match.group(1), bytes.fromhex(match.group(2))


def fleet_keys_seal_context(ceremony_id: bytes, recipient: bytes, transcript_head: bytes) -> bytes:
    """The HPKE context of the fleet keys sealed to one member: ``ceremony id (32) ||
    recipient identity node id (32) || transcript head (32)``."""
    if not len(ceremony_id) == len(recipient) == len(transcript_head) == 32:
        raise InvalidParameter("ceremony id, recipient and head are 32 bytes each")
    return ceremony_id + recipient + transcript_head


def _hex64(value: object, what: str) -> str:
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise CeremonyFormatError(f"{what} must be 64 lowercase hex digits")
    return value


@dataclass(frozen=True)
class Statement:
    """One signed step of the ceremony (see the module docstring). Construction checks
    the shape (InvalidParameter); :meth:`from_json` parses strictly."""

    ceremony_id: bytes
    kind: str
    author: str
    issued_at: int
    body: Mapping[str, Any]

    def __post_init__(self) -> None:
        if not isinstance(self.ceremony_id, bytes) or len(self.ceremony_id) != CEREMONY_ID_LEN:
            raise InvalidParameter("a ceremony id is 32 bytes")
        if self.kind not in BODY_KEYS:
            raise InvalidParameter(f"unknown statement kind {self.kind!r}")
        try:
            parse_author(self.author)
        except CeremonyFormatError:
            raise InvalidParameter("bad author") from None
        if type(self.issued_at) is not int or not 0 <= self.issued_at <= _MAX_TIME:
            raise InvalidParameter("issued_at out of range")
        if not isinstance(self.body, Mapping) or set(self.body) != BODY_KEYS[self.kind]:
            raise InvalidParameter(f"a {self.kind} body has exactly {sorted(BODY_KEYS[self.kind])}")

    @property
    def author_kind(self) -> str:
        return parse_author(self.author)[0]

    @property
    def author_key(self) -> bytes:
        """The node id (node authors) or the Ed25519 public key (officers)."""
        return parse_author(self.author)[1]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": TRANSCRIPT_VERSION,
            "ceremony_id": self.ceremony_id.hex(),
            "kind": self.kind,
            "author": self.author,
            "issued_at": self.issued_at,
            "body": dict(self.body),
        }

    def signed_bytes(self) -> bytes:
        """What the author signs: the statement's canonical JSON."""
        try:
            return canonical(self.to_json())
        except (TypeError, ValueError):
            raise InvalidParameter("a statement body must be plain JSON") from None

    def digest(self) -> str:
        """SHA-256 (hex) of :meth:`signed_bytes` (how statements cite each other)."""
        return sha256_hex(self.signed_bytes())

    @classmethod
    def from_json(cls, obj: object) -> Statement:
        keys = {"version", "ceremony_id", "kind", "author", "issued_at", "body"}
        if not isinstance(obj, dict) or set(obj) != keys:
            raise CeremonyFormatError("a statement has missing or unknown fields")
        if obj["version"] != TRANSCRIPT_VERSION or type(obj["version"]) is not int:
            raise CeremonyFormatError("unknown statement version")
        ceremony_id = bytes.fromhex(_hex64(obj["ceremony_id"], "ceremony_id"))
        kind = obj["kind"]
        if not isinstance(kind, str) or kind not in BODY_KEYS:
            raise CeremonyFormatError("unknown statement kind")
        body = obj["body"]
        if not isinstance(body, dict) or set(body) != BODY_KEYS[kind]:
            raise CeremonyFormatError(f"a {kind} body has missing or unknown fields")
        issued_at = obj["issued_at"]
        if type(issued_at) is not int or not 0 <= issued_at <= _MAX_TIME:
            raise CeremonyFormatError("issued_at must be an integer time")
        parse_author(obj["author"])
        return cls(ceremony_id, kind, obj["author"], issued_at, body)


def officer_message(statement: Statement) -> bytes:
    """What an officer's Ed25519 key signs for ``statement``."""
    return OFFICER_CONTEXT + statement.signed_bytes()


def _b64_signature(value: object) -> bytes:
    if not isinstance(value, str) or not value.isascii():
        raise CeremonyFormatError("a signature is base64")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise CeremonyFormatError("a signature is base64") from None
    if len(raw) != 64 or base64.b64encode(raw).decode("ascii") != value:
        raise CeremonyFormatError("a signature is 64 bytes of canonical base64")
    return raw


@dataclass(frozen=True)
class Entry:
    """A statement, its signature and its place in the transcript."""

    seq: int
    prev: str
    statement: Statement
    signature: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "prev": self.prev,
            "statement": self.statement.to_json(),
            "signature": base64.b64encode(self.signature).decode("ascii"),
        }

    @classmethod
    def from_json(cls, obj: object) -> Entry:
        if not isinstance(obj, dict) or set(obj) != {"seq", "prev", "statement", "signature"}:
            raise CeremonyFormatError("a transcript entry has missing or unknown fields")
        seq = obj["seq"]
        if type(seq) is not int or not 0 <= seq < _MAX_ENTRIES:
            raise CeremonyFormatError("seq out of range")
        return cls(
            seq,
            _hex64(obj["prev"], "prev"),
            Statement.from_json(obj["statement"]),
            _b64_signature(obj["signature"]),
        )


def entry_hash(entry: Entry) -> str:
    """SHA-256 (hex) of the entry's canonical JSON: the next entry's ``prev``."""
    return sha256_hex(canonical(entry.to_json()))


@dataclass(frozen=True)
class Transcript:
    """An ordered, hash-chained list of signed statements of one ceremony.

    :meth:`append` and :meth:`from_bytes` keep the chain rules: ``seq`` counts from 0,
    each ``prev`` is the previous entry's hash, every statement names this ceremony.
    Signatures are *not* checked here (the auditor and the nodes do that).
    """

    ceremony_id: bytes
    entries: tuple[Entry, ...] = ()

    @property
    def head(self) -> str:
        """Hash of the last entry (``GENESIS`` when empty)."""
        return entry_hash(self.entries[-1]) if self.entries else GENESIS

    def append(self, statement: Statement, signature: bytes) -> Transcript:
        """A new transcript with ``statement`` chained at the end."""
        if statement.ceremony_id != self.ceremony_id:
            raise InvalidParameter("the statement belongs to another ceremony")
        if len(signature) != 64:
            raise InvalidParameter("a signature is 64 bytes")
        entry = Entry(len(self.entries), self.head, statement, bytes(signature))
        return Transcript(self.ceremony_id, (*self.entries, entry))

    def extend(self, signed: Sequence[tuple[Statement, bytes]]) -> Transcript:
        out = self
        for statement, signature in signed:
            out = out.append(statement, signature)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "version": TRANSCRIPT_VERSION,
            "ceremony_id": self.ceremony_id.hex(),
            "entries": [e.to_json() for e in self.entries],
        }

    def to_bytes(self) -> bytes:
        return canonical(self.to_json())

    @classmethod
    def from_json(cls, obj: object) -> Transcript:
        if not isinstance(obj, dict) or set(obj) != {"version", "ceremony_id", "entries"}:
            raise CeremonyFormatError("a transcript has missing or unknown fields")
        if obj["version"] != TRANSCRIPT_VERSION or type(obj["version"]) is not int:
            raise CeremonyFormatError("unknown transcript version")
        ceremony_id = bytes.fromhex(_hex64(obj["ceremony_id"], "ceremony_id"))
        raw = obj["entries"]
        if not isinstance(raw, list) or not raw or len(raw) > _MAX_ENTRIES:
            raise CeremonyFormatError("a transcript has 1..4096 entries")
        entries = tuple(Entry.from_json(e) for e in raw)
        prev = GENESIS
        for seq, entry in enumerate(entries):
            if entry.seq != seq:
                raise CeremonyFormatError(f"entry {seq}: seq is {entry.seq}")
            if entry.prev != prev:
                raise CeremonyFormatError(
                    f"entry {seq}: the hash chain is broken (prev is not the hash of entry"
                    f" {seq - 1})"
                )
            if entry.statement.ceremony_id != ceremony_id:
                raise CeremonyFormatError(f"entry {seq}: statement of another ceremony")
            prev = entry_hash(entry)
        return cls(ceremony_id, entries)

    @classmethod
    def from_bytes(cls, data: bytes) -> Transcript:
        """Strict parse of canonical transcript bytes (CeremonyFormatError)."""
        if not isinstance(data, bytes) or not 0 < len(data) <= MAX_TRANSCRIPT_LEN:
            raise CeremonyFormatError("transcript is empty or too large")
        try:
            obj = parse_canonical(data)
        except DecodeError:
            raise CeremonyFormatError("transcript is not canonical JSON") from None
        return cls.from_json(obj)
