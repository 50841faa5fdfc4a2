"""The gateway's error bodies: JSON ``{"error": "<code>", "detail": "<text>"}`` with a
proper status (ADR 0008). Nothing secret goes in either field: codes are fixed strings,
details name what failed, never a token, a user id or request bytes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

__all__ = ["ApiError", "ErrorBody", "OffsetErrorBody", "error_responses", "install_handlers"]

_log = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    """Every error the gateway sends."""

    error: str
    detail: str


class OffsetErrorBody(ErrorBody):
    """An upload offset conflict (409): also the upload's current offset."""

    offset: int


class ApiError(Exception):
    """Raised by the gateway's logic; rendered as an :class:`ErrorBody`."""

    def __init__(
        self,
        status: int,
        error: str,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{status} {error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def response(self) -> JSONResponse:
        body = {"error": self.error, "detail": self.detail, **self.extra}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


_CODES: Final = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
    503: "unavailable",
}

_DESCRIPTIONS: Final = {
    400: "Malformed request",
    401: "Missing, expired or invalid bearer token",
    403: "The token's user may not do this",
    404: "No such backup or upload",
    409: "Upload offset or state conflict",
    413: "Request body too large",
    422: "Invalid parameters",
    429: "Rate limited (see Retry-After)",
    503: "Fleet unavailable (see Retry-After)",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these error statuses."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        model = OffsetErrorBody if status == 409 else ErrorBody
        out[status] = {"model": model, "description": _DESCRIPTIONS[status]}
    return out


def install_handlers(app: FastAPI) -> None:
    """Render every error — ours, routing, validation, unexpected — as an ErrorBody."""

    async def api_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return exc.response()

    async def http_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        try:
            phrase = HTTPStatus(exc.status_code).phrase
        except ValueError:
            phrase = "error"
        code = _CODES.get(exc.status_code, "error")
        headers = dict(exc.headers or {})
        return ApiError(exc.status_code, code, phrase, headers=headers).response()

    async def validation_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        # loc and msg only: pydantic's "input" would echo what the caller sent.
        parts = []
        for err in exc.errors()[:5]:
            loc = ".".join(str(p) for p in err.get("loc", ()))
            parts.append(f"{loc}: {err.get('msg', 'invalid')}")
        return ApiError(422, "invalid_request", "; ".join(parts) or "invalid").response()

    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        _log.error("unexpected %s in the gateway", type(exc).__name__)
        return ApiError(500, "internal", "internal error").response()

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)
