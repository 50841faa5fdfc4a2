"""``hsmvault audit log``: audit a namespace's whole history at the witness (issue 5).

:func:`audit_log` fetches every epoch of the namespace from its root epoch to the last
one the witness verified and checks, for each:

* the witness's answer is about that namespace and epoch, its artifact hashes to the
  signed digest, and the witness signature (Plexi ``SignatureMessage``) verifies under a
  **pinned** witness key valid at its timestamp;
* the operator's counter-signature is present and verifies under a pinned operator key;
* the artifact parses strictly, names this namespace and this epoch, and its
  ``previous_digest`` is the previous epoch's digest (``null`` only at the root);
* timestamps never go backwards and log positions only increase;
* the entry is included (RFC 9162 inclusion proof) in the witness's latest checkpoint,
  whose note is signed by the pinned log key;

then that the latest checkpoint is consistent with the one this tool saw last time
(same origin; not smaller; the same root at the same size — a different one is a split
view; otherwise an RFC 9162 consistency proof) and that the witness does not now report
fewer epochs than before. Only when everything passed is the new checkpoint stored
(``audit-store.json`` in the device directory; a
:class:`~hsmvault.client.trust_store.FileTrustStore`, separate from the client's own, so
that an audit never makes the device refuse the bundle its fleet serves).

The report lists, per epoch, what changed in the fleet directory
(:func:`~hsmvault.transparency.artifact.diff_artifacts`); the first epoch is the baseline
and is listed whole. Any failure raises :class:`AuditFailure` naming the epoch and the
check: the command exits non-zero with that reason.

Pins: ``--witness-key`` (and ``--log-key``) if given; else the device's ``trust.json``
when it is for this namespace; else the witness's ``/info``, pinned into the device
directory at first use (and said so). The operator key: ``--operator-key``, else the
pins, else the namespace's registration at the witness (said so).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from hsmvault.cli.device_trust import DevicePins, load_pins, save_pins
from hsmvault.cli.local_deployment import NAMESPACE, DataLayout, read_state
from hsmvault.cli.output import EXIT_OK
from hsmvault.client.bundle_verifier import PinnedWitnessKey
from hsmvault.client.trust_store import (
    FileTrustStore,
    NamespaceTrust,
    StoredCheckpoint,
    TrustStore,
)
from hsmvault.errors import DecodeError, InvalidParameter, VerificationError
from hsmvault.transparency import merkle
from hsmvault.transparency.artifact import ArtifactChange, FleetKeyArtifact, diff_artifacts
from hsmvault.transparency.bundle import witness_key_id
from hsmvault.transparency.checkpoint import Checkpoint
from hsmvault.transparency.ed25519 import ed25519_verifies
from hsmvault.transparency.operator_messages import countersignature_message
from hsmvault.transparency.signed_note import Verifier
from hsmvault.transparency.witness_client import (
    AuditEntry,
    WitnessClient,
    WitnessInfo,
    WitnessKeyInfo,
    verify_checkpoint,
)

if TYPE_CHECKING:
    from hsmvault.cli.main import Context

__all__ = [
    "AUDIT_STORE_FILE",
    "AuditFailure",
    "EpochReport",
    "LogAuditReport",
    "audit_log",
    "run_log_audit",
]

AUDIT_STORE_FILE: Final = "audit-store.json"


class AuditFailure(VerificationError):
    """The audit found a problem; the message is the precise reason (epoch and check)."""

    def __init__(self, reason: str, epoch: int | None = None) -> None:
        super().__init__(reason if epoch is None else f"epoch {epoch}: {reason}")
        self.epoch = epoch


@dataclass(frozen=True)
class EpochReport:
    """One verified epoch and what changed since the previous one (``baseline``: the
    first epoch, listed whole)."""

    epoch: int
    timestamp_ms: int
    digest: bytes
    key_id: bytes
    leaf_index: int
    artifact: FleetKeyArtifact
    changes: tuple[ArtifactChange, ...]
    baseline: bool


@dataclass(frozen=True)
class LogAuditReport:
    """Everything :func:`audit_log` verified."""

    witness_name: str
    namespace: str
    operator_public_keys: tuple[bytes, ...]
    root_epoch: int
    checkpoint: Checkpoint
    previous_checkpoint: StoredCheckpoint | None
    epochs: tuple[EpochReport, ...]


def _check_signatures(
    entry: AuditEntry, witness: WitnessInfo, operator_keys: tuple[bytes, ...]
) -> None:
    epoch = entry.epoch
    if not hmac.compare_digest(hashlib.sha256(entry.artifact).digest(), entry.digest):
        raise AuditFailure("the artifact does not hash to the digest the witness signed", epoch)
    key = next((k for k in witness.keys if hmac.compare_digest(k.key_id, entry.key_id)), None)
    if key is None:
        raise AuditFailure(f"signed by witness key {entry.key_id.hex()[:16]}…, not pinned", epoch)
    if entry.timestamp < key.not_before:
        raise AuditFailure("the witness signature predates its key's not_before", epoch)
    if not ed25519_verifies(key.public_key, entry.signature, entry.message().encode()):
        raise AuditFailure("the witness signature does not verify", epoch)
    counter = entry.operator_countersignature
    if counter is None:
        raise AuditFailure("the operator counter-signature is missing", epoch)
    message = countersignature_message(entry.signature)
    if not any(ed25519_verifies(k, counter, message) for k in operator_keys):
        shown = ", ".join(k.hex()[:16] + "…" for k in operator_keys)
        raise AuditFailure(
            f"the operator counter-signature does not verify under the operator key ({shown})",
            epoch,
        )


def _check_entry(
    entry: AuditEntry,
    witness: WitnessInfo,
    operator_keys: tuple[bytes, ...],
    previous: EpochReport | None,
    namespace: str,
) -> FleetKeyArtifact:
    _check_signatures(entry, witness, operator_keys)
    epoch = entry.epoch
    try:
        artifact = FleetKeyArtifact.from_bytes(entry.artifact)
    except DecodeError as exc:
        raise AuditFailure(f"the signed artifact is not a valid artifact ({exc})", epoch) from None
    if artifact.namespace != namespace or artifact.epoch != epoch:
        raise AuditFailure("the artifact names another namespace or epoch", epoch)
    if previous is None:
        if artifact.previous_digest is not None:
            raise AuditFailure("the root epoch names a previous digest", epoch)
    else:
        if artifact.previous_digest is None or not hmac.compare_digest(
            artifact.previous_digest, previous.digest
        ):
            raise AuditFailure(
                f"previous_digest is not epoch {previous.epoch}'s digest (the chain is broken)",
                epoch,
            )
        if entry.timestamp < previous.timestamp_ms:
            raise AuditFailure("the witness timestamp goes backwards", epoch)
        if entry.leaf_index <= previous.leaf_index:
            raise AuditFailure("the log position does not increase", epoch)
    return artifact


def _check_inclusion(client: WitnessClient, entry: AuditEntry, checkpoint: Checkpoint) -> None:
    if entry.leaf_index >= checkpoint.tree_size:
        raise AuditFailure("the entry is not covered by the witness's checkpoint", entry.epoch)
    proof = client.inclusion_proof(entry.leaf_index, checkpoint.tree_size)
    try:
        merkle.verify_inclusion(
            entry.leaf_index,
            checkpoint.tree_size,
            entry.leaf_hash(),
            proof.proof,
            checkpoint.root_hash,
        )
    except VerificationError:
        raise AuditFailure("the entry is not included in the witness's log", entry.epoch) from None


def _check_consistency(client: WitnessClient, old: StoredCheckpoint, new: Checkpoint) -> None:
    if old.origin != new.origin:
        raise AuditFailure(f"the checkpoint is from log {new.origin!r}, not {old.origin!r}")
    if new.tree_size < old.tree_size:
        raise AuditFailure(
            f"the log shrank: checkpoint of {new.tree_size} entries after one of"
            f" {old.tree_size} (rollback)"
        )
    if new.tree_size == old.tree_size:
        if not hmac.compare_digest(new.root_hash, old.root_hash):
            raise AuditFailure(
                f"two different roots for the same log size {new.tree_size}: the witness"
                " shows different logs to different viewers (split view)"
            )
        return
    proof = client.consistency_proof(old.tree_size, new.tree_size)
    try:
        merkle.verify_consistency(
            old.tree_size, new.tree_size, proof.proof, old.root_hash, new.root_hash
        )
    except VerificationError:
        raise AuditFailure(
            f"the log of {new.tree_size} entries does not extend the one of {old.tree_size}"
            " seen last time (split view or rewritten history)"
        ) from None


def audit_log(
    client: WitnessClient,
    namespace: str,
    witness: WitnessInfo,
    operator_public_keys: tuple[bytes, ...] | None,
    store: TrustStore | None = None,
) -> LogAuditReport:
    """Audit every epoch of ``namespace`` (see the module docstring). ``witness`` holds
    the pinned signing keys and log key; ``operator_public_keys`` ``None`` takes the key
    the namespace is registered under. ``store`` keeps the last checkpoint seen (and the
    highest epoch) between audits; updated only when everything passed.

    Raises :class:`AuditFailure` with the reason; ``Unavailable`` if the witness cannot
    be reached; ``MalformedWitnessAnswer`` for answers that do not parse."""
    info = client.namespace(namespace)
    keys = operator_public_keys or (info.operator_public_key,)
    if info.last_verified_epoch is None:
        raise AuditFailure(f"namespace {namespace!r} has no epoch at the witness yet")
    note = client.checkpoint()
    try:
        checkpoint = verify_checkpoint(note, witness.log_key)
    except (VerificationError, DecodeError):
        raise AuditFailure("the witness's checkpoint is not signed by the pinned log key") from None
    state = store.get(namespace) if store is not None else None
    if state is not None and info.last_verified_epoch < state.highest_epoch:
        raise AuditFailure(
            f"the witness reports epoch {info.last_verified_epoch} as the last, below epoch"
            f" {state.highest_epoch} seen before (rollback)"
        )
    previous_cp = state.checkpoint if state is not None else None
    if previous_cp is not None:
        _check_consistency(client, previous_cp, checkpoint)
    reports: list[EpochReport] = []
    for epoch in range(info.root_epoch, info.last_verified_epoch + 1):
        entry = client.audit(namespace, epoch)
        before = reports[-1] if reports else None
        artifact = _check_entry(entry, witness, keys, before, namespace)
        _check_inclusion(client, entry, checkpoint)
        changes = (
            ()
            if before is None
            else tuple(
                c for c in diff_artifacts(before.artifact, artifact) if c.kind != "epoch_changed"
            )
        )
        reports.append(
            EpochReport(
                epoch=epoch,
                timestamp_ms=entry.timestamp,
                digest=entry.digest,
                key_id=entry.key_id,
                leaf_index=entry.leaf_index,
                artifact=artifact,
                changes=changes,
                baseline=before is None,
            )
        )
    stored = StoredCheckpoint(checkpoint.origin, checkpoint.tree_size, checkpoint.root_hash, note)
    if store is not None:
        store.put(namespace, NamespaceTrust(info.last_verified_epoch, stored))
    return LogAuditReport(
        witness_name=witness.name,
        namespace=namespace,
        operator_public_keys=keys,
        root_epoch=info.root_epoch,
        checkpoint=checkpoint,
        previous_checkpoint=previous_cp,
        epochs=tuple(reports),
    )


# --------------------------------------------------------------------------- command


def _parse_witness_key(text: str) -> PinnedWitnessKey:
    raw, _, not_before = text.partition("@")
    try:
        key = bytes.fromhex(raw)
        return PinnedWitnessKey(key, int(not_before) if not_before else 0)
    except ValueError:
        raise InvalidParameter("--witness-key is HEX or HEX@NOT_BEFORE_MS") from None


def _parse_operator_key(text: str) -> bytes:
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise InvalidParameter("--operator-key must be 64 hex digits") from None
    if len(key) != 32:
        raise InvalidParameter("--operator-key must be 64 hex digits")
    return key


@dataclass
class _Pins:
    witness: WitnessInfo
    operator_keys: tuple[bytes, ...] | None
    witness_from: str
    operator_from: str


def _resolve_pins(
    client: WitnessClient,
    *,
    url: str,
    namespace: str,
    device_dir: Path,
    witness_keys: list[str],
    log_key: str | None,
    operator_key: str | None,
    say: Any,
) -> _Pins:
    pins = load_pins(device_dir)
    if pins is not None and pins.namespace != namespace:
        pins = None
    operator: tuple[bytes, ...] | None = (
        (_parse_operator_key(operator_key),) if operator_key else None
    )
    operator_from = "--operator-key" if operator else ""
    if witness_keys:
        live = client.info()
        verifier = Verifier.from_vkey(log_key) if log_key else live.log_key
        keys = tuple(
            WitnessKeyInfo(witness_key_id(k.public_key), k.public_key, k.not_before_ms)
            for k in (_parse_witness_key(t) for t in witness_keys)
        )
        witness = WitnessInfo(verifier.name, keys, verifier)
        witness_from = "--witness-key" + (
            " and --log-key" if log_key else " (log key from the witness's /info)"
        )
    elif pins is not None:
        witness = pins.witness_info()
        witness_from = (
            f"pins in {device_dir / 'trust.json'} (pinned at first use from {pins.source})"
        )
        if operator is None:
            operator, operator_from = pins.operator_public_keys, "the device's pins"
    else:
        witness = client.info()
        operator_keys = operator or (client.namespace(namespace).operator_public_key,)
        fresh = DevicePins(
            namespace=namespace,
            witness_name=witness.name,
            witness_keys=tuple(PinnedWitnessKey(k.public_key, k.not_before) for k in witness.keys),
            log_key=witness.log_key,
            operator_public_keys=operator_keys,
            witness_url=url,
            pinned_at=int(time.time()),
            source=f"the witness's /info at {url} (by `hsmvault audit`)",
        )
        save_pins(device_dir, fresh)
        witness_from = f"the witness's /info, pinned at first use into {device_dir / 'trust.json'}"
        say(f"[yellow]trust:[/yellow] witness keys {witness_from}")
        if operator is None:
            operator = operator_keys
            operator_from = "the namespace's registration at the witness, pinned at first use"
    if operator is None:
        operator_from = "the namespace's registration at the witness (not pinned)"
    return _Pins(witness, operator, witness_from, operator_from)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _fleet_line(artifact: FleetKeyArtifact) -> list[str]:
    lines = []
    for f in artifact.fleets:
        regions = ", ".join(f.regions) or "no region"
        evidence = f.evidence_digest.hex()[:16] + "…" if f.evidence_digest else "none"
        lines.append(
            f"fleet {f.fleet_id.hex()[:16]}… {f.status}: ake {f.ake_public_key.hex()[:12]}…"
            f" enc {f.enc_public_key.hex()[:12]}… sig {f.sig_public_key.hex()[:12]}…,"
            f" valid {_iso(f.not_before * 1000)} .. {_iso(f.not_after * 1000)}, {regions},"
            f" evidence {evidence}"
        )
    lines.extend(f"decommissioned fleet {d.hex()[:16]}…" for d in artifact.decommissioned)
    return lines


def _report_json(report: LogAuditReport, url: str, pins: _Pins) -> dict[str, Any]:
    cp = report.checkpoint
    prev = report.previous_checkpoint
    return {
        "ok": True,
        "witness": {"url": url, "name": report.witness_name, "keys_from": pins.witness_from},
        "namespace": report.namespace,
        "operator_public_keys": [k.hex() for k in report.operator_public_keys],
        "operator_key_from": pins.operator_from,
        "checkpoint": {
            "origin": cp.origin,
            "tree_size": cp.tree_size,
            "root_hash": cp.root_hash.hex(),
        },
        "consistency": {
            "previous_tree_size": None if prev is None else prev.tree_size,
            "status": "first audit" if prev is None else "consistent",
        },
        "epochs": [
            {
                "epoch": e.epoch,
                "timestamp_ms": e.timestamp_ms,
                "digest": e.digest.hex(),
                "witness_key_id": e.key_id.hex(),
                "leaf_index": e.leaf_index,
                "baseline": e.baseline,
                "fleets": [f.to_dict() for f in e.artifact.fleets],
                "decommissioned": [d.hex() for d in e.artifact.decommissioned],
                "changes": [
                    {
                        "kind": c.kind,
                        "fleet_id": c.fleet_id.hex() if c.fleet_id else None,
                        "detail": c.detail,
                        "text": str(c),
                    }
                    for c in e.changes
                ],
            }
            for e in report.epochs
        ],
    }


def _print_report(ctx: Context, report: LogAuditReport, url: str, pins: _Pins) -> None:
    say = ctx.out.say
    say(f"[bold]witness[/bold] {report.witness_name} at {url} — keys from {pins.witness_from}")
    keys = ", ".join(k.hex()[:16] + "…" for k in report.operator_public_keys)
    say(f"[bold]namespace[/bold] {report.namespace!r}, operator key {keys} ({pins.operator_from})")
    cp, prev = report.checkpoint, report.previous_checkpoint
    if prev is None:
        log = "first audit from this device: checkpoint stored for the next one"
    elif prev.tree_size == cp.tree_size:
        log = f"the same as the one seen last time (size {prev.tree_size})"
    else:
        log = f"consistent with the one seen last time (size {prev.tree_size})"
    root = cp.root_hash.hex()[:16]
    say(f"[bold]log[/bold] checkpoint of {cp.tree_size} entries, root {root}…: {log}")
    for e in report.epochs:
        say(
            f"[bold]epoch {e.epoch}[/bold]  {_iso(e.timestamp_ms)}  digest {e.digest.hex()[:16]}…"
            f"  witness key {e.key_id.hex()[:12]}…  log entry {e.leaf_index}"
        )
        if e.baseline:
            say("    baseline (first epoch):")
            for line in _fleet_line(e.artifact):
                say(f"      {line}")
            continue
        shown = [c for c in e.changes if c.kind != "reissued"]
        if not shown:
            say("    re-published; fleet keys unchanged")
        for change in shown:
            colour = "red" if change.kind in ("chain_broken", "undecommissioned") else "cyan"
            say(f"    [{colour}]{change}[/{colour}]")
    n = len(report.epochs)
    say(
        f"[bold green]ok[/bold green]: {n} epoch{'s' if n != 1 else ''} verified — witness"
        " signatures, operator counter-signatures, digest chain, inclusion in the checkpoint,"
        " log consistency"
    )


def run_log_audit(ctx: Context) -> int:
    """The ``audit log`` command (also ``hsmvault audit`` alone)."""
    args = ctx.args
    data = DataLayout(ctx.config.data_dir)
    state = read_state(data) or {}
    url = getattr(args, "witness", None) or state.get("witness_url")
    if not url:
        raise InvalidParameter(
            "no witness to audit: pass --witness URL, or run it against a running `hsmvault up`"
        )
    namespace = getattr(args, "namespace", None) or state.get("namespace") or NAMESPACE
    device_dir: Path = getattr(args, "device_dir", None) or data.device_dir
    with WitnessClient(str(url)) as client:
        pins = _resolve_pins(
            client,
            url=str(url),
            namespace=str(namespace),
            device_dir=device_dir,
            witness_keys=list(getattr(args, "witness_key", None) or []),
            log_key=getattr(args, "log_key", None),
            operator_key=getattr(args, "operator_key", None),
            say=ctx.out.say,
        )
        device_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        store = FileTrustStore(device_dir / AUDIT_STORE_FILE)
        report = audit_log(client, str(namespace), pins.witness, pins.operator_keys, store)
    if ctx.out.json_mode:
        ctx.out.data(_report_json(report, str(url), pins))
    else:
        _print_report(ctx, report, str(url), pins)
    return EXIT_OK
