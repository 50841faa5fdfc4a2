"""An in-test witness, operator, log and fleets for validation-bundle tests.

Deterministic: every key is derived from a label (SHA-256), so failures reproduce. Uses
the real ``merkle``, ``signed_note``, ``checkpoint``, ``plexi`` and ``log_entry`` modules;
nothing here is a production code path.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from hsmvault.crypto.ristretto255 import Scalar, base_mult
from hsmvault.transparency import merkle
from hsmvault.transparency.artifact import FleetEntry, FleetKeyArtifact
from hsmvault.transparency.bundle import (
    InclusionEvidence,
    ValidationBundle,
    WitnessSignature,
    witness_key_id,
)
from hsmvault.transparency.checkpoint import Checkpoint
from hsmvault.transparency.log_entry import encode_log_leaf
from hsmvault.transparency.operator_messages import countersignature_message
from hsmvault.transparency.plexi import CIPHERSUITE_PROTOBUF_ED25519, SignatureMessage
from hsmvault.transparency.signed_note import Signer, Verifier, sign_note
from hsmvault.wire.fleet_session import fleet_session_message

NAMESPACE = "hsmvault/test"
T0 = 1_795_000_000  # seconds; the tests' "now"
YEAR = 365 * 24 * 3600


def seed(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def ed25519(label: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(seed(label))


def public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


@dataclass
class TestFleet:
    """A fleet's id and key pairs (only ``sig`` is used to sign; the rest are public)."""

    __test__ = False
    label: str
    fleet_id: bytes = field(init=False)
    ake_public_key: bytes = field(init=False)
    enc_public_key: bytes = field(init=False)
    sig_key: Ed25519PrivateKey = field(init=False)

    def __post_init__(self) -> None:
        self.fleet_id = seed(f"fleet-id/{self.label}")
        scalar = Scalar.from_uniform_bytes(seed(f"ake/{self.label}") * 2)
        self.ake_public_key = bytes(base_mult(scalar))
        enc = X25519PrivateKey.from_private_bytes(seed(f"enc/{self.label}"))
        self.enc_public_key = enc.public_key().public_bytes_raw()
        self.sig_key = ed25519(f"sig/{self.label}")

    @property
    def sig_public_key(self) -> bytes:
        return public(self.sig_key)

    def entry(
        self,
        status: str = "active",
        not_before: int = T0 - YEAR,
        not_after: int = T0 + YEAR,
        regions: tuple[str, ...] = ("eu-west",),
        evidence_digest: bytes | None = None,
    ) -> FleetEntry:
        return FleetEntry(
            fleet_id=self.fleet_id,
            status=status,
            ake_public_key=self.ake_public_key,
            enc_public_key=self.enc_public_key,
            sig_public_key=self.sig_public_key,
            not_before=not_before,
            not_after=not_after,
            regions=regions,
            evidence_digest=evidence_digest,
        )

    def sign_session(self, request: bytes, bundle: bytes) -> bytes:
        return self.sig_key.sign(fleet_session_message(self.fleet_id, request, bundle))


def artifact(
    epoch: int,
    fleets: tuple[FleetEntry, ...],
    *,
    namespace: str = NAMESPACE,
    issued_at: int = T0,
    previous_digest: bytes | None = None,
    decommissioned: tuple[bytes, ...] = (),
) -> FleetKeyArtifact:
    return FleetKeyArtifact(
        namespace=namespace,
        epoch=epoch,
        issued_at=issued_at,
        previous_digest=previous_digest,
        fleets=fleets,
        decommissioned=decommissioned,
    )


class TestLog:
    """An append-only RFC 6962 log of leaf bytes with C2SP checkpoints."""

    __test__ = False

    def __init__(self, origin: str, signer: Signer) -> None:
        self.origin = origin
        self.signer = signer
        self.leaf_hashes: list[bytes] = []

    def append(self, leaf: bytes) -> int:
        self.leaf_hashes.append(merkle.hash_leaf(leaf))
        return len(self.leaf_hashes) - 1

    def root(self, size: int | None = None) -> bytes:
        n = len(self.leaf_hashes) if size is None else size
        return merkle.tree_hash_from_leaf_hashes(self.leaf_hashes[:n])

    def checkpoint_note(self, size: int | None = None) -> bytes:
        n = len(self.leaf_hashes) if size is None else size
        body = Checkpoint(self.origin, n, self.root(n)).encode()
        return sign_note(body, [self.signer])

    def inclusion(self, index: int, size: int | None = None) -> list[bytes]:
        n = len(self.leaf_hashes) if size is None else size
        return merkle.inclusion_proof(self.leaf_hashes[:n], index)

    def consistency(self, old: int, new: int) -> list[bytes]:
        return merkle.consistency_proof(self.leaf_hashes[:new], old)


class TestWitness:
    """A witness with one or more Ed25519 signing keys and one log (own log key)."""

    __test__ = False

    def __init__(self, name: str = "witness.test") -> None:
        self.name = name
        self.keys = {"k1": ed25519(f"witness/{name}/k1"), "k2": ed25519(f"witness/{name}/k2")}
        self.log_signer = Signer(name, seed(f"witness-log/{name}"))
        self.log = TestLog(name, self.log_signer)

    @property
    def log_verifier(self) -> Verifier:
        return self.log_signer.verifier()

    def public_key(self, key: str = "k1") -> bytes:
        return public(self.keys[key])

    def sign(
        self,
        namespace: str,
        epoch: int,
        digest: bytes,
        timestamp_ms: int,
        *,
        key: str = "k1",
        log: bool = True,
    ) -> tuple[WitnessSignature, int | None]:
        message = SignatureMessage(
            CIPHERSUITE_PROTOBUF_ED25519, namespace, timestamp_ms, epoch, digest
        )
        signature = self.keys[key].sign(message.encode())
        index = self.log.append(encode_log_leaf(message.encode(), signature)) if log else None
        ws = WitnessSignature(
            ciphersuite=CIPHERSUITE_PROTOBUF_ED25519,
            namespace=namespace,
            timestamp=timestamp_ms,
            epoch=epoch,
            digest=digest,
            key_id=witness_key_id(self.public_key(key)),
            signature=signature,
        )
        return ws, index


class TestOperator:
    __test__ = False

    def __init__(self, label: str = "operator") -> None:
        self.key = ed25519(f"operator/{label}")

    @property
    def public_key(self) -> bytes:
        return public(self.key)

    def countersign(self, witness_signature: bytes) -> bytes:
        return self.key.sign(countersignature_message(witness_signature))


def publish(
    art: FleetKeyArtifact,
    witness: TestWitness,
    operator: TestOperator,
    *,
    timestamp_ms: int = T0 * 1000,
    key: str = "k1",
    inclusion: bool = True,
    artifact_bytes: bytes | None = None,
    signed_namespace: str | None = None,
    signed_epoch: int | None = None,
) -> ValidationBundle:
    """Have ``witness`` sign (and log) ``art`` and ``operator`` counter-sign it; the
    bundle carries inclusion evidence against the log's current checkpoint if asked."""
    raw = art.to_bytes() if artifact_bytes is None else artifact_bytes
    ws, index = witness.sign(
        art.namespace if signed_namespace is None else signed_namespace,
        art.epoch if signed_epoch is None else signed_epoch,
        hashlib.sha256(raw).digest(),
        timestamp_ms,
        key=key,
    )
    evidence = None
    if inclusion and index is not None:
        evidence = InclusionEvidence(
            leaf_index=index,
            tree_size=len(witness.log.leaf_hashes),
            proof=tuple(witness.log.inclusion(index)),
            checkpoint=witness.log.checkpoint_note(),
        )
    return ValidationBundle(
        artifact=raw,
        witness=ws,
        operator_signature=operator.countersign(ws.signature),
        inclusion=evidence,
    )
