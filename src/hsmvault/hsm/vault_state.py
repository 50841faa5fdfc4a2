"""The vault's replicated state machine: records, guess counters, tombstones.

Every replica of a fleet holds one :class:`VaultState` and feeds it the same committed
command log through :meth:`VaultState.apply` — the only mutator. ``apply`` is
deterministic: no clock, no randomness, no I/O, no iteration over unordered data; equal
logs give byte-identical :meth:`VaultState.snapshot` output on every replica.

State, per ``user_id`` (1..255 bytes), exactly one of:

* a **record**: ``credential_nonce`` (part of the OPAQUE credential identifier), the
  OPAQUE ``RegistrationRecord``, the client's KSF parameters, the client's wrapped
  backup key (sealed to the fleet; opaque here), ``guess_limit`` (1..255),
  ``guesses_used`` and ``version`` (unique across the state, never reused);
* a **tombstone**: the record reached its guess limit and its key material was erased
  in every replica; only the user id and the erased version remain;
* nothing.

Fleet-wide, apart from users: the **current validation bundle** ``(epoch, bundle)``
(ADR 0010, "Delivery"; opaque bytes, 1..64 KiB, never parsed here) or none, and the
**staging** of the next one. A bundle can be larger than one replicated command
(``fleet.codec.MAX_COMMAND_SIZE``), so it is committed in parts of at most
:data:`BUNDLE_PART_LEN` bytes (``BundlePart``), each naming the epoch, the SHA-256 of
the whole bundle, its total length and the part's offset; the last part installs it.

Commands (see :func:`encode_command` for the byte format) and their results:

=================================  =====================================================
``Register(replace)``              ``Applied(version)``; ``ALREADY_REGISTERED`` if a record
                                   exists and not ``replace``; ``LOCKED_OUT`` if
                                   tombstoned and not ``replace``.
``BeginAttempt(user_id)``          ``AttemptGranted`` (counter incremented, record
                                   material for KE2); ``UNKNOWN_USER`` (no change);
                                   ``LOCKED_OUT`` (tombstoned, or at the limit: erased now)
``RecordSuccess(user, version)``   counter reset to 0 → ``SuccessRecorded(wrapped_key)``;
                                   ``STALE_VERSION`` if the record is gone or replaced
``RecordFailure(user, version)``   ``FailureRecorded(remaining, erased)``; at the limit the
                                   material is erased; ``STALE_VERSION`` as above
``Replace(user, version, ...)``    change secret: new material, new version, counter 0,
                                   same limit; ``STALE_VERSION`` as above
``Delete(user, version)``          record removed (no tombstone); ``STALE_VERSION``
``NoOp``                           ``Applied(0)`` — lets unknown users cost one round too
``BundlePart(epoch, digest, total,  ``BundleStaged(received)``; ``BundleInstalled(epoch)``
offset, data)``                    once the last part is in and the digest matches, or
                                   at once if that exact bundle is the current one
                                   (idempotent); ``STALE_EPOCH`` below the current epoch;
                                   ``EPOCH_CONFLICT`` for the current epoch with another
                                   digest or length; ``BUNDLE_SEQUENCE`` for a part that
                                   does not continue the staging (offset 0 always
                                   restarts it) or a digest that does not match
``Decommission``                   ``Decommissioned(erased)``: every record and tombstone,
                                   the bundle and its staging are dropped and the state
                                   is *decommissioned* for good (``erased`` = records +
                                   tombstones dropped; 0 when repeated: idempotent)
=================================  =====================================================

**Decommissioned** (ADR 0013) is terminal: afterwards every command but ``Decommission``
(idempotent) and ``NoOp`` is ``Refused(DECOMMISSIONED)`` and changes nothing, so no
record, tombstone or bundle ever comes back. Only ``last_version`` and the flag remain;
both survive :meth:`VaultState.snapshot`/:meth:`VaultState.restore`.

Bytes that do not decode as a command give ``Refused(MALFORMED_COMMAND)`` and change
nothing (``apply`` never raises on input).

Invariants (checked by ``tests/hsm/test_vault_state.py``):

1. ``0 <= guesses_used <= guess_limit`` for every record: successful ``BeginAttempt`` s
   since the last reset never exceed the limit.
2. Erased material never comes back. A tombstone blocks ``Register`` without
   ``replace``. **Re-enrolment policy:** ``Register`` with ``replace=True`` on a
   tombstoned id is the one explicit way to use that id again; it creates a *new*
   record (new version, new secret, new wrapped key supplied by the client) — nothing of
   the erased record is restored, so no guess budget is regained for the old secret.
   Authorising a replace is the host's account authentication, exactly as for replacing
   a live record (which gives an attacker no more: it destroys, never reveals).
3. Versions only grow; a ``RecordSuccess``/``RecordFailure``/``Replace``/``Delete``
   naming an old version never touches a newer record.
4. The bundle epoch never decreases, and an installed epoch never changes its bytes; a
   staged bundle's epoch is above the current one.
5. A decommissioned state holds no record, tombstone, bundle or staging, and stays
   decommissioned.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import threading
from dataclasses import dataclass, field
from typing import Final, TypeAlias

from hsmvault.crypto.ksf import KsfParams
from hsmvault.crypto.opaque.messages import RegistrationRecord
from hsmvault.errors import DecodeError, InvalidParameter
from hsmvault.wire.encoding import Reader, Writer
from hsmvault.wire.hsm_api import (
    CREDENTIAL_NONCE_LEN,
    MAX_BUNDLE_LEN,
    MAX_EPOCH,
    MAX_GUESS_LIMIT,
    MAX_KSF_PARAMS_LEN,
    MAX_USER_ID_LEN,
    MAX_WRAPPED_KEY_LEN,
    MIN_GUESS_LIMIT,
)

__all__ = [
    "BUNDLE_PART_LEN",
    "COMMAND_VERSION",
    "SNAPSHOT_VERSION",
    "Applied",
    "AttemptGranted",
    "BeginAttempt",
    "BundleInstalled",
    "BundlePart",
    "BundleStaged",
    "Command",
    "CommandResult",
    "Decommission",
    "Decommissioned",
    "Delete",
    "FailureRecorded",
    "InstalledBundle",
    "NoOp",
    "RecordFailure",
    "RecordSuccess",
    "Refusal",
    "Refused",
    "Register",
    "Replace",
    "SuccessRecorded",
    "VaultRecord",
    "VaultState",
    "bundle_parts",
    "decode_command",
    "decode_result",
    "encode_command",
    "encode_result",
]

#: Version byte of command and result encodings.
COMMAND_VERSION: Final = 1
#: Version byte of snapshots (2: the current bundle and its staging; 3: the
#: decommissioned flag). Version 2 snapshots are still read (as not decommissioned).
SNAPSHOT_VERSION: Final = 3
_SNAPSHOT_V2: Final = 2
_U64_MAX: Final = (1 << 64) - 1
#: Largest ``data`` of one ``BundlePart``: its command stays well below
#: ``fleet.codec.MAX_COMMAND_SIZE`` (16 KiB), so 64 KiB take six parts.
BUNDLE_PART_LEN: Final = 12 * 1024
_DIGEST_LEN: Final = 32


# --------------------------------------------------------------------------- material


def _material_problem(
    user_id: bytes,
    credential_nonce: bytes,
    registration_record: bytes,
    ksf_params: bytes,
    wrapped_key: bytes,
) -> str | None:
    """Why these record fields are invalid, or ``None``."""
    values = (user_id, credential_nonce, registration_record, ksf_params, wrapped_key)
    if not all(isinstance(v, bytes) for v in values):
        return "record fields must be bytes"
    if not 1 <= len(user_id) <= MAX_USER_ID_LEN:
        return "user id must be 1..255 bytes"
    if len(credential_nonce) != CREDENTIAL_NONCE_LEN:
        return "credential nonce has the wrong length"
    if not 1 <= len(wrapped_key) <= MAX_WRAPPED_KEY_LEN:
        return "wrapped key must be 1..1024 bytes"
    try:
        RegistrationRecord.from_bytes(registration_record)
        KsfParams.from_bytes(ksf_params)
    except DecodeError as exc:
        return str(exc)
    return None


def _check_user_id(user_id: bytes) -> None:
    if not isinstance(user_id, bytes) or not 1 <= len(user_id) <= MAX_USER_ID_LEN:
        raise InvalidParameter("user id must be 1..255 bytes")


def _check_version(version: int) -> None:
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= _U64_MAX:
        raise InvalidParameter("record version must be in 1..2**64-1")


def _check_limit(guess_limit: int) -> None:
    if isinstance(guess_limit, bool) or not isinstance(guess_limit, int):
        raise InvalidParameter("guess limit must be an int")
    if not MIN_GUESS_LIMIT <= guess_limit <= MAX_GUESS_LIMIT:
        raise InvalidParameter("guess limit must be in 1..255")


# --------------------------------------------------------------------------- commands


class _Tag(enum.IntEnum):
    REGISTER = 1
    BEGIN_ATTEMPT = 2
    RECORD_SUCCESS = 3
    RECORD_FAILURE = 4
    REPLACE = 5
    DELETE = 6
    NOOP = 7
    BUNDLE_PART = 8
    DECOMMISSION = 9


@dataclass(frozen=True, slots=True)
class Register:
    """Create a record (or overwrite one / re-enrol a tombstoned id if ``replace``)."""

    user_id: bytes
    credential_nonce: bytes
    registration_record: bytes = field(repr=False)
    ksf_params: bytes
    wrapped_key: bytes = field(repr=False)
    guess_limit: int
    replace: bool

    def __post_init__(self) -> None:
        problem = _material_problem(
            self.user_id,
            self.credential_nonce,
            self.registration_record,
            self.ksf_params,
            self.wrapped_key,
        )
        if problem is not None:
            raise InvalidParameter(problem)
        _check_limit(self.guess_limit)
        if not isinstance(self.replace, bool):
            raise InvalidParameter("replace must be a bool")


@dataclass(frozen=True, slots=True)
class BeginAttempt:
    """Count one login attempt *before* KE2 is computed."""

    user_id: bytes

    def __post_init__(self) -> None:
        _check_user_id(self.user_id)


@dataclass(frozen=True, slots=True)
class RecordSuccess:
    """A correct KE3 for ``record_version``: reset the counter, release the wrapped key."""

    user_id: bytes
    record_version: int

    def __post_init__(self) -> None:
        _check_user_id(self.user_id)
        _check_version(self.record_version)


@dataclass(frozen=True, slots=True)
class RecordFailure:
    """A wrong KE3 for ``record_version``: keep the increment; erase at the limit."""

    user_id: bytes
    record_version: int

    def __post_init__(self) -> None:
        _check_user_id(self.user_id)
        _check_version(self.record_version)


@dataclass(frozen=True, slots=True)
class Replace:
    """Change secret: new material for the record at ``record_version``."""

    user_id: bytes
    record_version: int
    credential_nonce: bytes
    registration_record: bytes = field(repr=False)
    ksf_params: bytes
    wrapped_key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        problem = _material_problem(
            self.user_id,
            self.credential_nonce,
            self.registration_record,
            self.ksf_params,
            self.wrapped_key,
        )
        if problem is not None:
            raise InvalidParameter(problem)
        _check_version(self.record_version)


@dataclass(frozen=True, slots=True)
class Delete:
    """Remove the record at ``record_version`` (no tombstone: the id may register again)."""

    user_id: bytes
    record_version: int

    def __post_init__(self) -> None:
        _check_user_id(self.user_id)
        _check_version(self.record_version)


@dataclass(frozen=True, slots=True)
class NoOp:
    """Changes nothing; one consensus round (unknown users cost the same as known)."""


@dataclass(frozen=True, slots=True)
class Decommission:
    """Erase every record and tombstone and refuse everything from now on (ADR 0013)."""


@dataclass(frozen=True, slots=True)
class BundlePart:
    """Bytes ``[offset, offset + len(data))`` of the validation bundle of ``epoch``
    whose SHA-256 is ``digest`` and whose length is ``total`` (see the module
    docstring; :func:`bundle_parts` cuts a bundle into these)."""

    epoch: int
    digest: bytes
    total: int
    offset: int
    data: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.epoch, bool) or not isinstance(self.epoch, int):
            raise InvalidParameter("bundle epoch must be an int")
        if not 0 <= self.epoch <= MAX_EPOCH:
            raise InvalidParameter("bundle epoch must be a u64")
        if not isinstance(self.digest, bytes) or len(self.digest) != _DIGEST_LEN:
            raise InvalidParameter("bundle digest must be 32 bytes")
        for value in (self.total, self.offset):
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidParameter("bundle lengths must be ints")
        if not 1 <= self.total <= MAX_BUNDLE_LEN:
            raise InvalidParameter("bundle length must be 1..64 KiB")
        if not isinstance(self.data, bytes) or not 1 <= len(self.data) <= BUNDLE_PART_LEN:
            raise InvalidParameter("bundle part must be 1..BUNDLE_PART_LEN bytes")
        if not self.offset >= 0 or self.offset + len(self.data) > self.total:
            raise InvalidParameter("bundle part lies outside the bundle")


def bundle_parts(epoch: int, bundle: bytes) -> list[BundlePart]:
    """``bundle`` (1..64 KiB) of ``epoch`` as the ``BundlePart`` commands that install
    it, in order. Raises :class:`InvalidParameter` for a bundle or epoch out of range."""
    if not isinstance(bundle, bytes) or not 1 <= len(bundle) <= MAX_BUNDLE_LEN:
        raise InvalidParameter("bundle must be 1..64 KiB")
    digest = hashlib.sha256(bundle).digest()
    return [
        BundlePart(epoch, digest, len(bundle), offset, bundle[offset : offset + BUNDLE_PART_LEN])
        for offset in range(0, len(bundle), BUNDLE_PART_LEN)
    ]


Command: TypeAlias = (
    Register
    | BeginAttempt
    | RecordSuccess
    | RecordFailure
    | Replace
    | Delete
    | NoOp
    | BundlePart
    | Decommission
)


def _write_material(
    w: Writer, nonce: bytes, record: bytes, ksf_params: bytes, wrapped_key: bytes
) -> None:
    w.fixed(nonce, CREDENTIAL_NONCE_LEN)
    w.var_bytes(record, prefix=2, max_len=RegistrationRecord.LEN, min_len=1)
    w.var_bytes(ksf_params, prefix=1, max_len=MAX_KSF_PARAMS_LEN, min_len=1)
    w.var_bytes(wrapped_key, prefix=2, max_len=MAX_WRAPPED_KEY_LEN, min_len=1)


def _read_material(r: Reader) -> tuple[bytes, bytes, bytes, bytes]:
    nonce = r.fixed(CREDENTIAL_NONCE_LEN)
    record = r.var_bytes(prefix=2, max_len=RegistrationRecord.LEN, min_len=1)
    ksf_params = r.var_bytes(prefix=1, max_len=MAX_KSF_PARAMS_LEN, min_len=1)
    wrapped_key = r.var_bytes(prefix=2, max_len=MAX_WRAPPED_KEY_LEN, min_len=1)
    return nonce, record, ksf_params, wrapped_key


def _write_user(w: Writer, user_id: bytes) -> None:
    w.var_bytes(user_id, prefix=1, max_len=MAX_USER_ID_LEN, min_len=1)


def _read_user(r: Reader) -> bytes:
    return r.var_bytes(prefix=1, max_len=MAX_USER_ID_LEN, min_len=1)


def encode_command(command: Command) -> bytes:
    """The canonical encoding: ``version u8 || tag u8 || fields``; user ids carry a
    1-byte length, versions are u64, material is ``nonce[32] || u16-len record ||
    u8-len ksf_params || u16-len wrapped_key``; Register ends ``guess_limit u8 ||
    replace u8``."""
    w = Writer().u8(COMMAND_VERSION)
    match command:
        case Register():
            w.u8(_Tag.REGISTER)
            _write_user(w, command.user_id)
            _write_material(
                w,
                command.credential_nonce,
                command.registration_record,
                command.ksf_params,
                command.wrapped_key,
            )
            w.u8(command.guess_limit).boolean(command.replace)
        case BeginAttempt():
            w.u8(_Tag.BEGIN_ATTEMPT)
            _write_user(w, command.user_id)
        case RecordSuccess() | RecordFailure() | Delete():
            tag = {
                RecordSuccess: _Tag.RECORD_SUCCESS,
                RecordFailure: _Tag.RECORD_FAILURE,
                Delete: _Tag.DELETE,
            }[type(command)]
            w.u8(tag)
            _write_user(w, command.user_id)
            w.u64(command.record_version)
        case Replace():
            w.u8(_Tag.REPLACE)
            _write_user(w, command.user_id)
            w.u64(command.record_version)
            _write_material(
                w,
                command.credential_nonce,
                command.registration_record,
                command.ksf_params,
                command.wrapped_key,
            )
        case NoOp():
            w.u8(_Tag.NOOP)
        case Decommission():
            w.u8(_Tag.DECOMMISSION)
        case BundlePart():
            w.u8(_Tag.BUNDLE_PART).u64(command.epoch).fixed(command.digest, _DIGEST_LEN)
            w.u32(command.total).u32(command.offset)
            w.var_bytes(command.data, prefix=2, max_len=BUNDLE_PART_LEN, min_len=1)
        case _:
            raise InvalidParameter("not a vault command")
    return w.getvalue()


def _decode_command(r: Reader) -> Command:
    if r.u8() != COMMAND_VERSION:
        raise DecodeError("unknown command version")
    try:
        tag = _Tag(r.u8())
    except ValueError:
        raise DecodeError("unknown command tag") from None
    command: Command
    if tag is _Tag.REGISTER:
        user_id = _read_user(r)
        material = _read_material(r)
        command = Register(user_id, *material, guess_limit=r.u8(), replace=r.boolean())
    elif tag is _Tag.BEGIN_ATTEMPT:
        command = BeginAttempt(_read_user(r))
    elif tag is _Tag.REPLACE:
        user_id = _read_user(r)
        version = r.u64()
        command = Replace(user_id, version, *_read_material(r))
    elif tag is _Tag.NOOP:
        command = NoOp()
    elif tag is _Tag.DECOMMISSION:
        command = Decommission()
    elif tag is _Tag.BUNDLE_PART:
        epoch, digest, total, offset = r.u64(), r.fixed(_DIGEST_LEN), r.u32(), r.u32()
        data = r.var_bytes(prefix=2, max_len=BUNDLE_PART_LEN, min_len=1)
        command = BundlePart(epoch, digest, total, offset, data)
    else:
        user_id = _read_user(r)
        version = r.u64()
        if tag is _Tag.RECORD_SUCCESS:
            command = RecordSuccess(user_id, version)
        elif tag is _Tag.RECORD_FAILURE:
            command = RecordFailure(user_id, version)
        else:
            command = Delete(user_id, version)
    r.finish()
    return command


def decode_command(data: bytes) -> Command:
    """Parse :func:`encode_command` output strictly; raises :class:`DecodeError` only."""
    try:
        return _decode_command(Reader(data))
    except InvalidParameter as exc:
        raise DecodeError(f"invalid command: {exc}") from None


# --------------------------------------------------------------------------- results


class Refusal(enum.IntEnum):
    """Why a command changed nothing (or, for LOCKED_OUT, erased a record)."""

    UNKNOWN_USER = 1
    LOCKED_OUT = 2
    ALREADY_REGISTERED = 3
    STALE_VERSION = 4
    MALFORMED_COMMAND = 5
    #: BundlePart: below the current bundle epoch.
    STALE_EPOCH = 6
    #: BundlePart: the current epoch, but another bundle.
    EPOCH_CONFLICT = 7
    #: BundlePart: does not continue the staged bundle, or the digest does not match.
    BUNDLE_SEQUENCE = 8
    #: The state is decommissioned: it takes no command but Decommission and NoOp.
    DECOMMISSIONED = 9


class _ResultTag(enum.IntEnum):
    APPLIED = 1
    ATTEMPT_GRANTED = 2
    SUCCESS_RECORDED = 3
    FAILURE_RECORDED = 4
    REFUSED = 5
    BUNDLE_STAGED = 6
    BUNDLE_INSTALLED = 7
    DECOMMISSIONED = 8


@dataclass(frozen=True, slots=True)
class Applied:
    """Register/Replace (the new ``record_version``), Delete and NoOp (0)."""

    record_version: int


@dataclass(frozen=True, slots=True)
class AttemptGranted:
    """BeginAttempt counted attempt number ``attempt``; ``remaining`` = limit - used.
    Carries what the node needs to compute KE2 (never leaves the trusted zone)."""

    record_version: int
    attempt: int
    remaining: int
    credential_nonce: bytes
    registration_record: bytes = field(repr=False)
    ksf_params: bytes


@dataclass(frozen=True, slots=True)
class SuccessRecorded:
    """RecordSuccess reset the counter; the wrapped key to release in the session."""

    wrapped_key: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class FailureRecorded:
    """RecordFailure kept the increment; ``erased`` if the limit was reached."""

    remaining: int
    erased: bool


@dataclass(frozen=True, slots=True)
class Refused:
    """The command did not apply (see :class:`Refusal`)."""

    reason: Refusal


@dataclass(frozen=True, slots=True)
class BundleStaged:
    """BundlePart was staged; ``received`` bytes of the bundle are in so far."""

    received: int


@dataclass(frozen=True, slots=True)
class BundleInstalled:
    """The bundle of ``epoch`` is the current one (just installed, or already was)."""

    epoch: int


@dataclass(frozen=True, slots=True)
class Decommissioned:
    """The state is decommissioned; ``erased`` records and tombstones were dropped by
    this command (0 if it already was)."""

    erased: int


CommandResult: TypeAlias = (
    Applied
    | AttemptGranted
    | SuccessRecorded
    | FailureRecorded
    | Refused
    | BundleStaged
    | BundleInstalled
    | Decommissioned
)


def encode_result(result: CommandResult) -> bytes:
    """``version u8 || tag u8 || fields`` (versions u64, counts u8, material as in
    commands)."""
    w = Writer().u8(COMMAND_VERSION)
    match result:
        case Applied():
            w.u8(_ResultTag.APPLIED).u64(result.record_version)
        case AttemptGranted():
            w.u8(_ResultTag.ATTEMPT_GRANTED).u64(result.record_version)
            w.u8(result.attempt).u8(result.remaining)
            w.fixed(result.credential_nonce, CREDENTIAL_NONCE_LEN)
            w.var_bytes(result.registration_record, prefix=2, max_len=RegistrationRecord.LEN)
            w.var_bytes(result.ksf_params, prefix=1, max_len=MAX_KSF_PARAMS_LEN)
        case SuccessRecorded():
            w.u8(_ResultTag.SUCCESS_RECORDED)
            w.var_bytes(result.wrapped_key, prefix=2, max_len=MAX_WRAPPED_KEY_LEN)
        case FailureRecorded():
            w.u8(_ResultTag.FAILURE_RECORDED).u8(result.remaining).boolean(result.erased)
        case Refused():
            w.u8(_ResultTag.REFUSED).u8(result.reason)
        case BundleStaged():
            w.u8(_ResultTag.BUNDLE_STAGED).u32(result.received)
        case BundleInstalled():
            w.u8(_ResultTag.BUNDLE_INSTALLED).u64(result.epoch)
        case Decommissioned():
            w.u8(_ResultTag.DECOMMISSIONED).u32(result.erased)
        case _:
            raise InvalidParameter("not a command result")
    return w.getvalue()


def decode_result(data: bytes) -> CommandResult:
    """Parse :func:`encode_result` output strictly; raises :class:`DecodeError` only."""
    r = Reader(data)
    if r.u8() != COMMAND_VERSION:
        raise DecodeError("unknown result version")
    try:
        tag = _ResultTag(r.u8())
    except ValueError:
        raise DecodeError("unknown result tag") from None
    result: CommandResult
    if tag is _ResultTag.APPLIED:
        result = Applied(r.u64())
    elif tag is _ResultTag.ATTEMPT_GRANTED:
        result = AttemptGranted(
            r.u64(),
            r.u8(),
            r.u8(),
            r.fixed(CREDENTIAL_NONCE_LEN),
            r.var_bytes(prefix=2, max_len=RegistrationRecord.LEN),
            r.var_bytes(prefix=1, max_len=MAX_KSF_PARAMS_LEN),
        )
    elif tag is _ResultTag.SUCCESS_RECORDED:
        result = SuccessRecorded(r.var_bytes(prefix=2, max_len=MAX_WRAPPED_KEY_LEN))
    elif tag is _ResultTag.FAILURE_RECORDED:
        result = FailureRecorded(r.u8(), r.boolean())
    elif tag is _ResultTag.BUNDLE_STAGED:
        result = BundleStaged(r.u32())
    elif tag is _ResultTag.BUNDLE_INSTALLED:
        result = BundleInstalled(r.u64())
    elif tag is _ResultTag.DECOMMISSIONED:
        result = Decommissioned(r.u32())
    else:
        try:
            result = Refused(Refusal(r.u8()))
        except ValueError:
            raise DecodeError("unknown refusal reason") from None
    r.finish()
    return result


# --------------------------------------------------------------------------- state


@dataclass(frozen=True, slots=True)
class VaultRecord:
    """One user's record (read-only view; the state replaces, never mutates, these)."""

    user_id: bytes
    credential_nonce: bytes
    registration_record: bytes = field(repr=False)
    ksf_params: bytes
    wrapped_key: bytes = field(repr=False)
    guess_limit: int
    guesses_used: int
    version: int

    @property
    def attempts_remaining(self) -> int:
        """``guess_limit - guesses_used`` (never negative: invariant 1)."""
        return self.guess_limit - self.guesses_used


@dataclass(frozen=True, slots=True)
class InstalledBundle:
    """The fleet's current validation bundle: ``epoch`` and the opaque ``bundle`` bytes
    (with their SHA-256, ``digest``)."""

    epoch: int
    bundle: bytes = field(repr=False)
    digest: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class _Staging:
    """The first ``len(data)`` bytes of the bundle of ``epoch`` being installed."""

    epoch: int
    digest: bytes
    total: int
    data: bytes = field(repr=False)


def _installed(epoch: int, bundle: bytes) -> InstalledBundle:
    return InstalledBundle(epoch, bundle, hashlib.sha256(bundle).digest())


class VaultState:
    """The deterministic state machine; see the module docstring for the contract.

    Thread safety: :meth:`apply`, :meth:`snapshot` and the readers take one lock, so a
    reader on another thread sees a state between two commands, never inside one.
    """

    __slots__ = (
        "_bundle",
        "_decommissioned",
        "_last_version",
        "_lock",
        "_records",
        "_staging",
        "_tombstones",
    )
    __hash__ = None  # type: ignore[assignment]

    def __init__(self) -> None:
        self._records: dict[bytes, VaultRecord] = {}
        self._tombstones: dict[bytes, int] = {}  # user_id -> erased version
        self._last_version = 0
        self._bundle: InstalledBundle | None = None
        self._staging: _Staging | None = None
        self._decommissioned = False
        self._lock = threading.Lock()

    # ----------------------------------------------------------------- the mutator

    def apply(self, command: bytes) -> bytes:
        """Apply one committed command; returns the encoded :data:`CommandResult`.
        Never raises for any input: undecodable bytes → ``Refused(MALFORMED_COMMAND)``."""
        try:
            decoded = decode_command(command)
        except DecodeError:
            return encode_result(Refused(Refusal.MALFORMED_COMMAND))
        with self._lock:
            return encode_result(self._apply(decoded))

    def _next_version(self) -> int:
        self._last_version += 1
        return self._last_version

    def _erase(self, record: VaultRecord) -> None:
        del self._records[record.user_id]
        self._tombstones[record.user_id] = record.version

    def _current(self, user_id: bytes, version: int) -> VaultRecord | None:
        record = self._records.get(user_id)
        return record if record is not None and record.version == version else None

    def _apply(self, command: Command) -> CommandResult:  # noqa: PLR0911 - one per command
        if self._decommissioned:  # terminal (invariant 5)
            match command:
                case Decommission():
                    return Decommissioned(0)
                case NoOp():
                    return Applied(0)
            return Refused(Refusal.DECOMMISSIONED)
        match command:
            case Register():
                return self._register(command)
            case BeginAttempt():
                return self._begin_attempt(command)
            case RecordSuccess():
                return self._record_success(command)
            case RecordFailure():
                return self._record_failure(command)
            case Replace():
                return self._replace(command)
            case Delete():
                return self._delete(command)
            case NoOp():
                return Applied(0)
            case BundlePart():
                return self._bundle_part(command)
            case Decommission():
                return self._decommission()
        raise AssertionError("unreachable")  # pragma: no cover

    def _decommission(self) -> CommandResult:
        """Drop every record (key material included), tombstone, the bundle and its
        staging; from now on the state is decommissioned (module docstring)."""
        erased = len(self._records) + len(self._tombstones)
        self._records = {}
        self._tombstones = {}
        self._bundle = None
        self._staging = None
        self._decommissioned = True
        return Decommissioned(erased)

    def _bundle_part(self, part: BundlePart) -> CommandResult:
        """Stage ``part``; install the bundle once its last part is in (module docstring).
        Refusals change nothing, except that a completed staging whose digest does not
        match is dropped."""
        current = self._bundle
        if current is not None and part.epoch <= current.epoch:
            if part.epoch < current.epoch:
                return Refused(Refusal.STALE_EPOCH)
            if part.total == len(current.bundle) and part.digest == current.digest:
                return BundleInstalled(current.epoch)  # idempotent
            return Refused(Refusal.EPOCH_CONFLICT)
        return self._stage(part)

    def _stage(self, part: BundlePart) -> CommandResult:
        """``part`` of a bundle above the current epoch (see :meth:`_bundle_part`)."""
        staging = self._staging
        if part.offset == 0:
            staging = _Staging(part.epoch, part.digest, part.total, part.data)
        elif (
            staging is None
            or (staging.epoch, staging.digest, staging.total)
            != (part.epoch, part.digest, part.total)
            or part.offset != len(staging.data)
        ):
            return Refused(Refusal.BUNDLE_SEQUENCE)
        else:
            staging = dataclasses.replace(staging, data=staging.data + part.data)
        if len(staging.data) < staging.total:
            self._staging = staging
            return BundleStaged(len(staging.data))
        self._staging = None
        if hashlib.sha256(staging.data).digest() != staging.digest:
            return Refused(Refusal.BUNDLE_SEQUENCE)
        self._bundle = InstalledBundle(staging.epoch, staging.data, staging.digest)
        return BundleInstalled(staging.epoch)

    def _register(self, command: Register) -> CommandResult:
        uid = command.user_id
        if not command.replace:
            if uid in self._records:
                return Refused(Refusal.ALREADY_REGISTERED)
            if uid in self._tombstones:
                return Refused(Refusal.LOCKED_OUT)
        version = self._next_version()
        self._tombstones.pop(uid, None)
        self._records[uid] = VaultRecord(
            uid,
            command.credential_nonce,
            command.registration_record,
            command.ksf_params,
            command.wrapped_key,
            command.guess_limit,
            0,
            version,
        )
        return Applied(version)

    def _begin_attempt(self, command: BeginAttempt) -> CommandResult:
        if command.user_id in self._tombstones:
            return Refused(Refusal.LOCKED_OUT)
        record = self._records.get(command.user_id)
        if record is None:
            return Refused(Refusal.UNKNOWN_USER)
        if record.guesses_used >= record.guess_limit:
            self._erase(record)
            return Refused(Refusal.LOCKED_OUT)
        record = dataclasses.replace(record, guesses_used=record.guesses_used + 1)
        self._records[record.user_id] = record
        return AttemptGranted(
            record.version,
            record.guesses_used,
            record.attempts_remaining,
            record.credential_nonce,
            record.registration_record,
            record.ksf_params,
        )

    def _record_success(self, command: RecordSuccess) -> CommandResult:
        record = self._current(command.user_id, command.record_version)
        if record is None:
            return Refused(Refusal.STALE_VERSION)
        self._records[record.user_id] = dataclasses.replace(record, guesses_used=0)
        return SuccessRecorded(record.wrapped_key)

    def _record_failure(self, command: RecordFailure) -> CommandResult:
        record = self._current(command.user_id, command.record_version)
        if record is None:
            return Refused(Refusal.STALE_VERSION)
        if record.guesses_used >= record.guess_limit:
            self._erase(record)
            return FailureRecorded(0, erased=True)
        return FailureRecorded(record.attempts_remaining, erased=False)

    def _replace(self, command: Replace) -> CommandResult:
        record = self._current(command.user_id, command.record_version)
        if record is None:
            return Refused(Refusal.STALE_VERSION)
        version = self._next_version()
        self._records[record.user_id] = dataclasses.replace(
            record,
            credential_nonce=command.credential_nonce,
            registration_record=command.registration_record,
            ksf_params=command.ksf_params,
            wrapped_key=command.wrapped_key,
            guesses_used=0,
            version=version,
        )
        return Applied(version)

    def _delete(self, command: Delete) -> CommandResult:
        record = self._current(command.user_id, command.record_version)
        if record is None:
            return Refused(Refusal.STALE_VERSION)
        del self._records[record.user_id]
        return Applied(0)

    # ----------------------------------------------------------------- readers

    def record(self, user_id: bytes) -> VaultRecord | None:
        """The committed record of ``user_id``, or ``None``."""
        with self._lock:
            return self._records.get(user_id)

    def is_locked_out(self, user_id: bytes) -> bool:
        """Whether ``user_id`` is tombstoned (its key material was erased)."""
        with self._lock:
            return user_id in self._tombstones

    @property
    def record_count(self) -> int:
        """Number of live records."""
        return len(self._records)

    @property
    def tombstone_count(self) -> int:
        """Number of tombstoned user ids."""
        return len(self._tombstones)

    @property
    def last_version(self) -> int:
        """The highest record version ever issued."""
        return self._last_version

    def bundle(self) -> InstalledBundle | None:
        """The current validation bundle, or ``None`` if none was ever installed (or the
        state is decommissioned)."""
        with self._lock:
            return self._bundle

    @property
    def decommissioned(self) -> bool:
        """Whether a ``Decommission`` was applied (terminal)."""
        return self._decommissioned

    # ----------------------------------------------------------------- snapshots

    def snapshot(self) -> bytes:
        """Canonical bytes of the whole state (sorted by user id)::

        version u8 || last_version u64 || decommissioned bool
        || u32 n || n x (user_id u8-len || material || limit u8 || used u8 || ver u64)
        || u32 m || m x (user_id u8-len || erased_version u64)
        || has_bundle bool || [epoch u64 || u32-len bundle]
        || has_staging bool || [epoch u64 || digest (32) || total u32 || u32-len data]
        """
        with self._lock:
            w = Writer().u8(SNAPSHOT_VERSION).u64(self._last_version)
            w.boolean(self._decommissioned)
            w.u32(len(self._records))
            for uid in sorted(self._records):
                rec = self._records[uid]
                _write_user(w, uid)
                _write_material(
                    w,
                    rec.credential_nonce,
                    rec.registration_record,
                    rec.ksf_params,
                    rec.wrapped_key,
                )
                w.u8(rec.guess_limit).u8(rec.guesses_used).u64(rec.version)
            w.u32(len(self._tombstones))
            for uid in sorted(self._tombstones):
                _write_user(w, uid)
                w.u64(self._tombstones[uid])
            bundle, staging = self._bundle, self._staging
            w.boolean(bundle is not None)
            if bundle is not None:
                w.u64(bundle.epoch)
                w.var_bytes(bundle.bundle, prefix=4, max_len=MAX_BUNDLE_LEN, min_len=1)
            w.boolean(staging is not None)
            if staging is not None:
                w.u64(staging.epoch).fixed(staging.digest, _DIGEST_LEN).u32(staging.total)
                w.var_bytes(staging.data, prefix=4, max_len=MAX_BUNDLE_LEN, min_len=1)
            return w.getvalue()

    @classmethod
    def from_snapshot(cls, data: bytes) -> VaultState:
        """Rebuild a state from :meth:`snapshot` output. Strict: unknown version,
        unsorted or duplicate ids, an id both live and tombstoned, a counter above its
        limit, a version above ``last_version``, invalid material, a staging that is
        complete, empty or not above the current bundle epoch, a decommissioned state
        that holds anything, or trailing bytes → :class:`DecodeError`. A version-2
        snapshot (before the decommissioned flag) is read as not decommissioned."""
        r = Reader(data)
        snapshot_version = r.u8()
        if snapshot_version not in (SNAPSHOT_VERSION, _SNAPSHOT_V2):
            raise DecodeError("unknown snapshot version")
        state = cls()
        last_version = r.u64()
        decommissioned = r.boolean() if snapshot_version == SNAPSHOT_VERSION else False
        previous = b""
        for _ in range(r.u32()):
            uid = _read_user(r)
            material = _read_material(r)
            limit, used, version = r.u8(), r.u8(), r.u64()
            if uid <= previous:
                raise DecodeError("snapshot records are not strictly sorted")
            problem = _material_problem(uid, *material)
            if problem is not None:
                raise DecodeError(f"snapshot record: {problem}")
            if limit < MIN_GUESS_LIMIT or used > limit:
                raise DecodeError("snapshot record counter out of range")
            if not 1 <= version <= last_version:
                raise DecodeError("snapshot record version out of range")
            state._records[uid] = VaultRecord(uid, *material, limit, used, version)
            previous = uid
        previous = b""
        for _ in range(r.u32()):
            uid = _read_user(r)
            version = r.u64()
            if uid <= previous or uid in state._records:
                raise DecodeError("snapshot tombstones are unsorted or overlap records")
            if not 1 <= version <= last_version:
                raise DecodeError("snapshot tombstone version out of range")
            state._tombstones[uid] = version
            previous = uid
        state._read_bundles(r)
        r.finish()
        if decommissioned and (
            state._records or state._tombstones or state._bundle or state._staging
        ):
            raise DecodeError("snapshot of a decommissioned state holds records or bundles")
        state._last_version = last_version
        state._decommissioned = decommissioned
        return state

    def _read_bundles(self, r: Reader) -> None:
        """The bundle and staging tail of a snapshot, into this (new) state."""
        if r.boolean():
            epoch = r.u64()
            self._bundle = _installed(
                epoch, r.var_bytes(prefix=4, max_len=MAX_BUNDLE_LEN, min_len=1)
            )
        if r.boolean():
            epoch, digest, total = r.u64(), r.fixed(_DIGEST_LEN), r.u32()
            data = r.var_bytes(prefix=4, max_len=MAX_BUNDLE_LEN, min_len=1)
            if not len(data) < total <= MAX_BUNDLE_LEN:
                raise DecodeError("snapshot bundle staging is complete or too long")
            if self._bundle is not None and epoch <= self._bundle.epoch:
                raise DecodeError("snapshot bundle staging is not above the current epoch")
            self._staging = _Staging(epoch, digest, total, data)

    def restore(self, data: bytes) -> None:
        """Replace this state, in place, with the one :meth:`snapshot` wrote as ``data``
        (a Raft snapshot installed or loaded; tick thread). Parsed strictly first
        (:meth:`from_snapshot`): on :class:`DecodeError` nothing changes."""
        loaded = VaultState.from_snapshot(data)
        with self._lock:
            self._records = loaded._records
            self._tombstones = loaded._tombstones
            self._last_version = loaded._last_version
            self._bundle = loaded._bundle
            self._staging = loaded._staging
            self._decommissioned = loaded._decommissioned

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VaultState):
            return NotImplemented
        return self.snapshot() == other.snapshot()

    def __repr__(self) -> str:
        epoch = None if self._bundle is None else self._bundle.epoch
        return (
            f"VaultState(records={self.record_count}, tombstones={self.tombstone_count}, "
            f"last_version={self.last_version}, bundle_epoch={epoch}, "
            f"decommissioned={self._decommissioned})"
        )
