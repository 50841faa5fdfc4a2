"""``VaultClient``: the SDK an app embeds (ADR 0008, "The client SDK").

Two halves, one object:

**Backups.** :meth:`VaultClient.create_backup` streams a directory or file as a tar
archive (:mod:`~hsmvault.client.archive`) through the streaming backup encryption
(:mod:`~hsmvault.crypto.backup_stream`) into an anonymous temporary file (the *spool*,
mode 0600, gone when closed), hashing as it goes; then uploads the spool in chunks with
``Upload-Offset``. The spool is needed because the upload must announce size and SHA-256
first; it also makes the upload resumable: after a failed chunk (network error, 5xx,
429) the client waits, asks the gateway where it stands (re-opening the upload with the
same size and digest is idempotent) and continues from *the server's* offset; a 409
carries that offset directly. Memory stays constant (a few chunk buffers); disk needs
the size of the backup. :meth:`VaultClient.restore_backup` streams the download through
decryption into :func:`~hsmvault.client.archive.extract_archive`, which publishes the
destination directory only after the last chunk authenticated.

**Key protection.** The backup key BK is made on the device
(:meth:`~hsmvault.crypto.backup_stream.BackupKey.generate`) and can be escrowed with the
fleet under one secret per user — a PIN, a password or a generated recovery code —
through the vault protocol (:mod:`~hsmvault.client.vault_protocol`, relayed by
``POST /v1/vault``). The user id is the token's ``sub``. Enrolling again needs
``replace=True`` (it overwrites the previous secret). :class:`~hsmvault.client.keystore.
DeviceKeystore` keeps BK on the device; the 64-digit key
(:func:`~hsmvault.client.recovery_codes.format_64_digit_key`) is the no-server option.

**Fleet trust (ADR 0010).** Every vault session starts by checking which fleet answered:
the first response carries the fleet id, the fleet's validation bundle and the fleet's
signature over the request, and a :class:`~hsmvault.client.fleet_trust.FleetTrust`
decides which keys the session may use (enrolment seals to their ``enc`` key and checks
their AKE key). Pass ``fleet_trust=`` (e.g. ``client.bundle_verifier.BundleFleetTrust``:
keys learnt from witnessed bundles) or ``fleet_keys=`` (pinned, e.g. shipped with the
app; wrapped in :class:`~hsmvault.client.fleet_trust.PinnedFleetTrust`). Only with
``unsafe_trust_gateway_fleet_keys=True`` does the client instead fetch
``GET /v1/fleet`` once and pin the gateway's answer for the life of the object (trust on
first use; the CLI uses it against a loopback gateway). A gateway that lies there can
stand in for the fleet and attack the PIN offline.

**Fleet rotation (ADR 0013).** With bundle trust
(:class:`~hsmvault.client.bundle_verifier.BundleFleetTrust`), a successful
:meth:`VaultClient.recover` whose session's fleet is ``retiring`` in the verified fleet
directory, while an ``active`` fleet exists, also moves the user there — silently, the
same backup key comes back either way:

1. read the record's guess limit from the old fleet (after the successful login its
   counter is 0, so ``AttemptsRemaining`` is the limit; a lagging node can only report
   fewer);
2. enrol the same secret and the same backup key at the active fleet (the first active
   fleet of the directory valid now, addressed with the ``Hsmvault-Fleet`` header;
   ``replace=True``, so a half-done earlier move is simply redone; a registration
   answered by any other fleet is refused before anything is stored), which makes the
   gateway assign the user to it;
3. only then delete the escrow at the old fleet, in the recovery's own authenticated
   session.

Any failure of the move is logged (by type) and swallowed — it never fails the recovery
and is tried again at the next one; until then the user stays on the old fleet, which
keeps working until its ``not_after``. If step 3 fails after step 2 succeeded, the user is
already served by the new fleet and the leftover old record is erased when the old fleet
is decommissioned. Pinned trust (``fleet_keys=``) never moves anyone (it has no
directory). ``migrate_retiring=False`` turns the move off.

Vault operations never retry on their own (a repeated login costs a guess); backup
transfers and idempotent reads retry per :class:`RetryPolicy`.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Final, Literal, TypeVar

import httpx

from hsmvault.client import vault_protocol
from hsmvault.client.archive import ArchiveInfo, ExtractInfo, extract_archive, write_archive
from hsmvault.client.bundle_verifier import BundleFleetTrust
from hsmvault.client.errors import (
    GatewayError,
    NotFound,
    Unavailable,
    UploadOffsetMismatch,
)
from hsmvault.client.fleet_trust import FleetTrust, PinnedFleetTrust
from hsmvault.client.http import (
    MAX_CHUNK_BYTES,
    BackupInfo,
    GatewayHttp,
    TokenProvider,
    check_backup_id,
    decode_token_subject,
)
from hsmvault.client.passkeys import Authenticator, PasskeyApi, PasskeyInfo, flows
from hsmvault.client.recovery_codes import (
    DEFAULT_SECRET_POLICY,
    Password,
    Pin,
    RecoveryCode,
    SecretPolicy,
    VaultSecret,
    login_secret_from_text,
)
from hsmvault.client.vault_protocol import (
    DEFAULT_PROTOCOL_CONFIG,
    Recovery,
    Transport,
    VaultProtocolConfig,
)
from hsmvault.crypto.backup_stream import BackupDecryptor, BackupEncryptor, BackupKey
from hsmvault.errors import InvalidParameter, VerificationError
from hsmvault.fleet.fleet_keys import FleetPublicKeys
from hsmvault.transparency.artifact import STATUS_ACTIVE, STATUS_RETIRING
from hsmvault.wire.hsm_api import (
    DEFAULT_GUESS_LIMIT,
    MAX_GUESS_LIMIT,
    MAX_USER_ID_LEN,
    MIN_GUESS_LIMIT,
)

__all__ = [
    "DEFAULT_UPLOAD_CHUNK",
    "Progress",
    "ProgressCallback",
    "RestoreResult",
    "RetryPolicy",
    "VaultClient",
]

_log = logging.getLogger(__name__)

#: Upload request size: 4 MiB (the gateway takes at most 8 MiB).
DEFAULT_UPLOAD_CHUNK: Final = 4 * 1024 * 1024
_T = TypeVar("_T")
_PIECE: Final = 256 * 1024


@dataclass(frozen=True, slots=True)
class Progress:
    """A progress report. ``phase``: ``"archive"`` (plaintext bytes archived and
    encrypted), ``"upload"`` / ``"download"`` (ciphertext bytes), ``"restore"`` (file
    bytes written). ``total`` is known for uploads (and downloads when listed)."""

    phase: _Phase
    done: int
    total: int | None = None


ProgressCallback = Callable[[Progress], object]
_Phase = Literal["archive", "upload", "download", "restore"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries of backup transfers and idempotent reads (never of vault operations).

    ``attempts`` — tries per step without progress (default 5); the wait before try
    ``n`` is ``min(max_delay, base_delay * 2**(n-1))``, or the server's ``Retry-After``
    when it gave one; a ``Retry-After`` above ``max_delay`` is not waited for — the
    error is raised (the caller decides)."""

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.base_delay < 0 or self.max_delay < self.base_delay:
            raise InvalidParameter("retry policy: attempts >= 1, 0 <= base_delay <= max_delay")


@dataclass(frozen=True, slots=True)
class RestoreResult:
    """What :meth:`VaultClient.restore_backup` restored, and how many ciphertext bytes
    it downloaded."""

    extract: ExtractInfo
    ciphertext_bytes: int


class _EncryptingSink(io.RawIOBase):
    """A writable stream: plaintext in, ciphertext appended to ``spool``, hashed."""

    def __init__(self, encryptor: BackupEncryptor, spool: IO[bytes]) -> None:
        self._enc = encryptor
        self._spool = spool
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def _emit(self, data: bytes) -> None:
        if data:
            self._spool.write(data)
            self.sha256.update(data)
            self.size += len(data)

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self._emit(self._enc.update(data))
        return len(data)

    def finish(self) -> None:
        self._emit(self._enc.finalize())


class _DecryptingReader(io.RawIOBase):
    """A readable stream of verified plaintext from ciphertext pieces."""

    def __init__(
        self, backup_key: BackupKey, pieces: Iterator[bytes], report: Callable[[int], None]
    ):
        self._dec = BackupDecryptor(backup_key)
        self._pieces = pieces
        self._report = report
        self._buffer = b""
        self._pos = 0
        self._eof = False
        self.ciphertext_bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        while self._pos >= len(self._buffer):
            if self._eof:
                return 0
            piece = next(self._pieces, None)
            if piece is None:
                self._dec.finalize()  # raises TruncatedBackupError if the end never came
                self._eof = True
                return 0
            self.ciphertext_bytes += len(piece)
            self._report(self.ciphertext_bytes)
            self._buffer, self._pos = self._dec.update(piece), 0
        n = min(len(target), len(self._buffer) - self._pos)
        target[:n] = self._buffer[self._pos : self._pos + n]
        self._pos += n
        return n

    def drain(self) -> None:
        """Read to the end, so the final chunk and trailing bytes are checked."""
        sink = bytearray(1 << 16)
        while self.readinto(sink):
            pass


def _read_range(spool: IO[bytes], offset: int, length: int) -> Iterator[bytes]:
    """``length`` bytes of ``spool`` from ``offset``, in pieces (the upload body is
    streamed from disk, never held whole)."""
    spool.seek(offset)
    while length > 0:
        piece = spool.read(min(_PIECE, length))
        if not piece:
            raise OSError("the spool file is shorter than expected")
        length -= len(piece)
        yield piece


class VaultClient:
    """The SDK (see the module docstring).

    ``gateway_url`` — the gateway's base URL; ``token_provider`` — returns a current JWT
    (called per request); ``fleet_trust`` — how each session's fleet is checked, or
    ``fleet_keys`` — pinned fleet public keys (one of the two is strongly recommended;
    not both); ``http`` — an ``httpx.Client`` to use (tests pass one with a
    ``MockTransport``); ``progress`` — called with :class:`Progress` reports;
    ``user_id`` — the vault user id, default the token's ``sub`` (must equal it: the
    gateway refuses others); ``protocol`` — KSF policy and enrolment parameters;
    ``secret_policy`` — rules for PINs and passwords; ``upload_chunk`` — bytes per
    upload request (≤ 8 MiB); ``retry`` and ``sleep`` — transfer retries (``sleep`` is
    injectable for tests); ``spool_dir`` — where the temporary ciphertext spool lives;
    ``migrate_retiring`` — move a user off a retiring fleet at recovery (module
    docstring, "Fleet rotation"; default on); ``clock`` — seconds since the Unix epoch,
    for the fleet validity windows of that move.
    """

    def __init__(
        self,
        gateway_url: str,
        token_provider: TokenProvider,
        *,
        fleet_keys: FleetPublicKeys | None = None,
        fleet_trust: FleetTrust | None = None,
        unsafe_trust_gateway_fleet_keys: bool = False,
        http: httpx.Client | None = None,
        progress: ProgressCallback | None = None,
        user_id: str | None = None,
        protocol: VaultProtocolConfig = DEFAULT_PROTOCOL_CONFIG,
        secret_policy: SecretPolicy = DEFAULT_SECRET_POLICY,
        upload_chunk: int = DEFAULT_UPLOAD_CHUNK,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], object] = time.sleep,
        spool_dir: str | os.PathLike[str] | None = None,
        migrate_retiring: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 1 <= upload_chunk <= MAX_CHUNK_BYTES:
            raise InvalidParameter(f"upload_chunk must be in 1..{MAX_CHUNK_BYTES}")
        if fleet_keys is not None and fleet_trust is not None:
            raise InvalidParameter("pass fleet_keys or fleet_trust, not both")
        if fleet_keys is not None and not isinstance(fleet_keys, FleetPublicKeys):
            raise InvalidParameter("fleet_keys must be FleetPublicKeys")
        self._http = GatewayHttp(gateway_url, token_provider, client=http)
        self._token_provider = token_provider
        self._fleet_keys = fleet_keys
        self._fleet_trust: FleetTrust | None = (
            fleet_trust
            if fleet_trust is not None
            else (PinnedFleetTrust(fleet_keys) if fleet_keys is not None else None)
        )
        self._unsafe_tofu = unsafe_trust_gateway_fleet_keys
        self._progress = progress
        self._user_id = user_id
        self._protocol = protocol
        self._secret_policy = secret_policy
        self._chunk = upload_chunk
        self._retry = retry if retry is not None else RetryPolicy()
        self._sleep = sleep
        self._spool_dir = spool_dir
        self._migrate_retiring = migrate_retiring
        self._clock = clock

    def close(self) -> None:
        """Close the HTTP client if the SDK made it."""
        self._http.close()

    def __enter__(self) -> VaultClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._fleet_keys is not None:
            trust = "pinned fleet keys"
        elif self._fleet_trust is not None:
            trust = f"fleet trust {type(self._fleet_trust).__name__}"
        else:
            trust = "no fleet trust"
        return f"VaultClient({self._http!r}, {trust})"

    # ------------------------------------------------------------ plumbing

    def _report(self, phase: _Phase, done: int, total: int | None = None) -> None:
        if self._progress is not None:
            self._progress(Progress(phase, done, total))

    def _wait(self, attempt: int, error: Unavailable) -> None:
        """Sleep before retry ``attempt`` (1-based) or re-raise ``error`` when out of
        attempts or the server asks for more than ``max_delay``."""
        policy = self._retry
        if attempt >= policy.attempts:
            raise error
        if error.retry_after is not None:
            if error.retry_after > policy.max_delay:
                raise error
            delay = error.retry_after
        else:
            delay = min(policy.max_delay, policy.base_delay * 2 ** (attempt - 1))
        _log.info("retrying after %s (%.1f s)", type(error).__name__, delay)
        self._sleep(delay)

    def _retrying(self, call: Callable[[], _T]) -> _T:
        attempt = 1
        while True:
            try:
                return call()
            except Unavailable as exc:
                self._wait(attempt, exc)
                attempt += 1

    def user_id(self) -> bytes:
        """The vault user id: ``user_id`` if given, else the token's ``sub``, UTF-8."""
        name = self._user_id
        if name is None:
            name = decode_token_subject(self._token_provider())
        raw = name.encode("utf-8")
        if not 1 <= len(raw) <= MAX_USER_ID_LEN:
            raise InvalidParameter(f"the user id must be 1..{MAX_USER_ID_LEN} bytes in UTF-8")
        return raw

    def _send(self, request: bytes) -> bytes:
        return self._http.vault(request)

    def _send_to(self, fleet_id: bytes) -> Transport:
        """A transport to the configured fleet ``fleet_id`` (header ``Hsmvault-Fleet``)."""
        return lambda request: self._http.vault(request, fleet_id=fleet_id)

    # ------------------------------------------------------------ fleet keys

    def fleet_keys(self) -> FleetPublicKeys:
        """The pinned fleet public keys; else, only with
        ``unsafe_trust_gateway_fleet_keys=True``, ``GET /v1/fleet`` once (then kept:
        trust on first use — a lying gateway could then stand in for the fleet and
        attack the PIN offline; see the module docstring). Without either (also with
        only ``fleet_trust``, whose keys are per session), raises
        :class:`~hsmvault.errors.VerificationError` before anything secret is sent."""
        if self._fleet_keys is None:
            if not self._unsafe_tofu:
                raise VerificationError(
                    "no pinned fleet keys: pass fleet_keys=... or fleet_trust=..., or"
                    " unsafe_trust_gateway_fleet_keys=True for a gateway you trust"
                )
            keys = self._retrying(self._http.fleet)
            _log.warning("using fleet keys fetched from the gateway (not pinned)")
            self._fleet_keys = keys
        return self._fleet_keys

    def fleet_trust(self) -> FleetTrust:
        """How each vault session's fleet is checked: ``fleet_trust``, or
        :class:`PinnedFleetTrust` of the pinned (or, unsafely, gateway-given)
        :meth:`fleet_keys`. Raises :class:`~hsmvault.errors.VerificationError` if there
        is neither, before anything secret is sent."""
        if self._fleet_trust is None:
            self._fleet_trust = PinnedFleetTrust(self.fleet_keys())
        return self._fleet_trust

    # ------------------------------------------------------------ backups

    def create_backup(
        self,
        path: str | os.PathLike[str],
        backup_id: str,
        *,
        backup_key: BackupKey,
        label: str = "",
    ) -> BackupInfo:
        """Archive, encrypt and upload ``path`` (a directory or a file) as ``backup_id``,
        replacing the previous backup of that id on commit. Returns the committed
        backup. Raises :class:`Unavailable`/:class:`RateLimited` once retries are
        exhausted (the upload can be resumed by calling again: the gateway keeps the
        bytes of an upload with the same size and digest), ``OSError`` for unreadable
        sources."""
        check_backup_id(backup_id)
        if not isinstance(backup_key, BackupKey):
            raise InvalidParameter("backup_key must be a BackupKey")
        with tempfile.TemporaryFile(dir=self._spool_dir) as spool:
            sink = _EncryptingSink(BackupEncryptor(backup_key), spool)
            info: ArchiveInfo = write_archive(
                path, sink, progress=lambda n: self._report("archive", n)
            )
            sink.finish()
            spool.flush()
            if info.skipped:
                _log.warning("backup skipped %d unsupported entries", len(info.skipped))
            return self._upload(spool, backup_id, sink.size, sink.sha256.hexdigest(), label)

    def _upload(
        self, spool: IO[bytes], backup_id: str, size: int, sha256: str, label: str
    ) -> BackupInfo:
        def open_upload() -> tuple[str, int]:
            session = self._retrying(
                lambda: self._http.start_upload(backup_id, size=size, sha256=sha256, label=label)
            )
            return session.upload_id, session.offset

        upload_id, offset = open_upload()
        stalls = 1  # tries without progress
        while offset < size:
            self._report("upload", offset, size)
            length = min(self._chunk, size - offset)
            try:
                new_offset = self._http.put_chunk(
                    backup_id,
                    upload_id,
                    offset=offset,
                    data=_read_range(spool, offset, length),
                    length=length,
                )
            except UploadOffsetMismatch as exc:
                if stalls >= self._retry.attempts:
                    raise
                stalls += 1
                if exc.offset is None:
                    upload_id, offset = open_upload()
                else:
                    offset = exc.offset
                _log.info("upload resumes at the gateway's offset")
            except Unavailable as exc:
                self._wait(stalls, exc)
                stalls += 1
                upload_id, offset = open_upload()  # the chunk may have landed
            else:
                if not offset < new_offset <= size:
                    raise GatewayError("gateway reported an impossible upload offset", status=200)
                offset, stalls = new_offset, 1
            if offset > size:
                raise GatewayError("gateway holds more bytes than the upload", status=409)
        self._report("upload", size, size)
        return self._commit(backup_id, upload_id, sha256)

    def _commit(self, backup_id: str, upload_id: str, sha256: str) -> BackupInfo:
        attempt = 1
        while True:
            try:
                return self._http.commit_upload(backup_id, upload_id)
            except Unavailable as exc:
                self._wait(attempt, exc)
                attempt += 1
            except NotFound:
                if attempt == 1:
                    raise
                # An earlier try may have committed before its answer was lost.
                for backup in self.list_backups():
                    if backup.backup_id == backup_id and backup.sha256 == sha256:
                        return backup
                raise

    def list_backups(self) -> list[BackupInfo]:
        """The token user's committed backups."""
        return self._retrying(self._http.list_backups)

    def delete_backup(self, backup_id: str) -> None:
        """Delete a backup (404 → :class:`NotFound`)."""
        check_backup_id(backup_id)
        self._retrying(lambda: self._http.delete_backup(backup_id))

    def restore_backup(
        self, backup_id: str, dest: str | os.PathLike[str], *, backup_key: BackupKey
    ) -> RestoreResult:
        """Download, decrypt and extract ``backup_id`` into the new directory ``dest``.
        ``dest`` appears only if the whole backup authenticated and every archive
        member passed the checks of :mod:`~hsmvault.client.archive`; otherwise it does
        not exist afterwards. Raises :class:`~hsmvault.errors.WrongKeyError` and the
        other backup-stream errors, :class:`~hsmvault.client.errors.ArchiveError`,
        :class:`NotFound`, :class:`Unavailable` (not retried: a restore restarts)."""
        check_backup_id(backup_id)
        if not isinstance(backup_key, BackupKey):
            raise InvalidParameter("backup_key must be a BackupKey")
        with self._http.download(backup_id) as pieces:
            reader = _DecryptingReader(backup_key, pieces, lambda n: self._report("download", n))
            extracted = extract_archive(
                io.BufferedReader(reader, 1 << 16),
                dest,
                progress=lambda n: self._report("restore", n),
                before_publish=reader.drain,
            )
        return RestoreResult(extracted, reader.ciphertext_bytes)

    # ------------------------------------------------------------ key protection

    def _enroll(
        self, secret: VaultSecret, backup_key: BackupKey, guess_limit: int, replace: bool
    ) -> None:
        vault_protocol.enroll(
            self._send,
            self.user_id(),
            secret,
            backup_key,
            self.fleet_trust(),
            guess_limit=guess_limit,
            replace=replace,
            config=self._protocol,
        )

    def protect_with_pin(
        self,
        pin: str | Pin,
        backup_key: BackupKey,
        *,
        guess_limit: int = DEFAULT_GUESS_LIMIT,
        replace: bool = False,
    ) -> None:
        """Escrow ``backup_key`` under a PIN (checked against the secret policy:
        :class:`~hsmvault.client.errors.WeakSecret`). ``replace=True`` overwrites an
        existing escrow (else :class:`~hsmvault.client.errors.AlreadyEnrolled`)."""
        secret = pin if isinstance(pin, Pin) else Pin(pin, policy=self._secret_policy)
        self._enroll(secret, backup_key, guess_limit, replace)

    def protect_with_password(
        self,
        password: str | Password,
        backup_key: BackupKey,
        *,
        guess_limit: int = DEFAULT_GUESS_LIMIT,
        replace: bool = False,
    ) -> None:
        """Escrow ``backup_key`` under a password (see :meth:`protect_with_pin`)."""
        secret = (
            password
            if isinstance(password, Password)
            else Password(password, policy=self._secret_policy)
        )
        self._enroll(secret, backup_key, guess_limit, replace)

    def protect_with_recovery_code(
        self,
        backup_key: BackupKey,
        *,
        guess_limit: int = DEFAULT_GUESS_LIMIT,
        replace: bool = False,
    ) -> RecoveryCode:
        """Escrow ``backup_key`` under a freshly generated recovery code and return it.
        Show :meth:`RecoveryCode.display` to the user once; it is not stored anywhere."""
        code = RecoveryCode.generate()
        self._enroll(code, backup_key, guess_limit, replace)
        return code

    def recover(self, secret: VaultSecret | str) -> BackupKey:
        """The escrowed backup key. Text is routed by
        :func:`~hsmvault.client.recovery_codes.login_secret_from_text` (a mistyped
        recovery code is refused locally, before a guess is spent). Raises
        :class:`~hsmvault.client.errors.InvalidLogin` (``attempts_remaining``),
        :class:`~hsmvault.errors.LockedOut`, :class:`Unavailable`,
        :class:`~hsmvault.client.errors.FleetDecommissioned`.

        If the answering fleet is retiring, the user is then moved to the active fleet
        (module docstring, "Fleet rotation"); that never changes the result or raises."""
        user_id = self.user_id()
        vault_secret = self._as_secret(secret)
        trust = self.fleet_trust()
        recovery = vault_protocol.recover_session(
            self._send, user_id, vault_secret, trust, config=self._protocol
        )
        if self._migrate_retiring:
            self._move_off_retiring(user_id, vault_secret, recovery, trust)
        return recovery.backup_key

    # ------------------------------------------------------------ fleet rotation (ADR 0013)

    def _migration_target(self, trust: FleetTrust, fleet_id: bytes) -> bytes | None:
        """The active fleet to move to when ``fleet_id`` is retiring in the verified
        directory, else ``None``."""
        if not isinstance(trust, BundleFleetTrust):
            return None
        artifact = trust.last_artifact
        if artifact is None:
            return None
        entry = artifact.entry_for(fleet_id)
        if entry is None or entry.status != STATUS_RETIRING:
            return None
        now = self._clock()
        for candidate in artifact.fleets:  # ascending fleet id: every client picks alike
            if candidate.status == STATUS_ACTIVE and candidate.valid_at(now):
                return candidate.fleet_id
        return None

    def _move_off_retiring(
        self, user_id: bytes, secret: VaultSecret, recovery: Recovery, trust: FleetTrust
    ) -> None:
        """Steps 1-3 of "Fleet rotation" (module docstring). Never raises."""
        try:
            target = self._migration_target(trust, recovery.fleet_id)
            if target is None:
                return
            old = self._send_to(recovery.fleet_id)
            limit = vault_protocol.attempts_remaining(old, user_id)  # 1.
            limit = min(max(limit, MIN_GUESS_LIMIT), MAX_GUESS_LIMIT)
            vault_protocol.enroll(  # 2.
                self._send_to(target),
                user_id,
                secret,
                recovery.backup_key,
                trust,
                guess_limit=limit,
                replace=True,
                expect_fleet=target,
                config=self._protocol,
            )
            vault_protocol.delete_recovered(self._send, recovery)  # 3.
        except Exception as exc:  # never fail a recovery that succeeded (retry next time)
            _log.warning(
                "moving the escrow off a retiring fleet failed (%s); retrying at the next recovery",
                type(exc).__name__,
            )
        else:
            _log.info("moved the escrow from a retiring fleet to an active one")

    def change_secret(
        self, old: VaultSecret | str, new: Pin | Password | RecoveryCode
    ) -> BackupKey:
        """Replace the escrow secret (the same backup key stays escrowed, which is
        returned). ``new`` is typed so the policy applies to it: build it with
        ``Pin(...)``, ``Password(...)`` or ``RecoveryCode.generate()``."""
        if not isinstance(new, Pin | Password | RecoveryCode):
            raise InvalidParameter("the new secret must be a Pin, Password or RecoveryCode")
        return vault_protocol.change_secret(
            self._send,
            self.user_id(),
            self._as_secret(old),
            new,
            self.fleet_trust(),
            config=self._protocol,
        )

    def disable_escrow(self, secret: VaultSecret | str) -> None:
        """Delete the escrowed key in every replica (needs the secret; immediate and
        irreversible). Backups stay; only the device's BK or the 64-digit key opens
        them afterwards."""
        vault_protocol.delete_escrow(
            self._send,
            self.user_id(),
            self._as_secret(secret),
            self.fleet_trust(),
            config=self._protocol,
        )

    def attempts_remaining(self) -> int:
        """Guesses left on this user's escrow (informational)."""
        return vault_protocol.attempts_remaining(self._send, self.user_id())

    @staticmethod
    def _as_secret(secret: VaultSecret | str) -> VaultSecret:
        return login_secret_from_text(secret) if isinstance(secret, str) else secret

    # ------------------------------------------------------------ passkeys (ADR 0011)

    def protect_with_passkey(self, authenticator: Authenticator, backup_key: BackupKey) -> bytes:
        """Register a new passkey with ``authenticator`` (an app's platform API, see
        :class:`~hsmvault.client.passkeys.Authenticator`) and store ``backup_key``
        wrapped under its PRF output; returns the credential id. Adding a passkey needs
        the backup key itself: the device has it, or the caller gets it first with
        :meth:`recover` (PIN, password, recovery code) or :meth:`recover_with_passkey`.
        Raises :class:`~hsmvault.client.passkeys.PrfUnavailable` if the authenticator
        has no PRF (the new credential is then removed)."""
        return flows.protect(PasskeyApi(self._http), authenticator, backup_key)

    def recover_with_passkey(
        self, authenticator: Authenticator, credential_id: bytes | None = None
    ) -> BackupKey:
        """The backup key protected by one of the user's passkeys (``credential_id``:
        only that one). The gateway releases the wrapped key only after verifying the
        assertion (user verification required). Raises
        :class:`~hsmvault.client.passkeys.NoWrappedKey`,
        :class:`~hsmvault.client.passkeys.PasskeyRefused`,
        :class:`~hsmvault.errors.VerificationError` (wrong PRF output)."""
        return flows.recover(PasskeyApi(self._http), authenticator, credential_id)

    def list_passkeys(self) -> list[PasskeyInfo]:
        """The user's passkeys (ids, times, whether each protects a key)."""
        return flows.list_passkeys(PasskeyApi(self._http))

    def remove_passkey(self, credential_id: bytes) -> None:
        """Remove a passkey and its wrapped key at once (404 → ``NotFound``)."""
        flows.remove(PasskeyApi(self._http), credential_id)

    def rotate_passkey_salt(
        self, authenticator: Authenticator, credential_id: bytes, backup_key: BackupKey
    ) -> None:
        """Give the passkey a new server-chosen PRF salt and re-wrap ``backup_key``
        under the new PRF output (one assertion; the gateway commits salt and wrap
        together, so the old PRF output no longer opens anything)."""
        flows.rotate_salt(PasskeyApi(self._http), authenticator, credential_id, backup_key)
