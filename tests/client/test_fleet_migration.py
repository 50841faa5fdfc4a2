"""The SDK moves a user off a retiring fleet at recovery (ADR 0013), in process.

The real gateway app (``create_app``: relay, router, fleet assignments in the in-memory
metadata store) runs behind Starlette's test client; its two "fleets" are in-process
nodes (``VaultService`` over simulated consensus) with real fleet keys; validation
bundles are made by the test witness and operator of ``tests/transparency/bundle_kit``
and installed in the nodes; the SDK uses :class:`BundleFleetTrust` (or pinned keys, for
an old app build). What is checked: the same backup key comes back, the user is then
assigned to and served by the active fleet, the old record is gone, the guess limit is
kept, and no failure of the move ever fails a recovery.
"""

from __future__ import annotations

import dataclasses
import pickle
import time
import warnings

import pytest

from hsmvault.client import vault_protocol as vp
from hsmvault.client.bundle_verifier import (
    BundleFleetTrust,
    BundleVerifier,
    PinnedWitnessKey,
    TrustPolicy,
)
from hsmvault.client.errors import FleetDecommissioned
from hsmvault.client.recovery_codes import Pin
from hsmvault.client.sdk import VaultClient
from hsmvault.client.trust_store import MemoryTrustStore
from hsmvault.crypto.backup_stream import BackupKey
from hsmvault.errors import Unavailable
from hsmvault.fleet.fleet_keys import FleetSecretKeys
from hsmvault.host.fleet_client import NodeAnswer
from hsmvault.host.gateway import DevTokenIssuer, GatewayConfig, RateLimit, create_app
from hsmvault.transparency.artifact import FleetEntry, FleetKeyArtifact
from hsmvault.transparency.errors import FleetKeyMismatch, StaleBundle
from hsmvault.wire import hsm_api as api
from tests.client.test_vault_protocol import CONFIG, FLEET, OTHER_FLEET, Node
from tests.host.fakes import MemoryBlobStore, MemoryMetadataStore
from tests.transparency.bundle_kit import NAMESPACE, TestOperator, TestWitness, publish

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

ISSUER = "https://auth.migration.test"
YEAR = 365 * 24 * 3600
PIN = "482916"


class InProcessFleet:
    """A FleetClient-shaped front of one in-process node; ``down`` makes it answer
    nothing, ``refuse`` maps request types to a refusal outcome."""

    def __init__(self, keys: FleetSecretKeys) -> None:
        self.keys = keys
        self.node = Node(keys=keys)
        self.public_keys = keys.public()
        self.down = False
        self.refuse: dict[type[api.Request], api.Outcome] = {}

    def call(
        self, request: bytes, *, prefer: int | None = None, failover: bool = True
    ) -> NodeAnswer:
        if self.down:
            raise Unavailable("in-process fleet: down")
        decoded = api.decode_request(request)
        outcome = self.refuse.get(type(decoded))
        raw = (
            api.refusal_for(decoded, outcome).to_bytes()
            if outcome is not None
            else self.node.send(request)
        )
        return NodeAnswer(0, api.decode_response(raw), raw)

    def record(self, user: bytes) -> object:
        return self.node.fleet.state().record(user)

    def registrations(self) -> int:
        return sum(isinstance(r, api.RegisterRequest) for r in self.node.sent)


class World:
    """Fleets A and B behind one gateway, a witness, an operator, and a clock."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))
        self.a = InProcessFleet(FleetSecretKeys.generate())
        self.b = InProcessFleet(FleetSecretKeys.generate())
        self.witness = TestWitness()
        self.operator = TestOperator()
        self.issuer = DevTokenIssuer(issuer=ISSUER)
        self.metadata = MemoryMetadataStore()
        self.epoch = 0
        self.previous: bytes | None = None
        self.config = GatewayConfig(  # epoch 1: fleet A is the only one deployed
            issuer_public_keys=(self.issuer.public_key_pem(),),
            issuer=ISSUER,
            user_rate=RateLimit(1000.0, 10_000),
            address_rate=RateLimit(1000.0, 10_000),
            fleets={"a": "fleets/a"},
            default_fleet="a",
        )
        self.app = self._app(self.config, {"a": self.a})

    def _app(self, config: GatewayConfig, fleets: dict[str, InProcessFleet]) -> object:
        return create_app(config, fleets=fleets, blobs=MemoryBlobStore(), metadata=self.metadata)

    def retire_a_at_the_gateway(self) -> None:
        """Fleet B deployed and routed; A retiring (takes no new user)."""
        config = dataclasses.replace(
            self.config,
            fleets={"a": "fleets/a", "b": "fleets/b"},
            retiring_fleets=("a",),
            default_fleet="b",
        )
        self.app = self._app(config, {"a": self.a, "b": self.b})

    def entry(self, fleet: InProcessFleet, status: str) -> FleetEntry:
        keys = fleet.public_keys
        return FleetEntry(
            fleet_id=keys.fleet_id,
            status=status,
            ake_public_key=keys.ake_public_key,
            enc_public_key=keys.enc_public_key,
            sig_public_key=keys.sig_public_key,
            not_before=int(self.now) - YEAR,
            not_after=int(self.now) + YEAR,
        )

    def publish(
        self, entries: tuple[FleetEntry, ...], *, decommissioned: tuple[bytes, ...] = ()
    ) -> None:
        """The next epoch, installed in both fleets."""
        self.epoch += 1
        artifact = FleetKeyArtifact(
            namespace=NAMESPACE,
            epoch=self.epoch,
            issued_at=int(self.now),
            previous_digest=self.previous,
            fleets=entries,
            decommissioned=decommissioned,
        )
        self.previous = artifact.digest()
        bundle = publish(
            artifact, self.witness, self.operator, timestamp_ms=int(self.now * 1000)
        ).to_bytes()
        for fleet in (self.a, self.b):
            answer = fleet.call(api.InstallBundleRequest(self.epoch, bundle).to_bytes())
            assert answer.response.outcome is api.Outcome.OK

    def trust(self) -> BundleFleetTrust:
        """A fresh device: its own trust store (epoch 0 seen)."""
        policy = TrustPolicy(
            namespace=NAMESPACE,
            witness_keys=(PinnedWitnessKey(self.witness.public_key("k1"), 0),),
            operator_public_keys=(self.operator.public_key,),
        )
        return BundleFleetTrust(BundleVerifier(policy, MemoryTrustStore(), clock=lambda: self.now))

    def client(self, user: str, **kw: object) -> VaultClient:
        if "fleet_keys" not in kw:
            kw.setdefault("fleet_trust", self.trust())
        http = TestClient(self.app)  # type: ignore[arg-type]
        return VaultClient(
            "http://testserver",
            lambda: self.issuer.mint(user),
            http=http,
            protocol=CONFIG,
            clock=lambda: self.now,
            **kw,  # type: ignore[arg-type]
        )

    def assigned(self, user: bytes) -> str | None:
        return self.metadata.get_fleet_assignment(user)


@pytest.fixture
def world() -> World:
    w = World()
    w.publish((w.entry(w.a, "active"),))  # epoch 1: A only
    return w


def _enrol(world: World, user: str, bk: BackupKey, **kw: object) -> None:
    with world.client(user) as client:
        client.protect_with_pin(Pin(PIN), bk, **kw)  # type: ignore[arg-type]


def _rotate(world: World) -> None:
    """Epoch 2: A retiring, B active (the gateway sends no new user to A either)."""
    world.publish((world.entry(world.a, "retiring"), world.entry(world.b, "active")))
    world.retire_a_at_the_gateway()


def test_a_recovery_on_a_retiring_fleet_moves_the_user_silently(world: World) -> None:
    bk = BackupKey.generate()
    _enrol(world, "alice", bk, guess_limit=5)
    assert world.assigned(b"alice") == "a"
    _rotate(world)

    with world.client("alice") as device:  # a new device: fresh trust store
        assert device.recover(PIN) == bk
    assert world.assigned(b"alice") == "b"
    assert world.a.record(b"alice") is None  # deleted in A's replicas
    moved = world.b.node.fleet.state().record(b"alice")
    assert moved is not None
    assert moved.guess_limit == 5  # the limit travelled
    assert world.b.registrations() == 1

    registrations_a = world.a.registrations()
    with world.client("alice") as device:
        assert device.recover(PIN) == bk  # now served by B; no second move
    assert world.b.registrations() == 1
    assert world.a.registrations() == registrations_a
    assert any(isinstance(r, api.LoginStartRequest) for r in world.b.node.sent)


def test_a_failed_move_never_fails_the_recovery_and_is_retried(world: World) -> None:
    bk = BackupKey.generate()
    _enrol(world, "alice", bk)
    _rotate(world)
    world.b.down = True
    with world.client("alice") as device:
        assert device.recover(PIN) == bk
    assert world.assigned(b"alice") == "a"
    assert world.a.record(b"alice") is not None  # nothing deleted before a confirmed move

    world.b.down = False
    world.b.refuse[api.RegisterRequest] = api.Outcome.UNAVAILABLE  # enrolment fails late
    with world.client("alice") as device:
        assert device.recover(PIN) == bk
    assert world.assigned(b"alice") == "a"
    assert world.a.record(b"alice") is not None

    world.b.refuse.clear()
    with world.client("alice") as device:
        assert device.recover(PIN) == bk
    assert world.assigned(b"alice") == "b"
    assert world.a.record(b"alice") is None


def test_an_unrecorded_move_deletes_nothing(world: World) -> None:
    """The gateway could not store the assignment: the SDK sees a 503 for Register and
    leaves the old record alone (the new one is simply replaced next time)."""
    bk = BackupKey.generate()
    _enrol(world, "alice", bk)
    _rotate(world)
    world.metadata.assignment_writes_unavailable = True
    with world.client("alice") as device:
        assert device.recover(PIN) == bk
    assert world.b.registrations() == 1  # B stored a record the gateway could not assign
    assert world.a.record(b"alice") is not None
    assert world.assigned(b"alice") == "a"
    world.metadata.assignment_writes_unavailable = False
    with world.client("alice") as device:
        assert device.recover(PIN) == bk  # still from A; this time the move completes
    assert world.b.registrations() == 2  # replace=True redid it
    assert world.assigned(b"alice") == "b"
    assert world.a.record(b"alice") is None


def test_a_failed_delete_after_the_move_leaves_the_user_on_the_new_fleet(
    world: World,
) -> None:
    bk = BackupKey.generate()
    _enrol(world, "alice", bk)
    _rotate(world)
    world.a.refuse[api.DeleteRequest] = api.Outcome.NO_SESSION
    with world.client("alice") as device:
        assert device.recover(PIN) == bk
    assert world.assigned(b"alice") == "b"
    assert world.a.record(b"alice") is not None  # left for the decommissioning
    with world.client("alice") as device:
        assert device.recover(PIN) == bk  # from B


def test_pinned_old_app_builds_stay_on_the_retiring_fleet(world: World) -> None:
    bk = BackupKey.generate()
    _enrol(world, "alice", bk)
    _rotate(world)
    with world.client("alice", fleet_keys=world.a.public_keys) as old_app:
        assert old_app.recover(PIN) == bk
    assert world.assigned(b"alice") == "a"
    assert world.a.record(b"alice") is not None
    assert world.b.registrations() == 0


def test_the_move_can_be_turned_off(world: World) -> None:
    bk = BackupKey.generate()
    _enrol(world, "alice", bk)
    _rotate(world)
    with world.client("alice", migrate_retiring=False) as device:
        assert device.recover(PIN) == bk
    assert world.assigned(b"alice") == "a"
    assert world.b.registrations() == 0


def test_no_move_without_an_active_fleet_valid_now(world: World) -> None:
    bk = BackupKey.generate()
    _enrol(world, "alice", bk)
    later = world.entry(world.b, "active")
    not_yet = FleetEntry(
        fleet_id=later.fleet_id,
        status="active",
        ake_public_key=later.ake_public_key,
        enc_public_key=later.enc_public_key,
        sig_public_key=later.sig_public_key,
        not_before=int(world.now) + 3600,
        not_after=int(world.now) + YEAR,
    )
    world.publish((world.entry(world.a, "retiring"), not_yet))
    with world.client("alice") as device:
        assert device.recover(PIN) == bk
    assert world.b.registrations() == 0
    assert world.assigned(b"alice") == "a"


def test_a_decommissioned_fleet_is_refused_with_its_own_error(world: World) -> None:
    bk = BackupKey.generate()
    _enrol(world, "alice", bk)
    answer = world.a.call(api.DecommissionRequest(world.a.keys.fleet_id).to_bytes())
    assert answer.response.outcome is api.Outcome.OK
    with (
        world.client("alice", fleet_keys=world.a.public_keys) as old_app,
        pytest.raises(FleetDecommissioned),
    ):
        old_app.recover(PIN)


def test_enrol_refuses_another_fleet_than_expected_before_storing_anything() -> None:
    node = Node()
    with pytest.raises(FleetKeyMismatch):
        vp.enroll(
            node.send,
            b"alice",
            Pin(PIN),
            BackupKey.generate(),
            FLEET.public(),
            expect_fleet=OTHER_FLEET.fleet_id,
            config=CONFIG,
        )
    assert any(isinstance(r, api.RegistrationStartRequest) for r in node.sent)
    assert not any(isinstance(r, api.RegisterRequest) for r in node.sent)
    bk = BackupKey.generate()
    vp.enroll(
        node.send,
        b"alice",
        Pin(PIN),
        bk,
        FLEET.public(),
        expect_fleet=FLEET.fleet_id,
        config=CONFIG,
    )
    recovery = vp.recover_session(node.send, b"alice", Pin(PIN), FLEET.public(), config=CONFIG)
    assert recovery.backup_key == bk
    assert recovery.fleet_id == FLEET.fleet_id
    text = repr(recovery)
    assert "_session" not in text
    assert "backup_key" not in text
    assert bk.expose_secret().hex() not in text
    with pytest.raises(TypeError):
        pickle.dumps(recovery)
    vp.delete_recovered(node.send, recovery)
    assert node.fleet.state().record(b"alice") is None
    with pytest.raises(Unavailable):  # the session is single use
        vp.delete_recovered(node.send, recovery)


def test_the_trust_exposes_the_last_verified_directory_only(world: World) -> None:
    trust = world.trust()
    assert trust.last_artifact is None
    assert trust.verifier.last_artifact is None
    bk = BackupKey.generate()
    _enrol(world, "alice", bk)
    with world.client("alice", fleet_trust=trust, migrate_retiring=False) as device:
        assert device.recover(PIN) == bk
    first = trust.last_artifact
    assert first is not None
    assert first.epoch == 1
    _rotate(world)
    with world.client("alice", fleet_trust=trust, migrate_retiring=False) as device:
        assert device.recover(PIN) == bk
    second = trust.last_artifact
    assert second is not None
    assert (second.epoch, second.entry_for(world.a.keys.fleet_id) is not None) == (2, True)
    # a bundle that fails a check leaves it as it was
    world.now += 40 * 24 * 3600  # beyond the freshness window
    with world.client("alice", fleet_trust=trust) as device, pytest.raises(StaleBundle):
        device.recover(PIN)
    assert trust.last_artifact is second
