"""The device's side of the vault protocol (ADR 0007), over any byte transport.

Every function takes ``send``, a callable that carries one encoded
:mod:`hsmvault.wire.hsm_api` request to a fleet node and returns the node's encoded
response — ``POST /v1/vault`` through the gateway in production
(:class:`hsmvault.client.http.GatewayHttp`), ``VaultService.handle`` in tests. Nothing
here does I/O of its own, so the whole protocol is testable in-process.

**Which fleet (ADR 0010).** Every flow that opens a session takes a
:class:`~hsmvault.client.fleet_trust.FleetTrust` (pinned keys:
:class:`~hsmvault.client.fleet_trust.PinnedFleetTrust`; validation bundles:
``client.bundle_verifier.BundleFleetTrust``). The first response of each session
(``RegistrationStart``, ``LoginStart``) carries the fleet id, the fleet's validation
bundle and the fleet's signature over the exact request bytes and that bundle; *before*
anything else of that response is used, ``trust.session_keys(...)`` must return the
session's :class:`FleetPublicKeys` — else its error (a
:class:`~hsmvault.transparency.errors.BundleError`) propagates and nothing further is
sent. Those keys are what KE2's/the registration response's AKE key is compared with and
what uploads are sealed to. Refusals (a non-OK outcome) carry no payload and raise their
own errors without a trust check; they reveal nothing and nothing is sent after them.

What each flow does (numbered as the code does it):

:func:`enroll` — 1. OPAQUE registration request → ``RegistrationStart``; the node
answers with a fresh credential nonce; the trust check gives the session's fleet keys.
2. Finish OPAQUE registration with the enrolment KSF (checked against the
:class:`KsfPolicy`) and check that the node's AKE key is the trusted fleet's.
3. Wrap BK under the OPAQUE export key (``crypto.key_wrap``, purpose
``opaque-export-key``, context = user id). 4. Seal record + KSF parameters + wrapped
key to the trusted fleet's ``enc`` key under ``upload_context(user id, nonce)``.
5. ``Register``.

:func:`recover` — 1. ``LoginStart`` with KE1; the node counts the guess *before* it
answers with KE2, the KSF parameters and the attempts left; the trust check (a failure
there sends nothing more, not even the closing KE3). 2. Refuse parameters outside
the policy. 3. Finish OPAQUE locally; a wrong secret fails here (the guess is already
spent): the client closes the session with a dummy KE3 — so a record at its limit is
erased at once and the session slot freed — and raises :class:`InvalidLogin` with the
attempts left (:class:`LockedOut` if none are). 4. ``LoginFinish`` with KE3; the node
seals the wrapped key to the session key. 5. Open the box, unwrap BK.

:func:`recover_session` — :func:`recover`, keeping the authenticated session open for
one follow-up: :func:`delete_recovered` deletes the record the login proved (how the SDK
removes a user's escrow from a retiring fleet once it has re-enrolled them at an active
one; ADR 0013). :func:`enroll` with ``expect_fleet`` refuses
(:class:`FleetKeyMismatch`, before ``Register``) to register at any other fleet.

:func:`change_secret` / :func:`delete_escrow` — a login as above, then a
``ChangeSecret`` (a fresh registration for the new secret, sealed as in :func:`enroll`)
or ``Delete``, each carrying an HMAC under the session key: the session id alone crossed
the untrusted host. The change-secret registration must be answered by the fleet the
login was (its upload is opened by the login's node).

Errors: outcomes map to :class:`~hsmvault.client.errors.InvalidLogin`,
:class:`~hsmvault.errors.LockedOut`, :class:`~hsmvault.client.errors.Unavailable`
(also for a lost session: start again), :class:`~hsmvault.client.errors.AlreadyEnrolled`,
:class:`~hsmvault.client.errors.FleetDecommissioned` and
:class:`~hsmvault.client.errors.RequestRefused`; a response that does not parse or
is of the wrong type raises :class:`~hsmvault.errors.DecodeError`. Nothing retries:
a repeated ``LoginStart`` costs a guess, so retrying is the caller's decision.
"""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, NoReturn, TypeVar

from hsmvault import errors as _errors
from hsmvault.client.errors import (
    AlreadyEnrolled,
    FleetDecommissioned,
    InvalidLogin,
    KsfParametersRefused,
    RequestRefused,
    Unavailable,
)
from hsmvault.client.fleet_trust import FleetTrust, PinnedFleetTrust
from hsmvault.client.recovery_codes import VaultSecret
from hsmvault.crypto.backup_stream import BackupKey
from hsmvault.crypto.fleet_seal import PURPOSE_REGISTRATION_UPLOAD, seal_to_fleet
from hsmvault.crypto.key_wrap import PURPOSE_OPAQUE_EXPORT_KEY, unwrap_backup_key, wrap_backup_key
from hsmvault.crypto.ksf import (
    DEFAULT_KSF_PARAMS,
    MAX_ITERATIONS,
    MAX_MEMORY_KIB,
    OPAQUE_KE_ARGON2_DEFAULT_PARAMS,
    Ksf,
    KsfAlgorithm,
    KsfParams,
    ksf_from_params,
)
from hsmvault.crypto.opaque import (
    DEFAULT_CONTEXT,
    KE2,
    OpaqueClient,
    OpaqueConfig,
    RegistrationResponse,
)
from hsmvault.crypto.session_box import (
    LABEL_CHANGE_SECRET,
    LABEL_DELETE,
    LABEL_WRAPPED_KEY,
    open_from_session,
    session_authenticator,
)
from hsmvault.errors import (
    DecodeError,
    InvalidParameter,
    LockedOut,
    VaultError,
    VerificationError,
)
from hsmvault.fleet.fleet_keys import FleetPublicKeys
from hsmvault.transparency.errors import FleetKeyMismatch
from hsmvault.wire.hsm_api import (
    AUTHENTICATOR_LEN,
    DEFAULT_GUESS_LIMIT,
    MAX_GUESS_LIMIT,
    MAX_USER_ID_LEN,
    MIN_GUESS_LIMIT,
    AttemptsRemainingRequest,
    AttemptsRemainingResponse,
    ChangeSecretRequest,
    ChangeSecretResponse,
    DeleteRequest,
    DeleteResponse,
    ErrorResponse,
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
    Request,
    Response,
    decode_response,
    upload_context,
)

__all__ = [
    "DEFAULT_KSF_FLOOR",
    "DEFAULT_PROTOCOL_CONFIG",
    "KsfPolicy",
    "Recovery",
    "Transport",
    "VaultProtocolConfig",
    "attempts_remaining",
    "change_secret",
    "delete_escrow",
    "delete_recovered",
    "enroll",
    "recover",
    "recover_session",
    "trust_for",
    "verify_start",
]

Transport = Callable[[bytes], bytes]
"""Carries one encoded request to a node and returns its encoded response."""

#: The weakest Argon2id the client accepts by default: m = 19 MiB, t = 2 (OWASP's
#: minimum recommendation, and opaque-ke's default). Parallelism is not compared: more
#: lanes over the same memory do not make an attacker's work cheaper.
DEFAULT_KSF_FLOOR: Final = OPAQUE_KE_ARGON2_DEFAULT_PARAMS
#: Default ceilings: 1 GiB and 64 passes bound what a hostile relay can make a device
#: spend on one login.
_DEFAULT_MAX_MEMORY_KIB: Final = 1024 * 1024
_DEFAULT_MAX_ITERATIONS: Final = 64


@dataclass(frozen=True, slots=True)
class KsfPolicy:
    """Which key-stretching parameters the client runs (at enrolment and at login).

    The parameters a record was registered with come back, unauthenticated, in
    ``LoginStartResponse``: a hostile relay could lower them (the login would then fail,
    but the client would have computed a cheap stretch) or raise them to exhaust the
    device. So the client checks them:

    * ``floor`` — refuse Argon2id with less memory or fewer passes
      (default :data:`DEFAULT_KSF_FLOOR`);
    * ``max_memory_kib`` / ``max_iterations`` — refuse more (defaults 1 GiB, 64);
    * ``unsafe_allow_identity`` — accept the identity KSF (RFC 9807 test vectors only;
      a record made with it falls to an offline attack at hash speed). Default ``False``.
    """

    floor: KsfParams = DEFAULT_KSF_FLOOR
    max_memory_kib: int = _DEFAULT_MAX_MEMORY_KIB
    max_iterations: int = _DEFAULT_MAX_ITERATIONS
    unsafe_allow_identity: bool = False

    def __post_init__(self) -> None:
        if self.floor.algorithm is not KsfAlgorithm.ARGON2ID:
            raise InvalidParameter("the KSF floor must be Argon2id parameters")
        if not self.floor.memory_kib <= self.max_memory_kib <= MAX_MEMORY_KIB:
            raise InvalidParameter("max_memory_kib must lie between the floor and the KSF limit")
        if not self.floor.iterations <= self.max_iterations <= MAX_ITERATIONS:
            raise InvalidParameter("max_iterations must lie between the floor and the KSF limit")

    def ksf_for(self, params: KsfParams) -> Ksf:
        """The KSF to run for ``params``; raises :class:`KsfParametersRefused` if they
        are outside this policy."""
        if params.algorithm is KsfAlgorithm.UNSAFE_IDENTITY:
            if not self.unsafe_allow_identity:
                raise KsfParametersRefused("the identity KSF is refused (test vectors only)")
            return ksf_from_params(params, allow_unsafe=True)
        if params.memory_kib < self.floor.memory_kib or params.iterations < self.floor.iterations:
            raise KsfParametersRefused(
                "Argon2id parameters are below the client's floor "
                f"(m={params.memory_kib} KiB, t={params.iterations})"
            )
        if params.memory_kib > self.max_memory_kib or params.iterations > self.max_iterations:
            raise KsfParametersRefused(
                "Argon2id parameters exceed the client's ceiling "
                f"(m={params.memory_kib} KiB, t={params.iterations})"
            )
        return ksf_from_params(params)


@dataclass(frozen=True, slots=True)
class VaultProtocolConfig:
    """What the client side of the protocol needs besides the transport.

    * ``enrolment_ksf`` — parameters new registrations (enrol, change secret) stretch
      with; default :data:`~hsmvault.crypto.ksf.DEFAULT_KSF_PARAMS` (Argon2id, 64 MiB,
      t = 3, p = 4). Must pass ``ksf_policy``.
    * ``ksf_policy`` — see :class:`KsfPolicy`.
    * ``opaque_context`` — the OPAQUE context string (must match the fleet's).
    """

    enrolment_ksf: KsfParams = DEFAULT_KSF_PARAMS
    ksf_policy: KsfPolicy = field(default_factory=KsfPolicy)
    opaque_context: bytes = DEFAULT_CONTEXT

    def __post_init__(self) -> None:
        self.ksf_policy.ksf_for(self.enrolment_ksf)  # raises if the two disagree


DEFAULT_PROTOCOL_CONFIG: Final = VaultProtocolConfig()

SecretInput = VaultSecret | bytes
_R = TypeVar("_R", bound=Response)
_S = TypeVar("_S", RegistrationStartResponse, LoginStartResponse)
TrustInput = FleetTrust | FleetPublicKeys
"""A :class:`FleetTrust`, or pinned :class:`FleetPublicKeys` (wrapped in
:class:`PinnedFleetTrust`)."""


# ------------------------------------------------------------------ plumbing


def _secret_bytes(secret: SecretInput) -> bytes:
    raw = secret if isinstance(secret, bytes) else secret.secret_bytes()
    if not isinstance(raw, bytes) or not raw:
        raise InvalidParameter("the secret must be non-empty bytes")
    return raw


def _check_user_id(user_id: bytes) -> None:
    if not isinstance(user_id, bytes) or not 1 <= len(user_id) <= MAX_USER_ID_LEN:
        raise InvalidParameter(f"user id must be 1..{MAX_USER_ID_LEN} bytes")


def _refuse(outcome: Outcome, *, attempts_left: int | None = None) -> NoReturn:
    """Raise the error an outcome other than OK stands for."""
    match outcome:
        case Outcome.INVALID_LOGIN:
            raise InvalidLogin(attempts_remaining=attempts_left)
        case Outcome.LOCKED_OUT:
            raise LockedOut("the guess limit was reached: the escrowed key is erased")
        case Outcome.UNAVAILABLE:
            raise Unavailable("the fleet cannot answer now")
        case Outcome.NO_SESSION:
            raise Unavailable("the login session expired or was lost: start again")
        case Outcome.ALREADY_REGISTERED:
            raise AlreadyEnrolled("this user id already has an escrowed key")
        case Outcome.BAD_REQUEST:
            raise RequestRefused("the fleet refused the request as malformed")
        case Outcome.DECOMMISSIONED:
            raise FleetDecommissioned("the fleet was decommissioned: its records are erased")
    raise DecodeError("unexpected outcome")  # pragma: no cover - OK is never refused


def trust_for(trust: TrustInput) -> FleetTrust:
    """``trust`` itself, or :class:`PinnedFleetTrust` of pinned :class:`FleetPublicKeys`."""
    if isinstance(trust, FleetPublicKeys):
        return PinnedFleetTrust(trust)
    if not callable(getattr(trust, "session_keys", None)):
        raise InvalidParameter("trust must be a FleetTrust or FleetPublicKeys")
    return trust


def _call(send: Transport, request: Request, expected: type[_R]) -> _R:
    """Send ``request``; return its response of type ``expected`` with outcome OK, or
    raise for any other outcome (see :func:`_refuse`)."""
    return _answer(send(request.to_bytes()), expected)


def _answer(raw: bytes, expected: type[_R]) -> _R:
    """Parse ``raw`` as ``expected`` with outcome OK, or raise (see :func:`_call`)."""
    response = decode_response(raw)
    if isinstance(response, ErrorResponse):
        _refuse(response.outcome)
    if not isinstance(response, expected):
        raise DecodeError(f"expected {expected.__name__}, got {type(response).__name__}")
    if response.outcome is not Outcome.OK:
        _refuse(response.outcome)
    return response


def verify_start(
    trust: TrustInput,
    request: bytes,
    response: RegistrationStartResponse | LoginStartResponse,
) -> FleetPublicKeys:
    """The trust check of a session's first response: the keys ``trust`` returns for
    the fleet that answered the exact ``request`` bytes with ``response`` (outcome OK).
    Raises the trust's :class:`~hsmvault.transparency.errors.BundleError` (and
    :class:`FleetKeyMismatch` if it returns keys of another fleet than the answer
    names); :class:`InvalidParameter` for a refusal (it has nothing to check)."""
    if response.outcome is not Outcome.OK:
        raise InvalidParameter("only an OK start response carries a fleet signature")
    keys = trust_for(trust).session_keys(
        response.fleet_id, request, response.bundle, response.fleet_signature
    )
    if not isinstance(keys, FleetPublicKeys) or keys.fleet_id != response.fleet_id:
        raise FleetKeyMismatch("the trusted keys are not those of the answering fleet")
    return keys


def _start(
    send: Transport, request: Request, expected: type[_S], trust: FleetTrust
) -> tuple[_S, FleetPublicKeys]:
    """Send the first request of a session and establish which fleet answered: the OK
    response and the keys ``trust`` returns for it. Nothing of the response but its type
    and outcome is looked at before the trust check passes; its errors propagate."""
    raw = request.to_bytes()
    response = _answer(send(raw), expected)
    return response, verify_start(trust, raw, response)


def _opaque(config: VaultProtocolConfig, ksf: Ksf) -> OpaqueClient:
    return OpaqueClient(OpaqueConfig(context=config.opaque_context, ksf=ksf))


@dataclass(frozen=True, slots=True)
class _Registration:
    """A prepared registration: the node's nonce, the sealed upload (no secrets) and
    the fleet it was sealed to."""

    credential_nonce: bytes
    sealed_upload: bytes
    fleet_id: bytes


def _prepare_registration(
    send: Transport,
    user_id: bytes,
    *,
    secret: bytes,
    backup_key: BackupKey,
    trust: FleetTrust,
    ksf_params: KsfParams,
    config: VaultProtocolConfig,
) -> _Registration:
    """Steps 1-4 of :func:`enroll` (shared with :func:`change_secret`)."""
    ksf = config.ksf_policy.ksf_for(ksf_params)
    opaque = _opaque(config, ksf)
    request, state = opaque.start_registration(secret)  # 1.
    start, fleet_keys = _start(
        send,
        RegistrationStartRequest(user_id, request.to_bytes()),
        RegistrationStartResponse,
        trust,
    )
    result = opaque.finish_registration(  # 2.
        state, RegistrationResponse.from_bytes(start.registration_response)
    )
    if result.server_public_key.encoded != fleet_keys.ake_public_key:
        raise VerificationError("the registration was answered with another fleet's AKE key")
    wrapped = wrap_backup_key(  # 3.
        result.export_key, backup_key, purpose=PURPOSE_OPAQUE_EXPORT_KEY, context=user_id
    )
    upload = RegistrationUpload(result.record.to_bytes(), ksf.params.to_bytes(), wrapped)
    sealed = seal_to_fleet(  # 4.
        fleet_keys.enc_public_key,
        upload.to_bytes(),
        purpose=PURPOSE_REGISTRATION_UPLOAD,
        context=upload_context(user_id, start.credential_nonce),
    )
    return _Registration(start.credential_nonce, sealed, fleet_keys.fleet_id)


@dataclass(eq=False, slots=True)
class _Session:
    """A completed login (secret fields: never printed)."""

    session_id: bytes = field(repr=False)
    session_key: bytes = field(repr=False)
    export_key: bytes = field(repr=False)
    wrapped_key: bytes = field(repr=False)
    attempts_remaining: int
    fleet_keys: FleetPublicKeys


def _abandon(send: Transport, session_id: bytes) -> None:
    """Close a login we cannot finish with a KE3 that fails: the node records the
    (already counted) failure, erases the record at its limit and frees the session."""
    with contextlib.suppress(VaultError):  # best effort: the guess is counted either way
        send(LoginFinishRequest(session_id, bytes(64)).to_bytes())


def _login(
    send: Transport,
    user_id: bytes,
    secret: bytes,
    config: VaultProtocolConfig,
    trust: FleetTrust,
) -> _Session:
    """Steps 1-4 of :func:`recover`: a completed login with the wrapped key opened."""
    _check_user_id(user_id)
    ke1, state = OpaqueClient().start_login(secret)
    start, fleet_keys = _start(  # 1. a failed trust check sends nothing more
        send, LoginStartRequest(user_id, ke1.to_bytes()), LoginStartResponse, trust
    )
    left = start.attempts_remaining
    try:
        ksf = config.ksf_policy.ksf_for(KsfParams.from_bytes(start.ksf_params))  # 2.
        result = _opaque(config, ksf).finish_login(state, KE2.from_bytes(start.ke2))  # 3.
    except _errors.InvalidLogin:  # a wrong secret fails here, on the device
        _abandon(send, start.session_id)
        if left == 0:
            raise LockedOut("wrong secret, no attempts left: the escrowed key is erased") from None
        raise InvalidLogin(attempts_remaining=left) from None
    except VaultError:
        _abandon(send, start.session_id)
        raise
    finish = decode_response(  # 4.
        send(LoginFinishRequest(start.session_id, result.ke3.to_bytes()).to_bytes())
    )
    if isinstance(finish, ErrorResponse):
        _refuse(finish.outcome, attempts_left=left)
    if not isinstance(finish, LoginFinishResponse):
        raise DecodeError(f"expected LoginFinishResponse, got {type(finish).__name__}")
    if finish.outcome is not Outcome.OK:
        _refuse(finish.outcome, attempts_left=left)
    wrapped = open_from_session(  # 5.
        result.session_key, finish.sealed_wrapped_key, label=LABEL_WRAPPED_KEY
    )
    return _Session(
        start.session_id, result.session_key, result.export_key, wrapped, left, fleet_keys
    )


def _unwrap(session: _Session, user_id: bytes) -> BackupKey:
    return unwrap_backup_key(
        session.export_key, session.wrapped_key, purpose=PURPOSE_OPAQUE_EXPORT_KEY, context=user_id
    )


# ------------------------------------------------------------------ the flows


def enroll(
    send: Transport,
    user_id: bytes,
    secret: SecretInput,
    backup_key: BackupKey,
    trust: TrustInput,
    *,
    guess_limit: int = DEFAULT_GUESS_LIMIT,
    ksf: KsfParams | None = None,
    replace: bool = False,
    expect_fleet: bytes | None = None,
    config: VaultProtocolConfig = DEFAULT_PROTOCOL_CONFIG,
) -> None:
    """Escrow ``backup_key`` with the fleet under ``secret`` (see the module docstring);
    ``trust`` decides which fleet keys the session may use. With ``expect_fleet`` (a
    fleet id), a registration answered by any other fleet raises
    :class:`FleetKeyMismatch` before anything is stored.

    ``ksf`` overrides ``config.enrolment_ksf`` (it must pass ``config.ksf_policy``).
    ``replace=True`` overwrites an existing record (or re-enrols a locked-out id; the
    gateway decides who may). Raises :class:`AlreadyEnrolled`, :class:`LockedOut` (a
    locked-out id without ``replace``), :class:`Unavailable`,
    :class:`KsfParametersRefused`, :class:`~hsmvault.errors.VerificationError` (the node
    answered with another fleet's key; a
    :class:`~hsmvault.transparency.errors.BundleError` from the trust check).
    """
    fleet_trust = trust_for(trust)
    _check_user_id(user_id)
    if not isinstance(backup_key, BackupKey):
        raise InvalidParameter("backup_key must be a BackupKey")
    if not isinstance(guess_limit, int) or not MIN_GUESS_LIMIT <= guess_limit <= MAX_GUESS_LIMIT:
        raise InvalidParameter(f"guess_limit must be in {MIN_GUESS_LIMIT}..{MAX_GUESS_LIMIT}")
    registration = _prepare_registration(
        send,
        user_id,
        secret=_secret_bytes(secret),
        backup_key=backup_key,
        trust=fleet_trust,
        ksf_params=ksf if ksf is not None else config.enrolment_ksf,
        config=config,
    )
    if expect_fleet is not None and not hmac.compare_digest(registration.fleet_id, expect_fleet):
        raise FleetKeyMismatch("the registration was answered by another fleet than expected")
    _call(  # 5.
        send,
        RegisterRequest(
            user_id,
            registration.credential_nonce,
            registration.sealed_upload,
            guess_limit,
            replace,
        ),
        RegisterResponse,
    )


def recover(
    send: Transport,
    user_id: bytes,
    secret: SecretInput,
    trust: TrustInput,
    *,
    config: VaultProtocolConfig = DEFAULT_PROTOCOL_CONFIG,
) -> BackupKey:
    """Log in with ``secret`` and return the escrowed backup key. Costs one guess if the
    secret is wrong (:class:`InvalidLogin` with ``attempts_remaining``); raises
    :class:`LockedOut` once the record is erased, :class:`Unavailable` when the fleet
    cannot answer (the guess may have been counted), :class:`KsfParametersRefused`, a
    :class:`~hsmvault.transparency.errors.BundleError` when ``trust`` refuses the
    answering fleet (the guess was counted; nothing more is sent)."""
    session = _login(send, user_id, _secret_bytes(secret), config, trust_for(trust))
    return _unwrap(session, user_id)


@dataclass(eq=False, slots=True)
class Recovery:
    """A completed recovery whose authenticated session is still open (for
    :func:`delete_recovered`): the ``backup_key``, the ``fleet_id`` of the fleet that
    answered, and the guesses the record had left at the start of the login. Holds
    session secrets: never printed, never pickled."""

    backup_key: BackupKey = field(repr=False)
    fleet_id: bytes
    attempts_remaining: int
    _session: _Session = field(repr=False)

    def __reduce__(self) -> NoReturn:
        raise TypeError("Recovery holds session secrets and is not picklable")


def recover_session(
    send: Transport,
    user_id: bytes,
    secret: SecretInput,
    trust: TrustInput,
    *,
    config: VaultProtocolConfig = DEFAULT_PROTOCOL_CONFIG,
) -> Recovery:
    """:func:`recover`, returning the :class:`Recovery` (key, answering fleet, open
    session) instead of the key alone. Same errors."""
    session = _login(send, user_id, _secret_bytes(secret), config, trust_for(trust))
    backup_key = _unwrap(session, user_id)
    return Recovery(backup_key, session.fleet_keys.fleet_id, session.attempts_remaining, session)


def delete_recovered(send: Transport, recovery: Recovery) -> None:
    """Delete, in every replica of the fleet that answered ``recovery``, the record that
    login proved — using its authenticated session (single use; the node keeps it for a
    few minutes after the login). Raises :class:`Unavailable` (also for an expired or
    already used session), :class:`FleetDecommissioned`, :class:`InvalidLogin`."""
    session = recovery._session
    unsigned = DeleteRequest(session.session_id, bytes(AUTHENTICATOR_LEN))
    tag = session_authenticator(
        session.session_key, unsigned.authenticated_bytes(), label=LABEL_DELETE
    )
    _call(send, DeleteRequest(session.session_id, tag), DeleteResponse)


def change_secret(
    send: Transport,
    user_id: bytes,
    old_secret: SecretInput,
    new_secret: SecretInput,
    trust: TrustInput,
    *,
    config: VaultProtocolConfig = DEFAULT_PROTOCOL_CONFIG,
) -> BackupKey:
    """Replace ``old_secret`` by ``new_secret`` (the same backup key stays escrowed,
    the record keeps its guess limit) and return that key. Needs the old secret: a wrong
    one costs a guess, as in :func:`recover`. The new registration uses
    ``config.enrolment_ksf``. Both sessions (the login and the new registration) must
    pass ``trust``, and be answered by the same fleet (else
    :class:`~hsmvault.transparency.errors.FleetKeyMismatch` before the change is sent)."""
    fleet_trust = trust_for(trust)
    new = _secret_bytes(new_secret)
    session = _login(send, user_id, _secret_bytes(old_secret), config, fleet_trust)
    backup_key = _unwrap(session, user_id)
    registration = _prepare_registration(
        send,
        user_id,
        secret=new,
        backup_key=backup_key,
        trust=fleet_trust,
        ksf_params=config.enrolment_ksf,
        config=config,
    )
    if registration.fleet_id != session.fleet_keys.fleet_id:
        raise FleetKeyMismatch("the new registration was answered by another fleet")
    unsigned = ChangeSecretRequest(
        session.session_id,
        registration.credential_nonce,
        registration.sealed_upload,
        bytes(AUTHENTICATOR_LEN),
    )
    tag = session_authenticator(
        session.session_key, unsigned.authenticated_bytes(), label=LABEL_CHANGE_SECRET
    )
    request = ChangeSecretRequest(
        session.session_id, registration.credential_nonce, registration.sealed_upload, tag
    )
    _call(send, request, ChangeSecretResponse)
    return backup_key


def delete_escrow(
    send: Transport,
    user_id: bytes,
    secret: SecretInput,
    trust: TrustInput,
    *,
    config: VaultProtocolConfig = DEFAULT_PROTOCOL_CONFIG,
) -> None:
    """Log in with ``secret``, then delete the record in every replica (immediate and
    irreversible). A wrong secret costs a guess, as in :func:`recover`; ``trust`` as
    there."""
    session = _login(send, user_id, _secret_bytes(secret), config, trust_for(trust))
    unsigned = DeleteRequest(session.session_id, bytes(AUTHENTICATOR_LEN))
    tag = session_authenticator(
        session.session_key, unsigned.authenticated_bytes(), label=LABEL_DELETE
    )
    _call(send, DeleteRequest(session.session_id, tag), DeleteResponse)


def attempts_remaining(send: Transport, user_id: bytes) -> int:
    """Guesses the record has left, as the answering node's committed state says
    (informational: it may lag on a follower). An unknown id reports the fleet's default
    limit. Raises :class:`LockedOut` for an erased record."""
    _check_user_id(user_id)
    response = _call(send, AttemptsRemainingRequest(user_id), AttemptsRemainingResponse)
    return response.attempts_remaining
