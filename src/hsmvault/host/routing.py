"""Which fleet serves which user: a consistent-hash ring over the routing table.

Host-side and untrusted (ADR 0008, "Routing"). Every fleet name is placed on a 64-bit
ring at ``vnodes`` points, ``SHA-256(label | name | 0x00 | i)``; a user id is placed at
``SHA-256(label | user_id)`` and served by the first fleet point clockwise from it.

Properties (tested in ``tests/host/test_routing.py``):

* deterministic: the same table routes a user id to the same fleet in every process and
  on every host (no process-seeded ``hash()``);
* adding an ``n``-th fleet moves only about ``1/n`` of the users, all of them to the new
  fleet; removing one moves only that fleet's users.

A user's vault record lives in exactly one fleet, so changing the table is an operator
migration (records are not copied by this module); the ring only keeps that migration
small.

**Rotation (ADR 0013): :class:`FleetRouter`.** Fleets are *active* (take new users) or
*retiring* (serve the users they hold until those move, take no new ones). A registered
user has an **assignment** — the fleet that answered their last successful ``Register``,
kept by the gateway's metadata store — and is routed there; a user without one (or whose
assigned fleet is no longer in the table) goes to the active fleets' ring. Without
retiring fleets or assignments, routing is exactly the plain ring over every fleet.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
from collections.abc import Iterable
from typing import Final, Protocol

from hsmvault.errors import InvalidParameter

__all__ = ["DEFAULT_VNODES", "AssignmentLookup", "FleetRing", "FleetRouter"]

_log = logging.getLogger(__name__)

#: Points per fleet on the ring: enough for a spread within a few percent of even.
DEFAULT_VNODES: Final = 256
_POINT_LABEL: Final = b"hsmvault/routing/fleet-point/v1\x00"
_USER_LABEL: Final = b"hsmvault/routing/user/v1\x00"


def _point(data: bytes) -> int:
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big")


class FleetRing:
    """An immutable consistent-hash ring of fleet names."""

    def __init__(self, fleets: Iterable[str], *, vnodes: int = DEFAULT_VNODES) -> None:
        names = sorted(set(fleets))
        if not names:
            raise InvalidParameter("the routing table needs at least one fleet")
        if any(not name or "\x00" in name for name in names):
            raise InvalidParameter("fleet names must be non-empty and contain no NUL")
        if not 1 <= vnodes <= 65536:
            raise InvalidParameter("vnodes must be in 1..65536")
        points: list[tuple[int, str]] = []
        for name in names:
            encoded = name.encode()
            for i in range(vnodes):
                points.append((_point(_POINT_LABEL + encoded + b"\x00" + i.to_bytes(4)), name))
        points.sort()
        self._keys = [p for p, _ in points]
        self._names = [n for _, n in points]
        self._fleets = tuple(names)

    @property
    def fleets(self) -> tuple[str, ...]:
        """The fleet names, sorted."""
        return self._fleets

    def fleet_for(self, user_id: bytes) -> str:
        """The fleet that serves ``user_id``."""
        if not isinstance(user_id, bytes) or not user_id:
            raise InvalidParameter("user id must be non-empty bytes")
        index = bisect.bisect_left(self._keys, _point(_USER_LABEL + user_id))
        return self._names[index % len(self._names)]

    def __repr__(self) -> str:
        return f"FleetRing(fleets={list(self._fleets)!r})"


class AssignmentLookup(Protocol):
    """What the router reads of a
    :class:`~hsmvault.host.storage.base.FleetAssignmentStore`."""

    def get_fleet_assignment(self, user_id: bytes) -> str | None: ...


class FleetRouter:
    """Routing with fleet rotation (see the module docstring).

    ``fleets`` is the whole routing table; ``retiring`` the names in it that take no new
    users (at least one fleet must stay active); ``assignments`` the store of user →
    fleet (``None``: nobody has one, everybody goes to the active ring). Lookups may
    raise what the store raises (e.g. :class:`~hsmvault.errors.Unavailable`)."""

    def __init__(
        self,
        fleets: Iterable[str],
        *,
        retiring: Iterable[str] = (),
        assignments: AssignmentLookup | None = None,
        vnodes: int = DEFAULT_VNODES,
    ) -> None:
        names = frozenset(fleets)
        retiring_names = frozenset(retiring)
        if not retiring_names <= names:
            raise InvalidParameter("retiring fleets must be in the routing table")
        active = names - retiring_names
        if not active:
            raise InvalidParameter("at least one fleet must be active")
        self._fleets = names
        self._retiring = retiring_names
        self._ring = FleetRing(active, vnodes=vnodes)
        self._assignments = assignments

    @property
    def fleets(self) -> frozenset[str]:
        """Every fleet name in the table."""
        return self._fleets

    @property
    def active(self) -> tuple[str, ...]:
        """The fleets that take new users, sorted."""
        return self._ring.fleets

    @property
    def retiring(self) -> frozenset[str]:
        return self._retiring

    def new_user_fleet(self, user_id: bytes) -> str:
        """The active fleet a user without an assignment goes to."""
        return self._ring.fleet_for(user_id)

    def assigned_fleet(self, user_id: bytes) -> str | None:
        """The user's assigned fleet if it is still in the table, else ``None``."""
        if self._assignments is None:
            return None
        name = self._assignments.get_fleet_assignment(user_id)
        if name is None:
            return None
        if name not in self._fleets:
            _log.info("an assignment names a fleet no longer routed; using the active ring")
            return None
        return name

    def fleet_for(self, user_id: bytes) -> str:
        """The fleet that serves ``user_id``: its assignment, else the active ring."""
        assigned = self.assigned_fleet(user_id)
        return assigned if assigned is not None else self.new_user_fleet(user_id)

    def __repr__(self) -> str:
        return f"FleetRouter(active={list(self.active)!r}, retiring={sorted(self._retiring)!r})"
