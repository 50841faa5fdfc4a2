"""Sealed Raft snapshots for pysyncobj 0.3.17: log compaction without pickle or rollback
(hazmat: decides which state a node restores).

pysyncobj compacts its log by writing a "full dump" file and, when a follower lags behind
the compacted log, streaming that file to it. By default the file is a gzip pickle of the
object's ``__dict__``. Here the ``serializer``/``deserializer`` hooks of ``SyncObjConf``
write and read a **sealed snapshot** instead:

* **Content**: the application state (``SnapshotConfig.snapshot() -> bytes``, taken on the
  tick thread, so it is exactly the state after the last applied entry), the two boundary
  log entries pysyncobj needs (last applied and the one before, in the codec's typed
  form), the full member records (identity key, address, incarnation) and the creator's
  node id and incarnation.
* **Seal**: AES-256-GCM under a *fleet* snapshot key (``SnapshotConfig.key``, 32 bytes,
  the same on every member, derived from the fleet's secret keys by the caller), with the
  fleet id and the file header as associated data. It must be a fleet key, not a node
  key: the leader ships its own file to a follower, which must open it.
* **No pickle**: the loader parses the plaintext strictly and rebuilds pysyncobj's command
  bytes in-process (:func:`~hsmvault.fleet.codec.decode_command`).

Sealing does not stop the host from putting an *older* (still valid) snapshot back. That is
what the anchored journal (:mod:`~hsmvault.fleet.journal`) is for. A snapshot is accepted
only in these cases (:meth:`SnapshotManager.verify_at_start` and
:meth:`SnapshotManager.deserialize`):

1. **Restart.** The snapshot's boundary entries appear, in order, in the verified journal
   (after compaction they are its first two entries; if the node crashed between writing
   the snapshot and compacting, the journal is trimmed to them). A snapshot that is
   *newer* than the whole journal is also accepted: it holds only committed state, the
   effect of an InstallSnapshot. Anything else is refused with
   :class:`~hsmvault.errors.RollbackError`: older than the journal, or missing while the
   journal is compacted. The check runs in the :class:`RaftNode` constructor, before any
   thread starts.
2. **Transfer from the leader.** The file's digest must equal the digest of the chunks the
   transport just received over the authenticated link (:class:`SnapshotGuard`), so the
   host cannot swap the file between pysyncobj's rename and our read. On the leader side,
   the transport refuses to send the final chunk unless the streamed file hashes to the
   digest this node recorded when it wrote or verified the file, so the host cannot feed
   a follower an older snapshot from the leader's disk.

pysyncobj swallows every exception from the deserializer (``__loadDumpFile``'s bare
``except``) and then acknowledges the snapshot anyway. So every refusal here first calls
the owner's fail-stop callback, which stops the node, then raises.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hsmvault.errors import DecodeError, InvalidParameter, RollbackError, VerificationError
from hsmvault.fleet import codec
from hsmvault.fleet.codec import MemberNode
from hsmvault.fleet.membership import IDENTITY_KEY_LEN, FleetMember

if TYPE_CHECKING:
    from hsmvault.fleet.journal import SealedJournal
    from hsmvault.fleet.transport import FleetTransport

__all__ = [
    "SNAPSHOT_AD_LABEL",
    "SNAPSHOT_FILE",
    "SnapshotConfig",
    "SnapshotGuard",
    "SnapshotManager",
]

logger = logging.getLogger(__name__)

SNAPSHOT_FILE: Final = "raft-snapshot.hvs"
SNAPSHOT_AD_LABEL: Final = b"hsmvault/fleet/raft-snapshot/v1\x00"
_MAGIC: Final = b"HVSN"
_VERSION: Final = 1
_NONCE_LEN: Final = 12
_HEADER = struct.Struct(">4sB12s")
_ENTRY = struct.Struct(">QQI")
_MEMBER_TAIL = struct.Struct(">QB")
_MAX_MEMBERS: Final = 64
_MAX_HOST: Final = 45

Entry = tuple[bytes, int, int]


@dataclass(frozen=True)
class SnapshotConfig:
    """Log compaction with sealed snapshots.

    ``key``: the fleet snapshot key (32 secret bytes, identical on every member).
    ``snapshot()``: the state machine's state as bytes (called on the tick thread, between
    two applied entries). ``restore(state)``: replace the state machine's state with
    ``state`` (tick thread, before any later entry is applied). Compaction runs when the
    log holds more than ``min_entries`` entries or ``min_time`` seconds passed since the
    last one (pysyncobj's ``logCompactionMinEntries``/``logCompactionMinTime``).
    """

    key: bytes = field(repr=False)
    snapshot: Callable[[], bytes]
    restore: Callable[[bytes], None]
    min_entries: int = 5000
    min_time: float = 600.0

    def __post_init__(self) -> None:
        if type(self.key) is not bytes or len(self.key) != 32:
            raise InvalidParameter("snapshot key must be 32 bytes")
        if self.min_entries < 2 or not self.min_time > 0:
            raise InvalidParameter("compaction thresholds out of range")


class SnapshotGuard:
    """Digests of snapshot files, shared by the transport and :class:`SnapshotManager`.
    Tick thread only."""

    def __init__(self) -> None:
        self.local_digest: bytes | None = None
        self._outgoing: dict[str, Any] = {}
        self._incoming: dict[str, Any] = {}
        self._received: bytes | None = None

    def outgoing(self, peer_id: str, chunk: tuple[bytes, bool, bool]) -> bool:
        """Account one chunk about to be sent; False refuses it (the final chunk of a file
        that does not hash to :attr:`local_digest`)."""
        data, is_first, is_last = chunk
        if is_first or peer_id not in self._outgoing:
            self._outgoing[peer_id] = hashlib.sha256()
        self._outgoing[peer_id].update(data)
        if not is_last:
            return True
        digest = self._outgoing.pop(peer_id).digest()
        ok = self.local_digest is not None and hmac.compare_digest(digest, self.local_digest)
        if not ok:
            logger.critical("snapshot file on this node's disk was replaced; not sending it")
        return ok

    def incoming(self, peer_id: str, chunk: tuple[bytes, bool, bool]) -> None:
        """Account one received chunk (before pysyncobj writes it)."""
        data, is_first, is_last = chunk
        if is_first or peer_id not in self._incoming:
            self._incoming[peer_id] = hashlib.sha256()
        self._incoming[peer_id].update(data)
        if is_last:
            self._received = self._incoming.pop(peer_id).digest()

    def take_received(self) -> bytes | None:
        """The digest of the last complete transfer, once."""
        received, self._received = self._received, None
        return received


@dataclass(frozen=True)
class _Snapshot:
    creator: bytes
    creator_incarnation: int
    last: Entry
    before: Entry
    members: tuple[tuple[FleetMember, int], ...]
    state: bytes = field(repr=False)  # every record and wrapped key: never in a log line


def _encode_entry(entry: Entry) -> bytes:
    command, idx, term = entry
    wire = codec.encode_command(bytes(command))
    return _ENTRY.pack(idx, term, len(wire)) + wire


def _plaintext(snap: _Snapshot) -> bytes:
    out = bytearray(snap.creator + struct.pack(">Q", snap.creator_incarnation))
    out += _encode_entry(snap.last) + _encode_entry(snap.before)
    out += struct.pack(">H", len(snap.members))
    for member, incarnation in snap.members:
        host = member.host.encode("ascii")
        out += member.identity_public_key + _MEMBER_TAIL.pack(incarnation, len(host)) + host
        out += struct.pack(">H", member.port)
    out += struct.pack(">Q", len(snap.state)) + snap.state
    return bytes(out)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data, self._pos = data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self._pos + n > len(self._data):
            raise DecodeError("snapshot is truncated")
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def unpack(self, st: struct.Struct) -> tuple[Any, ...]:
        return st.unpack(self.take(st.size))

    def end(self) -> None:
        if self._pos != len(self._data):
            raise DecodeError("snapshot has trailing bytes")


def _read_entry(r: _Reader) -> Entry:
    idx, term, size = r.unpack(_ENTRY)
    return codec.decode_command(r.take(size)), idx, term


def _parse(plaintext: bytes) -> _Snapshot:
    r = _Reader(plaintext)
    creator = r.take(32)
    (creator_incarnation,) = r.unpack(struct.Struct(">Q"))
    last, before = _read_entry(r), _read_entry(r)
    (count,) = r.unpack(struct.Struct(">H"))
    if not 1 <= count <= _MAX_MEMBERS:
        raise DecodeError("snapshot member count out of range")
    members = []
    for _ in range(count):
        key = r.take(IDENTITY_KEY_LEN)
        incarnation, host_len = r.unpack(_MEMBER_TAIL)
        if not 1 <= host_len <= _MAX_HOST:
            raise DecodeError("snapshot member host length out of range")
        raw_host = r.take(host_len)
        (port,) = r.unpack(struct.Struct(">H"))
        try:
            members.append((FleetMember(key, raw_host.decode("ascii"), port), incarnation))
        except (UnicodeDecodeError, InvalidParameter):
            raise DecodeError("snapshot member record is invalid") from None
    (state_len,) = r.unpack(struct.Struct(">Q"))
    state = r.take(state_len)
    r.end()
    if before[1] + 1 != last[1]:
        raise DecodeError("snapshot boundary entries are not consecutive")
    return _Snapshot(creator, creator_incarnation, last, before, tuple(members), state)


def seal_snapshot(key: bytes, fleet_id: bytes, snap: _Snapshot) -> bytes:
    """The file bytes: ``"HVSN" | version | nonce | AES-256-GCM(plaintext)``."""
    header = _HEADER.pack(_MAGIC, _VERSION, os.urandom(_NONCE_LEN))
    nonce = header[-_NONCE_LEN:]
    body = AESGCM(key).encrypt(nonce, _plaintext(snap), SNAPSHOT_AD_LABEL + fleet_id + header)
    return header + body


def open_snapshot(key: bytes, fleet_id: bytes, data: bytes) -> _Snapshot:
    """Verify and parse a snapshot file; :class:`VerificationError` on anything wrong."""
    if len(data) < _HEADER.size + 16:
        raise VerificationError("snapshot file is truncated")
    magic, version, nonce = _HEADER.unpack_from(data)
    if magic != _MAGIC or version != _VERSION:
        raise VerificationError("not a hsmvault snapshot file")
    header = data[: _HEADER.size]
    try:
        plaintext = AESGCM(key).decrypt(
            nonce, data[_HEADER.size :], SNAPSHOT_AD_LABEL + fleet_id + header
        )
    except InvalidTag:
        raise VerificationError("snapshot failed authentication (tampered or foreign)") from None
    try:
        return _parse(plaintext)
    except DecodeError:
        raise VerificationError("authenticated snapshot is malformed") from None


def _same(a: Entry, b: Entry) -> bool:
    return a[1] == b[1] and a[2] == b[2] and bytes(a[0]) == bytes(b[0])


class SnapshotManager:
    """The ``serializer``/``deserializer`` pair for one node; see the module docstring.

    Build it before the ``SyncObj``; call :meth:`verify_at_start` with the opened journal
    (raises), then :meth:`attach` once the transport exists.
    """

    def __init__(
        self,
        config: SnapshotConfig,
        directory: Path,
        *,
        fleet_id: bytes,
        node_id: bytes,
        incarnation: int,
    ) -> None:
        self._config = config
        self._path = Path(directory) / SNAPSHOT_FILE
        self._fleet_id = fleet_id
        self._node_id = node_id
        self._incarnation = incarnation
        self.guard = SnapshotGuard()
        self._verified: _Snapshot | None = None
        self._transport: FleetTransport | None = None
        self._fail: Callable[[], None] = lambda: None
        self._self_id = node_id.hex()

    @property
    def path(self) -> Path:
        """Where pysyncobj keeps the snapshot file (``fullDumpFile``)."""
        return self._path

    def attach(self, transport: FleetTransport, fail: Callable[[], None]) -> None:
        self._transport = transport
        self._fail = fail

    # -- start-up --------------------------------------------------------------------------

    def verify_at_start(self, journal: SealedJournal) -> None:
        """Check the snapshot file against the verified ``journal`` (see module docstring,
        case 1); trim the journal to the snapshot's boundary if the node crashed between
        writing the snapshot and compacting. Raises RollbackError / VerificationError."""
        entries = list(journal)
        try:
            data = self._path.read_bytes()
        except FileNotFoundError:
            if entries and entries[0][1] > 1:
                raise RollbackError(
                    "snapshot file is missing but the journal is compacted"
                ) from None
            return
        snap = open_snapshot(self._config.key, self._fleet_id, data)
        position = next(
            (
                i
                for i in range(len(entries) - 1)
                if _same(entries[i], snap.before) and _same(entries[i + 1], snap.last)
            ),
            None,
        )
        if position is None:
            if entries and snap.last[1] <= entries[-1][1]:
                raise RollbackError("snapshot is older than the journal (rolled back or replaced)")
            logger.info("snapshot is newer than the journal; adopting it")
        elif position > 0:
            journal.deleteEntriesTo(position)
        self._verified = snap
        self.guard.local_digest = hashlib.sha256(data).digest()

    # -- pysyncobj hooks (tick thread) -----------------------------------------------------

    def serialize(self, file_name: str, data: tuple[Any, ...]) -> None:
        """pysyncobj ``serializer(fileName, (last, before, cluster))``: write the sealed
        snapshot to ``file_name`` (pysyncobj renames it over ``fullDumpFile``)."""
        last, before, cluster = data
        assert self._transport is not None
        view = self._transport.members()
        ids = sorted(node.id for node in cluster)
        if any(node_id not in view for node_id in ids):
            raise InvalidParameter("cluster member without a member record")
        state = self._config.snapshot()
        if type(state) is not bytes:
            raise InvalidParameter("state machine snapshot must be bytes")
        snap = _Snapshot(
            self._node_id,
            self._incarnation,
            (bytes(last[0]), last[1], last[2]),
            (bytes(before[0]), before[1], before[2]),
            tuple(view[node_id] for node_id in ids),
            state,
        )
        blob = seal_snapshot(self._config.key, self._fleet_id, snap)
        fd = os.open(file_name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view_bytes = memoryview(blob)
            while view_bytes:
                view_bytes = view_bytes[os.write(fd, view_bytes) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        self.guard.local_digest = hashlib.sha256(blob).digest()

    def deserialize(self, file_name: str) -> tuple[Entry, Entry, list[MemberNode]]:
        """pysyncobj ``deserializer(fileName)``: restore the state machine and return
        ``(last, before, cluster)``. Fail-stop on any refusal (pysyncobj hides errors)."""
        try:
            return self._deserialize(file_name)
        except Exception as exc:
            logger.critical("refusing a snapshot (%s); stopping this node", exc)
            self._fail()
            raise

    def _deserialize(self, file_name: str) -> tuple[Entry, Entry, list[MemberNode]]:
        data = Path(file_name).read_bytes()
        digest = hashlib.sha256(data).digest()
        received = self.guard.take_received()
        if received is not None:
            if not hmac.compare_digest(received, digest):
                raise VerificationError("snapshot file differs from the one received")
            snap = open_snapshot(self._config.key, self._fleet_id, data)
        else:
            verified, local = self._verified, self.guard.local_digest
            if verified is None or local is None or not hmac.compare_digest(local, digest):
                raise RollbackError("snapshot file changed since it was verified at start")
            snap = verified
        self._config.restore(snap.state)
        self._verified = snap
        self.guard.local_digest = digest
        nodes = [MemberNode(member, incarnation) for member, incarnation in snap.members]
        self._apply_members(nodes)
        return snap.last, snap.before, nodes

    def _apply_members(self, nodes: Iterable[MemberNode]) -> None:
        transport = self._transport
        if transport is None:
            return
        for node in nodes:
            if node.id == self._self_id:
                if node.incarnation == self._incarnation and transport.joining:
                    transport.set_joined()
                continue
            transport.addNode(node)

    def __repr__(self) -> str:
        return f"SnapshotManager({str(self._path)!r})"
