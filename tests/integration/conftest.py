"""Local fleets of real OS processes on loopback, always torn down.

:func:`start_local_fleet` forms a fleet (:func:`hsmvault.fleet.formation.form_fleet`),
puts a :class:`~tests.integration.fault_proxy.ProxyMesh` between the nodes' Raft ports,
and starts one ``python -m hsmvault.hsm.node_process`` per node. :class:`LocalFleet`
kills (SIGKILL), restarts and inspects nodes; its teardown kills every child it started,
by pid.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hsmvault.errors import Unavailable
from hsmvault.fleet.formation import FleetLayout, form_fleet, write_peer_addresses
from hsmvault.fleet.node_api import NodeInfo
from hsmvault.host.fleet_client import FleetClient, FleetClientConfig

from .fault_proxy import ProxyMesh

START_TIMEOUT = 20.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "integration: real node processes on loopback (tests/integration)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.path):
            item.add_marker(pytest.mark.integration)


def _read_line(fd: int, timeout: float) -> bytes:
    """One line from ``fd`` within ``timeout`` seconds (b"" on EOF or timeout)."""
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            return b""
        chunk = os.read(fd, 1)
        if not chunk:
            return data
        data += chunk
    return data


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


@dataclass
class LocalFleet:
    """A formed fleet, its proxies and its node processes (index ``i`` ↔ ``node-<i>``)."""

    layout: FleetLayout
    mesh: ProxyMesh
    client: FleetClient
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    node_args: list[str] = field(default_factory=list)
    """Extra command-line options of every node process (e.g. snapshot thresholds)."""

    @property
    def size(self) -> int:
        return len(self.layout.nodes)

    def start(self, i: int) -> None:
        """Start node ``i`` (not running) and wait for its ready line."""
        assert i not in self.procs, f"node {i} is already running"
        node = self.layout.nodes[i]
        log = open(node.host_dir / "stdout.log", "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hsmvault.hsm.node_process",
                "--node-dir",
                str(node.node_dir),
                "--debug-log",
                "hsmvault.fleet.transport",
                *self.node_args,
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()
        self.procs[i] = proc
        assert proc.stdout is not None
        line = _read_line(proc.stdout.fileno(), START_TIMEOUT)
        if not line.startswith(b"READY "):
            self.kill(i)
            pytest.fail(f"node {i} did not start: {(node.host_dir / 'stdout.log').read_text()}")

    def start_many(self, indices: list[int]) -> None:
        for i in indices:
            self.start(i)

    def kill(self, i: int) -> None:
        """SIGKILL node ``i`` and reap it."""
        proc = self.procs.pop(i)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()

    def stop_all(self) -> None:
        for i in list(self.procs):
            self.kill(i)

    def running(self) -> list[int]:
        return sorted(self.procs)

    def info(self, i: int) -> NodeInfo | None:
        try:
            return self.client.node_info(i)
        except Unavailable:
            return None

    def leader(self, timeout: float = 15.0, among: list[int] | None = None) -> int:
        """The index of the one running node that leads with a quorum."""
        candidates = among if among is not None else self.running()
        found: list[int] = []

        def one_leader() -> bool:
            infos = {i: self.info(i) for i in candidates}
            found[:] = [i for i, n in infos.items() if n and n.is_leader and n.has_quorum]
            return len(found) == 1

        wait_until(one_leader, timeout, "a single leader")
        return found[0]

    def wait_converged(self, timeout: float = 20.0) -> None:
        """Every running node has applied the same index and holds the same counts."""

        def same() -> bool:
            infos = [self.info(i) for i in self.running()]
            if any(n is None for n in infos):
                return False
            keys = {(n.last_applied, n.record_count, n.tombstone_count) for n in infos if n}
            return len(keys) == 1

        wait_until(same, timeout, "all running nodes to converge")

    def wait_member(self, i: int, *, above_incarnation: int = 0, timeout: float = 25.0) -> NodeInfo:
        """Wait until node ``i`` is a member (not joining) under an incarnation higher
        than ``above_incarnation``; returns its status."""
        found: list[NodeInfo] = []

        def admitted() -> bool:
            info = self.info(i)
            if info is None or info.joining or info.incarnation <= above_incarnation:
                return False
            found[:] = [info]
            return True

        wait_until(
            admitted, timeout, f"node {i} to be a member above incarnation {above_incarnation}"
        )
        return found[0]


def start_local_fleet(
    base_dir: Path,
    nodes: int = 5,
    custody: str = "software",
    mesh_seed: int = 1,
    node_args: Sequence[str] = (),
) -> LocalFleet:
    """Form, wire through proxies, and start a fleet (caller must :meth:`stop_all`).
    ``mesh_seed`` seeds the proxies' fault dice (duplicate/reorder); ``node_args`` are
    extra options of every node process (``python -m hsmvault.hsm.node_process``)."""
    assert custody in ("software", "softhsm")
    layout = form_fleet(
        base_dir, nodes=nodes, custody="softhsm" if custody == "softhsm" else "software"
    )
    mesh = ProxyMesh([(n.host, n.raft_port) for n in layout.nodes], seed=mesh_seed)
    for node in layout.nodes:
        write_peer_addresses(
            node,
            {
                peer.node_id: mesh.address_for(node.index, peer.index)
                for peer in layout.nodes
                if peer.index != node.index
            },
        )
    client = FleetClient(
        layout.api_addresses,
        FleetClientConfig(connect_timeout=0.5, request_timeout=10.0),
        public_keys=layout.public_keys,
    )
    fleet = LocalFleet(layout, mesh, client, node_args=list(node_args))
    try:
        fleet.start_many(list(range(nodes)))
        fleet.leader(timeout=START_TIMEOUT)
    except BaseException:
        fleet.stop_all()
        mesh.close()
        raise
    return fleet


@pytest.fixture(scope="module")
def fleet5(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    """A running 5-node fleet shared by one test module. Tests leave it with every node
    running and no fault active (see :func:`restore`)."""
    fleet = start_local_fleet(tmp_path_factory.mktemp("fleet"), nodes=5)
    try:
        yield fleet
    finally:
        fleet.stop_all()
        fleet.mesh.close()


def restore(fleet: LocalFleet) -> None:
    """Heal partitions, clear faults, restart stopped nodes, wait for convergence."""
    fleet.mesh.heal()
    fleet.mesh.set_faults()
    fleet.start_many([i for i in range(fleet.size) if i not in fleet.procs])
    fleet.leader()
    fleet.wait_converged()
