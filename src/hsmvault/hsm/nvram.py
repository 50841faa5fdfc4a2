"""The node's NVRAM: the few facts an HSM node keeps *inside* its trust boundary.

On a real HSM this is the device's own non-volatile memory: the host can neither read nor
write it, and in particular cannot put an old copy back. On a local deployment (tests,
demos, the embedded default) a directory stands in for it: :class:`DirectoryNvram`. That
directory's path must contain ``nvram`` and must be kept apart from everything host-side,
so that tests and auditors can attack exactly the host-side state (copy it, put an old
copy back) and leave the HSM's inside alone. Everything else a node persists lives
host-side and is sealed by its key custody (:mod:`hsmvault.hsm.custody`).

Fields (all typed, all in one record that is rewritten atomically):

* the node identity (:class:`NodeIdentity`: signature algorithm and public key; the node
  id is derived from them),
* the fleet membership (an ordered tuple of node ids; plain bytes for now),
* a monotonic **epoch** counter: :meth:`Nvram.advance` never goes backwards, an attempt to
  set a lower value raises :class:`RollbackError`,
* for the software custody backend only, its key material
  (:class:`SoftwareKeyMaterial`), which on a local deployment is therefore a file on the
  host's disk: the software backend does not protect keys from the host.

Errors: a corrupted or malformed NVRAM record raises :class:`hsmvault.errors.DecodeError`
when it is loaded; no message ever contains key material.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import hashlib
import hmac
import os
import secrets
import struct
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from hsmvault.closing import ClosingContext
from hsmvault.durable_files import replace_file_atomically
from hsmvault.errors import (
    DecodeError,
    InvalidParameter,
    RollbackError,
    VaultError,
)

__all__ = [
    "EPOCH_MAX",
    "MAX_MEMBERS",
    "MAX_NODE_ID_LEN",
    "NVRAM_PATH_MARKER",
    "DirectoryNvram",
    "MemoryNvram",
    "NodeIdentity",
    "Nvram",
    "NvramError",
    "NvramState",
    "RollbackError",
    "SignatureAlgorithm",
    "SoftwareKeyMaterial",
]

#: A local NVRAM directory's path must contain this string (see the module docstring).
NVRAM_PATH_MARKER = "nvram"
#: The epoch is an unsigned 64-bit counter.
EPOCH_MAX = 2**64 - 1
#: Fleet membership limits: node ids are 1..64 bytes, at most this many members.
MAX_NODE_ID_LEN = 64
MAX_MEMBERS = 1024

_MAGIC = b"HVNV"
_VERSION = 1
_CHECKSUM_LEN = 32
_STATE_FILE = "state.nvram"
_LOCK_FILE = "lock"
_TMP_PREFIX = ".state-"


class NvramError(VaultError):
    """The NVRAM cannot be used: its directory is in use by another process, it is not a
    directory, or a write failed."""


class SignatureAlgorithm(enum.IntEnum):
    """The algorithm of a node's identity key (one byte in every encoding)."""

    #: Ed25519 (RFC 8032, pure). Preferred; a 32-byte public key, 64-byte signatures.
    ED25519 = 1
    #: ECDSA over P-256 with SHA-256. The fallback for tokens without CKM_EDDSA; a
    #: 65-byte uncompressed SEC1 public key, 64-byte ``r || s`` signatures.
    ECDSA_P256_SHA256 = 2


_PUBLIC_KEY_LEN = {SignatureAlgorithm.ED25519: 32, SignatureAlgorithm.ECDSA_P256_SHA256: 65}


def _spki_der(algorithm: SignatureAlgorithm, public_key: bytes) -> bytes:
    """SubjectPublicKeyInfo DER of a raw public key; ValueError if it is not one."""
    key: ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
    if algorithm is SignatureAlgorithm.ED25519:
        key = ed25519.Ed25519PublicKey.from_public_bytes(public_key)
    else:
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), public_key)
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@dataclass(frozen=True)
class NodeIdentity:
    """A node's public identity: its signature algorithm and raw public key.

    ``node_id`` is the key's public fingerprint, SHA-256 of its DER SubjectPublicKeyInfo
    (what ``openssl pkey -pubin -outform DER | sha256sum`` prints), so anyone holding the
    public key can recompute it. Construction validates the key and raises
    :class:`~hsmvault.errors.InvalidParameter` if it is not a valid key of ``algorithm``.
    """

    algorithm: SignatureAlgorithm
    public_key: bytes
    node_id: bytes = field(init=False, compare=False)

    def __post_init__(self) -> None:
        try:
            algorithm = SignatureAlgorithm(self.algorithm)
        except ValueError:
            raise InvalidParameter("unknown signature algorithm") from None
        public_key = bytes(self.public_key)
        if len(public_key) != _PUBLIC_KEY_LEN[algorithm]:
            raise InvalidParameter("public key has the wrong length for its algorithm")
        try:
            spki = _spki_der(algorithm, public_key)
        except ValueError:
            raise InvalidParameter("public key is not a valid key of its algorithm") from None
        object.__setattr__(self, "algorithm", algorithm)
        object.__setattr__(self, "public_key", public_key)
        object.__setattr__(self, "node_id", hashlib.sha256(spki).digest())

    def spki_der(self) -> bytes:
        """The DER SubjectPublicKeyInfo of the identity key (what ``node_id`` hashes)."""
        return _spki_der(self.algorithm, self.public_key)


@dataclass(frozen=True, eq=False, repr=False)
class SoftwareKeyMaterial:
    """The secret keys of the software custody backend: a 32-byte AES-256-GCM sealing key
    and a 32-byte Ed25519 seed. Secret: ``repr`` is redacted, equality is constant-time.

    Only :class:`~hsmvault.hsm.custody.software.SoftwareCustody` uses this; with the
    PKCS#11 backend the keys never leave the token and this field stays empty.
    """

    sealing_key: bytes
    signing_seed: bytes

    ENCODED_LEN = 64

    def __post_init__(self) -> None:
        if len(self.sealing_key) != 32 or len(self.signing_seed) != 32:
            raise InvalidParameter("software key material is two 32-byte keys")

    @classmethod
    def generate(cls) -> SoftwareKeyMaterial:
        """Fresh keys from the operating system's CSPRNG."""
        return cls(secrets.token_bytes(32), secrets.token_bytes(32))

    def to_bytes(self) -> bytes:
        return self.sealing_key + self.signing_seed

    @classmethod
    def from_bytes(cls, data: bytes) -> SoftwareKeyMaterial:
        if len(data) != cls.ENCODED_LEN:
            raise DecodeError("software key material must be 64 bytes")
        return cls(bytes(data[:32]), bytes(data[32:]))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SoftwareKeyMaterial):
            return NotImplemented
        return hmac.compare_digest(self.to_bytes(), other.to_bytes())

    __hash__ = None  # type: ignore[assignment]  # secrets are not hashable

    def __repr__(self) -> str:
        return "SoftwareKeyMaterial(<redacted>)"


def _check_node_id(node_id: bytes) -> bytes:
    if not isinstance(node_id, bytes | bytearray):
        raise InvalidParameter("a node id is bytes")
    if not 1 <= len(node_id) <= MAX_NODE_ID_LEN:
        raise InvalidParameter(f"a node id is 1..{MAX_NODE_ID_LEN} bytes")
    return bytes(node_id)


def _check_membership(members: Sequence[bytes]) -> tuple[bytes, ...]:
    checked = tuple(_check_node_id(m) for m in members)
    if len(checked) > MAX_MEMBERS:
        raise InvalidParameter(f"a fleet has at most {MAX_MEMBERS} members")
    if len(set(checked)) != len(checked):
        raise InvalidParameter("fleet membership lists a node twice")
    return checked


class _Reader:
    """Strict sequential parsing: every shortfall is a DecodeError."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self._pos + n > len(self._data):
            raise DecodeError("NVRAM record is truncated")
        chunk = self._data[self._pos : self._pos + n]
        self._pos += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def flag(self) -> bool:
        value = self.u8()
        if value not in (0, 1):
            raise DecodeError("NVRAM record has an invalid presence flag")
        return value == 1

    def finish(self) -> None:
        if self._pos != len(self._data):
            raise DecodeError("NVRAM record has trailing bytes")


@dataclass(frozen=True)
class NvramState:
    """One consistent NVRAM record. Immutable; :class:`Nvram` swaps whole records.

    Encoding (version 1, big-endian)::

        "HVNV" | version u8 | epoch u64
        | identity flag u8 [ algorithm u8 | key length u8 | public key ]
        | member count u16 { id length u8 | node id }
        | software-keys flag u8 [ 64 bytes ]
        | SHA-256 of everything before it

    The checksum catches accidental corruption (a torn or bit-rotted file); it is not an
    authenticity check, since the NVRAM is inside the trust boundary.
    """

    epoch: int = 0
    identity: NodeIdentity | None = None
    membership: tuple[bytes, ...] = ()
    software_keys: SoftwareKeyMaterial | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.epoch <= EPOCH_MAX:
            raise InvalidParameter("epoch out of range")
        object.__setattr__(self, "membership", _check_membership(self.membership))

    def to_bytes(self) -> bytes:
        out = bytearray(_MAGIC)
        out += struct.pack(">BQ", _VERSION, self.epoch)
        if self.identity is None:
            out.append(0)
        else:
            key = self.identity.public_key
            out += struct.pack(">BBB", 1, self.identity.algorithm, len(key)) + key
        out += struct.pack(">H", len(self.membership))
        for member in self.membership:
            out += struct.pack(">B", len(member)) + member
        if self.software_keys is None:
            out.append(0)
        else:
            out += b"\x01" + self.software_keys.to_bytes()
        out += hashlib.sha256(out).digest()
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> NvramState:
        """Parse an NVRAM record; raises :class:`DecodeError` (and only that) on any
        malformed, corrupted, truncated or over-long input."""
        data = bytes(data)
        if len(data) < len(_MAGIC) + 1 + _CHECKSUM_LEN:
            raise DecodeError("NVRAM record is truncated")
        body, checksum = data[:-_CHECKSUM_LEN], data[-_CHECKSUM_LEN:]
        if body[: len(_MAGIC)] != _MAGIC:
            raise DecodeError("not an NVRAM record (bad magic)")
        if body[len(_MAGIC)] != _VERSION:
            raise DecodeError("unknown NVRAM record version")
        if not hmac.compare_digest(hashlib.sha256(body).digest(), checksum):
            raise DecodeError("NVRAM record is corrupted (checksum mismatch)")
        reader = _Reader(body)
        reader.take(len(_MAGIC) + 1)
        (epoch,) = struct.unpack(">Q", reader.take(8))
        identity = None
        if reader.flag():
            algorithm_byte = reader.u8()
            public_key = reader.take(reader.u8())
            try:
                identity = NodeIdentity(SignatureAlgorithm(algorithm_byte), public_key)
            except (ValueError, InvalidParameter):
                raise DecodeError("NVRAM record holds an invalid node identity") from None
        (count,) = struct.unpack(">H", reader.take(2))
        if count > MAX_MEMBERS:
            raise DecodeError("NVRAM record lists too many members")
        members = tuple(reader.take(reader.u8()) for _ in range(count))
        software_keys = None
        if reader.flag():
            software_keys = SoftwareKeyMaterial.from_bytes(
                reader.take(SoftwareKeyMaterial.ENCODED_LEN)
            )
        reader.finish()
        try:
            return cls(epoch, identity, members, software_keys)
        except InvalidParameter as exc:
            raise DecodeError(f"NVRAM record is invalid: {exc}") from None


class Nvram(ClosingContext, ABC):
    """The NVRAM interface: typed fields over one atomically replaced record.

    Every setter writes the whole new record through :meth:`_store` and only then makes it
    the current one, so a failed write leaves both the stored and the in-memory state as
    they were. Readers see the last successfully stored record. Thread-safe.

    Subclasses provide storage (:meth:`_load`, :meth:`_store`) and nothing else.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._closed = False
        blob = self._load()
        self._state = NvramState() if blob is None else NvramState.from_bytes(blob)

    # -- storage, provided by subclasses ------------------------------------------------

    @abstractmethod
    def _load(self) -> bytes | None:
        """The stored record, or None if nothing was ever stored (a factory-fresh NVRAM)."""

    @abstractmethod
    def _store(self, blob: bytes) -> None:
        """Replace the stored record atomically: afterwards it is either the old or the
        new record in full, never a mix, even across a crash."""

    # -- lifecycle ----------------------------------------------------------------------

    def close(self) -> None:
        """Release the NVRAM. Idempotent; later reads and writes raise NvramError."""
        self._closed = True

    # -- typed fields -------------------------------------------------------------------

    @property
    def state(self) -> NvramState:
        """The current record (an immutable snapshot)."""
        with self._lock:
            self._check_open()
            return self._state

    def identity(self) -> NodeIdentity | None:
        """The node identity, or None before it was set."""
        return self.state.identity

    def set_identity(self, identity: NodeIdentity) -> None:
        """Record the node identity. Write-once: setting the same identity again is a
        no-op; setting a different one raises InvalidParameter (a node that changes its
        identity is a new node, with a fresh NVRAM)."""
        with self._lock:
            current = self.state.identity
            if current is not None:
                if current != identity:
                    raise InvalidParameter("NVRAM already holds a different node identity")
                return
            self._commit(replace(self._state, identity=identity))

    def membership(self) -> tuple[bytes, ...]:
        """The fleet membership: node ids in their recorded order."""
        return self.state.membership

    def set_membership(self, members: Sequence[bytes], *, epoch: int | None = None) -> None:
        """Replace the fleet membership; with ``epoch``, advance the epoch to it in the
        same atomic write (the two change together or not at all). The epoch rule is that
        of :meth:`advance`."""
        checked = _check_membership(members)
        with self._lock:
            new_epoch = self.state.epoch if epoch is None else self._next_epoch(epoch)
            self._commit(replace(self._state, membership=checked, epoch=new_epoch))

    def epoch(self) -> int:
        """The current epoch (0 on a fresh NVRAM)."""
        return self.state.epoch

    def advance(self, to: int | None = None) -> int:
        """Move the epoch forward and return it.

        ``advance()`` adds one. ``advance(to)`` sets the epoch to ``to`` if that is higher;
        ``to`` equal to the current epoch is a no-op (so replaying a committed change is
        harmless); ``to`` below it raises :class:`RollbackError` and changes nothing. The
        epoch never exceeds :data:`EPOCH_MAX` (InvalidParameter).
        """
        with self._lock:
            target = self.state.epoch + 1 if to is None else to
            new_epoch = self._next_epoch(target)
            if new_epoch != self._state.epoch:
                self._commit(replace(self._state, epoch=new_epoch))
            return new_epoch

    def software_key_material(self) -> SoftwareKeyMaterial | None:
        """The software custody backend's keys, or None (always None with PKCS#11)."""
        return self.state.software_keys

    def set_software_key_material(self, keys: SoftwareKeyMaterial) -> None:
        """Record the software backend's keys. Write-once, like :meth:`set_identity`."""
        with self._lock:
            current = self.state.software_keys
            if current is not None:
                if current != keys:
                    raise InvalidParameter("NVRAM already holds different software keys")
                return
            self._commit(replace(self._state, software_keys=keys))

    # -- internals ----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise NvramError("NVRAM is closed")

    def _next_epoch(self, target: int) -> int:
        if isinstance(target, bool) or not isinstance(target, int):
            raise InvalidParameter("an epoch is an integer")
        if target > EPOCH_MAX:
            raise InvalidParameter("epoch out of range")
        current = self.state.epoch
        if target < current:
            raise RollbackError(f"epoch may not go backwards (at {current}, asked {target})")
        return target

    def _commit(self, new_state: NvramState) -> None:
        self._check_open()
        self._store(new_state.to_bytes())
        self._state = new_state


class MemoryNvram(Nvram):
    """NVRAM held in process memory, for simulators and fast tests. Lost on exit.

    ``MemoryNvram(initial)`` starts from a stored record (for tests); :meth:`stored`
    returns the bytes a device would hold.
    """

    def __init__(self, initial: bytes | None = None) -> None:
        self._blob = initial
        super().__init__()

    def _load(self) -> bytes | None:
        return self._blob

    def _store(self, blob: bytes) -> None:
        self._blob = blob

    def stored(self) -> bytes | None:
        return self._blob


class DirectoryNvram(Nvram):
    """A directory standing in for a node's NVRAM on a local deployment.

    Contract:

    * the path (resolved to an absolute path) must contain ``nvram``; otherwise
      :class:`~hsmvault.errors.InvalidParameter`. The directory is created (mode 0700) if
      missing; an empty directory is a factory-fresh NVRAM.
    * the record lives in one file, replaced atomically: written to a temporary file in
      the same directory, fsynced, renamed over the old one, and the directory fsynced.
    * one process at a time: an exclusive advisory lock is held until :meth:`close`; a
      second opener (in any process) gets :class:`NvramError`.
    * a corrupted record raises :class:`~hsmvault.errors.DecodeError` on open.

    On a real HSM the device's NVRAM replaces this class; nothing else changes.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        resolved = Path(path).resolve()
        if NVRAM_PATH_MARKER not in str(resolved):
            raise InvalidParameter(
                f"an NVRAM directory's path must contain {NVRAM_PATH_MARKER!r}, "
                "to keep it apart from host-side state"
            )
        if resolved.exists() and not resolved.is_dir():
            raise NvramError("NVRAM path exists and is not a directory")
        resolved.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._path = resolved
        self._file = resolved / _STATE_FILE
        self._lock_fd = self._acquire_lock(resolved / _LOCK_FILE)
        try:
            self._remove_stale_temporaries()
            super().__init__()
        except BaseException:
            os.close(self._lock_fd)
            raise

    @property
    def path(self) -> Path:
        """The NVRAM directory (absolute)."""
        return self._path

    @staticmethod
    def _acquire_lock(lock_path: Path) -> int:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise NvramError("NVRAM directory is in use by another opener") from None
        return fd

    def _remove_stale_temporaries(self) -> None:
        # A crash between writing a temporary file and renaming it leaves it behind; the
        # record itself is intact (the rename never happened), so the leftover is junk.
        for leftover in self._path.glob(_TMP_PREFIX + "*"):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()

    def _load(self) -> bytes | None:
        try:
            return self._file.read_bytes()
        except FileNotFoundError:
            return None

    def _store(self, blob: bytes) -> None:
        replace_file_atomically(self._file, blob, tmp_prefix=_TMP_PREFIX)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self._lock_fd)

    def __repr__(self) -> str:
        return f"DirectoryNvram({str(self._path)!r})"
