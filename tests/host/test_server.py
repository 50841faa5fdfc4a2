"""Running the gateway: loopback by default, a real HTTP round trip, the session table."""

from __future__ import annotations

import httpx
import pytest

from hsmvault.errors import InvalidParameter
from hsmvault.host.gateway import DevTokenIssuer, GatewayConfig, GatewayServer, run_gateway
from hsmvault.host.gateway.sessions import SessionTable

from .conftest import AppFactory, FakeClock
from .fakes import MemoryBlobStore, MemoryMetadataStore


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1", "::", "example.com"])
def test_binding_beyond_loopback_needs_allow_remote(make_app: AppFactory, host: str) -> None:
    with pytest.raises(InvalidParameter):
        GatewayServer(make_app(), host=host)


def test_run_gateway_refuses_a_public_address_before_building_anything() -> None:
    config = GatewayConfig(issuer_public_keys=(DevTokenIssuer().public_key_pem(),), issuer="i")
    with pytest.raises(InvalidParameter):
        run_gateway(config, blobs=MemoryBlobStore(), metadata=MemoryMetadataStore(), host="0.0.0.0")


def test_server_serves_on_a_free_loopback_port(make_app: AppFactory) -> None:
    with GatewayServer(make_app()) as server:
        assert server.url.startswith("http://127.0.0.1:")
        assert httpx.get(server.url + "/v1/health").json() == {"status": "ok"}
        missing = httpx.get(server.url + "/v1/nope")
        assert missing.status_code == 404
        assert missing.json() == {"error": "not_found", "detail": "Not Found"}
        assert "server" not in missing.headers


def test_session_table_expires_and_stays_bounded(clock: FakeClock) -> None:
    table = SessionTable(ttl=10, max_entries=3, clock=clock)
    table.open(b"s1", b"alice", "default", 2)
    route = table.lookup(b"s1")
    assert route is not None
    assert (route.user_id, route.fleet, route.node) == (
        b"alice",
        "default",
        2,
    )
    clock.advance(10)
    assert table.lookup(b"s1") is None
    for i in range(5):
        table.open(bytes([i]), b"u", "default", 0)
    assert len(table) == 3
    assert table.lookup(bytes([0])) is None
