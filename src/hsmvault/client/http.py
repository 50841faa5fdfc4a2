"""The gateway's HTTP API v1 (ADR 0008), one method per route, over ``httpx``.

:class:`GatewayHttp` knows URLs, headers, JSON shapes and status codes — nothing about
backups or the vault protocol (that is :mod:`hsmvault.client.sdk`). Every route but
``/v1/health`` gets ``Authorization: Bearer <token>`` from the token provider, called
per request (tokens are short-lived). Responses map to errors in one place
(:func:`raise_for_status`):

=======================  ===========================================================
HTTP                     raised
=======================  ===========================================================
401, 403                 :class:`~hsmvault.client.errors.Unauthorized`
404                      :class:`~hsmvault.client.errors.NotFound`
409                      :class:`~hsmvault.client.errors.UploadOffsetMismatch` (offset
                         from the JSON body's ``offset`` or the ``Upload-Offset`` header)
429                      :class:`~hsmvault.client.errors.RateLimited` (``Retry-After``)
502, 503, 504            :class:`~hsmvault.client.errors.Unavailable` (``Retry-After``)
other 4xx/5xx            :class:`~hsmvault.client.errors.GatewayError`
network failure          :class:`~hsmvault.client.errors.Unavailable` (wrapped, the raw
                         ``httpx`` exception is not chained)
=======================  ===========================================================

No token, body or header value is ever logged or put in an error message.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import json
import re
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import httpx

from hsmvault.client.errors import (
    GatewayError,
    NotFound,
    RateLimited,
    Unauthorized,
    Unavailable,
    UploadOffsetMismatch,
)
from hsmvault.errors import DecodeError, InvalidParameter
from hsmvault.fleet.fleet_keys import FleetPublicKeys

__all__ = [
    "MAX_CHUNK_BYTES",
    "BackupInfo",
    "GatewayHttp",
    "TokenProvider",
    "UploadSession",
    "check_backup_id",
    "decode_token_subject",
    "raise_for_status",
]

TokenProvider = Callable[[], str]
"""Returns a current bearer token (a JWT from the app's auth service)."""

#: The gateway accepts at most 8 MiB per upload request (ADR 0008).
MAX_CHUNK_BYTES: Final = 8 * 1024 * 1024
_BACKUP_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_OCTETS: Final = "application/octet-stream"
_DETAIL_MAX: Final = 200


def check_backup_id(backup_id: str) -> str:
    """``backup_id`` if it is 1-64 characters of ``[A-Za-z0-9_-]``, else
    :class:`InvalidParameter`."""
    if not isinstance(backup_id, str) or not _BACKUP_ID.fullmatch(backup_id):
        raise InvalidParameter("a backup id is 1-64 characters of [A-Za-z0-9_-]")
    return backup_id


@dataclass(frozen=True, slots=True)
class BackupInfo:
    """A committed backup as the gateway lists it (ciphertext size and SHA-256; no
    secrets). ``created_at`` is seconds since the epoch (``None`` if unparseable)."""

    backup_id: str
    size: int
    sha256: str
    created_at: float | None
    label: str

    @classmethod
    def from_json(cls, obj: object) -> BackupInfo:
        """Parse one backup object; :class:`DecodeError` if a field is missing or mistyped."""
        if not isinstance(obj, dict):
            raise DecodeError("backup: not an object")
        backup_id, size, digest = obj.get("backup_id"), obj.get("size"), obj.get("sha256")
        label = obj.get("label", "")
        if not isinstance(backup_id, str) or not isinstance(digest, str):
            raise DecodeError("backup: backup_id and sha256 must be strings")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise DecodeError("backup: size must be a non-negative integer")
        if not isinstance(label, str):
            raise DecodeError("backup: label must be a string")
        return cls(backup_id, size, digest, _timestamp(obj.get("created_at")), label)


def _timestamp(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            return parsed.timestamp()
    return None


@dataclass(frozen=True, slots=True)
class UploadSession:
    """An upload the gateway opened (or resumed): its id and the bytes it holds."""

    upload_id: str
    offset: int


def _retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    value = value.strip()
    with contextlib.suppress(ValueError):
        seconds = float(value)
        return seconds if seconds >= 0 else None
    with contextlib.suppress(TypeError, ValueError, IndexError):
        when = email.utils.parsedate_to_datetime(value)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, when.timestamp() - time.time())
    return None


def _error_body(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError):
        return {}
    return body if isinstance(body, dict) else {}


def _offset_of(response: httpx.Response, body: dict[str, Any]) -> int | None:
    candidates: list[object] = [body.get("offset")]
    if isinstance(body.get("detail"), dict):
        candidates.append(body["detail"].get("offset"))
    candidates.append(response.headers.get("Upload-Offset"))
    for value in candidates:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        if isinstance(value, str) and value.isdigit():
            return int(value)
    return None


def raise_for_status(response: httpx.Response) -> None:
    """Raise the SDK error for a non-2xx ``response`` (see the module docstring).
    The response body must have been read."""
    status = response.status_code
    if 200 <= status < 300:
        return
    body = _error_body(response)
    code = body.get("error") if isinstance(body.get("error"), str) else None
    detail = body.get("detail")
    text = f"{status} {code or response.reason_phrase}"
    if isinstance(detail, str) and detail:
        text += f": {detail[:_DETAIL_MAX]}"
    if status in (401, 403):
        raise Unauthorized(f"gateway refused the token: {text}", status=status, code=code)
    if status == 404:
        raise NotFound(f"not found: {text}", status=status, code=code)
    if status == 409:
        raise UploadOffsetMismatch(
            f"upload offset mismatch: {text}", offset=_offset_of(response, body), code=code
        )
    if status == 429:
        raise RateLimited(f"rate limited: {text}", retry_after=_retry_after(response))
    if status in (502, 503, 504):
        raise Unavailable(f"gateway unavailable: {text}", retry_after=_retry_after(response))
    raise GatewayError(f"gateway error: {text}", status=status, code=code)


def _segment(value: str) -> str:
    """A server-chosen id as one URL path segment."""
    if not isinstance(value, str) or not value:
        raise DecodeError("gateway answer: empty id")
    return urllib.parse.quote(value, safe="")


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (ValueError, UnicodeDecodeError):
        raise DecodeError("gateway answered with malformed JSON") from None


def _non_negative_int(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise DecodeError(f"gateway answer: {what} must be a non-negative integer")
    return value


class GatewayHttp:
    """The routes of ADR 0008 over one ``httpx.Client`` (made here unless ``client``
    is given — e.g. one with an ``httpx.MockTransport`` in tests; then its base URL is
    ignored and ``base_url`` is joined to every path)."""

    def __init__(
        self,
        base_url: str,
        token_provider: TokenProvider,
        *,
        client: httpx.Client | None = None,
        timeout: float = 30.0,
    ) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise InvalidParameter("gateway_url must be an http(s) URL")
        self._base = base_url.rstrip("/")
        self._token = token_provider
        self._own_client = client is None
        self._client = client if client is not None else httpx.Client(timeout=timeout)

    def close(self) -> None:
        """Close the HTTP client if this object made it."""
        if self._own_client:
            self._client.close()

    def __repr__(self) -> str:
        return f"GatewayHttp({self._base!r})"

    # ------------------------------------------------------------ plumbing

    def _url(self, path: str) -> str:
        return f"{self._base}/v1/{path}"

    def _headers(self, *, auth: bool = True, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = dict(extra or {})
        if auth:
            token = self._token()
            if not isinstance(token, str) or not token:
                raise InvalidParameter("the token provider returned no token")
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def _request(
        self,
        method: str,
        path: str,
        *,
        auth: bool = True,
        content: bytes | Iterator[bytes] | None = None,
        json_body: object = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        try:
            response = self._client.request(
                method,
                self._url(path),
                content=content,
                json=json_body,
                headers=self._headers(auth=auth, extra=headers),
            )
        except httpx.TransportError as exc:
            raise Unavailable(f"gateway unreachable ({type(exc).__name__})") from None
        raise_for_status(response)
        return response

    def call_json(self, method: str, path: str, body: object = None) -> httpx.Response:
        """One authenticated JSON request to ``/v1/<path>`` for feature modules (passkeys):
        the same token, transport-error and status mapping as every route here."""
        return self._request(method, path, json_body=body)

    # ------------------------------------------------------------ routes

    def health(self) -> bool:
        """``GET /v1/health``: True if the gateway answers ``{"status": "ok"}``."""
        body = _json(self._request("GET", "health", auth=False))
        return isinstance(body, dict) and body.get("status") == "ok"

    def fleet(self) -> FleetPublicKeys:
        """``GET /v1/fleet``: the public keys of the token user's fleet (*as the gateway
        says*: see :meth:`hsmvault.client.sdk.VaultClient.fleet_keys` on pinning)."""
        return FleetPublicKeys.from_dict(_json(self._request("GET", "fleet")))

    def vault(self, request: bytes, *, fleet_id: bytes | None = None) -> bytes:
        """``POST /v1/vault``: relay one wire request, return the wire response. With
        ``fleet_id``, header ``Hsmvault-Fleet`` asks for that configured fleet (ADR 0013)."""
        headers = {"Content-Type": _OCTETS}
        if fleet_id is not None:
            if not isinstance(fleet_id, bytes) or len(fleet_id) != 32:
                raise InvalidParameter("fleet_id must be 32 bytes")
            headers["Hsmvault-Fleet"] = fleet_id.hex()
        response = self._request("POST", "vault", content=request, headers=headers)
        return response.content

    def list_backups(self) -> list[BackupInfo]:
        """``GET /v1/backups``: the token user's committed backups."""
        body = _json(self._request("GET", "backups"))
        if not isinstance(body, dict) or not isinstance(body.get("backups"), list):
            raise DecodeError("gateway answer: expected {'backups': [...]}")
        return [BackupInfo.from_json(item) for item in body["backups"]]

    def start_upload(self, backup_id: str, *, size: int, sha256: str, label: str) -> UploadSession:
        """``POST /v1/backups/{id}/uploads``: open (or resume: same size and digest) an
        upload; returns its id and the offset the gateway holds."""
        path = f"backups/{check_backup_id(backup_id)}/uploads"
        body = _json(
            self._request("POST", path, json_body={"size": size, "sha256": sha256, "label": label})
        )
        if not isinstance(body, dict) or not isinstance(body.get("upload_id"), str):
            raise DecodeError("gateway answer: expected {'upload_id', 'offset'}")
        return UploadSession(body["upload_id"], _non_negative_int(body.get("offset"), "offset"))

    def put_chunk(
        self,
        backup_id: str,
        upload_id: str,
        *,
        offset: int,
        data: bytes | Iterator[bytes],
        length: int | None = None,
    ) -> int:
        """``PUT /v1/backups/{id}/uploads/{upload}`` with ``Upload-Offset``; returns the
        new offset. 409 raises :class:`UploadOffsetMismatch` with the server's offset.

        ``data`` is the chunk, or an iterator of its pieces with ``length`` their total
        (sent with ``Content-Length``, streamed: no chunk-sized buffer is held)."""
        size = len(data) if isinstance(data, bytes) else length
        if size is None:
            raise InvalidParameter("a streamed chunk needs its length")
        if size > MAX_CHUNK_BYTES:
            raise InvalidParameter(f"an upload chunk is at most {MAX_CHUNK_BYTES} bytes")
        path = f"backups/{check_backup_id(backup_id)}/uploads/{_segment(upload_id)}"
        response = self._request(
            "PUT",
            path,
            content=data,
            headers={
                "Content-Type": _OCTETS,
                "Content-Length": str(size),
                "Upload-Offset": str(offset),
            },
        )
        body = _json(response)
        if not isinstance(body, dict):
            raise DecodeError("gateway answer: expected {'offset'}")
        return _non_negative_int(body.get("offset"), "offset")

    def commit_upload(self, backup_id: str, upload_id: str) -> BackupInfo:
        """``POST /v1/backups/{id}/uploads/{upload}/commit``: the committed backup."""
        path = f"backups/{check_backup_id(backup_id)}/uploads/{_segment(upload_id)}/commit"
        return BackupInfo.from_json(_json(self._request("POST", path)))

    @contextlib.contextmanager
    def download(self, backup_id: str, *, chunk_size: int = 1 << 20) -> Iterator[Iterator[bytes]]:
        """``GET /v1/backups/{id}``, streamed: yields an iterator of body pieces. A
        network failure mid-stream raises :class:`Unavailable` from the iterator."""
        url = self._url(f"backups/{check_backup_id(backup_id)}")
        headers = self._headers()
        try:
            with self._client.stream("GET", url, headers=headers) as response:
                if not 200 <= response.status_code < 300:
                    response.read()
                    raise_for_status(response)
                yield _guarded(response.iter_bytes(chunk_size))
        except httpx.TransportError as exc:
            raise Unavailable(f"gateway unreachable ({type(exc).__name__})") from None

    def delete_backup(self, backup_id: str) -> None:
        """``DELETE /v1/backups/{id}``."""
        self._request("DELETE", f"backups/{check_backup_id(backup_id)}")


def _guarded(pieces: Iterator[bytes]) -> Iterator[bytes]:
    try:
        yield from pieces
    except httpx.TransportError as exc:
        raise Unavailable(f"download interrupted ({type(exc).__name__})") from None


def decode_token_subject(token: str) -> str:
    """The ``sub`` claim of a JWT, read *without* verifying it: the SDK only uses it to
    name its own user id in vault requests (the gateway verifies the token and refuses
    a request naming another user). :class:`DecodeError` if there is none."""
    parts = token.split(".")
    if len(parts) != 3:
        raise DecodeError("the token is not a JWT")
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, UnicodeDecodeError):
        raise DecodeError("the token payload is not JSON") from None
    sub = claims.get("sub") if isinstance(claims, dict) else None
    if not isinstance(sub, str) or not sub:
        raise DecodeError("the token has no 'sub' claim")
    return sub
