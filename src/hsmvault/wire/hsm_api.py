"""The HSM node's one door: every request a node accepts and the response paired with it.

A node exposes exactly one call, ``handle(request_bytes) -> response_bytes``
(:class:`hsmvault.hsm.vault_service.VaultService`). This module defines what may travel
through it: a closed, tagged union of request types, each paired with one response type
(:data:`RESPONSE_FOR`), and a closed :class:`Outcome` enum that every response carries.

Encoding (version :data:`API_VERSION`), all integers big-endian::

    request   = version u8 || tag u8 || fields
    response  = version u8 || tag u8 || outcome u8 || (fields, only if outcome == OK)

Fields are listed per class in declaration order; each is a ``u8``/``u32``/``u64`` with a range,
a boolean byte (0 or 1), fixed-length bytes, or bytes with a 1-, 2- or 4-byte length prefix
and declared bounds (:mod:`hsmvault.wire.encoding`). A response whose outcome is not
``OK`` carries no payload at all, and its payload attributes hold their empty defaults.

Parsing is strict: unknown version or tag, a field out of bounds, a short read, an
outcome/payload mismatch or trailing bytes raise :class:`~hsmvault.errors.DecodeError`
and nothing else. Constructors check the same rules (also raising ``DecodeError``), so
every instance is encodable and ``from_bytes(to_bytes(m)) == m``.

``wire`` imports no crypto: OPAQUE messages (KE1, KE2, KE3, records), KSF parameters and
sealed boxes are opaque length-bounded byte strings here; the node parses them with the
crypto types before using them. Fixed sizes that are ours (session id, credential nonce,
authenticator) are constants below.

**Sealed uploads.** What a registration stores — the OPAQUE ``RegistrationRecord`` (it
holds the masking key), the KSF parameters and the client's wrapped backup key — never
crosses the host in the clear. The client encodes it as a :class:`RegistrationUpload`
(version :data:`UPLOAD_VERSION`)::

    upload = version u8 || registration_record (u16-prefixed, 1..MAX_OPAQUE_MESSAGE_LEN)
             || ksf_params (u8-prefixed, 1..MAX_KSF_PARAMS_LEN)
             || wrapped_key (u16-prefixed, 1..MAX_WRAPPED_KEY_LEN)

and seals it to the fleet's ``enc`` key (``crypto.fleet_seal``, HPKE, purpose
``registration-upload``) under :func:`upload_context` of the user id and credential
nonce; ``RegisterRequest`` and ``ChangeSecretRequest`` carry only the seal
(``sealed_upload``). Only a node opens it, and a seal made for another user id or nonce
does not open.

**Fleet session signature (version 3, ADR 0010).** ``RegistrationStartResponse`` and
``LoginStartResponse`` end with ``fleet_id`` (32), ``bundle`` (u32-prefixed,
0..:data:`MAX_BUNDLE_LEN`; empty when the fleet has none installed) and
``fleet_signature`` (64): the fleet ``sig`` key's Ed25519 signature over
:func:`hsmvault.wire.fleet_session.fleet_session_message` of the fleet id, the *exact*
request bytes and the bundle. The client verifies it before it uses anything else of the
response. :class:`InstallBundleRequest` (operator, through the host) makes ``(epoch,
bundle)`` the fleet's current bundle through consensus; the node never parses the bundle.

**Decommissioning (version 4, ADR 0013).** :class:`DecommissionRequest` (operator,
through the host; the gateway refuses to relay it) names the fleet id and, committed
through consensus, erases every record and tombstone in every replica and makes the
fleet *decommissioned* for good: every user request is then answered
:attr:`Outcome.DECOMMISSIONED`, and :class:`StatusResponse` carries a ``decommissioned``
flag (the new field is why the version is 4).

``repr`` shows field lengths, never field bytes: no wire message ever prints a secret.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, ClassVar, Final, Self, TypeAlias, cast

from hsmvault.errors import DecodeError, InvalidParameter
from hsmvault.wire.encoding import Reader, Writer

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = [
    "API_VERSION",
    "AUTHENTICATOR_LEN",
    "CREDENTIAL_NONCE_LEN",
    "DEFAULT_GUESS_LIMIT",
    "FLEET_ID_LEN",
    "FLEET_SEAL_OVERHEAD",
    "FLEET_SIGNATURE_LEN",
    "MAX_BUNDLE_LEN",
    "MAX_EPOCH",
    "MAX_GUESS_LIMIT",
    "MAX_KSF_PARAMS_LEN",
    "MAX_OPAQUE_MESSAGE_LEN",
    "MAX_SEALED_KEY_LEN",
    "MAX_SEALED_UPLOAD_LEN",
    "MAX_UPLOAD_LEN",
    "MAX_USER_ID_LEN",
    "MAX_WRAPPED_KEY_LEN",
    "MIN_GUESS_LIMIT",
    "MIN_SEALED_UPLOAD_LEN",
    "MIN_UPLOAD_LEN",
    "REJOIN_TICKET_LABEL",
    "RESPONSE_FOR",
    "SESSION_ID_LEN",
    "SIGNATURE_LEN",
    "UPLOAD_VERSION",
    "AttemptsRemainingRequest",
    "AttemptsRemainingResponse",
    "ChangeSecretRequest",
    "ChangeSecretResponse",
    "DecommissionRequest",
    "DecommissionResponse",
    "DeleteRequest",
    "DeleteResponse",
    "ErrorResponse",
    "InstallBundleRequest",
    "InstallBundleResponse",
    "LoginFinishRequest",
    "LoginFinishResponse",
    "LoginStartRequest",
    "LoginStartResponse",
    "Outcome",
    "RegisterRequest",
    "RegisterResponse",
    "RegistrationStartRequest",
    "RegistrationStartResponse",
    "RegistrationUpload",
    "RejoinRequest",
    "RejoinResponse",
    "Request",
    "Response",
    "StatusRequest",
    "StatusResponse",
    "decode_request",
    "decode_response",
    "refusal_for",
    "rejoin_ticket_bytes",
    "upload_context",
]

#: Version byte that starts every request and response (2: uploads are sealed; 3: the
#: start responses carry the fleet id, bundle and fleet signature; ``InstallBundle``;
#: 4: ``Decommission``, the ``DECOMMISSIONED`` outcome and ``StatusResponse.decommissioned``).
API_VERSION: Final = 4
#: User ids are 1..255 opaque bytes (chosen by the host's routing layer).
MAX_USER_ID_LEN: Final = 255
#: Login session ids: 16 random bytes chosen by the node.
SESSION_ID_LEN: Final = 16
#: Per-registration nonce chosen by the node (see ``RegistrationStartResponse``).
CREDENTIAL_NONCE_LEN: Final = 32
#: Session authenticator on change-secret and delete requests (HMAC-SHA512 output).
AUTHENTICATOR_LEN: Final = 64
#: Bound on any OPAQUE message or record carried as bytes (the real ones are <= 320).
MAX_OPAQUE_MESSAGE_LEN: Final = 1024
#: Bound on encoded KSF parameters (the real encoding is 14 bytes).
MAX_KSF_PARAMS_LEN: Final = 64
#: Bound on the client's wrapped backup key (inside the sealed upload): 1 KiB.
MAX_WRAPPED_KEY_LEN: Final = 1024
#: Bound on the wrapped key re-sealed to a login session (session box overhead <= 64).
MAX_SEALED_KEY_LEN: Final = MAX_WRAPPED_KEY_LEN + 64
#: Version byte that starts a :class:`RegistrationUpload` (the plaintext of a seal).
UPLOAD_VERSION: Final = 1
#: Length of the shortest and the longest :class:`RegistrationUpload` encoding.
MIN_UPLOAD_LEN: Final = 1 + (2 + 1) + (1 + 1) + (2 + 1)
MAX_UPLOAD_LEN: Final = (
    1 + (2 + MAX_OPAQUE_MESSAGE_LEN) + (1 + MAX_KSF_PARAMS_LEN) + (2 + MAX_WRAPPED_KEY_LEN)
)
#: Bytes a fleet seal adds to its plaintext (version 1 + HPKE enc 32 + AES-GCM tag 16).
#: Must equal ``hsmvault.crypto.fleet_seal.FLEET_SEAL_OVERHEAD``: ``wire`` imports no
#: crypto, so the value is written here and a test asserts the two agree.
FLEET_SEAL_OVERHEAD: Final = 49
#: Bounds on ``sealed_upload``: a fleet seal of a :class:`RegistrationUpload`.
MIN_SEALED_UPLOAD_LEN: Final = MIN_UPLOAD_LEN + FLEET_SEAL_OVERHEAD
MAX_SEALED_UPLOAD_LEN: Final = MAX_UPLOAD_LEN + FLEET_SEAL_OVERHEAD
#: Identity-key signatures (Ed25519, or P-256 as ``r || s``) are 64 bytes.
SIGNATURE_LEN: Final = 64
#: Fleet ids and fleet node ids are 32 bytes.
FLEET_ID_LEN: Final = 32
_FLEET_ID_LEN: Final = FLEET_ID_LEN
#: The fleet ``sig`` key's Ed25519 signature on a session's first response (ADR 0010).
FLEET_SIGNATURE_LEN: Final = 64
#: Largest validation bundle a fleet holds and returns: 64 KiB.
MAX_BUNDLE_LEN: Final = 64 * 1024
#: Bundle epochs are u64.
MAX_EPOCH: Final = 2**64 - 1
_NODE_ID_LEN: Final = 32
#: Domain label that starts the signed bytes of a rejoin ticket (:class:`RejoinRequest`).
REJOIN_TICKET_LABEL: Final = b"hsmvault/fleet/rejoin-ticket/v1\x00"
#: Guess limits a record may have, and the default.
MIN_GUESS_LIMIT: Final = 1
MAX_GUESS_LIMIT: Final = 255
DEFAULT_GUESS_LIMIT: Final = 10


class Outcome(enum.IntEnum):
    """The closed set of results at the boundary. Every response carries one."""

    OK = 0
    #: Wrong secret, forged KE3 or bad session authenticator (one outcome for all).
    INVALID_LOGIN = 1
    #: The record's guess limit was reached; its key material is gone for good.
    LOCKED_OUT = 2
    #: No quorum / overloaded / internal failure: retrying later may succeed.
    UNAVAILABLE = 3
    #: The request did not parse or a field is out of range. Nothing changed.
    BAD_REQUEST = 4
    #: Register without ``replace`` for a user id that has a record.
    ALREADY_REGISTERED = 5
    #: The session id is unknown, expired, used, or not in the required phase.
    NO_SESSION = 6
    #: InstallBundle: the fleet already holds a bundle of a higher epoch (no rollback).
    STALE_EPOCH = 7
    #: InstallBundle: the fleet holds other bytes for this same epoch.
    EPOCH_CONFLICT = 8
    #: The fleet was decommissioned: its records are erased and it serves no one, ever.
    DECOMMISSIONED = 9


# --------------------------------------------------------------------------- field kinds


@dataclass(frozen=True, slots=True)
class _Int:
    width: int
    lo: int
    hi: int


@dataclass(frozen=True, slots=True)
class _Bool:
    pass


@dataclass(frozen=True, slots=True)
class _Fixed:
    length: int


@dataclass(frozen=True, slots=True)
class _Var:
    prefix: int
    min_len: int
    max_len: int


_Field: TypeAlias = _Int | _Bool | _Fixed | _Var

_USER_ID = _Var(1, 1, MAX_USER_ID_LEN)
_OPAQUE = _Var(2, 1, MAX_OPAQUE_MESSAGE_LEN)
_KSF = _Var(1, 1, MAX_KSF_PARAMS_LEN)
_WRAPPED = _Var(2, 1, MAX_WRAPPED_KEY_LEN)
_SEALED = _Var(2, 1, MAX_SEALED_KEY_LEN)
_SEALED_UPLOAD = _Var(2, MIN_SEALED_UPLOAD_LEN, MAX_SEALED_UPLOAD_LEN)
_SESSION_ID = _Fixed(SESSION_ID_LEN)
_NONCE = _Fixed(CREDENTIAL_NONCE_LEN)
_AUTHENTICATOR = _Fixed(AUTHENTICATOR_LEN)
_GUESS_LIMIT = _Int(1, MIN_GUESS_LIMIT, MAX_GUESS_LIMIT)
_REMAINING = _Int(1, 0, MAX_GUESS_LIMIT)
_COUNT = _Int(4, 0, 0xFFFF_FFFF)
_INCARNATION = _Int(8, 1, 2**64 - 1)
_EPOCH = _Int(8, 0, MAX_EPOCH)
_FLEET_ID = _Fixed(FLEET_ID_LEN)
_FLEET_SIGNATURE = _Fixed(FLEET_SIGNATURE_LEN)
#: A bundle in a start response: empty when none is installed.
_BUNDLE = _Var(4, 0, MAX_BUNDLE_LEN)
#: A bundle to install: never empty.
_BUNDLE_TO_INSTALL = _Var(4, 1, MAX_BUNDLE_LEN)


def _write_field(w: Writer, kind: _Field, value: object) -> None:
    match kind:
        case _Int(width, lo, hi):
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise InvalidParameter(f"integer field must be in {lo}..{hi}")
            {1: w.u8, 4: w.u32, 8: w.u64}[width](value)
        case _Bool():
            if not isinstance(value, bool):
                raise InvalidParameter("boolean field must be a bool")
            w.boolean(value)
        case _Fixed(length):
            if not isinstance(value, bytes):
                raise InvalidParameter("bytes field must be bytes")
            w.fixed(value, length)
        case _Var(prefix, min_len, max_len):
            if not isinstance(value, bytes):
                raise InvalidParameter("bytes field must be bytes")
            w.var_bytes(value, prefix=prefix, max_len=max_len, min_len=min_len)


def _read_field(r: Reader, kind: _Field) -> object:
    match kind:
        case _Int(width, lo, hi):
            value = {1: r.u8, 4: r.u32, 8: r.u64}[width]()
            if not lo <= value <= hi:
                raise DecodeError(f"integer field must be in {lo}..{hi}")
            return value
        case _Bool():
            return r.boolean()
        case _Fixed(length):
            return r.fixed(length)
        case _Var(prefix, min_len, max_len):
            return r.var_bytes(prefix=prefix, max_len=max_len, min_len=min_len)
    raise AssertionError("unreachable")  # pragma: no cover


def _empty(kind: _Field) -> object:
    """The value a payload field holds when the outcome is not OK."""
    match kind:
        case _Int():
            return 0
        case _Bool():
            return False
    return b""


def _header(r: Reader) -> int:
    if r.u8() != API_VERSION:
        raise DecodeError("unknown HSM API version")
    return r.u8()


# --------------------------------------------------------------------------- bases


class _Message:
    """Shared machinery: encode/decode from the ``_FIELDS`` table, redacted ``repr``."""

    __slots__ = ()
    TAG: ClassVar[int]
    _FIELDS: ClassVar[tuple[tuple[str, _Field], ...]]

    def _write_fields(self, w: Writer, table: tuple[tuple[str, _Field], ...]) -> None:
        for name, kind in table:
            _write_field(w, kind, getattr(self, name))

    @classmethod
    def _read_fields(cls, r: Reader, table: tuple[tuple[str, _Field], ...]) -> dict[str, object]:
        return {name: _read_field(r, kind) for name, kind in table}

    def __repr__(self) -> str:
        parts = []
        for f in fields(cast("DataclassInstance", self)):  # every subclass is a dataclass
            value = getattr(self, f.name)
            if isinstance(value, bytes):
                parts.append(f"{f.name}=<{len(value)} bytes>")
            elif isinstance(value, enum.Enum):
                parts.append(f"{f.name}={value.name}")
            else:
                parts.append(f"{f.name}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"


class _RequestBase(_Message):
    __slots__ = ()

    def __post_init__(self) -> None:
        try:
            self._write_fields(Writer(), self._FIELDS)
        except InvalidParameter as exc:
            raise DecodeError(f"{type(self).__name__}: {exc}") from None

    def to_bytes(self) -> bytes:
        """The canonical encoding: version, tag, fields."""
        w = Writer().u8(API_VERSION).u8(self.TAG)
        self._write_fields(w, self._FIELDS)
        return w.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Parse strictly; raises :class:`DecodeError` (also for another request type)."""
        r = Reader(data)
        if _header(r) != cls.TAG:
            raise DecodeError(f"not a {cls.__name__}")
        return cls._body(r)

    @classmethod
    def _body(cls, r: Reader) -> Self:
        values = cls._read_fields(r, cls._FIELDS)
        r.finish()
        factory: Callable[..., Self] = cls
        return factory(**values)


class _ResponseBase(_Message):
    __slots__ = ()

    def _outcome(self) -> Outcome:
        value: Outcome = getattr(self, "outcome")  # noqa: B009 - declared by subclasses
        return value

    def __post_init__(self) -> None:
        outcome = self._outcome()
        if not isinstance(outcome, Outcome):
            raise DecodeError(f"{type(self).__name__}: outcome must be an Outcome")
        if outcome is Outcome.OK:
            try:
                self._write_fields(Writer(), self._FIELDS)
            except InvalidParameter as exc:
                raise DecodeError(f"{type(self).__name__}: {exc}") from None
        elif any(getattr(self, name) != _empty(kind) for name, kind in self._FIELDS):
            raise DecodeError(f"{type(self).__name__}: a refusal carries no payload")

    def to_bytes(self) -> bytes:
        """The canonical encoding: version, tag, outcome, payload only if OK."""
        outcome = self._outcome()
        w = Writer().u8(API_VERSION).u8(self.TAG).u8(outcome)
        if outcome is Outcome.OK:
            self._write_fields(w, self._FIELDS)
        return w.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Parse strictly; raises :class:`DecodeError` (also for another response type)."""
        r = Reader(data)
        if _header(r) != cls.TAG:
            raise DecodeError(f"not a {cls.__name__}")
        return cls._body(r)

    @classmethod
    def _body(cls, r: Reader) -> Self:
        try:
            outcome = Outcome(r.u8())
        except ValueError:
            raise DecodeError("unknown outcome") from None
        values: dict[str, object] = {"outcome": outcome}
        if outcome is Outcome.OK:
            values.update(cls._read_fields(r, cls._FIELDS))
        r.finish()
        factory: Callable[..., Self] = cls
        return factory(**values)

    @classmethod
    def refused(cls, outcome: Outcome) -> Self:
        """This response type with a non-OK ``outcome`` and no payload."""
        if outcome is Outcome.OK:
            raise InvalidParameter("a refusal needs a non-OK outcome")
        factory: Callable[..., Self] = cls
        return factory(outcome=outcome)


# --------------------------------------------------------------------------- sealed upload

_UPLOAD_CONTEXT_LABEL: Final = b"hsmvault/registration-upload/v1\x00"


@dataclass(frozen=True, slots=True, repr=False)
class RegistrationUpload(_Message):
    """What a registration stores, as the client hands it to the fleet: the OPAQUE
    ``RegistrationRecord`` (with its masking key), the KSF parameters the client used,
    and its wrapped backup key. The *plaintext* of ``sealed_upload`` in
    :class:`RegisterRequest` and :class:`ChangeSecretRequest` — not a request; it never
    travels unsealed. Encoding: see the module docstring (version :data:`UPLOAD_VERSION`,
    no trailing bytes)."""

    _FIELDS: ClassVar[tuple[tuple[str, _Field], ...]] = (
        ("registration_record", _OPAQUE),
        ("ksf_params", _KSF),
        ("wrapped_key", _WRAPPED),
    )

    registration_record: bytes
    ksf_params: bytes
    wrapped_key: bytes

    def __post_init__(self) -> None:
        try:
            self._write_fields(Writer(), self._FIELDS)
        except InvalidParameter as exc:
            raise DecodeError(f"RegistrationUpload: {exc}") from None

    def to_bytes(self) -> bytes:
        """The canonical encoding: version, then the fields."""
        w = Writer().u8(UPLOAD_VERSION)
        self._write_fields(w, self._FIELDS)
        return w.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Parse strictly; raises :class:`DecodeError` only."""
        r = Reader(data)
        if r.u8() != UPLOAD_VERSION:
            raise DecodeError("unknown registration upload version")
        values = cls._read_fields(r, cls._FIELDS)
        r.finish()
        factory: Callable[..., Self] = cls
        return factory(**values)


def upload_context(user_id: bytes, credential_nonce: bytes) -> bytes:
    """The fleet-seal context of a registration upload for ``user_id`` and the
    ``credential_nonce`` the node issued: a domain label, then each field with a one-byte
    length prefix (so no two pairs share a context). The client seals under it, the node
    opens under it. Raises :class:`~hsmvault.errors.InvalidParameter` for a user id or
    nonce out of bounds."""
    if not isinstance(user_id, bytes) or not 1 <= len(user_id) <= MAX_USER_ID_LEN:
        raise InvalidParameter(f"user id must be 1..{MAX_USER_ID_LEN} bytes")
    if not isinstance(credential_nonce, bytes) or len(credential_nonce) != CREDENTIAL_NONCE_LEN:
        raise InvalidParameter(f"credential nonce must be {CREDENTIAL_NONCE_LEN} bytes")
    w = Writer().fixed(_UPLOAD_CONTEXT_LABEL, len(_UPLOAD_CONTEXT_LABEL))
    w.var_bytes(user_id, prefix=1, max_len=MAX_USER_ID_LEN, min_len=1)
    w.var_bytes(credential_nonce, prefix=1, max_len=CREDENTIAL_NONCE_LEN)
    return w.getvalue()


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True, repr=False)
class RegistrationStartRequest(_RequestBase):
    """OPAQUE registration, first step (RFC 9807 §5.2.2): ``registration_request`` is a
    ``RegistrationRequest``. Stateless on the node; see ``RegistrationStartResponse``."""

    TAG: ClassVar[int] = 0x01
    _FIELDS: ClassVar[tuple[tuple[str, _Field], ...]] = (
        ("user_id", _USER_ID),
        ("registration_request", _OPAQUE),
    )

    user_id: bytes
    registration_request: bytes


@dataclass(frozen=True, slots=True, repr=False)
class RegisterRequest(_RequestBase):
    """Store a record: ``sealed_upload`` is a :class:`RegistrationUpload` (record, KSF
    parameters, wrapped key) sealed to the fleet's ``enc`` key under
    :func:`upload_context` of ``user_id`` and ``credential_nonce`` (the nonce the node
    issued in ``RegistrationStartResponse``); the guess limit (1..255, default 10).
    ``replace`` overwrites an existing record (and is the explicit re-enrolment of a
    locked-out user id; see ``hsm.vault_state``)."""

    TAG: ClassVar[int] = 0x02
    _FIELDS: ClassVar[tuple[tuple[str, _Field], ...]] = (
        ("user_id", _USER_ID),
        ("credential_nonce", _NONCE),
        ("sealed_upload", _SEALED_UPLOAD),
        ("guess_limit", _GUESS_LIMIT),
        ("replace", _Bool()),
    )

    user_id: bytes
    credential_nonce: bytes
    sealed_upload: bytes
    guess_limit: int = DEFAULT_GUESS_LIMIT
    replace: bool = False


@dataclass(frozen=True, slots=True, repr=False)
class LoginStartRequest(_RequestBase):
    """OPAQUE login, first message: ``ke1`` is a ``KE1`` (RFC 9807 §6.1)."""

    TAG: ClassVar[int] = 0x03
    _FIELDS: ClassVar[tuple[tuple[str, _Field], ...]] = (
        ("user_id", _USER_ID),
        ("ke1", _OPAQUE),
    )

    user_id: bytes
    ke1: bytes


@dataclass(frozen=True, slots=True, repr=False)
class LoginFinishRequest(_RequestBase):
    """OPAQUE login, last message: ``ke3`` (RFC 9807 §6.1) for the session the node
    opened in ``LoginStartResponse``."""

    TAG: ClassVar[int] = 0x04
    _FIELDS: ClassVar[tuple[tuple[str, _Field], ...]] = (
        ("session_id", _SESSION_ID),
        ("ke3", _OPAQUE),
    )

    session_id: bytes
    ke3: bytes


@dataclass(frozen=True, slots=True, repr=False)
class AttemptsRemainingRequest(_RequestBase):
    """How many guesses the user's record has left (read of committed state)."""

    TAG: ClassVar[int] = 0x05
    _FIELDS: ClassVar[tuple[tuple[str, _Field], ...]] = (("user_id", _USER_ID),)

    user_id: bytes


@dataclass(frozen=True, slots=True, repr=False)
class ChangeSecretRequest(_RequestBase):
    """Replace the record of the user of a session that just completed a successful
    login. The new record comes from a fresh ``RegistrationStart`` (its nonce); it
    travels as ``sealed_upload``, a :class:`RegistrationUpload` sealed to the fleet under
    :func:`upload_context` of the *session's* user id and ``credential_nonce``.

    ``authenticator`` proves knowledge of the session key (the session id alone travels
    through the untrusted host): HMAC over :meth:`authenticated_bytes` under a key
    derived from the OPAQUE session key (``crypto.session_box``)."""

    TAG: ClassVar[int] = 0x06
    _FIELDS: ClassVar[tuple[tuple[str, _Field], ...]] = (
        ("session_id", _SESSION_ID),
        ("credential_nonce", _NONCE),
        ("sealed_upload", _SEALED_UPLOAD),
        ("authenticator", _AUTHENTICATOR),
    )

    session_id: bytes
    credential_nonce: bytes
    sealed_upload: bytes
    authenticator: bytes

    def authenticated_bytes(self) -> bytes:
        """What ``authenticator`` covers: the encoding without the authenticator (so
        session id, nonce and the whole sealed upload)."""
        return self.to_bytes()[:-AUTHENTICATOR_LEN]


@dataclass(frozen=True, slots=True, repr=False)
class DeleteRequest(_RequestBase):
    """Delete the record of the user of a session that just completed a successful
    login; ``authenticator`` as in :class:`ChangeSecretRequest`."""

    TAG: ClassVar[int] = 0x07
    _FIELDS: ClassVar[tuple[tuple[str, _Field], ...]] = (
        ("session_id", _SESSION_ID),
        ("authenticator", _AUTHENTICATOR),
    )

    session_id: bytes
    authenticator: bytes

    def authenticated_bytes(self) -> bytes:
        """What ``authenticator`` covers: the encoding without the authenticator."""
        return self.to_bytes()[:-AUTHENTICATOR_LEN]


@dataclass(frozen=True, slots=True, repr=False)
class StatusRequest(_RequestBase):
    """Liveness and coarse counters of the node."""

    TAG: ClassVar[int] = 0x08
    _FIELDS: ClassVar[tuple[tuple[str, _Field], ...]] = ()


@dataclass(frozen=True, slots=True, repr=False)
class RejoinRequest(_RequestBase):
    """Fleet-internal: a member node that lost or could not prove its Raft state asks to
    be readmitted under a new ``incarnation`` (its advanced NVRAM epoch). The *ticket*
    is ``signature``, made by the node's custody identity key over
    :meth:`ticket_bytes` (fleet id, node id, incarnation). The receiving node checks it
    against the identity key pinned at formation and that ``incarnation`` is higher than
    any it has seen for ``node_id``, then commits "remove old incarnation", "add new
    incarnation" (ADR 0005, "Rejoin"). Not a client request: the host only relays it."""

    TAG: ClassVar[int] = 0x09
    _FIELDS: ClassVar[tuple[tuple[str, _Field], ...]] = (
        ("fleet_id", _Fixed(_FLEET_ID_LEN)),
        ("node_id", _Fixed(_NODE_ID_LEN)),
        ("incarnation", _INCARNATION),
        ("signature", _Fixed(SIGNATURE_LEN)),
    )

    fleet_id: bytes
    node_id: bytes
    incarnation: int
    signature: bytes

    def ticket_bytes(self) -> bytes:
        """What ``signature`` covers (under the custody purpose the node process uses)::

        REJOIN_TICKET_LABEL | fleet id (32) | node id (32) | incarnation u64
        """
        return rejoin_ticket_bytes(self.fleet_id, self.node_id, self.incarnation)


@dataclass(frozen=True, slots=True, repr=False)
class InstallBundleRequest(_RequestBase):
    """Operator: make ``bundle`` (1..64 KiB, opaque to the node) the fleet's current
    validation bundle at ``epoch`` (ADR 0010, "Delivery"). Committed through consensus;
    a lower epoch than the installed one is refused (``STALE_EPOCH``), the installed
    epoch again with the same bytes is idempotent (``OK``), with other bytes refused
    (``EPOCH_CONFLICT``). The node does not verify the bundle — clients do. Not a device
    request: the gateway refuses to relay it."""

    TAG: ClassVar[int] = 0x0A
    _FIELDS: ClassVar[tuple[tuple[str, _Field], ...]] = (
        ("epoch", _EPOCH),
        ("bundle", _BUNDLE_TO_INSTALL),
    )

    epoch: int
    bundle: bytes


@dataclass(frozen=True, slots=True, repr=False)
class DecommissionRequest(_RequestBase):
    """Operator: decommission the fleet ``fleet_id`` (ADR 0013). Committed through
    consensus; every replica then erases every record's key material and every tombstone,
    drops the current bundle, and refuses every user request from then on
    (``DECOMMISSIONED``), across restarts and snapshots. Irreversible; repeating it is
    idempotent (``OK`` again, nothing left to erase). A ``fleet_id`` that is not the
    node's own is ``BAD_REQUEST`` (a request sent to the wrong fleet erases nothing).
    Not a device request: the gateway refuses to relay it."""

    TAG: ClassVar[int] = 0x0B
    _FIELDS: ClassVar[tuple[tuple[str, _Field], ...]] = (("fleet_id", _FLEET_ID),)

    fleet_id: bytes


def rejoin_ticket_bytes(fleet_id: bytes, node_id: bytes, incarnation: int) -> bytes:
    """The signed bytes of a rejoin ticket (see :meth:`RejoinRequest.ticket_bytes`).
    Raises :class:`~hsmvault.errors.InvalidParameter` for fields out of bounds."""
    w = Writer().fixed(REJOIN_TICKET_LABEL, len(REJOIN_TICKET_LABEL))
    _write_field(w, _Fixed(_FLEET_ID_LEN), fleet_id)
    _write_field(w, _Fixed(_NODE_ID_LEN), node_id)
    _write_field(w, _INCARNATION, incarnation)
    return w.getvalue()


# --------------------------------------------------------------------------- responses


@dataclass(frozen=True, slots=True, repr=False)
class RegistrationStartResponse(_ResponseBase):
    """``registration_response`` (RFC 9807 §5.1) and the ``credential_nonce`` the record
    must be registered with. The node derives the OPRF key from user id *and* this fresh
    random nonce, so OPRF evaluations obtained here never apply to any stored record:
    registration cannot be used as an uncounted password-guessing oracle.

    ``fleet_id``, ``bundle`` and ``fleet_signature``: see the module docstring (the
    client checks them before it uses the rest)."""

    TAG: ClassVar[int] = 0x81
    _FIELDS: ClassVar[tuple[tuple[str, _Field], ...]] = (
        ("credential_nonce", _NONCE),
        ("registration_response", _OPAQUE),
        ("fleet_id", _FLEET_ID),
        ("bundle", _BUNDLE),
        ("fleet_signature", _FLEET_SIGNATURE),
    )

    outcome: Outcome
    credential_nonce: bytes = b""
    registration_response: bytes = b""
    fleet_id: bytes = b""
    bundle: bytes = b""
    fleet_signature: bytes = b""


@dataclass(frozen=True, slots=True, repr=False)
class RegisterResponse(_ResponseBase):
    """OK, ALREADY_REGISTERED, LOCKED_OUT (tombstoned id without ``replace``),
    BAD_REQUEST or UNAVAILABLE."""

    TAG: ClassVar[int] = 0x82
    _FIELDS: ClassVar[tuple[tuple[str, _Field], ...]] = ()

    outcome: Outcome


@dataclass(frozen=True, slots=True, repr=False)
class LoginStartResponse(_ResponseBase):
    """``ke2`` (RFC 9807 §6.1), the session to finish, the KSF parameters the client
    must stretch with, and the guesses left *after* this attempt. Sent only after the
    guess counter's increment was committed. Unknown users get the same shape, fleet
    signature included. ``fleet_id``, ``bundle`` and ``fleet_signature``: see the module
    docstring."""

    TAG: ClassVar[int] = 0x83
    _FIELDS: ClassVar[tuple[tuple[str, _Field], ...]] = (
        ("session_id", _SESSION_ID),
        ("ke2", _OPAQUE),
        ("ksf_params", _KSF),
        ("attempts_remaining", _REMAINING),
        ("fleet_id", _FLEET_ID),
        ("bundle", _BUNDLE),
        ("fleet_signature", _FLEET_SIGNATURE),
    )

    outcome: Outcome
    session_id: bytes = b""
    ke2: bytes = b""
    ksf_params: bytes = b""
    attempts_remaining: int = 0
    fleet_id: bytes = b""
    bundle: bytes = b""
    fleet_signature: bytes = b""


@dataclass(frozen=True, slots=True, repr=False)
class LoginFinishResponse(_ResponseBase):
    """On OK, the wrapped key sealed to the OPAQUE session key (``crypto.session_box``,
    label ``LABEL_WRAPPED_KEY``)."""

    TAG: ClassVar[int] = 0x84
    _FIELDS: ClassVar[tuple[tuple[str, _Field], ...]] = (("sealed_wrapped_key", _SEALED),)

    outcome: Outcome
    sealed_wrapped_key: bytes = b""


@dataclass(frozen=True, slots=True, repr=False)
class AttemptsRemainingResponse(_ResponseBase):
    """Guesses left (committed state of this node)."""

    TAG: ClassVar[int] = 0x85
    _FIELDS: ClassVar[tuple[tuple[str, _Field], ...]] = (("attempts_remaining", _REMAINING),)

    outcome: Outcome
    attempts_remaining: int = 0


@dataclass(frozen=True, slots=True, repr=False)
class ChangeSecretResponse(_ResponseBase):
    """OK once the new record is committed."""

    TAG: ClassVar[int] = 0x86
    _FIELDS: ClassVar[tuple[tuple[str, _Field], ...]] = ()

    outcome: Outcome


@dataclass(frozen=True, slots=True, repr=False)
class DeleteResponse(_ResponseBase):
    """OK once the deletion is committed."""

    TAG: ClassVar[int] = 0x87
    _FIELDS: ClassVar[tuple[tuple[str, _Field], ...]] = ()

    outcome: Outcome


@dataclass(frozen=True, slots=True, repr=False)
class StatusResponse(_ResponseBase):
    """Coarse counters: live records, locked-out tombstones, open login sessions, and
    whether the fleet is decommissioned (then the counts are 0)."""

    TAG: ClassVar[int] = 0x88
    _FIELDS: ClassVar[tuple[tuple[str, _Field], ...]] = (
        ("record_count", _COUNT),
        ("tombstone_count", _COUNT),
        ("open_sessions", _COUNT),
        ("decommissioned", _Bool()),
    )

    outcome: Outcome
    record_count: int = 0
    tombstone_count: int = 0
    open_sessions: int = 0
    decommissioned: bool = False


@dataclass(frozen=True, slots=True, repr=False)
class RejoinResponse(_ResponseBase):
    """OK once the new incarnation is committed as a member; INVALID_LOGIN for a ticket
    whose signature does not verify; BAD_REQUEST for a malformed, stale (incarnation not
    higher than any seen), replayed or foreign ticket, or a non-member; UNAVAILABLE when
    the change could not be committed (no quorum) — the node retries."""

    TAG: ClassVar[int] = 0x89
    _FIELDS: ClassVar[tuple[tuple[str, _Field], ...]] = ()

    outcome: Outcome


@dataclass(frozen=True, slots=True, repr=False)
class InstallBundleResponse(_ResponseBase):
    """OK with the ``epoch`` now current (the bundle is committed, or already was);
    STALE_EPOCH, EPOCH_CONFLICT (see :class:`InstallBundleRequest`), BAD_REQUEST, or
    UNAVAILABLE (not committed now — it may still commit; retrying is safe)."""

    TAG: ClassVar[int] = 0x8A
    _FIELDS: ClassVar[tuple[tuple[str, _Field], ...]] = (("epoch", _EPOCH),)

    outcome: Outcome
    epoch: int = 0


@dataclass(frozen=True, slots=True, repr=False)
class DecommissionResponse(_ResponseBase):
    """OK with ``erased_records``: how many records and tombstones this request erased
    (0 when the fleet already was decommissioned: idempotent); BAD_REQUEST (another
    fleet's id) or UNAVAILABLE (not committed now — it may still commit; retrying is
    safe)."""

    TAG: ClassVar[int] = 0x8B
    _FIELDS: ClassVar[tuple[tuple[str, _Field], ...]] = (("erased_records", _COUNT),)

    outcome: Outcome
    erased_records: int = 0


@dataclass(frozen=True, slots=True, repr=False)
class ErrorResponse(_ResponseBase):
    """The answer to bytes that are not any request (so no paired type is known):
    always a non-OK outcome, normally BAD_REQUEST."""

    TAG: ClassVar[int] = 0xFF
    _FIELDS: ClassVar[tuple[tuple[str, _Field], ...]] = ()

    outcome: Outcome

    def __post_init__(self) -> None:
        _ResponseBase.__post_init__(self)
        if self.outcome is Outcome.OK:
            raise DecodeError("ErrorResponse: outcome cannot be OK")


# --------------------------------------------------------------------------- unions

Request: TypeAlias = (
    RegistrationStartRequest
    | RegisterRequest
    | LoginStartRequest
    | LoginFinishRequest
    | AttemptsRemainingRequest
    | ChangeSecretRequest
    | DeleteRequest
    | StatusRequest
    | RejoinRequest
    | InstallBundleRequest
    | DecommissionRequest
)
Response: TypeAlias = (
    RegistrationStartResponse
    | RegisterResponse
    | LoginStartResponse
    | LoginFinishResponse
    | AttemptsRemainingResponse
    | ChangeSecretResponse
    | DeleteResponse
    | StatusResponse
    | RejoinResponse
    | InstallBundleResponse
    | DecommissionResponse
    | ErrorResponse
)

#: Each request type and the one response type that answers it.
RESPONSE_FOR: Final[dict[type[_RequestBase], type[_ResponseBase]]] = {
    RegistrationStartRequest: RegistrationStartResponse,
    RegisterRequest: RegisterResponse,
    LoginStartRequest: LoginStartResponse,
    LoginFinishRequest: LoginFinishResponse,
    AttemptsRemainingRequest: AttemptsRemainingResponse,
    ChangeSecretRequest: ChangeSecretResponse,
    DeleteRequest: DeleteResponse,
    StatusRequest: StatusResponse,
    RejoinRequest: RejoinResponse,
    InstallBundleRequest: InstallBundleResponse,
    DecommissionRequest: DecommissionResponse,
}
_REQUESTS: Final[dict[int, type[_RequestBase]]] = {cls.TAG: cls for cls in RESPONSE_FOR}
_RESPONSE_TYPES: Final[tuple[type[_ResponseBase], ...]] = (*RESPONSE_FOR.values(), ErrorResponse)
_RESPONSES: Final[dict[int, type[_ResponseBase]]] = {cls.TAG: cls for cls in _RESPONSE_TYPES}


def decode_request(data: bytes) -> Request:
    """Parse any request strictly; raises :class:`DecodeError` only."""
    r = Reader(data)
    cls = _REQUESTS.get(_header(r))
    if cls is None:
        raise DecodeError("unknown request type")
    return cast(Request, cls._body(r))


def decode_response(data: bytes) -> Response:
    """Parse any response strictly; raises :class:`DecodeError` only."""
    r = Reader(data)
    cls = _RESPONSES.get(_header(r))
    if cls is None:
        raise DecodeError("unknown response type")
    return cast(Response, cls._body(r))


def refusal_for(request: Request | None, outcome: Outcome) -> Response:
    """The response type paired with ``request`` (:class:`ErrorResponse` for ``None``,
    i.e. bytes that were no request), carrying the non-OK ``outcome``."""
    if request is None:
        return ErrorResponse(outcome)
    return cast(Response, RESPONSE_FOR[type(request)].refused(outcome))
