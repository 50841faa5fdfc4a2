"""The session routing table: ``session_id → (user, fleet, node)`` (ADR 0008, relay rules).

A login session lives in the memory of the node that answered ``LoginStart``, so the
gateway remembers which node that was, and for which token user, and sends the
session's ``LoginFinish``, ``ChangeSecret`` and ``Delete`` there and only for that user.
Entries expire after ``ttl`` seconds; the table holds at most ``max_entries`` (oldest
dropped first). In memory only: a gateway restart loses in-flight logins, and clients
start again (the attempt was already counted by the fleet).

Session ids are 16 random bytes chosen by a node. They are not secrets on their own (a
session needs the OPAQUE session key to do anything), but the table is keyed by them
and never logs them.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from hsmvault.errors import InvalidParameter

__all__ = ["SessionRoute", "SessionTable"]


@dataclass(frozen=True, slots=True)
class SessionRoute:
    """Where a session lives and whose it is."""

    user_id: bytes
    fleet: str
    node: int
    expires_at: float


class SessionTable:
    """Thread-safe, TTL-bounded and size-bounded map of session routes."""

    def __init__(
        self,
        *,
        ttl: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (ttl > 0 and max_entries >= 1):
            raise InvalidParameter("ttl must be > 0 and max_entries >= 1")
        self._ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._routes: OrderedDict[bytes, SessionRoute] = OrderedDict()
        self._lock = threading.Lock()

    def open(self, session_id: bytes, user_id: bytes, fleet: str, node: int) -> None:
        """Record a session a node opened for ``user_id``."""
        now = self._clock()
        with self._lock:
            self._expire(now)
            self._routes.pop(session_id, None)
            self._routes[session_id] = SessionRoute(user_id, fleet, node, now + self._ttl)
            while len(self._routes) > self._max:
                self._routes.popitem(last=False)

    def lookup(self, session_id: bytes) -> SessionRoute | None:
        """The live route of ``session_id``, or ``None`` (unknown or expired)."""
        now = self._clock()
        with self._lock:
            self._expire(now)
            return self._routes.get(session_id)

    def _expire(self, now: float) -> None:
        # Insertion order is expiry order (one TTL for all), so expired entries are first.
        while self._routes:
            first = next(iter(self._routes.values()))
            if first.expires_at > now:
                break
            self._routes.popitem(last=False)

    def __len__(self) -> int:
        return len(self._routes)
