"""Every way into a running node process, fed garbage: the API port (frames, wire
requests, rejoin tickets) and the Raft port (raw bytes, a handshake from an unknown
identity, a crafted pickle). Each gets a clear refusal — an error response or a closed
connection — the node keeps serving, and no node's state changes.

One 3-node fleet for the module (no client traffic but ours).
"""

from __future__ import annotations

import pickle
import secrets
import socket
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hsmvault.fleet.membership import FleetMember, FleetMembership, SoftwareIdentitySigner
from hsmvault.fleet.node_api import (
    KIND_NODE_INFO,
    KIND_VAULT,
    MAX_FRAME_LEN,
    encode_frame,
    recv_frame,
)
from hsmvault.fleet.secure_link import HandshakeInitiator
from hsmvault.wire import hsm_api as api
from hsmvault.wire.hsm_api import Outcome, decode_response

from .conftest import LocalFleet, start_local_fleet
from .vault_client import attempts_remaining, register, wrong_guess

pytestmark = pytest.mark.timeout(60)
USER = b"entry-point-user"
TIMEOUT = 5.0


@pytest.fixture(scope="module")
def fleet3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    fleet = start_local_fleet(tmp_path_factory.mktemp("entry"), nodes=3)
    try:
        assert register(fleet.client, USER, b"pw") is Outcome.OK
        assert wrong_guess(fleet.client, USER, node=0) is Outcome.OK
        fleet.wait_converged()
        yield fleet
    finally:
        fleet.stop_all()
        fleet.mesh.close()


State = tuple[int, int, int, int, int, bool, int]


def _state(fleet: LocalFleet) -> list[State]:
    """Per node: (term, last applied, records, tombstones, incarnation, joining, attempts
    left for USER). Waits for convergence first."""
    fleet.wait_converged()
    rows = []
    for i in range(fleet.size):
        info = fleet.info(i)
        assert info is not None, f"node {i} stopped answering"
        rows.append(
            (
                info.term,
                info.last_applied,
                info.record_count,
                info.tombstone_count,
                info.incarnation,
                info.joining,
                attempts_remaining(fleet.client, USER, node=i),
            )
        )
    return rows


def assert_unchanged(before: list[State], after: list[State]) -> None:
    """Nothing we sent changed any node. The log may only have grown by a leader
    election's no-op entry (the machine may be loaded), and then the term moved too."""
    for (term0, applied0, *rest0), (term1, applied1, *rest1) in zip(before, after, strict=True):
        assert rest1 == rest0
        assert applied1 == applied0 or (applied1 > applied0 and term1 > term0)


@pytest.fixture
def unchanged(fleet3: LocalFleet) -> Iterator[LocalFleet]:
    """The fleet's state before the test equals its state after, and every node runs."""
    before = _state(fleet3)
    yield fleet3
    assert fleet3.running() == [0, 1, 2]
    for i, proc in fleet3.procs.items():
        assert proc.poll() is None, f"node {i} exited"
    assert_unchanged(before, _state(fleet3))


def _connect(address: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(address, timeout=TIMEOUT)
    sock.settimeout(TIMEOUT)
    return sock


def _closed_by_peer(sock: socket.socket) -> bool:
    """True once the node closes the connection (EOF or reset) without sending data."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def _vault_call(fleet: LocalFleet, i: int, body: bytes) -> api.Response:
    """One KIND_VAULT frame to node ``i``; the parsed answer."""
    with _connect(fleet.layout.nodes[i].api_address) as sock:
        sock.sendall(encode_frame(KIND_VAULT, body))
        frame = recv_frame(sock)
    assert frame is not None
    assert frame[0] == KIND_VAULT
    return decode_response(frame[1])


def _serves(fleet: LocalFleet, i: int) -> None:
    response = _vault_call(fleet, i, api.StatusRequest().to_bytes())
    assert isinstance(response, api.StatusResponse)
    assert response.outcome is Outcome.OK


# ------------------------------------------------------------------ API port: frames


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"\xff" * 64, id="garbage"),
        pytest.param(struct.pack(">I", MAX_FRAME_LEN + 1) + b"\x01" * 16, id="oversize-length"),
        pytest.param(struct.pack(">I", 0xFFFF_FFFF), id="huge-length"),
        pytest.param(struct.pack(">I", 0), id="zero-length"),
        pytest.param(struct.pack(">IB", 1, 0x7F), id="unknown-kind"),
        pytest.param(struct.pack(">IB", 3, KIND_NODE_INFO) + b"xy", id="info-with-body"),
    ],
)
def test_api_port_closes_on_bad_frames(unchanged: LocalFleet, raw: bytes) -> None:
    for i in range(unchanged.size):
        with _connect(unchanged.layout.nodes[i].api_address) as sock:
            sock.sendall(raw)
            assert _closed_by_peer(sock)
        _serves(unchanged, i)


def test_api_port_closes_on_a_truncated_frame(unchanged: LocalFleet) -> None:
    node = unchanged.layout.nodes[1]
    with _connect(node.api_address) as sock:
        sock.sendall(struct.pack(">IB", 200, KIND_VAULT) + b"\x02\x03" * 10)
        sock.shutdown(socket.SHUT_WR)  # the rest never comes
        assert _closed_by_peer(sock)
    with _connect(node.api_address) as sock:
        sock.sendall(b"\x00\x00")  # half a length prefix
        sock.shutdown(socket.SHUT_WR)
        assert _closed_by_peer(sock)
    _serves(unchanged, 1)


def test_api_port_answers_garbage_requests_bad_request(unchanged: LocalFleet) -> None:
    for body in (
        b"",
        b"\xde\xad\xbe\xef",
        b"\x02",
        b"\x02\x7e",
        b"\x01\x08",
        secrets.token_bytes(300),
    ):
        response = _vault_call(unchanged, 0, body)
        assert isinstance(response, api.ErrorResponse)
        assert response.outcome is Outcome.BAD_REQUEST


# ------------------------------------------------------------------ API port: each request


def _valid_requests(fleet: LocalFleet) -> list[api.Request]:
    """One wire-valid instance of every request type (contents meaningless)."""
    return [
        api.RegistrationStartRequest(USER, b"\x01" * 32),
        api.RegisterRequest(USER, bytes(32), b"\x5a" * api.MIN_SEALED_UPLOAD_LEN, 3, True),
        api.LoginStartRequest(USER, b"\x01" * 96),
        api.LoginFinishRequest(bytes(16), b"\x01" * 64),
        api.AttemptsRemainingRequest(USER),
        api.ChangeSecretRequest(
            bytes(16), bytes(32), b"\x5a" * api.MIN_SEALED_UPLOAD_LEN, bytes(64)
        ),
        api.DeleteRequest(bytes(16), bytes(64)),
        api.StatusRequest(),
        api.RejoinRequest(fleet.layout.fleet_id, bytes(32), 2, bytes(64)),
        api.InstallBundleRequest(1, b"\x01"),
        api.DecommissionRequest(bytes(32)),  # another fleet's id: erases nothing
    ]


def test_every_request_type_with_malformed_encoding_is_refused(unchanged: LocalFleet) -> None:
    requests = _valid_requests(unchanged)
    assert {type(r) for r in requests} == set(api.RESPONSE_FOR)
    refused = {Outcome.BAD_REQUEST}
    for request in requests:
        data = request.to_bytes()
        # trailing byte, old API version: never a request
        malformed = [(data + b"\x00", refused), (b"\x01" + data[1:], refused)]
        if len(data) > 2:
            # truncated; every field byte 0xff (lengths out of bounds, or — for requests
            # of fixed-size fields only — a wire-valid request naming nothing that exists)
            malformed += [
                (data[:-1], refused),
                (data[:2] + b"\xff" * (len(data) - 2), {Outcome.BAD_REQUEST, Outcome.NO_SESSION}),
            ]
        for body, outcomes in malformed:
            response = _vault_call(unchanged, 2, body)
            assert response.outcome in outcomes, (type(request).__name__, body[:8])


def test_every_request_type_with_meaningless_fields_is_refused(unchanged: LocalFleet) -> None:
    """Wire-valid requests whose fields are not what they claim: no point, no session,
    no seal, no member. Refused before anything is counted or committed."""
    expected = {
        api.RegistrationStartRequest: {Outcome.BAD_REQUEST},
        api.RegisterRequest: {Outcome.BAD_REQUEST},
        api.LoginStartRequest: {Outcome.BAD_REQUEST},
        api.LoginFinishRequest: {Outcome.NO_SESSION, Outcome.BAD_REQUEST},
        api.ChangeSecretRequest: {Outcome.NO_SESSION, Outcome.BAD_REQUEST},
        api.DeleteRequest: {Outcome.NO_SESSION, Outcome.BAD_REQUEST},
        api.RejoinRequest: {Outcome.BAD_REQUEST},  # node id of no member
        api.DecommissionRequest: {Outcome.BAD_REQUEST},  # not this fleet's id
    }
    for request in _valid_requests(unchanged):
        outcomes = expected.get(type(request))
        if outcomes is None:
            continue  # reads (attempts, status): answered OK, and they change nothing;
            # InstallBundle is valid as it stands (bundles are opaque): not sent here
        response = _vault_call(unchanged, 0, request.to_bytes())
        assert isinstance(response, api.RESPONSE_FOR[type(request)])
        assert response.outcome in outcomes, (type(request).__name__, response.outcome)


def test_forged_rejoin_ticket_is_refused(unchanged: LocalFleet) -> None:
    fleet_id = unchanged.layout.fleet_id
    for target in range(unchanged.size):
        victim = bytes.fromhex(unchanged.layout.nodes[(target + 1) % 3].node_id)
        forged = api.RejoinRequest(fleet_id, victim, 2**40, secrets.token_bytes(64))
        response = _vault_call(unchanged, target, forged.to_bytes())
        assert isinstance(response, api.RejoinResponse)
        assert response.outcome is Outcome.INVALID_LOGIN


# ------------------------------------------------------------------ Raft port


def _raft_address(fleet: LocalFleet, i: int) -> tuple[str, int]:
    node = fleet.layout.nodes[i]
    return node.host, node.raft_port


def test_raft_port_drops_garbage(unchanged: LocalFleet) -> None:
    for raw in (secrets.token_bytes(200), b"\x00" * 129, b"\x01" + secrets.token_bytes(128)):
        with _connect(_raft_address(unchanged, 0)) as sock:
            sock.sendall(raw)
            assert _closed_by_peer(sock)
    _serves(unchanged, 0)


def test_raft_port_refuses_a_handshake_from_an_unknown_identity(unchanged: LocalFleet) -> None:
    layout = unchanged.layout
    stranger = SoftwareIdentitySigner.generate()
    members = [*layout.membership().values(), FleetMember(stranger.public_key(), "127.0.0.2", 9)]
    for i in range(unchanged.size):
        target = layout.nodes[i].node_id
        msg1 = HandshakeInitiator(
            stranger, FleetMembership(layout.fleet_id, members), target
        ).start()
        with _connect(_raft_address(unchanged, i)) as sock:
            sock.sendall(msg1)
            assert _closed_by_peer(sock)  # no msg2: the node did no public-key work for it
        _serves(unchanged, i)


class _Canary:
    """Unpickling this would create a file: proof that the node unpickled network bytes."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str, str]]:
        return (open, (str(self.path), "w"))


def test_raft_port_never_unpickles(unchanged: LocalFleet, tmp_path: Path) -> None:
    canary = tmp_path / "unpickled"
    payload = pickle.dumps(_Canary(canary), protocol=2)
    framed = struct.pack(">I", len(payload)) + payload  # pysyncobj's own TCP framing
    for i in range(unchanged.size):
        for raw in (payload, framed, framed * 3):
            with _connect(_raft_address(unchanged, i)) as sock:
                sock.sendall(raw)
                assert _closed_by_peer(sock)
        _serves(unchanged, i)
    assert not canary.exists()
