"""The replicated vault state machine: guess-limit invariant, erasure, determinism.

The rule-based test drives two independent replicas with the same random command log
(including stale versions, replaces, deletes and garbage) and checks after every step:

* no record's guesses since the last reset exceed its limit (model and state agree);
* erased key material (a record version that hit its limit) never comes back;
* a tombstoned id never gets a record back except by an explicit ``replace`` Register;
* both replicas have byte-identical snapshots, and snapshot → from_snapshot round-trips.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
)

from hsmvault.crypto.ksf import KsfAlgorithm, KsfParams
from hsmvault.crypto.opaque.fake import create_fake_record
from hsmvault.errors import DecodeError, InvalidParameter
from hsmvault.hsm import vault_state as vs

KSF = KsfParams(KsfAlgorithm.ARGON2ID, memory_kib=8, iterations=1, parallelism=1).to_bytes()


def _filled(byte: int) -> Callable[[int], bytes]:
    """A deterministic "rng" returning ``byte`` repeated."""
    return lambda n: bytes([byte]) * n


RECORDS = [create_fake_record(rng=_filled(i + 1)).to_bytes() for i in range(3)]
USERS = [b"alice", b"bob", b"carol"]


def _register(
    user: bytes, *, limit: int = 3, replace: bool = False, material: int = 0
) -> vs.Register:
    return vs.Register(
        user,
        bytes([material]) * 32,
        RECORDS[material],
        KSF,
        b"wrapped-%d" % material,
        limit,
        replace,
    )


def _apply(state: vs.VaultState, command: vs.Command) -> vs.CommandResult:
    return vs.decode_result(state.apply(vs.encode_command(command)))


# ------------------------------------------------------------------ unit behaviour


def test_begin_attempt_counts_and_refuses_at_the_limit() -> None:
    state = vs.VaultState()
    assert _apply(state, _register(b"alice", limit=2)) == vs.Applied(1)
    first = _apply(state, vs.BeginAttempt(b"alice"))
    assert isinstance(first, vs.AttemptGranted)
    assert (first.attempt, first.remaining, first.record_version) == (1, 1, 1)
    second = _apply(state, vs.BeginAttempt(b"alice"))
    assert isinstance(second, vs.AttemptGranted)
    assert (second.attempt, second.remaining) == (2, 0)
    # A third attempt is refused and erases the material for good.
    assert _apply(state, vs.BeginAttempt(b"alice")) == vs.Refused(vs.Refusal.LOCKED_OUT)
    assert state.record(b"alice") is None
    assert state.is_locked_out(b"alice")
    assert b"wrapped-0" not in state.snapshot()
    assert RECORDS[0] not in state.snapshot()


def test_failure_at_the_limit_erases_and_success_resets() -> None:
    state = vs.VaultState()
    _apply(state, _register(b"alice", limit=2))
    _apply(state, vs.BeginAttempt(b"alice"))
    assert _apply(state, vs.RecordFailure(b"alice", 1)) == vs.FailureRecorded(1, erased=False)
    _apply(state, vs.BeginAttempt(b"alice"))
    assert _apply(state, vs.RecordSuccess(b"alice", 1)) == vs.SuccessRecorded(b"wrapped-0")
    record = state.record(b"alice")
    assert record is not None
    assert record.guesses_used == 0
    _apply(state, vs.BeginAttempt(b"alice"))
    _apply(state, vs.BeginAttempt(b"alice"))
    assert _apply(state, vs.RecordFailure(b"alice", 1)) == vs.FailureRecorded(0, erased=True)
    assert state.is_locked_out(b"alice")
    # Late results for the erased record change nothing.
    assert _apply(state, vs.RecordSuccess(b"alice", 1)) == vs.Refused(vs.Refusal.STALE_VERSION)
    assert state.record(b"alice") is None


def test_success_against_a_replaced_record_does_not_reset_the_new_one() -> None:
    state = vs.VaultState()
    _apply(state, _register(b"alice"))
    _apply(state, vs.BeginAttempt(b"alice"))  # session for version 1 is in flight
    _apply(state, _register(b"alice", replace=True, material=1))  # version 2
    _apply(state, vs.BeginAttempt(b"alice"))
    _apply(state, vs.BeginAttempt(b"alice"))
    stale = _apply(state, vs.RecordSuccess(b"alice", 1))
    assert stale == vs.Refused(vs.Refusal.STALE_VERSION)
    record = state.record(b"alice")
    assert record is not None
    assert (record.version, record.guesses_used) == (2, 2)
    assert _apply(state, vs.Replace(b"alice", 1, bytes(32), RECORDS[2], KSF, b"w")) == vs.Refused(
        vs.Refusal.STALE_VERSION
    )
    assert _apply(state, vs.Delete(b"alice", 1)) == vs.Refused(vs.Refusal.STALE_VERSION)


def test_tombstone_refuses_plain_register_but_allows_explicit_reenrolment() -> None:
    state = vs.VaultState()
    _apply(state, _register(b"alice", limit=1))
    _apply(state, vs.BeginAttempt(b"alice"))
    _apply(state, vs.BeginAttempt(b"alice"))  # erases
    assert _apply(state, _register(b"alice")) == vs.Refused(vs.Refusal.LOCKED_OUT)
    assert _apply(state, _register(b"alice", replace=True, material=2)) == vs.Applied(2)
    record = state.record(b"alice")
    assert record is not None
    assert record.registration_record == RECORDS[2]  # new material, nothing restored
    assert not state.is_locked_out(b"alice")


def test_register_twice_without_replace_is_refused_and_delete_frees_the_id() -> None:
    state = vs.VaultState()
    _apply(state, _register(b"alice"))
    assert _apply(state, _register(b"alice")) == vs.Refused(vs.Refusal.ALREADY_REGISTERED)
    assert _apply(state, vs.Delete(b"alice", 1)) == vs.Applied(0)
    assert state.record(b"alice") is None
    assert not state.is_locked_out(b"alice")
    assert _apply(state, _register(b"alice")) == vs.Applied(2)


def test_unknown_user_and_noop_change_nothing() -> None:
    state = vs.VaultState()
    before = state.snapshot()
    assert _apply(state, vs.BeginAttempt(b"nobody")) == vs.Refused(vs.Refusal.UNKNOWN_USER)
    assert _apply(state, vs.NoOp()) == vs.Applied(0)
    assert state.snapshot() == before


@given(st.binary(max_size=300))
def test_apply_never_raises_and_garbage_changes_nothing(data: bytes) -> None:
    state = vs.VaultState()
    _apply(state, _register(b"alice"))
    before = state.snapshot()
    try:
        vs.decode_command(data)
    except DecodeError:
        assert vs.decode_result(state.apply(data)) == vs.Refused(vs.Refusal.MALFORMED_COMMAND)
        assert state.snapshot() == before


# ------------------------------------------------------------------ encodings

user_ids = st.binary(min_size=1, max_size=255)
versions = st.integers(1, 2**64 - 1)
commands: st.SearchStrategy[vs.Command] = st.one_of(
    st.builds(
        vs.Register,
        user_ids,
        st.binary(min_size=32, max_size=32),
        st.sampled_from(RECORDS),
        st.just(KSF),
        st.binary(min_size=1, max_size=1024),
        st.integers(1, 255),
        st.booleans(),
    ),
    st.builds(vs.BeginAttempt, user_ids),
    st.builds(vs.RecordSuccess, user_ids, versions),
    st.builds(vs.RecordFailure, user_ids, versions),
    st.builds(
        vs.Replace,
        user_ids,
        versions,
        st.binary(min_size=32, max_size=32),
        st.sampled_from(RECORDS),
        st.just(KSF),
        st.binary(min_size=1, max_size=1024),
    ),
    st.builds(vs.Delete, user_ids, versions),
    st.just(vs.NoOp()),
    st.just(vs.Decommission()),
    st.builds(
        vs.BundlePart,
        st.integers(0, 2**64 - 1),
        st.binary(min_size=32, max_size=32),
        st.just(vs.BUNDLE_PART_LEN + 50),
        st.sampled_from([0, 50, vs.BUNDLE_PART_LEN]),
        st.binary(min_size=1, max_size=50),
    ),
)
results: st.SearchStrategy[vs.CommandResult] = st.one_of(
    st.builds(vs.Applied, st.integers(0, 2**64 - 1)),
    st.builds(
        vs.AttemptGranted,
        versions,
        st.integers(0, 255),
        st.integers(0, 255),
        st.binary(min_size=32, max_size=32),
        st.sampled_from(RECORDS),
        st.just(KSF),
    ),
    st.builds(vs.SuccessRecorded, st.binary(max_size=1024)),
    st.builds(vs.FailureRecorded, st.integers(0, 255), st.booleans()),
    st.builds(vs.Refused, st.sampled_from(vs.Refusal)),
    st.builds(vs.BundleStaged, st.integers(0, 2**32 - 1)),
    st.builds(vs.BundleInstalled, st.integers(0, 2**64 - 1)),
    st.builds(vs.Decommissioned, st.integers(0, 2**32 - 1)),
)


@given(commands)
def test_commands_round_trip(command: vs.Command) -> None:
    assert vs.decode_command(vs.encode_command(command)) == command


@given(results)
def test_results_round_trip(result: vs.CommandResult) -> None:
    assert vs.decode_result(vs.encode_result(result)) == result


@given(commands, st.data())
def test_truncated_or_extended_commands_are_refused(
    command: vs.Command, data: st.DataObject
) -> None:
    encoded = vs.encode_command(command)
    cut = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(DecodeError):
        vs.decode_command(encoded[:cut])
    with pytest.raises(DecodeError):
        vs.decode_command(encoded + b"\x00")


@given(st.binary(max_size=300))
def test_garbage_results_and_snapshots_raise_only_decode_error(data: bytes) -> None:
    for decode in (vs.decode_result, vs.VaultState.from_snapshot, vs.decode_command):
        with contextlib.suppress(DecodeError):
            decode(data)


def test_commands_validate_their_fields() -> None:
    with pytest.raises(InvalidParameter):
        _register(b"alice", limit=0)
    with pytest.raises(InvalidParameter):
        vs.Register(b"a", bytes(32), b"x" * 192, KSF, b"w", 3, False)  # not a record
    with pytest.raises(InvalidParameter):
        vs.RecordSuccess(b"a", 0)
    with pytest.raises(InvalidParameter):
        vs.BeginAttempt(b"")


def test_snapshot_parsing_is_strict() -> None:
    state = vs.VaultState()
    for user in USERS:
        _apply(state, _register(user, limit=1))
    _apply(state, vs.BeginAttempt(b"bob"))
    _apply(state, vs.BeginAttempt(b"bob"))  # tombstone
    snap = state.snapshot()
    assert vs.VaultState.from_snapshot(snap) == state
    with pytest.raises(DecodeError, match="trailing"):
        vs.VaultState.from_snapshot(snap + b"\x00")
    with pytest.raises(DecodeError, match="version"):
        vs.VaultState.from_snapshot(b"\x01" + snap[1:])  # version 1 had no bundle
    with pytest.raises(DecodeError):
        vs.VaultState.from_snapshot(snap[:-1])
    # last_version lowered below the records' versions
    with pytest.raises(DecodeError, match="version out of range"):
        vs.VaultState.from_snapshot(snap[:1] + (1).to_bytes(8, "big") + snap[9:])


# ------------------------------------------------------------------ bundles

# Three multi-part bundles (BUNDLE_PART_LEN + 100 bytes: two parts each).
BUNDLES = [bytes([i]) * (vs.BUNDLE_PART_LEN + 100) for i in range(3)]


def _install(state: vs.VaultState, epoch: int, bundle: bytes) -> vs.CommandResult:
    result: vs.CommandResult = vs.Refused(vs.Refusal.MALFORMED_COMMAND)
    for part in vs.bundle_parts(epoch, bundle):
        result = _apply(state, part)
        if not isinstance(result, vs.BundleStaged):
            break
    return result


def test_a_bundle_installs_after_its_last_part_only() -> None:
    state = vs.VaultState()
    first, last = vs.bundle_parts(4, BUNDLES[0])
    assert _apply(state, first) == vs.BundleStaged(vs.BUNDLE_PART_LEN)
    assert state.bundle() is None  # staged, not installed
    staged = vs.VaultState.from_snapshot(state.snapshot())  # the staging is replicated
    assert _apply(state, last) == vs.BundleInstalled(4)
    assert _apply(staged, last) == vs.BundleInstalled(4)
    installed = state.bundle()
    assert installed is not None
    assert (installed.epoch, installed.bundle) == (4, BUNDLES[0])
    assert staged == state
    assert "\\x00" not in repr(installed)


def test_bundle_epochs_never_go_back_and_never_change_their_bytes() -> None:
    state = vs.VaultState()
    assert _install(state, 4, BUNDLES[0]) == vs.BundleInstalled(4)
    before = state.snapshot()
    assert _install(state, 4, BUNDLES[0]) == vs.BundleInstalled(4)  # idempotent
    assert _install(state, 4, BUNDLES[1]) == vs.Refused(vs.Refusal.EPOCH_CONFLICT)
    assert _install(state, 4, BUNDLES[0][:-1]) == vs.Refused(vs.Refusal.EPOCH_CONFLICT)
    assert _install(state, 3, BUNDLES[2]) == vs.Refused(vs.Refusal.STALE_EPOCH)
    assert state.snapshot() == before
    assert _install(state, 5, BUNDLES[1]) == vs.BundleInstalled(5)
    assert _install(state, 4, BUNDLES[0]) == vs.Refused(vs.Refusal.STALE_EPOCH)
    assert _install(state, 2**64 - 1, b"x") == vs.BundleInstalled(2**64 - 1)


def test_parts_that_do_not_continue_the_staging_are_refused() -> None:
    state = vs.VaultState()
    first, last = vs.bundle_parts(1, BUNDLES[0])
    other_first, other_last = vs.bundle_parts(1, BUNDLES[1])
    assert _apply(state, last) == vs.Refused(vs.Refusal.BUNDLE_SEQUENCE)  # nothing staged
    _apply(state, first)
    before = state.snapshot()
    assert _apply(state, other_last) == vs.Refused(vs.Refusal.BUNDLE_SEQUENCE)
    assert state.snapshot() == before  # a refused part changes nothing
    assert _apply(state, other_first) == vs.BundleStaged(vs.BUNDLE_PART_LEN)  # offset 0 restarts
    assert _apply(state, last) == vs.Refused(vs.Refusal.BUNDLE_SEQUENCE)
    assert _apply(state, other_last) == vs.BundleInstalled(1)
    bundle = state.bundle()
    assert bundle is not None
    assert bundle.bundle == BUNDLES[1]


def test_a_bundle_whose_digest_does_not_match_is_dropped() -> None:
    state = vs.VaultState()
    first, last = vs.bundle_parts(1, BUNDLES[0])
    forged = vs.BundlePart(1, first.digest, last.total, last.offset, b"\xff" * len(last.data))
    _apply(state, first)
    assert _apply(state, forged) == vs.Refused(vs.Refusal.BUNDLE_SEQUENCE)
    assert state.bundle() is None
    assert _apply(state, last) == vs.Refused(vs.Refusal.BUNDLE_SEQUENCE)  # staging dropped


def test_bundle_parts_validate_their_fields() -> None:
    digest = bytes(32)
    for args in (
        (-1, digest, 10, 0, b"x"),
        (2**64, digest, 10, 0, b"x"),
        (True, digest, 10, 0, b"x"),
        (1, bytes(31), 10, 0, b"x"),
        (1, digest, 0, 0, b"x"),
        (1, digest, 64 * 1024 + 1, 0, b"x"),
        (1, digest, 10, 0, b""),
        (1, digest, 10, 9, b"xx"),  # past the end
        (1, digest, 10, -1, b"x"),
        (1, digest, 2 * vs.BUNDLE_PART_LEN, 0, b"x" * (vs.BUNDLE_PART_LEN + 1)),
    ):
        with pytest.raises(InvalidParameter):
            vs.BundlePart(*args)
    for bad in (b"", b"x" * (64 * 1024 + 1)):
        with pytest.raises(InvalidParameter):
            vs.bundle_parts(1, bad)
    parts = vs.bundle_parts(0, b"y" * (64 * 1024))
    assert len(parts) == 6
    assert b"".join(p.data for p in parts) == b"y" * (64 * 1024)
    assert max(len(vs.encode_command(p)) for p in parts) < 16 * 1024  # codec.MAX_COMMAND_SIZE


def test_bundle_snapshot_parsing_is_strict() -> None:
    state = vs.VaultState()
    _apply(state, _register(b"alice"))
    _install(state, 3, b"three")
    _apply(state, vs.bundle_parts(4, BUNDLES[0])[0])
    snap = state.snapshot()
    assert vs.VaultState.from_snapshot(snap) == state
    restored = vs.VaultState.from_snapshot(snap).bundle()
    assert restored is not None
    assert (restored.epoch, restored.bundle) == (3, b"three")
    staging_at = len(snap) - (1 + 8 + 32 + 4 + 4 + vs.BUNDLE_PART_LEN)
    assert snap[staging_at] == 1
    epoch_3 = (3).to_bytes(8, "big")
    for bad in (
        snap[:staging_at] + b"\x02" + snap[staging_at + 1 :],  # not a strict bool
        snap[:staging_at] + b"\x01" + epoch_3 + snap[staging_at + 9 :],  # staging not above
        # staging as long as its total: it would have been installed
        snap[: staging_at + 41] + (vs.BUNDLE_PART_LEN).to_bytes(4, "big") + snap[staging_at + 45 :],
    ):
        with pytest.raises(DecodeError):
            vs.VaultState.from_snapshot(bad)
    empty = vs.VaultState()
    assert empty.snapshot().endswith(b"\x00\x00")  # no bundle, no staging
    assert vs.VaultState.from_snapshot(empty.snapshot()).bundle() is None


def test_repr_shows_no_material() -> None:
    command = _register(b"alice")
    assert "wrapped-0" not in repr(command)
    assert "registration_record" not in repr(command)
    state = vs.VaultState()
    _apply(state, command)
    assert "wrapped" not in repr(state)
    assert "wrapped-0" not in repr(state.record(b"alice"))


# ------------------------------------------------------------------ stateful


class VaultStateMachine(RuleBasedStateMachine):
    """Random command logs against two replicas and a small model."""

    versions = Bundle("versions")

    def __init__(self) -> None:
        super().__init__()
        self.a = vs.VaultState()
        self.b = vs.VaultState()
        self.since_reset: dict[bytes, int] = {}  # model: granted attempts since reset
        self.limits: dict[bytes, int] = {}
        self.erased_versions: set[int] = set()
        self.tombstoned: set[bytes] = set()
        self.installed_bundles: dict[int, bytes] = {}  # model: every epoch ever installed

    def _run(self, command: vs.Command) -> vs.CommandResult:
        encoded = vs.encode_command(command)
        raw = self.a.apply(encoded)
        assert self.b.apply(encoded) == raw  # determinism
        return vs.decode_result(raw)

    def _note_erased(self, user: bytes, version: int) -> None:
        self.erased_versions.add(version)
        self.tombstoned.add(user)
        self.since_reset.pop(user, None)

    @rule(
        target=versions,
        user=st.sampled_from(USERS),
        limit=st.integers(1, 4),
        replace=st.booleans(),
        material=st.integers(0, 2),
    )
    def register(self, user: bytes, limit: int, replace: bool, material: int) -> int:
        result = self._run(_register(user, limit=limit, replace=replace, material=material))
        if isinstance(result, vs.Applied):
            assert replace or user not in self.tombstoned
            self.tombstoned.discard(user)
            self.since_reset[user] = 0
            self.limits[user] = limit
            return result.record_version
        assert not replace
        return 0

    @rule(user=st.sampled_from(USERS))
    def begin_attempt(self, user: bytes) -> None:
        before = self.a.record(user)
        result = self._run(vs.BeginAttempt(user))
        if isinstance(result, vs.AttemptGranted):
            self.since_reset[user] += 1
            assert result.attempt == self.since_reset[user]
        elif result == vs.Refused(vs.Refusal.LOCKED_OUT) and before is not None:
            self._note_erased(user, before.version)

    @rule(user=st.sampled_from(USERS), version=versions)
    def record_success(self, user: bytes, version: int) -> None:
        if version == 0:
            return
        result = self._run(vs.RecordSuccess(user, version))
        if isinstance(result, vs.SuccessRecorded):
            self.since_reset[user] = 0

    @rule(user=st.sampled_from(USERS), version=versions)
    def record_failure(self, user: bytes, version: int) -> None:
        if version == 0:
            return
        result = self._run(vs.RecordFailure(user, version))
        if isinstance(result, vs.FailureRecorded) and result.erased:
            self._note_erased(user, version)

    @rule(target=versions, user=st.sampled_from(USERS), version=consumes(versions))
    def replace(self, user: bytes, version: int) -> int:
        if version == 0:
            return 0
        result = self._run(vs.Replace(user, version, bytes(32), RECORDS[1], KSF, b"new"))
        if isinstance(result, vs.Applied):
            self.since_reset[user] = 0
            return result.record_version
        return 0

    @rule(user=st.sampled_from(USERS), version=versions)
    def delete(self, user: bytes, version: int) -> None:
        if version == 0:
            return
        if isinstance(self._run(vs.Delete(user, version)), vs.Applied):
            self.since_reset.pop(user, None)

    @rule()
    def noop(self) -> None:
        self._run(vs.NoOp())

    @rule(epoch=st.integers(0, 4), which=st.integers(0, 2), part=st.integers(0, 1))
    def bundle_part(self, epoch: int, which: int, part: int) -> None:
        before = self.a.bundle()
        result = self._run(vs.bundle_parts(epoch, BUNDLES[which])[part])
        after = self.a.bundle()
        if isinstance(result, vs.BundleInstalled):
            assert after is not None
            assert (after.epoch, after.bundle) == (epoch, BUNDLES[which])
            assert self.installed_bundles.setdefault(epoch, BUNDLES[which]) == BUNDLES[which]
        else:
            assert after == before

    @invariant()
    def bundle_epochs_only_grow_and_keep_their_bytes(self) -> None:
        current = self.a.bundle()
        if current is None:
            assert not self.installed_bundles
            return
        assert current.epoch == max(self.installed_bundles)
        assert self.installed_bundles[current.epoch] == current.bundle

    @rule(data=st.binary(max_size=40))
    def garbage(self, data: bytes) -> None:
        before = self.a.snapshot()
        if vs.decode_result(self.a.apply(data)) == vs.Refused(vs.Refusal.MALFORMED_COMMAND):
            assert self.a.snapshot() == before
        self.b.apply(data)

    @invariant()
    def guesses_never_exceed_the_limit(self) -> None:
        for user in USERS:
            record = self.a.record(user)
            if record is None:
                assert user not in self.since_reset
                continue
            assert 0 <= record.guesses_used <= record.guess_limit
            assert record.guesses_used == self.since_reset[user]
            assert self.since_reset[user] <= record.guess_limit

    @invariant()
    def erased_material_never_returns(self) -> None:
        for user in USERS:
            record = self.a.record(user)
            if record is not None:
                assert record.version not in self.erased_versions
            assert self.a.is_locked_out(user) == (user in self.tombstoned)

    @invariant()
    def replicas_agree_and_snapshots_round_trip(self) -> None:
        snap = self.a.snapshot()
        assert snap == self.b.snapshot()
        assert vs.VaultState.from_snapshot(snap).snapshot() == snap


VaultStateMachine.TestCase.settings = settings(stateful_step_count=40)
TestVaultStateMachine = VaultStateMachine.TestCase


def test_restore_replaces_the_state_in_place_and_refuses_garbage() -> None:
    source = vs.VaultState()
    _apply(source, _register(USERS[0]))
    _apply(source, _register(USERS[1], material=1))
    _apply(source, vs.BeginAttempt(USERS[0]))
    snapshot = source.snapshot()
    target = vs.VaultState()
    _apply(target, _register(USERS[2], material=2))
    apply = target.apply  # the Raft callback stays bound to the same object
    target.restore(snapshot)
    assert target == source
    assert target.record(USERS[2]) is None
    with pytest.raises(DecodeError):
        target.restore(snapshot + b"\x00")
    assert target == source  # a refused snapshot changes nothing
    _apply(source, vs.BeginAttempt(USERS[1]))
    apply(vs.encode_command(vs.BeginAttempt(USERS[1])))
    assert target == source
