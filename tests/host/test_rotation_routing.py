"""Fleet rotation at the gateway (ADR 0013): the router (assignments, active vs retiring
fleets), its configuration, and ``POST /v1/vault`` with assignments and the
``Hsmvault-Fleet`` header, against stub fleets and the in-memory metadata store."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from hsmvault.errors import InvalidParameter, Unavailable
from hsmvault.host.gateway import DevTokenIssuer, GatewayConfig
from hsmvault.host.routing import FleetRing, FleetRouter
from hsmvault.wire.hsm_api import (
    DecommissionRequest,
    DeleteRequest,
    LoginStartRequest,
    LoginStartResponse,
    Outcome,
    RegisterRequest,
    RegisterResponse,
    decode_response,
)

from .conftest import AppFactory, TestClient, bearer, client_for
from .fakes import MemoryMetadataStore, StubFleet

OCTET = {"Content-Type": "application/octet-stream"}
USERS = [f"user-{i}".encode() for i in range(400)]
PEM = DevTokenIssuer().public_key_pem()


class Assignments:
    def __init__(self, table: dict[bytes, str] | None = None) -> None:
        self.table = dict(table or {})
        self.down = False

    def get_fleet_assignment(self, user_id: bytes) -> str | None:
        if self.down:
            raise Unavailable("metadata database unavailable")
        return self.table.get(user_id)


# ------------------------------------------------------------------ the router


def test_without_retiring_fleets_or_assignments_the_router_is_the_plain_ring() -> None:
    names = ["east", "west", "north"]
    router, ring = FleetRouter(names), FleetRing(names)
    assert all(router.fleet_for(u) == ring.fleet_for(u) for u in USERS)
    assert router.active == ("east", "north", "west")
    assert router.retiring == frozenset()


def test_new_users_go_to_active_fleets_only_and_assigned_users_to_their_fleet() -> None:
    assignments = Assignments({b"old-user": "old", b"moved-user": "new"})
    router = FleetRouter(["old", "new"], retiring=["old"], assignments=assignments)
    assert {router.fleet_for(u) for u in USERS} == {"new"}  # nobody new on "old"
    assert router.fleet_for(b"old-user") == "old"
    assert router.fleet_for(b"moved-user") == "new"
    assert router.assigned_fleet(b"user-1") is None
    assert router.new_user_fleet(b"old-user") == "new"


def test_an_assignment_to_a_fleet_no_longer_routed_falls_back_to_the_active_ring() -> None:
    router = FleetRouter(["b"], assignments=Assignments({b"u": "a-decommissioned"}))
    assert router.fleet_for(b"u") == "b"


def test_several_active_fleets_share_new_users_by_the_ring() -> None:
    router = FleetRouter(["a", "b", "c"], retiring=["a"])
    ring = FleetRing(["b", "c"])
    assert all(router.fleet_for(u) == ring.fleet_for(u) for u in USERS)
    assert {router.fleet_for(u) for u in USERS} == {"b", "c"}


def test_lookup_failures_propagate() -> None:
    assignments = Assignments()
    assignments.down = True
    with pytest.raises(Unavailable):
        FleetRouter(["a"], assignments=assignments).fleet_for(b"u")


@pytest.mark.parametrize(
    ("fleets", "retiring"),
    [(["a"], ["a"]), (["a", "b"], ["c"]), ([], [])],
)
def test_router_refuses_impossible_tables(fleets: list[str], retiring: list[str]) -> None:
    with pytest.raises(InvalidParameter):
        FleetRouter(fleets, retiring=retiring)


# ------------------------------------------------------------------ configuration


def _config(**kw: object) -> GatewayConfig:
    return GatewayConfig(issuer_public_keys=(PEM,), issuer="iss", **kw)  # type: ignore[arg-type]


def test_retiring_fleets_are_configured_by_name(tmp_path: Path) -> None:
    config = _config(fleets={"old": "a", "new": "b"}, retiring_fleets=["old"], default_fleet="new")
    assert config.retiring_fleets == ("old",)
    assert _config().retiring_fleets == ()
    document = f"""
[gateway]
issuer = "iss"
issuer_public_keys = [{PEM!r}]
default_fleet = "new"
retiring_fleets = ["old"]

[gateway.fleets]
old = "fleets/old"
new = "fleets/new"
"""
    loaded = GatewayConfig.from_toml(tomllib.loads(document)["gateway"], base_dir=tmp_path)
    assert loaded.retiring_fleets == ("old",)
    assert loaded.fleets["new"] == str(tmp_path / "fleets/new")


@pytest.mark.parametrize(
    "kw",
    [
        {"fleets": {"a": "x"}, "default_fleet": "a", "retiring_fleets": ["a"]},  # none active
        {"fleets": {"a": "x", "b": "y"}, "default_fleet": "a", "retiring_fleets": ["c"]},
        {"fleets": {"a": "x", "b": "y"}, "default_fleet": "a", "retiring_fleets": ["a"]},
        {"fleets": {"a": "x", "b": "y"}, "default_fleet": "b", "retiring_fleets": ["a", "a"]},
        {"fleets": {"a": "x", "b": "y"}, "default_fleet": "b", "retiring_fleets": "a"},
    ],
)
def test_bad_retiring_fleet_settings_are_refused(kw: dict[str, object]) -> None:
    with pytest.raises(InvalidParameter):
        _config(**kw)


# ------------------------------------------------------------------ the relay


def _post(
    client: TestClient, token: str, body: bytes, fleet: str | None = None
) -> tuple[int, bytes]:
    headers = {**bearer(token), **OCTET}
    if fleet is not None:
        headers["Hsmvault-Fleet"] = fleet
    r = client.post("/v1/vault", content=body, headers=headers)
    return r.status_code, r.content


def _register(user: bytes) -> bytes:
    return RegisterRequest(user, bytes(32), b"\x5a" * 200).to_bytes()


def _login_start(user: bytes) -> bytes:
    return LoginStartRequest(user, b"\x01" * 96).to_bytes()


class Rotation:
    """A gateway routing two stub fleets, "old" (retiring) and "new" (active)."""

    def __init__(self, make_app: AppFactory, *, retiring: tuple[str, ...] = ("old",)) -> None:
        self.old = StubFleet(default_outcome=Outcome.OK)
        self.new = StubFleet(default_outcome=Outcome.OK)
        self.metadata = MemoryMetadataStore()
        self.client = client_for(
            make_app(
                fleets={"old": self.old, "new": self.new},
                metadata=self.metadata,
                retiring_fleets=retiring,
                default_fleet="new",
            )
        )

    def header(self, fleet: StubFleet) -> str:
        keys = fleet.public_keys
        assert keys is not None
        return keys.fleet_id.hex()

    def calls(self) -> tuple[int, int]:
        return len(self.old.calls), len(self.new.calls)


@pytest.fixture
def rotation(make_app: AppFactory) -> Rotation:
    return Rotation(make_app)


def test_a_successful_register_assigns_the_user_to_the_fleet_that_answered(
    rotation: Rotation, issuer: DevTokenIssuer
) -> None:
    token = issuer.mint("alice")
    assert _post(rotation.client, token, _register(b"alice"))[0] == 200
    assert rotation.calls() == (0, 1)  # a new user goes to the active fleet
    assert rotation.metadata.get_fleet_assignment(b"alice") == "new"
    # a refused Register assigns nothing
    rotation.new.answer_override = RegisterResponse.refused(Outcome.ALREADY_REGISTERED)
    assert _post(rotation.client, issuer.mint("bob"), _register(b"bob"))[0] == 200
    assert rotation.metadata.get_fleet_assignment(b"bob") is None


def test_an_assigned_user_stays_on_the_retiring_fleet(
    rotation: Rotation, issuer: DevTokenIssuer
) -> None:
    rotation.metadata.set_fleet_assignment(b"alice", "old", 1.0)
    token = issuer.mint("alice")
    for _ in range(2):
        assert _post(rotation.client, token, _login_start(b"alice"))[0] == 200
    assert rotation.calls() == (2, 0)
    keys = rotation.client.get("/v1/fleet", headers=bearer(token)).json()
    assert keys["fleet_id"] == rotation.header(rotation.old)


def test_the_fleet_header_moves_a_user_and_sessions_stay_on_their_fleet(
    rotation: Rotation, issuer: DevTokenIssuer
) -> None:
    rotation.metadata.set_fleet_assignment(b"alice", "old", 1.0)
    token = issuer.mint("alice")
    status, content = _post(rotation.client, token, _login_start(b"alice"))
    start = decode_response(content)
    assert status == 200
    assert isinstance(start, LoginStartResponse)
    # register at the new fleet by naming it (hex, case-insensitive)
    status, _ = _post(
        rotation.client, token, _register(b"alice"), rotation.header(rotation.new).upper()
    )
    assert status == 200
    assert rotation.calls() == (1, 1)
    assert rotation.metadata.get_fleet_assignment(b"alice") == "new"
    # the old session is still routed to the old fleet; its Delete keeps the new assignment
    delete = DeleteRequest(start.session_id, b"\x07" * 64).to_bytes()
    assert _post(rotation.client, token, delete, rotation.header(rotation.new))[0] == 400
    assert _post(rotation.client, token, delete)[0] == 200
    assert rotation.calls() == (2, 1)
    assert rotation.metadata.get_fleet_assignment(b"alice") == "new"
    assert _post(rotation.client, token, _login_start(b"alice"))[0] == 200
    assert rotation.calls() == (2, 2)  # routed by the new assignment


def test_a_delete_on_the_assigned_fleet_drops_the_assignment(
    rotation: Rotation, issuer: DevTokenIssuer
) -> None:
    token = issuer.mint("alice")
    assert _post(rotation.client, token, _register(b"alice"))[0] == 200
    start = decode_response(_post(rotation.client, token, _login_start(b"alice"))[1])
    assert isinstance(start, LoginStartResponse)
    delete = DeleteRequest(start.session_id, b"\x07" * 64).to_bytes()
    assert _post(rotation.client, token, delete)[0] == 200
    assert rotation.metadata.get_fleet_assignment(b"alice") is None


@pytest.mark.parametrize(
    "value",
    ["", "zz" * 32, "ab" * 31, "ab" * 33, "ab" * 32, " " + "0" * 63],
)
def test_a_header_naming_no_configured_fleet_is_400(
    rotation: Rotation, issuer: DevTokenIssuer, value: str
) -> None:
    status, content = _post(rotation.client, issuer.mint("alice"), _login_start(b"alice"), value)
    assert status == 400
    assert b"Hsmvault-Fleet" in content
    assert rotation.calls() == (0, 0)


def test_decommission_is_the_operators_and_refused(
    rotation: Rotation, issuer: DevTokenIssuer
) -> None:
    body = DecommissionRequest(bytes.fromhex(rotation.header(rotation.old))).to_bytes()
    assert _post(rotation.client, issuer.mint("alice"), body)[0] == 403
    assert _post(rotation.client, issuer.mint("alice"), body, rotation.header(rotation.old))[0] == (
        403
    )
    assert rotation.calls() == (0, 0)


def test_an_assignment_that_cannot_be_stored_is_a_503(
    rotation: Rotation, issuer: DevTokenIssuer
) -> None:
    token = issuer.mint("alice")
    rotation.metadata.assignments_unavailable = True
    status, _ = _post(rotation.client, token, _register(b"alice"), rotation.header(rotation.new))
    assert status == 503  # the record may exist, but the caller must not act on it
    assert rotation.calls() == (0, 1)
    status, _ = _post(rotation.client, token, _login_start(b"alice"))
    assert status == 503  # and routing cannot be decided either
    rotation.metadata.assignments_unavailable = False
    assert rotation.metadata.get_fleet_assignment(b"alice") is None


def test_a_retiring_fleet_takes_no_unassigned_user(
    make_app: AppFactory, issuer: DevTokenIssuer
) -> None:
    rotation = Rotation(make_app)
    for i in range(30):
        user = f"user-{i}"
        assert _post(rotation.client, issuer.mint(user), _login_start(user.encode()))[0] == 200
    assert rotation.calls() == (0, 30)
    both = Rotation(make_app, retiring=())
    for i in range(30):
        user = f"user-{i}"
        assert _post(both.client, issuer.mint(user), _login_start(user.encode()))[0] == 200
    assert min(both.calls()) > 0  # without rotation the ring spreads users over both


def test_two_table_entries_for_one_fleet_are_refused(make_app: AppFactory) -> None:
    one = StubFleet()
    twin = StubFleet()
    twin.public_keys = one.public_keys
    with pytest.raises(InvalidParameter):
        make_app(fleets={"a": one, "b": twin})


def test_the_config_fixture_is_unchanged_by_rotation(config: GatewayConfig) -> None:
    assert dataclasses.replace(config).retiring_fleets == ()
