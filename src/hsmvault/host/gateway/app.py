"""The gateway's HTTP API, v1 (ADR 0008): the FastAPI application factory.

Untrusted host code in front of the fleet. It authenticates the calling app's users
(:mod:`.auth`), rate-limits them (:mod:`.ratelimit`), relays wire requests it cannot
read (:mod:`.relay`) and stores backup ciphertext (:mod:`.backups`). Every route is
under ``/v1``; errors are JSON ``{"error", "detail"}`` (:mod:`.errors`).

Blocking work (fleet calls, storage) runs in Starlette's worker threads, never on the
event loop: the async routes here only read bodies and ``await run_in_threadpool``.

Fleet rotation (ADR 0013): users are routed by a :class:`~hsmvault.host.routing.FleetRouter`
— their fleet assignment (kept by the metadata store when it is a
:class:`~hsmvault.host.storage.base.FleetAssignmentStore`), else the active fleets — and a
client may name a configured fleet by its id in the ``Hsmvault-Fleet`` header of
``POST /v1/vault`` (how the SDK moves a user from a retiring fleet to an active one).
"""

from __future__ import annotations

import hmac
import math
import re
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Final, Protocol

from fastapi import APIRouter, Depends, FastAPI, Header, Path, Request, Security
from fastapi.responses import Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import run_in_threadpool

from hsmvault.errors import InvalidParameter
from hsmvault.fleet.fleet_keys import FleetPublicKeys
from hsmvault.host.routing import FleetRouter
from hsmvault.host.storage.base import (
    BackupMeta,
    BlobStore,
    FleetAssignmentStore,
    MetadataStore,
)

from .auth import InvalidToken, TokenVerifier
from .backups import BACKUP_ID_PATTERN, UPLOAD_ID_PATTERN, BackupService
from .config import GatewayConfig
from .errors import ApiError, error_responses, install_handlers
from .passkey_page import TestLogin, passkey_page_router
from .passkeys import passkeys_router
from .ratelimit import TokenBuckets
from .relay import FleetCaller, VaultRelay
from .sessions import SessionTable

__all__ = ["API_TITLE", "API_VERSION", "FLEET_HEADER", "FleetLike", "create_app"]

API_TITLE: Final = "hsmvault gateway"
API_VERSION: Final = "1"
#: The request header that names a fleet by its id (64 hex digits; ADR 0013).
FLEET_HEADER: Final = "Hsmvault-Fleet"
_FLEET_ID_HEX: Final = re.compile(r"[0-9a-fA-F]{64}")
_OCTET: Final = "application/octet-stream"
_BINARY: Final = {"type": "string", "format": "binary"}


class FleetLike(FleetCaller, Protocol):
    """A :class:`~hsmvault.host.fleet_client.FleetClient`, or a test double of one."""

    @property
    def public_keys(self) -> FleetPublicKeys | None: ...


# --------------------------------------------------------------------------- bodies


class Health(BaseModel):
    status: str


class FleetKeysBody(BaseModel):
    """``FleetPublicKeys`` JSON (hex strings)."""

    version: int
    fleet_id: str
    ake_public_key: str
    enc_public_key: str
    sig_public_key: str


class UploadStart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size: int = Field(ge=1, le=2**62 - 1, description="ciphertext bytes")
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$", description="hex SHA-256 of the bytes")
    label: str = Field(default="", max_length=256, description="shown in listings (public; no NUL)")

    @field_validator("label")
    @classmethod
    def _label_is_text(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("label must not contain NUL")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("label must be valid Unicode text") from None
        return value


class UploadState(BaseModel):
    upload_id: str
    offset: int


class OffsetBody(BaseModel):
    offset: int


class BackupBody(BaseModel):
    backup_id: str
    size: int
    sha256: str
    created_at: float
    label: str

    @classmethod
    def of(cls, meta: BackupMeta) -> BackupBody:
        return cls(
            backup_id=meta.backup_id,
            size=meta.size,
            sha256=meta.sha256,
            created_at=meta.created_at,
            label=meta.label,
        )


class BackupList(BaseModel):
    backups: list[BackupBody]


# --------------------------------------------------------------------------- helpers


def _retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


def _client_address(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) more than ``limit`` bytes without buffering it."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "too_large", f"at most {limit} bytes per request")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, "too_large", f"at most {limit} bytes per request")
    return bytes(body)


def _octet_body(description: str) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {_OCTET: {"schema": _BINARY}},
        }
    }


_BackupId = Annotated[str, Path(pattern=BACKUP_ID_PATTERN, description="1-64 of [A-Za-z0-9_-]")]
_UploadId = Annotated[str, Path(pattern=UPLOAD_ID_PATTERN)]


# --------------------------------------------------------------------------- state


@dataclass(frozen=True)
class _Gateway:
    """Everything the routes use; one per app (``app.state.gateway``)."""

    config: GatewayConfig
    fleets: Mapping[str, FleetLike]
    router: FleetRouter
    fleet_ids: Mapping[bytes, str]
    verifier: TokenVerifier
    relay: VaultRelay
    backups: BackupService
    user_buckets: TokenBuckets
    address_buckets: TokenBuckets

    def limit(self, buckets: TokenBuckets, key: Hashable) -> None:
        wait = buckets.take(key)
        if wait is not None:
            retry = {"Retry-After": _retry_after(wait)}
            raise ApiError(429, "rate_limited", "too many requests", headers=retry)

    def named_fleet(self, header: str | None) -> str | None:
        """The configured fleet a ``Hsmvault-Fleet`` header names (``None`` without
        one); 400 for anything but the hex id of a fleet in the routing table."""
        if header is None:
            return None
        value = header.strip()
        if _FLEET_ID_HEX.fullmatch(value) is None:
            raise ApiError(400, "bad_request", f"{FLEET_HEADER} must be a 64-hex-digit fleet id")
        wanted = bytes.fromhex(value)
        for fleet_id, name in self.fleet_ids.items():
            if hmac.compare_digest(fleet_id, wanted):
                return name
        raise ApiError(400, "bad_request", f"{FLEET_HEADER} names no fleet of this gateway")

    def authenticate(self, credentials: HTTPAuthorizationCredentials | None) -> bytes:
        """1. a bearer token is present; 2. it verifies; 3. its user has budget left."""
        challenge = {"WWW-Authenticate": "Bearer"}
        if credentials is None:
            raise ApiError(401, "unauthorized", "a bearer token is required", headers=challenge)
        try:
            user_id = self.verifier.verify(credentials.credentials)
        except InvalidToken as exc:
            raise ApiError(401, "unauthorized", str(exc), headers=challenge) from None
        self.limit(self.user_buckets, user_id)
        return user_id


def _gateway(request: Request) -> _Gateway:
    gateway: _Gateway = request.app.state.gateway
    return gateway


_bearer = HTTPBearer(auto_error=False, bearerFormat="JWT", description="the app's JWT")


async def _authenticated(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> bytes:
    gateway = _gateway(request)
    gateway.limit(gateway.address_buckets, _client_address(request))
    return gateway.authenticate(credentials)


async def _maybe_authenticated(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> bytes | None:
    gateway = _gateway(request)
    gateway.limit(gateway.address_buckets, _client_address(request))
    return None if credentials is None else gateway.authenticate(credentials)


_UserId = Annotated[bytes, Depends(_authenticated)]
_router = APIRouter()


# --------------------------------------------------------------------------- routes


@_router.get("/v1/health", response_model=Health, tags=["meta"])
async def health() -> Health:
    """Liveness of the gateway (no authentication)."""
    return Health(status="ok")


@_router.get(
    "/v1/fleet",
    response_model=FleetKeysBody,
    tags=["meta"],
    responses=error_responses(401, 429, 503),
)
async def fleet_keys(
    request: Request, user_id: Annotated[bytes | None, Depends(_maybe_authenticated)]
) -> FleetKeysBody:
    """The public keys of the caller's fleet (the default fleet without a token)."""
    gateway = _gateway(request)
    if user_id is None:
        name = gateway.config.default_fleet
    else:
        name = await run_in_threadpool(gateway.relay.fleet_of, user_id)
    keys = gateway.fleets[name].public_keys
    if keys is None:
        raise ApiError(503, "unavailable", "the fleet's public keys are not configured")
    return FleetKeysBody(**keys.to_dict())


@_router.post(
    "/v1/vault",
    response_class=Response,
    tags=["vault"],
    openapi_extra={
        **_octet_body("one wire.hsm_api request"),
        "parameters": [
            {
                "in": "header",
                "name": FLEET_HEADER,
                "required": False,
                "description": (
                    "the id (64 hex digits) of a configured fleet to send this request to"
                    " instead of the user's (ADR 0013: moving a user off a retiring fleet);"
                    " any other value is a 400"
                ),
                "schema": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"},
            }
        ],
    },
    responses={
        200: {"content": {_OCTET: {"schema": _BINARY}}, "description": "its wire response"},
        **error_responses(400, 401, 403, 413, 429, 503),
    },
)
async def vault(request: Request, user_id: _UserId) -> Response:
    """Relay one wire request to the user's fleet (ADR 0008, relay rules), or to the
    fleet the ``Hsmvault-Fleet`` header names (ADR 0013)."""
    gateway = _gateway(request)
    # Read here (documented in openapi_extra): a declared header would add a 422 schema.
    named = gateway.named_fleet(request.headers.get(FLEET_HEADER))
    body = await _read_body(request, gateway.config.max_vault_request)
    raw = await run_in_threadpool(lambda: gateway.relay.relay(user_id, body, fleet=named))
    return Response(content=raw, media_type=_OCTET)


@_router.get(
    "/v1/backups",
    response_model=BackupList,
    tags=["backups"],
    responses=error_responses(401, 429),
)
async def list_backups(request: Request, user_id: _UserId) -> BackupList:
    """The caller's committed backups."""
    metas = await run_in_threadpool(_gateway(request).backups.list, user_id)
    return BackupList(backups=[BackupBody.of(m) for m in metas])


@_router.post(
    "/v1/backups/{backup_id}/uploads",
    response_model=UploadState,
    tags=["backups"],
    responses=error_responses(401, 413, 422, 429),
)
async def start_upload(
    request: Request, backup_id: _BackupId, body: UploadStart, user_id: _UserId
) -> UploadState:
    """Start an upload, or resume the one with the same size and SHA-256."""
    upload_id, offset = await run_in_threadpool(
        _gateway(request).backups.start_upload,
        user_id,
        backup_id,
        body.size,
        body.sha256,
        body.label,
    )
    return UploadState(upload_id=upload_id, offset=offset)


@_router.put(
    "/v1/backups/{backup_id}/uploads/{upload_id}",
    response_model=OffsetBody,
    tags=["backups"],
    openapi_extra=_octet_body("the next chunk (at most max_upload_chunk bytes, 8 MiB)"),
    responses=error_responses(400, 401, 404, 409, 413, 422, 429),
)
async def put_chunk(
    request: Request,
    backup_id: _BackupId,
    upload_id: _UploadId,
    upload_offset: Annotated[int, Header(alias="Upload-Offset", ge=0, le=2**63 - 1)],
    user_id: _UserId,
) -> OffsetBody:
    """Append a chunk at ``Upload-Offset`` (must be the upload's current offset)."""
    gateway = _gateway(request)
    data = await _read_body(request, gateway.config.max_upload_chunk)
    offset = await run_in_threadpool(
        gateway.backups.put_chunk, user_id, backup_id, upload_id, upload_offset, data
    )
    return OffsetBody(offset=offset)


@_router.post(
    "/v1/backups/{backup_id}/uploads/{upload_id}/commit",
    response_model=BackupBody,
    tags=["backups"],
    responses=error_responses(400, 401, 404, 409, 422, 429),
)
async def commit_upload(
    request: Request, backup_id: _BackupId, upload_id: _UploadId, user_id: _UserId
) -> BackupBody:
    """Verify size and SHA-256, then make the upload the backup (atomically)."""
    meta = await run_in_threadpool(_gateway(request).backups.commit, user_id, backup_id, upload_id)
    return BackupBody.of(meta)


@_router.get(
    "/v1/backups/{backup_id}",
    response_class=StreamingResponse,
    tags=["backups"],
    responses={
        200: {"content": {_OCTET: {"schema": _BINARY}}, "description": "the backup bytes"},
        **error_responses(401, 404, 422, 429),
    },
)
async def get_backup(request: Request, backup_id: _BackupId, user_id: _UserId) -> StreamingResponse:
    """The backup's bytes, streamed."""
    meta, chunks = await run_in_threadpool(_gateway(request).backups.open, user_id, backup_id)
    headers = {"Content-Length": str(meta.size), "ETag": f'"{meta.sha256}"'}
    return StreamingResponse(chunks, media_type=_OCTET, headers=headers)


@_router.delete(
    "/v1/backups/{backup_id}",
    status_code=204,
    response_class=Response,
    tags=["backups"],
    responses=error_responses(401, 404, 422, 429),
)
async def delete_backup(request: Request, backup_id: _BackupId, user_id: _UserId) -> Response:
    """Delete the backup and its bytes."""
    await run_in_threadpool(_gateway(request).backups.delete, user_id, backup_id)
    return Response(status_code=204)


# --------------------------------------------------------------------------- factory


def create_app(
    config: GatewayConfig,
    *,
    fleets: Mapping[str, FleetLike],
    blobs: BlobStore,
    metadata: MetadataStore,
    clock: Callable[[], float] = time.time,
    test_login: TestLogin | None = None,
) -> FastAPI:
    """The gateway app. ``fleets`` maps every name of ``config.fleets`` (the routing
    table) to a client of that fleet; ``clock`` (seconds) drives token times, rate
    limits, session expiry and timestamps."""
    if set(fleets) != set(config.fleets):
        raise InvalidParameter("fleets must have exactly the names of config.fleets")
    assignments = metadata if isinstance(metadata, FleetAssignmentStore) else None
    router = FleetRouter(config.fleets, retiring=config.retiring_fleets, assignments=assignments)
    fleet_ids: dict[bytes, str] = {}
    for name, client in fleets.items():
        keys = client.public_keys
        if keys is not None:
            if keys.fleet_id in fleet_ids:
                raise InvalidParameter("two routing-table entries are the same fleet")
            fleet_ids[keys.fleet_id] = name
    sessions = SessionTable(ttl=config.session_ttl, max_entries=config.max_sessions, clock=clock)
    gateway = _Gateway(
        config=config,
        fleets=dict(fleets),
        router=router,
        fleet_ids=fleet_ids,
        verifier=TokenVerifier(
            config.issuer_public_keys,
            issuer=config.issuer,
            audience=config.audience,
            max_lifetime=config.token_max_lifetime,
            leeway=config.leeway,
            clock=clock,
        ),
        relay=VaultRelay(fleets, router, sessions, assignments=assignments, clock=clock),
        backups=BackupService(blobs, metadata, max_backup_size=config.max_backup_size, clock=clock),
        user_buckets=TokenBuckets(config.user_rate, clock=clock),
        address_buckets=TokenBuckets(config.address_rate, clock=clock),
    )
    app = FastAPI(
        title=API_TITLE,
        version=API_VERSION,
        description="HSM-backed backup key vault: gateway API v1 (ADR 0008).",
        docs_url=None,
        redoc_url=None,
    )
    app.state.gateway = gateway
    install_handlers(app)
    app.include_router(_router)
    app.include_router(passkeys_router(config, metadata, clock=clock))  # ADR 0011
    # the /passkeys page; test_login (token for any username) only from dev deployments
    app.include_router(passkey_page_router(test_login=test_login))
    return app
