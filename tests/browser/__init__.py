"""Browser tests of the passkey page (Chromium + Playwright, virtual authenticator)."""
