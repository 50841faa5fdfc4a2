"""The published OpenAPI document matches the app, and schemathesis, fuzzing every
operation of that document (with a valid token), finds no server error."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from hsmvault.host.gateway import DevTokenIssuer, GatewayConfig, RateLimit, create_app
from hsmvault.host.gateway.openapi import openapi_document, openapi_json
from hsmvault.wire.hsm_api import Outcome

from .fakes import MemoryBlobStore, MemoryMetadataStore, StubFleet

SPEC = Path(__file__).resolve().parents[2] / "docs" / "api" / "openapi-v1.json"


def test_published_spec_matches_the_app() -> None:
    assert SPEC.read_text() == openapi_json(), (
        "docs/api/openapi-v1.json is stale: "
        "python -m hsmvault.host.gateway.openapi > docs/api/openapi-v1.json"
    )


def test_spec_covers_every_route_of_adr_0008() -> None:
    paths = openapi_document()["paths"]
    assert {(p, m) for p, ops in paths.items() for m in ops} == {
        ("/v1/health", "get"),
        ("/v1/fleet", "get"),
        ("/v1/vault", "post"),
        ("/v1/backups", "get"),
        ("/v1/backups/{backup_id}/uploads", "post"),
        ("/v1/backups/{backup_id}/uploads/{upload_id}", "put"),
        ("/v1/backups/{backup_id}/uploads/{upload_id}/commit", "post"),
        ("/v1/backups/{backup_id}", "get"),
        ("/v1/backups/{backup_id}", "delete"),
        # ADR 0011
        ("/v1/passkeys/registration/options", "post"),
        ("/v1/passkeys/registration", "post"),
        ("/v1/passkeys/authentication/options", "post"),
        ("/v1/passkeys/authentication", "post"),
        ("/v1/passkeys/{credentialId}/salt-rotation", "post"),
        ("/v1/passkeys/{credentialId}/wrapped-key", "put"),
        ("/v1/passkeys", "get"),
        ("/v1/passkeys/{credentialId}", "delete"),
    }
    assert json.loads(SPEC.read_text())["info"]["version"] == "1"


_issuer = DevTokenIssuer(issuer="https://auth.test")
_app = create_app(
    GatewayConfig(
        issuer_public_keys=(_issuer.public_key_pem(),),
        issuer="https://auth.test",
        user_rate=RateLimit(1e6, 1_000_000),
        address_rate=RateLimit(1e6, 1_000_000),
    ),
    fleets={"default": StubFleet(default_outcome=Outcome.INVALID_LOGIN)},
    blobs=MemoryBlobStore(),
    metadata=MemoryMetadataStore(),
)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    schema = schemathesis.openapi.from_asgi("/openapi.json", _app)


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_fuzzed_requests_never_get_a_server_error(case: schemathesis.Case) -> None:  # type: ignore[type-arg]
    token = _issuer.mint("fuzz-user")
    case.call_and_validate(
        headers={"Authorization": f"Bearer {token}"}, checks=[not_a_server_error]
    )
