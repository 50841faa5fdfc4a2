"""The operator's publisher against a real witness (uvicorn on loopback, its own data
directory) and a real 3-node fleet of OS processes: epochs in order, the previous-digest
chain, counter-signatures, inclusion evidence, installation in the fleet, rotation and
decommissioning rules, fail-closed local verification, an interrupted run completed, and
the counter-signature made by an Ed25519 key inside a SoftHSM2 token.
"""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import multiprocessing
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from hsmvault.client.bundle_verifier import BundleVerifier, PinnedWitnessKey, TrustPolicy
from hsmvault.client.trust_store import MemoryTrustStore
from hsmvault.errors import InvalidParameter
from hsmvault.fleet.fleet_keys import FleetPublicKeys, FleetSecretKeys
from hsmvault.host.fleet_client import FleetClient
from hsmvault.host.publisher import (
    DEFAULT_VALIDITY_S,
    OperatorKeyMismatch,
    PublishedFleet,
    Publisher,
    read_installed_bundle,
    verify_bundle,
)
from hsmvault.transparency.artifact import FleetKeyArtifact
from hsmvault.transparency.bundle import ValidationBundle
from hsmvault.transparency.errors import (
    CounterSignatureInvalid,
    InclusionProofInvalid,
    StaleBundle,
    UnknownWitnessKey,
)
from hsmvault.transparency.operator_messages import (
    countersignature_message,
    submission_message,
)
from hsmvault.transparency.signed_note import Verifier
from hsmvault.transparency.signers import SoftwareEd25519Signer
from hsmvault.transparency.witness import WitnessConfig, WitnessServer, init_data_dir
from hsmvault.transparency.witness_client import WitnessClient, WitnessInfo, WitnessKeyInfo
from tests.integration.conftest import LocalFleet, start_local_fleet

pytestmark = pytest.mark.timeout(180)

NS = "hsmvault/test-publisher"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    running = start_local_fleet(tmp_path_factory.mktemp("publisher-fleet"), nodes=3)
    try:
        yield running
    finally:
        running.stop_all()
        running.mesh.close()


@pytest.fixture(scope="module")
def witness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WitnessServer, str]]:
    path = tmp_path_factory.mktemp("publisher-witness") / "witness"
    token = init_data_dir(
        path, name="witness.test/publisher", backend="software", now_ms=int(time.time() * 1000)
    )
    with WitnessServer(WitnessConfig(path)) as server:
        yield server, token


@pytest.fixture
def wclient(witness: tuple[WitnessServer, str]) -> Iterator[WitnessClient]:
    with WitnessClient(witness[0].url) as client:
        yield client


_COUNTER = iter(range(10_000))


def _fresh_namespace() -> str:
    return f"{NS}/{next(_COUNTER)}-{os.getpid()}"


def _publisher(
    wclient: WitnessClient,
    witness: tuple[WitnessServer, str],
    *,
    namespace: str | None = None,
    signer: SoftwareEd25519Signer | None = None,
    root_epoch: int = 1,
) -> Publisher:
    key = signer or SoftwareEd25519Signer.generate()
    publisher = Publisher(wclient, namespace or _fresh_namespace(), key)
    publisher.ensure_namespace(witness[1], root_epoch)
    _SIGNERS[publisher.namespace] = key
    return publisher


_SIGNERS: dict[str, SoftwareEd25519Signer] = {}


def _signer_of(publisher: Publisher) -> SoftwareEd25519Signer:
    return _SIGNERS[publisher.namespace]


def _client_verifier(publisher: Publisher, wclient: WitnessClient) -> BundleVerifier:
    info = wclient.info()
    policy = TrustPolicy(
        namespace=publisher.namespace,
        witness_keys=tuple(PinnedWitnessKey(k.public_key, k.not_before) for k in info.keys),
        operator_public_keys=(publisher.operator_public_key,),
        log_key=info.log_key,
        require_inclusion=True,
    )
    return BundleVerifier(
        policy,
        MemoryTrustStore(),
        consistency_fetcher=lambda a, b: wclient.consistency_proof(a, b).proof,
    )


def _other_keys() -> FleetPublicKeys:
    return FleetSecretKeys.generate().public()


def test_first_and_next_epochs_are_chained_installed_and_verify_as_a_client_would(
    fleet: LocalFleet, wclient: WitnessClient, witness: tuple[WitnessServer, str]
) -> None:
    publisher = _publisher(wclient, witness, root_epoch=7)
    entry = PublishedFleet(
        fleet.layout.public_keys, clients=(fleet.client,), regions=("eu-west", "us-east")
    )
    assert publisher.needs_republish(3600) == "the namespace has no epoch yet"

    first = publisher.publish([entry])
    assert first.epoch == 7  # the registered root epoch
    assert first.artifact.previous_digest is None
    assert first.all_installed
    assert [(r.fleet_id, r.epoch) for r in first.installs] == [(fleet.layout.fleet_id, 7)]
    assert read_installed_bundle(fleet.client, fleet.layout.fleet_id) == first.bundle
    listed = first.artifact.entry_for(fleet.layout.fleet_id)
    assert listed is not None
    assert listed.not_after - listed.not_before == DEFAULT_VALIDITY_S
    assert listed.regions == ("eu-west", "us-east")

    bundle = ValidationBundle.from_bytes(first.bundle)
    assert bundle.inclusion is not None
    assert bundle.witness.epoch == 7
    assert first.entry.operator_countersignature == bundle.operator_signature
    Ed25519PublicKey.from_public_bytes(publisher.operator_public_key).verify(
        bundle.operator_signature, countersignature_message(bundle.witness.signature)
    )
    verifier = _client_verifier(publisher, wclient)
    assert verifier.verify_bundle_only(first.bundle) == first.artifact

    assert publisher.needs_republish(3600, installed_in=[fleet.client]) is None
    second = publisher.publish([entry])
    assert second.epoch == 8
    assert second.artifact.previous_digest == first.artifact.digest()
    again = second.artifact.entry_for(fleet.layout.fleet_id)
    assert again is not None
    assert (again.not_before, again.not_after) == (listed.not_before, listed.not_after)
    assert read_installed_bundle(fleet.client) == second.bundle
    assert verifier.verify_bundle_only(second.bundle).epoch == 8  # log consistency too
    time.sleep(0.01)
    reason = publisher.needs_republish(0.0)  # max age 0: any epoch is too old
    assert reason is not None
    assert reason.startswith("the last epoch (8) is")


def test_needs_republish_when_a_fleet_serves_an_older_epoch(
    fleet: LocalFleet, wclient: WitnessClient, witness: tuple[WitnessServer, str]
) -> None:
    # a root epoch above anything the shared fleet may hold from other tests
    publisher = _publisher(wclient, witness, root_epoch=1_000_000)
    keys = fleet.layout.public_keys
    result = publisher.publish([PublishedFleet(keys)])  # not installed anywhere
    assert result.installs == ()
    reason = publisher.needs_republish(3600, installed_in=[fleet.client])
    assert reason is not None
    assert "a fleet serves" in reason
    # the bundle of an already published epoch is re-assembled, verified, installable
    again = publisher.bundle_for(result.epoch)
    assert ValidationBundle.from_bytes(again).witness.epoch == 1_000_000
    assert fleet.client.install_bundle(result.epoch, again) == result.epoch
    assert publisher.needs_republish(3600, installed_in=[fleet.client]) is None
    other = _publisher(wclient, witness, root_epoch=1_000_000)
    other.publish([PublishedFleet(keys)])
    assert other.needs_republish(3600, installed_in=[fleet.client]) == (
        "a fleet serves a bundle of another namespace"
    )


def test_rotation_then_decommission_and_the_directory_rules(
    wclient: WitnessClient, witness: tuple[WitnessServer, str]
) -> None:
    publisher = _publisher(wclient, witness)
    old, new = _other_keys(), _other_keys()
    publisher.publish([PublishedFleet(old)])
    rotated = publisher.publish(
        [PublishedFleet(old, status="retiring"), PublishedFleet(new, regions=("ap-south",))]
    )
    statuses = {f.fleet_id: f.status for f in rotated.artifact.fleets}
    assert statuses == {old.fleet_id: "retiring", new.fleet_id: "active"}

    with pytest.raises(InvalidParameter, match="neither listed nor decommissioned"):
        publisher.publish([PublishedFleet(new)])  # the old fleet cannot silently drop out
    with pytest.raises(InvalidParameter, match="listed twice"):
        publisher.publish([PublishedFleet(new), PublishedFleet(new)])

    final = publisher.publish([PublishedFleet(new)], decommissioned=[old.fleet_id])
    assert final.artifact.decommissioned == (old.fleet_id,)
    assert [f.fleet_id for f in final.artifact.fleets] == [new.fleet_id]
    with pytest.raises(InvalidParameter, match="decommissioned fleet"):
        publisher.publish([PublishedFleet(new), PublishedFleet(old)])
    later = publisher.publish([PublishedFleet(new)])  # stays decommissioned
    assert later.artifact.decommissioned == (old.fleet_id,)
    assert later.epoch == final.epoch + 1


def test_explicit_window_and_evidence_from_a_folder(
    wclient: WitnessClient, witness: tuple[WitnessServer, str], tmp_path: Path
) -> None:
    seen: list[Path] = []

    def evidence(folder: Path) -> bytes:
        seen.append(folder)
        return hashlib.sha256(str(folder).encode()).digest()

    publisher = Publisher(
        wclient, _fresh_namespace(), SoftwareEd25519Signer.generate(), evidence_digest=evidence
    )
    publisher.ensure_namespace(witness[1], 1)
    keys = _other_keys()
    result = publisher.publish(
        [PublishedFleet(keys, not_before=1_000, not_after=4_000_000_000, evidence_dir=tmp_path)]
    )
    entry = result.artifact.entry_for(keys.fleet_id)
    assert entry is not None
    assert (entry.not_before, entry.not_after) == (1_000, 4_000_000_000)
    assert entry.evidence_digest == hashlib.sha256(str(tmp_path).encode()).digest()
    assert seen == [tmp_path]
    with pytest.raises(InvalidParameter):
        PublishedFleet(keys, not_before=1)  # a window needs both ends
    no_function = _publisher(wclient, witness)
    with pytest.raises(InvalidParameter, match="evidence_digest"):
        no_function.publish([PublishedFleet(keys, evidence_dir=tmp_path)])


def test_ensure_namespace_is_idempotent_and_refuses_another_operator_key(
    wclient: WitnessClient, witness: tuple[WitnessServer, str]
) -> None:
    signer = SoftwareEd25519Signer.generate()
    publisher = _publisher(wclient, witness, signer=signer)
    assert publisher.ensure_namespace(witness[1], 1).operator_public_key == signer.public_key()
    intruder = Publisher(wclient, publisher.namespace, SoftwareEd25519Signer.generate())
    with pytest.raises(OperatorKeyMismatch):
        intruder.ensure_namespace(witness[1], 1)
    with pytest.raises(OperatorKeyMismatch):
        intruder.publish([PublishedFleet(_other_keys())])
    with pytest.raises(OperatorKeyMismatch, match="root epoch"):
        publisher.ensure_namespace(witness[1], 2)


def test_local_verification_fails_closed_before_anything_is_installed(
    fleet: LocalFleet, wclient: WitnessClient, witness: tuple[WitnessServer, str]
) -> None:
    publisher = _publisher(wclient, witness)
    keys = fleet.layout.public_keys
    before = read_installed_bundle(fleet.client)
    real = wclient.info()

    impostor_key = SoftwareEd25519Signer.generate().public_key()
    wrong_keys = WitnessInfo(
        real.name,
        (WitnessKeyInfo(hashlib.sha256(impostor_key).digest(), impostor_key, 0),),
        real.log_key,
    )
    pinned_wrong = Publisher(
        wclient, publisher.namespace, _signer_of(publisher), witness_info=wrong_keys
    )
    with pytest.raises(UnknownWitnessKey):
        pinned_wrong.publish([PublishedFleet(keys, clients=(fleet.client,))])
    assert read_installed_bundle(fleet.client) == before

    wrong_log = replace(
        real,
        log_key=Verifier.from_public_key(real.name, SoftwareEd25519Signer.generate().public_key()),
    )
    pinned_log = Publisher(
        wclient, publisher.namespace, _signer_of(publisher), witness_info=wrong_log
    )
    with pytest.raises(InclusionProofInvalid):
        pinned_log.publish([PublishedFleet(keys, clients=(fleet.client,))])
    assert read_installed_bundle(fleet.client) == before


def test_verify_bundle_refuses_a_stale_bundle_and_a_wrong_operator_key(
    wclient: WitnessClient, witness: tuple[WitnessServer, str]
) -> None:
    publisher = _publisher(wclient, witness)
    result = publisher.publish([PublishedFleet(_other_keys())])
    info = wclient.info()
    common: dict[str, Any] = {"namespace": publisher.namespace, "witness": info}
    artifact, checkpoint = verify_bundle(
        result.bundle, operator_public_key=publisher.operator_public_key, now=time.time(), **common
    )
    assert artifact == result.artifact
    assert checkpoint is not None
    with pytest.raises(StaleBundle):
        verify_bundle(
            result.bundle,
            operator_public_key=publisher.operator_public_key,
            now=time.time() + 31 * 24 * 3600,
            **common,
        )
    with pytest.raises(CounterSignatureInvalid):
        verify_bundle(
            result.bundle,
            operator_public_key=SoftwareEd25519Signer.generate().public_key(),
            now=time.time(),
            **common,
        )


def test_an_interrupted_run_is_completed_by_the_next_publish(
    wclient: WitnessClient, witness: tuple[WitnessServer, str]
) -> None:
    signer = SoftwareEd25519Signer.generate()
    publisher = _publisher(wclient, witness, signer=signer)
    keys = _other_keys()
    first = publisher.publish([PublishedFleet(keys)])
    # a run that stopped after the witness signed, before the counter-signature
    artifact = FleetKeyArtifact(
        namespace=publisher.namespace,
        epoch=2,
        issued_at=int(time.time()),
        previous_digest=first.artifact.digest(),
        fleets=first.artifact.fleets,
    )
    data = artifact.to_bytes()
    digest = hashlib.sha256(data).digest()
    wclient.submit(
        publisher.namespace,
        2,
        data,
        signer.sign(submission_message(publisher.namespace, 2, digest)),
    )
    assert wclient.audit(publisher.namespace, 2).operator_countersignature is None
    assert publisher.needs_republish(3600) == "the last epoch (2) is not counter-signed"
    third = publisher.publish([PublishedFleet(keys)])
    assert third.epoch == 3
    assert third.artifact.previous_digest == digest
    completed = wclient.audit(publisher.namespace, 2).operator_countersignature
    assert completed is not None
    Ed25519PublicKey.from_public_bytes(signer.public_key()).verify(
        completed, countersignature_message(wclient.audit(publisher.namespace, 2).signature)
    )


def test_install_failures_are_reported_per_fleet_not_raised(
    wclient: WitnessClient, witness: tuple[WitnessServer, str]
) -> None:
    publisher = _publisher(wclient, witness)
    dead = FleetClient([("127.0.0.1", 9)])  # nothing listens there
    keys = _other_keys()
    result = publisher.publish([PublishedFleet(keys, clients=(dead,))], notify=[dead])
    assert not result.all_installed
    assert [r.fleet_id for r in result.installs] == [keys.fleet_id, None]
    assert all(r.error and "Unavailable" in r.error for r in result.installs)
    with pytest.raises(Exception, match="not installed everywhere"):
        result.raise_for_installs()


# ----------------------------------------------------------------- PKCS#11 operator key


def _w_publish_with_token(
    token_dir: str, witness_url: str, admin_token: str, namespace: str, addresses: list[Any]
) -> dict[str, Any]:
    """In a fresh process: a SoftHSM2 token, an operator key generated inside it, and a
    publish (submission and counter-signature signed by the token) installed in the
    fleet."""
    from hsmvault.hsm.softhsm import create_softhsm_token  # noqa: PLC0415
    from hsmvault.transparency.signers import (  # noqa: PLC0415
        Pkcs11Ed25519Signer,
        Pkcs11SignerConfig,
    )

    token = create_softhsm_token(token_dir, "operator")
    token.activate()
    config = Pkcs11SignerConfig(token.module_path, token.token_label, token.user_pin, "operator")
    with (
        Pkcs11Ed25519Signer.open(config) as signer,
        WitnessClient(witness_url) as client,
    ):
        publisher = Publisher(client, namespace, signer)
        publisher.ensure_namespace(admin_token, 2_000_000)  # above other tests' epochs
        fleet_client = FleetClient([(str(h), int(p)) for h, p in addresses])
        keys_hex = os.environ["HSMVAULT_TEST_FLEET_KEYS"]
        keys = FleetPublicKeys.from_json(keys_hex)
        result = publisher.publish([PublishedFleet(keys, clients=(fleet_client,))])
        return {
            "public_key": signer.public_key(),
            "bundle": result.bundle,
            "installed": result.all_installed,
            "repr": repr(signer),
        }


def test_counter_signature_by_an_operator_key_in_a_softhsm2_token(
    fleet: LocalFleet,
    wclient: WitnessClient,
    witness: tuple[WitnessServer, str],
    tmp_path: Path,
) -> None:
    namespace = _fresh_namespace()
    os.environ["HSMVAULT_TEST_FLEET_KEYS"] = fleet.layout.public_keys.to_json()
    try:
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
            done = pool.submit(
                _w_publish_with_token,
                str(tmp_path / "operator-token"),
                witness[0].url,
                witness[1],
                namespace,
                [list(a) for a in fleet.layout.api_addresses],
            ).result(timeout=120)
    finally:
        del os.environ["HSMVAULT_TEST_FLEET_KEYS"]
    assert done["installed"] is True
    public_key = done["public_key"]
    assert wclient.namespace(namespace).operator_public_key == public_key
    bundle = ValidationBundle.from_bytes(done["bundle"])
    Ed25519PublicKey.from_public_bytes(public_key).verify(
        bundle.operator_signature, bundle.countersignature_message()
    )
    assert public_key.hex() in done["repr"]
    assert read_installed_bundle(fleet.client) == done["bundle"]
    # the token's key is the namespace's: a software key cannot publish in its name
    with pytest.raises(OperatorKeyMismatch):
        Publisher(wclient, namespace, SoftwareEd25519Signer.generate()).publish(
            [PublishedFleet(fleet.layout.public_keys)]
        )
    path = f"/namespaces/{namespace.replace('/', '%2F')}/audits/2000000"
    raw = httpx.get(witness[0].url + path)
    assert base64.b64decode(raw.json()["operator_countersignature"]) == bundle.operator_signature
