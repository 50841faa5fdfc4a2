"""The passkey page (ADR 0011): ``GET /passkeys``, its static assets, and the
**development-only** test sign-in ``POST /v1/passkeys/test-login``.

The page (``static/passkeys.html`` + ``passkeys.js`` + ``passkeys.css``, shipped as
package data) runs every WebAuthn ceremony and every key operation in the browser:
the PRF output and the backup key never leave it; only the wrapped key (ADR 0011 wrap
format) is uploaded, through the JWT-authenticated ``/v1/passkeys`` API.

Served here:

* ``GET /passkeys`` — the HTML, with a strict Content-Security-Policy (no inline
  script or style; scripts, styles and fetches from this origin only; no framing);
* ``GET /passkeys/static/{name}`` — only the fixed files of :data:`ASSETS`, read once
  from the package, never a path from the request;
* ``POST /v1/passkeys/test-login {"username"}`` → ``{"token"}`` — exists **only** when
  the app was built with a ``test_login`` callable, which only a development
  deployment (its dev token issuer) passes. Without it the route is not registered,
  so it answers 404 like any unknown path. It mints a token for any username: it must
  never be enabled in front of a real auth service.

None of these routes is part of the OpenAPI document (``include_in_schema=False``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cache
from importlib import resources
from typing import Final

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from .config import RateLimit
from .errors import ApiError
from .ratelimit import TokenBuckets

__all__ = [
    "ASSETS",
    "CONTENT_SECURITY_POLICY",
    "PAGE_PATH",
    "TEST_LOGIN_PATH",
    "USERNAME_PATTERN",
    "TestLogin",
    "passkey_page_router",
]

PAGE_PATH: Final = "/passkeys"
STATIC_PREFIX: Final = "/passkeys/static"
TEST_LOGIN_PATH: Final = "/v1/passkeys/test-login"

#: The files the page may load, and their media types. Nothing else is served.
ASSETS: Final[Mapping[str, str]] = {
    "passkeys.js": "text/javascript; charset=utf-8",
    "passkeys.css": "text/css; charset=utf-8",
}
_HTML: Final = "passkeys.html"

#: No inline script or style, nothing from another origin, no plugins, no framing,
#: no form posts, no <base> rewriting.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_SECURITY_HEADERS: Final[Mapping[str, str]] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-store",
}

#: A test account's name: 1-64 of ``[A-Za-z0-9._@+-]`` (it becomes the token's ``sub``).
USERNAME_PATTERN: Final = r"^[A-Za-z0-9._@+-]{1,64}$"
#: Test sign-ins per client address: 2 per second sustained, 20 at once.
_TEST_LOGIN_RATE: Final = RateLimit(2.0, 20)

#: Mints a bearer token for a username (a development token issuer's ``mint``).
TestLogin = Callable[[str], str]


class TestLoginBody(BaseModel):
    """``POST /v1/passkeys/test-login`` body."""

    __test__ = False  # not a pytest test class
    model_config = ConfigDict(extra="forbid")

    username: str = Field(pattern=USERNAME_PATTERN)


class TestLoginToken(BaseModel):
    """A bearer token for the test account."""

    __test__ = False
    token: str


@cache
def _asset(name: str) -> bytes:
    """A packaged file of ``static/`` (``name`` is one of ours, never the caller's)."""
    return resources.files(__package__).joinpath("static", name).read_bytes()


def passkey_page_router(*, test_login: TestLogin | None = None) -> APIRouter:
    """The page's routes; ``POST /v1/passkeys/test-login`` only if ``test_login`` is
    given (development deployments only — see the module docstring)."""
    router = APIRouter()

    @router.get(PAGE_PATH, include_in_schema=False)
    async def passkey_page() -> Response:
        return Response(
            _asset(_HTML), media_type="text/html; charset=utf-8", headers=_SECURITY_HEADERS
        )

    for name, media_type in ASSETS.items():
        router.add_api_route(
            f"{STATIC_PREFIX}/{name}",
            _static_route(name, media_type),
            methods=["GET"],
            include_in_schema=False,
        )

    if test_login is not None:
        mint = test_login
        buckets = TokenBuckets(_TEST_LOGIN_RATE)

        @router.post(TEST_LOGIN_PATH, response_model=TestLoginToken, include_in_schema=False)
        async def passkey_test_login(request: Request, body: TestLoginBody) -> TestLoginToken:
            """DEVELOPMENT ONLY: a token for any username (see the module docstring)."""
            address = request.client.host if request.client is not None else "unknown"
            if buckets.take(address) is not None:
                raise ApiError(
                    429, "rate_limited", "too many test sign-ins", headers={"Retry-After": "1"}
                )
            token = await run_in_threadpool(mint, body.username)
            return TestLoginToken(token=token)

    else:

        @router.post(TEST_LOGIN_PATH, include_in_schema=False)
        async def passkey_test_login_disabled() -> Response:
            """Without a dev issuer: the same 404 as an unknown path (without this
            route, ``DELETE /v1/passkeys/{credentialId}`` would make it a 405)."""
            raise ApiError(404, "not_found", "Not Found")

    return router


def _static_route(name: str, media_type: str) -> Callable[[], Response]:
    def serve() -> Response:
        return Response(_asset(name), media_type=media_type, headers=_SECURITY_HEADERS)

    serve.__name__ = f"passkey_page_{name.replace('.', '_')}"
    return serve
