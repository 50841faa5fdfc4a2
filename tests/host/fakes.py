"""Test doubles for the gateway: in-memory storage and a scripted fleet (test-only).

:class:`MemoryBlobStore` and :class:`MemoryMetadataStore` follow the contracts of
``hsmvault.host.storage.base``; :class:`StubFleet` answers wire requests the way a fleet
would in shape (the right response type, session ids on LoginStart), and records what
it was sent, to which node preference, with or without failover.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from hsmvault.errors import InvalidParameter, Unavailable
from hsmvault.fleet.fleet_keys import FleetPublicKeys, FleetSecretKeys
from hsmvault.host.fleet_client import NodeAnswer
from hsmvault.host.storage.base import BackupMeta, UploadMeta
from hsmvault.wire.hsm_api import (
    API_VERSION,
    RESPONSE_FOR,
    LoginFinishRequest,
    LoginFinishResponse,
    LoginStartRequest,
    LoginStartResponse,
    Outcome,
    Response,
    decode_request,
    decode_response,
    refusal_for,
)

from .assignment_fakes import MemoryFleetAssignments
from .passkey_fakes import MemoryPasskeyStore


class MemoryBlobStore:
    def __init__(self) -> None:
        self.blobs: dict[str, bytearray] = {}
        self._lock = threading.Lock()

    def append(self, key: str, offset: int, data: bytes) -> int:
        with self._lock:
            blob = self.blobs.get(key)
            current = 0 if blob is None else len(blob)
            if offset != current:
                raise InvalidParameter("append offset is not the current size")
            if blob is None:
                blob = self.blobs[key] = bytearray()
            blob += data
            return len(blob)

    def size(self, key: str) -> int | None:
        with self._lock:
            blob = self.blobs.get(key)
            return None if blob is None else len(blob)

    def read(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        with self._lock:
            data = bytes(self.blobs[key])  # KeyError if missing, before the first chunk
        return (data[i : i + chunk_size] for i in range(0, len(data), chunk_size))

    def delete(self, key: str) -> None:
        with self._lock:
            self.blobs.pop(key, None)


class MemoryMetadataStore(MemoryPasskeyStore, MemoryFleetAssignments):
    def __init__(self) -> None:
        super().__init__()  # the passkey tables (ADR 0011)
        MemoryFleetAssignments.__init__(self)  # fleet assignments (ADR 0013)
        self.uploads: dict[tuple[bytes, str, str], UploadMeta] = {}
        self.backups: dict[tuple[bytes, str], BackupMeta] = {}
        self._lock = threading.Lock()

    def create_upload(self, upload: UploadMeta) -> UploadMeta:
        with self._lock:
            for existing in self.uploads.values():
                if (existing.user_id, existing.backup_id, existing.size, existing.sha256) == (
                    upload.user_id,
                    upload.backup_id,
                    upload.size,
                    upload.sha256,
                ):
                    return existing
            self.uploads[(upload.user_id, upload.backup_id, upload.upload_id)] = upload
            return upload

    def get_upload(self, user_id: bytes, backup_id: str, upload_id: str) -> UploadMeta | None:
        with self._lock:
            return self.uploads.get((user_id, backup_id, upload_id))

    def commit_upload(self, upload: UploadMeta, committed_at: float) -> str | None:
        with self._lock:
            key = (upload.user_id, upload.backup_id)
            stored = self.uploads.pop((upload.user_id, upload.backup_id, upload.upload_id))
            previous = self.backups.get(key)
            self.backups[key] = BackupMeta(
                user_id=stored.user_id,
                backup_id=stored.backup_id,
                blob_key=stored.blob_key,
                size=stored.size,
                sha256=stored.sha256,
                label=stored.label,
                created_at=committed_at,
            )
            if previous is None or previous.blob_key == stored.blob_key:
                return None
            return previous.blob_key

    def get_backup(self, user_id: bytes, backup_id: str) -> BackupMeta | None:
        with self._lock:
            return self.backups.get((user_id, backup_id))

    def list_backups(self, user_id: bytes) -> list[BackupMeta]:
        with self._lock:
            return sorted(
                (b for b in self.backups.values() if b.user_id == user_id),
                key=lambda b: b.backup_id,
            )

    def delete_backup(self, user_id: bytes, backup_id: str) -> BackupMeta | None:
        with self._lock:
            return self.backups.pop((user_id, backup_id), None)

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class Call:
    """One request the stub fleet received."""

    request: bytes
    prefer: int | None
    failover: bool
    node: int


class StubFleet:
    """A FleetClient-shaped double. ``LoginStart`` opens a session on node
    ``next_node`` (then rotates); ``LoginFinish`` answers OK only on the node that holds
    the session (else NO_SESSION, as a real node would); other requests get their
    paired response type with ``default_outcome``. ``unavailable=True`` raises
    :class:`Unavailable` like a fleet with no node answering."""

    def __init__(self, size: int = 5, *, default_outcome: Outcome = Outcome.BAD_REQUEST) -> None:
        self.size = size
        self.calls: list[Call] = []
        self.sessions: dict[bytes, int] = {}
        self.next_node = 0
        self.unavailable = False
        self.answer_override: Response | None = None
        self.default_outcome = default_outcome
        self.public_keys: FleetPublicKeys | None = FleetSecretKeys.generate().public()
        self._lock = threading.Lock()

    def call(
        self, request: bytes, *, prefer: int | None = None, failover: bool = True
    ) -> NodeAnswer:
        with self._lock:
            if self.unavailable:
                raise Unavailable("stub fleet: no node answered")
            node = prefer if prefer is not None else self.next_node
            self.calls.append(Call(request, prefer, failover, node))
            response = self.answer_override or self._answer(request, node)
            raw = response.to_bytes()
            return NodeAnswer(node, response, raw)

    def _answer(self, data: bytes, node: int) -> Response:
        request = decode_request(data)
        if isinstance(request, LoginStartRequest):
            session_id = secrets.token_bytes(16)
            self.sessions[session_id] = node
            self.next_node = (self.next_node + 1) % self.size
            return LoginStartResponse(
                Outcome.OK,
                session_id=session_id,
                ke2=b"\x02" * 320,
                ksf_params=b"\x01" * 14,
                attempts_remaining=9,
                fleet_id=b"\x04" * 32,
                fleet_signature=b"\x05" * 64,
            )
        if isinstance(request, LoginFinishRequest):
            if self.sessions.get(request.session_id) != node:
                return LoginFinishResponse.refused(Outcome.NO_SESSION)
            return LoginFinishResponse(Outcome.OK, sealed_wrapped_key=b"\x03" * 80)
        response_type = RESPONSE_FOR[type(request)]
        if self.default_outcome is Outcome.OK and not response_type._FIELDS:
            ok = decode_response(bytes([API_VERSION, response_type.TAG, Outcome.OK]))
            return ok
        return refusal_for(request, self.default_outcome)


def memory_stores() -> tuple[MemoryBlobStore, MemoryMetadataStore]:
    return MemoryBlobStore(), MemoryMetadataStore()


__all__ = ["Call", "MemoryBlobStore", "MemoryMetadataStore", "StubFleet", "memory_stores"]
