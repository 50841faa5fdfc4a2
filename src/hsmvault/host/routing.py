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
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable
from typing import Final

from hsmvault.errors import InvalidParameter

__all__ = ["DEFAULT_VNODES", "FleetRing"]

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
