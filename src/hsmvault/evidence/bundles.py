"""The last link of the audit: the ceremony's fleet keys and this evidence digest are in
a bundle the witness logged (ADR 0010, ADR 0012).

Bundles come from the evidence folder's ``bundles/`` (saved by ``hsmvault fleet
publish``: one ``epoch-<n>.bundle.json`` per epoch that lists the fleet, canonical
validation-bundle bytes with inclusion evidence, plus ``witness.json`` and
``namespace.json``, what the witness said about itself and the namespace) or live from a
witness (:class:`~hsmvault.transparency.witness_client.WitnessClient`).

Each bundle is verified as a client verifies it, with
:meth:`hsmvault.client.bundle_verifier.BundleVerifier.verify_bundle_only` (digest,
witness signature, operator counter-signature, namespace, epoch, inclusion in the log
when a log key is known) — at its own timestamp, since an auditor checks history, not
freshness. The keys it trusts come from :class:`WitnessTrust`: pinned by the auditor,
or else taken from the published witness information (the report says so).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from hsmvault.client.bundle_verifier import BundleVerifier, PinnedWitnessKey, TrustPolicy
from hsmvault.client.trust_store import MemoryTrustStore
from hsmvault.errors import DecodeError, InvalidParameter, VaultError, VerificationError
from hsmvault.evidence.attestation._canonical import canonical
from hsmvault.evidence.folder import BUNDLES_DIR, EvidenceFolderError
from hsmvault.evidence.sources import BUNDLE_INDEX, EvidenceSource, bundle_files
from hsmvault.fleet.fleet_keys import FleetPublicKeys
from hsmvault.transparency.artifact import FleetKeyArtifact, changed_key_roles
from hsmvault.transparency.bundle import InclusionEvidence, ValidationBundle, bundle_from_audit
from hsmvault.transparency.checkpoint import parse_checkpoint
from hsmvault.transparency.signed_note import Verifier, parse_note
from hsmvault.transparency.witness_client import (
    AuditEntry,
    NamespaceInfo,
    WitnessClient,
    WitnessInfo,
)

__all__ = [
    "NAMESPACE_FILE",
    "WITNESS_INFO_FILE",
    "EpochFinding",
    "WitnessTrust",
    "bundle_from_audit_entry",
    "check_bundles",
    "fetch_bundles",
    "load_saved",
    "resolve_trust",
    "save_bundles",
]

WITNESS_INFO_FILE: Final = f"{BUNDLES_DIR}/witness.json"
NAMESPACE_FILE: Final = f"{BUNDLES_DIR}/namespace.json"
_MAX_EPOCHS: Final = 10_000


@dataclass(frozen=True)
class WitnessTrust:
    """What the bundle check trusts: witness signing keys, operator keys, the log key,
    the namespace, and notes on where each came from (shown in the report)."""

    namespace: str
    witness_keys: tuple[PinnedWitnessKey, ...]
    operator_keys: tuple[bytes, ...]
    log_key: Verifier | None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class EpochFinding:
    """What one logged epoch says about the fleet: ``status`` is ``match`` (this fleet,
    these keys, this evidence digest), ``other-keys``, ``other-evidence``, ``absent``,
    ``decommissioned`` or ``refused`` (the bundle does not verify)."""

    epoch: int
    timestamp_ms: int
    status: str
    detail: str


# --------------------------------------------------------------------------- fetching


def bundle_from_audit_entry(
    entry: AuditEntry, inclusion: InclusionEvidence | None
) -> ValidationBundle:
    """The validation bundle of a counter-signed witness audit entry."""
    if entry.operator_countersignature is None:
        raise InvalidParameter(f"epoch {entry.epoch} is not counter-signed yet")
    return bundle_from_audit(entry, entry.operator_countersignature, inclusion)


def _mentions(artifact_bytes: bytes, fleet_id: bytes) -> bool:
    try:
        artifact = FleetKeyArtifact.from_bytes(artifact_bytes)
    except DecodeError:
        return True  # keep it: the check will report it
    return artifact.entry_for(fleet_id) is not None or artifact.is_decommissioned(fleet_id)


def fetch_bundles(
    client: WitnessClient, namespace: str, fleet_id: bytes
) -> tuple[list[ValidationBundle], WitnessInfo, NamespaceInfo]:
    """Every counter-signed epoch of ``namespace`` whose artifact lists (or
    decommissions) ``fleet_id``, as bundles with inclusion evidence against the witness's
    current checkpoint; plus the witness and namespace information."""
    info = client.info()
    ns = client.namespace(namespace)
    bundles: list[ValidationBundle] = []
    if ns.last_verified_epoch is None:
        return bundles, info, ns
    note = client.checkpoint()
    tree_size = parse_checkpoint(parse_note(note).text).tree_size
    first = max(ns.root_epoch, ns.last_verified_epoch - _MAX_EPOCHS + 1)
    for epoch in range(first, ns.last_verified_epoch + 1):
        entry = client.audit(namespace, epoch)
        if entry.operator_countersignature is None or not _mentions(entry.artifact, fleet_id):
            continue
        inclusion = None
        if entry.leaf_index < tree_size:
            proof = client.inclusion_proof(entry.leaf_index, tree_size)
            inclusion = InclusionEvidence(entry.leaf_index, tree_size, proof.proof, note)
        bundles.append(bundle_from_audit_entry(entry, inclusion))
    return bundles, info, ns


def _info_json(info: WitnessInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "keys": [
            {
                "key_id": k.key_id.hex(),
                "public_key": k.public_key.hex(),
                "not_before": k.not_before,
            }
            for k in info.keys
        ],
        "log_key": info.log_key.to_vkey(),
    }


def save_bundles(
    folder: Path,
    bundles: Sequence[ValidationBundle],
    info: WitnessInfo,
    namespace: NamespaceInfo,
) -> list[str]:
    """Write ``bundles/`` of an evidence folder (replacing saved bundles); returns the
    relative paths written."""
    directory = folder / BUNDLES_DIR
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.bundle.json"):
        old.unlink()
    names = []
    for bundle in bundles:
        name = f"{BUNDLES_DIR}/epoch-{bundle.witness.epoch}.bundle.json"
        (folder / name).write_bytes(bundle.to_bytes())
        names.append(name)
    (folder / WITNESS_INFO_FILE).write_bytes(canonical(_info_json(info)))
    (folder / NAMESPACE_FILE).write_bytes(canonical(namespace.to_json()))
    (folder / BUNDLE_INDEX).write_bytes(canonical({"files": sorted(names)}))
    return names


def load_saved(
    source: EvidenceSource,
) -> tuple[list[tuple[str, bytes]], WitnessInfo | None, NamespaceInfo | None]:
    """The saved bundles (name, bytes) and witness/namespace information of a folder."""
    bundles = [(name, source.read(name)) for name in bundle_files(source)]
    info = None
    ns = None
    try:
        if source.exists(WITNESS_INFO_FILE):
            info = WitnessInfo.from_json(json.loads(source.read(WITNESS_INFO_FILE)))
        if source.exists(NAMESPACE_FILE):
            ns = NamespaceInfo.from_json(json.loads(source.read(NAMESPACE_FILE)))
    except (ValueError, DecodeError) as exc:
        raise EvidenceFolderError(f"saved witness information is malformed: {exc}") from None
    return bundles, info, ns


# --------------------------------------------------------------------------- trust


def resolve_trust(
    *,
    namespace: str | None,
    pinned_witness_keys: Sequence[PinnedWitnessKey],
    pinned_operator_keys: Sequence[bytes],
    declared_operator_key: bytes | None,
    info: WitnessInfo | None,
    namespace_info: NamespaceInfo | None,
    info_origin: str,
) -> WitnessTrust:
    """Choose the keys to verify bundles with, pinned first; InvalidParameter if some
    key has no source at all."""
    notes: list[str] = []
    if pinned_witness_keys:
        witness_keys = tuple(pinned_witness_keys)
        notes.append("witness keys pinned by the auditor")
    elif info is not None:
        witness_keys = tuple(PinnedWitnessKey(k.public_key, k.not_before) for k in info.keys)
        notes.append(f"witness keys NOT pinned: taken from {info_origin}")
    else:
        raise InvalidParameter("no witness key: pin one (--witness-key) or give the witness")
    if pinned_operator_keys:
        operator_keys = tuple(pinned_operator_keys)
        notes.append("operator key pinned by the auditor")
    elif declared_operator_key is not None:
        operator_keys = (declared_operator_key,)
        notes.append("operator key: the one the ceremony inputs declare")
    elif namespace_info is not None:
        operator_keys = (namespace_info.operator_public_key,)
        notes.append(f"operator key NOT pinned: taken from {info_origin}")
    else:
        raise InvalidParameter("no operator key: pin one (--operator-key)")
    ns = namespace or (namespace_info.name if namespace_info is not None else None)
    if ns is None:
        raise InvalidParameter("no namespace: the ceremony declares none; pass --namespace")
    log_key = info.log_key if info is not None else None
    if log_key is None:
        notes.append("no witness log key: inclusion proofs not checked")
    return WitnessTrust(ns, witness_keys, operator_keys, log_key, tuple(notes))


# --------------------------------------------------------------------------- checking


def _compare(
    artifact: FleetKeyArtifact, fleet_id: bytes, keys: FleetPublicKeys, digest: bytes
) -> tuple[str, str]:
    entry = artifact.entry_for(fleet_id)
    if entry is None:
        if artifact.is_decommissioned(fleet_id):
            return "decommissioned", "lists the fleet as decommissioned"
        return "absent", "does not list the fleet"
    differing = changed_key_roles(entry, keys)
    if differing:
        return "other-keys", f"lists the fleet with other keys ({', '.join(differing)} differ)"
    if entry.evidence_digest != digest:
        shown = "none" if entry.evidence_digest is None else entry.evidence_digest.hex()[:16] + "…"
        return "other-evidence", f"lists the fleet's keys with evidence digest {shown}"
    return "match", f"lists the fleet ({entry.status}) with these keys and this evidence"


def _at(timestamp_ms: int) -> Callable[[], float]:
    """A clock stopped at a bundle's own timestamp (history, not freshness)."""
    return lambda: timestamp_ms / 1000


def check_bundles(
    bundles: Sequence[bytes],
    trust: WitnessTrust,
    *,
    fleet_id: bytes,
    public_keys: FleetPublicKeys,
    evidence_digest: bytes,
) -> list[EpochFinding]:
    """One finding per bundle, in epoch order (see :class:`EpochFinding`)."""
    findings = []
    for raw in bundles:
        try:
            bundle = ValidationBundle.from_bytes(raw)
        except DecodeError as exc:
            findings.append(EpochFinding(-1, 0, "refused", f"not a bundle: {exc}"))
            continue
        epoch, timestamp = bundle.witness.epoch, bundle.witness.timestamp
        policy = TrustPolicy(
            namespace=trust.namespace,
            witness_keys=trust.witness_keys,
            operator_public_keys=trust.operator_keys,
            log_key=trust.log_key,
        )
        verifier = BundleVerifier(policy, MemoryTrustStore(), clock=_at(timestamp))
        try:
            artifact = verifier.verify_bundle_only(raw)
        except (VerificationError, DecodeError, VaultError) as exc:
            findings.append(
                EpochFinding(epoch, timestamp, "refused", f"{type(exc).__name__}: {exc}")
            )
            continue
        status, detail = _compare(artifact, fleet_id, public_keys, evidence_digest)
        findings.append(EpochFinding(epoch, timestamp, status, detail))
    return sorted(findings, key=lambda f: f.epoch)
