"""Real fleets on loopback: commits, majority loss, and attacks on a node's port."""

from __future__ import annotations

import pickle
import socket
import struct
import time
import zlib
from collections.abc import Callable
from typing import Any

import pytest
from pysyncobj import pickle as psy_pickle  # type: ignore[import-untyped]

from hsmvault.errors import InvalidParameter, Unavailable
from hsmvault.fleet.codec import MAX_COMMAND_SIZE
from hsmvault.fleet.membership import SoftwareIdentitySigner, node_id_for
from hsmvault.fleet.secure_link import MSG1_LEN, HandshakeInitiator

from .conftest import LOOPBACK, Fleet, PickleSpy, make_membership, wait_for

MakeFleet = Callable[[int], Fleet]

UNPICKLED: list[str] = []


def record_unpickle(tag: str) -> None:
    """Called only if someone unpickles the crafted payload below."""
    UNPICKLED.append(tag)


class _Exploit:
    def __reduce__(self) -> tuple[Any, ...]:
        return (record_unpickle, ("network bytes were unpickled",))


def _submit_retrying(node: Any, command: bytes, deadline: float) -> bytes:
    """What a client does: retry on Unavailable until a deadline."""
    while True:
        try:
            result: bytes = node.submit(command, timeout=1.0)
            return result
        except Unavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _start_all(fleet: Fleet) -> None:
    for i in range(len(fleet.nodes)):
        fleet.start(i)


def _read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """Everything the peer sends until it closes; fails the test if it stays open."""
    sock.settimeout(timeout)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail("node kept the connection open")
    return received


def test_three_nodes_commit_and_all_replicas_agree(
    make_fleet: MakeFleet, pickle_spy: PickleSpy
) -> None:
    fleet = make_fleet(3)
    _start_all(fleet)
    leader = fleet.leader()
    follower = next(n for n in fleet.running() if n is not leader)
    results = [follower.submit(b"via follower %d" % i, timeout=5.0) for i in range(10)]
    results += [leader.submit(b"via leader %d" % i, timeout=5.0) for i in range(10)]
    assert results[0] == b"applied:1:via follower 0"
    assert results[-1] == b"applied:20:via leader 9"

    expected = [b"via follower %d" % i for i in range(10)] + [
        b"via leader %d" % i for i in range(10)
    ]
    wait_for(lambda: all(r.snapshot() == expected for r in fleet.replicas), 5.0, "replication")
    pickle_spy.assert_only_local_bytes_unpickled()


def test_fleet_survives_one_loss_and_refuses_without_majority(make_fleet: MakeFleet) -> None:
    fleet = make_fleet(3)
    _start_all(fleet)
    leader = fleet.leader()
    assert leader.submit(b"before", timeout=5.0) == b"applied:1:before"

    # Destroy the leader: the two others elect a new one and keep committing.
    fleet.stop(fleet.nodes.index(leader))
    survivor = fleet.running()[0]
    deadline = time.monotonic() + 5.0
    assert _submit_retrying(survivor, b"after one loss", deadline).endswith(b"after one loss")

    # Destroy a second node: no majority, no commit.
    fleet.stop(fleet.nodes.index(survivor))
    last = fleet.running()[0]
    started = time.monotonic()
    with pytest.raises(Unavailable):
        last.submit(b"without majority", timeout=1.0)
    assert time.monotonic() - started < 2.0
    assert b"without majority" not in last_replica_log(fleet, last)


def last_replica_log(fleet: Fleet, node: Any) -> list[bytes]:
    return fleet.replicas[fleet.nodes.index(node)].snapshot()


def test_submit_validates_its_arguments(make_fleet: MakeFleet) -> None:
    fleet = make_fleet(1)
    node = fleet.start(0)
    assert node.submit(b"solo", timeout=5.0) == b"applied:1:solo"
    with pytest.raises(InvalidParameter):
        node.submit(bytes(MAX_COMMAND_SIZE + 1), timeout=1.0)
    with pytest.raises(InvalidParameter):
        node.submit(b"x", timeout=0)
    node.destroy()
    with pytest.raises(Unavailable):
        node.submit(b"x", timeout=1.0)


def test_crafted_pickle_on_the_raft_port_is_never_unpickled(
    make_fleet: MakeFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[bytes] = []
    for module, name in [(pickle, "loads"), (pickle, "_loads"), (psy_pickle, "loads")]:
        real = getattr(module, name)

        def spy(data: Any, *args: Any, _real: Any = real, **kwargs: Any) -> Any:
            seen.append(bytes(data))
            return _real(data, *args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    UNPICKLED.clear()

    fleet = make_fleet(3)
    _start_all(fleet)
    fleet.leader()
    target = fleet.membership[fleet.running()[0].node_id]
    payload = pickle.dumps({"type": "append_entries", "x": _Exploit()}, protocol=2)
    # pysyncobj's own framing: native 4-byte length + zlib(pickle). Long enough that the
    # node has a full "msg1" to judge, plus a second copy for good measure.
    body = zlib.compress(payload)
    frame = struct.pack("i", len(body)) + body
    frame = (frame * (MSG1_LEN // len(frame) + 2))[: MSG1_LEN + 64]
    with socket.create_connection((LOOPBACK, target.port), timeout=2.0) as sock:
        sock.sendall(frame)
        assert _read_until_closed(sock, timeout=2.0) == b""
    assert UNPICKLED == []
    assert not any(payload in data or body in data for data in seen)
    # The fleet is unharmed.
    assert fleet.running()[0].submit(b"still fine", timeout=5.0).endswith(b"still fine")


def test_short_garbage_is_dropped_at_the_handshake_deadline(make_fleet: MakeFleet) -> None:
    fleet = make_fleet(1)
    node = fleet.start(0)
    port = fleet.membership[node.node_id].port
    with socket.create_connection((LOOPBACK, port), timeout=2.0) as sock:
        sock.sendall(b"\x80\x02}q\x00.")  # a tiny pickle, then silence
        started = time.monotonic()
        assert _read_until_closed(sock, timeout=3.0) == b""
    assert time.monotonic() - started < 2.5


def test_outsider_with_a_well_formed_handshake_is_refused(make_fleet: MakeFleet) -> None:
    fleet = make_fleet(3)
    node = fleet.start(0)
    outsider = SoftwareIdentitySigner.generate()
    target_key = fleet.signers[0].public_key()
    # The outsider's own view of "the fleet": same fleet id, itself and the target.
    view = make_membership([outsider, fleet.signers[0]], fleet.membership.fleet_id)
    msg1 = HandshakeInitiator(outsider, view, node_id_for(target_key)).start()
    with socket.create_connection((LOOPBACK, fleet.membership[node.node_id].port)) as sock:
        sock.sendall(msg1)
        # Refused before the node signs anything: no msg2 comes back.
        assert _read_until_closed(sock, timeout=2.0) == b""


def test_term_commit_index_and_read_barrier(make_fleet: MakeFleet) -> None:
    fleet = make_fleet(3)
    _start_all(fleet)
    leader = fleet.leader()
    follower = next(n for n in fleet.running() if n is not leader)
    follower.submit(b"one", timeout=5.0)
    assert leader.term >= 1
    assert leader.commit_index >= leader.last_applied >= 1
    before = follower.last_applied
    follower.sync(timeout=5.0)  # a committed no-op, applied here before it returns
    assert follower.last_applied > before
    assert follower.commit_index >= follower.last_applied
    assert follower.term == leader.term
    assert follower.highest_incarnation(leader.node_id) == 0
    assert follower.highest_incarnation("00" * 32) is None
    with pytest.raises(InvalidParameter):
        follower.sync(timeout=0)
