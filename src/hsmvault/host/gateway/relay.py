"""``POST /v1/vault``: relay one wire request to the user's fleet (ADR 0008, relay rules).

The gateway parses the request only to bind it to the caller. As a checklist:

1. the body parses strictly as one :mod:`hsmvault.wire.hsm_api` request (else 400);
   ``RejoinRequest`` is fleet-internal and refused (403): nodes send it to each other;
   so are ``InstallBundleRequest`` and ``DecommissionRequest`` (the operator's, through
   ``FleetClient.install_bundle`` / ``FleetClient.decommission``);
2. a request that names a ``user_id`` must name the token's user (else 403); it goes
   to the fleet the caller named (``Hsmvault-Fleet`` header, resolved by the app to a
   configured fleet), else to the user's fleet (:class:`~hsmvault.host.routing.FleetRouter`:
   the user's assignment, else the active fleets' ring), with failover between nodes;
3. a request that carries a ``session_id`` (``LoginFinish``, ``ChangeSecret``,
   ``Delete``) is accepted only for a session this gateway saw opened for the same
   token user (else 403), and goes only to the node that opened it (no failover); a
   named fleet other than the session's is a 400;
4. the exact request bytes are forwarded and the exact response bytes returned; a
   response of the wrong type is a 502; no definite answer, or an ``UNAVAILABLE``
   outcome, is a 503 with ``Retry-After``;
5. an OK ``LoginStartResponse`` opens a session route ``session_id → (user, fleet,
   node)``;
6. an OK ``RegisterResponse`` assigns the user to the fleet that answered it (ADR 0013);
   if the assignment cannot be stored the answer is a 503 — the record exists but the
   caller must not act on it (the SDK retries its migration later, and never deletes an
   old record before a move is confirmed); an OK ``DeleteResponse`` drops the
   assignment if it still names that fleet (best effort).

The gateway never sees a secret here: uploads are HPKE-sealed to the fleet and releases
sealed to the OPAQUE session key. It logs request types and outcomes, never bytes.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable, Mapping
from typing import Final, Protocol

from hsmvault.errors import DecodeError, Unavailable
from hsmvault.host.fleet_client import NodeAnswer
from hsmvault.host.routing import FleetRing, FleetRouter
from hsmvault.wire.hsm_api import (
    RESPONSE_FOR,
    AttemptsRemainingRequest,
    ChangeSecretRequest,
    DecommissionRequest,
    DeleteRequest,
    DeleteResponse,
    ErrorResponse,
    InstallBundleRequest,
    LoginFinishRequest,
    LoginStartRequest,
    LoginStartResponse,
    Outcome,
    RegisterRequest,
    RegisterResponse,
    RegistrationStartRequest,
    RejoinRequest,
    Request,
    Response,
    decode_request,
)

from .errors import ApiError
from .sessions import SessionTable

__all__ = ["UNAVAILABLE_RETRY_AFTER", "AssignmentWriter", "FleetCaller", "VaultRelay"]

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
_OPERATOR_REQUESTS: Final = (RejoinRequest, InstallBundleRequest, DecommissionRequest)


class FleetCaller(Protocol):
    """What the relay needs of a :class:`~hsmvault.host.fleet_client.FleetClient`."""

    def call(
        self, request: bytes, *, prefer: int | None = None, failover: bool = True
    ) -> NodeAnswer: ...


class AssignmentWriter(Protocol):
    """What the relay writes of a
    :class:`~hsmvault.host.storage.base.FleetAssignmentStore`."""

    def set_fleet_assignment(self, user_id: bytes, fleet: str, assigned_at: float) -> None: ...

    def clear_fleet_assignment(self, user_id: bytes, fleet: str) -> bool: ...


def _unavailable(detail: str) -> ApiError:
    return ApiError(
        503, "unavailable", detail, headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER)}
    )


class VaultRelay:
    """Binds wire requests to token users and relays them (see the module docstring).
    Blocking: call :meth:`relay` from a worker thread."""

    def __init__(
        self,
        fleets: Mapping[str, FleetCaller],
        router: FleetRouter | FleetRing,
        sessions: SessionTable,
        *,
        assignments: AssignmentWriter | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._fleets = fleets
        self._router = router
        self._sessions = sessions
        self._assignments = assignments
        self._clock = clock

    def fleet_of(self, user_id: bytes) -> str:
        """The fleet ``user_id`` is routed to (503 if the assignment lookup fails)."""
        return self._user_fleet(user_id)

    def _user_fleet(self, user_id: bytes) -> str:
        try:
            return self._router.fleet_for(user_id)
        except Unavailable:
            _log.warning("vault: fleet assignment lookup unavailable")
            raise _unavailable("the gateway's metadata store cannot answer now") from None

    def relay(self, user_id: bytes, body: bytes, *, fleet: str | None = None) -> bytes:
        """The fleet's response bytes to ``body`` sent by ``user_id``; :class:`ApiError`
        for every refusal. ``fleet`` is the configured fleet the caller named (header
        ``Hsmvault-Fleet``), or ``None``."""
        # 1. strict parse
        try:
            request = decode_request(body)
        except DecodeError:
            raise ApiError(400, "bad_request", "the body is not a valid vault request") from None
        if isinstance(request, _OPERATOR_REQUESTS):
            raise ApiError(403, "forbidden", "fleet-internal request")
        if fleet is not None and fleet not in self._fleets:
            raise ApiError(400, "bad_request", "unknown fleet")
        # 2. / 3. bind to the token user and pick the node
        target, prefer, failover = self._route(request, user_id, fleet)
        # 4. relay the exact bytes
        try:
            answer = self._fleets[target].call(body, prefer=prefer, failover=failover)
        except Unavailable:
            _log.info("vault %s: fleet unavailable", type(request).__name__)
            raise _unavailable("the fleet cannot answer now") from None
        response = answer.response
        if type(response) not in (RESPONSE_FOR[type(request)], ErrorResponse):
            _log.warning("vault %s: node answered with the wrong type", type(request).__name__)
            raise ApiError(502, "bad_gateway", "the fleet answered with the wrong type")
        if response.outcome is Outcome.UNAVAILABLE:
            raise _unavailable("the fleet cannot answer now")
        if response.outcome is Outcome.OK:
            self._remember(response, user_id, target, answer.node)
        _log.info("vault %s: %s", type(request).__name__, response.outcome.name)
        return answer.raw

    def _route(
        self, request: Request, user_id: bytes, fleet: str | None
    ) -> tuple[str, int | None, bool]:
        """Steps 2-3: (fleet, preferred node, failover) for ``request`` of ``user_id``."""
        if isinstance(request, _USER_REQUESTS):
            if not hmac.compare_digest(request.user_id, user_id):
                raise ApiError(403, "forbidden", "the request names another user")
            return (fleet if fleet is not None else self._user_fleet(user_id)), None, True
        if isinstance(request, _SESSION_REQUESTS):
            route = self._sessions.lookup(request.session_id)
            if route is None or not hmac.compare_digest(route.user_id, user_id):
                raise ApiError(
                    403, "forbidden", "no session of this user (unknown, expired or another's)"
                )
            if fleet is not None and fleet != route.fleet:
                raise ApiError(400, "bad_request", "the session lives on another fleet")
            return route.fleet, route.node, False
        # Status: no user; the named fleet or the user's
        return (fleet if fleet is not None else self._user_fleet(user_id)), None, True

    def _remember(self, response: Response, user_id: bytes, fleet: str, node: int) -> None:
        """Steps 5-6 for an OK ``response``: session routes and fleet assignments."""
        if isinstance(response, LoginStartResponse):
            self._sessions.open(response.session_id, user_id, fleet, node)
        elif isinstance(response, RegisterResponse):
            self._assign(user_id, fleet)
        elif isinstance(response, DeleteResponse):
            self._unassign(user_id, fleet)

    def _assign(self, user_id: bytes, fleet: str) -> None:
        if self._assignments is None:
            return
        try:
            self._assignments.set_fleet_assignment(user_id, fleet, self._clock())
        except Exception as exc:  # any failure (driver errors too): the caller must not act
            _log.error(
                "vault Register: the fleet assignment was not stored (%s)", type(exc).__name__
            )
            raise _unavailable("the registration could not be recorded; try again") from None

    def _unassign(self, user_id: bytes, fleet: str) -> None:
        if self._assignments is None:
            return
        try:
            self._assignments.clear_fleet_assignment(user_id, fleet)
        except Exception as exc:  # best effort: the routing falls back safely
            _log.warning(
                "vault Delete: the fleet assignment was not cleared (%s)", type(exc).__name__
            )
