"""Decommissioning a fleet (ADR 0013): the state machine and the node's door.

The state machine: ``Decommission`` erases every record (key material included), every
tombstone, the bundle and its staging in every replica, is idempotent, and is terminal —
no later command brings anything back, and the flag survives snapshots and restores.
The door: only the node's own fleet id decommissions; afterwards every user request is
answered ``DECOMMISSIONED`` (sessions held in memory are dropped), the status reports
it, and the consensus engine is asked once to compact its log.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsmvault.errors import DecodeError
from hsmvault.hsm import vault_state as vs
from hsmvault.hsm.vault_service import VaultService, VaultServiceConfig
from hsmvault.wire import hsm_api as api
from tests.hsm.sim import InstantConsensus
from tests.hsm.test_vault_service import (
    ALICE,
    FLEET_ID,
    FLEET_KEY,
    KSF_PARAMS,
    SERVER,
    SIG_KEY,
    Harness,
)
from tests.hsm.test_vault_state import (
    BUNDLES,
    KSF,
    RECORDS,
    USERS,
    _apply,
    _install,
    _register,
    commands,
)

# ------------------------------------------------------------------ the state machine


def _populated() -> vs.VaultState:
    """Two live records, one tombstone, an installed bundle and a staged next one."""
    state = vs.VaultState()
    _apply(state, _register(USERS[0]))
    _apply(state, _register(USERS[1], material=1))
    _apply(state, _register(USERS[2], limit=1, material=2))
    _apply(state, vs.BeginAttempt(USERS[2]))
    _apply(state, vs.BeginAttempt(USERS[2]))  # tombstone
    assert _install(state, 3, BUNDLES[0]) == vs.BundleInstalled(3)
    assert isinstance(_apply(state, vs.bundle_parts(4, BUNDLES[1])[0]), vs.BundleStaged)
    assert (state.record_count, state.tombstone_count) == (2, 1)
    return state


def test_decommission_erases_everything_and_is_idempotent() -> None:
    state = _populated()
    assert not state.decommissioned
    assert _apply(state, vs.Decommission()) == vs.Decommissioned(3)
    assert state.decommissioned
    assert (state.record_count, state.tombstone_count) == (0, 0)
    assert state.bundle() is None
    for user in USERS:
        assert state.record(user) is None
        assert not state.is_locked_out(user)
    snapshot = state.snapshot()
    for i in range(3):  # no key material, record, user id or bundle byte is left
        assert b"wrapped-%d" % i not in snapshot
    for needle in (*USERS, BUNDLES[0][:64], BUNDLES[1][:64]):
        assert needle not in snapshot
    assert _apply(state, vs.Decommission()) == vs.Decommissioned(0)  # idempotent
    assert state.snapshot() == snapshot


def test_a_decommissioned_state_refuses_every_command_but_noop_and_decommission() -> None:
    state = _populated()
    _apply(state, vs.Decommission())
    before = state.snapshot()
    gone = vs.Refused(vs.Refusal.DECOMMISSIONED)
    refused: list[vs.Command] = [
        _register(USERS[0]),
        _register(USERS[0], replace=True),
        vs.BeginAttempt(USERS[0]),
        vs.RecordSuccess(USERS[0], 1),
        vs.RecordFailure(USERS[0], 1),
        vs.Replace(USERS[0], 1, bytes(32), RECORDS[0], KSF, b"w"),
        vs.Delete(USERS[0], 1),
        *vs.bundle_parts(9, BUNDLES[2]),
    ]
    for command in refused:
        assert _apply(state, command) == gone
    assert _apply(state, vs.NoOp()) == vs.Applied(0)
    assert state.snapshot() == before
    assert state.last_version == 3  # versions are never reused, even here


@settings(max_examples=60)
@given(st.lists(commands, max_size=6), st.lists(commands, max_size=12))
def test_decommissioned_is_terminal_whatever_comes_before_and_after(
    before: list[vs.Command], after: list[vs.Command]
) -> None:
    a, b = vs.VaultState(), vs.VaultState()
    for command in [*before, vs.Decommission(), *after]:
        encoded = vs.encode_command(command)
        assert a.apply(encoded) == b.apply(encoded)  # replicas stay byte-identical
    assert a.decommissioned
    assert (a.record_count, a.tombstone_count, a.bundle()) == (0, 0, None)
    assert a.snapshot() == b.snapshot()
    restored = vs.VaultState.from_snapshot(a.snapshot())
    assert restored.decommissioned
    assert restored == a


def test_the_flag_survives_snapshot_and_restore() -> None:
    state = _populated()
    _apply(state, vs.Decommission())
    target = _populated()
    apply = target.apply  # the Raft callback stays bound to the same object
    target.restore(state.snapshot())
    assert target.decommissioned
    assert target == state
    result = vs.decode_result(apply(vs.encode_command(_register(USERS[0]))))
    assert result == vs.Refused(vs.Refusal.DECOMMISSIONED)
    assert "decommissioned=True" in repr(target)


def test_snapshot_parsing_of_the_flag_is_strict() -> None:
    live = _populated()
    live_snapshot = live.snapshot()
    assert live_snapshot[0] == vs.SNAPSHOT_VERSION == 3
    assert live_snapshot[9] == 0  # the flag follows last_version
    # a decommissioned flag on a state that still holds records is refused
    forged = live_snapshot[:9] + b"\x01" + live_snapshot[10:]
    with pytest.raises(DecodeError, match="decommissioned"):
        vs.VaultState.from_snapshot(forged)
    with pytest.raises(DecodeError, match="boolean"):
        vs.VaultState.from_snapshot(live_snapshot[:9] + b"\x02" + live_snapshot[10:])
    # version 2 (no flag) is still read, as not decommissioned
    version2 = bytes([2]) + live_snapshot[1:9] + live_snapshot[10:]
    old = vs.VaultState.from_snapshot(version2)
    assert not old.decommissioned
    assert old == live
    with pytest.raises(DecodeError, match="version"):
        vs.VaultState.from_snapshot(bytes([4]) + live_snapshot[1:])


def test_decommission_command_and_result_encodings() -> None:
    assert vs.encode_command(vs.Decommission()) == bytes([vs.COMMAND_VERSION, 9])
    assert vs.decode_command(bytes([vs.COMMAND_VERSION, 9])) == vs.Decommission()
    with pytest.raises(DecodeError):
        vs.decode_command(bytes([vs.COMMAND_VERSION, 9, 0]))
    encoded = vs.encode_result(vs.Decommissioned(7))
    assert encoded == bytes([vs.COMMAND_VERSION, 8]) + (7).to_bytes(4, "big")
    assert vs.decode_result(encoded) == vs.Decommissioned(7)
    refused = vs.encode_result(vs.Refused(vs.Refusal.DECOMMISSIONED))
    assert vs.decode_result(refused) == vs.Refused(vs.Refusal.DECOMMISSIONED)


# ------------------------------------------------------------------ the door


class CompactCounter:
    def __init__(self, *, fail: bool = False) -> None:
        self.calls = 0
        self.fail = fail

    def __call__(self) -> None:
        self.calls += 1
        if self.fail:
            raise OSError("disk full")


def _node(compact: CompactCounter | None = None, fleet: InstantConsensus | None = None) -> Harness:
    """A harness whose service gets a ``compact`` hook (the node process passes
    ``RaftNode.compact``); over ``fleet`` (another harness's replicated log) if given."""
    harness = Harness()
    if fleet is not None:
        harness.fleet = fleet
    harness.service = VaultService(
        SERVER,
        harness.fleet,
        upload_key=FLEET_KEY,
        fleet_id=FLEET_ID,
        signing_key=SIG_KEY,
        config=VaultServiceConfig(unknown_user_ksf_params=KSF_PARAMS),
        clock=harness.clock,
        compact=compact,
    )
    return harness


def _status(node: Harness) -> api.StatusResponse:
    response = node.call(api.StatusRequest())
    assert isinstance(response, api.StatusResponse)
    assert response.outcome is api.Outcome.OK
    return response


def test_decommission_erases_every_replica_and_refuses_users_afterwards() -> None:
    compact = CompactCounter()
    node = _node(compact)
    for user in (ALICE, b"bob"):
        response, _ = node.register(user)
        assert response.outcome is api.Outcome.OK
    pending_start, _ = node.login_start(b"bob")  # a login in flight
    authenticated = node.login()  # and an authenticated session
    assert authenticated.backup_key is not None
    assert _status(node).open_sessions == 2

    wrong = node.call(api.DecommissionRequest(b"\x00" * 32))  # another fleet's id
    assert wrong == api.DecommissionResponse.refused(api.Outcome.BAD_REQUEST)
    assert node.fleet.state().record_count == 2
    assert compact.calls == 0

    done = node.call(api.DecommissionRequest(FLEET_ID))
    assert done == api.DecommissionResponse(api.Outcome.OK, 2)
    assert compact.calls == 1
    for replica in node.fleet.replicas:  # erased in every replica, through the log
        assert replica.decommissioned
        assert replica.record_count == 0
        assert b"bob" not in replica.snapshot()
    status = _status(node)
    assert (status.record_count, status.tombstone_count, status.open_sessions) == (0, 0, 0)
    assert status.decommissioned

    gone = api.Outcome.DECOMMISSIONED
    log_length = len(node.fleet.log)
    assert node.login_start()[0].outcome is gone
    assert node.call(api.LoginFinishRequest(pending_start.session_id, b"\x01" * 64)).outcome is (
        gone
    )
    assert node.delete(authenticated).outcome is gone
    sealed = b"s" * api.MIN_SEALED_UPLOAD_LEN  # refused at the door, before it is opened
    assert node.call(api.RegisterRequest(b"carol", bytes(32), sealed)).outcome is gone
    assert node.remaining().outcome is gone
    assert node.call(api.InstallBundleRequest(1, b"bundle")).outcome is gone
    assert node.call(api.RegistrationStartRequest(ALICE, b"\x01" * 32)).outcome is gone
    assert len(node.fleet.log) == log_length  # refused before anything was submitted

    again = node.call(api.DecommissionRequest(FLEET_ID))
    assert again == api.DecommissionResponse(api.Outcome.OK, 0)
    assert compact.calls == 1  # compaction is asked once per node life


def test_another_replica_refuses_and_compacts_once_it_sees_the_decommissioning() -> None:
    """Two services over one replicated log: the one that did not handle the request
    learns it from its committed state (the first request it gets, a status too)."""
    first = _node(CompactCounter())
    first.register()
    compact = CompactCounter()
    second = _node(compact, first.fleet)  # the same replicated log
    pending, _ = second.login_start()
    assert pending.outcome is api.Outcome.OK
    assert first.call(api.DecommissionRequest(FLEET_ID)).outcome is api.Outcome.OK
    assert compact.calls == 0
    assert _status(second).decommissioned
    assert compact.calls == 1
    finish = second.call(api.LoginFinishRequest(pending.session_id, b"\x01" * 64))
    assert finish.outcome is api.Outcome.DECOMMISSIONED
    assert second.service.open_sessions == 0
    assert _status(second).decommissioned
    assert compact.calls == 1


class StaleView:
    """A consensus whose committed-state view lags: ``state()`` is a copy taken before
    the decommissioning, while ``submit`` reaches the real log (a race)."""

    def __init__(self, inner: InstantConsensus) -> None:
        self.inner = inner
        self.view: vs.VaultState | None = None

    def submit(self, command: bytes) -> bytes:
        return self.inner.submit(command)

    def state(self) -> vs.VaultState:
        return self.view if self.view is not None else self.inner.state()


def test_a_command_racing_the_decommissioning_is_answered_decommissioned() -> None:
    """The decommissioning commits between this node's check and its submit: the state
    machine refuses the command, and the door answers DECOMMISSIONED (not UNAVAILABLE)."""
    node = _node()
    consensus = StaleView(node.fleet)
    node.service = VaultService(
        SERVER,
        consensus,
        upload_key=FLEET_KEY,
        fleet_id=FLEET_ID,
        signing_key=SIG_KEY,
        config=VaultServiceConfig(unknown_user_ksf_params=KSF_PARAMS),
        clock=node.clock,
    )
    node.register()
    start, _ = node.login_start()
    consensus.view = vs.VaultState.from_snapshot(node.fleet.state().snapshot())
    node.fleet.submit(vs.encode_command(vs.Decommission()))
    assert not consensus.state().decommissioned  # this node has not seen it yet
    finish = node.call(api.LoginFinishRequest(start.session_id, b"\x01" * 64))
    assert finish.outcome is api.Outcome.DECOMMISSIONED  # RecordFailure refused
    assert node.service.open_sessions == 0
    assert node.login_start()[0].outcome is api.Outcome.DECOMMISSIONED  # BeginAttempt refused
    assert node.register(b"dave")[0].outcome is api.Outcome.DECOMMISSIONED  # Register refused


def test_a_failing_compaction_does_not_fail_the_decommissioning() -> None:
    compact = CompactCounter(fail=True)
    node = _node(compact)
    node.register()
    done = node.call(api.DecommissionRequest(FLEET_ID))
    assert done == api.DecommissionResponse(api.Outcome.OK, 1)
    assert compact.calls == 1
    assert _status(node).decommissioned


def test_unavailable_decommission_commits_nothing() -> None:
    node = _node()
    node.register()
    node.fleet.available = False
    response = node.call(api.DecommissionRequest(FLEET_ID))
    assert response == api.DecommissionResponse.refused(api.Outcome.UNAVAILABLE)
    node.fleet.available = True
    assert not node.fleet.state().decommissioned
    assert node.login().backup_key is not None
