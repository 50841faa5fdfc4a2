"""Drives the passkey page the way a person would: through its stable element ids.

Each action clicks, then waits until ``#status`` leaves the ``busy`` state and reports
``ok`` — or fails with the page's own error text, so a failing test says what the page
said.
"""

from __future__ import annotations

import base64
import re
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from playwright.sync_api import Page

_SETTLED: Final = "s => s && s.dataset.state !== 'busy' && s.dataset.state !== 'loading'"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class PageActionFailed(AssertionError):
    """The page reported an error where success was expected."""


class PasskeyPage:
    """The ``/passkeys`` page in one browser tab."""

    def __init__(self, page: Page) -> None:
        self.page = page

    # ---------------------------------------------------------------- state

    def _settle(self) -> tuple[str, str, str]:
        self.page.wait_for_function(f"() => ({_SETTLED})(document.getElementById('status'))")
        state = self.page.get_attribute("#status", "data-state") or ""
        return state, self.page.inner_text("#status"), self.page.inner_text("#error")

    def _expect_ok(self, what: str) -> str:
        state, status, error = self._settle()
        if state != "ok":
            raise PageActionFailed(f"{what}: page state {state!r}: {status} {error}".strip())
        return status

    def expect_error(self) -> str:
        """Wait for the current action to end in an error; the error text shown."""
        state, status, error = self._settle()
        assert state == "error", f"expected an error, page says {state!r}: {status}"
        assert self.page.is_visible("#error")
        return error

    def _click(self, selector: str) -> None:
        self.page.wait_for_selector(f"{selector}:not([disabled])")
        self.page.click(selector)

    # ---------------------------------------------------------------- actions

    def wait_ready(self) -> None:
        self.page.wait_for_function(
            "() => document.getElementById('status').dataset.state === 'ready'"
        )

    def sign_in(self, username: str) -> str:
        self.wait_ready()
        self.page.fill("#username", username)
        self._click("#sign-in")
        return self._expect_ok("sign in")

    def create_passkey(self) -> str:
        self._click("#create-passkey")
        return self._expect_ok("create passkey")

    def click_create_passkey(self) -> None:
        self._click("#create-passkey")

    def generate_key(self) -> str:
        self._click("#generate-key")
        self._expect_ok("generate key")
        key = self.page.input_value("#backup-key")
        assert re.fullmatch(r"[0-9a-f]{64}", key), key
        return key

    def enter_key(self, hex_key: str) -> None:
        self.page.fill("#backup-key", hex_key)

    def protect(self) -> str:
        self._click("#protect-key")
        return self._expect_ok("protect backup key")

    def click_protect(self) -> None:
        self._click("#protect-key")

    def recover(self) -> str:
        self._click("#recover")
        self._expect_ok("recover")
        return self.page.inner_text("#recovered-key").strip()

    def click_recover(self) -> None:
        self._click("#recover")

    def remove(self, credential_id: str) -> str:
        button = f"#passkey-list tr[data-credential-id='{credential_id}'] button.remove-passkey"
        self._click(button)  # first click asks for confirmation
        self.page.wait_for_selector(f"{button}[data-confirm='yes']")
        self._click(button)
        return self._expect_ok("remove passkey")

    def listed_credentials(self) -> list[str]:
        ids: list[str] = self.page.eval_on_selector_all(
            "#passkey-list tr", "rows => rows.map(r => r.dataset.credentialId)"
        )
        return ids

    # ---------------------------------------------------------------- raw WebAuthn

    def assertion_with_prf(
        self, public_key: dict[str, Any], prf_salts: dict[str, str]
    ) -> tuple[dict[str, Any], bytes]:
        """``navigator.credentials.get`` in the page, outside the page's own code, over
        request options from the API: the AuthenticationResponseJSON (PRF results
        removed) and the PRF output for the credential's salt."""
        result: dict[str, Any] = self.page.evaluate(_ASSERT_WITH_PRF, [public_key, prf_salts])
        return result["credential"], b64url_decode(result["prf"])


_ASSERT_WITH_PRF: Final = """
async ([json, salts]) => {
  const dec = (s) => Uint8Array.from(atob(s.replace(/-/g, '+').replace(/_/g, '/')
                                         + '=='.slice(0, (4 - s.length % 4) % 4)),
                                     (c) => c.charCodeAt(0));
  const enc = (b) => btoa(String.fromCharCode(...new Uint8Array(b)))
                       .replace(/\\+/g, '-').replace(/\\//g, '_').replace(/=+$/, '');
  const evalByCredential = {};
  for (const [id, salt] of Object.entries(salts)) evalByCredential[id] = {first: dec(salt)};
  const publicKey = {
    ...json,
    challenge: dec(json.challenge),
    allowCredentials: (json.allowCredentials || []).map((c) => ({...c, id: dec(c.id)})),
    extensions: {prf: {evalByCredential}},
  };
  const cred = await navigator.credentials.get({publicKey});
  const r = cred.response;
  const credential = {
    id: cred.id, rawId: enc(cred.rawId), type: cred.type,
    response: {
      clientDataJSON: enc(r.clientDataJSON), authenticatorData: enc(r.authenticatorData),
      signature: enc(r.signature),
    },
    clientExtensionResults: {},
  };
  if (r.userHandle) credential.response.userHandle = enc(r.userHandle);
  if (cred.authenticatorAttachment) {
    credential.authenticatorAttachment = cred.authenticatorAttachment;
  }
  return {credential, prf: enc(cred.getClientExtensionResults().prf.results.first)};
}
"""
