"""An in-memory :class:`~hsmvault.host.storage.base.FleetAssignmentStore` (test-only).

:class:`~tests.host.fakes.MemoryMetadataStore` inherits it, so every gateway test app
records fleet assignments; ``tests/host/storage/test_assignment_contract.py`` runs the
same contract against it as against SQLite and PostgreSQL.
"""

from __future__ import annotations

import threading

from hsmvault.errors import Unavailable
from hsmvault.host.storage.validation import check_fleet_name, check_user_id

__all__ = ["MemoryFleetAssignments"]


class MemoryFleetAssignments:
    def __init__(self) -> None:
        self.assignments: dict[bytes, tuple[str, float]] = {}
        self.assignments_unavailable = False  # tests: make every call fail like a lost DB
        self.assignment_writes_unavailable = False  # tests: only writes fail
        self._assignment_lock = threading.Lock()

    def _check_up(self, *, write: bool = False) -> None:
        if self.assignments_unavailable or (write and self.assignment_writes_unavailable):
            raise Unavailable("metadata database unavailable")

    def get_fleet_assignment(self, user_id: bytes) -> str | None:
        check_user_id(user_id)
        self._check_up()
        with self._assignment_lock:
            entry = self.assignments.get(user_id)
            return None if entry is None else entry[0]

    def set_fleet_assignment(self, user_id: bytes, fleet: str, assigned_at: float) -> None:
        check_user_id(user_id)
        check_fleet_name(fleet)
        self._check_up(write=True)
        with self._assignment_lock:
            self.assignments[user_id] = (fleet, float(assigned_at))

    def clear_fleet_assignment(self, user_id: bytes, fleet: str) -> bool:
        check_user_id(user_id)
        check_fleet_name(fleet)
        self._check_up(write=True)
        with self._assignment_lock:
            entry = self.assignments.get(user_id)
            if entry is None or entry[0] != fleet:
                return False
            del self.assignments[user_id]
            return True

    def count_fleet_assignments(self, fleet: str) -> int:
        check_fleet_name(fleet)
        self._check_up()
        with self._assignment_lock:
            return sum(1 for name, _ in self.assignments.values() if name == fleet)
