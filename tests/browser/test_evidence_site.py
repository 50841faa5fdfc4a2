"""The published evidence site (``hsmvault fleet publish``) in Debian's Chromium, as a
person sees it: the list of fleets with their verdicts, and a fleet's page with its HSMs
(regions, EMULATED attestation) and the verification verdict — VERIFIED for an honest
deployment, FAILED with the broken link for one whose HSM was swapped after the ceremony.
The site is static files served by a plain HTTP server on 127.0.0.1 (no gateway)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from hsmvault.evidence.site import publish_site
from tests.evidence.evidence_kit import deploy, live_witness, publish_and_save

from .conftest import ACTION_TIMEOUT_MS

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


@dataclass(frozen=True)
class Site:
    url: str
    good: str
    bad: str


def _swap_an_hsm(evidence: Path) -> None:
    """The running fleet's node-2 now claims node-0's identity key: not the attested HSM."""
    snapshot = evidence / "running" / "fleet.json"
    doc = json.loads(snapshot.read_text())
    doc["members"][2]["identity_public_key"] = doc["members"][0]["identity_public_key"]
    snapshot.write_text(json.dumps(doc))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("evidence-site")
    good = deploy(base / "good", nodes=3)
    bad = deploy(base / "bad", nodes=3)
    out = base / "site"
    with live_witness(base / "witness") as witness:
        for dep in (good, bad):
            publish_and_save(witness, dep.evidence, dep.layout.public_keys)
        running = {dep.layout.fleet_id.hex(): dep.layout.fleet_file for dep in (good, bad)}
        publish_site([good.evidence, bad.evidence], out, running=running)
    bad_copy = out / "fleets" / bad.layout.fleet_id.hex() / "evidence"
    _swap_an_hsm(bad_copy)
    # publish again from the (now swapped) published copy of the bad fleet
    publish_site([bad_copy.rename(base / "bad-published")], out)
    handler = partial(SimpleHTTPRequestHandler, directory=str(out))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield Site(
            f"http://127.0.0.1:{httpd.server_address[1]}/",
            good.layout.fleet_id.hex(),
            bad.layout.fleet_id.hex(),
        )
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    tab = context.new_page()
    tab.set_default_timeout(ACTION_TIMEOUT_MS)
    errors: list[str] = []
    tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        yield tab
        assert errors == []
    finally:
        context.close()


def test_index_lists_every_fleet_with_its_verdict(site: Site, page: Page) -> None:
    page.goto(site.url)
    assert page.title() == "hsmvault fleets"
    rows = page.locator("#fleets tr.fleet")
    assert rows.count() == 2
    good = page.locator("tr.fleet", has_text=site.good)
    assert "3 HSMs" in good.inner_text()
    assert "VERIFIED (EMULATED HARDWARE)" in good.inner_text()
    assert "FAILED" in page.locator("tr.fleet", has_text=site.bad).inner_text()


def test_fleet_page_shows_its_hsms_and_the_verified_verdict(site: Site, page: Page) -> None:
    page.goto(site.url)
    page.click(f"a[href='fleets/{site.good}/index.html']")
    page.wait_for_selector("#verdict")
    assert page.is_visible("#verdict")
    assert page.inner_text("#verdict") == "Verification verdict: VERIFIED"
    assert "EMULATED HARDWARE" in page.inner_text("#title")
    assert page.is_visible("#emulated")
    hsms = page.locator("#hsms tr.hsm")
    assert hsms.count() == 3
    regions = [hsms.nth(i).locator("td.region").inner_text() for i in range(3)]
    assert regions == ["eu-west", "us-east", "ap-south"]
    for i in range(3):
        row = hsms.nth(i).inner_text()
        assert "hsmvault-software-vendor" in row
        assert "EMULATED" in row
    assert page.locator("#timeline tr").count() > 20
    assert "match" in page.inner_text("#epochs")


def test_fleet_page_of_a_swapped_hsm_shows_the_failure(site: Site, page: Page) -> None:
    page.goto(f"{site.url}fleets/{site.bad}/index.html")
    verdict = page.inner_text("#verdict")
    assert verdict.startswith("Verification verdict: FAILED")
    running = page.locator("tr[data-check='running']")
    assert "FAILED" in running.inner_text()
    assert "HSM swapped after the ceremony" in running.inner_text()
