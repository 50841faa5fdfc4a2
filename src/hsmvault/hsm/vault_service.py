"""The HSM node's one door: ``VaultService.handle(request_bytes) -> response_bytes``.

Every request from outside the trusted zone arrives here as bytes of a
:mod:`hsmvault.wire.hsm_api` request and leaves as the bytes of its paired response. The
method never raises: bytes that do not parse, fields that do not parse as the crypto
types they stand for, and sealed uploads that do not open are answered ``BAD_REQUEST``
*before* anything is submitted or any session is touched (no state change); no quorum is
``UNAVAILABLE``; an unexpected internal error is logged by type only and answered
``UNAVAILABLE``.

Sealed uploads: the registration record, KSF parameters and wrapped key reach the node
only as a fleet seal (``crypto.fleet_seal``, HPKE to the fleet's ``enc`` key, purpose
``registration-upload``, context :func:`~hsmvault.wire.hsm_api.upload_context` of user id
and credential nonce). The node opens it with ``upload_key`` (the fleet's ``enc`` private
key); one made for another user id, another nonce or another fleet, or altered, does not
open.

Fleet session signature (ADR 0010, "Delivery"): both start responses carry the fleet
id, the fleet's current validation bundle as committed on this node (empty if none) and
the fleet ``sig`` key's Ed25519 signature over
:func:`~hsmvault.wire.fleet_session.fleet_session_message` of the fleet id, the *exact*
request bytes received and that bundle — for unknown users too (same path). The node
never parses the bundle; clients verify it.

Flows (numbered as enforced):

Registration start
    1. parse the ``RegistrationRequest``; 2. draw a fresh 32-byte ``credential_nonce``;
    3. answer RFC 9807 §5.2.2 for credential identifier ``cid(user_id, nonce)``, signed
    as above. Stateless. Because the OPRF key is derived from the *nonce* too, and the node never
    evaluates under a nonce it did not just draw, registration is not an oracle for the
    OPRF key of any stored record (no uncounted guesses, no pre-registration
    precomputation).
Register
    1. open the sealed upload under the context of the request's user id and nonce;
    2. parse the upload, its record and its KSF params; 3. commit ``Register``; 4. map
    the result.
Login start
    1. parse KE1; 2. reserve a session slot (``UNAVAILABLE`` if full, nothing counted);
    3. commit ``BeginAttempt`` — the guess counter's increment is committed before
    KE2 exists; if it cannot commit, no KE2 is ever computed; 4. compute KE2 with the
    real record, or for an unknown user with the server's fake record (RFC 9807 §10.9);
    5. store a single-use pending session; answer, signed as above.
Login finish
    1. parse KE3; 2. take (remove) the pending session; 3. ``finish_login``;
    4a. wrong KE3: commit ``RecordFailure`` (``NoOp`` for an unknown user) →
    ``INVALID_LOGIN``; 4b. right KE3: commit ``RecordSuccess`` (version-checked), seal
    the wrapped key to the session key (``crypto.session_box``), keep the session as
    *authenticated* for ``authenticated_session_ttl`` seconds → ``OK``.
Change secret / delete
    1. find an authenticated session (``NO_SESSION`` if none); 2. change secret only:
    open the sealed upload under the context of the *session's* user id and the
    request's nonce, and parse it as in Register (``BAD_REQUEST`` if either fails; the
    session stays); 3. verify the request's session authenticator (``INVALID_LOGIN`` if
    wrong; the session stays); 4. consume the session; 5. commit ``Replace``/``Delete``
    naming the record version the login proved, so a since-replaced record is never
    touched.

Unknown users (RFC 9807 §10.9): the same command type (``BeginAttempt``) is committed
for them, KE2 has the same length and is computed the same way, the KSF parameters are
the configured ``unknown_user_ksf_params``, and ``attempts_remaining`` is fixed at
``unknown_user_guess_limit - 1`` in ``LoginStartResponse`` (and
``unknown_user_guess_limit`` in ``AttemptsRemainingResponse``) — what a fresh record
with the default limit shows on its first attempt. A wrong KE3 then commits a ``NoOp``
(one round, like ``RecordFailure``). Limitation: the value never decreases, so an
attacker who makes two login starts for one id can tell a fresh real record from an
unknown id (at the cost of a real guess); hiding that would need per-id counters for
ids that do not exist, i.e. unbounded replicated state.

Install bundle (operator, relayed by the host)
    commit the bundle in ``BundlePart`` commands (``hsm.vault_state``); ``OK`` with the
    epoch once installed (or if that exact bundle already is), ``STALE_EPOCH`` below the
    current epoch, ``EPOCH_CONFLICT`` for the current epoch with other bytes,
    ``UNAVAILABLE`` if the parts could not all commit (or another install interleaved):
    retrying, on any node, restarts from the first part. No session is touched.
Rejoin (fleet-internal)
    delegated to the ``rejoin`` handler the node process provides (ticket checks and
    the membership change live there, ADR 0005 "Rejoin"); without a handler
    ``BAD_REQUEST``. No session is touched.
Decommission (operator, relayed by the host; ADR 0013)
    1. the request's fleet id must be this node's (else ``BAD_REQUEST``, nothing
    changes); 2. commit ``Decommission`` (every replica erases every record and
    tombstone; idempotent); 3. drop every login session held here; 4. ask the consensus
    engine, once, to write a snapshot and compact its log (``compact``), so the sealed
    state on the host's disk no longer holds the erased records in the next snapshot.

**Once decommissioned** (this node's committed state says so), every request but
``Status``, ``Rejoin`` and ``Decommission`` is answered ``DECOMMISSIONED`` before anything
is submitted, sessions are dropped, and the first such request (a ``Status`` too) also
triggers the one-time compaction on *this* node — so an operator who polls every node's
status after decommissioning makes every replica compact. A command that reaches the
state machine after the decommissioning (a race) is refused there and answered
``DECOMMISSIONED`` too.

Secrets (session keys, OPAQUE states, records, wrapped keys) never appear in logs,
exceptions or ``repr``. Session ids are looked up through a keyed hash and compared with
``hmac.compare_digest``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, NoReturn, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from hsmvault.crypto.fleet_seal import PURPOSE_REGISTRATION_UPLOAD, open_from_client
from hsmvault.crypto.ksf import DEFAULT_KSF_PARAMS, KsfAlgorithm, KsfParams
from hsmvault.crypto.opaque.messages import KE1, KE3, RegistrationRecord, RegistrationRequest
from hsmvault.crypto.opaque.parties import OpaqueServer
from hsmvault.crypto.opaque.protocol import ServerLoginState
from hsmvault.crypto.ristretto255 import RandomBytes
from hsmvault.crypto.session_box import (
    LABEL_CHANGE_SECRET,
    LABEL_DELETE,
    LABEL_WRAPPED_KEY,
    seal_to_session,
    verify_session_authenticator,
)
from hsmvault.errors import (
    DecodeError,
    InvalidLogin,
    InvalidParameter,
    Unavailable,
    VerificationError,
)
from hsmvault.hsm.vault_state import (
    Applied,
    AttemptGranted,
    BeginAttempt,
    BundleInstalled,
    BundleStaged,
    Command,
    CommandResult,
    Decommission,
    Decommissioned,
    Delete,
    NoOp,
    RecordFailure,
    RecordSuccess,
    Refusal,
    Refused,
    Register,
    Replace,
    SuccessRecorded,
    VaultState,
    bundle_parts,
    decode_result,
    encode_command,
)
from hsmvault.wire.fleet_session import fleet_session_message
from hsmvault.wire.hsm_api import (
    CREDENTIAL_NONCE_LEN,
    DEFAULT_GUESS_LIMIT,
    FLEET_ID_LEN,
    MAX_GUESS_LIMIT,
    MIN_GUESS_LIMIT,
    SESSION_ID_LEN,
    AttemptsRemainingRequest,
    AttemptsRemainingResponse,
    ChangeSecretRequest,
    ChangeSecretResponse,
    DecommissionRequest,
    DecommissionResponse,
    DeleteRequest,
    DeleteResponse,
    InstallBundleRequest,
    InstallBundleResponse,
    LoginFinishRequest,
    LoginFinishResponse,
    LoginStartRequest,
    LoginStartResponse,
    Outcome,
    RegisterRequest,
    RegisterResponse,
    RegistrationStartRequest,
    RegistrationStartResponse,
    RegistrationUpload,
    RejoinRequest,
    RejoinResponse,
    Request,
    Response,
    StatusRequest,
    StatusResponse,
    decode_request,
    refusal_for,
    upload_context,
)

__all__ = [
    "Consensus",
    "RejoinHandler",
    "VaultService",
    "VaultServiceConfig",
    "credential_identifier",
]

RejoinHandler = Callable[[RejoinRequest], Outcome]
"""Answers a fleet-internal :class:`~hsmvault.wire.hsm_api.RejoinRequest` with the
outcome of its checks and membership change (provided by the node process)."""

_log = logging.getLogger(__name__)

_CREDENTIAL_ID_PREFIX: Final = b"hsmvault/credential/v1\x00"
#: The nonce in unknown users' credential identifiers. Never drawn for a real record
#: with more than negligible probability (real nonces are 32 random bytes).
_UNKNOWN_USER_NONCE: Final = bytes(CREDENTIAL_NONCE_LEN)


class Consensus(Protocol):
    """The replicated log as the node sees it.

    ``submit`` returns the encoded result of ``VaultState.apply(command)`` on this node,
    and only after the command is committed by a quorum and applied; it raises
    :class:`~hsmvault.errors.Unavailable` if that cannot happen (no quorum, timeout) —
    in which case the command may or may not commit later. ``state`` is this node's
    committed state, for reads (never mutate it).
    """

    def submit(self, command: bytes) -> bytes:
        """Commit ``command`` and return its apply result."""
        ...

    def state(self) -> VaultState:
        """The committed state (read-only use)."""
        ...


@dataclass(frozen=True, slots=True)
class VaultServiceConfig:
    """Limits and defaults of a node's service, in one place.

    * ``login_session_ttl`` — seconds between LoginStart and LoginFinish (default 120).
    * ``authenticated_session_ttl`` — seconds after a successful login during which
      ChangeSecret/Delete may use the session (default 300).
    * ``max_sessions`` — pending plus authenticated sessions held in memory (default
      10,000); when full, LoginStart answers ``UNAVAILABLE`` *before* counting a guess.
    * ``unknown_user_guess_limit`` — the limit unknown users appear to have (default
      10, the wire default); ``unknown_user_ksf_params`` — the KSF parameters they
      appear to have (default :data:`DEFAULT_KSF_PARAMS`; set it to what clients
      register with, or unknown ids stand out).
    * ``unsafe_allow_identity_ksf`` — accept records registered with the identity KSF
      (RFC test vectors only). Default ``False``: such a Register is ``BAD_REQUEST``.
    """

    login_session_ttl: float = 120.0
    authenticated_session_ttl: float = 300.0
    max_sessions: int = 10_000
    unknown_user_guess_limit: int = DEFAULT_GUESS_LIMIT
    unknown_user_ksf_params: KsfParams = DEFAULT_KSF_PARAMS
    unsafe_allow_identity_ksf: bool = False

    def __post_init__(self) -> None:
        if not (self.login_session_ttl > 0 and self.authenticated_session_ttl > 0):
            raise InvalidParameter("session lifetimes must be positive")
        if self.max_sessions < 1:
            raise InvalidParameter("max_sessions must be at least 1")
        if not MIN_GUESS_LIMIT <= self.unknown_user_guess_limit <= MAX_GUESS_LIMIT:
            raise InvalidParameter("unknown_user_guess_limit must be in 1..255")


def credential_identifier(user_id: bytes, credential_nonce: bytes) -> bytes:
    """The OPAQUE ``credential_identifier`` (RFC 9807 §4) of a record: a domain label,
    the length-prefixed user id and the node-issued nonce (so two registrations of one
    user id never share an OPRF key)."""
    return _CREDENTIAL_ID_PREFIX + bytes([len(user_id)]) + user_id + credential_nonce


@dataclass(slots=True, eq=False)
class _Session:
    """One login session: pending (``server_state`` set) or authenticated
    (``session_key`` set). ``record_version`` is ``None`` for an unknown user."""

    session_id: bytes = field(repr=False)
    user_id: bytes
    record_version: int | None
    expires_at: float
    server_state: ServerLoginState | None = field(default=None, repr=False)
    session_key: bytes | None = field(default=None, repr=False)


class _InternalError(Exception):
    """The consensus layer answered something this node cannot have produced."""


class _FleetDecommissioned(Exception):
    """The state machine refused a command because the fleet is decommissioned."""


#: Requests a decommissioned fleet still answers (the rest: ``DECOMMISSIONED``).
_STILL_ANSWERED: Final = (StatusRequest, RejoinRequest, DecommissionRequest)


class VaultService:
    """The node's request handler. Thread-safe: many ``handle`` calls may run at once
    (each blocks in ``Consensus.submit``); session bookkeeping takes one lock.

    ``upload_key`` is the fleet's ``enc`` private key
    (:meth:`hsmvault.fleet.fleet_keys.FleetSecretKeys.enc_private`), which opens the
    sealed uploads of Register and ChangeSecret; ``fleet_id`` and ``signing_key`` (the
    fleet's ``sig`` key, :meth:`~hsmvault.fleet.fleet_keys.FleetSecretKeys.sig_private`)
    sign the start responses. ``clock`` (monotonic seconds) and ``rng`` are injectable
    for tests. ``compact`` (optional) asks the consensus engine to write a snapshot and
    compact its log; it is called once, when this node first sees the fleet
    decommissioned (ADR 0013), and must not block.
    """

    __slots__ = (
        "_clock",
        "_compact",
        "_compacted",
        "_config",
        "_consensus",
        "_fake_ksf",
        "_fleet_id",
        "_index_key",
        "_lock",
        "_rejoin",
        "_reserved",
        "_rng",
        "_server",
        "_sessions",
        "_signing_key",
        "_upload_key",
    )

    def __init__(
        self,
        server: OpaqueServer,
        consensus: Consensus,
        *,
        upload_key: X25519PrivateKey,
        fleet_id: bytes,
        signing_key: Ed25519PrivateKey,
        config: VaultServiceConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: RandomBytes | None = None,
        rejoin: RejoinHandler | None = None,
        compact: Callable[[], None] | None = None,
    ) -> None:
        self._server = server
        self._compact = compact
        self._compacted = False
        self._rejoin = rejoin
        self._consensus = consensus
        if not isinstance(upload_key, X25519PrivateKey):
            raise InvalidParameter("upload_key must be an X25519 private key")
        self._upload_key = upload_key
        if not isinstance(fleet_id, bytes) or len(fleet_id) != FLEET_ID_LEN:
            raise InvalidParameter("fleet_id must be 32 bytes")
        if not isinstance(signing_key, Ed25519PrivateKey):
            raise InvalidParameter("signing_key must be an Ed25519 private key")
        self._fleet_id = fleet_id
        self._signing_key = signing_key
        self._config = config if config is not None else VaultServiceConfig()
        self._clock = clock
        self._rng: RandomBytes = rng if rng is not None else secrets.token_bytes
        self._fake_ksf = self._config.unknown_user_ksf_params.to_bytes()
        self._index_key = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._sessions: dict[bytes, _Session] = {}
        self._reserved = 0

    # ----------------------------------------------------------------- the door

    def handle(self, request_bytes: bytes) -> bytes:
        """Answer one request. Never raises; see the module docstring."""
        request: Request | None = None
        try:
            request = decode_request(request_bytes)
            refusal = self._decommissioned_refusal(request)
            if refusal is not None:
                response = refusal
            else:
                response = self._dispatch(request, bytes(request_bytes))
        except (DecodeError, InvalidParameter):
            response = refusal_for(request, Outcome.BAD_REQUEST)
        except Unavailable:
            response = refusal_for(request, Outcome.UNAVAILABLE)
        except _FleetDecommissioned:
            self._on_decommissioned()
            response = refusal_for(request, Outcome.DECOMMISSIONED)
        except Exception as exc:  # the door never raises; no message text (may be secret)
            _log.error(  # no traceback: it could show secret locals
                "internal error in %s: %s", type(request).__name__, type(exc).__name__
            )
            response = refusal_for(request, Outcome.UNAVAILABLE)
        _log.debug("%s -> %s", type(request).__name__, response.outcome.name)
        return response.to_bytes()

    def _dispatch(self, request: Request, raw: bytes) -> Response:  # noqa: PLR0911
        """One arm per request type; ``raw`` is the exact bytes received (signed over)."""
        match request:
            case RegistrationStartRequest():
                return self._registration_start(request, raw)
            case RegisterRequest():
                return self._register(request)
            case LoginStartRequest():
                return self._login_start(request, raw)
            case LoginFinishRequest():
                return self._login_finish(request)
            case AttemptsRemainingRequest():
                return self._attempts_remaining(request)
            case ChangeSecretRequest():
                return self._change_secret(request)
            case DeleteRequest():
                return self._delete(request)
            case StatusRequest():
                return self._status()
            case RejoinRequest():
                return self._handle_rejoin(request)
            case InstallBundleRequest():
                return self._install_bundle(request)
            case DecommissionRequest():
                return self._decommission(request)
        raise AssertionError("unreachable")  # pragma: no cover

    def _handle_rejoin(self, request: RejoinRequest) -> Response:
        if self._rejoin is None:
            return RejoinResponse.refused(Outcome.BAD_REQUEST)
        outcome = self._rejoin(request)
        if outcome is Outcome.OK:
            return RejoinResponse(Outcome.OK)
        return RejoinResponse.refused(outcome)

    # ----------------------------------------------------------------- helpers

    def _submit(self, command: Command) -> CommandResult:
        """Commit ``command``; :class:`Unavailable` propagates; a refusal because the
        fleet is decommissioned raises :class:`_FleetDecommissioned` (answered
        ``DECOMMISSIONED`` by :meth:`handle`)."""
        raw = self._consensus.submit(encode_command(command))
        try:
            result = decode_result(raw)
        except DecodeError:
            raise _InternalError("undecodable command result") from None
        if result == Refused(Refusal.MALFORMED_COMMAND):
            raise _InternalError("state machine refused our own command")
        if result == Refused(Refusal.DECOMMISSIONED):
            raise _FleetDecommissioned
        return result

    def _decommissioned_refusal(self, request: Request) -> Response | None:
        """``DECOMMISSIONED`` for a request a decommissioned fleet no longer answers (see
        the module docstring), else ``None``."""
        if not self._consensus.state().decommissioned:
            return None
        self._on_decommissioned()
        if isinstance(request, _STILL_ANSWERED):
            return None
        return refusal_for(request, Outcome.DECOMMISSIONED)

    def _on_decommissioned(self) -> None:
        """Drop every session held here; the first time, ask for a snapshot and log
        compaction (see the module docstring). Never raises."""
        with self._lock:
            self._sessions.clear()
            first = not self._compacted
            self._compacted = True
        if first and self._compact is not None:
            try:
                self._compact()
            except Exception as exc:  # compaction is best effort; the state is already erased
                _log.error("log compaction after decommissioning failed: %s", type(exc).__name__)
            else:
                _log.warning("fleet decommissioned: records erased; snapshot and compaction asked")

    def _open_upload(
        self, sealed_upload: bytes, user_id: bytes, credential_nonce: bytes
    ) -> RegistrationUpload:
        """Open a sealed upload made for ``user_id`` and ``credential_nonce`` and parse
        (so validate) it, its record and its KSF parameters. Raises
        :class:`DecodeError` (answered ``BAD_REQUEST``) if any of that fails."""
        try:
            plaintext = open_from_client(
                self._upload_key,
                sealed_upload,
                purpose=PURPOSE_REGISTRATION_UPLOAD,
                context=upload_context(user_id, credential_nonce),
            )
        except VerificationError:
            raise DecodeError("the sealed upload did not open") from None
        upload = RegistrationUpload.from_bytes(plaintext)
        RegistrationRecord.from_bytes(upload.registration_record)
        params = KsfParams.from_bytes(upload.ksf_params)
        unsafe = params.algorithm is KsfAlgorithm.UNSAFE_IDENTITY
        if unsafe and not self._config.unsafe_allow_identity_ksf:
            raise DecodeError("the identity KSF is refused for real records")
        return upload

    def _session_proof(self, raw: bytes) -> tuple[bytes, bytes]:
        """The committed bundle (empty if none) and the fleet signature over
        ``fleet_session_message(fleet_id, raw, bundle)``."""
        installed = self._consensus.state().bundle()
        bundle = b"" if installed is None else installed.bundle
        message = fleet_session_message(self._fleet_id, raw, bundle)
        return bundle, self._signing_key.sign(message)

    def _index(self, session_id: bytes) -> bytes:
        return hashlib.blake2b(session_id, key=self._index_key, digest_size=32).digest()

    def _purge_expired(self, now: float) -> None:
        """Drop expired sessions (caller holds the lock)."""
        for key in [k for k, s in self._sessions.items() if s.expires_at <= now]:
            del self._sessions[key]

    def _reserve_slot(self) -> bool:
        with self._lock:
            self._purge_expired(self._clock())
            if len(self._sessions) + self._reserved >= self._config.max_sessions:
                return False
            self._reserved += 1
            return True

    def _release_slot(self) -> None:
        with self._lock:
            self._reserved -= 1

    def _lookup(self, session_id: bytes, *, authenticated: bool, take: bool) -> _Session | None:
        """The live session with this id in the wanted phase, or ``None``; ``take``
        removes it (single use). Comparison is constant-time."""
        key = self._index(session_id)
        with self._lock:
            session = self._sessions.get(key)
            if session is None or not hmac.compare_digest(session.session_id, session_id):
                return None
            if session.expires_at <= self._clock():
                del self._sessions[key]
                return None
            if (session.session_key is not None) is not authenticated:
                return None
            if take:
                del self._sessions[key]
            return session

    def _store(self, session: _Session) -> None:
        with self._lock:
            self._sessions[self._index(session.session_id)] = session

    # ----------------------------------------------------------------- handlers

    def _registration_start(self, request: RegistrationStartRequest, raw: bytes) -> Response:
        registration_request = RegistrationRequest.from_bytes(request.registration_request)
        nonce = self._rng(CREDENTIAL_NONCE_LEN)
        response = self._server.create_registration_response(
            registration_request, credential_identifier(request.user_id, nonce)
        )
        bundle, signature = self._session_proof(raw)
        return RegistrationStartResponse(
            Outcome.OK, nonce, response.to_bytes(), self._fleet_id, bundle, signature
        )

    def _register(self, request: RegisterRequest) -> Response:
        upload = self._open_upload(  # 1.-2.
            request.sealed_upload, request.user_id, request.credential_nonce
        )
        command = Register(
            request.user_id,
            request.credential_nonce,
            upload.registration_record,
            upload.ksf_params,
            upload.wrapped_key,
            request.guess_limit,
            request.replace,
        )
        match self._submit(command):  # 3.-4.
            case Applied():
                return RegisterResponse(Outcome.OK)
            case Refused(Refusal.ALREADY_REGISTERED):
                return RegisterResponse(Outcome.ALREADY_REGISTERED)
            case Refused(Refusal.LOCKED_OUT):
                return RegisterResponse(Outcome.LOCKED_OUT)
        raise _InternalError("unexpected result for Register")

    def _login_start(self, request: LoginStartRequest, raw: bytes) -> Response:
        ke1 = KE1.from_bytes(request.ke1)  # 1. parse before anything is counted
        if not self._reserve_slot():  # 2.
            return LoginStartResponse.refused(Outcome.UNAVAILABLE)
        try:
            result = self._submit(BeginAttempt(request.user_id))  # 3. committed first
            version: int | None
            record: RegistrationRecord | None
            match result:
                case AttemptGranted():
                    record = RegistrationRecord.from_bytes(result.registration_record)
                    nonce, version = result.credential_nonce, result.record_version
                    ksf_params, remaining = result.ksf_params, result.remaining
                case Refused(Refusal.UNKNOWN_USER):
                    # Same work as the real arm (parse a record), then use the fake one.
                    RegistrationRecord.from_bytes(self._server.fake_record.to_bytes())
                    record, nonce, version = None, _UNKNOWN_USER_NONCE, None
                    ksf_params = self._fake_ksf
                    remaining = self._config.unknown_user_guess_limit - 1
                case Refused(Refusal.LOCKED_OUT):
                    return LoginStartResponse.refused(Outcome.LOCKED_OUT)
                case _:
                    raise _InternalError("unexpected result for BeginAttempt")
            ke2, server_state = self._server.start_login(  # 4.
                ke1, credential_identifier(request.user_id, nonce), record, rng=self._rng
            )
            session_id = self._rng(SESSION_ID_LEN)
            self._store(  # 5.
                _Session(
                    session_id,
                    request.user_id,
                    version,
                    self._clock() + self._config.login_session_ttl,
                    server_state=server_state,
                )
            )
        finally:
            self._release_slot()
        bundle, signature = self._session_proof(raw)
        return LoginStartResponse(
            Outcome.OK,
            session_id,
            ke2.to_bytes(),
            ksf_params,
            remaining,
            self._fleet_id,
            bundle,
            signature,
        )

    def _login_finish(self, request: LoginFinishRequest) -> Response:
        ke3 = KE3.from_bytes(request.ke3)  # 1.
        session = self._lookup(request.session_id, authenticated=False, take=True)  # 2.
        if session is None or session.server_state is None:
            return LoginFinishResponse.refused(Outcome.NO_SESSION)
        try:
            session_key = self._server.finish_login(session.server_state, ke3)  # 3.
        except InvalidLogin:  # 4a. the increment stays
            if session.record_version is None:
                self._submit(NoOp())
            else:
                self._submit(RecordFailure(session.user_id, session.record_version))
            return LoginFinishResponse.refused(Outcome.INVALID_LOGIN)
        if session.record_version is None:  # finish_login refuses fake states
            raise _InternalError("a fake login state finished")
        result = self._submit(RecordSuccess(session.user_id, session.record_version))  # 4b.
        if not isinstance(result, SuccessRecorded):
            return LoginFinishResponse.refused(Outcome.INVALID_LOGIN)  # record replaced/gone
        sealed = seal_to_session(
            session_key, result.wrapped_key, label=LABEL_WRAPPED_KEY, rng=self._rng
        )
        session.server_state = None
        session.session_key = session_key
        session.expires_at = self._clock() + self._config.authenticated_session_ttl
        self._store(session)
        return LoginFinishResponse(Outcome.OK, sealed)

    def _consume_authenticated(
        self, session: _Session, message: bytes, authenticator: bytes, label: bytes
    ) -> Outcome | None:
        """Steps 3-4 of change secret / delete: verify the authenticator, then consume
        ``session``. ``None`` once consumed, else why not (the session stays)."""
        if session.session_key is None:  # pragma: no cover - looked up as authenticated
            return Outcome.NO_SESSION
        try:
            verify_session_authenticator(session.session_key, message, authenticator, label=label)
        except VerificationError:
            return Outcome.INVALID_LOGIN
        if self._lookup(session.session_id, authenticated=True, take=True) is not session:
            return Outcome.NO_SESSION  # a concurrent request used it first
        return None

    def _change_secret(self, request: ChangeSecretRequest) -> Response:
        session = self._lookup(request.session_id, authenticated=True, take=False)  # 1.
        if session is None:
            return ChangeSecretResponse(Outcome.NO_SESSION)
        upload = self._open_upload(  # 2. BAD_REQUEST leaves the session as it is
            request.sealed_upload, session.user_id, request.credential_nonce
        )
        refusal = self._consume_authenticated(  # 3.-4.
            session, request.authenticated_bytes(), request.authenticator, LABEL_CHANGE_SECRET
        )
        if refusal is not None:
            return ChangeSecretResponse(refusal)
        if session.record_version is None:  # pragma: no cover - only real logins succeed
            raise _InternalError("authenticated session without a record")
        command = Replace(
            session.user_id,
            session.record_version,
            request.credential_nonce,
            upload.registration_record,
            upload.ksf_params,
            upload.wrapped_key,
        )
        if isinstance(self._submit(command), Applied):  # 5.
            return ChangeSecretResponse(Outcome.OK)
        return ChangeSecretResponse(Outcome.NO_SESSION)

    def _delete(self, request: DeleteRequest) -> Response:
        session = self._lookup(request.session_id, authenticated=True, take=False)  # 1.
        if session is None:
            return DeleteResponse(Outcome.NO_SESSION)
        refusal = self._consume_authenticated(  # 3.-4.
            session, request.authenticated_bytes(), request.authenticator, LABEL_DELETE
        )
        if refusal is not None:
            return DeleteResponse(refusal)
        if session.record_version is None:  # pragma: no cover - only real logins succeed
            raise _InternalError("authenticated session without a record")
        if isinstance(self._submit(Delete(session.user_id, session.record_version)), Applied):
            return DeleteResponse(Outcome.OK)
        return DeleteResponse(Outcome.NO_SESSION)

    def _install_bundle(self, request: InstallBundleRequest) -> Response:
        for part in bundle_parts(request.epoch, request.bundle):
            match self._submit(part):
                case BundleInstalled(epoch):
                    return InstallBundleResponse(Outcome.OK, epoch)
                case BundleStaged(received) if received == part.offset + len(part.data):
                    continue
                case Refused(Refusal.STALE_EPOCH):
                    return InstallBundleResponse.refused(Outcome.STALE_EPOCH)
                case Refused(Refusal.EPOCH_CONFLICT):
                    return InstallBundleResponse.refused(Outcome.EPOCH_CONFLICT)
                case Refused(Refusal.BUNDLE_SEQUENCE) | BundleStaged():
                    # another install interleaved with ours: retrying restarts at part 0
                    return InstallBundleResponse.refused(Outcome.UNAVAILABLE)
                case _:
                    raise _InternalError("unexpected result for BundlePart")
        raise _InternalError("the last bundle part did not install the bundle")

    def _decommission(self, request: DecommissionRequest) -> Response:
        if not hmac.compare_digest(request.fleet_id, self._fleet_id):  # 1.
            return DecommissionResponse.refused(Outcome.BAD_REQUEST)
        result = self._submit(Decommission())  # 2.
        if not isinstance(result, Decommissioned):
            raise _InternalError("unexpected result for Decommission")
        self._on_decommissioned()  # 3.-4.
        return DecommissionResponse(Outcome.OK, result.erased)

    def _attempts_remaining(self, request: AttemptsRemainingRequest) -> Response:
        state = self._consensus.state()
        record = state.record(request.user_id)
        if record is not None:
            return AttemptsRemainingResponse(Outcome.OK, record.attempts_remaining)
        if state.is_locked_out(request.user_id):
            return AttemptsRemainingResponse(Outcome.LOCKED_OUT)
        return AttemptsRemainingResponse(Outcome.OK, self._config.unknown_user_guess_limit)

    def _status(self) -> Response:
        state = self._consensus.state()
        with self._lock:
            self._purge_expired(self._clock())
            open_sessions = len(self._sessions)
        return StatusResponse(
            Outcome.OK,
            state.record_count,
            state.tombstone_count,
            open_sessions,
            state.decommissioned,
        )

    # ----------------------------------------------------------------- hygiene

    @property
    def open_sessions(self) -> int:
        """Sessions held in memory (pending and authenticated, expired or not)."""
        with self._lock:
            return len(self._sessions)

    def __repr__(self) -> str:
        return f"VaultService(server={self._server!r}, <sessions redacted>)"

    def __reduce__(self) -> NoReturn:
        raise TypeError("VaultService holds secrets and is not picklable")
