"""Witness key rotation: a new signing key added with a future ``not_before`` is listed
by ``/info`` at once and signs from its ``not_before`` on; old signatures keep verifying
(also after a restart without the retired key's seed); time never runs backwards in the
log."""

from __future__ import annotations

import hashlib

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from hsmvault.errors import InvalidParameter
from hsmvault.transparency.operator_messages import submission_message
from hsmvault.transparency.signers import SoftwareEd25519Signer
from hsmvault.transparency.witness import (
    Witness,
    WitnessConfig,
    WitnessServer,
    WitnessStateError,
    add_signing_key,
)
from hsmvault.transparency.witness_client import AuditEntry, WitnessClient

from .conftest import NS, T0, FakeClock, WitnessDir, artifact, ns_path, submission_body


def _submit(client: WitnessClient, operator: SoftwareEd25519Signer, epoch: int) -> AuditEntry:
    data = artifact(NS, epoch)
    digest = hashlib.sha256(data).digest()
    return client.submit(NS, epoch, data, operator.sign(submission_message(NS, epoch, digest)))


def test_a_new_key_signs_from_its_not_before_on(
    witness_dir: WitnessDir, operator: SoftwareEd25519Signer, clock: FakeClock
) -> None:
    rotation = T0 + 60_000
    new_key = add_signing_key(witness_dir.path, not_before=rotation, now_ms=clock.now)
    config = WitnessConfig(witness_dir.path, clock=clock)
    with WitnessServer(config) as server, WitnessClient(server.url) as client:
        info = client.info()
        assert [k.not_before for k in info.keys] == [T0, rotation]
        old, new = info.keys
        assert new.public_key == new_key.public_key
        client.register_namespace(witness_dir.admin_token, NS, 1, operator.public_key())
        before = _submit(client, operator, 1)
        clock.now = rotation - 1
        still_old = _submit(client, operator, 2)
        clock.now = rotation
        after = _submit(client, operator, 3)
        assert [e.key_id for e in (before, still_old, after)] == [
            old.key_id,
            old.key_id,
            new.key_id,
        ]
        for entry, key in ((before, old), (still_old, old), (after, new)):
            assert key.not_before <= entry.timestamp
            Ed25519PublicKey.from_public_bytes(key.public_key).verify(
                entry.signature, entry.message().encode()
            )
    # The retired key is no longer needed: its seed may be destroyed.
    (witness_dir.path / "keys/signing-1.seed").unlink()
    with WitnessServer(config) as server, WitnessClient(server.url) as client:
        assert client.audit(NS, 1) == before
        assert _submit(client, operator, 4).key_id == new.key_id


def test_add_key_rules(witness_dir: WitnessDir, clock: FakeClock) -> None:
    with pytest.raises(InvalidParameter, match="now or later"):
        add_signing_key(witness_dir.path, not_before=clock.now - 1, now_ms=clock.now)
    with pytest.raises(InvalidParameter, match="after every existing"):
        add_signing_key(witness_dir.path, not_before=T0, now_ms=T0)
    add_signing_key(witness_dir.path, not_before=clock.now + 10, now_ms=clock.now)
    with pytest.raises(InvalidParameter, match="after every existing"):
        add_signing_key(witness_dir.path, not_before=clock.now + 10, now_ms=clock.now)
    running = Witness.open(witness_dir.path, clock=clock)
    try:
        with pytest.raises(WitnessStateError, match="another witness process"):
            add_signing_key(witness_dir.path, not_before=clock.now + 20, now_ms=clock.now)
        assert len(running.info()["keys"]) == 2
    finally:
        running.close()


def test_no_signature_before_the_first_key_is_valid(
    witness_dir: WitnessDir, operator: SoftwareEd25519Signer
) -> None:
    clock = FakeClock(T0 - 1)
    with WitnessServer(WitnessConfig(witness_dir.path, clock=clock)) as server:
        with WitnessClient(server.url) as client:
            client.register_namespace(witness_dir.admin_token, NS, 1, operator.public_key())
        with httpx.Client(base_url=server.url) as http:
            response = http.post(
                ns_path(NS) + "/audits", json=submission_body(operator, NS, 1, b"a")
            )
            assert response.status_code == 503
            assert response.json()["error"] == "unavailable"
            assert http.get(ns_path(NS)).json()["last_verified_epoch"] is None


def test_timestamps_never_go_backwards(
    client: WitnessClient, registered: str, operator: SoftwareEd25519Signer, clock: FakeClock
) -> None:
    first = _submit(client, operator, 1)
    clock.advance(-500)  # the host clock steps back
    second = _submit(client, operator, 2)
    assert second.timestamp == first.timestamp
    clock.advance(1_000)
    assert _submit(client, operator, 3).timestamp == clock.now
