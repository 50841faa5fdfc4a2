"""The operator's publishing tool: fleet directory → witness → validation bundle → fleets
(ADR 0010, "Delivery"; issue 5).

:meth:`Publisher.publish` takes the **full desired directory** of a namespace — every
fleet a client may talk to, with its public keys, status, window and regions — and the
fleet ids to decommission, and:

1. reads the namespace from the witness: the next epoch is ``last_verified + 1`` (the
   registered root epoch first); ``previous_digest`` is the SHA-256 of the last entry's
   artifact (after checking that entry: its digest, its witness signature under the
   pinned witness keys, and — if the operator's counter-signature is missing because an
   earlier run stopped half-way — completing it);
2. builds the :class:`~hsmvault.transparency.artifact.FleetKeyArtifact` (fleets of the
   previous epoch must be listed again or decommissioned — nothing silently drops out;
   decommissioned fleets stay decommissioned; a decommissioned fleet is never listed);
3. signs the submission message with the operator key and submits it;
4. counter-signs the witness signature and stores the counter-signature at the witness;
5. fetches the latest checkpoint and the inclusion proof of the new entry;
6. assembles the :class:`~hsmvault.transparency.bundle.ValidationBundle`;
7. **verifies it locally before installing anything** — the client's checks 1-6 and 8
   (:func:`verify_bundle`: digest, witness signature under the pinned keys, counter-
   signature under the operator key, namespace, epoch, freshness, inclusion under the
   pinned log key, consistency with the previous checkpoint this publisher saw) — and
   raises the check's own error if any fails (fail closed: nothing is installed);
8. installs it in every fleet's :class:`~hsmvault.host.fleet_client.FleetClient`
   (``install_bundle``) and reports per fleet, without stopping at the first failure.

The witness keys (signing keys and the log key) are pinned: given to the constructor, or
read from the witness's ``/info`` once on first use and then kept for the life of the
publisher. The operator key is the :class:`~hsmvault.transparency.signers.Ed25519Signer`
given (software seed or PKCS#11 token).

Host zone: imports ``transparency``, ``fleet``, ``wire`` and ``crypto`` only (never
``client``, ``hsm`` or ``cli``). Nothing here is secret except the operator key, which
stays inside its signer.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from hsmvault.crypto.opaque import OpaqueClient
from hsmvault.errors import DecodeError, InvalidParameter, VaultError, VerificationError
from hsmvault.fleet.fleet_keys import FleetPublicKeys
from hsmvault.host.fleet_client import FleetClient
from hsmvault.transparency import merkle
from hsmvault.transparency.artifact import (
    STATUS_ACTIVE,
    FleetEntry,
    FleetKeyArtifact,
    check_namespace,
)
from hsmvault.transparency.bundle import (
    InclusionEvidence,
    ValidationBundle,
    bundle_from_audit,
)
from hsmvault.transparency.checkpoint import Checkpoint
from hsmvault.transparency.ed25519 import ed25519_verifies
from hsmvault.transparency.errors import (
    ArtifactDigestMismatch,
    CheckpointInconsistent,
    CounterSignatureInvalid,
    EpochRollback,
    InclusionProofInvalid,
    NamespaceMismatch,
    StaleBundle,
    UnknownWitnessKey,
    WitnessKeyNotYetValid,
    WitnessSignatureInvalid,
)
from hsmvault.transparency.operator_messages import (
    countersignature_message,
    submission_message,
)
from hsmvault.transparency.signers import Ed25519Signer
from hsmvault.transparency.witness_client import (
    AuditEntry,
    NamespaceInfo,
    WitnessClient,
    WitnessInfo,
    verify_checkpoint,
)
from hsmvault.wire.hsm_api import RegistrationStartRequest, RegistrationStartResponse

__all__ = [
    "DEFAULT_FRESHNESS_S",
    "DEFAULT_VALIDITY_S",
    "EvidenceDigest",
    "InstallReport",
    "OperatorKeyMismatch",
    "PublishError",
    "PublishResult",
    "PublishedFleet",
    "Publisher",
    "read_installed_bundle",
    "verify_bundle",
]

_log = logging.getLogger(__name__)

#: The clients' default freshness window (ADR 0010 step 6: 30 days).
DEFAULT_FRESHNESS_S: Final = 30 * 24 * 3600
#: Validity window of a fleet published without one and not listed before: 2 years.
DEFAULT_VALIDITY_S: Final = 2 * 365 * 24 * 3600
#: Clock skew tolerated on the witness timestamp (the clients' default, 5 minutes).
_MAX_SKEW_S: Final = 300
_PROBE_USER: Final = b"hsmvault/operator/bundle-probe"

#: ``evidence_digest(folder)`` -> SHA-256 of a fleet's published deployment evidence
#: (issue 6; supplied by the evidence tooling).
EvidenceDigest = Callable[[Path], bytes]


class PublishError(VaultError):
    """Publishing cannot proceed (the witness's state does not allow it, or the request
    is inconsistent with the previous epoch). The message names the reason."""


class OperatorKeyMismatch(PublishError):
    """The witness has the namespace registered under another operator key (or root
    epoch) than this publisher's."""


@dataclass(frozen=True)
class PublishedFleet:
    """One fleet of the desired directory.

    * ``keys`` — the fleet's public keys (``fleet.json``);
    * ``status`` — ``"active"`` or ``"retiring"``;
    * ``not_before`` / ``not_after`` — seconds since the Unix epoch; ``None`` keeps the
      window this fleet had in the previous epoch, or, for a fleet listed for the first
      time, ``[now, now + DEFAULT_VALIDITY_S]``;
    * ``regions`` — informational region names (``[a-z0-9-]``, see the artifact format);
    * ``evidence_digest`` — SHA-256 of its deployment evidence, or ``None``; when it is
      ``None`` and ``evidence_dir`` is set, the publisher's ``evidence_digest`` function
      computes it from that folder;
    * ``clients`` — where to install the bundle (usually one :class:`FleetClient`).
    """

    keys: FleetPublicKeys
    clients: tuple[FleetClient, ...] = ()
    status: str = STATUS_ACTIVE
    not_before: int | None = None
    not_after: int | None = None
    regions: tuple[str, ...] = ()
    evidence_digest: bytes | None = None
    evidence_dir: Path | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.keys, FleetPublicKeys):
            raise InvalidParameter("keys must be FleetPublicKeys")
        object.__setattr__(self, "clients", tuple(self.clients))
        object.__setattr__(self, "regions", tuple(self.regions))
        if not all(isinstance(c, FleetClient) for c in self.clients):
            raise InvalidParameter("clients must be FleetClient instances")
        if (self.not_before is None) != (self.not_after is None):
            raise InvalidParameter("give both not_before and not_after, or neither")

    @property
    def fleet_id(self) -> bytes:
        return self.keys.fleet_id


@dataclass(frozen=True)
class InstallReport:
    """What installing the new bundle in one fleet did: ``fleet_id`` (``None`` for a
    ``notify`` client), ``error`` ``None`` on success (``epoch`` is then the fleet's
    current epoch), else a short reason."""

    fleet_id: bytes | None
    epoch: int | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class PublishResult:
    """A published epoch: its artifact, the witness's entry (counter-signed), the bundle
    bytes fleets serve, and one :class:`InstallReport` per fleet client."""

    namespace: str
    epoch: int
    artifact: FleetKeyArtifact
    entry: AuditEntry
    bundle: bytes
    installs: tuple[InstallReport, ...] = field(default_factory=tuple)

    @property
    def all_installed(self) -> bool:
        return all(r.ok for r in self.installs)

    @property
    def witness_timestamp_ms(self) -> int:
        return self.entry.timestamp

    def raise_for_installs(self) -> None:
        """Raise :class:`PublishError` naming the fleets where installing failed."""
        failed = [r for r in self.installs if not r.ok]
        if failed:
            detail = "; ".join(
                f"fleet {r.fleet_id.hex()[:16] if r.fleet_id else '(notified)'}: {r.error}"
                for r in failed
            )
            raise PublishError(f"epoch {self.epoch} was not installed everywhere: {detail}")


# --------------------------------------------------------------------------- checks


def _check_witness_signature(
    info: WitnessInfo, key_id: bytes, timestamp: int, signature: bytes, message: bytes
) -> None:
    key = next((k for k in info.keys if hmac.compare_digest(k.key_id, key_id)), None)
    if key is None:
        raise UnknownWitnessKey("the witness key is not pinned")
    if timestamp < key.not_before:
        raise WitnessKeyNotYetValid("signature predates the witness key's not_before")
    if not ed25519_verifies(key.public_key, signature, message):
        raise WitnessSignatureInvalid("witness signature does not verify")


def _check_entry(entry: AuditEntry, info: WitnessInfo) -> None:
    """An audit entry's digest and witness signature (not its counter-signature)."""
    if not hmac.compare_digest(hashlib.sha256(entry.artifact).digest(), entry.digest):
        raise ArtifactDigestMismatch("the witness's artifact does not hash to its digest")
    _check_witness_signature(
        info, entry.key_id, entry.timestamp, entry.signature, entry.message().encode()
    )


def verify_bundle(
    bundle_bytes: bytes,
    *,
    namespace: str,
    witness: WitnessInfo,
    operator_public_key: bytes,
    now: float,
    min_epoch: int | None = None,
    max_age_s: int = DEFAULT_FRESHNESS_S,
    previous_checkpoint: Checkpoint | None = None,
    consistency: Callable[[int, int], Sequence[bytes]] | None = None,
) -> tuple[FleetKeyArtifact, Checkpoint | None]:
    """The client's checks 1-6 and 8 (ADR 0010) on ``bundle_bytes``, from the
    operator's side, before it installs anything. Returns the parsed artifact and the
    verified checkpoint (``None`` without inclusion evidence).

    Raises :class:`~hsmvault.transparency.errors.BundleFormatError` or the failing
    check's own error (``ArtifactDigestMismatch``, ``UnknownWitnessKey``, ...,
    ``InclusionProofInvalid``, ``CheckpointInconsistent``). ``previous_checkpoint`` (and
    ``consistency(old_size, new_size)`` for a larger tree) enforce that the log only
    grew since the publisher last looked."""
    bundle = ValidationBundle.from_bytes(bundle_bytes)
    w = bundle.witness
    if not hmac.compare_digest(bundle.artifact_digest(), w.digest):
        raise ArtifactDigestMismatch("artifact digest is not the signed digest")
    _check_witness_signature(
        witness, w.key_id, w.timestamp, w.signature, bundle.signature_message().encode()
    )
    if not ed25519_verifies(
        operator_public_key, bundle.operator_signature, bundle.countersignature_message()
    ):
        raise CounterSignatureInvalid("the operator key does not verify the counter-signature")
    artifact = bundle.parse_artifact()
    if w.namespace != namespace or artifact.namespace != namespace:
        raise NamespaceMismatch("the bundle is for another namespace")
    if artifact.epoch != w.epoch:
        raise EpochRollback("the artifact's epoch is not the signed epoch")
    if min_epoch is not None and w.epoch < min_epoch:
        raise EpochRollback("the bundle's epoch is below the expected one")
    now_ms = int(now * 1000)
    if not now_ms - max_age_s * 1000 <= w.timestamp <= now_ms + _MAX_SKEW_S * 1000:
        raise StaleBundle("the witness timestamp is outside the freshness window")
    evidence = bundle.inclusion
    if evidence is None:
        return artifact, None
    try:
        body = verify_checkpoint(evidence.checkpoint, witness.log_key)
    except (VerificationError, DecodeError):
        raise InclusionProofInvalid("checkpoint is not signed by the pinned log key") from None
    if body.tree_size != evidence.tree_size:
        raise InclusionProofInvalid("checkpoint size is not the proof's tree size")
    try:
        merkle.verify_inclusion(
            evidence.leaf_index,
            evidence.tree_size,
            merkle.hash_leaf(bundle.log_leaf()),
            evidence.proof,
            body.root_hash,
        )
    except VerificationError:
        raise InclusionProofInvalid("the signature is not in the log") from None
    if previous_checkpoint is not None:
        _check_consistency(previous_checkpoint, body, consistency)
    return artifact, body


def _check_consistency(
    old: Checkpoint,
    new: Checkpoint,
    consistency: Callable[[int, int], Sequence[bytes]] | None,
) -> None:
    if old.origin != new.origin:
        raise CheckpointInconsistent("checkpoint is from another log")
    if new.tree_size < old.tree_size:
        raise CheckpointInconsistent("checkpoint is older than one already seen")
    if new.tree_size == old.tree_size:
        if not hmac.compare_digest(old.root_hash, new.root_hash):
            raise CheckpointInconsistent("two roots for one tree size (split view)")
        return
    if old.tree_size == 0:
        return  # every tree extends the empty one
    if consistency is None:
        raise CheckpointInconsistent("no consistency proof available")
    try:
        merkle.verify_consistency(
            old.tree_size,
            new.tree_size,
            list(consistency(old.tree_size, new.tree_size)),
            old.root_hash,
            new.root_hash,
        )
    except VerificationError:
        raise CheckpointInconsistent("the log does not extend the last checkpoint") from None


# --------------------------------------------------------------------------- fleets


def read_installed_bundle(client: FleetClient, fleet_id: bytes | None = None) -> bytes:
    """The validation bundle ``client``'s fleet serves now (``b""`` if none), read from a
    side-effect-free ``RegistrationStart`` probe (a fresh blinded element under a fixed
    probe user id; nothing is stored). With ``fleet_id``, the answer must come from that
    fleet (:class:`PublishError` otherwise). Raises :class:`~hsmvault.errors.Unavailable`
    if no node answers."""
    request, _state = OpaqueClient().start_registration(secrets.token_bytes(16))
    raw = RegistrationStartRequest(_PROBE_USER, request.to_bytes()).to_bytes()
    answer = client.call(raw)
    response = answer.response
    if not isinstance(response, RegistrationStartResponse):
        raise PublishError(f"the fleet did not answer the probe ({response.outcome.name})")
    if fleet_id is not None and not hmac.compare_digest(response.fleet_id, fleet_id):
        raise PublishError("the probe was answered by another fleet")
    return bytes(response.bundle)


def _served_reason(client: FleetClient, namespace: str, epoch: int) -> str | None:
    """Why the bundle ``client``'s fleet serves is not one of ``namespace`` at epoch
    ``epoch`` or later, or None."""
    raw = read_installed_bundle(client)
    if not raw:
        return "a fleet serves no bundle"
    try:
        signed = ValidationBundle.from_bytes(raw).witness
    except DecodeError:
        return "a fleet serves a malformed bundle"
    served = signed.epoch
    if signed.namespace != namespace:
        return "a fleet serves a bundle of another namespace"
    if served < epoch:
        return f"a fleet serves epoch {served}, the witness is at {epoch}"
    return None


# --------------------------------------------------------------------------- publisher


class Publisher:
    """Publishes a namespace's fleet directory (see the module docstring).

    ``witness`` — a :class:`WitnessClient`; ``namespace`` — the namespace;
    ``operator_signer`` — the operator key (also the key the witness registered for the
    namespace); ``clock`` — seconds since the Unix epoch (``time.time``);
    ``witness_info`` — the pinned witness keys (``None``: read ``/info`` once, on first
    use); ``evidence_digest`` — computes a fleet's evidence digest from its folder
    (issue 6); ``max_age_s`` — the clients' freshness window, for the local check.
    Not thread-safe: one publish at a time (the witness refuses a second one for the
    same epoch anyway).
    """

    def __init__(
        self,
        witness: WitnessClient,
        namespace: str,
        operator_signer: Ed25519Signer,
        clock: Callable[[], float] = time.time,
        *,
        witness_info: WitnessInfo | None = None,
        evidence_digest: EvidenceDigest | None = None,
        max_age_s: int = DEFAULT_FRESHNESS_S,
    ) -> None:
        check_namespace(namespace)
        if not isinstance(operator_signer, Ed25519Signer):
            raise InvalidParameter("operator_signer must be an Ed25519Signer")
        self._witness = witness
        self._namespace = namespace
        self._signer = operator_signer
        self._clock = clock
        self._info = witness_info
        self._evidence_digest = evidence_digest
        self._max_age_s = max_age_s
        self._checkpoint: Checkpoint | None = None

    @property
    def namespace(self) -> str:
        return self._namespace

    @property
    def operator_public_key(self) -> bytes:
        return self._signer.public_key()

    def witness_info(self) -> WitnessInfo:
        """The pinned witness keys (read from ``/info`` the first time if not given)."""
        if self._info is None:
            self._info = self._witness.info()
        return self._info

    @property
    def last_checkpoint(self) -> Checkpoint | None:
        """The latest checkpoint this publisher verified (consistency anchor)."""
        return self._checkpoint

    # ------------------------------------------------------------------ namespace

    def ensure_namespace(
        self, admin_token: str, root_epoch: int = 1, operator_public_key: bytes | None = None
    ) -> NamespaceInfo:
        """Register the namespace with the witness (admin token of the witness's data
        directory) unless it already is; either way check it is registered with this
        publisher's operator key and ``root_epoch``. Raises
        :class:`OperatorKeyMismatch` otherwise."""
        key = self.operator_public_key if operator_public_key is None else operator_public_key
        if not hmac.compare_digest(key, self.operator_public_key):
            raise InvalidParameter("operator_public_key is not the publisher's signing key")
        existing = next((n for n in self._witness.namespaces() if n.name == self._namespace), None)
        if existing is None:
            return self._witness.register_namespace(admin_token, self._namespace, root_epoch, key)
        self._check_registration(existing, root_epoch)
        return existing

    def _check_registration(self, info: NamespaceInfo, root_epoch: int | None = None) -> None:
        if not hmac.compare_digest(info.operator_public_key, self.operator_public_key):
            raise OperatorKeyMismatch(
                f"namespace {self._namespace!r} is registered at the witness under another"
                " operator key"
            )
        if root_epoch is not None and info.root_epoch != root_epoch:
            raise OperatorKeyMismatch(
                f"namespace {self._namespace!r} is registered with root epoch"
                f" {info.root_epoch}, not {root_epoch}"
            )

    def last_entry(self) -> AuditEntry | None:
        """The namespace's last witnessed entry (digest and witness signature checked
        under the pinned keys), or ``None`` before the first epoch."""
        info = self._witness.namespace(self._namespace)
        self._check_registration(info)
        if info.last_verified_epoch is None:
            return None
        entry = self._witness.audit(self._namespace, info.last_verified_epoch)
        _check_entry(entry, self.witness_info())
        return entry

    def needs_republish(
        self, max_age_s: float, *, installed_in: Sequence[FleetClient] = ()
    ) -> str | None:
        """Why a new epoch should be published now, or ``None``: no epoch yet; the last
        one is older than ``max_age_s`` (by the witness's timestamp) or lacks the
        counter-signature; or one of ``installed_in`` serves no bundle or an older epoch
        than the witness's last."""
        entry = self.last_entry()
        if entry is None:
            return "the namespace has no epoch yet"
        age_s = self._clock() - entry.timestamp / 1000
        if age_s > max_age_s:
            return f"the last epoch ({entry.epoch}) is {int(age_s)} s old"
        if entry.operator_countersignature is None:
            return f"the last epoch ({entry.epoch}) is not counter-signed"
        for client in installed_in:
            reason = _served_reason(client, self._namespace, entry.epoch)
            if reason is not None:
                return reason
        return None

    # ------------------------------------------------------------------ publish

    def publish(
        self,
        fleets: Sequence[PublishedFleet],
        *,
        decommissioned: Sequence[bytes] = (),
        notify: Sequence[FleetClient] = (),
    ) -> PublishResult:
        """Publish ``fleets`` (the full desired directory) as the namespace's next epoch,
        with ``decommissioned`` fleet ids retired for good (added to those of the
        previous epoch), and install the bundle in every fleet's clients plus
        ``notify`` (e.g. the fleet being decommissioned, so its clients learn it).

        Raises :class:`InvalidParameter` for an inconsistent directory (a fleet listed
        twice, or listed while decommissioned now or before, or a fleet of the previous
        epoch neither listed nor decommissioned), :class:`PublishError` /
        :class:`OperatorKeyMismatch` if the witness's state forbids publishing, the
        witness's refusals (``WitnessHttpRefused``, ``Unavailable``), and — before
        anything is installed — the local verification's errors. Install failures do
        not raise: see :attr:`PublishResult.installs` / ``raise_for_installs``."""
        info = self.witness_info()
        ns = self._witness.namespace(self._namespace)
        self._check_registration(ns)
        previous: FleetKeyArtifact | None = None
        previous_digest: bytes | None = None
        if ns.last_verified_epoch is None:
            epoch = ns.root_epoch
        else:
            last = self._witness.audit(self._namespace, ns.last_verified_epoch)
            _check_entry(last, info)
            self._complete_countersignature(last)
            try:
                previous = FleetKeyArtifact.from_bytes(last.artifact)
            except DecodeError:
                raise PublishError(
                    f"the witness's epoch {last.epoch} does not hold a valid artifact"
                ) from None
            if previous.namespace != self._namespace or previous.epoch != last.epoch:
                raise PublishError(f"the witness's epoch {last.epoch} names another epoch")
            previous_digest = last.digest
            epoch = ns.last_verified_epoch + 1
        now = self._clock()
        artifact = self._artifact(
            epoch,
            now=int(now),
            previous=previous,
            previous_digest=previous_digest,
            fleets=fleets,
            decommissioned=decommissioned,
        )
        data = artifact.to_bytes()
        digest = hashlib.sha256(data).digest()
        submission = self._signer.sign(submission_message(self._namespace, epoch, digest))
        entry = self._witness.submit(self._namespace, epoch, data, submission)
        _check_entry(entry, info)
        counter = self._signer.sign(countersignature_message(entry.signature))
        entry = self._witness.put_countersignature(self._namespace, epoch, counter)
        bundle = self._assemble(entry, counter, info)
        _, checkpoint = verify_bundle(
            bundle,
            namespace=self._namespace,
            witness=info,
            operator_public_key=self.operator_public_key,
            now=self._clock(),
            min_epoch=epoch,
            max_age_s=self._max_age_s,
            previous_checkpoint=self._checkpoint,
            consistency=self._consistency,
        )
        self._checkpoint = checkpoint
        _log.info("published %r epoch %d; installing", self._namespace, epoch)
        installs = [self._install(c, f.fleet_id, epoch, bundle) for f in fleets for c in f.clients]
        installs += [self._install(c, None, epoch, bundle) for c in notify]
        return PublishResult(self._namespace, epoch, artifact, entry, bundle, tuple(installs))

    def bundle_for(self, epoch: int) -> bytes:
        """The bundle of an already published ``epoch`` (re-assembled from the witness,
        with fresh inclusion evidence), verified like :meth:`publish` does except for
        freshness of old epochs (the caller installs it or not)."""
        info = self.witness_info()
        entry = self._witness.audit(self._namespace, epoch)
        _check_entry(entry, info)
        if entry.operator_countersignature is None:
            raise PublishError(f"epoch {epoch} is not counter-signed")
        bundle = self._assemble(entry, entry.operator_countersignature, info)
        verify_bundle(
            bundle,
            namespace=self._namespace,
            witness=info,
            operator_public_key=self.operator_public_key,
            now=entry.timestamp / 1000,
            max_age_s=self._max_age_s,
        )
        return bundle

    # ------------------------------------------------------------------ steps

    def _complete_countersignature(self, entry: AuditEntry) -> None:
        """Counter-sign an entry an interrupted run left without one (our own
        submission: the witness accepted it only under the operator key)."""
        if entry.operator_countersignature is not None:
            if not ed25519_verifies(
                self.operator_public_key,
                entry.operator_countersignature,
                countersignature_message(entry.signature),
            ):
                raise CounterSignatureInvalid(
                    f"epoch {entry.epoch}'s counter-signature does not verify under the"
                    " operator key"
                )
            return
        _log.warning("epoch %d lacks the counter-signature: completing it", entry.epoch)
        counter = self._signer.sign(countersignature_message(entry.signature))
        self._witness.put_countersignature(self._namespace, entry.epoch, counter)

    def _artifact(
        self,
        epoch: int,
        *,
        now: int,
        previous: FleetKeyArtifact | None,
        previous_digest: bytes | None,
        fleets: Sequence[PublishedFleet],
        decommissioned: Sequence[bytes],
    ) -> FleetKeyArtifact:
        ids = [f.fleet_id for f in fleets]
        if len(set(ids)) != len(ids):
            raise InvalidParameter("a fleet is listed twice")
        gone = set(previous.decommissioned if previous is not None else ()) | {
            bytes(d) for d in decommissioned
        }
        if set(ids) & gone:
            raise InvalidParameter("a decommissioned fleet cannot be listed (now or later)")
        if previous is not None:
            dropped = [
                f.fleet_id
                for f in previous.fleets
                if f.fleet_id not in ids and f.fleet_id not in gone
            ]
            if dropped:
                raise InvalidParameter(
                    f"fleet {dropped[0].hex()[:16]} of epoch {previous.epoch} is neither"
                    " listed nor decommissioned"
                )
        entries = tuple(self._entry(f, now, previous) for f in fleets)
        return FleetKeyArtifact(
            namespace=self._namespace,
            epoch=epoch,
            issued_at=now,
            previous_digest=previous_digest,
            fleets=entries,
            decommissioned=tuple(sorted(gone)),
        )

    def _entry(
        self, fleet: PublishedFleet, now: int, previous: FleetKeyArtifact | None
    ) -> FleetEntry:
        before = previous.entry_for(fleet.fleet_id) if previous is not None else None
        if fleet.not_before is not None and fleet.not_after is not None:
            window = (fleet.not_before, fleet.not_after)
        elif before is not None:
            window = (before.not_before, before.not_after)
        else:
            window = (now, now + DEFAULT_VALIDITY_S)
        evidence = fleet.evidence_digest
        if evidence is None and fleet.evidence_dir is not None:
            if self._evidence_digest is None:
                raise InvalidParameter(
                    "evidence_dir given but the publisher has no evidence_digest"
                )
            evidence = self._evidence_digest(fleet.evidence_dir)
        keys = fleet.keys
        return FleetEntry(
            fleet_id=keys.fleet_id,
            status=fleet.status,
            ake_public_key=keys.ake_public_key,
            enc_public_key=keys.enc_public_key,
            sig_public_key=keys.sig_public_key,
            not_before=window[0],
            not_after=window[1],
            regions=fleet.regions,
            evidence_digest=evidence,
        )

    def _assemble(self, entry: AuditEntry, counter: bytes, info: WitnessInfo) -> bytes:
        note = self._witness.checkpoint()
        try:
            body = verify_checkpoint(note, info.log_key)
        except (VerificationError, DecodeError):
            raise InclusionProofInvalid(
                "the witness's checkpoint is not signed by its log key"
            ) from None
        if body.tree_size <= entry.leaf_index:
            raise InclusionProofInvalid("the witness's checkpoint does not cover the new entry")
        proof = self._witness.inclusion_proof(entry.leaf_index, body.tree_size)
        evidence = InclusionEvidence(entry.leaf_index, body.tree_size, proof.proof, note)
        return bundle_from_audit(entry, counter, evidence).to_bytes()

    def _consistency(self, first: int, second: int) -> Sequence[bytes]:
        return self._witness.consistency_proof(first, second).proof

    @staticmethod
    def _install(
        client: FleetClient, fleet_id: bytes | None, epoch: int, bundle: bytes
    ) -> InstallReport:
        try:
            current = client.install_bundle(epoch, bundle)
        except VaultError as exc:
            _log.warning("installing epoch %d failed: %s", epoch, type(exc).__name__)
            return InstallReport(fleet_id, None, f"{type(exc).__name__}: {exc}")
        return InstallReport(fleet_id, current)
