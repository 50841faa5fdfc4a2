"""Browser tests of the passkey page: a real gateway (uvicorn on 127.0.0.1, opened as
``http://localhost:PORT`` because an IP address is not a valid RP id) and Debian's
Chromium driven by Python Playwright, with a virtual CTAP2.1 authenticator added through
the DevTools protocol (``WebAuthn.addVirtualAuthenticator``, ``hasPrf``).

Playwright's own browser download is never used (it cannot reach its host here):
Chromium is ``/usr/bin/chromium`` from the Debian package ``chromium`` (Makefile
``DEB_PACKAGES``; ``HSMVAULT_CHROMIUM`` names another binary). A missing Chromium or a
missing ``playwright`` module FAILS the tests with a message saying what to install;
it never skips them.

The fleet is a stub: passkeys never involve the HSM fleet (ADR 0011).
"""

from __future__ import annotations

import importlib
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final

import httpx
import pytest

from hsmvault.host.gateway import (
    DevTokenIssuer,
    GatewayConfig,
    GatewayServer,
    RateLimit,
    create_app,
)
from hsmvault.host.storage.filesystem import FilesystemBlobStore
from hsmvault.host.storage.sqlite import SqliteMetadataStore
from tests.host.fakes import StubFleet

if TYPE_CHECKING:
    from playwright.sync_api import Browser, CDPSession, Page, Playwright

CHROMIUM: Final = Path(os.environ.get("HSMVAULT_CHROMIUM", "/usr/bin/chromium"))
#: Flags that work headless as root on Debian 12 (docs: shared notes on browser passkeys).
CHROMIUM_ARGS: Final = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
ISSUER: Final = "https://auth.browser.test"
RP_ID: Final = "localhost"
#: Generous waits for one UI action (a WebAuthn ceremony + a few requests); not a
#: performance assertion: a healthy run takes well under a second per action.
ACTION_TIMEOUT_MS: Final = 30_000


def _playwright_module() -> ModuleType:
    try:
        return importlib.import_module("playwright.sync_api")
    except ImportError as exc:
        pytest.fail(
            f"Python playwright is not installed ({exc}): pip install -e '.[dev]' "
            "(playwright>=1.50; its wheel bundles the driver — do not run 'playwright install')",
            pytrace=False,
        )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- gateway


@dataclass(frozen=True)
class Gateway:
    """A running gateway: ``url`` is the page's origin (``http://localhost:PORT``),
    ``ip_url`` the same server by IP (a wrong RP origin); ``issuer`` signs tokens."""

    url: str
    ip_url: str
    issuer: DevTokenIssuer

    def http(self, username: str) -> httpx.Client:
        """An API client with a token for ``username`` (talks to 127.0.0.1 directly)."""
        return httpx.Client(
            base_url=self.ip_url,
            headers={"Authorization": f"Bearer {self.issuer.mint(username)}"},
            timeout=30,
        )


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    issuer = DevTokenIssuer(issuer=ISSUER)
    tmp = tmp_path_factory.mktemp("passkey-gateway")
    port = _free_port()
    origin = f"http://localhost:{port}"
    config = GatewayConfig(
        issuer_public_keys=(issuer.public_key_pem(),),
        issuer=ISSUER,
        user_rate=RateLimit(1000.0, 10_000),
        address_rate=RateLimit(1000.0, 10_000),
        passkey_rp_id=RP_ID,
        passkey_origins=(origin,),
    )
    metadata = SqliteMetadataStore(tmp / "meta.sqlite")
    app = create_app(
        config,
        fleets={"default": StubFleet()},
        blobs=FilesystemBlobStore(tmp / "blobs"),
        metadata=metadata,
        test_login=issuer.mint,
    )
    try:
        with GatewayServer(app, host="127.0.0.1", port=port):
            yield Gateway(url=origin, ip_url=f"http://127.0.0.1:{port}", issuer=issuer)
    finally:
        metadata.close()


# --------------------------------------------------------------------------- browser


@pytest.fixture(scope="session")
def playwright_instance() -> Iterator[Playwright]:
    sync_api = _playwright_module()
    with sync_api.sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="session")
def browser(playwright_instance: Playwright) -> Iterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"Chromium is missing at {CHROMIUM}: apt-get install -y chromium "
            "(or 'make deps'; the Makefile's DEB_PACKAGES lists it)",
            pytrace=False,
        )
    browser = playwright_instance.chromium.launch(
        executable_path=str(CHROMIUM), args=list(CHROMIUM_ARGS), headless=True
    )
    try:
        yield browser
    finally:
        browser.close()


#: ``WebAuthn.addVirtualAuthenticator`` options: a CTAP2.1 platform authenticator with
#: resident keys and user verification that always succeeds.
BASE_AUTHENTICATOR: Final[dict[str, Any]] = {
    "protocol": "ctap2",
    "ctap2Version": "ctap2_1",
    "transport": "internal",
    "hasResidentKey": True,
    "hasUserVerification": True,
    "isUserVerified": True,
    "automaticPresenceSimulation": True,
}


@dataclass
class BrowserTab:
    """A page in a fresh browser context, with a virtual authenticator attached."""

    page: Page
    cdp: CDPSession
    authenticator_id: str
    console_errors: list[str]

    def credentials(self) -> list[dict[str, Any]]:
        """The credentials the virtual authenticator holds."""
        result = self.cdp.send(
            "WebAuthn.getCredentials", {"authenticatorId": self.authenticator_id}
        )
        return list(result["credentials"])


OpenTab = Callable[..., BrowserTab]


@pytest.fixture
def open_tab(browser: Browser) -> Iterator[OpenTab]:
    """``open_tab(url, has_prf=True, has_hmac_secret=False)``: a new context and page
    with a virtual authenticator, navigated to ``url``."""
    contexts = []

    def factory(url: str, *, has_prf: bool = True, has_hmac_secret: bool = False) -> BrowserTab:
        context = browser.new_context()
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(ACTION_TIMEOUT_MS)
        cdp = context.new_cdp_session(page)
        cdp.send("WebAuthn.enable")
        options = {**BASE_AUTHENTICATOR, "hasPrf": has_prf, "hasHmacSecret": has_hmac_secret}
        added = cdp.send("WebAuthn.addVirtualAuthenticator", {"options": options})
        tab = BrowserTab(page, cdp, str(added["authenticatorId"]), [])
        page.on(
            "console", lambda m: tab.console_errors.append(m.text) if m.type == "error" else None
        )
        page.goto(url)
        return tab

    yield factory
    for context in contexts:
        context.close()
