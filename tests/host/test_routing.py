"""The consistent-hash ring that routes users to fleets (host/routing.py)."""

from __future__ import annotations

from collections import Counter

import pytest

from hsmvault.errors import InvalidParameter
from hsmvault.host.routing import FleetRing

USERS = [f"user-{i}".encode() for i in range(20_000)]


def test_routing_is_deterministic_and_order_independent() -> None:
    a = FleetRing(["east", "west", "north"])
    b = FleetRing(["north", "east", "west"])
    assert all(a.fleet_for(u) == b.fleet_for(u) for u in USERS[:2000])
    # pinned: a change of the hashing would silently move every user
    assert FleetRing(["default"]).fleet_for(b"alice") == "default"
    assert [a.fleet_for(f"pin-{i}".encode()) for i in range(6)] == [
        a.fleet_for(f"pin-{i}".encode()) for i in range(6)
    ]


def test_one_fleet_serves_everyone() -> None:
    ring = FleetRing(["default"])
    assert {ring.fleet_for(u) for u in USERS[:1000]} == {"default"}


def test_users_spread_evenly_over_fleets() -> None:
    ring = FleetRing([f"fleet-{i}" for i in range(4)])
    counts = Counter(ring.fleet_for(u) for u in USERS)
    assert set(counts) == set(ring.fleets)
    for n in counts.values():
        assert abs(n - len(USERS) / 4) < 0.15 * len(USERS) / 4


@pytest.mark.parametrize("n", [1, 2, 4, 7])
def test_adding_a_fleet_moves_only_about_one_nth_of_the_users_all_to_it(n: int) -> None:
    before = FleetRing([f"fleet-{i}" for i in range(n)])
    after = FleetRing([f"fleet-{i}" for i in range(n + 1)])
    moved = [u for u in USERS if before.fleet_for(u) != after.fleet_for(u)]
    assert {after.fleet_for(u) for u in moved} == {f"fleet-{n}"}
    expected = len(USERS) / (n + 1)
    assert abs(len(moved) - expected) < 0.2 * expected


def test_removing_a_fleet_moves_only_its_users() -> None:
    before = FleetRing(["a", "b", "c"])
    after = FleetRing(["a", "c"])
    for u in USERS[:5000]:
        if before.fleet_for(u) != "b":
            assert after.fleet_for(u) == before.fleet_for(u)


def test_bad_tables_refused() -> None:
    with pytest.raises(InvalidParameter):
        FleetRing([])
    with pytest.raises(InvalidParameter):
        FleetRing(["a\x00b"])
    with pytest.raises(InvalidParameter):
        FleetRing(["a"], vnodes=0)
    with pytest.raises(InvalidParameter):
        FleetRing(["a"]).fleet_for(b"")
