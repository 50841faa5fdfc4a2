"""POST /v1/vault against a stub fleet: binding requests to the token user, session
routing to the node that opened the session, exact bytes, and refusals."""

from __future__ import annotations

import secrets

import pytest

from hsmvault.host.gateway import DevTokenIssuer
from hsmvault.host.routing import FleetRing
from hsmvault.wire.hsm_api import (
    AttemptsRemainingRequest,
    ChangeSecretRequest,
    DeleteRequest,
    InstallBundleRequest,
    LoginFinishRequest,
    LoginFinishResponse,
    LoginStartRequest,
    LoginStartResponse,
    Outcome,
    RegisterResponse,
    RegistrationStartRequest,
    RejoinRequest,
    StatusRequest,
    decode_response,
)

from .conftest import AppFactory, FakeClock, TestClient, bearer, client_for
from .fakes import StubFleet

OCTET = {"Content-Type": "application/octet-stream"}


def _post(client: TestClient, token: str, body: bytes) -> tuple[int, bytes, dict[str, str]]:
    r = client.post("/v1/vault", content=body, headers={**bearer(token), **OCTET})
    return r.status_code, r.content, dict(r.headers)


def _login_start(user: bytes) -> bytes:
    return LoginStartRequest(user, b"\x01" * 96).to_bytes()


def _login_finish(session_id: bytes) -> bytes:
    return LoginFinishRequest(session_id, b"\x04" * 64).to_bytes()


@pytest.fixture
def client(make_app: AppFactory) -> TestClient:
    return client_for(make_app())


def test_request_and_response_bytes_are_relayed_exactly(
    client: TestClient, issuer: DevTokenIssuer, stub_fleet: StubFleet
) -> None:
    body = _login_start(b"alice")
    status, content, headers = _post(client, issuer.mint("alice"), body)
    assert status == 200
    assert headers["content-type"] == "application/octet-stream"
    assert stub_fleet.calls[-1].request == body
    response = decode_response(content)
    assert isinstance(response, LoginStartResponse)
    assert response.outcome is Outcome.OK


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\x02",
        b"garbage bytes",
        _login_start(b"alice") + b"\x00",  # trailing byte
        b"\x09" + _login_start(b"alice")[1:],  # unknown version
    ],
)
def test_malformed_wire_request_is_400_and_not_relayed(
    client: TestClient, issuer: DevTokenIssuer, stub_fleet: StubFleet, body: bytes
) -> None:
    status, _content, _ = _post(client, issuer.mint("alice"), body)
    assert status == 400
    assert not stub_fleet.calls


@pytest.mark.parametrize(
    "body",
    [
        _login_start(b"bob"),
        RegistrationStartRequest(b"bob", b"\x01" * 32).to_bytes(),
        AttemptsRemainingRequest(b"bob").to_bytes(),
        AttemptsRemainingRequest(b"alice ").to_bytes(),
    ],
)
def test_request_naming_another_user_is_403(
    client: TestClient, issuer: DevTokenIssuer, stub_fleet: StubFleet, body: bytes
) -> None:
    status, content, _ = _post(client, issuer.mint("alice"), body)
    assert status == 403
    assert b"forbidden" in content
    assert not stub_fleet.calls


def test_rejoin_is_fleet_internal_and_refused(
    client: TestClient, issuer: DevTokenIssuer, stub_fleet: StubFleet
) -> None:
    body = RejoinRequest(b"\x00" * 32, b"\x01" * 32, 2, b"\x02" * 64).to_bytes()
    assert _post(client, issuer.mint("alice"), body)[0] == 403
    assert not stub_fleet.calls


def test_install_bundle_is_the_operators_and_refused(
    client: TestClient, issuer: DevTokenIssuer, stub_fleet: StubFleet
) -> None:
    body = InstallBundleRequest(2**64 - 1, b"garbage").to_bytes()
    assert _post(client, issuer.mint("alice"), body)[0] == 403
    assert not stub_fleet.calls


def test_status_request_is_relayed(
    client: TestClient, issuer: DevTokenIssuer, stub_fleet: StubFleet
) -> None:
    assert _post(client, issuer.mint("alice"), StatusRequest().to_bytes())[0] == 200


def test_session_requests_go_only_to_the_node_that_opened_the_session(
    client: TestClient, issuer: DevTokenIssuer, stub_fleet: StubFleet
) -> None:
    token = issuer.mint("alice")
    stub_fleet.next_node = 3
    _, content, _ = _post(client, token, _login_start(b"alice"))
    start = decode_response(content)
    assert isinstance(start, LoginStartResponse)
    stub_fleet.next_node = 0  # later requests would start elsewhere
    for body in (
        _login_finish(start.session_id),
        ChangeSecretRequest(start.session_id, b"\x05" * 32, b"\x06" * 120, b"\x07" * 64).to_bytes(),
        DeleteRequest(start.session_id, b"\x07" * 64).to_bytes(),
    ):
        status, content, _ = _post(client, token, body)
        assert status == 200
        call = stub_fleet.calls[-1]
        assert (call.prefer, call.failover, call.request) == (3, False, body)
    _, content, _ = _post(client, token, _login_finish(start.session_id))
    finish = decode_response(content)
    assert isinstance(finish, LoginFinishResponse)
    assert finish.outcome is Outcome.OK


def test_session_of_another_user_is_403(
    client: TestClient, issuer: DevTokenIssuer, stub_fleet: StubFleet
) -> None:
    _, content, _ = _post(client, issuer.mint("alice"), _login_start(b"alice"))
    start = decode_response(content)
    assert isinstance(start, LoginStartResponse)
    calls = len(stub_fleet.calls)
    status, _, _ = _post(client, issuer.mint("mallory"), _login_finish(start.session_id))
    assert status == 403
    assert len(stub_fleet.calls) == calls  # never reached the fleet


def test_unknown_and_expired_sessions_are_403(
    client: TestClient, issuer: DevTokenIssuer, clock: FakeClock, stub_fleet: StubFleet
) -> None:
    token = issuer.mint("alice")
    assert _post(client, token, _login_finish(secrets.token_bytes(16)))[0] == 403
    _, content, _ = _post(client, token, _login_start(b"alice"))
    start = decode_response(content)
    assert isinstance(start, LoginStartResponse)
    clock.advance(421)  # session_ttl is 420 s
    assert _post(client, issuer.mint("alice"), _login_finish(start.session_id))[0] == 403


def test_fleet_unavailable_is_503_with_retry_after(
    client: TestClient, issuer: DevTokenIssuer, stub_fleet: StubFleet
) -> None:
    stub_fleet.unavailable = True
    status, content, headers = _post(client, issuer.mint("alice"), _login_start(b"alice"))
    assert status == 503
    assert int(headers["retry-after"]) >= 1
    assert b"unavailable" in content


def test_unavailable_outcome_is_503(
    client: TestClient, issuer: DevTokenIssuer, stub_fleet: StubFleet
) -> None:
    stub_fleet.answer_override = LoginStartResponse.refused(Outcome.UNAVAILABLE)
    status, _, headers = _post(client, issuer.mint("alice"), _login_start(b"alice"))
    assert status == 503
    assert "retry-after" in headers


def test_response_of_the_wrong_type_is_502(
    client: TestClient, issuer: DevTokenIssuer, stub_fleet: StubFleet
) -> None:
    stub_fleet.answer_override = RegisterResponse(Outcome.OK)
    assert _post(client, issuer.mint("alice"), _login_start(b"alice"))[0] == 502


def test_oversized_body_is_413(
    client: TestClient, issuer: DevTokenIssuer, stub_fleet: StubFleet
) -> None:
    assert _post(client, issuer.mint("alice"), b"\x02" * (64 * 1024 + 1))[0] == 413
    assert not stub_fleet.calls


def test_users_are_routed_to_their_fleet_by_the_ring(
    make_app: AppFactory, issuer: DevTokenIssuer
) -> None:
    fleets = {"east": StubFleet(), "west": StubFleet()}
    client = client_for(make_app(fleets=fleets))
    ring = FleetRing(fleets)
    for i in range(20):
        user = f"user-{i}"
        before = {name: len(f.calls) for name, f in fleets.items()}
        assert _post(client, issuer.mint(user), _login_start(user.encode()))[0] == 200
        target = ring.fleet_for(user.encode())
        assert {name: len(f.calls) - before[name] for name, f in fleets.items()} == {
            target: 1,
            ({"east", "west"} - {target}).pop(): 0,
        }
        keys = client.get("/v1/fleet", headers=bearer(issuer.mint(user))).json()
        public = fleets[target].public_keys
        assert public is not None
        assert keys == public.to_dict()
    default = fleets["east"].public_keys
    assert default is not None
    assert client.get("/v1/fleet").json() == default.to_dict()
