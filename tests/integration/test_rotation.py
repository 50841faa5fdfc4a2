"""Fleet rotation end to end through real processes (issue 5, ADR 0013).

Fleets A and B are 3-node fleets of OS processes (``form_fleet`` + ``node_process``);
the witness is its own process (``python -m hsmvault.transparency.witness serve``); the
gateway is the real app served by uvicorn on loopback over a SQLite metadata store (it
is restarted with a new routing table when B is deployed); the operator publishes with
:class:`~hsmvault.host.publisher.Publisher`; devices are :class:`VaultClient` s with
their own trust stores (bundle mode) or pinned fleet keys (an old app build).

1. epoch 1: A active; u1, u2, u3 enrol (assigned to A);
2. B deployed, the gateway routes both (A retiring); epoch 2: A retiring (``not_after``
   in the future), B active;
3. u1 recovers on a new device: the same backup key, and u1 is now on B (assignment,
   A's record deleted, B answers a client that pins B's keys);
4. u2 recovers with an old client (pinned to A's keys; and a device whose trust store
   holds epoch 1, migration off): still served by A;
5. epoch 3: A decommissioned (listed in ``decommissioned``, the bundle also given to A);
   a device holding epoch 3 refuses A (``FleetKeyMismatch``); ``FleetClient(A)
   .decommission()``: every A node reports it, 0 records, a fresh sealed snapshot; u3
   (never moved) is refused (``FleetDecommissioned``), also after A's nodes restart;
   the witness's log holds the final entry.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hsmvault.client.bundle_verifier import (
    BundleFleetTrust,
    BundleVerifier,
    PinnedWitnessKey,
    TrustPolicy,
)
from hsmvault.client.errors import FleetDecommissioned
from hsmvault.client.recovery_codes import Pin
from hsmvault.client.sdk import VaultClient
from hsmvault.client.trust_store import MemoryTrustStore, TrustStore
from hsmvault.client.vault_protocol import KsfPolicy, VaultProtocolConfig
from hsmvault.crypto.backup_stream import BackupKey
from hsmvault.fleet.fleet_keys import FleetPublicKeys
from hsmvault.fleet.snapshots import SNAPSHOT_FILE
from hsmvault.host.fleet_client import FleetClient, FleetClientConfig
from hsmvault.host.gateway import DevTokenIssuer, GatewayConfig, GatewayServer, RateLimit
from hsmvault.host.gateway.server import build_app
from hsmvault.host.publisher import PublishedFleet, Publisher
from hsmvault.host.storage.filesystem import FilesystemBlobStore
from hsmvault.host.storage.sqlite import SqliteMetadataStore
from hsmvault.transparency.artifact import STATUS_RETIRING, FleetKeyArtifact
from hsmvault.transparency.errors import FleetKeyMismatch
from hsmvault.transparency.signers import SoftwareEd25519Signer
from hsmvault.transparency.witness import WitnessProcess, init_data_dir
from hsmvault.transparency.witness_client import WitnessClient
from tests.client.test_vault_protocol import TINY

from .conftest import LocalFleet, start_local_fleet, wait_until

pytestmark = pytest.mark.timeout(300)

NAMESPACE = "hsmvault/rotation-test"
ISSUER = "https://auth.rotation.test"
PROTOCOL = VaultProtocolConfig(enrolment_ksf=TINY, ksf_policy=KsfPolicy(floor=TINY))
PINS = {"u1": "135790", "u2": "246801", "u3": "112358"}


@dataclass
class Deployment:
    """Everything the scenario runs: witness, fleets, gateway, publisher, devices."""

    tmp: Path
    witness: WitnessProcess
    wclient: WitnessClient
    publisher: Publisher
    a: LocalFleet
    issuer: DevTokenIssuer = field(default_factory=lambda: DevTokenIssuer(issuer=ISSUER))
    b: LocalFleet | None = None
    gateway: GatewayServer | None = None
    metadata: SqliteMetadataStore | None = None

    # -- gateway ----------------------------------------------------------------------

    def serve(self, fleets: dict[str, LocalFleet], retiring: tuple[str, ...] = ()) -> None:
        """(Re)start the gateway with this routing table (the metadata database stays)."""
        self.stop_gateway()
        active = sorted(set(fleets) - set(retiring))
        config = GatewayConfig(
            issuer_public_keys=(self.issuer.public_key_pem(),),
            issuer=ISSUER,
            user_rate=RateLimit(100.0, 1000),
            address_rate=RateLimit(100.0, 1000),
            fleets={name: str(f.layout.base_dir) for name, f in fleets.items()},
            retiring_fleets=retiring,
            default_fleet=active[0],
        )
        self.metadata = SqliteMetadataStore(self.tmp / "gateway" / "metadata.sqlite3")
        app = build_app(
            config,
            blobs=FilesystemBlobStore(self.tmp / "gateway" / "blobs"),
            metadata=self.metadata,
            fleet_client_config=FleetClientConfig(connect_timeout=0.5, request_timeout=10.0),
        )
        self.gateway = GatewayServer(app)
        self.gateway.start()

    def stop_gateway(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
            self.gateway = None
        if self.metadata is not None:
            self.metadata.close()
            self.metadata = None

    def assigned(self, user: str) -> str | None:
        assert self.metadata is not None
        return self.metadata.get_fleet_assignment(user.encode())

    # -- devices ----------------------------------------------------------------------

    def trust(self, store: TrustStore | None = None) -> BundleFleetTrust:
        """A device's bundle trust: the witness's keys and log key, the operator key."""
        info = self.wclient.info()
        policy = TrustPolicy(
            namespace=NAMESPACE,
            witness_keys=tuple(PinnedWitnessKey(k.public_key, k.not_before) for k in info.keys),
            operator_public_keys=(self.publisher.operator_public_key,),
            log_key=info.log_key,
            require_inclusion=True,
        )
        fetch = self.wclient.consistency_proof
        return BundleFleetTrust(
            BundleVerifier(
                policy,
                store if store is not None else MemoryTrustStore(),
                consistency_fetcher=lambda old, new: fetch(old, new).proof,
            )
        )

    def device(
        self,
        user: str,
        *,
        trust: BundleFleetTrust | None = None,
        pinned: FleetPublicKeys | None = None,
        migrate: bool = True,
    ) -> VaultClient:
        assert self.gateway is not None
        kw: dict[str, object] = (
            {"fleet_keys": pinned} if pinned is not None else {"fleet_trust": trust or self.trust()}
        )
        return VaultClient(
            self.gateway.url,
            lambda: self.issuer.mint(user),
            protocol=PROTOCOL,
            migrate_retiring=migrate,
            **kw,  # type: ignore[arg-type]
        )

    # -- operator -----------------------------------------------------------------------

    def record_count(self, fleet: LocalFleet) -> int:
        counts = {fleet.client.status(i).record_count for i in fleet.running()}
        assert len(counts) == 1, counts
        return counts.pop()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("rotation")
    token = init_data_dir(
        tmp / "witness",
        name="witness.test/rotation",
        backend="software",
        now_ms=int(time.time() * 1000),
    )
    witness = WitnessProcess(tmp / "witness")
    fleets: list[LocalFleet] = []
    dep: Deployment | None = None
    try:
        wclient = WitnessClient(witness.url)
        publisher = Publisher(wclient, NAMESPACE, SoftwareEd25519Signer.generate())
        publisher.ensure_namespace(token, root_epoch=1)
        fleets.append(start_local_fleet(tmp / "fleet-a", nodes=3))
        dep = Deployment(tmp, witness, wclient, publisher, fleets[0])
        yield dep
    finally:
        if dep is not None:
            dep.stop_gateway()
            if dep.b is not None:
                fleets.append(dep.b)
            dep.wclient.close()
        for fleet in fleets:
            fleet.stop_all()
            fleet.mesh.close()
        witness.close()


def _published(fleet: LocalFleet, **kw: object) -> PublishedFleet:
    return PublishedFleet(fleet.layout.public_keys, clients=(fleet.client,), **kw)  # type: ignore[arg-type]


def test_rotation_moves_users_keeps_old_clients_and_destroys_the_old_fleet(
    deployment: Deployment,
) -> None:
    dep = deployment
    a = dep.a

    # ---------------------------------------------------------------- 1. epoch 1: A
    first = dep.publisher.publish([_published(a)])
    assert first.epoch == 1
    first.raise_for_installs()
    dep.serve({"a": a})
    keys = {user: BackupKey.generate() for user in PINS}
    epoch1_store = MemoryTrustStore()  # the store of u2's "old" device
    for user, pin in PINS.items():
        trust = dep.trust(epoch1_store if user == "u2" else None)
        with dep.device(user, trust=trust) as device:
            device.protect_with_pin(Pin(pin), keys[user])
        assert dep.assigned(user) == "a"
    seen = epoch1_store.get(NAMESPACE)
    assert seen is not None
    assert seen.highest_epoch == 1
    a.wait_converged()
    assert dep.record_count(a) == 3

    # ---------------------------------------------------------------- 2. B; epoch 2
    dep.b = start_local_fleet(dep.tmp / "fleet-b", nodes=3, mesh_seed=2)
    b = dep.b
    dep.serve({"a": a, "b": b}, retiring=("a",))
    second = dep.publisher.publish([_published(a, status=STATUS_RETIRING), _published(b)])
    second.raise_for_installs()
    entry_a = second.artifact.entry_for(a.layout.fleet_id)
    assert entry_a is not None
    assert entry_a.status == STATUS_RETIRING
    assert entry_a.not_after > time.time() + 24 * 3600  # old clients keep working until then

    # ---------------------------------------------------------------- 3. u1 moves to B
    with dep.device("u1") as new_device:
        assert new_device.recover(PINS["u1"]) == keys["u1"]
    assert dep.assigned("u1") == "b"
    a.wait_converged()
    b.wait_converged()
    assert dep.record_count(a) == 2  # u1's record deleted in every A replica
    assert dep.record_count(b) == 1
    with dep.device("u1", pinned=b.layout.public_keys) as pinned_to_b:
        assert pinned_to_b.recover(PINS["u1"]) == keys["u1"]  # B answers
    with dep.device("u1") as another_device:
        assert another_device.recover(PINS["u1"]) == keys["u1"]
    assert dep.record_count(b) == 1  # no second move

    # ---------------------------------------------------------------- 4. old clients on A
    with dep.device("u2", pinned=a.layout.public_keys) as old_app:
        assert old_app.recover(PINS["u2"]) == keys["u2"]
    with dep.device("u2", trust=dep.trust(epoch1_store), migrate=False) as old_sdk:
        assert old_sdk.recover(PINS["u2"]) == keys["u2"]  # accepts A's epoch-2 bundle
    stored = epoch1_store.get(NAMESPACE)
    assert stored is not None
    assert stored.highest_epoch == 2
    assert dep.assigned("u2") == "a"
    assert dep.record_count(a) == 2

    # ---------------------------------------------------------------- 5. epoch 3: A gone
    third = dep.publisher.publish(
        [_published(b)], decommissioned=[a.layout.fleet_id], notify=[a.client]
    )
    third.raise_for_installs()
    assert a.layout.fleet_id in third.artifact.decommissioned
    # a device that learns epoch 3 (A serves it too) refuses A
    with dep.device("u3") as epoch3_device, pytest.raises(FleetKeyMismatch):
        epoch3_device.recover(PINS["u3"])

    for node in a.layout.nodes:
        assert not (node.host_dir / SNAPSHOT_FILE).exists()  # thresholds not reached yet
    report = FleetClient.from_fleet_dir(a.layout.base_dir).decommission()
    assert report.erased_records == 2  # u2 and u3
    assert report.confirmed == (0, 1, 2)
    assert report.unconfirmed == ()
    for i in a.running():
        status = a.client.status(i)
        assert status.decommissioned
        assert (status.record_count, status.tombstone_count) == (0, 0)
    wait_until(
        lambda: all((n.host_dir / SNAPSHOT_FILE).exists() for n in a.layout.nodes),
        30.0,
        "every A node to write a sealed snapshot after decommissioning",
    )
    with (
        dep.device("u3", pinned=a.layout.public_keys) as never_moved,
        pytest.raises(FleetDecommissioned),
    ):
        never_moved.recover(PINS["u3"])

    # the decommissioning survives a restart of the whole fleet (snapshot + journal)
    for i in list(a.running()):
        a.kill(i)
    a.start_many([0, 1, 2])
    a.leader()
    # refused at once: a command reaching the log after the decommissioning is refused
    with (
        dep.device("u3", pinned=a.layout.public_keys) as never_moved,
        pytest.raises(FleetDecommissioned),
    ):
        never_moved.recover(PINS["u3"])

    def all_report_it() -> bool:  # a restarted node's status lags until it has replayed
        statuses = [a.client.status(i) for i in a.running()]
        return all(s.decommissioned and s.record_count == 0 for s in statuses)

    wait_until(all_report_it, 30.0, "every restarted A node to report the decommissioning")
    with (
        dep.device("u3", pinned=a.layout.public_keys) as never_moved,
        pytest.raises(FleetDecommissioned),
    ):
        never_moved.recover(PINS["u3"])

    # u1 (moved) still recovers; the witness's log holds the final entry
    with dep.device("u1") as device:
        assert device.recover(PINS["u1"]) == keys["u1"]
    namespace = dep.wclient.namespace(NAMESPACE)
    assert namespace.last_verified_epoch == 3
    final = FleetKeyArtifact.from_bytes(dep.wclient.audit(NAMESPACE, 3).artifact)
    assert final.decommissioned == (a.layout.fleet_id,)
    assert final.entry_for(a.layout.fleet_id) is None
    assert [f.fleet_id for f in final.fleets] == [b.layout.fleet_id]
