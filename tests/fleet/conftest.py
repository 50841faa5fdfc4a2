"""Fixtures for the fleet tests: identities, memberships on free loopback ports, and
running fleets that are always torn down."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from pysyncobj import pickle as psy_pickle  # type: ignore[import-untyped]

from hsmvault.fleet import codec
from hsmvault.fleet.membership import FleetMember, FleetMembership, SoftwareIdentitySigner
from hsmvault.fleet.raft_node import FleetTimings, RaftNode

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def make_membership(
    signers: list[SoftwareIdentitySigner], fleet_id: bytes | None = None
) -> FleetMembership:
    """A membership of ``signers`` on free loopback ports."""
    members = [FleetMember(s.public_key(), LOOPBACK, free_port()) for s in signers]
    return FleetMembership(fleet_id or os.urandom(32), members)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


@dataclass
class Replica:
    """A recording state machine: applies commands by appending them to a log."""

    log: list[bytes] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def apply(self, command: bytes) -> bytes:
        with self.lock:
            self.log.append(command)
            return b"applied:%d:" % len(self.log) + command

    def snapshot(self) -> list[bytes]:
        with self.lock:
            return list(self.log)


@dataclass
class Fleet:
    """A fleet of RaftNodes in this process (index i <-> signers[i], replicas[i])."""

    signers: list[SoftwareIdentitySigner]
    membership: FleetMembership
    replicas: list[Replica]
    nodes: list[RaftNode | None]

    def start(self, i: int, timings: FleetTimings | None = None) -> RaftNode:
        node = RaftNode(self.signers[i], self.membership, self.replicas[i].apply, timings)
        self.nodes[i] = node
        return node

    def stop(self, i: int) -> None:
        node = self.nodes[i]
        if node is not None:
            node.destroy()
            self.nodes[i] = None

    def running(self) -> list[RaftNode]:
        return [n for n in self.nodes if n is not None]

    def leader(self, timeout: float = 5.0) -> RaftNode:
        found: list[RaftNode] = []

        def has_leader() -> bool:
            found[:] = [n for n in self.running() if n.is_leader]
            return len(found) == 1

        wait_for(has_leader, timeout, "a single leader")
        return found[0]


@pytest.fixture
def make_fleet() -> Iterator[Callable[[int], Fleet]]:
    """Factory for fleets of ``n`` members (not started); every node is destroyed at the
    end of the test."""
    fleets: list[Fleet] = []

    def build(n: int) -> Fleet:
        signers = [SoftwareIdentitySigner.generate() for _ in range(n)]
        fleet = Fleet(signers, make_membership(signers), [Replica() for _ in range(n)], [None] * n)
        fleets.append(fleet)
        return fleet

    yield build
    for fleet in fleets:
        for i in range(len(fleet.nodes)):
            fleet.stop(i)


@dataclass
class PickleSpy:
    """Records every byte string pysyncobj pickles and every one that is unpickled
    (pysyncobj's ``pickle`` module and our in-process transcoding)."""

    produced: set[bytes] = field(default_factory=set)
    loaded: list[bytes] = field(default_factory=list)

    def assert_only_local_bytes_unpickled(self) -> None:
        """Something was unpickled, and all of it was produced in this process."""
        assert self.loaded, "instrumentation saw no unpickling at all"
        assert all(data in self.produced for data in self.loaded)


@pytest.fixture
def pickle_spy(monkeypatch: pytest.MonkeyPatch) -> PickleSpy:
    """Instrument pickling for the duration of one test (see :class:`PickleSpy`)."""
    spy = PickleSpy()
    real_dumps, real_loads, real_local = psy_pickle.dumps, psy_pickle.loads, codec._unpickle_local

    def dumps(obj: Any, protocol: Any = None) -> bytes:
        out: bytes = real_dumps(obj)
        spy.produced.add(out)
        return out

    def loads(data: bytes) -> Any:
        spy.loaded.append(bytes(data))
        return real_loads(data)

    def local(data: bytes) -> Any:
        spy.loaded.append(bytes(data))
        return real_local(data)

    monkeypatch.setattr(psy_pickle, "dumps", dumps)
    monkeypatch.setattr(psy_pickle, "loads", loads)
    monkeypatch.setattr(codec, "_unpickle_local", local)
    return spy
