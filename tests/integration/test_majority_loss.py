"""Losing the majority of a 5-node fleet (real processes): it refuses clearly, and once
the nodes return (from their sealed journals) no acknowledged write is lost. A node whose
host state is rolled back refuses that state and rejoins as a new incarnation.

The tests share one fleet per module (per xdist worker): the first leaves three nodes
dead, the second brings them back (and runs the first itself if it did not run here);
the last starts whatever is down and needs nothing else.
"""

from __future__ import annotations

import shutil

import pytest

from hsmvault.errors import Unavailable
from hsmvault.hsm.node_process import READY_FILE
from hsmvault.wire.hsm_api import Outcome

from .conftest import LocalFleet
from .vault_client import WRAPPED_KEY, attempts_remaining, login, register, wrong_guess

pytestmark = pytest.mark.timeout(120)
LIMIT = 10
USERS = [b"acked-%d" % k for k in range(5)]


def test_three_of_five_killed_refuses_with_a_clear_unavailable(fleet5: LocalFleet) -> None:
    for user in USERS:
        assert register(fleet5.client, user, b"pw-" + user) is Outcome.OK
    assert wrong_guess(fleet5.client, USERS[0], node=0) is Outcome.OK  # one counted guess
    leader = fleet5.leader()
    doomed = [leader, *[i for i in fleet5.running() if i != leader][:2]]
    for i in doomed:
        fleet5.kill(i)

    with pytest.raises(Unavailable, match="no node of the fleet answered"):
        register(fleet5.client, b"no-quorum", b"pw")
    with pytest.raises(Unavailable, match="no node of the fleet answered"):
        login(fleet5.client, USERS[1], b"pw-" + USERS[1])


def test_majority_returns_and_no_acknowledged_write_is_lost(fleet5: LocalFleet) -> None:
    dead = [i for i in range(fleet5.size) if i not in fleet5.procs]
    if not dead:  # run alone, or on another xdist worker than the test above
        test_three_of_five_killed_refuses_with_a_clear_unavailable(fleet5)
        dead = [i for i in range(fleet5.size) if i not in fleet5.procs]
    assert len(dead) == 3, "runs after test_three_of_five_killed_refuses_with_a_clear_unavailable"
    fleet5.start_many(dead)
    fleet5.leader()
    _check_everything_acknowledged_is_there(fleet5)

    # Even a whole-fleet crash (SIGKILL all five) keeps every acknowledged write: each
    # node replays its sealed journal.
    fleet5.stop_all()
    fleet5.start_many(list(range(fleet5.size)))
    fleet5.leader()
    _check_everything_acknowledged_is_there(fleet5)
    assert register(fleet5.client, b"after-recovery", b"pw") is Outcome.OK


def test_rolled_back_host_state_is_refused(fleet5: LocalFleet) -> None:
    """The host puts an old copy of a node's host-side directory back: the node refuses
    that OLD state (its NVRAM anchor is ahead: RollbackError), starts a new incarnation,
    is readmitted by the fleet, catches up, and agrees with the others on every counter:
    no committed guess is lost or reset."""
    user = b"rolled-back-user"
    fleet5.start_many([i for i in range(fleet5.size) if i not in fleet5.procs])
    fleet5.leader()
    assert register(fleet5.client, user, b"pw") is Outcome.OK
    node = fleet5.layout.nodes[4]
    fleet5.wait_converged()
    formed = fleet5.wait_member(4).incarnation
    fleet5.kill(4)
    old_copy = node.node_dir / "host-copy"
    shutil.copytree(node.host_dir, old_copy)
    fleet5.start(4)
    fleet5.wait_converged()  # node 4 is connected and caught up before it is asked
    assert wrong_guess(fleet5.client, user, node=4) is Outcome.OK  # committed + journaled
    fleet5.wait_converged()
    fleet5.kill(4)

    shutil.rmtree(node.host_dir)
    shutil.copytree(old_copy, node.host_dir)
    (node.host_dir / READY_FILE).unlink(missing_ok=True)
    fleet5.start(4)  # it starts, but not from the old state
    log = (node.host_dir / "stdout.log").read_text(encoding="utf-8")
    assert "RollbackError" in log
    assert "rejoin as new incarnation" in log
    rejoined = fleet5.wait_member(4, above_incarnation=formed)
    assert rejoined.incarnation == formed + 1
    fleet5.leader()
    fleet5.wait_converged()
    # Every node, the rejoined one included, counts that guess.
    for i in range(fleet5.size):
        assert attempts_remaining(fleet5.client, user, node=i) == LIMIT - 1
    # The rejoined node serves: a guess through it is counted by the whole fleet.
    assert wrong_guess(fleet5.client, user, node=4) is Outcome.OK
    fleet5.wait_converged()
    for i in range(fleet5.size):
        assert attempts_remaining(fleet5.client, user, node=i) == LIMIT - 2


def _check_everything_acknowledged_is_there(fleet: LocalFleet) -> None:
    fleet.wait_converged()
    for i in fleet.running():
        assert attempts_remaining(fleet.client, USERS[0], node=i) == LIMIT - 1
    for user in USERS[1:]:
        assert login(fleet.client, user, b"pw-" + user) == (Outcome.OK, WRAPPED_KEY)
