"""``POST /v1/vault``: relay one wire request to the user's fleet (ADR 0008, relay rules).

The gateway parses the request only to bind it to the caller. As a checklist:

1. the body parses strictly as one :mod:`hsmvault.wire.hsm_api` request (else 400);
   ``RejoinRequest`` is fleet-internal and refused (403): nodes send it to each other;
   so is ``InstallBundleRequest`` (the operator's, through ``FleetClient.install_bundle``);
2. a request that names a ``user_id`` must name the token's user (else 403); it goes
   to that user's fleet (consistent hashing), with failover between nodes;
3. a request that carries a ``session_id`` (``LoginFinish``, ``ChangeSecret``,
   ``Delete``) is accepted only for a session this gateway saw opened for the same
   token user (else 403), and goes only to the node that opened it (no failover);
4. the exact request bytes are forwarded and the exact response bytes returned; a
   response of the wrong type is a 502; no definite answer, or an ``UNAVAILABLE``
   outcome, is a 503 with ``Retry-After``;
5. an OK ``LoginStartResponse`` opens a session route ``session_id → (user, fleet,
   node)``.

The gateway never sees a secret here: uploads are HPKE-sealed to the fleet and releases
sealed to the OPAQUE session key. It logs request types and outcomes, never bytes.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping
from typing import Final, Protocol

from hsmvault.errors import DecodeError, Unavailable
from hsmvault.host.fleet_client import NodeAnswer
from hsmvault.host.routing import FleetRing
from hsmvault.wire.hsm_api import (
    RESPONSE_FOR,
    AttemptsRemainingRequest,
    ChangeSecretRequest,
    DeleteRequest,
    ErrorResponse,
    InstallBundleRequest,
    LoginFinishRequest,
    LoginStartRequest,
    LoginStartResponse,
    Outcome,
    RegisterRequest,
    RegistrationStartRequest,
    RejoinRequest,
    decode_request,
)

from .errors import ApiError
from .sessions import SessionTable

__all__ = ["UNAVAILABLE_RETRY_AFTER", "FleetCaller", "VaultRelay"]

#: Seconds a client is told to wait when the fleet cannot answer.
UNAVAILABLE_RETRY_AFTER: Final = 2

_log = logging.getLogger(__name__)

_USER_REQUESTS: Final = (
    RegistrationStartRequest,
    RegisterRequest,
    LoginStartRequest,
    AttemptsRemainingRequest,
)
_SESSION_REQUESTS: Final = (LoginFinishRequest, ChangeSecretRequest, DeleteRequest)


class FleetCaller(Protocol):
    """What the relay needs of a :class:`~hsmvault.host.fleet_client.FleetClient`."""

    def call(
        self, request: bytes, *, prefer: int | None = None, failover: bool = True
    ) -> NodeAnswer: ...


def _unavailable(detail: str) -> ApiError:
    return ApiError(
        503, "unavailable", detail, headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER)}
    )


class VaultRelay:
    """Binds wire requests to token users and relays them (see the module docstring).
    Blocking: call :meth:`relay` from a worker thread."""

    def __init__(
        self, fleets: Mapping[str, FleetCaller], ring: FleetRing, sessions: SessionTable
    ) -> None:
        self._fleets = fleets
        self._ring = ring
        self._sessions = sessions

    def relay(self, user_id: bytes, body: bytes) -> bytes:
        """The fleet's response bytes to ``body`` sent by ``user_id``; :class:`ApiError`
        for every refusal."""
        # 1. strict parse
        try:
            request = decode_request(body)
        except DecodeError:
            raise ApiError(400, "bad_request", "the body is not a valid vault request") from None
        if isinstance(request, RejoinRequest | InstallBundleRequest):
            raise ApiError(403, "forbidden", "fleet-internal request")
        # 2. / 3. bind to the token user and pick the node
        fleet = self._ring.fleet_for(user_id)
        prefer: int | None = None
        failover = True
        if isinstance(request, _USER_REQUESTS):
            if not hmac.compare_digest(request.user_id, user_id):
                raise ApiError(403, "forbidden", "the request names another user")
        elif isinstance(request, _SESSION_REQUESTS):
            route = self._sessions.lookup(request.session_id)
            if route is None or not hmac.compare_digest(route.user_id, user_id):
                raise ApiError(
                    403, "forbidden", "no session of this user (unknown, expired or another's)"
                )
            fleet, prefer, failover = route.fleet, route.node, False
        # 4. relay the exact bytes
        try:
            answer = self._fleets[fleet].call(body, prefer=prefer, failover=failover)
        except Unavailable:
            _log.info("vault %s: fleet unavailable", type(request).__name__)
            raise _unavailable("the fleet cannot answer now") from None
        response = answer.response
        if type(response) not in (RESPONSE_FOR[type(request)], ErrorResponse):
            _log.warning("vault %s: node answered with the wrong type", type(request).__name__)
            raise ApiError(502, "bad_gateway", "the fleet answered with the wrong type")
        if response.outcome is Outcome.UNAVAILABLE:
            raise _unavailable("the fleet cannot answer now")
        # 5. remember where a login session lives
        if isinstance(response, LoginStartResponse) and response.outcome is Outcome.OK:
            self._sessions.open(response.session_id, user_id, fleet, answer.node)
        _log.info("vault %s: %s", type(request).__name__, response.outcome.name)
        return answer.raw
