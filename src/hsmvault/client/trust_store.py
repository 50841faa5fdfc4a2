"""What a client remembers between validation bundles, per namespace (ADR 0010 step 5, 8).

For each namespace: the highest epoch it has accepted (so an older bundle is refused as a
rollback, even after a restart) and the last witness checkpoint it verified (origin, tree
size, root hash and the signed note bytes; the anchor of the next consistency proof).

Two stores implement :class:`TrustStore`:

* :class:`MemoryTrustStore` — in memory (tests, the audit tool, short-lived processes);
* :class:`FileTrustStore` — one JSON file, written atomically (temp file in the same
  directory, ``fsync``, ``os.replace``, ``fsync`` of the directory), mode 0600. A missing
  file is an empty store (first use); a file that exists but does not parse strictly
  raises :class:`TrustStoreCorrupted` on every access and is **never** silently reset —
  forgetting the highest epoch would re-open rollback. One process per file: there is
  no cross-process lock (a thread lock guards one instance).

Both refuse to move backwards (:class:`~hsmvault.errors.RollbackError`): a lower epoch,
dropping or shrinking the checkpoint, another root at the same size, or another origin.
The verifier only stores after every check passed; this is defence in depth.

File format (canonical JSON, :func:`~hsmvault.transparency.artifact.canonical_json`)::

    {"version": 1,
     "namespaces": {"<ns>": {"highest_epoch": n,
                             "checkpoint": null | {"origin": "...", "tree_size": n,
                                                   "root_hash": "<64 hex>",
                                                   "note": "<b64 signed note>"}}}}
"""

from __future__ import annotations

import base64
import binascii
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from hsmvault.durable_files import replace_file_atomically
from hsmvault.errors import DecodeError, InvalidParameter, RollbackError
from hsmvault.transparency.artifact import canonical_json, check_namespace, parse_canonical_json
from hsmvault.transparency.checkpoint import parse_checkpoint
from hsmvault.transparency.errors import BundleFormatError
from hsmvault.transparency.signed_note import parse_note

__all__ = [
    "STORE_VERSION",
    "FileTrustStore",
    "MemoryTrustStore",
    "NamespaceTrust",
    "StoredCheckpoint",
    "TrustStore",
    "TrustStoreCorrupted",
    "check_forward",
]

STORE_VERSION: Final = 1
_MAX_FILE_LEN: Final = 4 * 1024 * 1024
_MAX_NAMESPACES: Final = 1024
_MAX_NOTE_LEN: Final = 4096
_U64: Final = (1 << 64) - 1


class TrustStoreCorrupted(DecodeError):
    """The trust-store file exists but is not a valid store. It is left untouched; the
    operator of the device must look at it (restoring it from a backup is safe,
    deleting it forgets every accepted epoch)."""


@dataclass(frozen=True)
class StoredCheckpoint:
    """A witness checkpoint the client verified: its origin, size, root and the signed
    note it came in. Construction checks that the note's body says exactly that
    (InvalidParameter otherwise); the note's signature is not re-checked."""

    origin: str
    tree_size: int
    root_hash: bytes
    note: bytes

    def __post_init__(self) -> None:
        if type(self.tree_size) is not int or not 0 <= self.tree_size <= _U64:
            raise InvalidParameter("tree size must fit in 64 bits")
        if type(self.root_hash) is not bytes or len(self.root_hash) != 32:
            raise InvalidParameter("root hash must be 32 bytes")
        if type(self.note) is not bytes or not 0 < len(self.note) <= _MAX_NOTE_LEN:
            raise InvalidParameter("checkpoint note must be 1 to 4096 bytes")
        try:
            body = parse_checkpoint(parse_note(self.note).text)
        except DecodeError:
            raise InvalidParameter("checkpoint note is malformed") from None
        if (body.origin, body.tree_size, body.root_hash) != (
            self.origin,
            self.tree_size,
            self.root_hash,
        ):
            raise InvalidParameter("checkpoint fields do not match the note")


@dataclass(frozen=True)
class NamespaceTrust:
    """The trust state of one namespace."""

    highest_epoch: int
    checkpoint: StoredCheckpoint | None = None

    def __post_init__(self) -> None:
        if type(self.highest_epoch) is not int or not 0 <= self.highest_epoch <= _U64:
            raise InvalidParameter("epoch must fit in 64 bits")
        if self.checkpoint is not None and not isinstance(self.checkpoint, StoredCheckpoint):
            raise InvalidParameter("checkpoint must be a StoredCheckpoint")


class TrustStore(Protocol):
    """Persisted client trust state, keyed by namespace."""

    def get(self, namespace: str) -> NamespaceTrust | None:
        """The stored state of ``namespace``, or ``None`` before its first bundle."""
        ...

    def put(self, namespace: str, state: NamespaceTrust) -> None:
        """Store ``state`` durably; raises RollbackError if it would move backwards."""
        ...


def check_forward(old: NamespaceTrust | None, new: NamespaceTrust) -> None:
    """Raise :class:`RollbackError` unless ``new`` is at or ahead of ``old``."""
    if old is None:
        return
    if new.highest_epoch < old.highest_epoch:
        raise RollbackError("trust store: the highest epoch cannot go down")
    before, after = old.checkpoint, new.checkpoint
    if before is None:
        return
    if after is None:
        raise RollbackError("trust store: a checkpoint cannot be dropped")
    if after.origin != before.origin or after.tree_size < before.tree_size:
        raise RollbackError("trust store: the checkpoint cannot go back or change log")
    if after.tree_size == before.tree_size and after.root_hash != before.root_hash:
        raise RollbackError("trust store: another root for the same tree size")


class MemoryTrustStore:
    """A :class:`TrustStore` in memory (forgets everything when the process ends)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, NamespaceTrust] = {}

    def get(self, namespace: str) -> NamespaceTrust | None:
        with self._lock:
            return self._states.get(namespace)

    def put(self, namespace: str, state: NamespaceTrust) -> None:
        check_namespace(namespace)
        with self._lock:
            check_forward(self._states.get(namespace), state)
            self._states[namespace] = state


# --- the file store -------------------------------------------------------------------


def _state_to_dict(state: NamespaceTrust) -> dict[str, Any]:
    cp = state.checkpoint
    return {
        "highest_epoch": state.highest_epoch,
        "checkpoint": None
        if cp is None
        else {
            "origin": cp.origin,
            "tree_size": cp.tree_size,
            "root_hash": cp.root_hash.hex(),
            "note": base64.b64encode(cp.note).decode("ascii"),
        },
    }


def _corrupt(detail: str) -> TrustStoreCorrupted:
    return TrustStoreCorrupted(f"trust store file is corrupted: {detail}")


def _exact_fields(value: object, keys: set[str], what: str) -> dict[str, Any]:
    if not isinstance(value, dict) or set(value) != keys:
        raise _corrupt(f"{what} has unexpected fields")
    return value


def _state_from_dict(value: object) -> NamespaceTrust:
    obj = _exact_fields(value, {"highest_epoch", "checkpoint"}, "namespace entry")
    epoch = obj["highest_epoch"]
    if type(epoch) is not int:
        raise _corrupt("highest_epoch")
    raw_cp = obj["checkpoint"]
    checkpoint: StoredCheckpoint | None = None
    try:
        if raw_cp is not None:
            cp = _exact_fields(raw_cp, {"origin", "tree_size", "root_hash", "note"}, "checkpoint")
            origin, size, root_hex, note_b64 = (
                cp["origin"],
                cp["tree_size"],
                cp["root_hash"],
                cp["note"],
            )
            if not (
                isinstance(origin, str)
                and type(size) is int
                and isinstance(root_hex, str)
                and len(root_hex) == 64
                and all(c in "0123456789abcdef" for c in root_hex)
                and isinstance(note_b64, str)
                and note_b64.isascii()
            ):
                raise _corrupt("checkpoint fields")
            note = base64.b64decode(note_b64, validate=True)
            if base64.b64encode(note).decode("ascii") != note_b64:
                raise _corrupt("checkpoint note encoding")
            checkpoint = StoredCheckpoint(origin, size, bytes.fromhex(root_hex), note)
        return NamespaceTrust(epoch, checkpoint)
    except (InvalidParameter, binascii.Error, ValueError):
        raise _corrupt("namespace entry") from None


def _parse_store(data: bytes) -> dict[str, NamespaceTrust]:
    try:
        doc = parse_canonical_json(data, max_len=_MAX_FILE_LEN, what="trust store")
    except BundleFormatError:
        raise _corrupt("not canonical JSON") from None
    obj = _exact_fields(doc, {"version", "namespaces"}, "store")
    if type(obj["version"]) is not int or obj["version"] != STORE_VERSION:
        raise _corrupt("unknown version")
    namespaces = obj["namespaces"]
    if not isinstance(namespaces, dict) or len(namespaces) > _MAX_NAMESPACES:
        raise _corrupt("namespaces")
    out: dict[str, NamespaceTrust] = {}
    for name, entry in namespaces.items():
        try:
            check_namespace(name)
        except InvalidParameter:
            raise _corrupt("namespace name") from None
        out[name] = _state_from_dict(entry)
    return out


def _encode_store(states: dict[str, NamespaceTrust]) -> bytes:
    return canonical_json(
        {
            "version": STORE_VERSION,
            "namespaces": {name: _state_to_dict(s) for name, s in states.items()},
        }
    )


class FileTrustStore:
    """A :class:`TrustStore` in one JSON file (see the module docstring for the contract).

    Every :meth:`get` re-reads the file, so a new instance (a restarted client) sees
    exactly what the last :meth:`put` made durable.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = Path(path)
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        return self._path

    def _load(self) -> dict[str, NamespaceTrust]:
        try:
            data = self._path.read_bytes()
        except FileNotFoundError:
            return {}
        return _parse_store(data)

    def get(self, namespace: str) -> NamespaceTrust | None:
        with self._lock:
            return self._load().get(namespace)

    def put(self, namespace: str, state: NamespaceTrust) -> None:
        check_namespace(namespace)
        if not isinstance(state, NamespaceTrust):
            raise InvalidParameter("state must be NamespaceTrust")
        with self._lock:
            states = self._load()
            check_forward(states.get(namespace), state)
            if namespace not in states and len(states) >= _MAX_NAMESPACES:
                raise InvalidParameter("trust store holds at most 1024 namespaces")
            states[namespace] = state
            self._write(_encode_store(states))

    def _write(self, data: bytes) -> None:
        replace_file_atomically(
            self._path, data, tmp_prefix=f".{self._path.name}.", tmp_suffix=".tmp"
        )

    def __repr__(self) -> str:
        return f"FileTrustStore({str(self._path)!r})"
