"""GatewayConfig: ADR 0008 defaults, TOML loading, refusal of typos and bad limits."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from hsmvault.errors import InvalidParameter
from hsmvault.host.gateway import DevTokenIssuer, GatewayConfig, RateLimit

PEM = DevTokenIssuer().public_key_pem()


def test_defaults_follow_adr_0008() -> None:
    config = GatewayConfig(issuer_public_keys=(PEM,), issuer="iss")
    assert config.audience == "hsmvault"
    assert config.token_max_lifetime == 900
    assert config.leeway == 30
    assert config.max_upload_chunk == 8 * 1024 * 1024
    assert dict(config.fleets) == {"default": "fleet"}
    assert config.default_fleet == "default"


def test_loads_from_a_toml_table(tmp_path: Path) -> None:
    (tmp_path / "issuer.pem").write_text(PEM)
    other = DevTokenIssuer().public_key_pem()
    document = f"""
[gateway]
issuer = "https://auth.example"
issuer_public_keys = [{other!r}]
issuer_public_key_files = ["issuer.pem"]
token_max_lifetime = 600
leeway = 10
session_ttl = 60
max_upload_chunk = 1048576
default_fleet = "eu"

[gateway.rate_limits.user]
rate = 2.5
burst = 10

[gateway.rate_limits.address]
rate = 50
burst = 200

[gateway.fleets]
eu = "fleets/eu"
us = "/srv/us"
""".replace("'", '"')
    path = tmp_path / "hsmvault.toml"
    path.write_text(document)
    config = GatewayConfig.from_toml_file(path)
    assert config.issuer == "https://auth.example"
    assert config.issuer_public_keys == (other, PEM)
    assert config.token_max_lifetime == 600
    assert config.user_rate == RateLimit(2.5, 10)
    assert config.address_rate == RateLimit(50.0, 200)
    assert dict(config.fleets) == {"eu": str(tmp_path / "fleets/eu"), "us": "/srv/us"}
    assert config.default_fleet == "eu"
    same = GatewayConfig.from_toml(tomllib.loads(document)["gateway"], base_dir=tmp_path)
    assert same == config


@pytest.mark.parametrize(
    "table",
    [
        {"issuer": "i", "issuer_public_keys": [PEM], "leway": 3},  # typo
        {"issuer": "i", "issuer_public_keys": []},
        {"issuer": "i", "issuer_public_keys": ["not a key"]},
        {"issuer": "i", "issuer_public_keys": [PEM], "token_max_lifetime": 3600},
        {"issuer": "i", "issuer_public_keys": [PEM], "max_upload_chunk": 9 * 1024 * 1024},
        {"issuer": "i", "issuer_public_keys": [PEM], "rate_limits": {"user": {"rate": 1}}},
        {"issuer": "i", "issuer_public_keys": [PEM], "rate_limits": {"ip": {}}},
        {"issuer": "i", "issuer_public_keys": [PEM], "default_fleet": "nope"},
        {"issuer": "i", "issuer_public_keys": [PEM], "fleets": {}},
        {"issuer_public_keys": [PEM]},  # no issuer
    ],
)
def test_bad_configs_refused(table: dict[str, object]) -> None:
    with pytest.raises(InvalidParameter):
        GatewayConfig.from_toml(table)


def test_rate_limit_bounds() -> None:
    with pytest.raises(InvalidParameter):
        RateLimit(0.0, 1)
    with pytest.raises(InvalidParameter):
        RateLimit(1.0, 0)
