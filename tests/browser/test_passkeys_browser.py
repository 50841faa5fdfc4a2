"""The passkey page end to end in Chromium with a virtual authenticator (ADR 0011).

What these prove:

* a person can sign in, create a passkey, protect a backup key, reload the page (so
  nothing survives in memory) and recover exactly that key;
* the page's WebCrypto wrap and Python's ``crypto.key_wrap`` are the same format: Python
  opens what the page uploaded, and the page opens what Python wrapped, with the PRF
  output taken from the same authenticator in the same run;
* authenticators that evaluate PRF only in ``get()`` still work (the page asks again);
* no PRF, a wrong relying party (page opened by IP address) and a malformed key give
  clear errors, and a passkey that cannot wrap is not registered;
* passkeys are listed and removed; the page triggers no CSP violation.
"""

from __future__ import annotations

import pytest

from hsmvault.crypto.backup_stream import BackupKey
from hsmvault.crypto.key_wrap import (
    PURPOSE_PASSKEY_PRF,
    WRAPPED_KEY_LEN,
    unwrap_backup_key,
    wrap_backup_key,
)
from hsmvault.errors import VerificationError

from .conftest import RP_ID, BrowserTab, Gateway, OpenTab
from .driver import PasskeyPage, b64url, b64url_decode

pytestmark = pytest.mark.slow


def _page(
    open_tab: OpenTab, gateway: Gateway, **authenticator: bool
) -> tuple[BrowserTab, PasskeyPage]:
    tab = open_tab(f"{gateway.url}/passkeys", **authenticator)
    return tab, PasskeyPage(tab.page)


def _context(credential_id: str) -> bytes:
    return RP_ID.encode() + b"\x00" + b64url_decode(credential_id)


def _assert_no_csp_violation(tab: BrowserTab) -> None:
    assert not [m for m in tab.console_errors if "Content Security Policy" in m], tab.console_errors


def test_protect_reload_recover(open_tab: OpenTab, gateway: Gateway) -> None:
    tab, page = _page(open_tab, gateway)
    page.sign_in("alice")
    assert "protects no key yet" in page.create_passkey()
    [credential_id] = page.listed_credentials()
    # the authenticator holds exactly that credential
    [held] = tab.credentials()
    assert b64url_decode(credential_id) == b64url_decode(
        held["credentialId"].replace("+", "-").replace("/", "_").rstrip("=")
    )
    with gateway.http("alice") as http:
        [listed] = http.get("/v1/passkeys").json()["passkeys"]
    assert listed["credentialId"] == credential_id
    assert listed["hasWrappedKey"] is False

    key = page.generate_key()
    page.protect()
    with gateway.http("alice") as http:
        [listed] = http.get("/v1/passkeys").json()["passkeys"]
    assert listed["hasWrappedKey"] is True

    tab.page.reload()  # nothing of the key survives in the page
    assert tab.page.input_value("#backup-key") == ""
    assert tab.page.inner_text("#recovered-key") == ""
    page.sign_in("alice")
    assert page.recover() == key
    _assert_no_csp_violation(tab)


def test_python_and_page_open_each_others_wraps(open_tab: OpenTab, gateway: Gateway) -> None:
    tab, page = _page(open_tab, gateway)
    page.sign_in("bob")
    page.create_passkey()
    [credential_id] = page.listed_credentials()
    page_key = page.generate_key()
    page.protect()

    with gateway.http("bob") as http:
        # (a) the PRF output, read in the browser outside the page's code, opens in
        # Python the wrap the page uploaded
        options = http.post(
            "/v1/passkeys/authentication/options", json={"credentialId": credential_id}
        ).json()
        assertion, prf = page.assertion_with_prf(options["publicKey"], options["prfSalts"])
        assert assertion["id"] == credential_id
        assert len(prf) == 32
        released = http.post("/v1/passkeys/authentication", json={"credential": assertion})
        assert released.status_code == 200, released.text
        assert released.json()["prfSalt"] == options["prfSalts"][credential_id]
        uploaded = b64url_decode(released.json()["wrappedKey"])
        assert len(uploaded) == WRAPPED_KEY_LEN
        assert uploaded[0] == 1
        opened = unwrap_backup_key(
            prf, uploaded, purpose=PURPOSE_PASSKEY_PRF, context=_context(credential_id)
        )
        assert opened.expose_secret().hex() == page_key
        # the page bound the wrap to the RP id and the credential id
        with pytest.raises(VerificationError):
            unwrap_backup_key(
                prf,
                uploaded,
                purpose=PURPOSE_PASSKEY_PRF,
                context=b"example.com\x00" + b64url_decode(credential_id),
            )

        # (b) Python wraps another key with that PRF output; the page opens it
        python_key = BackupKey.generate()
        wrapped = wrap_backup_key(
            prf, python_key, purpose=PURPOSE_PASSKEY_PRF, context=_context(credential_id)
        )
        options = http.post(
            "/v1/passkeys/authentication/options", json={"credentialId": credential_id}
        ).json()
        assertion, prf_again = page.assertion_with_prf(options["publicKey"], options["prfSalts"])
        assert prf_again == prf  # same credential, same salt: same PRF output
        put = http.put(
            f"/v1/passkeys/{credential_id}/wrapped-key",
            json={"credential": assertion, "wrappedKey": b64url(wrapped)},
        )
        assert put.status_code == 200, put.text
        assert put.json()["credentialId"] == credential_id

    assert python_key.expose_secret().hex() != page_key
    assert page.recover() == python_key.expose_secret().hex()
    _assert_no_csp_violation(tab)


def test_authenticator_with_prf_only_at_get(open_tab: OpenTab, gateway: Gateway) -> None:
    """hmac-secret without PRF-at-create: the page asks once more with get()."""
    _tab, page = _page(open_tab, gateway, has_prf=False, has_hmac_secret=True)
    page.sign_in("carol")
    key = page.generate_key()
    message = page.create_passkey()  # with a key entered, registration wraps it at once
    assert "protects the backup key" in message
    [_credential_id] = page.listed_credentials()
    page.enter_key("")
    assert page.recover() == key


def test_no_prf_gives_a_clear_error_and_registers_nothing(
    open_tab: OpenTab, gateway: Gateway
) -> None:
    tab, page = _page(open_tab, gateway, has_prf=False)
    page.sign_in("dave")
    page.click_create_passkey()
    error = page.expect_error()
    assert "PRF is not supported" in error
    assert "not registered" in error
    assert page.listed_credentials() == []
    # the page told the authenticator to forget the useless credential
    # (PublicKeyCredential.signalUnknownCredential)
    assert tab.credentials() == []
    with gateway.http("dave") as http:
        assert http.get("/v1/passkeys").json()["passkeys"] == []
    _assert_no_csp_violation(tab)


def test_wrong_relying_party_gives_a_clear_error(open_tab: OpenTab, gateway: Gateway) -> None:
    """Opened by IP address, the page is not on the RP id ``localhost``."""
    tab = open_tab(f"{gateway.ip_url}/passkeys")
    page = PasskeyPage(tab.page)
    page.sign_in("erin")
    page.click_create_passkey()
    error = page.expect_error()
    assert "relying party" in error
    assert "localhost" in error
    assert tab.credentials() == []


def test_malformed_backup_key_is_refused_before_any_ceremony(
    open_tab: OpenTab, gateway: Gateway
) -> None:
    _tab, page = _page(open_tab, gateway)
    page.sign_in("frank")
    page.create_passkey()
    page.enter_key("12" * 31)  # 62 hex digits
    page.click_protect()
    assert "64 hex digits" in page.expect_error()
    with gateway.http("frank") as http:
        [listed] = http.get("/v1/passkeys").json()["passkeys"]
    assert listed["hasWrappedKey"] is False


def test_list_and_remove_passkeys(open_tab: OpenTab, gateway: Gateway) -> None:
    _tab, page = _page(open_tab, gateway)
    page.sign_in("grace")
    page.create_passkey()
    [credential_id] = page.listed_credentials()
    page.remove(credential_id)
    assert page.listed_credentials() == []
    with gateway.http("grace") as http:
        assert http.get("/v1/passkeys").json()["passkeys"] == []
    # the removed passkey opens nothing any more
    page.generate_key()
    page.click_protect()
    assert "no passkey yet" in page.expect_error()


def test_recover_without_a_wrapped_key_says_so(open_tab: OpenTab, gateway: Gateway) -> None:
    _tab, page = _page(open_tab, gateway)
    page.sign_in("heidi")
    page.create_passkey()
    page.click_recover()
    assert "protects no backup key" in page.expect_error()
