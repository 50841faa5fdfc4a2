"""The witness's HTTP API (ADR 0010's table), a FastAPI application.

JSON in and out; byte strings are standard padded base64 unless the ADR says hex; every
error is ``{"error": code, "detail": text}`` with the status of :mod:`.errors`. Request
bodies are parsed by this module, strictly (:mod:`.codec`), never by pydantic: a body of
the wrong shape is a 400, never a 422 or a 500. Bodies over ``max_body`` bytes are 413.

Routes (``{ns}`` may contain ``/``, sent as is or as ``%2F``)::

    GET  /info
    GET  /namespaces                      POST /namespaces           (admin bearer token)
    GET  /namespaces/{ns}
    POST /namespaces/{ns}/audits
    GET  /namespaces/{ns}/audits/{epoch}
    PUT  /namespaces/{ns}/audits/{epoch}/countersignature
    GET  /namespaces/{ns}/last-verified-epoch
    GET  /checkpoint                      (text/plain signed note)
    GET  /proofs/inclusion?leaf_index=I&tree_size=N
    GET  /proofs/consistency?first=M&second=N

Blocking work (signing, fsync) runs in Starlette's worker threads; the witness
serialises it under its own lock.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from hsmvault.errors import DecodeError

from . import errors as codes
from .codec import (
    b64,
    fields,
    loads_strict,
    parse_decimal_u64,
    read_b64,
    read_hex,
    read_str,
    read_u64,
)
from .core import MAX_ARTIFACT_LEN, Witness
from .errors import WitnessRefusal

__all__ = ["DEFAULT_MAX_BODY", "create_app"]

_log = logging.getLogger(__name__)

#: Largest request body: a base64 artifact of MAX_ARTIFACT_LEN plus the other fields.
DEFAULT_MAX_BODY: Final = 4 * MAX_ARTIFACT_LEN // 3 + 4096
_NO_STORE: Final = {"Cache-Control": "no-store"}
_HTTP_CODES: Final = {404: codes.NOT_FOUND, 405: "method_not_allowed", 413: codes.TOO_LARGE}


def _error(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def _json(body: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=_NO_STORE)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise WitnessRefusal(413, codes.TOO_LARGE, f"at most {limit} bytes per request")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise WitnessRefusal(413, codes.TOO_LARGE, f"at most {limit} bytes per request")
    return bytes(body)


def _query(request: Request, names: Sequence[str]) -> list[int]:
    items = request.query_params.multi_items()
    if sorted(k for k, _ in items) != sorted(names):
        raise DecodeError(f"query must have exactly the parameters {list(names)}")
    values = dict(items)
    return [parse_decimal_u64(values[n], n) for n in names]


def _witness(request: Request) -> Witness:
    witness: Witness = request.app.state.witness
    return witness


def _check_admin(request: Request, witness: Witness) -> None:
    header = request.headers.get("authorization")
    if header is None:
        raise WitnessRefusal(401, codes.UNAUTHORIZED, "an admin bearer token is required")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token or " " in token:
        raise WitnessRefusal(401, codes.UNAUTHORIZED, "malformed Authorization header")
    if not witness.check_admin_token(token):
        raise WitnessRefusal(403, codes.FORBIDDEN, "wrong admin token")


def create_app(witness: Witness, *, max_body: int = DEFAULT_MAX_BODY) -> FastAPI:
    """The witness app over an open :class:`Witness` (not closed by the app)."""
    app = FastAPI(
        title="hsmvault witness",
        version="1",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.witness = witness
    _install_handlers(app)

    @app.get("/info")
    async def info(request: Request) -> Response:
        return _json(_witness(request).info())

    @app.get("/namespaces")
    async def list_namespaces(request: Request) -> Response:
        states = await run_in_threadpool(_witness(request).namespaces)
        return _json({"namespaces": [s.to_json() for s in states]})

    @app.post("/namespaces")
    async def register_namespace(request: Request) -> Response:
        w = _witness(request)
        _check_admin(request, w)
        body = await _read_body(request, max_body)
        obj = fields(
            loads_strict(body, max_len=max_body),
            ("name", "root_epoch", "operator_public_key"),
            "namespace registration",
        )
        name = read_str(obj["name"], "name")
        root = read_u64(obj["root_epoch"], "root_epoch")
        key = read_hex(obj["operator_public_key"], 32, "operator_public_key")
        state, created = await run_in_threadpool(w.register_namespace, name, root, key)
        return _json(state.to_json(), 201 if created else 200)

    @app.get("/checkpoint")
    async def checkpoint(request: Request) -> Response:
        note = await run_in_threadpool(_witness(request).checkpoint)
        return Response(note, media_type="text/plain; charset=utf-8", headers=_NO_STORE)

    @app.get("/proofs/inclusion")
    async def inclusion(request: Request) -> Response:
        leaf_index, tree_size = _query(request, ("leaf_index", "tree_size"))
        proof = await run_in_threadpool(_witness(request).inclusion_proof, leaf_index, tree_size)
        return _json(
            {"leaf_index": leaf_index, "tree_size": tree_size, "proof": [b64(p) for p in proof]}
        )

    @app.get("/proofs/consistency")
    async def consistency(request: Request) -> Response:
        first, second = _query(request, ("first", "second"))
        proof = await run_in_threadpool(_witness(request).consistency_proof, first, second)
        return _json({"first": first, "second": second, "proof": [b64(p) for p in proof]})

    @app.put("/namespaces/{ns:path}/audits/{epoch}/countersignature")
    async def countersign(request: Request, ns: str, epoch: str) -> Response:
        number = parse_decimal_u64(epoch, "epoch")
        body = await _read_body(request, max_body)
        obj = fields(loads_strict(body, max_len=max_body), ("signature",), "counter-signature")
        signature = read_b64(obj["signature"], "signature", length=64)
        entry = await run_in_threadpool(_witness(request).countersign, ns, number, signature)
        return _json(entry.to_json())

    @app.get("/namespaces/{ns:path}/audits/{epoch}")
    async def audit(request: Request, ns: str, epoch: str) -> Response:
        number = parse_decimal_u64(epoch, "epoch")
        entry = await run_in_threadpool(_witness(request).audit, ns, number)
        return _json(entry.to_json())

    @app.post("/namespaces/{ns:path}/audits")
    async def submit(request: Request, ns: str) -> Response:
        body = await _read_body(request, max_body)
        obj = fields(
            loads_strict(body, max_len=max_body),
            ("epoch", "digest", "artifact", "submission_signature"),
            "submission",
        )
        epoch = read_u64(obj["epoch"], "epoch")
        digest = read_hex(obj["digest"], 32, "digest")
        artifact = read_b64(obj["artifact"], "artifact", max_len=MAX_ARTIFACT_LEN)
        signature = read_b64(obj["submission_signature"], "submission_signature", length=64)
        entry = await run_in_threadpool(
            _witness(request).submit, ns, epoch, digest, artifact, signature
        )
        return _json(entry.to_json(), 201)

    @app.get("/namespaces/{ns:path}/last-verified-epoch")
    async def last_verified_epoch(request: Request, ns: str) -> Response:
        epoch = await run_in_threadpool(_witness(request).last_verified_epoch, ns)
        return _json({"epoch": epoch})

    @app.get("/namespaces/{ns:path}")
    async def namespace(request: Request, ns: str) -> Response:
        state = await run_in_threadpool(_witness(request).namespace, ns)
        return _json(state.to_json())

    return app


def _install_handlers(app: FastAPI) -> None:
    async def refusal(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, WitnessRefusal)
        headers = {"WWW-Authenticate": "Bearer"} if exc.code == codes.UNAUTHORIZED else None
        return _error(exc.status, exc.code, exc.detail, headers)

    async def malformed(_request: Request, exc: Exception) -> Response:
        return _error(
            400, codes.MALFORMED, str(exc) if isinstance(exc, DecodeError) else "malformed"
        )

    async def http_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        try:
            phrase = HTTPStatus(exc.status_code).phrase
        except ValueError:
            phrase = "error"
        code = _HTTP_CODES.get(
            exc.status_code, codes.MALFORMED if exc.status_code < 500 else "error"
        )
        return _error(exc.status_code, code, phrase, dict(exc.headers or {}))

    async def unexpected(_request: Request, exc: Exception) -> Response:
        _log.error("unexpected %s in the witness", type(exc).__name__)
        return _error(500, "internal", "internal error")

    app.add_exception_handler(WitnessRefusal, refusal)
    app.add_exception_handler(DecodeError, malformed)
    app.add_exception_handler(RequestValidationError, malformed)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
