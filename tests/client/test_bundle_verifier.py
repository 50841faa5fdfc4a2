"""The client's bundle verification (ADR 0010): every check, its order, and that nothing
is stored unless all pass. Witness, operator, log and fleets are the in-test kit's."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsmvault.client.bundle_verifier import (
    DEFAULT_MAX_AGE_S,
    DEFAULT_MAX_SKEW_S,
    BundleFleetTrust,
    BundleVerifier,
    PinnedWitnessKey,
    TrustPolicy,
)
from hsmvault.client.fleet_trust import FleetTrust
from hsmvault.client.trust_store import (
    FileTrustStore,
    MemoryTrustStore,
    NamespaceTrust,
    TrustStore,
)
from hsmvault.errors import InvalidParameter, Unavailable, VerificationError
from hsmvault.fleet.fleet_keys import FleetPublicKeys
from hsmvault.transparency.artifact import FleetKeyArtifact
from hsmvault.transparency.bundle import InclusionEvidence, ValidationBundle
from hsmvault.transparency.errors import (
    ArtifactDigestMismatch,
    BundleError,
    BundleFormatError,
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
from hsmvault.transparency.signed_note import Signer
from tests.transparency.bundle_kit import (
    NAMESPACE,
    T0,
    YEAR,
    TestFleet,
    TestLog,
    TestOperator,
    TestWitness,
    artifact,
    publish,
    seed,
)

_A, _B, _C = TestFleet("a"), TestFleet("b"), TestFleet("c")
_REQUEST = b"KE1 bytes with a fresh client nonce"


def _flip(data: bytes, index: int = 0, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[index] ^= 1 << bit
    return bytes(out)


@dataclass
class World:
    """One witness, one operator, fleets A and B, a client policy and store."""

    witness: TestWitness = field(default_factory=TestWitness)
    operator: TestOperator = field(default_factory=TestOperator)
    store: TrustStore = field(default_factory=MemoryTrustStore)
    now: float = float(T0)
    fetches: list[tuple[int, int]] = field(default_factory=list)
    fetch_log: TestLog | None = None  # which log answers consistency requests
    saved: dict[str, ValidationBundle] = field(default_factory=dict)

    def policy(self, **changes: object) -> TrustPolicy:
        base = TrustPolicy(
            namespace=NAMESPACE,
            witness_keys=(PinnedWitnessKey(self.witness.public_key("k1"), 0),),
            operator_public_keys=(self.operator.public_key,),
            log_key=self.witness.log_verifier,
        )
        return replace(base, **changes)  # type: ignore[arg-type]

    def fetch(self, old: int, new: int) -> Sequence[bytes]:
        self.fetches.append((old, new))
        log = self.fetch_log if self.fetch_log is not None else self.witness.log
        return log.consistency(old, new)

    def verifier(self, **changes: object) -> BundleVerifier:
        return BundleVerifier(
            self.policy(**changes),
            self.store,
            clock=lambda: self.now,
            consistency_fetcher=self.fetch,
        )

    def directory(self, epoch: int = 1, **kw: object) -> FleetKeyArtifact:
        return artifact(epoch, (_A.entry(), _B.entry(status="retiring")), **kw)  # type: ignore[arg-type]

    def bundle(self, art: FleetKeyArtifact | None = None, **kw: object) -> ValidationBundle:
        return publish(
            art if art is not None else self.directory(),
            self.witness,
            self.operator,
            **kw,  # type: ignore[arg-type]
        )


def _session(
    verifier: BundleVerifier,
    bundle: ValidationBundle | bytes,
    fleet: TestFleet = _A,
    *,
    request: bytes = _REQUEST,
    signed_request: bytes | None = None,
    signer: TestFleet | None = None,
) -> FleetPublicKeys:
    raw = bundle if isinstance(bundle, bytes) else bundle.to_bytes()
    sig = (signer or fleet).sign_session(request if signed_request is None else signed_request, raw)
    return verifier.verify(raw, fleet_id=fleet.fleet_id, request=request, fleet_signature=sig)


# --- acceptance ------------------------------------------------------------------------


def test_valid_bundle_gives_the_artifacts_keys_and_is_stored() -> None:
    w = World()
    bundle = w.bundle()
    keys = _session(w.verifier(), bundle)
    assert keys == FleetPublicKeys(
        fleet_id=_A.fleet_id,
        ake_public_key=_A.ake_public_key,
        enc_public_key=_A.enc_public_key,
        sig_public_key=_A.sig_public_key,
    )
    state = w.store.get(NAMESPACE)
    assert state is not None
    assert state.highest_epoch == 1
    assert state.checkpoint is not None
    assert state.checkpoint.tree_size == 1
    assert state.checkpoint.root_hash == w.witness.log.root()
    assert state.checkpoint.note == w.witness.log.checkpoint_note()
    # the retiring fleet is still served
    assert _session(w.verifier(), bundle, _B).fleet_id == _B.fleet_id


def test_same_epoch_again_and_newer_epoch_accepted() -> None:
    w = World()
    first = w.bundle()
    v = w.verifier()
    _session(v, first)
    _session(v, first)
    second = w.bundle(w.directory(2))
    _session(v, second)
    state = w.store.get(NAMESPACE)
    assert state is not None
    assert state.highest_epoch == 2
    assert state.checkpoint is not None
    assert state.checkpoint.tree_size == 2
    assert w.fetches == [(1, 2)]


def test_bundle_fleet_trust_is_a_fleet_trust() -> None:
    w = World()
    trust: FleetTrust = BundleFleetTrust(w.verifier())
    raw = w.bundle().to_bytes()
    keys = trust.session_keys(_A.fleet_id, _REQUEST, raw, _A.sign_session(_REQUEST, raw))
    assert keys.fleet_id == _A.fleet_id
    assert "BundleFleetTrust" in repr(trust)
    with pytest.raises(FleetKeyMismatch):
        trust.session_keys(_A.fleet_id, b"other", raw, _A.sign_session(_REQUEST, raw))


def test_verify_bundle_only_returns_the_artifact() -> None:
    w = World()
    art = w.directory(3)
    assert w.verifier().verify_bundle_only(w.bundle(art).to_bytes()) == art
    state = w.store.get(NAMESPACE)
    assert state is not None
    assert state.highest_epoch == 3


def test_without_log_key_inclusion_is_ignored() -> None:
    w = World()
    bundle = w.bundle()
    assert bundle.inclusion is not None
    broken = replace(bundle, inclusion=replace(bundle.inclusion, proof=(bytes(32),)))
    _session(w.verifier(log_key=None), broken)
    state = w.store.get(NAMESPACE)
    assert state == NamespaceTrust(1, None)
    _session(w.verifier(log_key=None), w.bundle(inclusion=False))


def test_bundle_without_inclusion_accepted_unless_required() -> None:
    w = World()
    _session(w.verifier(), w.bundle(inclusion=False))
    assert w.store.get(NAMESPACE) == NamespaceTrust(1, None)
    with pytest.raises(InclusionProofInvalid):
        _session(w.verifier(require_inclusion=True), w.bundle(inclusion=False))


# --- every refusal, with its own class, and nothing stored ------------------------------


@dataclass
class Case:
    name: str
    error: type[Exception]
    run: Callable[[World], None]
    prepare: Callable[[World], None] = lambda w: None


def _accept(w: World, epoch: int) -> None:
    _session(w.verifier(), w.bundle(w.directory(epoch)))


def _tampered_artifact(w: World) -> None:
    b = w.bundle()
    _session(w.verifier(), replace(b, artifact=_flip(b.artifact, 40, 3)))


def _tampered_witness_sig(w: World) -> None:
    b = w.bundle()
    bad = replace(b.witness, signature=_flip(b.witness.signature, 10))
    # keep the counter-signature valid over the tampered bytes: only step 2 may fail
    _session(
        w.verifier(),
        replace(b, witness=bad, operator_signature=w.operator.countersign(bad.signature)),
    )


def _tampered_timestamp(w: World) -> None:
    b = w.bundle()
    _session(
        w.verifier(), replace(b, witness=replace(b.witness, timestamp=b.witness.timestamp + 1))
    )


def _tampered_counter(w: World) -> None:
    b = w.bundle()
    _session(w.verifier(), replace(b, operator_signature=_flip(b.operator_signature, 5)))


def _other_operator(w: World) -> None:
    b = w.bundle()
    other = TestOperator("impostor")
    _session(w.verifier(), replace(b, operator_signature=other.countersign(b.witness.signature)))


def _unknown_witness_key(w: World) -> None:
    _session(w.verifier(), w.bundle(key="k2"))


def _key_not_yet_valid(w: World) -> None:
    keys = (
        PinnedWitnessKey(w.witness.public_key("k1"), 0),
        PinnedWitnessKey(w.witness.public_key("k2"), T0 * 1000 + 1),
    )
    _session(w.verifier(witness_keys=keys), w.bundle(key="k2"))


def _signed_other_namespace(w: World) -> None:
    _session(w.verifier(), w.bundle(signed_namespace="other/ns"))


def _artifact_other_namespace(w: World) -> None:
    # the witness signed NAMESPACE, but the artifact names another one
    art = artifact(1, (_A.entry(),), namespace="other/ns")
    _session(w.verifier(), w.bundle(art, signed_namespace=NAMESPACE))


def _policy_other_namespace(w: World) -> None:
    _session(w.verifier(namespace="other/ns"), w.bundle())


def _rollback(w: World) -> None:
    _session(w.verifier(), w.bundle(w.directory(4)))


def _artifact_epoch_not_signed_epoch(w: World) -> None:
    _session(w.verifier(), w.bundle(w.directory(9), signed_epoch=10))


def _stale(w: World) -> None:
    ts = (T0 - DEFAULT_MAX_AGE_S) * 1000 - 1
    _session(w.verifier(), w.bundle(timestamp_ms=ts))


def _future(w: World) -> None:
    ts = (T0 + DEFAULT_MAX_SKEW_S) * 1000 + 1
    _session(w.verifier(), w.bundle(timestamp_ms=ts))


def _fleet_absent(w: World) -> None:
    _session(w.verifier(), w.bundle(), _C)


def _fleet_decommissioned(w: World) -> None:
    art = artifact(1, (_A.entry(),), decommissioned=(_C.fleet_id,))
    _session(w.verifier(), w.bundle(art), _C)


def _fleet_not_yet_valid(w: World) -> None:
    art = artifact(1, (_A.entry(not_before=T0 + 1, not_after=T0 + YEAR),))
    _session(w.verifier(), w.bundle(art))


def _fleet_expired(w: World) -> None:
    art = artifact(1, (_A.entry(not_before=T0 - YEAR, not_after=T0 - 1),))
    _session(w.verifier(), w.bundle(art))


def _wrong_fleet_signature(w: World) -> None:
    _session(w.verifier(), w.bundle(), _A, signer=_B)


def _replayed_signature(w: World) -> None:
    _session(w.verifier(), w.bundle(), request=_REQUEST, signed_request=b"an older KE1")


def _signature_over_other_bundle(w: World) -> None:
    b = w.bundle()
    other = w.bundle(w.directory(1, issued_at=T0 - 5)).to_bytes()
    sig = _A.sign_session(_REQUEST, other)
    w.verifier().verify(b.to_bytes(), fleet_id=_A.fleet_id, request=_REQUEST, fleet_signature=sig)


def _short_fleet_signature(w: World) -> None:
    w.verifier().verify(
        w.bundle().to_bytes(), fleet_id=_A.fleet_id, request=_REQUEST, fleet_signature=bytes(63)
    )


def _bad_inclusion_proof(w: World) -> None:
    w.witness.log.append(b"earlier leaf")
    b = w.bundle()
    assert b.inclusion is not None
    proof = (_flip(b.inclusion.proof[0]),)
    _session(w.verifier(), replace(b, inclusion=replace(b.inclusion, proof=proof)))


def _wrong_leaf_index(w: World) -> None:
    w.witness.log.append(b"earlier leaf")
    b = w.bundle()
    assert b.inclusion is not None
    ev = InclusionEvidence(0, 2, tuple(w.witness.log.inclusion(0)), b.inclusion.checkpoint)
    _session(w.verifier(), replace(b, inclusion=ev))


def _checkpoint_by_other_key(w: World) -> None:
    b = w.bundle()
    assert b.inclusion is not None
    rogue = TestLog(w.witness.name, Signer(w.witness.name, seed("rogue log key")))
    rogue.leaf_hashes = list(w.witness.log.leaf_hashes)
    _session(
        w.verifier(), replace(b, inclusion=replace(b.inclusion, checkpoint=rogue.checkpoint_note()))
    )


def _checkpoint_size_mismatch(w: World) -> None:
    w.witness.log.append(b"earlier leaf")
    b = w.bundle()
    assert b.inclusion is not None
    note = w.witness.log.checkpoint_note(1)
    _session(w.verifier(), replace(b, inclusion=replace(b.inclusion, checkpoint=note)))


def _evidence_for_another_leaf(w: World) -> None:
    b = w.bundle()
    other = w.bundle(w.directory(1, issued_at=T0 - 7))  # logged after b
    assert other.inclusion is not None
    _session(w.verifier(), replace(b, inclusion=other.inclusion))


def _split_view_same_size(w: World) -> None:
    # the client saw the honest log at size 1; a fork of size 1 logged another leaf
    fork = TestLog(w.witness.name, w.witness.log_signer)
    honest, w.witness.log = w.witness.log, fork
    try:
        b = w.bundle(w.directory(1, issued_at=T0 - 3))  # epoch 1 again, another leaf
        assert fork.root() != honest.root()
        assert len(fork.leaf_hashes) == len(honest.leaf_hashes) == 1
        _session(w.verifier(), b)
    finally:
        w.witness.log = honest


def _split_view_not_extending(w: World) -> None:
    fork = TestLog(w.witness.name, w.witness.log_signer)
    fork.append(b"a different first entry")
    honest, w.witness.log = w.witness.log, fork
    try:
        _session(w.verifier(), w.bundle(w.directory(5)))  # fork size 2 > stored 1
    finally:
        w.witness.log = honest


def _prepare_newer_evidence_seen(w: World) -> None:
    old = w.bundle(w.directory(5))  # logged at index 0, evidence at tree size 1
    assert old.inclusion is not None
    for i in range(3):
        w.witness.log.append(b"later entry %d" % i)
    index = old.inclusion.leaf_index
    newer = InclusionEvidence(
        index, 4, tuple(w.witness.log.inclusion(index)), w.witness.log.checkpoint_note()
    )
    _session(w.verifier(), replace(old, inclusion=newer))  # the client saw tree size 4
    w.saved["old"] = old


def _split_view_honest_proof(w: World) -> None:
    w.witness.log.append(b"honest second entry")
    w.fetch_log = w.witness.log  # the honest log (also size 2) answers with a real proof
    assert len(w.fetch_log.consistency(1, 2)) == 1
    _split_view_not_extending(w)


def _older_checkpoint(w: World) -> None:
    _session(w.verifier(), w.saved["old"])  # same epoch, but evidence at tree size 1


def _checkpoint_of_another_log(w: World) -> None:
    b = w.bundle(w.directory(5))
    other = TestLog("another.origin", w.witness.log_signer)
    other.leaf_hashes = list(w.witness.log.leaf_hashes)
    assert b.inclusion is not None
    n = len(other.leaf_hashes)
    ev = replace(b.inclusion, checkpoint=other.checkpoint_note(n))
    _session(w.verifier(), replace(b, inclusion=ev))


def _no_fetcher(w: World) -> None:
    v = BundleVerifier(w.policy(), w.store, clock=lambda: w.now)
    _session(v, w.bundle(w.directory(5)))


def _garbage_consistency_proof(w: World) -> None:
    v = BundleVerifier(
        w.policy(), w.store, clock=lambda: w.now, consistency_fetcher=lambda a, b: [b"x"]
    )
    _session(v, w.bundle(w.directory(5)))


def _prepare_seen_epoch_5(w: World) -> None:
    _accept(w, 5)


_CASES = [
    Case("artifact bit flip", ArtifactDigestMismatch, _tampered_artifact),
    Case("witness signature bit flip", WitnessSignatureInvalid, _tampered_witness_sig),
    Case("signed field changed", WitnessSignatureInvalid, _tampered_timestamp),
    Case("counter-signature bit flip", CounterSignatureInvalid, _tampered_counter),
    Case("counter-signed by another operator", CounterSignatureInvalid, _other_operator),
    Case("unknown witness key", UnknownWitnessKey, _unknown_witness_key),
    Case("witness key not yet valid", WitnessKeyNotYetValid, _key_not_yet_valid),
    Case("signed namespace", NamespaceMismatch, _signed_other_namespace),
    Case("artifact namespace", NamespaceMismatch, _artifact_other_namespace),
    Case("policy namespace", NamespaceMismatch, _policy_other_namespace),
    Case("rollback", EpochRollback, _rollback, _prepare_seen_epoch_5),
    Case("artifact epoch != signed", EpochRollback, _artifact_epoch_not_signed_epoch),
    Case("stale", StaleBundle, _stale),
    Case("future", StaleBundle, _future),
    Case("fleet absent", FleetKeyMismatch, _fleet_absent),
    Case("fleet decommissioned", FleetKeyMismatch, _fleet_decommissioned),
    Case("fleet not yet valid", FleetKeyMismatch, _fleet_not_yet_valid),
    Case("fleet expired", FleetKeyMismatch, _fleet_expired),
    Case("wrong fleet signature", FleetKeyMismatch, _wrong_fleet_signature),
    Case("replayed fleet signature", FleetKeyMismatch, _replayed_signature),
    Case("fleet signed another bundle", FleetKeyMismatch, _signature_over_other_bundle),
    Case("short fleet signature", FleetKeyMismatch, _short_fleet_signature),
    Case("inclusion proof bit flip", InclusionProofInvalid, _bad_inclusion_proof),
    Case("inclusion wrong leaf", InclusionProofInvalid, _wrong_leaf_index),
    Case("checkpoint by another key", InclusionProofInvalid, _checkpoint_by_other_key),
    Case("checkpoint size mismatch", InclusionProofInvalid, _checkpoint_size_mismatch),
    Case("evidence of another leaf", InclusionProofInvalid, _evidence_for_another_leaf),
    Case(
        "split view, same size",
        CheckpointInconsistent,
        _split_view_same_size,
        lambda w: _accept(w, 1),
    ),
    Case(
        "split view, fork grows",
        CheckpointInconsistent,
        _split_view_not_extending,
        lambda w: _accept(w, 1),
    ),
    Case(
        "split view, honest proof",
        CheckpointInconsistent,
        _split_view_honest_proof,
        lambda w: _accept(w, 1),
    ),
    Case(
        "older checkpoint", CheckpointInconsistent, _older_checkpoint, _prepare_newer_evidence_seen
    ),
    Case(
        "another log", CheckpointInconsistent, _checkpoint_of_another_log, lambda w: _accept(w, 1)
    ),
    Case("no fetcher", CheckpointInconsistent, _no_fetcher, lambda w: _accept(w, 1)),
    Case(
        "garbage consistency proof",
        CheckpointInconsistent,
        _garbage_consistency_proof,
        lambda w: _accept(w, 1),
    ),
]


@pytest.mark.parametrize("case", _CASES, ids=[c.name for c in _CASES])
def test_refusal_has_its_own_class_and_stores_nothing(case: Case) -> None:
    w = World()
    case.prepare(w)
    before = w.store.get(NAMESPACE)
    with pytest.raises(case.error) as info:
        case.run(w)
    assert type(info.value) is case.error
    assert isinstance(info.value, BundleError)
    assert w.store.get(NAMESPACE) == before


def test_consistency_fetch_errors_propagate_and_store_nothing() -> None:
    w = World()
    _accept(w, 1)
    before = w.store.get(NAMESPACE)

    def down(old: int, new: int) -> Sequence[bytes]:
        raise Unavailable("witness unreachable")

    v = BundleVerifier(w.policy(), w.store, clock=lambda: w.now, consistency_fetcher=down)
    with pytest.raises(Unavailable):
        _session(v, w.bundle(w.directory(2)))
    assert w.store.get(NAMESPACE) == before


def test_consistent_growth_over_many_epochs() -> None:
    w = World()
    v = w.verifier()
    for epoch in range(1, 6):
        w.witness.sign("noise/ns", epoch, bytes(32), T0 * 1000)  # other namespaces' leaves
        _session(v, w.bundle(w.directory(epoch)))
    state = w.store.get(NAMESPACE)
    assert state is not None
    assert state.checkpoint is not None
    assert state.checkpoint.tree_size == 10
    assert w.fetches == [(2, 4), (4, 6), (6, 8), (8, 10)]


# --- rotation of the witness key ----------------------------------------------------------


def test_witness_key_rotation() -> None:
    w = World()
    switch = T0 * 1000 + 3_600_000
    keys = (
        PinnedWitnessKey(w.witness.public_key("k1"), 0),
        PinnedWitnessKey(w.witness.public_key("k2"), switch),
    )
    v = w.verifier(witness_keys=keys)
    _session(v, w.bundle(w.directory(1), key="k1", timestamp_ms=T0 * 1000))  # old key, before
    with pytest.raises(WitnessKeyNotYetValid):
        _session(v, w.bundle(w.directory(2), key="k2", timestamp_ms=switch - 1))
    w.now = T0 + 7200
    _session(v, w.bundle(w.directory(2), key="k2", timestamp_ms=switch))  # new key, from its time
    state = w.store.get(NAMESPACE)
    assert state is not None
    assert state.highest_epoch == 2


# --- rollback across a restart ----------------------------------------------------------


def test_rollback_refused_after_restart(tmp_path: Path) -> None:
    path = tmp_path / "trust.json"
    w = World(store=FileTrustStore(path))
    old = w.bundle(w.directory(1))
    new = w.bundle(w.directory(2))
    _session(w.verifier(), old)
    _session(w.verifier(), new)
    # a new process: fresh verifier and store object over the same file
    restarted = World(witness=w.witness, operator=w.operator, store=FileTrustStore(path))
    before = path.read_bytes()
    with pytest.raises(EpochRollback):
        _session(restarted.verifier(), old)
    assert path.read_bytes() == before
    _session(restarted.verifier(), new)  # the same epoch is still fine


# --- freshness boundaries ---------------------------------------------------------------


def test_freshness_window_is_inclusive() -> None:
    w = World()
    v = w.verifier()
    _session(v, w.bundle(timestamp_ms=(T0 - DEFAULT_MAX_AGE_S) * 1000))
    _session(v, w.bundle(timestamp_ms=(T0 + DEFAULT_MAX_SKEW_S) * 1000))
    short = w.verifier(max_age_s=10, max_skew_s=0)
    with pytest.raises(StaleBundle):
        _session(short, w.bundle(timestamp_ms=(T0 - 11) * 1000))
    with pytest.raises(StaleBundle):
        _session(short, w.bundle(timestamp_ms=T0 * 1000 + 1))


# --- order of the checks ----------------------------------------------------------------


def test_checks_run_in_adr_order() -> None:
    w = World()
    _accept(w, 5)
    stale = (T0 - DEFAULT_MAX_AGE_S - 1) * 1000
    b = w.bundle(w.directory(3), timestamp_ms=stale, signed_namespace="other/ns", key="k2")
    v = w.verifier()
    flipped = replace(b, artifact=_flip(b.artifact, 30), operator_signature=bytes(64))
    with pytest.raises(ArtifactDigestMismatch):  # 1 before 2, 3, 4, 5, 6, 7
        _session(v, flipped, _C)
    with pytest.raises(UnknownWitnessKey):  # 2 before 3
        _session(v, replace(b, operator_signature=bytes(64)), _C)
    pinned = (
        PinnedWitnessKey(w.witness.public_key("k1"), 0),
        PinnedWitnessKey(w.witness.public_key("k2"), 0),
    )
    v2 = w.verifier(witness_keys=pinned)
    with pytest.raises(CounterSignatureInvalid):  # 3 before 4
        _session(v2, replace(b, operator_signature=bytes(64)), _C)
    with pytest.raises(NamespaceMismatch):  # 4 before 5 (rollback) and 6 (stale)
        _session(v2, b, _C)
    b5 = w.bundle(w.directory(3), timestamp_ms=stale)
    with pytest.raises(EpochRollback):  # 5 before 6
        _session(v, b5, _C)
    b6 = w.bundle(w.directory(6), timestamp_ms=stale)
    with pytest.raises(StaleBundle):  # 6 before 7
        _session(v, b6, _C)
    b7 = w.bundle(w.directory(6))
    assert b7.inclusion is not None
    b7 = replace(b7, inclusion=replace(b7.inclusion, proof=(bytes(32),)))
    with pytest.raises(FleetKeyMismatch):  # 7 before 8
        _session(v, b7, _C)
    with pytest.raises(InclusionProofInvalid):
        _session(v, b7, _A)
    state = w.store.get(NAMESPACE)
    assert state is not None
    assert state.highest_epoch == 5


def test_unparseable_input_is_a_format_error() -> None:
    w = World()
    v = w.verifier()
    for raw in (b"", b"{}", b"not json"):
        with pytest.raises(BundleFormatError):
            v.verify(raw, fleet_id=_A.fleet_id, request=_REQUEST, fleet_signature=bytes(64))
    # the witness and operator signed bytes that are not an artifact: refused after step 3
    junk = b'{"not":"an artifact"}'
    b = publish(w.directory(), w.witness, w.operator, artifact_bytes=junk)
    with pytest.raises(BundleFormatError):
        _session(v, b)
    assert w.store.get(NAMESPACE) is None


def test_policy_checks() -> None:
    w = World()
    good = w.policy()
    for changes in (
        {"witness_keys": ()},
        {"operator_public_keys": ()},
        {"operator_public_keys": (b"short",)},
        {"witness_keys": (good.witness_keys[0], good.witness_keys[0])},
        {"namespace": ""},
        {"max_age_s": -1},
        {"max_skew_s": 1.5},
        {"log_key": None, "require_inclusion": True},
    ):
        with pytest.raises(InvalidParameter):
            replace(good, **changes)
    with pytest.raises(InvalidParameter):
        PinnedWitnessKey(b"x" * 31, 0)
    with pytest.raises(InvalidParameter):
        PinnedWitnessKey(w.witness.public_key(), -1)


# --- fuzzing: mutated bundles never pass and never store --------------------------------

_FUZZ = World()
_FUZZ_BUNDLE = _FUZZ.bundle().to_bytes()


@settings(max_examples=40)
@given(st.data())
def test_fuzz_mutated_bundle_is_refused_and_nothing_stored(data: st.DataObject) -> None:
    pos = data.draw(st.integers(0, len(_FUZZ_BUNDLE) - 1))
    value = data.draw(st.integers(0, 255).filter(lambda b: b != _FUZZ_BUNDLE[pos]))
    mutated = _FUZZ_BUNDLE[:pos] + bytes([value]) + _FUZZ_BUNDLE[pos + 1 :]
    store = MemoryTrustStore()
    v = BundleVerifier(_FUZZ.policy(), store, clock=lambda: float(T0))
    sig = _A.sign_session(_REQUEST, mutated)
    with pytest.raises((BundleFormatError, VerificationError)):
        v.verify(mutated, fleet_id=_A.fleet_id, request=_REQUEST, fleet_signature=sig)
    assert store.get(NAMESPACE) is None


def test_fuzz_baseline_passes() -> None:
    """The unmutated fuzz bundle is accepted, so the fuzz test's refusals mean something."""
    store = MemoryTrustStore()
    v = BundleVerifier(_FUZZ.policy(), store, clock=lambda: float(T0))
    sig = _A.sign_session(_REQUEST, _FUZZ_BUNDLE)
    v.verify(_FUZZ_BUNDLE, fleet_id=_A.fleet_id, request=_REQUEST, fleet_signature=sig)
    assert store.get(NAMESPACE) is not None


def test_digest_of_kit_bundle_matches() -> None:
    b = World().bundle()
    assert b.witness.digest == hashlib.sha256(b.artifact).digest()
