"""The FleetAssignmentStore contract (base.py, ADR 0013), run against every adapter:
SQLite, PostgreSQL (a real server started by the fixture) and the gateway tests'
in-memory fake."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from hsmvault.errors import InvalidParameter
from hsmvault.host.storage.base import FleetAssignmentStore, MetadataStore

from ..assignment_fakes import MemoryFleetAssignments
from .conftest import META_BACKENDS, MetaOpener, contract_stores

ALICE = b"alice@example.org"
BOB = "bób\x00binary".encode()


@pytest.fixture(params=["memory", *META_BACKENDS])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FleetAssignmentStore]:
    for opened in contract_stores(request, tmp_path, MemoryFleetAssignments):
        assert isinstance(opened, FleetAssignmentStore)
        yield opened


def test_the_sql_metadata_stores_are_assignment_stores(metadata_store: MetadataStore) -> None:
    assert isinstance(metadata_store, FleetAssignmentStore)
    assert metadata_store.schema_version() == 3  # type: ignore[attr-defined]


def test_set_get_replace(store: FleetAssignmentStore) -> None:
    assert store.get_fleet_assignment(ALICE) is None
    store.set_fleet_assignment(ALICE, "old", 10.5)
    store.set_fleet_assignment(BOB, "old", 11.0)
    assert store.get_fleet_assignment(ALICE) == "old"
    assert store.get_fleet_assignment(BOB) == "old"
    store.set_fleet_assignment(ALICE, "new fleet ü", 20.0)  # last write wins
    assert store.get_fleet_assignment(ALICE) == "new fleet ü"
    assert store.get_fleet_assignment(BOB) == "old"
    assert store.count_fleet_assignments("old") == 1
    assert store.count_fleet_assignments("new fleet ü") == 1
    assert store.count_fleet_assignments("nobody's") == 0


def test_clear_is_a_compare_and_delete(store: FleetAssignmentStore) -> None:
    store.set_fleet_assignment(ALICE, "new", 1.0)
    assert store.clear_fleet_assignment(ALICE, "old") is False  # already moved on
    assert store.get_fleet_assignment(ALICE) == "new"
    assert store.clear_fleet_assignment(ALICE, "new") is True
    assert store.get_fleet_assignment(ALICE) is None
    assert store.clear_fleet_assignment(ALICE, "new") is False
    assert store.count_fleet_assignments("new") == 0


@pytest.mark.parametrize(
    ("user", "fleet"),
    [(b"", "a"), (b"x" * 256, "a"), (ALICE, ""), (ALICE, "x" * 129), (ALICE, "bad\x00name")],
)
def test_bad_arguments_are_refused(store: FleetAssignmentStore, user: bytes, fleet: str) -> None:
    with pytest.raises(InvalidParameter):
        store.set_fleet_assignment(user, fleet, 1.0)
    with pytest.raises(InvalidParameter):
        store.clear_fleet_assignment(user, fleet)
    if fleet == "a":
        with pytest.raises(InvalidParameter):
            store.get_fleet_assignment(user)
    else:
        with pytest.raises(InvalidParameter):
            store.count_fleet_assignments(fleet)
    assert store.get_fleet_assignment(ALICE) is None


def test_assignments_survive_a_restart(open_metadata_store: MetaOpener) -> None:
    first = open_metadata_store()
    assert isinstance(first, FleetAssignmentStore)
    first.set_fleet_assignment(ALICE, "fleet-b", 5.0)
    first.close()
    reopened = open_metadata_store()
    assert isinstance(reopened, FleetAssignmentStore)
    assert reopened.get_fleet_assignment(ALICE) == "fleet-b"


def test_racing_writers_leave_one_of_their_values(store: FleetAssignmentStore) -> None:
    names = [f"fleet-{i}" for i in range(8)]
    barrier = threading.Barrier(len(names))

    def write(name: str) -> None:
        barrier.wait()
        store.set_fleet_assignment(ALICE, name, 1.0)

    with ThreadPoolExecutor(len(names)) as pool:
        list(pool.map(write, names))
    assert store.get_fleet_assignment(ALICE) in names
    assert sum(store.count_fleet_assignments(n) for n in names) == 1
