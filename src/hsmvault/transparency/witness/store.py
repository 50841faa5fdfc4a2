"""The witness's append-only record store: one file of records, one head file.

Layout (in ``<data dir>/log/``, see ``docs/formats/witness-log.md``)::

    records.jsonl   one record per line, canonical JSON, each ending in "\\n":
                    {"body": {...}, "prev": "<64 hex>", "seq": n, "type": "<type>"}
    head.json       {"bytes": size of records.jsonl, "last": "<64 hex>",
                     "records": count, "version": 1}

``seq`` counts from 0; ``prev`` is SHA-256 of the previous record's line (without its
newline), 64 zeros for the first; ``head.last`` is SHA-256 of the last line (zeros when
empty). Appending writes the line and ``fsync``\\s the file, then replaces the head
atomically (write, ``fsync``, rename, ``fsync`` of the directory). A record is *committed*
once the head counts it; nothing uncommitted is ever served.

Opening re-reads everything and refuses (:class:`WitnessStateError`) unless the file is
exactly what the head describes: a file shorter than the head says (truncation), a
broken chain, a non-canonical or unparsable line (an edit), a count or last hash that
differs from the head, or bytes after the committed end (an interrupted append: refused
too, with a hint; :func:`discard_uncommitted_tail` drops them after checking that the
committed prefix is intact).

What this detects is accidental damage and naive tampering. Someone who can rewrite the
data directory *and* recompute the chain and head can roll the witness back as a whole;
the signed checkpoints that clients and auditors keep are what exposes that.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from hsmvault.errors import DecodeError

from .codec import canonical_json, fields, loads_strict, read_hex, read_str, read_u64
from .errors import WitnessStateError

__all__ = [
    "HEAD_FILE",
    "RECORDS_FILE",
    "Record",
    "RecordStore",
    "discard_uncommitted_tail",
    "init_store",
]

RECORDS_FILE: Final = "records.jsonl"
HEAD_FILE: Final = "head.json"
_ZERO: Final = bytes(32)
MAX_LINE: Final = 512 * 1024
_HEAD_KEYS: Final = ("bytes", "last", "records", "version")
_RECORD_KEYS: Final = ("body", "prev", "seq", "type")


@dataclass(frozen=True)
class Record:
    seq: int
    type: str
    body: dict[str, Any]


@dataclass(frozen=True)
class _Head:
    records: int
    size: int
    last: bytes

    def encode(self) -> bytes:
        obj = {"bytes": self.size, "last": self.last.hex(), "records": self.records}
        return canonical_json({**obj, "version": 1}) + b"\n"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_head(directory: Path, head: _Head) -> None:
    tmp = directory / (HEAD_FILE + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, head.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, directory / HEAD_FILE)
    _fsync_dir(directory)


def _read_head(directory: Path) -> _Head:
    path = directory / HEAD_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise WitnessStateError(f"store head {path} is missing") from None
    try:
        if not raw.endswith(b"\n"):
            raise DecodeError("no final newline")
        obj = fields(loads_strict(raw[:-1], max_len=1024), _HEAD_KEYS, "head")
        if obj["version"] != 1 or canonical_json(obj) != raw[:-1]:
            raise DecodeError("not canonical or unknown version")
        return _Head(
            records=read_u64(obj["records"], "records"),
            size=read_u64(obj["bytes"], "bytes"),
            last=read_hex(obj["last"], 32, "last"),
        )
    except DecodeError as exc:
        raise WitnessStateError(f"store head {path} is malformed: {exc}") from None


def _parse_line(line: bytes, seq: int, prev: bytes) -> Record:
    try:
        obj = fields(loads_strict(line, max_len=MAX_LINE), _RECORD_KEYS, "record")
        if canonical_json(obj) != line:
            raise DecodeError("record is not canonical JSON")
        if read_u64(obj["seq"], "seq") != seq:
            raise DecodeError("record sequence number is out of order")
        if read_hex(obj["prev"], 32, "prev") != prev:
            raise DecodeError("record does not chain to the previous one")
        kind = read_str(obj["type"], "type")
        body = obj["body"]
        if not isinstance(body, dict):
            raise DecodeError("record body must be an object")
    except DecodeError as exc:
        raise WitnessStateError(f"store record {seq} is corrupt: {exc}") from None
    return Record(seq, kind, body)


def _scan(data: bytes) -> tuple[list[Record], list[int], bytes]:
    """Parse complete lines; (records, end offset of each, last hash). Bytes after the
    last newline are left to the caller (they are not a record)."""
    records: list[Record] = []
    ends: list[int] = []
    prev = _ZERO
    pos = 0
    while True:
        nl = data.find(b"\n", pos)
        if nl < 0:
            break
        line = data[pos:nl]
        records.append(_parse_line(line, len(records), prev))
        prev = hashlib.sha256(line).digest()
        pos = nl + 1
        ends.append(pos)
    return records, ends, prev


def init_store(directory: Path) -> None:
    """Create an empty store in ``directory`` (which must not hold one)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / RECORDS_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    _write_head(directory, _Head(0, 0, _ZERO))


def _committed(directory: Path) -> tuple[_Head, bytes]:
    head = _read_head(directory)
    try:
        data = (directory / RECORDS_FILE).read_bytes()
    except FileNotFoundError:
        raise WitnessStateError("store records file is missing") from None
    if len(data) < head.size:
        raise WitnessStateError(
            f"store is truncated: {len(data)} bytes on disk, {head.size} committed"
        )
    return head, data


def _check_prefix(head: _Head, data: bytes) -> list[Record]:
    records, ends, last = _scan(data[: head.size])
    if (ends[-1] if ends else 0) != head.size:
        raise WitnessStateError("store is corrupt: the committed end is not a record boundary")
    if len(records) != head.records or last != head.last:
        raise WitnessStateError(
            "store is inconsistent with its head: records were removed, added or edited"
        )
    return records


def discard_uncommitted_tail(directory: Path) -> int:
    """Drop bytes after the committed end (an interrupted append); the number dropped.
    Refuses (WitnessStateError) if the committed prefix itself is not intact."""
    head, data = _committed(directory)
    _check_prefix(head, data)
    extra = len(data) - head.size
    if extra:
        fd = os.open(directory / RECORDS_FILE, os.O_WRONLY | os.O_NOFOLLOW)
        try:
            os.ftruncate(fd, head.size)
            os.fsync(fd)
        finally:
            os.close(fd)
    return extra


class RecordStore:
    """An open store: its committed records, and :meth:`append`. Not thread-safe on its
    own beyond an internal lock; the witness serialises writers anyway."""

    def __init__(self, directory: Path, head: _Head, fd: int) -> None:
        """Internal: use :meth:`open`."""
        self._dir = directory
        self._head = head
        self._fd: int | None = fd
        self._broken = False
        self._lock = threading.Lock()

    @classmethod
    def open(cls, directory: Path) -> tuple[RecordStore, list[Record]]:
        """Open the store and return it with every committed record, in order."""
        head, data = _committed(directory)
        records = _check_prefix(head, data)
        if len(data) > head.size:
            raise WitnessStateError(
                f"store has {len(data) - head.size} bytes after its committed end (an"
                " interrupted append, never acknowledged); refusing to start. Inspect"
                " them, then drop them with the witness's 'repair' command"
            )
        fd = os.open(directory / RECORDS_FILE, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
        return cls(directory, head, fd), records

    @property
    def count(self) -> int:
        return self._head.records

    def append(self, kind: str, body: dict[str, Any]) -> Record:
        """Append and commit one record (durable when this returns). After a failure the
        store refuses every further append (fail closed; restart to re-verify)."""
        with self._lock:
            if self._fd is None or self._broken:
                raise WitnessStateError("store is closed or failed earlier; restart the witness")
            seq = self._head.records
            line = canonical_json(
                {"body": body, "prev": self._head.last.hex(), "seq": seq, "type": kind}
            )
            if len(line) > MAX_LINE or b"\n" in line:
                raise WitnessStateError("record too large")
            try:
                data = line + b"\n"
                written = os.write(self._fd, data)
                if written != len(data):
                    raise OSError("short write")
                os.fsync(self._fd)
                head = _Head(seq + 1, self._head.size + len(data), hashlib.sha256(line).digest())
                _write_head(self._dir, head)
            except OSError as exc:
                self._broken = True
                raise WitnessStateError(f"store append failed ({type(exc).__name__})") from None
            self._head = head
            return Record(seq, kind, body)

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
