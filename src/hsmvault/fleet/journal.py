"""A sealed, rollback-checked Raft journal for pysyncobj 0.3.17 (hazmat: decides what a
restarted node believes about its own past).

pysyncobj keeps a node's Raft log and its persistent state (current term, vote, commit
index) in a ``Journal`` object. Its own ``FileJournal`` writes raw records without fsync
and pickles its meta file, so the host could read, edit, roll back or booby-trap them.
:class:`SealedJournal` replaces it (see :func:`journal_hook` for how it is plugged in):

* **Everything on disk is sealed.** The journal file lives on the *host's* disk, which is
  untrusted (ARCHITECTURE §2). Each record is sealed by the node's :class:`Sealer` (its key
  custody: AEAD bound to the node and the purpose :data:`SEAL_PURPOSE`). The associated
  data binds the fleet id, the node id, the node's **incarnation**, the record's
  **sequence number** and the **digest of the previous record**, so records cannot be
  edited, moved between nodes, incarnations or files, reordered, dropped or spliced.
* **No pickle on the load path.** Log entries are stored in the fleet codec's typed form
  (:func:`~hsmvault.fleet.codec.encode_command`) and pysyncobj's command bytes are rebuilt
  in this process on load (:func:`~hsmvault.fleet.codec.decode_command`), as the
  transport does for the network.
* **Durable before it returns.** :meth:`SealedJournal.add` and
  :meth:`SealedJournal.setCurrentTerm` write, fsync and only then return, so pysyncobj
  acknowledges (``next_node_idx``, ``response_vote``) only what survives a crash - the
  Raft rule "persistent state is updated on stable storage before responding to RPCs"
  (Ongaro & Ousterhout 2014, Figure 2).
* **Anti-rollback anchor in NVRAM.** After each durable write the node's
  :class:`AnchorStore` (trusted NVRAM) is advanced to ``(incarnation, seq, digest)`` of the
  last record. On open the journal must contain the anchored record (same digest); it may
  run *ahead* of the anchor (a crash between the file write and the NVRAM write: those
  records were never acted upon), never behind it. An older copy of the file, a truncated
  file or a fork of it fails with :class:`RollbackError`.

File format (all integers big-endian)::

    file    := prefix record+
    prefix  := "HVJ1" | version u8 = 1 | fleet id 32 | node id 32 | incarnation u64
               | first seq u64 | previous digest 32            (in clear; authenticated by
                                                                 the first record's AD)
    record  := length u32 | sealed blob (KeyCustody format, purpose SEAL_PURPOSE)
    AD(n)   := AD_LABEL | fleet id | node id | incarnation u64 | seq(n) u64 | digest(n-1)
    digest(n) := SHA-256(DIGEST_LABEL | sealed blob of record n)
    plaintext := 1 (entry) | idx u64 | term u64 | codec wire command
               | 2 (meta)  | current term u64 | commit index u64 | voted flag u8
                           [ | id length u8 | voted-for node id (ASCII) ]
               | 3 (truncate) | from idx u64     drop entries with idx >= from (0: all)
               | 4 (compact)  | first idx u64    drop entries with idx < first

Every file starts with a meta record, then the log entries in order (contiguous indexes),
then further entry, meta, truncate and compact records as they happen; replay applies
them in order. Truncating the log appends a record like any other (sealed, chained,
fsynced, anchored): ``clear`` a "truncate from 0", ``deleteEntriesTo`` a "compact", and
``deleteEntriesFrom`` is *lazy* - it writes nothing until an ``add`` at the cut differs
from the stored entry, and then writes "truncate from idx" and that entry with one fsync
(see :meth:`SealedJournal.deleteEntriesFrom` for why that is safe). Only when dead records
pile up (``_maybe_rewrite``) is the whole state rewritten into a new file whose sequence
numbers continue those of the old one (first seq = old last + 1, previous digest = digest
of the old last record), atomically renamed over the old file (directory fsynced), then
anchored. An append costs one ``fdatasync`` of the journal and one of the anchor
(:class:`FileAnchorStore`: two slots written in place).

Verification on open, in order (:meth:`SealedJournal.open`):

1. the NVRAM anchor belongs to this incarnation (a later one: :class:`RollbackError`;
   none or an earlier one: only a fresh start, ``fresh=True``, may create a journal);
2. the file exists (else :class:`RollbackError`, unless nothing was ever anchored);
3. the prefix parses and names this fleet, node and incarnation (:class:`VerificationError`;
   an earlier incarnation: :class:`RollbackError`);
4. every record unseals under the expected associated data (chain of sequence numbers and
   digests); a bad or torn record *after* the anchor is a crash's torn tail and is cut off;
   at or before the anchor it is :class:`VerificationError`;
5. the anchored record is present with the anchored digest (missing: the file is older or
   shorter than NVRAM says, :class:`RollbackError`; another digest: a fork,
   :class:`RollbackError`);
6. the records replay into a consistent state (contiguous entry indexes); then the
   anchor is advanced to the last record.

Threading: pysyncobj calls the journal from its tick thread only (and from the
constructing thread before the tick thread starts). After any write failure the journal
is *broken* (fail-stop): every later call raises :class:`Unavailable`, and the owner's
``on_failure`` callback runs once.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final, Protocol, runtime_checkable

from pysyncobj import syncobj as _psy_syncobj  # type: ignore[import-untyped]
from pysyncobj.journal import Journal  # type: ignore[import-untyped]

from hsmvault.errors import (
    DecodeError,
    InvalidParameter,
    RollbackError,
    Unavailable,
    VerificationError,
)
from hsmvault.fleet import codec

__all__ = [
    "AD_LABEL",
    "DIGEST_LABEL",
    "SEAL_PURPOSE",
    "AnchorStore",
    "FileAnchorStore",
    "JournalAnchor",
    "JournalConfig",
    "MemoryAnchorStore",
    "SealedJournal",
    "Sealer",
    "journal_hook",
    "needs_fresh_journal",
]

logger = logging.getLogger(__name__)

SEAL_PURPOSE: Final = b"hsmvault/fleet/raft-journal/v1"
AD_LABEL: Final = b"hsmvault/fleet/raft-journal/v1/record\x00"
DIGEST_LABEL: Final = b"hsmvault/fleet/raft-journal/v1/digest\x00"
_ANCHOR_MAGIC: Final = b"HVJA"
_FILE_MAGIC: Final = b"HVJ1"
_FORMAT_VERSION: Final = 1
_PREFIX = struct.Struct(">4sB32s32sQQ32s")
_LEN = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_ENTRY_HEAD = struct.Struct(">BQQ")
_META_HEAD = struct.Struct(">BQQB")
_CUT = struct.Struct(">BQ")
_T_ENTRY: Final = 1
_T_META: Final = 2
_T_TRUNCATE: Final = 3
_T_COMPACT: Final = 4
_DIGEST_LEN: Final = 32
_MAX_RECORD: Final = 1 << 20
"""Largest sealed record (a 16 KiB command transcodes to far less)."""
_MAX_VOTED_ID: Final = 128
_REWRITE_MIN_DEAD: Final = 4096
"""A file is rewritten (physically compacted) once it holds more than this many dead
records and more dead than live ones: amortised O(1) per record (see ``_maybe_rewrite``)."""
U64_MAX: Final = 2**64 - 1


# ---------------------------------------------------------------------------------------
# What the journal trusts: a sealer (key custody) and an anchor store (NVRAM)


@runtime_checkable
class Sealer(Protocol):
    """Seals bytes for this node and a purpose (AEAD); :class:`KeyCustody` satisfies it.

    ``unseal`` raises :class:`DecodeError` for malformed blobs and
    :class:`VerificationError` for blobs of another node, purpose or associated data.
    """

    def seal(self, purpose: bytes, plaintext: bytes, associated_data: bytes = b"") -> bytes: ...

    def unseal(self, purpose: bytes, sealed: bytes, associated_data: bytes = b"") -> bytes: ...


@dataclass(frozen=True)
class JournalAnchor:
    """The NVRAM's memory of a journal: the incarnation it belongs to, and the sequence
    number and digest of the last record known to be durable. Not secret.

    ``seq == 0`` names the virtual record before the first one; its ``digest`` is a random
    per-incarnation genesis value, so a journal from an earlier life of the NVRAM (reset,
    same incarnation number) never matches.
    """

    incarnation: int
    seq: int
    digest: bytes

    def __post_init__(self) -> None:
        for value in (self.incarnation, self.seq):
            if type(value) is not int or not 0 <= value <= U64_MAX:
                raise InvalidParameter("anchor numbers must be ints in [0, 2**64)")
        if type(self.digest) is not bytes or len(self.digest) != _DIGEST_LEN:
            raise InvalidParameter("anchor digest must be 32 bytes")

    def to_bytes(self) -> bytes:
        """``"HVJA" | incarnation u64 | seq u64 | digest 32 | SHA-256 of the rest``."""
        body = _ANCHOR_MAGIC + _U64.pack(self.incarnation) + _U64.pack(self.seq) + self.digest
        return body + hashlib.sha256(body).digest()

    @classmethod
    def from_bytes(cls, data: bytes) -> JournalAnchor:
        """Parse :meth:`to_bytes`; raises :class:`DecodeError` on anything else."""
        if len(data) != 4 + 8 + 8 + 32 + 32 or data[:4] != _ANCHOR_MAGIC:
            raise DecodeError("journal anchor record is malformed")
        body, checksum = data[:-32], data[-32:]
        if not hmac.compare_digest(hashlib.sha256(body).digest(), checksum):
            raise DecodeError("journal anchor record is corrupted (checksum mismatch)")
        return cls(_U64.unpack(body[4:12])[0], _U64.unpack(body[12:20])[0], body[20:52])

    def _order(self) -> tuple[int, int]:
        return (self.incarnation, self.seq)


class AnchorStore(Protocol):
    """Where the node keeps its :class:`JournalAnchor`: trusted NVRAM (the host can
    neither read nor roll it back on a real HSM).

    ``write_anchor`` must be atomic and durable when it returns, and must refuse (with
    :class:`RollbackError`) an anchor whose ``(incarnation, seq)`` is lower than the stored
    one; writing an equal ``(incarnation, seq)`` with another digest is also refused.
    """

    def read_anchor(self) -> JournalAnchor | None: ...

    def write_anchor(self, anchor: JournalAnchor) -> None: ...


def _check_forward(current: JournalAnchor | None, anchor: JournalAnchor) -> bool:
    """True if ``anchor`` must be written, False if it is already stored; raises
    RollbackError if it would move the anchor backwards or fork it."""
    if current is None:
        return True
    if anchor._order() < current._order():
        raise RollbackError("journal anchor may not move backwards")
    if anchor._order() == current._order():
        if not hmac.compare_digest(anchor.digest, current.digest):
            raise RollbackError("journal anchor may not be forked")
        return False
    return True


class MemoryAnchorStore:
    """An :class:`AnchorStore` in process memory (tests, simulators)."""

    def __init__(self) -> None:
        self._anchor: JournalAnchor | None = None
        self._lock = threading.Lock()

    def read_anchor(self) -> JournalAnchor | None:
        with self._lock:
            return self._anchor

    def write_anchor(self, anchor: JournalAnchor) -> None:
        with self._lock:
            if _check_forward(self._anchor, anchor):
                self._anchor = anchor

    def __repr__(self) -> str:
        return "MemoryAnchorStore()"


class FileAnchorStore:
    """An :class:`AnchorStore` in a file ``journal-anchor`` inside the node's NVRAM
    directory (the local stand-in for an NVRAM field; see ``hsm.nvram``). The directory's
    path must contain ``nvram``.

    The file has two fixed-size **slots**, written in place and alternately, each with a
    write counter and its own SHA-256 checksum::

        slot := "HVA2" | counter u64 | incarnation u64 | seq u64 | digest 32
                | SHA-256 of the preceding 60 bytes | zero padding to 4096 bytes

    A read takes the valid slot with the higher counter. A write goes to the *other* slot
    with counter + 1 and one ``fdatasync``; no temporary file, rename or directory fsync
    (only the file's creation does those, once). A write torn by a crash damages only the
    slot being written, whose anchor was never acknowledged, so the other slot still holds
    the previous anchor: exactly the state of a crash just before the write. The slots are
    4 KiB apart so that no device block holds both. A file with no valid slot, of the
    wrong size, or whose newer slot holds an older anchor raises :class:`DecodeError` on
    read (and so fails every write): NVRAM corruption is never silently repaired.
    """

    FILE_NAME: Final = "journal-anchor"

    def __init__(self, nvram_dir: str | os.PathLike[str]) -> None:
        path = Path(nvram_dir).resolve()
        if "nvram" not in str(path):
            raise InvalidParameter("an anchor store lives in an NVRAM directory ('nvram' in path)")
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._dir = path
        self._file = path / self.FILE_NAME
        self._lock = threading.Lock()

    def read_anchor(self) -> JournalAnchor | None:
        try:
            data = self._file.read_bytes()
        except FileNotFoundError:
            return None
        return _parse_slots(data)[0]

    def write_anchor(self, anchor: JournalAnchor) -> None:
        with self._lock:
            try:
                fd = os.open(self._file, os.O_RDWR)
            except FileNotFoundError:
                self._create(anchor)
                return
            try:
                current, counter, slot = _parse_slots(_pread_all(fd, 2 * _SLOT_SIZE))
                if not _check_forward(current, anchor):
                    return
                if counter >= U64_MAX:
                    raise InvalidParameter("journal anchor write counter exhausted")
                record = _slot_bytes(counter + 1, anchor)
                offset = (1 - slot) * _SLOT_SIZE
                view = memoryview(record)
                while view:
                    view = view[os.pwrite(fd, view, offset + len(record) - len(view)) :]
                _sync_data(fd)
            finally:
                os.close(fd)

    def _create(self, anchor: JournalAnchor) -> None:
        """First write: both slots (the second empty) into a temporary file, fsync, rename,
        fsync the directory, so the file never exists without a valid slot."""
        data = bytearray(2 * _SLOT_SIZE)
        record = _slot_bytes(1, anchor)
        data[: len(record)] = record
        tmp = self._dir / (self.FILE_NAME + ".tmp")
        _write_durably(tmp, bytes(data))
        os.replace(tmp, self._file)
        _fsync_dir(self._dir)

    def __repr__(self) -> str:
        return f"FileAnchorStore({str(self._dir)!r})"


_SLOT_MAGIC: Final = b"HVA2"
_SLOT_BODY = struct.Struct(">4sQQQ32s")
_SLOT_RECORD: Final = _SLOT_BODY.size + 32
_SLOT_SIZE: Final = 4096


def _slot_bytes(counter: int, anchor: JournalAnchor) -> bytes:
    body = _SLOT_BODY.pack(_SLOT_MAGIC, counter, anchor.incarnation, anchor.seq, anchor.digest)
    return body + hashlib.sha256(body).digest()


def _parse_slot(raw: bytes) -> tuple[int, JournalAnchor] | None:
    """``(counter, anchor)`` of a valid slot; None for an empty, torn or corrupt one."""
    body, checksum = raw[: _SLOT_BODY.size], raw[_SLOT_BODY.size : _SLOT_RECORD]
    if not hmac.compare_digest(hashlib.sha256(body).digest(), checksum):
        return None
    magic, counter, incarnation, seq, digest = _SLOT_BODY.unpack(body)
    if magic != _SLOT_MAGIC or counter == 0:
        return None
    return counter, JournalAnchor(incarnation, seq, digest)


def _parse_slots(data: bytes) -> tuple[JournalAnchor, int, int]:
    """``(anchor, counter, slot index)`` of the newest valid slot; DecodeError if none."""
    if len(data) != 2 * _SLOT_SIZE:
        raise DecodeError("journal anchor file is corrupted or of an older format (wrong size)")
    slots = [_parse_slot(data[i * _SLOT_SIZE : i * _SLOT_SIZE + _SLOT_RECORD]) for i in (0, 1)]
    valid = [(found[0], i, found[1]) for i, found in enumerate(slots) if found is not None]
    if not valid:
        raise DecodeError("journal anchor file is corrupted (no valid slot)")
    valid.sort(key=lambda item: item[0])
    counter, index, anchor = valid[-1]
    if len(valid) == 2:
        old_counter, _, old_anchor = valid[0]
        if old_counter == counter or anchor._order() < old_anchor._order():
            raise DecodeError("journal anchor file is corrupted (inconsistent slots)")
    elif any(data[(1 - index) * _SLOT_SIZE : (2 - index) * _SLOT_SIZE]):
        logger.warning("journal anchor: one slot is torn or corrupt; using the other one")
    return anchor, counter, index


def _pread_all(fd: int, size: int) -> bytes:
    out = bytearray()
    while len(out) < size:
        chunk = os.pread(fd, size - len(out), len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def _sync_data(fd: int) -> None:
    """Make a file's data (and the metadata needed to read it back, such as its size)
    durable: ``fdatasync`` where the platform has it, else ``fsync``."""
    sync = getattr(os, "fdatasync", None)
    if sync is None:
        os.fsync(fd)
    else:
        sync(fd)


def _write_durably(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def needs_fresh_journal(anchors: AnchorStore, incarnation: int) -> bool:
    """Whether a node starting under ``incarnation`` (its NVRAM epoch) must create a new
    journal (``JournalConfig(fresh=True)``) rather than resume one: True when the anchor
    store has no anchor or only one of an earlier incarnation (the epoch was advanced
    since). Raises :class:`RollbackError` if the anchor belongs to a *later* incarnation
    (the NVRAM epoch went backwards)."""
    anchor = anchors.read_anchor()
    if anchor is None or anchor.incarnation < incarnation:
        return True
    if anchor.incarnation > incarnation:
        raise RollbackError("NVRAM anchor belongs to a later incarnation than the epoch")
    return False


@dataclass(frozen=True)
class JournalConfig:
    """How a :class:`~hsmvault.fleet.raft_node.RaftNode` persists its Raft state.

    ``directory`` is host-side (untrusted) storage for the sealed journal file;
    ``sealer`` is the node's key custody; ``anchors`` its NVRAM anchor store. With
    ``fresh=True`` the node starts a *new incarnation*: any journal in ``directory`` is
    retired (renamed ``*.retired``) and a new one is created; the incarnation must be
    higher than any the anchor store has seen (advance the NVRAM epoch first).
    """

    directory: Path
    sealer: Sealer
    anchors: AnchorStore
    fresh: bool = False

    FILE_NAME: Final = "raft-journal.hvj"

    @property
    def path(self) -> Path:
        return Path(self.directory) / self.FILE_NAME

    def __repr__(self) -> str:
        return f"JournalConfig(directory={str(self.directory)!r}, fresh={self.fresh})"


# ---------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class _Owner:
    fleet_id: bytes
    node_id: bytes
    incarnation: int

    def ad(self, seq: int, prev_digest: bytes) -> bytes:
        return b"".join(
            [
                AD_LABEL,
                self.fleet_id,
                self.node_id,
                _U64.pack(self.incarnation),
                _U64.pack(seq),
                prev_digest,
            ]
        )

    def prefix(self, first_seq: int, prev_digest: bytes) -> bytes:
        return _PREFIX.pack(
            _FILE_MAGIC,
            _FORMAT_VERSION,
            self.fleet_id,
            self.node_id,
            self.incarnation,
            first_seq,
            prev_digest,
        )


def _digest(sealed: bytes) -> bytes:
    return hashlib.sha256(DIGEST_LABEL + sealed).digest()


def _entry_plaintext(command: bytes, idx: int, term: int) -> bytes:
    return _ENTRY_HEAD.pack(_T_ENTRY, idx, term) + codec.encode_command(command)


def _truncate_plaintext(from_idx: int) -> bytes:
    """Drop every entry with index >= ``from_idx`` (0: all of them)."""
    return _CUT.pack(_T_TRUNCATE, from_idx)


def _compact_plaintext(first_idx: int) -> bytes:
    """Drop every entry with index < ``first_idx`` (log compaction after a snapshot)."""
    return _CUT.pack(_T_COMPACT, first_idx)


def _meta_plaintext(term: int, commit: int, voted_for: str | None) -> bytes:
    if voted_for is None:
        return _META_HEAD.pack(_T_META, term, commit, 0)
    raw = voted_for.encode("ascii")
    if not 1 <= len(raw) <= _MAX_VOTED_ID:
        raise InvalidParameter("voted-for node id has an unsupported length")
    return _META_HEAD.pack(_T_META, term, commit, 1) + bytes([len(raw)]) + raw


@dataclass
class _State:
    entries: list[tuple[bytes, int, int]]
    term: int = 0
    commit: int = 1
    voted_for: str | None = None


def _apply_plaintext(state: _State, plaintext: bytes) -> None:
    """Replay one record; raises DecodeError on malformed or inconsistent content."""
    if not plaintext:
        raise DecodeError("empty journal record")
    kind = plaintext[0]
    if kind == _T_ENTRY:
        if len(plaintext) < _ENTRY_HEAD.size:
            raise DecodeError("journal entry record is truncated")
        _, idx, term = _ENTRY_HEAD.unpack_from(plaintext)
        command = codec.decode_command(plaintext[_ENTRY_HEAD.size :])
        if state.entries and idx != state.entries[-1][1] + 1:
            raise DecodeError("journal entries are not contiguous")
        state.entries.append((command, idx, term))
    elif kind == _T_META:
        _apply_meta(state, plaintext)
    elif kind in (_T_TRUNCATE, _T_COMPACT):
        if len(plaintext) != _CUT.size:
            raise DecodeError("journal truncation record is malformed")
        _, bound = _CUT.unpack(plaintext)
        entries = state.entries
        if entries:
            # Entries are contiguous, so the cut is a position in the list.
            position = min(max(bound - entries[0][1], 0), len(entries))
            if kind == _T_TRUNCATE:
                del entries[position:]
            else:
                del entries[:position]
    else:
        raise DecodeError("unknown journal record type")


def _apply_meta(state: _State, plaintext: bytes) -> None:
    if len(plaintext) < _META_HEAD.size:
        raise DecodeError("journal meta record is truncated")
    _, term, commit, flag = _META_HEAD.unpack_from(plaintext)
    rest = plaintext[_META_HEAD.size :]
    voted: str | None = None
    if flag == 1:
        if not rest or len(rest) != 1 + rest[0] or not 1 <= rest[0] <= _MAX_VOTED_ID:
            raise DecodeError("journal meta record has a malformed vote")
        try:
            voted = rest[1:].decode("ascii")
        except UnicodeDecodeError:
            raise DecodeError("journal meta record has a malformed vote") from None
    elif flag != 0 or rest:
        raise DecodeError("journal meta record is malformed")
    state.term, state.commit, state.voted_for = term, commit, voted


def _scan(
    sealer: Sealer,
    owner: _Owner,
    anchor: JournalAnchor,
    data: bytes,
    *,
    first_seq: int,
    prev: bytes,
) -> tuple[_State, int, bytes, dict[int, bytes], int]:
    """Unseal and replay every record after the prefix: ``(state, last seq, last digest,
    digests by seq, end of the last valid record)``. A record that fails after the anchor
    is a torn tail (cut off); at or before it, :class:`VerificationError`."""
    state = _State(entries=[])
    seq, digest = first_seq - 1, prev
    digests = {seq: digest}
    pos, end = _PREFIX.size, len(data)
    valid_end = pos
    while pos < end:
        torn = end - pos < _LEN.size or end - pos - _LEN.size < _LEN.unpack_from(data, pos)[0]
        try:
            if torn:
                raise DecodeError("torn record at the end of the file")
            (length,) = _LEN.unpack_from(data, pos)
            if length > _MAX_RECORD:
                raise DecodeError("oversized record")
            sealed = data[pos + _LEN.size : pos + _LEN.size + length]
            plaintext = sealer.unseal(SEAL_PURPOSE, sealed, owner.ad(seq + 1, digest))
            _apply_plaintext(state, plaintext)
        except (DecodeError, VerificationError):
            if seq + 1 > anchor.seq:
                logger.warning("journal has a torn tail after its anchor; cutting it off")
                break
            if torn:
                raise RollbackError("journal is older than the NVRAM anchor (truncated)") from None
            raise VerificationError(
                "journal record failed verification (tampered or corrupted)"
            ) from None
        seq += 1
        digest = _digest(sealed)
        digests[seq] = digest
        pos += _LEN.size + length
        valid_end = pos
    return state, seq, digest, digests, valid_end


# ---------------------------------------------------------------------------------------
# The journal


class SealedJournal(Journal):  # type: ignore[misc]  # pysyncobj is untyped
    """pysyncobj ``Journal`` over a sealed, anchored file (see the module docstring), or
    purely in memory when built with :meth:`in_memory` (same interface, nothing durable).

    Build it with :meth:`open` (persistent) or :meth:`in_memory`; pysyncobj receives it
    through :func:`journal_hook`. ``on_append(command, idx, term)`` is called after each
    durable :meth:`add` (tick thread); ``on_failure()`` once, when the journal breaks.
    """

    def __init__(
        self,
        owner: _Owner | None,
        state: _State,
        *,
        sealer: Sealer | None = None,
        anchors: AnchorStore | None = None,
        first_seq: int = 1,
        last_seq: int = 0,
        last_digest: bytes = b"",
    ) -> None:
        self._owner = owner
        self._state = state
        self._path: Path | None = None
        self._sealer = sealer
        self._anchors = anchors
        self._first_seq = first_seq
        self._last_seq = last_seq
        self._last_digest = last_digest
        self._file: BinaryIO | None = None
        self._file_records = 0
        """Records in the current file (live and dead), for ``_maybe_rewrite``."""
        self._tail: deque[tuple[bytes, int, int]] = deque()
        """Durable entries that follow the in-memory log but were deleted by a
        ``deleteEntriesFrom`` not yet persisted (see there). Always empty in memory mode."""
        self.rewrite_min_dead = _REWRITE_MIN_DEAD
        self._commit_dirty = False
        self._broken = False
        self._closed = False
        self.on_append: Callable[[bytes, int, int], None] | None = None
        self.on_failure: Callable[[], None] | None = None

    # -- construction --------------------------------------------------------------------

    @classmethod
    def in_memory(cls) -> SealedJournal:
        """A journal that keeps everything in memory (no durability, no checks)."""
        return cls(None, _State(entries=[]))

    @classmethod
    def open(
        cls,
        config: JournalConfig,
        *,
        fleet_id: bytes,
        node_id: bytes,
        incarnation: int,
    ) -> SealedJournal:
        """Open (``config.fresh=False``: resume) or create (``fresh=True``) the journal of
        this node's ``incarnation``; see the module docstring for the checks and errors.

        Raises :class:`RollbackError` if the journal is missing, older, shorter or forked
        relative to the NVRAM anchor, or belongs to an earlier incarnation;
        :class:`VerificationError` if it is malformed, tampered with, or belongs to another
        node or fleet; :class:`InvalidParameter` for bad arguments. Nothing is written to
        the journal before all checks pass.
        """
        if len(fleet_id) != 32 or len(node_id) != 32:
            raise InvalidParameter("fleet id and node id must be 32 bytes")
        if type(incarnation) is not int or not 0 <= incarnation <= U64_MAX:
            raise InvalidParameter("incarnation must be an int in [0, 2**64)")
        owner = _Owner(bytes(fleet_id), bytes(node_id), incarnation)
        path = config.path
        anchor = config.anchors.read_anchor()
        if config.fresh:
            return cls._create(config, owner, anchor)
        # 1. the anchor belongs to this incarnation
        if anchor is None or anchor.incarnation < incarnation:
            raise RollbackError(
                "no journal anchor for this incarnation in NVRAM: the node cannot prove its "
                "Raft state and must rejoin as a new incarnation"
            )
        if anchor.incarnation > incarnation:
            raise RollbackError("NVRAM anchor belongs to a later incarnation of this node")
        # 2. the file exists
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            if anchor.seq != 0:
                raise RollbackError("journal file is missing (NVRAM anchor expects one)") from None
            return cls._write_new_file(config, owner, anchor.digest, first_seq=1)
        journal = cls._verify(config, owner, anchor, data)
        return journal

    @classmethod
    def _create(
        cls, config: JournalConfig, owner: _Owner, anchor: JournalAnchor | None
    ) -> SealedJournal:
        if anchor is not None and anchor.incarnation >= owner.incarnation:
            raise RollbackError(
                "a fresh journal needs a new incarnation: advance the NVRAM epoch first"
            )
        path = config.path
        if path.exists():
            retired = path.with_name(path.name + f".retired-{owner.incarnation}")
            os.replace(path, retired)
            logger.warning("retired the journal of an earlier incarnation")
        genesis = secrets.token_bytes(_DIGEST_LEN)
        config.anchors.write_anchor(JournalAnchor(owner.incarnation, 0, genesis))
        return cls._write_new_file(config, owner, genesis, first_seq=1)

    @classmethod
    def _write_new_file(
        cls, config: JournalConfig, owner: _Owner, prev_digest: bytes, first_seq: int
    ) -> SealedJournal:
        journal = cls(
            owner,
            _State(entries=[]),
            sealer=config.sealer,
            anchors=config.anchors,
            first_seq=first_seq,
            last_seq=first_seq - 1,
            last_digest=prev_digest,
        )
        journal._path = config.path
        journal._rewrite()
        return journal

    @classmethod
    def _verify(
        cls, config: JournalConfig, owner: _Owner, anchor: JournalAnchor, data: bytes
    ) -> SealedJournal:
        # 3. the prefix names this fleet, node and incarnation
        if len(data) < _PREFIX.size:
            raise RollbackError("journal file is truncated (no complete header)")
        magic, version, fleet_id, node_id, incarnation, first_seq, prev = _PREFIX.unpack_from(data)
        if magic != _FILE_MAGIC or version != _FORMAT_VERSION:
            raise VerificationError("not a hsmvault journal file (bad magic or version)")
        if not hmac.compare_digest(node_id, owner.node_id):
            raise VerificationError("journal belongs to another node")
        if not hmac.compare_digest(fleet_id, owner.fleet_id):
            raise VerificationError("journal belongs to another fleet")
        if incarnation < owner.incarnation:
            raise RollbackError("journal belongs to an earlier incarnation of this node")
        if incarnation != owner.incarnation:
            raise VerificationError("journal belongs to another incarnation of this node")
        if first_seq < 1 or anchor.seq < first_seq - 1:
            raise VerificationError("journal does not continue the anchored history")
        # 4. every record unseals under the expected chain
        scan = _scan(config.sealer, owner, anchor, data, first_seq=first_seq, prev=prev)
        state, seq, digest, digests, valid_end = scan
        if seq < first_seq:
            # Not a single record authenticates the prefix.
            raise RollbackError("journal file is truncated (no verified record)")
        # 5. the anchored record is present with the anchored digest
        if anchor.seq > seq:
            raise RollbackError("journal is older than the NVRAM anchor (rolled back or truncated)")
        if not hmac.compare_digest(digests[anchor.seq], anchor.digest):
            raise RollbackError("journal does not match the NVRAM anchor (replaced or forked)")
        # 6. consistent state (contiguity was checked while replaying)
        journal = cls(
            owner,
            state,
            sealer=config.sealer,
            anchors=config.anchors,
            first_seq=first_seq,
            last_seq=seq,
            last_digest=digest,
        )
        journal._path = config.path
        journal._file_records = seq - first_seq + 1
        if valid_end != len(data):
            with open(config.path, "r+b") as f:
                f.truncate(valid_end)
                f.flush()
                os.fsync(f.fileno())
        journal._file = open(config.path, "ab")  # noqa: SIM115  # closed by _destroy
        config.anchors.write_anchor(JournalAnchor(owner.incarnation, seq, digest))
        return journal

    # -- persistence ---------------------------------------------------------------------

    @property
    def persistent(self) -> bool:
        """True if the journal is backed by a sealed file."""
        return self._path is not None

    @property
    def last_seq(self) -> int:
        """Sequence number of the last durable record (0 for an in-memory journal)."""
        return self._last_seq

    def _seal(self, seq: int, prev: bytes, plaintext: bytes) -> bytes:
        assert self._owner is not None
        assert self._sealer is not None
        sealed = self._sealer.seal(SEAL_PURPOSE, plaintext, self._owner.ad(seq, prev))
        if len(sealed) > _MAX_RECORD:
            raise InvalidParameter("journal record too large")
        return sealed

    def _append_records(self, plaintexts: list[bytes]) -> None:
        """Seal, write and fsync records, then advance the NVRAM anchor."""
        if self._path is None:
            return
        self._check_usable()
        try:
            assert self._file is not None
            assert self._owner is not None
            assert self._anchors is not None
            seq, digest = self._last_seq, self._last_digest
            out = bytearray()
            for plaintext in plaintexts:
                seq += 1
                sealed = self._seal(seq, digest, plaintext)
                out += _LEN.pack(len(sealed)) + sealed
                digest = _digest(sealed)
            self._file.write(out)
            self._file.flush()
            _sync_data(self._file.fileno())
            self._last_seq, self._last_digest = seq, digest
            self._file_records += len(plaintexts)
            self._anchors.write_anchor(JournalAnchor(self._owner.incarnation, seq, digest))
        except Exception as exc:
            self._break(exc)

    def _rewrite(self) -> None:
        """Write the whole current state into a new file continuing the sequence, rename
        it over the old one, fsync the directory, advance the anchor. The file then holds
        exactly the in-memory log: a pending truncation (``_tail``) is thereby persisted."""
        assert self._path is not None
        assert self._owner is not None
        assert self._anchors is not None
        self._check_usable()
        try:
            first_seq, prev = self._last_seq + 1, self._last_digest
            s = self._state
            plaintexts = [_meta_plaintext(s.term, s.commit, s.voted_for)]
            plaintexts += [_entry_plaintext(*entry) for entry in s.entries]
            out = bytearray(self._owner.prefix(first_seq, prev))
            seq, digest = first_seq - 1, prev
            for plaintext in plaintexts:
                seq += 1
                sealed = self._seal(seq, digest, plaintext)
                out += _LEN.pack(len(sealed)) + sealed
                digest = _digest(sealed)
            tmp = self._path.with_name(self._path.name + ".tmp")
            _write_durably(tmp, bytes(out))
            if self._file is not None:
                self._file.close()
                self._file = None
            os.replace(tmp, self._path)
            _fsync_dir(self._path.parent)
            self._file = open(self._path, "ab")  # noqa: SIM115  # closed by _destroy
            self._first_seq, self._last_seq, self._last_digest = first_seq, seq, digest
            self._file_records = len(plaintexts)
            self._tail.clear()
            self._commit_dirty = False
            self._anchors.write_anchor(JournalAnchor(self._owner.incarnation, seq, digest))
        except Exception as exc:
            self._break(exc)

    def _maybe_rewrite(self) -> None:
        """Physically compact the file when its dead records (truncated or compacted
        entries, superseded meta records) outnumber both the live ones and
        ``rewrite_min_dead``: the rewrite costs O(live) and happens at most once per
        max(live, rewrite_min_dead) appended records, so O(1) amortised per record."""
        if self._path is None:
            return
        live = len(self._state.entries) + len(self._tail) + 1
        dead = self._file_records - live
        if dead > max(self.rewrite_min_dead, live):
            self._rewrite()

    def _check_usable(self) -> None:
        if self._broken:
            raise Unavailable("the node's journal failed earlier; the node is stopped")
        if self._closed:
            raise Unavailable("the node's journal is closed")

    def _break(self, exc: Exception) -> None:
        self._broken = True
        logger.critical("journal write failed (%s); stopping this node", type(exc).__name__)
        if self.on_failure is not None:
            with contextlib.suppress(Exception):
                self.on_failure()
        raise Unavailable("the node's journal could not be written durably") from None

    # -- pysyncobj Journal interface -------------------------------------------------------

    def add(self, command: bytes, idx: int, term: int) -> None:
        """Append one entry; durable (fsync + anchor) before returning. Re-adding, after a
        :meth:`deleteEntriesFrom`, exactly the entry the file holds at that position
        writes nothing (see there)."""
        self._check_usable()
        command = bytes(command)
        entry = (command, idx, term)
        if self._path is not None:
            if not self._tail:
                self._append_records([_entry_plaintext(command, idx, term)])
            elif self._tail[0] == entry:
                self._tail.popleft()  # already durable at this very position
            else:
                # A real conflict: persist the truncation and the new entry together
                # (one write, one fsync, one anchor) before pysyncobj may acknowledge.
                cut = self._tail[0][1]
                self._append_records([_truncate_plaintext(cut), _entry_plaintext(*entry)])
                self._tail.clear()
        self._state.entries.append(entry)
        self._maybe_rewrite()
        if self.on_append is not None:
            self.on_append(command, idx, term)

    def clear(self) -> None:
        """Drop the whole log (pysyncobj: before installing a snapshot); durable."""
        self._check_usable()
        self._state.entries = []
        if self._path is not None:
            self._tail.clear()
            self._append_records([_truncate_plaintext(0)])
            self._maybe_rewrite()

    def deleteEntriesFrom(self, entryFrom: int) -> None:  # noqa: N802, N803  # pysyncobj's names
        """Drop the entries from list position ``entryFrom`` on, *lazily on disk*.

        pysyncobj's follower calls this whenever the leader re-sends entries after
        ``prevLogIdx``, even identical ones, then calls :meth:`add` for each re-sent entry.
        So the deleted suffix is only remembered (``_tail``, the durable entries after the
        in-memory log) and nothing is written here. The next :meth:`add` either re-adds
        exactly the durable entry at that position (same index, term and command bytes:
        nothing to write) or differs, and then a "truncate from index" record and the new
        entry are written together, fsynced and anchored before ``add`` returns.

        Why this keeps Raft's promises (ADR 0005, "Truncation records"):

        * Invariant: the durable log D (the file, replayed) is the in-memory log L
          followed by ``_tail``. L is always a prefix of D, entry for entry.
        * Everything pysyncobj acknowledges (``next_node_idx``) or votes on is read from L,
          so every acknowledged entry is durable at its index with its term and bytes.
        * An entry of D is replaced only by an ``add`` that differs from it, and that
          ``add`` makes the replacement durable before it returns, i.e. before pysyncobj
          can act on it. So a suffix that was really replaced is never left on disk to
          come back after a crash: D never holds an entry that contradicts L.
        * A suffix that was deleted but never replaced (the leader's batch ended, or a
          crash came first) stays in D. That is exactly what Raft §5.3 prescribes: a
          follower deletes entries only on a conflict. After a restart the node holds
          entries it once held durably and that no acknowledged entry contradicts, the
          state of a crash just before the ``deleteEntriesFrom``, which the eager
          rewrite allowed too. A persisted vote is unaffected: it is a separate record.
        """
        self._check_usable()
        removed = self._state.entries[entryFrom:]
        del self._state.entries[entryFrom:]
        if self._path is not None:
            self._tail.extendleft(reversed(removed))

    def deleteEntriesTo(self, entryTo: int) -> None:  # noqa: N802, N803  # pysyncobj's names
        """Drop the entries before list position ``entryTo`` (compaction after a snapshot):
        a sealed "compacted to index" record (with any pending truncation first), one
        fsync and anchor; the file is rewritten only when its dead records pile up."""
        self._check_usable()
        entries = self._state.entries
        dropped, self._state.entries = entries[:entryTo], entries[entryTo:]
        if self._path is None:
            return
        records = []
        if self._tail:
            records.append(_truncate_plaintext(self._tail[0][1]))
        if dropped:
            first = self._state.entries[0][1] if self._state.entries else dropped[-1][1] + 1
            records.append(_compact_plaintext(first))
        if records:
            self._append_records(records)
            self._tail.clear()
        self._maybe_rewrite()

    def __getitem__(self, item: Any) -> Any:
        return self._state.entries[item]

    def __len__(self) -> int:
        return len(self._state.entries)

    def __iter__(self) -> Iterator[tuple[bytes, int, int]]:
        return iter(list(self._state.entries))

    def _destroy(self) -> None:
        """Flush a pending commit index and close the file (pysyncobj calls this on
        destroy). Idempotent."""
        if self._closed:
            return
        if self._commit_dirty and not self._broken:
            with contextlib.suppress(Unavailable):
                self._store_meta()
        self._closed = True
        if self._file is not None:
            self._file.close()
            self._file = None

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:  # noqa: N802, N803
        """Remember the commit index; written lazily (once a second, and with any other
        meta record). A stale commit index is safe: it is only ever lower than the truth."""
        if raftCommitIndex != self._state.commit:
            self._state.commit = raftCommitIndex
            self._commit_dirty = True

    def getRaftCommitIndex(self) -> int:  # noqa: N802
        return self._state.commit

    def setCurrentTerm(self, term: int, votedForNodeId: str | None) -> None:  # noqa: N802, N803
        """Persist term and vote; durable before returning (Raft: before any vote or
        message reflecting them is sent)."""
        self._check_usable()
        self._state.term = term
        self._state.voted_for = votedForNodeId
        self._store_meta()

    def getCurrentTerm(self) -> int:  # noqa: N802
        return self._state.term

    def getVotedForNodeId(self) -> str | None:  # noqa: N802
        return self._state.voted_for

    def onOneSecondTimer(self) -> None:  # noqa: N802
        if self._commit_dirty and not self._closed:
            self._store_meta()

    def _store_meta(self) -> None:
        s = self._state
        self._commit_dirty = False
        if self._path is not None:
            self._append_records([_meta_plaintext(s.term, s.commit, s.voted_for)])
            self._maybe_rewrite()

    def __repr__(self) -> str:
        where = "sealed file" if self._path is not None else "memory"
        return f"SealedJournal({where}, entries={len(self._state.entries)})"


# ---------------------------------------------------------------------------------------
# Plugging it into pysyncobj


_HOOK_LOCK = threading.Lock()


@contextlib.contextmanager
def journal_hook(journal: SealedJournal) -> Iterator[None]:
    """Make the next ``SyncObj(...)`` constructed in this block use ``journal``.

    pysyncobj 0.3.17 has no journal parameter: ``SyncObj.__init__`` calls the module-level
    ``pysyncobj.syncobj.createJournal(conf.journalFile)`` exactly once (syncobj.py:166).
    This replaces that name for the duration of the block, under a process-wide lock, so
    concurrent constructions cannot pick up each other's journal. Use with
    ``journalFile=None``. The pin (``pysyncobj==0.3.17``) is load-bearing: an upgrade must
    re-check that call site.
    """
    with _HOOK_LOCK:
        original = _psy_syncobj.createJournal

        def create(_journal_file: object = None) -> SealedJournal:
            return journal

        _psy_syncobj.createJournal = create
        try:
            yield
        finally:
            _psy_syncobj.createJournal = original
