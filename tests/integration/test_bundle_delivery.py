"""Validation-bundle delivery by a fleet of real node processes (ADR 0010, "Delivery").

The operator installs a bundle through ``FleetClient.install_bundle``; it is committed
through consensus (in parts: 64 KiB is more than one replicated command), every node
returns it in both start responses with the fleet's signature over the exact request and
the bundle (checked here by the client protocol's pinned trust), a lower epoch is refused,
and the bundle survives a restart of the whole fleet from sealed snapshots and journals.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from hsmvault.crypto.opaque import OpaqueClient
from hsmvault.errors import InvalidParameter
from hsmvault.fleet.snapshots import SNAPSHOT_FILE
from hsmvault.host.fleet_client import BundleInstallRefused, FleetClient
from hsmvault.wire.fleet_session import fleet_session_message
from hsmvault.wire.hsm_api import (
    MAX_BUNDLE_LEN,
    LoginStartResponse,
    Outcome,
    RegistrationStartRequest,
    RegistrationStartResponse,
)

from .conftest import LocalFleet, start_local_fleet, wait_until
from .vault_client import WRAPPED_KEY, login, login_start, register, session_keys

pytestmark = pytest.mark.timeout(180)
BUNDLE = bytes(range(256)) * (MAX_BUNDLE_LEN // 256)  # the largest: six replicated parts


@pytest.fixture(scope="module")
def fleet3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    # compact the log after a few entries, so the bundle also lives in sealed snapshots
    fleet = start_local_fleet(
        tmp_path_factory.mktemp("bundle-fleet"), nodes=3, node_args=["--snapshot-min-entries", "4"]
    )
    try:
        yield fleet
    finally:
        fleet.stop_all()
        fleet.mesh.close()


def _starts_on(
    fleet: LocalFleet, node: int
) -> list[RegistrationStartResponse | LoginStartResponse]:
    """A RegistrationStart and a LoginStart (unknown user) answered by ``node``, each
    checked by the client protocol's trust (pinned keys: fleet id and signature)."""
    request, _ = OpaqueClient().start_registration(b"pw")
    raw = RegistrationStartRequest(b"bundle-reader", request.to_bytes()).to_bytes()
    answer = fleet.client.call(raw, prefer=node, failover=False)
    assert answer.node == node
    assert isinstance(answer.response, RegistrationStartResponse)
    session_keys(fleet.client, raw, answer.response)
    pending = login_start(fleet.client, b"no such user", b"pw", prefer=node, failover=False)
    assert not isinstance(pending, Outcome)
    assert pending.node == node
    return [answer.response, pending.start]


def _expect_bundle_everywhere(fleet: LocalFleet, bundle: bytes) -> None:
    fleet.wait_converged()
    sig = Ed25519PublicKey.from_public_bytes(fleet.layout.public_keys.sig_public_key)
    for node in fleet.running():
        for response in _starts_on(fleet, node):
            assert response.fleet_id == fleet.layout.fleet_id
            assert response.bundle == bundle
        # independently of the client code: the signature is the fleet's, over the bundle
        request, _ = OpaqueClient().start_registration(b"pw")
        raw = RegistrationStartRequest(b"sig-check", request.to_bytes()).to_bytes()
        answer = fleet.client.call(raw, prefer=node, failover=False)
        assert isinstance(answer.response, RegistrationStartResponse)
        sig.verify(
            answer.response.fleet_signature,
            fleet_session_message(fleet.layout.fleet_id, raw, bundle),
        )


def test_installed_bundle_is_served_signed_by_every_node_and_survives_restart(
    fleet3: LocalFleet,
) -> None:
    _expect_bundle_everywhere(fleet3, b"")  # none installed yet: empty, still signed
    assert fleet3.client.install_bundle(5, BUNDLE) == 5
    _expect_bundle_everywhere(fleet3, BUNDLE)

    assert fleet3.client.install_bundle(5, BUNDLE) == 5  # idempotent
    with pytest.raises(BundleInstallRefused) as lower:
        fleet3.client.install_bundle(4, b"an older bundle")
    assert lower.value.outcome is Outcome.STALE_EPOCH
    with pytest.raises(BundleInstallRefused) as conflict:
        fleet3.client.install_bundle(5, BUNDLE[:-1])
    assert conflict.value.outcome is Outcome.EPOCH_CONFLICT

    # more log entries, so that snapshots are written after the bundle
    for k in range(4):
        user = f"bundle-user-{k}".encode()
        assert register(fleet3.client, user, b"pw-" + user) is Outcome.OK

    fleet3.wait_converged()
    wait_until(
        lambda: all((n.host_dir / SNAPSHOT_FILE).exists() for n in fleet3.layout.nodes),
        30.0,
        "every node to write a sealed snapshot",
    )
    for node in list(fleet3.running()):
        fleet3.kill(node)
    fleet3.start_many(list(range(fleet3.size)))
    fleet3.leader()
    _expect_bundle_everywhere(fleet3, BUNDLE)
    with pytest.raises(BundleInstallRefused) as after_restart:
        fleet3.client.install_bundle(4, b"an older bundle")
    assert after_restart.value.outcome is Outcome.STALE_EPOCH
    assert login(fleet3.client, b"bundle-user-0", b"pw-bundle-user-0") == (Outcome.OK, WRAPPED_KEY)

    # a later epoch replaces it (a smaller bundle: one part)
    assert fleet3.client.install_bundle(6, b"epoch six") == 6
    _expect_bundle_everywhere(fleet3, b"epoch six")


def test_install_bundle_checks_its_arguments_before_connecting() -> None:
    client = FleetClient([("127.0.0.1", 9)])  # nothing listens: any call would fail
    for epoch, bundle in ((-1, b"x"), (2**64, b"x"), (1, b""), (1, b"x" * (MAX_BUNDLE_LEN + 1))):
        with pytest.raises(InvalidParameter):
            client.install_bundle(epoch, bundle)
