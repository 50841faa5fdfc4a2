"""The client's verification of a validation bundle (ADR 0010, "Client verification").

:meth:`BundleVerifier.verify` parses the bundle (:class:`BundleFormatError` if it does
not parse), then runs the checks **in this order**, each failure its own class of
:mod:`hsmvault.transparency.errors`:

1. :class:`ArtifactDigestMismatch` — SHA-256 of the carried artifact bytes is the digest
   the witness signed;
2. :class:`UnknownWitnessKey` (key id not pinned) / :class:`WitnessKeyNotYetValid`
   (timestamp before the pinned key's ``not_before``) / :class:`WitnessSignatureInvalid`
   (Ed25519 over the Plexi ``SignatureMessage``);
3. :class:`CounterSignatureInvalid` — no pinned operator key verifies the counter-signature;
   *the artifact is parsed here, after it is authenticated* (BundleFormatError if the
   witness signed bytes that are not a valid artifact);
4. :class:`NamespaceMismatch` — the signed namespace and the artifact's must both be the
   policy's;
5. :class:`EpochRollback` — the artifact's epoch must equal the signed one, and the epoch
   must not be below the highest accepted before (the same epoch again is fine);
6. :class:`StaleBundle` — ``now - max_age <= timestamp <= now + max_skew``;
7. :class:`FleetKeyMismatch` — the session's fleet is listed in ``fleets`` (not absent,
   not ``decommissioned``), ``now`` is in ``[not_before, not_after]``, and the fleet
   signature over ``fleet_session_message(fleet_id, request, bundle)`` verifies under the
   entry's ``sig`` key;
8. log evidence, when the policy pins a ``log_key``: :class:`InclusionProofInvalid` (no
   evidence while ``require_inclusion``; the note is not signed by the log key; the
   checkpoint's size is not the evidence's; the recomputed leaf is not included) then
   :class:`CheckpointInconsistent` against the last checkpoint stored for the namespace:
   another origin, a smaller tree, the same size with another root (split view), or a
   larger tree without a valid RFC 9162 consistency proof from ``consistency_fetcher``
   (no fetcher: refused — fail closed). A smaller tree is refused rather than proven to
   be a prefix: the client's view of the log never moves back, so operators must not
   serve one epoch with older evidence after newer.

Only when all pass is the trust store updated: the highest epoch (``max`` of stored and
new) and, when step 8 ran, the new checkpoint. Any failure leaves the store untouched.
The verifier also keeps, in memory, the artifact of the last bundle that passed
(:attr:`BundleVerifier.last_artifact`): the fleet directory the SDK consults to move a
user off a retiring fleet (ADR 0013).
Without a ``log_key``, step 8 is skipped entirely (inclusion evidence is ignored).

The verifier holds a lock for a whole verification (including the fetcher call), so
concurrent sessions cannot interleave their load-check-store sequences. Exceptions raised
by the fetcher itself (e.g. :class:`~hsmvault.errors.Unavailable`) propagate unchanged;
nothing is stored then either. Time comes from ``clock`` (seconds, like ``time.time``).
"""

from __future__ import annotations

import hmac
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from hsmvault.client.fleet_trust import verify_fleet_signature
from hsmvault.client.trust_store import NamespaceTrust, StoredCheckpoint, TrustStore
from hsmvault.errors import DecodeError, InvalidParameter, VerificationError
from hsmvault.fleet.fleet_keys import FleetPublicKeys
from hsmvault.transparency import merkle
from hsmvault.transparency.artifact import FleetKeyArtifact, check_namespace
from hsmvault.transparency.bundle import MAX_PROOF_LEN, ValidationBundle, witness_key_id
from hsmvault.transparency.checkpoint import parse_checkpoint
from hsmvault.transparency.ed25519 import ed25519_verifies
from hsmvault.transparency.errors import (
    ArtifactDigestMismatch,
    CheckpointInconsistent,
    CounterSignatureInvalid,
    EpochRollback,
    FleetKeyMismatch,
    InclusionProofInvalid,
    NamespaceMismatch,
    StaleBundle,
    UnknownWitnessKey,
    WitnessKeyNotYetValid,
    WitnessSignatureInvalid,
)
from hsmvault.transparency.signed_note import Verifier, open_note

__all__ = [
    "DEFAULT_MAX_AGE_S",
    "DEFAULT_MAX_SKEW_S",
    "BundleFleetTrust",
    "BundleVerifier",
    "ConsistencyFetcher",
    "PinnedWitnessKey",
    "TrustPolicy",
]

DEFAULT_MAX_AGE_S: Final = 30 * 24 * 3600
DEFAULT_MAX_SKEW_S: Final = 300
_U64: Final = (1 << 64) - 1

#: ``fetch(old_size, new_size)`` -> the RFC 9162 consistency proof between the witness
#: log's trees of those sizes (32-byte hashes), e.g. ``GET /proofs/consistency``.
ConsistencyFetcher = Callable[[int, int], Sequence[bytes]]


@dataclass(frozen=True)
class PinnedWitnessKey:
    """A witness signing key the app pins: the raw Ed25519 public key and the first
    timestamp (milliseconds) it may sign at. Its id is :func:`witness_key_id`."""

    public_key: bytes
    not_before_ms: int

    def __post_init__(self) -> None:
        if type(self.public_key) is not bytes or len(self.public_key) != 32:
            raise InvalidParameter("witness public key must be 32 bytes")
        if type(self.not_before_ms) is not int or not 0 <= self.not_before_ms <= _U64:
            raise InvalidParameter("not_before_ms must fit in 64 bits")

    @property
    def key_id(self) -> bytes:
        return witness_key_id(self.public_key)


@dataclass(frozen=True)
class TrustPolicy:
    """What the app pins: its namespace, the witness keys (several during a rotation),
    the operator keys, the freshness window (seconds), and optionally the witness log's
    note key. ``require_inclusion`` refuses bundles without log evidence (needs
    ``log_key``). Construction raises InvalidParameter on a bad value."""

    namespace: str
    witness_keys: tuple[PinnedWitnessKey, ...]
    operator_public_keys: tuple[bytes, ...]
    max_age_s: int = DEFAULT_MAX_AGE_S
    max_skew_s: int = DEFAULT_MAX_SKEW_S
    log_key: Verifier | None = None
    require_inclusion: bool = False

    def __post_init__(self) -> None:
        check_namespace(self.namespace)
        object.__setattr__(self, "witness_keys", tuple(self.witness_keys))
        object.__setattr__(self, "operator_public_keys", tuple(self.operator_public_keys))
        if not self.witness_keys or not all(
            isinstance(k, PinnedWitnessKey) for k in self.witness_keys
        ):
            raise InvalidParameter("pin at least one witness key")
        if len({k.key_id for k in self.witness_keys}) != len(self.witness_keys):
            raise InvalidParameter("a witness key is pinned twice")
        if not self.operator_public_keys or not all(
            type(k) is bytes and len(k) == 32 for k in self.operator_public_keys
        ):
            raise InvalidParameter("pin at least one 32-byte operator key")
        for value, what in ((self.max_age_s, "max_age_s"), (self.max_skew_s, "max_skew_s")):
            if type(value) is not int or value < 0:
                raise InvalidParameter(f"{what} must be a non-negative integer")
        if self.log_key is not None and not isinstance(self.log_key, Verifier):
            raise InvalidParameter("log_key must be a signed-note Verifier")
        if self.require_inclusion and self.log_key is None:
            raise InvalidParameter("require_inclusion needs a pinned log key")


@dataclass(frozen=True)
class _Session:
    fleet_id: bytes
    request: bytes
    fleet_signature: bytes


class BundleVerifier:
    """Verifies validation bundles under a :class:`TrustPolicy`, remembering accepted
    epochs and checkpoints in a :class:`~hsmvault.client.trust_store.TrustStore`."""

    def __init__(
        self,
        policy: TrustPolicy,
        store: TrustStore,
        clock: Callable[[], float] = time.time,
        consistency_fetcher: ConsistencyFetcher | None = None,
    ) -> None:
        if not isinstance(policy, TrustPolicy):
            raise InvalidParameter("policy must be a TrustPolicy")
        self._policy = policy
        self._store = store
        self._clock = clock
        self._fetch = consistency_fetcher
        self._witness_keys = {k.key_id: k for k in policy.witness_keys}
        self._lock = threading.Lock()
        self._last_artifact: FleetKeyArtifact | None = None

    @property
    def policy(self) -> TrustPolicy:
        return self._policy

    @property
    def last_artifact(self) -> FleetKeyArtifact | None:
        """The artifact of the last bundle that passed every check (in this process;
        ``None`` before the first): the fleet directory as last verified."""
        with self._lock:
            return self._last_artifact

    def verify(
        self, bundle_bytes: bytes, *, fleet_id: bytes, request: bytes, fleet_signature: bytes
    ) -> FleetPublicKeys:
        """Run checks 1-8 for one session; the fleet keys the session must use.

        ``request`` is the exact request the client sent; ``fleet_signature`` is the one
        in the response. Raises BundleFormatError or the check's own error."""
        session = _Session(fleet_id, request, fleet_signature)
        _, keys = self._run(bundle_bytes, session)
        if keys is None:  # pragma: no cover - _run returns keys whenever given a session
            raise FleetKeyMismatch("no fleet keys")
        return keys

    def verify_bundle_only(self, bundle_bytes: bytes) -> FleetKeyArtifact:
        """Checks 1-6 and 8 (no session: the audit tool); stores like :meth:`verify`."""
        artifact, _ = self._run(bundle_bytes, None)
        return artifact

    # --- the checks -------------------------------------------------------------------

    def _run(
        self, bundle_bytes: bytes, session: _Session | None
    ) -> tuple[FleetKeyArtifact, FleetPublicKeys | None]:
        with self._lock:
            bundle = ValidationBundle.from_bytes(bundle_bytes)
            raw = bytes(bundle_bytes)
            now = float(self._clock())
            policy = self._policy
            witness = bundle.witness

            # 1. the artifact is the one the witness signed
            if not hmac.compare_digest(bundle.artifact_digest(), witness.digest):
                raise ArtifactDigestMismatch("artifact digest is not the signed digest")

            # 2. the witness signature, under a pinned key valid at its timestamp
            key = self._witness_keys.get(witness.key_id)
            if key is None:
                raise UnknownWitnessKey("the witness key is not pinned")
            if witness.timestamp < key.not_before_ms:
                raise WitnessKeyNotYetValid("signature predates the witness key's not_before")
            message = bundle.signature_message().encode()
            if not ed25519_verifies(key.public_key, witness.signature, message):
                raise WitnessSignatureInvalid("witness signature does not verify")

            # 3. the operator's counter-signature
            counter = bundle.countersignature_message()
            if not any(
                ed25519_verifies(k, bundle.operator_signature, counter)
                for k in policy.operator_public_keys
            ):
                raise CounterSignatureInvalid("no pinned operator key verifies the bundle")
            artifact = bundle.parse_artifact()

            # 4. namespace
            if witness.namespace != policy.namespace or artifact.namespace != policy.namespace:
                raise NamespaceMismatch("the bundle is for another namespace")

            # 5. epoch: as signed, and never below the highest accepted
            state = self._store.get(policy.namespace)
            if artifact.epoch != witness.epoch:
                raise EpochRollback("the artifact's epoch is not the signed epoch")
            if state is not None and witness.epoch < state.highest_epoch:
                raise EpochRollback("epoch is below the highest epoch already accepted")

            # 6. freshness
            now_ms = int(now * 1000)
            oldest = now_ms - policy.max_age_s * 1000
            newest = now_ms + policy.max_skew_s * 1000
            if not oldest <= witness.timestamp <= newest:
                raise StaleBundle("the witness timestamp is outside the freshness window")

            # 7. the session's fleet and its signature
            keys = None if session is None else _fleet_keys(artifact, session, raw, now)

            # 8. log evidence
            checkpoint = self._check_log(bundle, state)

            old_checkpoint = None if state is None else state.checkpoint
            highest = witness.epoch if state is None else max(witness.epoch, state.highest_epoch)
            self._store.put(
                policy.namespace,
                NamespaceTrust(highest, checkpoint if checkpoint is not None else old_checkpoint),
            )
            last = self._last_artifact
            if last is None or artifact.epoch >= last.epoch:
                self._last_artifact = artifact
            return artifact, keys

    def _check_log(
        self, bundle: ValidationBundle, state: NamespaceTrust | None
    ) -> StoredCheckpoint | None:
        log_key = self._policy.log_key
        evidence = bundle.inclusion
        if log_key is None:
            return None
        if evidence is None:
            if self._policy.require_inclusion:
                raise InclusionProofInvalid("the bundle carries no inclusion evidence")
            return None
        try:
            opened = open_note(evidence.checkpoint, [log_key])
            body = parse_checkpoint(opened.text)
        except (VerificationError, DecodeError):
            raise InclusionProofInvalid("checkpoint is not signed by the log key") from None
        if body.tree_size != evidence.tree_size:
            raise InclusionProofInvalid("checkpoint size is not the proof's tree size")
        leaf_hash = merkle.hash_leaf(bundle.log_leaf())
        try:
            merkle.verify_inclusion(
                evidence.leaf_index, evidence.tree_size, leaf_hash, evidence.proof, body.root_hash
            )
        except VerificationError:
            raise InclusionProofInvalid("the signature is not in the log") from None
        previous = None if state is None else state.checkpoint
        if previous is not None:
            self._check_consistency(previous, body.origin, body.tree_size, body.root_hash)
        return StoredCheckpoint(body.origin, body.tree_size, body.root_hash, evidence.checkpoint)

    def _check_consistency(
        self, previous: StoredCheckpoint, origin: str, size: int, root: bytes
    ) -> None:
        if origin != previous.origin:
            raise CheckpointInconsistent("checkpoint is from another log")
        if size < previous.tree_size:
            raise CheckpointInconsistent("checkpoint is older than one already seen")
        if size == previous.tree_size:
            if not hmac.compare_digest(root, previous.root_hash):
                raise CheckpointInconsistent("two roots for one tree size (split view)")
            return
        if self._fetch is None:
            raise CheckpointInconsistent("no consistency proof available")
        proof = list(self._fetch(previous.tree_size, size))
        if len(proof) > MAX_PROOF_LEN or not all(
            isinstance(p, bytes) and len(p) == merkle.HASH_SIZE for p in proof
        ):
            raise CheckpointInconsistent("malformed consistency proof")
        try:
            merkle.verify_consistency(previous.tree_size, size, proof, previous.root_hash, root)
        except VerificationError:
            raise CheckpointInconsistent("the log does not extend the last checkpoint") from None


def _fleet_keys(
    artifact: FleetKeyArtifact, session: _Session, bundle_bytes: bytes, now: float
) -> FleetPublicKeys:
    fleet_id = session.fleet_id
    if type(fleet_id) is not bytes or len(fleet_id) != 32:
        raise FleetKeyMismatch("fleet id must be 32 bytes")
    if type(session.request) is not bytes:
        raise FleetKeyMismatch("request must be bytes")
    if artifact.is_decommissioned(fleet_id):
        raise FleetKeyMismatch("the session's fleet is decommissioned")
    entry = artifact.entry_for(fleet_id)
    if entry is None:
        raise FleetKeyMismatch("the session's fleet is not in the artifact")
    if not entry.valid_at(now):
        raise FleetKeyMismatch("the session's fleet is outside its validity window")
    keys = FleetPublicKeys(
        fleet_id=entry.fleet_id,
        ake_public_key=entry.ake_public_key,
        enc_public_key=entry.enc_public_key,
        sig_public_key=entry.sig_public_key,
    )
    verify_fleet_signature(keys, session.request, bundle_bytes, session.fleet_signature)
    return keys


class BundleFleetTrust:
    """The bundle mode of :class:`hsmvault.client.fleet_trust.FleetTrust`: every
    session's keys come from a bundle that passes :meth:`BundleVerifier.verify`."""

    def __init__(self, verifier: BundleVerifier) -> None:
        if not isinstance(verifier, BundleVerifier):
            raise TypeError("BundleFleetTrust needs a BundleVerifier")
        self._verifier = verifier

    @property
    def verifier(self) -> BundleVerifier:
        return self._verifier

    @property
    def last_artifact(self) -> FleetKeyArtifact | None:
        """The fleet directory of the last bundle this trust verified (see
        :attr:`BundleVerifier.last_artifact`)."""
        return self._verifier.last_artifact

    def session_keys(
        self, fleet_id: bytes, request: bytes, bundle: bytes, fleet_signature: bytes
    ) -> FleetPublicKeys:
        """See ``FleetTrust.session_keys``: all of ADR 0010's checks, in order."""
        return self._verifier.verify(
            bundle, fleet_id=fleet_id, request=request, fleet_signature=fleet_signature
        )

    def __repr__(self) -> str:
        return f"BundleFleetTrust(namespace={self._verifier.policy.namespace!r})"
