"""The page's routes without a browser: what is served, with which headers, and the
development-only test sign-in that exists only when ``create_app`` got ``test_login``."""

from __future__ import annotations

import re
import warnings
from html.parser import HTMLParser
from importlib import resources

import httpx
import pytest
from fastapi import FastAPI

from hsmvault.host.gateway import DevTokenIssuer, GatewayConfig, TokenVerifier, create_app
from hsmvault.host.gateway.passkey_page import ASSETS, CONTENT_SECURITY_POLICY
from tests.host.fakes import MemoryBlobStore, MemoryMetadataStore, StubFleet

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

ISSUER = "https://auth.page.test"


def _app(issuer: DevTokenIssuer, *, dev: bool) -> FastAPI:
    config = GatewayConfig(issuer_public_keys=(issuer.public_key_pem(),), issuer=ISSUER)
    return create_app(
        config,
        fleets={"default": StubFleet()},
        blobs=MemoryBlobStore(),
        metadata=MemoryMetadataStore(),
        test_login=issuer.mint if dev else None,
    )


@pytest.fixture
def issuer() -> DevTokenIssuer:
    return DevTokenIssuer(issuer=ISSUER)


@pytest.fixture
def dev_client(issuer: DevTokenIssuer) -> TestClient:
    return TestClient(_app(issuer, dev=True))


@pytest.fixture
def prod_client(issuer: DevTokenIssuer) -> TestClient:
    return TestClient(_app(issuer, dev=False))


def _strict_headers(headers: httpx.Headers) -> None:
    csp = headers["content-security-policy"]
    assert csp == CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert "unsafe-eval" not in csp
    assert "default-src 'none'" in csp
    assert "frame-ancestors 'none'" in csp
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["cache-control"] == "no-store"


@pytest.mark.parametrize("dev", [True, False])
def test_page_is_served_with_a_strict_csp(issuer: DevTokenIssuer, dev: bool) -> None:
    r = TestClient(_app(issuer, dev=dev)).get("/passkeys")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    _strict_headers(r.headers)
    assert 'id="recovered-key"' in r.text


@pytest.mark.parametrize(("name", "media_type"), sorted(ASSETS.items()))
def test_assets_are_served_with_their_types(
    prod_client: TestClient, name: str, media_type: str
) -> None:
    r = prod_client.get(f"/passkeys/static/{name}")
    assert r.status_code == 200
    assert r.headers["content-type"] == media_type
    _strict_headers(r.headers)
    packaged = resources.files("hsmvault.host.gateway").joinpath("static", name).read_bytes()
    assert r.content == packaged


@pytest.mark.parametrize(
    "path",
    [
        "/passkeys/static/passkeys.html",
        "/passkeys/static/../passkey_page.py",
        "/passkeys/static/%2e%2e/passkey_page.py",
        "/passkeys/static/",
        "/passkeys/static/other.js",
    ],
)
def test_nothing_else_is_served(prod_client: TestClient, path: str) -> None:
    assert prod_client.get(path).status_code == 404


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.script_text = ""
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.script_text += data


def test_html_has_no_inline_script_style_or_handlers() -> None:
    html = resources.files("hsmvault.host.gateway").joinpath("static", "passkeys.html")
    parser = _Tags()
    parser.feed(html.read_text(encoding="utf-8"))
    scripts = [attrs for tag, attrs in parser.tags if tag == "script"]
    assert scripts
    assert all(a.get("src") == "passkeys/static/passkeys.js" for a in scripts)
    assert parser.script_text.strip() == ""
    assert not [t for t, _ in parser.tags if t == "style"]
    for tag, attrs in parser.tags:
        assert "style" not in attrs, tag
        assert not [a for a in attrs if a.startswith("on")], tag
        for ref in ("src", "href"):
            value = attrs.get(ref)
            assert value is None or re.fullmatch(r"passkeys/static/[a-z]+\.(js|css)", value), value


def test_test_login_mints_a_token_for_the_username(
    dev_client: TestClient, issuer: DevTokenIssuer
) -> None:
    r = dev_client.post("/v1/passkeys/test-login", json={"username": "alice@example"})
    assert r.status_code == 200
    assert set(r.json()) == {"token"}
    verifier = TokenVerifier([issuer.public_key_pem()], issuer=ISSUER)
    assert verifier.verify(r.json()["token"]) == b"alice@example"


def test_test_login_does_not_exist_without_a_dev_issuer(prod_client: TestClient) -> None:
    r = prod_client.post("/v1/passkeys/test-login", json={"username": "alice"})
    assert r.status_code == 404
    assert "token" not in r.text


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"username": ""},
        {"username": "a" * 65},
        {"username": "alice\n"},
        {"username": "al ice"},
        {"username": "ålice"},
        {"username": 7},
        {"username": "alice", "admin": True},
    ],
)
def test_test_login_refuses_bad_bodies(dev_client: TestClient, body: object) -> None:
    r = dev_client.post("/v1/passkeys/test-login", json=body)
    assert r.status_code == 422
    assert "token" not in r.json()


def test_test_login_is_not_in_the_openapi_document(dev_client: TestClient) -> None:
    paths = dev_client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith("/passkeys") or p.endswith("test-login")]


def test_test_login_is_rate_limited_per_address(dev_client: TestClient) -> None:
    codes = [
        dev_client.post("/v1/passkeys/test-login", json={"username": "x"}).status_code
        for _ in range(40)
    ]
    assert codes[0] == 200
    assert 429 in codes
