"""The validation bundle: artifact, witness signature, operator counter-signature and
optional log-inclusion evidence (ADR 0010; ``docs/formats/validation-bundle.md``).

Canonical JSON, the same rules as the artifact (:mod:`hsmvault.wire.canonical_json`)::

    {"version": 1,
     "artifact": "<b64 artifact bytes>",
     "witness": {"ciphersuite": 1, "namespace": "...", "timestamp": ms, "epoch": n,
                 "digest": "<64 hex>", "key_id": "<64 hex>", "signature": "<b64 64 bytes>"},
     "operator": {"signature": "<b64 64 bytes>"},
     "inclusion": null | {"leaf_index": i, "tree_size": n, "proof": ["<b64 32>", ...],
                          "checkpoint": "<b64 signed note bytes>"}}

Base64 is standard, padded and canonical (``b64decode(validate=True)`` and re-encoding
must give the input back). Limits: the whole bundle at most :data:`MAX_BUNDLE_LEN`
bytes, the artifact at most :data:`~hsmvault.transparency.artifact.MAX_ARTIFACT_LEN`,
at most :data:`MAX_PROOF_LEN` proof hashes, the checkpoint note at most
:data:`MAX_CHECKPOINT_NOTE_LEN` bytes.

Contracts: construction raises :class:`~hsmvault.errors.InvalidParameter` on a bad value;
:meth:`ValidationBundle.from_bytes` raises only
:class:`~hsmvault.transparency.errors.BundleFormatError`. Parsing checks *syntax* only:
the artifact stays raw bytes (step 1 of the client's verification hashes exactly those
bytes), and the checkpoint note is checked to be a well-formed signed note holding a
well-formed checkpoint, but no signature is verified here — that is
:mod:`hsmvault.client.bundle_verifier`'s job. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar

from hsmvault.errors import DecodeError, InvalidParameter
from hsmvault.transparency import operator_messages
from hsmvault.transparency.artifact import (
    MAX_ARTIFACT_LEN,
    FleetKeyArtifact,
    check_namespace,
    parse_canonical_json,
)
from hsmvault.transparency.checkpoint import Checkpoint, parse_checkpoint
from hsmvault.transparency.errors import BundleFormatError
from hsmvault.transparency.log_entry import encode_log_leaf
from hsmvault.transparency.plexi import CIPHERSUITE_PROTOBUF_ED25519, SignatureMessage
from hsmvault.transparency.signed_note import parse_note
from hsmvault.wire import canonical_json as cj
from hsmvault.wire.canonical_json import b64 as _b64
from hsmvault.wire.canonical_json import canonical_json

__all__ = [
    "BUNDLE_VERSION",
    "MAX_BUNDLE_LEN",
    "MAX_CHECKPOINT_NOTE_LEN",
    "MAX_PROOF_LEN",
    "InclusionEvidence",
    "SignedAuditEntry",
    "ValidationBundle",
    "WitnessSignature",
    "bundle_from_audit",
    "witness_key_id",
]

BUNDLE_VERSION: Final = 1
MAX_BUNDLE_LEN: Final = 64 * 1024
MAX_PROOF_LEN: Final = 64
MAX_CHECKPOINT_NOTE_LEN: Final = 4096
_SIG_LEN: Final = 64
_HASH_LEN: Final = 32
_U64: Final = (1 << 64) - 1
_T = TypeVar("_T")


def witness_key_id(public_key: bytes) -> bytes:
    """A witness key id: SHA-256 of the raw 32-byte Ed25519 public key (32 bytes; the
    JSON and ``/info`` show it as lowercase hex)."""
    if type(public_key) is not bytes or len(public_key) != 32:
        raise InvalidParameter("witness public key must be 32 bytes")
    return hashlib.sha256(public_key).digest()


# --- construction checks (InvalidParameter) -------------------------------------------


def _check_bytes(value: object, length: int, what: str) -> None:
    if type(value) is not bytes or len(value) != length:
        raise InvalidParameter(f"{what} must be {length} bytes")


def _check_u64(value: object, what: str) -> None:
    if type(value) is not int or not 0 <= value <= _U64:
        raise InvalidParameter(f"{what} must be an integer in 0..2^64-1")


def _note_checkpoint(note: bytes) -> Checkpoint:
    """Syntax of a checkpoint note (no signature check); DecodeError if malformed."""
    parsed = parse_note(note)
    return parse_checkpoint(parsed.text)


# --- strict readers (BundleFormatError) -----------------------------------------------


def _fields(value: object, keys: frozenset[str], what: str) -> dict[str, Any]:
    return cj.fields(value, keys, what, error=BundleFormatError)


def _read_int(value: object, what: str, lo: int = 0, hi: int = _U64) -> int:
    return cj.read_int(value, what, lo, hi, error=BundleFormatError)


def _read_hex(value: object, length: int, what: str) -> bytes:
    return cj.read_hex(value, what, length, error=BundleFormatError)


def _read_b64(value: object, what: str, *, length: int | None = None, max_len: int = 0) -> bytes:
    """Strict standard padded base64; exact ``length`` or 1 to ``max_len`` bytes."""
    if length is None:
        return cj.read_b64(value, what, max_len=max_len, error=BundleFormatError)
    return cj.read_b64(value, what, length=length, error=BundleFormatError)


def _build(make: Callable[[], _T], what: str) -> _T:
    try:
        return make()
    except (InvalidParameter, DecodeError):
        raise BundleFormatError(f"{what} is invalid") from None


_BUNDLE_KEYS: Final = frozenset({"version", "artifact", "witness", "operator", "inclusion"})
_WITNESS_KEYS: Final = frozenset(
    {"ciphersuite", "namespace", "timestamp", "epoch", "digest", "key_id", "signature"}
)
_OPERATOR_KEYS: Final = frozenset({"signature"})
_INCLUSION_KEYS: Final = frozenset({"leaf_index", "tree_size", "proof", "checkpoint"})


@dataclass(frozen=True)
class WitnessSignature:
    """The witness's Plexi-shaped signature: the signed ``SignatureMessage`` fields, the
    id of the witness key (:func:`witness_key_id`) and the 64-byte Ed25519 signature.
    ``timestamp`` is in milliseconds since the Unix epoch; ``ciphersuite`` must be
    ``0x0001`` (protobuf + Ed25519), the only one defined."""

    ciphersuite: int
    namespace: str
    timestamp: int
    epoch: int
    digest: bytes
    key_id: bytes
    signature: bytes

    def __post_init__(self) -> None:
        if type(self.ciphersuite) is not int or self.ciphersuite != CIPHERSUITE_PROTOBUF_ED25519:
            raise InvalidParameter("unsupported witness ciphersuite")
        check_namespace(self.namespace)
        _check_u64(self.timestamp, "timestamp")
        _check_u64(self.epoch, "epoch")
        _check_bytes(self.digest, _HASH_LEN, "digest")
        _check_bytes(self.key_id, _HASH_LEN, "key id")
        _check_bytes(self.signature, _SIG_LEN, "witness signature")

    def signature_message(self) -> SignatureMessage:
        """The Plexi message the witness signed (its ``encode()`` is the signed bytes)."""
        return SignatureMessage(
            self.ciphersuite, self.namespace, self.timestamp, self.epoch, self.digest
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "ciphersuite": self.ciphersuite,
            "namespace": self.namespace,
            "timestamp": self.timestamp,
            "epoch": self.epoch,
            "digest": self.digest.hex(),
            "key_id": self.key_id.hex(),
            "signature": _b64(self.signature),
        }

    @classmethod
    def from_dict(cls, value: object) -> WitnessSignature:
        obj = _fields(value, _WITNESS_KEYS, "witness")
        ciphersuite = _read_int(obj["ciphersuite"], "ciphersuite")
        namespace = obj["namespace"]
        if not isinstance(namespace, str):
            raise BundleFormatError("namespace must be a string")
        timestamp = _read_int(obj["timestamp"], "timestamp")
        epoch = _read_int(obj["epoch"], "epoch")
        digest = _read_hex(obj["digest"], _HASH_LEN, "digest")
        key_id = _read_hex(obj["key_id"], _HASH_LEN, "key_id")
        signature = _read_b64(obj["signature"], "witness signature", length=_SIG_LEN)
        return _build(
            lambda: cls(ciphersuite, namespace, timestamp, epoch, digest, key_id, signature),
            "witness signature",
        )


@dataclass(frozen=True)
class InclusionEvidence:
    """Where the witness logged this signature: leaf ``leaf_index`` of a tree of
    ``tree_size`` leaves, the RFC 9162 inclusion ``proof`` (32-byte hashes, leaf to root)
    and the signed checkpoint note of that tree (C2SP signed note bytes; syntax checked
    at construction, signature checked by the client)."""

    leaf_index: int
    tree_size: int
    proof: tuple[bytes, ...]
    checkpoint: bytes

    def __post_init__(self) -> None:
        _check_u64(self.leaf_index, "leaf index")
        _check_u64(self.tree_size, "tree size")
        if not self.leaf_index < self.tree_size:
            raise InvalidParameter("leaf index must be below the tree size")
        if not isinstance(self.proof, tuple | list) or len(self.proof) > MAX_PROOF_LEN:
            raise InvalidParameter(f"proof must be a tuple of at most {MAX_PROOF_LEN} hashes")
        for h in self.proof:
            _check_bytes(h, _HASH_LEN, "proof hash")
        object.__setattr__(self, "proof", tuple(self.proof))
        if type(self.checkpoint) is not bytes or not (
            0 < len(self.checkpoint) <= MAX_CHECKPOINT_NOTE_LEN
        ):
            raise InvalidParameter("checkpoint note must be 1 to 4096 bytes")
        try:
            _note_checkpoint(self.checkpoint)
        except DecodeError:
            raise InvalidParameter("checkpoint is not a well-formed checkpoint note") from None

    def checkpoint_body(self) -> Checkpoint:
        """The checkpoint inside the note, *unverified* (check the note's signature with
        ``signed_note.open_note`` before trusting it)."""
        return _note_checkpoint(self.checkpoint)

    def to_dict(self) -> dict[str, Any]:
        return {
            "leaf_index": self.leaf_index,
            "tree_size": self.tree_size,
            "proof": [_b64(h) for h in self.proof],
            "checkpoint": _b64(self.checkpoint),
        }

    @classmethod
    def from_dict(cls, value: object) -> InclusionEvidence:
        obj = _fields(value, _INCLUSION_KEYS, "inclusion")
        leaf_index = _read_int(obj["leaf_index"], "leaf_index")
        tree_size = _read_int(obj["tree_size"], "tree_size")
        raw_proof = obj["proof"]
        if not isinstance(raw_proof, list) or len(raw_proof) > MAX_PROOF_LEN:
            raise BundleFormatError(f"proof must be a list of at most {MAX_PROOF_LEN} hashes")
        proof = tuple(_read_b64(h, "proof hash", length=_HASH_LEN) for h in raw_proof)
        note = _read_b64(obj["checkpoint"], "checkpoint", max_len=MAX_CHECKPOINT_NOTE_LEN)
        return _build(lambda: cls(leaf_index, tree_size, proof, note), "inclusion evidence")


@dataclass(frozen=True)
class ValidationBundle:
    """What a fleet hands a client: the raw artifact bytes, the witness signature over
    their digest, the operator's 64-byte counter-signature over the witness signature,
    and optionally where the witness logged it."""

    artifact: bytes
    witness: WitnessSignature
    operator_signature: bytes
    inclusion: InclusionEvidence | None = None

    def __post_init__(self) -> None:
        if type(self.artifact) is not bytes or not 0 < len(self.artifact) <= MAX_ARTIFACT_LEN:
            raise InvalidParameter("artifact must be 1 to 32768 bytes")
        if not isinstance(self.witness, WitnessSignature):
            raise InvalidParameter("witness must be a WitnessSignature")
        _check_bytes(self.operator_signature, _SIG_LEN, "operator signature")
        if self.inclusion is not None and not isinstance(self.inclusion, InclusionEvidence):
            raise InvalidParameter("inclusion must be InclusionEvidence or None")

    # --- what is signed -------------------------------------------------------------

    def artifact_digest(self) -> bytes:
        """SHA-256 of the artifact bytes as carried (step 1 compares it with the signed
        digest)."""
        return hashlib.sha256(self.artifact).digest()

    def signature_message(self) -> SignatureMessage:
        """The Plexi ``SignatureMessage`` the witness signed."""
        return self.witness.signature_message()

    def countersignature_message(self) -> bytes:
        """The bytes the operator counter-signed (over the witness signature)."""
        return operator_messages.countersignature_message(self.witness.signature)

    def log_leaf(self) -> bytes:
        """The witness-log leaf this signature was logged as (``log_entry``)."""
        return encode_log_leaf(self.signature_message().encode(), self.witness.signature)

    def parse_artifact(self) -> FleetKeyArtifact:
        """The artifact, parsed strictly (BundleFormatError if it does not parse)."""
        return FleetKeyArtifact.from_bytes(self.artifact)

    # --- encoding -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": BUNDLE_VERSION,
            "artifact": _b64(self.artifact),
            "witness": self.witness.to_dict(),
            "operator": {"signature": _b64(self.operator_signature)},
            "inclusion": None if self.inclusion is None else self.inclusion.to_dict(),
        }

    def to_bytes(self) -> bytes:
        """The canonical encoding (what fleets serve and sign into the session)."""
        data = canonical_json(self.to_dict())
        if len(data) > MAX_BUNDLE_LEN:
            raise InvalidParameter("bundle exceeds 64 KiB")
        return data

    @classmethod
    def from_bytes(cls, data: bytes) -> ValidationBundle:
        """Parse a canonical encoding strictly; raises only BundleFormatError."""
        obj = _fields(
            parse_canonical_json(data, max_len=MAX_BUNDLE_LEN, what="bundle"),
            _BUNDLE_KEYS,
            "bundle",
        )
        _read_int(obj["version"], "version", BUNDLE_VERSION, BUNDLE_VERSION)
        artifact = _read_b64(obj["artifact"], "artifact", max_len=MAX_ARTIFACT_LEN)
        witness = WitnessSignature.from_dict(obj["witness"])
        operator = _fields(obj["operator"], _OPERATOR_KEYS, "operator")
        operator_sig = _read_b64(operator["signature"], "operator signature", length=_SIG_LEN)
        inclusion = (
            None if obj["inclusion"] is None else InclusionEvidence.from_dict(obj["inclusion"])
        )
        bundle = _build(lambda: cls(artifact, witness, operator_sig, inclusion), "bundle")
        if bundle.to_bytes() != bytes(data):  # pragma: no cover - parse_canonical_json
            raise BundleFormatError("bundle is not canonical")
        return bundle


# --- assembly from a witness audit entry ----------------------------------------------


class SignedAuditEntry(Protocol):
    """The signed fields of a witness ``AuditEntry``: the witness's own
    (:class:`hsmvault.transparency.witness.AuditEntry`) and the one its HTTP client
    parses (:class:`hsmvault.transparency.witness_client.AuditEntry`) both have them."""

    @property
    def ciphersuite(self) -> int: ...

    @property
    def namespace(self) -> str: ...

    @property
    def timestamp(self) -> int: ...

    @property
    def epoch(self) -> int: ...

    @property
    def digest(self) -> bytes: ...

    @property
    def key_id(self) -> bytes: ...

    @property
    def signature(self) -> bytes: ...

    @property
    def artifact(self) -> bytes: ...


def bundle_from_audit(
    entry: SignedAuditEntry,
    operator_signature: bytes,
    inclusion: InclusionEvidence | None = None,
) -> ValidationBundle:
    """The validation bundle of a witness audit entry: its artifact and witness
    signature, the operator's counter-signature ``operator_signature`` and optionally the
    inclusion evidence. Raises InvalidParameter if a value is out of range (see the
    constructors); verifies nothing."""
    witness = WitnessSignature(
        ciphersuite=entry.ciphersuite,
        namespace=entry.namespace,
        timestamp=entry.timestamp,
        epoch=entry.epoch,
        digest=entry.digest,
        key_id=entry.key_id,
        signature=entry.signature,
    )
    return ValidationBundle(entry.artifact, witness, operator_signature, inclusion)
