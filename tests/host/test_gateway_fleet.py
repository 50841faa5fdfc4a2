"""End to end over real HTTP: a device talks to the gateway (uvicorn on loopback), the
gateway to a real local fleet of node processes (tests/integration machinery).

Registration, login (the LoginFinish routed to the node that opened the session),
guess counting, unknown users indistinguishable from registered ones at the HTTP
level, and a backup upload/download through the same server."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import httpx
import pytest

from hsmvault.errors import InvalidLogin, Unavailable
from hsmvault.fleet.fleet_keys import FleetPublicKeys
from hsmvault.host.fleet_client import FleetClient, NodeAnswer
from hsmvault.host.gateway import DevTokenIssuer, GatewayConfig, GatewayServer, create_app
from hsmvault.wire.hsm_api import LoginStartRequest, Outcome, decode_response
from tests.integration.conftest import LocalFleet, start_local_fleet
from tests.integration.vault_client import (
    WRAPPED_KEY,
    attempts_remaining,
    login,
    login_start,
    register,
)

from .fakes import MemoryBlobStore, MemoryMetadataStore

pytestmark = pytest.mark.slow
ISSUER = "https://auth.e2e.test"


class GatewayVault:
    """What a device holds: the gateway URL and its user's token. Shaped like a
    FleetClient so the integration helpers (OPAQUE over the wire API) run unchanged;
    ``prefer``/``failover`` are the gateway's business, so they are ignored."""

    def __init__(self, http: httpx.Client, token: str) -> None:
        self._http = http
        self._headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/octet-stream",
        }
        r = http.get("/v1/fleet", headers={"Authorization": f"Bearer {token}"})
        r.raise_for_status()
        self.public_keys = FleetPublicKeys.from_dict(r.json())
        self.last: httpx.Response | None = None

    def call(
        self, request: bytes, *, prefer: int | None = None, failover: bool = True
    ) -> NodeAnswer:
        r = self._http.post("/v1/vault", content=request, headers=self._headers)
        self.last = r
        if r.status_code == 503:
            raise Unavailable("gateway: fleet unavailable")
        assert r.status_code == 200, r.text
        return NodeAnswer(0, decode_response(r.content), r.content)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    fleet = start_local_fleet(tmp_path_factory.mktemp("gw-fleet"), nodes=3)
    try:
        yield fleet
    finally:
        fleet.stop_all()
        fleet.mesh.close()


@pytest.fixture(scope="module")
def issuer() -> DevTokenIssuer:
    return DevTokenIssuer(issuer=ISSUER)


@pytest.fixture(scope="module")
def gateway(fleet: LocalFleet, issuer: DevTokenIssuer) -> Iterator[httpx.Client]:
    config = GatewayConfig(
        issuer_public_keys=(issuer.public_key_pem(),),
        issuer=ISSUER,
        fleets={"default": str(fleet.layout.nodes[0].node_dir.parent)},
    )
    app = create_app(
        config,
        fleets={"default": fleet.client},
        blobs=MemoryBlobStore(),
        metadata=MemoryMetadataStore(),
    )
    with GatewayServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


def _device(gateway: httpx.Client, issuer: DevTokenIssuer, user: str) -> FleetClient:
    return cast(FleetClient, GatewayVault(gateway, issuer.mint(user)))


def test_health_over_real_http(gateway: httpx.Client) -> None:
    assert gateway.get("/v1/health").json() == {"status": "ok"}


def test_fleet_keys_are_the_fleets(
    gateway: httpx.Client, fleet: LocalFleet, issuer: DevTokenIssuer
) -> None:
    assert gateway.get("/v1/fleet").json() == fleet.layout.public_keys.to_dict()


def test_register_and_login_through_the_gateway(
    gateway: httpx.Client, issuer: DevTokenIssuer
) -> None:
    device = _device(gateway, issuer, "alice")
    assert register(device, b"alice", b"correct horse", guess_limit=5) is Outcome.OK
    # LoginFinish only succeeds on the node that opened the session: the gateway routed it
    assert login(device, b"alice", b"correct horse") == (Outcome.OK, WRAPPED_KEY)
    assert attempts_remaining(device, b"alice") == 5
    with pytest.raises(InvalidLogin):  # the device detects the wrong password
        login(device, b"alice", b"wrong")
    assert attempts_remaining(device, b"alice") == 4  # counted at LoginStart


def test_another_users_token_cannot_touch_alice(
    gateway: httpx.Client, issuer: DevTokenIssuer
) -> None:
    body = LoginStartRequest(b"alice", b"\x01" * 96).to_bytes()
    r = gateway.post(
        "/v1/vault",
        content=body,
        headers={"Authorization": f"Bearer {issuer.mint('mallory')}"},
    )
    assert r.status_code == 403


def test_unknown_user_looks_like_a_registered_user_at_the_http_level(
    gateway: httpx.Client, issuer: DevTokenIssuer
) -> None:
    bob = GatewayVault(gateway, issuer.mint("bob"))
    assert register(cast(FleetClient, bob), b"bob", b"bobs pin") is Outcome.OK
    ghost = GatewayVault(gateway, issuer.mint("ghost"))
    seen = []
    for vault, user in ((bob, b"bob"), (ghost, b"ghost")):
        pending = login_start(cast(FleetClient, vault), user, b"a wrong guess")
        assert not isinstance(pending, Outcome)
        assert vault.last is not None
        seen.append(
            (
                vault.last.status_code,
                len(vault.last.content),
                vault.last.headers["content-type"],
                sorted(vault.last.headers.keys()),
            )
        )
    assert seen[0] == seen[1]


def test_backup_round_trip_over_real_http(
    gateway: httpx.Client, issuer: DevTokenIssuer, tmp_path: Path
) -> None:
    headers = {"Authorization": f"Bearer {issuer.mint('carol')}"}
    data = bytes(range(256)) * 4096  # 1 MiB of "ciphertext"
    start = gateway.post(
        "/v1/backups/laptop/uploads",
        json={"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "label": "laptop"},
        headers=headers,
    ).json()
    offset = start["offset"]
    while offset < len(data):
        r = gateway.put(
            f"/v1/backups/laptop/uploads/{start['upload_id']}",
            content=data[offset : offset + 300_000],
            headers={**headers, "Upload-Offset": str(offset)},
        )
        offset = r.json()["offset"]
    commit = gateway.post(
        f"/v1/backups/laptop/uploads/{start['upload_id']}/commit", headers=headers
    )
    assert commit.status_code == 200
    with gateway.stream("GET", "/v1/backups/laptop", headers=headers) as r:
        assert r.headers["content-length"] == str(len(data))
        received = b"".join(r.iter_bytes())
    assert received == data
