"""The witness's values: namespaces, audit entries, witness keys, and their JSON shapes
in the HTTP API (ADR 0010). Pure: no I/O.

Names
-----

* A **witness name** is the checkpoint origin and the name of the log key in signed
  notes: 1..255 characters of ``[A-Za-z0-9._:/~-]``, starting with a letter or digit
  (so it is a valid C2SP note key name and a checkpoint origin line).
* A **namespace** is 1..255 printable ASCII characters without spaces (as in the
  artifact), made of ``/``-separated segments that are non-empty, not ``.`` or ``..``, and
  not one of the API's route words (``audits``, ``countersignature``,
  ``last-verified-epoch``), so that ``/namespaces/{ns}/...`` is never ambiguous. Clients
  percent-encode it in URLs (``/`` may be sent as ``%2F`` or as is).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from hsmvault.errors import InvalidParameter
from hsmvault.transparency import log_entry
from hsmvault.transparency.artifact import check_namespace as check_artifact_namespace
from hsmvault.transparency.bundle import witness_key_id as key_id
from hsmvault.transparency.plexi import SignatureMessage

from .codec import U64_MAX, b64

__all__ = [
    "RESERVED_SEGMENTS",
    "AuditEntry",
    "NamespaceState",
    "WitnessKey",
    "check_namespace",
    "check_operator_key",
    "check_witness_name",
    "key_id",
]

RESERVED_SEGMENTS: Final = frozenset({"audits", "countersignature", "last-verified-epoch"})
_WITNESS_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/~-]{0,254}")


def check_witness_name(name: object) -> str:
    if not isinstance(name, str) or not _WITNESS_NAME.fullmatch(name):
        raise InvalidParameter("witness name must be 1..255 of [A-Za-z0-9._:/~-]")
    return name


def check_namespace(name: object) -> str:
    """The namespace rules above (the artifact's
    :func:`~hsmvault.transparency.artifact.check_namespace` plus the segment rules);
    InvalidParameter otherwise."""
    name = check_artifact_namespace(name)
    for segment in name.split("/"):
        if segment in ("", ".", "..") or segment in RESERVED_SEGMENTS:
            raise InvalidParameter(
                "namespace segments must be non-empty, not . or .., and not a route word"
            )
    return name


def check_operator_key(public_key: bytes) -> bytes:
    """A raw 32-byte Ed25519 public key that decodes; InvalidParameter otherwise."""
    if type(public_key) is not bytes or len(public_key) != 32:
        raise InvalidParameter("operator public key must be 32 bytes")
    try:
        Ed25519PublicKey.from_public_bytes(public_key)
    except ValueError:
        raise InvalidParameter("operator public key is not an Ed25519 key") from None
    return public_key


@dataclass(frozen=True)
class WitnessKey:
    """A witness signing key as published in ``/info``."""

    public_key: bytes
    not_before: int  # ms since the Unix epoch

    def __post_init__(self) -> None:
        check_operator_key(self.public_key)
        if not 0 <= self.not_before <= U64_MAX:
            raise InvalidParameter("not_before must fit in 64 bits")

    @property
    def key_id(self) -> bytes:
        return key_id(self.public_key)

    def to_json(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id.hex(),
            "public_key": self.public_key.hex(),
            "not_before": self.not_before,
        }


@dataclass
class NamespaceState:
    """A registered namespace and how far it has been witnessed (mutable: owned by the
    witness, under its lock)."""

    name: str
    root_epoch: int
    operator_public_key: bytes
    registered_at: int
    last_epoch: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "root_epoch": self.root_epoch,
            "last_verified_epoch": self.last_epoch,
            "operator_public_key": self.operator_public_key.hex(),
            "status": "online",
        }


@dataclass(frozen=True)
class AuditEntry:
    """One witness signature: what was signed, by which key, the artifact it covers, the
    operator's submission signature, its counter-signature (once set) and its leaf."""

    namespace: str
    epoch: int
    timestamp: int
    ciphersuite: int
    digest: bytes
    key_id: bytes
    signature: bytes
    artifact: bytes
    submission_signature: bytes
    leaf_index: int
    operator_countersignature: bytes | None = None

    def message(self) -> SignatureMessage:
        return SignatureMessage(
            self.ciphersuite, self.namespace, self.timestamp, self.epoch, self.digest
        )

    def leaf(self) -> bytes:
        """The Merkle leaf bytes (``log_entry.encode_log_leaf``)."""
        return log_entry.encode_log_leaf(self.message().encode(), self.signature)

    def to_json(self) -> dict[str, Any]:
        """The API's ``AuditEntry`` (the submission signature is kept in the store only)."""
        counter = self.operator_countersignature
        return {
            "namespace": self.namespace,
            "epoch": self.epoch,
            "timestamp": self.timestamp,
            "digest": self.digest.hex(),
            "ciphersuite": self.ciphersuite,
            "key_id": self.key_id.hex(),
            "signature": b64(self.signature),
            "artifact": b64(self.artifact),
            "operator_countersignature": None if counter is None else b64(counter),
            "leaf_index": self.leaf_index,
        }
