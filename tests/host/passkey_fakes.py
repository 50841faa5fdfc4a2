"""An in-memory :class:`~hsmvault.host.storage.base.PasskeyStore` (test-only).

:class:`~tests.host.fakes.MemoryMetadataStore` inherits it, so every gateway test app
has passkey storage; ``tests/host/storage/test_passkey_contract.py`` runs the same
contract against it as against SQLite and PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import threading

from hsmvault.errors import InvalidParameter
from hsmvault.host.storage.base import PasskeyChallenge, PasskeyRecord
from hsmvault.host.storage.sql_common import check_passkey_update
from hsmvault.host.storage.validation import check_passkey_challenge, check_passkey_record

__all__ = ["MemoryPasskeyStore"]


class MemoryPasskeyStore:
    def __init__(self) -> None:
        self.passkeys: dict[bytes, PasskeyRecord] = {}
        self.challenges: dict[bytes, PasskeyChallenge] = {}
        self._passkey_lock = threading.Lock()

    def add_passkey(self, record: PasskeyRecord) -> None:
        check_passkey_record(record)
        with self._passkey_lock:
            if record.credential_id in self.passkeys:
                raise InvalidParameter("credential id already registered")
            self.passkeys[record.credential_id] = record

    def get_passkey(self, user_id: bytes, credential_id: bytes) -> PasskeyRecord | None:
        with self._passkey_lock:
            record = self.passkeys.get(credential_id)
            return record if record is not None and record.user_id == user_id else None

    def list_passkeys(self, user_id: bytes) -> list[PasskeyRecord]:
        with self._passkey_lock:
            mine = [r for r in self.passkeys.values() if r.user_id == user_id]
        return sorted(mine, key=lambda r: (r.created_at, r.credential_id))

    def update_passkey(
        self,
        user_id: bytes,
        credential_id: bytes,
        *,
        expected_sign_count: int,
        expected_prf_salt: bytes,
        sign_count: int,
        last_used_at: float,
        prf_salt: bytes | None = None,
        wrapped_key: bytes | None = None,
    ) -> PasskeyRecord | None:
        check_passkey_update(sign_count, prf_salt, wrapped_key)
        with self._passkey_lock:
            record = self.passkeys.get(credential_id)
            if (
                record is None
                or record.user_id != user_id
                or record.sign_count != expected_sign_count
                or record.prf_salt != expected_prf_salt
            ):
                return None
            updated = dataclasses.replace(
                record,
                sign_count=sign_count,
                last_used_at=last_used_at,
                prf_salt=record.prf_salt if prf_salt is None else prf_salt,
                wrapped_key=record.wrapped_key if wrapped_key is None else wrapped_key,
            )
            self.passkeys[credential_id] = updated
            return updated

    def delete_passkey(self, user_id: bytes, credential_id: bytes) -> bool:
        with self._passkey_lock:
            record = self.passkeys.get(credential_id)
            if record is None or record.user_id != user_id:
                return False
            del self.passkeys[credential_id]
            return True

    def put_challenge(self, challenge: PasskeyChallenge, *, purge_before: float) -> None:
        check_passkey_challenge(challenge)
        with self._passkey_lock:
            for key in [k for k, c in self.challenges.items() if c.expires_at < purge_before]:
                del self.challenges[key]
            if challenge.challenge in self.challenges:
                raise InvalidParameter("challenge already issued")
            self.challenges[challenge.challenge] = challenge

    def consume_challenge(self, user_id: bytes, challenge: bytes) -> PasskeyChallenge | None:
        with self._passkey_lock:
            stored = self.challenges.get(challenge)
            if stored is None or stored.user_id != user_id:
                return None
            self.challenges[challenge] = dataclasses.replace(stored, consumed=True)
            return stored
