"""Automatic, authorised rejoin (ADR 0005, "Rejoin") with real node processes.

A node whose Raft state is absent, corrupt or rolled back refuses that state, advances
its NVRAM epoch and asks the fleet to readmit it with a rejoin ticket signed by its
custody identity key. Members refuse forged, replayed, stale and foreign tickets without
any membership change, and readmit the real node, which catches up (through a
sealed snapshot when the leader has compacted its log, which here it does every few
entries) and serves again.

One 3-node fleet for the module; every test leaves all nodes running as members.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from hsmvault.fleet.formation import NODE_CONFIG_FILE, PEERS_FILE
from hsmvault.fleet.journal import JournalConfig
from hsmvault.fleet.snapshots import SNAPSHOT_FILE
from hsmvault.hsm.custody.base import KeyCustody
from hsmvault.hsm.custody.software import SoftwareCustody
from hsmvault.hsm.node_process import FLEET_KEYS_FILE, LINK_KEY_FILE, READY_FILE, REJOIN_PURPOSE
from hsmvault.hsm.nvram import DirectoryNvram, SoftwareKeyMaterial
from hsmvault.wire.hsm_api import Outcome, RejoinRequest, RejoinResponse

from .conftest import LocalFleet, start_local_fleet
from .vault_client import WRAPPED_KEY, attempts_remaining, login, register, wrong_guess

pytestmark = pytest.mark.timeout(60)
LIMIT = 10
#: Compact often, so that a rejoining node catches up through a snapshot transfer.
NODE_ARGS = ("--snapshot-min-entries", "8")
#: What an operator redeploys on a wiped host: configuration and the sealed key blobs
#: (sealed by the node's custody; an old copy is the same keys). Never Raft state.
DEPLOYED = (NODE_CONFIG_FILE, PEERS_FILE, FLEET_KEYS_FILE, LINK_KEY_FILE)


@pytest.fixture(scope="module")
def fleet3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    fleet = start_local_fleet(tmp_path_factory.mktemp("rejoin"), nodes=3, node_args=NODE_ARGS)
    try:
        for k in range(3):
            user = b"rejoin-user-%d" % k
            assert register(fleet.client, user, b"pw-" + user) is Outcome.OK
        fleet.wait_converged()
        yield fleet
    finally:
        fleet.stop_all()
        fleet.mesh.close()


def _fingerprint(fleet: LocalFleet) -> list[tuple[int, int, bool, int]]:
    """Every node's (term, incarnation, joining, records), once converged."""
    fleet.wait_converged()
    result = []
    for i in range(fleet.size):
        info = fleet.info(i)
        assert info is not None
        result.append((info.term, info.incarnation, info.joining, info.record_count))
    return result


def _same_membership(before: list[tuple[int, int, bool, int]], fleet: LocalFleet) -> None:
    """No incarnation or joining flag changed (terms may move: elections under load)."""
    after = _fingerprint(fleet)
    assert [row[1:] for row in after] == [row[1:] for row in before]


def _send_ticket(fleet: LocalFleet, to: int, ticket: RejoinRequest) -> Outcome:
    answer = fleet.client.call(ticket.to_bytes(), prefer=to, failover=False)
    assert isinstance(answer.response, RejoinResponse)
    return answer.response.outcome


def _signed(
    custody: KeyCustody, fleet_id: bytes, node_id: bytes, incarnation: int
) -> RejoinRequest:
    unsigned = RejoinRequest(fleet_id, node_id, incarnation, bytes(64))
    signature = custody.sign(REJOIN_PURPOSE, unsigned.ticket_bytes())
    return RejoinRequest(fleet_id, node_id, incarnation, signature)


def _node_id(fleet: LocalFleet, i: int) -> bytes:
    return bytes.fromhex(fleet.layout.nodes[i].node_id)


def _counters(fleet: LocalFleet, user: bytes) -> list[int]:
    fleet.wait_converged()
    return [attempts_remaining(fleet.client, user, node=i) for i in range(fleet.size)]


def test_forged_ticket_is_refused_without_membership_change(fleet3: LocalFleet) -> None:
    before = _fingerprint(fleet3)
    stranger = SoftwareCustody(SoftwareKeyMaterial.generate())  # not node 1's custody
    forged = _signed(stranger, fleet3.layout.fleet_id, _node_id(fleet3, 1), 50)
    garbage = RejoinRequest(
        fleet3.layout.fleet_id, _node_id(fleet3, 1), 51, secrets.token_bytes(64)
    )
    for to in (0, 2):
        assert _send_ticket(fleet3, to, forged) is Outcome.INVALID_LOGIN
        assert _send_ticket(fleet3, to, garbage) is Outcome.INVALID_LOGIN
    _same_membership(before, fleet3)


def test_ticket_for_non_member_or_another_fleet_is_refused(fleet3: LocalFleet) -> None:
    before = _fingerprint(fleet3)
    stranger = SoftwareCustody(SoftwareKeyMaterial.generate())
    fleet_id = fleet3.layout.fleet_id
    non_member = _signed(stranger, fleet_id, secrets.token_bytes(32), 5)
    other_fleet = _signed(stranger, secrets.token_bytes(32), _node_id(fleet3, 1), 5)
    itself = _signed(stranger, fleet_id, _node_id(fleet3, 0), 5)  # names the receiver
    for ticket in (non_member, other_fleet, itself):
        assert _send_ticket(fleet3, 0, ticket) is Outcome.BAD_REQUEST
    _same_membership(before, fleet3)


def _open_custody(fleet: LocalFleet, i: int) -> tuple[DirectoryNvram, SoftwareCustody]:
    """Node ``i``'s own custody (the node must be stopped: the NVRAM is locked)."""
    nvram = DirectoryNvram(fleet.layout.nodes[i].nvram_dir)
    return nvram, SoftwareCustody.open(nvram, create=False)


def _redeploy_wiped_host(host_dir: Path, keep: Path) -> None:
    """The host's disk is wiped; the operator redeploys configuration and sealed keys."""
    keep.mkdir(exist_ok=True)
    for name in DEPLOYED:
        shutil.copy2(host_dir / name, keep / name)
    shutil.rmtree(host_dir)
    host_dir.mkdir()
    for name in DEPLOYED:
        shutil.copy2(keep / name, host_dir / name)


def test_deleted_host_state_rejoins_and_serves(fleet3: LocalFleet) -> None:
    user = b"rejoin-user-0"
    assert wrong_guess(fleet3.client, user, node=0) is Outcome.OK
    counts = _counters(fleet3, user)
    assert len(set(counts)) == 1
    node = fleet3.layout.nodes[1]
    formed = fleet3.wait_member(1).incarnation
    fleet3.kill(1)
    _redeploy_wiped_host(node.host_dir, node.node_dir / "deployed")
    fleet3.start(1)

    log = (node.host_dir / "stdout.log").read_text(encoding="utf-8")
    assert "RollbackError" in log  # anchored in NVRAM, absent on disk
    assert fleet3.wait_member(1, above_incarnation=formed).incarnation == formed + 1
    assert _counters(fleet3, user) == counts
    # It serves: registration and login through node 1, a guess counted fleet-wide.
    assert register(fleet3.client, b"after-wipe", b"pw", final_node=1) is Outcome.OK
    assert wrong_guess(fleet3.client, user, node=1) is Outcome.OK
    assert _counters(fleet3, user) == [counts[0] - 1] * 3
    assert login(fleet3.client, b"rejoin-user-1", b"pw-rejoin-user-1") == (Outcome.OK, WRAPPED_KEY)


def test_replayed_or_old_ticket_is_refused(fleet3: LocalFleet) -> None:
    """Valid signatures by the node's own key, for incarnations the fleet has seen."""
    current = fleet3.wait_member(1).incarnation
    fleet3.kill(1)
    nvram, custody = _open_custody(fleet3, 1)
    try:
        fleet_id, node_id = fleet3.layout.fleet_id, _node_id(fleet3, 1)
        tickets = [_signed(custody, fleet_id, node_id, n) for n in range(1, current + 1)]
    finally:
        custody.close()
        nvram.close()
    fleet3.start(1)  # resumes from its journal: same incarnation, no rejoin
    assert fleet3.wait_member(1).incarnation == current
    before = _fingerprint(fleet3)
    for ticket in tickets:  # the current incarnation (a replay) and every earlier one
        for to in (0, 2):
            assert _send_ticket(fleet3, to, ticket) is Outcome.BAD_REQUEST
    _same_membership(before, fleet3)


def test_tampered_journal_is_refused_and_the_node_rejoins(fleet3: LocalFleet) -> None:
    node = fleet3.layout.nodes[2]
    user = b"rejoin-user-2"
    assert wrong_guess(fleet3.client, user, node=2) is Outcome.OK
    counts = _counters(fleet3, user)
    formed = fleet3.wait_member(2).incarnation
    fleet3.kill(2)
    journal = node.host_dir / JournalConfig.FILE_NAME
    data = bytearray(journal.read_bytes())
    data[len(data) // 2] ^= 0x01
    journal.write_bytes(bytes(data))
    fleet3.start(2)
    assert "VerificationError" in (node.host_dir / "stdout.log").read_text(encoding="utf-8")
    assert fleet3.wait_member(2, above_incarnation=formed).incarnation == formed + 1
    assert _counters(fleet3, user) == counts


def test_rolled_back_host_dir_with_a_snapshot_rejoins_with_counters_intact(
    fleet3: LocalFleet,
) -> None:
    """An old copy of the whole host directory, sealed snapshot included, is put back."""
    node = fleet3.layout.nodes[0]
    user = b"rollback-user"
    assert register(fleet3.client, user, b"pw") is Outcome.OK
    for _ in range(4):  # enough entries for the fleet to compact its log
        assert wrong_guess(fleet3.client, user, node=0) is Outcome.OK
    fleet3.wait_converged()
    assert (node.host_dir / SNAPSHOT_FILE).exists()
    formed = fleet3.wait_member(0).incarnation
    fleet3.kill(0)
    old_copy = node.node_dir / "host-copy"
    shutil.copytree(node.host_dir, old_copy)
    fleet3.start(0)
    fleet3.wait_converged()
    for _ in range(3):  # committed and journaled after the copy was taken
        assert wrong_guess(fleet3.client, user, node=0) is Outcome.OK
    counts = _counters(fleet3, user)
    assert counts == [LIMIT - 7] * 3
    fleet3.kill(0)
    shutil.rmtree(node.host_dir)
    shutil.copytree(old_copy, node.host_dir)
    (node.host_dir / READY_FILE).unlink(missing_ok=True)
    fleet3.start(0)
    assert "RollbackError" in (node.host_dir / "stdout.log").read_text(encoding="utf-8")
    assert fleet3.wait_member(0, above_incarnation=formed).incarnation == formed + 1
    fleet3.leader()
    assert _counters(fleet3, user) == counts  # nothing lost, nothing reset
    assert wrong_guess(fleet3.client, user, node=0) is Outcome.OK
    assert _counters(fleet3, user) == [LIMIT - 8] * 3
