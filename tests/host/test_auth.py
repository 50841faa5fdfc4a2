"""Bearer tokens (ADR 0008, "Authentication"): one test per way a token can be bad.

Refused tokens get 401 with ``WWW-Authenticate: Bearer`` and an error body that never
echoes the token."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hsmvault.host.gateway import DevTokenIssuer, InvalidToken, TokenVerifier

from .conftest import ISSUER, AppFactory, FakeClock, bearer, client_for


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(clock: FakeClock, **overrides: Any) -> dict[str, Any]:
    now = int(clock())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": "hsmvault",
        "sub": "alice",
        "iat": now,
        "exp": now + 300,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


@pytest.fixture
def verifier(issuer: DevTokenIssuer, clock: FakeClock) -> TokenVerifier:
    return TokenVerifier([issuer.public_key_pem()], issuer=ISSUER, clock=clock)


def test_valid_token_gives_the_sub_as_utf8_user_id(
    verifier: TokenVerifier, issuer: DevTokenIssuer
) -> None:
    assert verifier.verify(issuer.mint("alice")) == b"alice"
    assert verifier.verify(issuer.mint("zoë")) == "zoë".encode()


def test_expired_token_refused_after_the_leeway(
    verifier: TokenVerifier, issuer: DevTokenIssuer, clock: FakeClock
) -> None:
    token = issuer.mint("alice", lifetime=60)
    clock.advance(60 + 29)
    assert verifier.verify(token) == b"alice"  # within the 30 s leeway
    clock.advance(2)
    with pytest.raises(InvalidToken, match="expired"):
        verifier.verify(token)


def test_forged_token_signed_by_another_key_refused(verifier: TokenVerifier) -> None:
    with pytest.raises(InvalidToken, match="signature"):
        verifier.verify(DevTokenIssuer(issuer=ISSUER).mint("alice"))


def test_tampered_payload_refused(verifier: TokenVerifier, issuer: DevTokenIssuer) -> None:
    header, _payload, signature = issuer.mint("alice").split(".")
    payload = _b64(json.dumps(_claims(FakeClock(), sub="mallory")).encode())
    with pytest.raises(InvalidToken):
        verifier.verify(f"{header}.{payload}.{signature}")


def test_wrong_audience_refused(verifier: TokenVerifier, issuer: DevTokenIssuer) -> None:
    with pytest.raises(InvalidToken, match="audience"):
        verifier.verify(issuer.mint("alice", aud="another-service"))


def test_wrong_issuer_refused(verifier: TokenVerifier, issuer: DevTokenIssuer) -> None:
    with pytest.raises(InvalidToken, match="issuer"):
        verifier.verify(issuer.mint("alice", iss="https://evil.test"))


def test_alg_none_refused(verifier: TokenVerifier, clock: FakeClock) -> None:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = _b64(json.dumps(_claims(clock)).encode())
    for token in (f"{header}.{payload}.", f"{header}.{payload}"):
        with pytest.raises(InvalidToken):
            verifier.verify(token)


def test_hs256_with_the_public_key_as_secret_refused(
    verifier: TokenVerifier, issuer: DevTokenIssuer, clock: FakeClock
) -> None:
    """The classic key-confusion attack: HMAC keyed with the issuer's public PEM."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64(json.dumps(_claims(clock)).encode())
    mac = hmac.new(issuer.public_key_pem().encode(), f"{header}.{payload}".encode(), hashlib.sha256)
    with pytest.raises(InvalidToken, match="algorithm"):
        verifier.verify(f"{header}.{payload}.{_b64(mac.digest())}")


@pytest.mark.parametrize("claim", ["exp", "iat", "sub", "aud", "iss"])
def test_token_missing_a_required_claim_refused(
    verifier: TokenVerifier, issuer: DevTokenIssuer, clock: FakeClock, claim: str
) -> None:
    claims = _claims(clock, **{claim: None})  # None: left out
    assert claim not in claims
    token = jwt.encode(claims, issuer._key, algorithm="EdDSA")
    with pytest.raises(InvalidToken):
        verifier.verify(token)


def test_lifetime_over_15_minutes_refused(verifier: TokenVerifier, issuer: DevTokenIssuer) -> None:
    assert verifier.verify(issuer.mint("alice", lifetime=900)) == b"alice"
    with pytest.raises(InvalidToken, match="lifetime"):
        verifier.verify(issuer.mint("alice", lifetime=901))


def test_token_issued_in_the_future_refused(
    verifier: TokenVerifier, issuer: DevTokenIssuer, clock: FakeClock
) -> None:
    now = int(clock())
    with pytest.raises(InvalidToken, match="future"):
        verifier.verify(issuer.mint("alice", iat=now + 120, exp=now + 300))


@pytest.mark.parametrize("sub", ["", "x" * 256, 42, ["alice"]])
def test_bad_sub_refused(verifier: TokenVerifier, issuer: DevTokenIssuer, sub: object) -> None:
    with pytest.raises(InvalidToken):
        verifier.verify(issuer.mint("alice", sub=sub))


def test_es256_tokens_accepted_with_a_p256_key(clock: FakeClock) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    verifier = TokenVerifier([pem], issuer=ISSUER, clock=clock)
    assert verifier.verify(jwt.encode(_claims(clock), key, algorithm="ES256")) == b"alice"
    # an EdDSA token cannot be checked against an ES256-only key set
    with pytest.raises(InvalidToken):
        verifier.verify(DevTokenIssuer(issuer=ISSUER, clock=clock).mint("alice"))


def test_key_rotation_accepts_old_and_new_keys(clock: FakeClock) -> None:
    old, new = (
        DevTokenIssuer(issuer=ISSUER, clock=clock),
        DevTokenIssuer(issuer=ISSUER, clock=clock),
    )
    verifier = TokenVerifier(
        [old.public_key_pem(), new.public_key_pem()], issuer=ISSUER, clock=clock
    )
    assert verifier.verify(old.mint("a")) == b"a"
    assert verifier.verify(new.mint("b")) == b"b"


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "x" * 10_000])
def test_garbage_tokens_refused(verifier: TokenVerifier, token: str) -> None:
    with pytest.raises(InvalidToken):
        verifier.verify(token)


# ------------------------------------------------------------------ over HTTP


def test_http_refusals_are_401_and_never_echo_the_token(
    make_app: AppFactory, issuer: DevTokenIssuer, clock: FakeClock
) -> None:
    client = client_for(make_app())
    good = issuer.mint("alice")
    assert client.get("/v1/backups", headers=bearer(good)).status_code == 200
    forged = DevTokenIssuer(issuer=ISSUER, clock=clock).mint("alice")
    bad_tokens = {
        "expired": issuer.mint("alice", iat=int(clock()) - 200, exp=int(clock()) - 100),
        "forged": forged,
        "wrong audience": issuer.mint("alice", aud="nope"),
        "alg none": _b64(b'{"alg":"none"}') + "." + _b64(json.dumps(_claims(clock)).encode()) + ".",
    }
    for name, token in bad_tokens.items():
        r = client.get("/v1/backups", headers=bearer(token))
        assert r.status_code == 401, name
        assert r.headers["WWW-Authenticate"] == "Bearer"
        body = r.json()
        assert body["error"] == "unauthorized"
        assert set(body) == {"error", "detail"}
        assert token not in r.text
    missing = client.get("/v1/backups")
    assert missing.status_code == 401
    assert missing.json()["error"] == "unauthorized"
    basic = client.get("/v1/backups", headers={"Authorization": "Basic YWxpY2U6cHc="})
    assert basic.status_code == 401


def test_health_and_fleet_need_no_token(make_app: AppFactory) -> None:
    client = client_for(make_app())
    assert client.get("/v1/health").json() == {"status": "ok"}
    assert client.get("/v1/fleet").status_code == 200


def test_fleet_with_a_bad_token_is_refused(make_app: AppFactory, clock: FakeClock) -> None:
    client = client_for(make_app())
    forged = DevTokenIssuer(issuer=ISSUER, clock=clock).mint("alice")
    assert client.get("/v1/fleet", headers=bearer(forged)).status_code == 401


def test_dev_issuer_is_labelled_dev_only() -> None:
    assert "DEVELOPMENT ONLY" in repr(DevTokenIssuer())
