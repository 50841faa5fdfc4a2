"""``hsmvault audit log`` against a real witness (uvicorn on loopback, its own data
directory) fed by the real publisher: the happy path with a rotation and a
decommissioning, then every failure the audit must catch with a non-zero exit and the
reason — a split view (a witness that signs two digests for one epoch, one per viewer),
a wrong operator key, a broken previous-digest chain, tampered witness answers, an
unpinned witness key, a missing counter-signature, a rollback of the epoch count.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from hsmvault.cli.audit_commands import AuditFailure, audit_log
from hsmvault.cli.device_trust import load_pins
from hsmvault.cli.main import main
from hsmvault.client.trust_store import MemoryTrustStore, NamespaceTrust
from hsmvault.fleet.fleet_keys import FleetPublicKeys, FleetSecretKeys
from hsmvault.host.publisher import PublishedFleet, Publisher
from hsmvault.transparency.artifact import FleetKeyArtifact
from hsmvault.transparency.operator_messages import countersignature_message, submission_message
from hsmvault.transparency.signers import SoftwareEd25519Signer
from hsmvault.transparency.witness import WitnessConfig, WitnessServer, init_data_dir
from hsmvault.transparency.witness_client import WitnessClient

NAME = "witness.test/audit"


@dataclass
class Witness:
    path: Path
    token: str
    server: WitnessServer

    @property
    def url(self) -> str:
        return self.server.url


def _start(path: Path) -> WitnessServer:
    return WitnessServer(WitnessConfig(path))


@pytest.fixture
def witness(tmp_path: Path) -> Iterator[Witness]:
    path = tmp_path / "witness"
    token = init_data_dir(path, name=NAME, backend="software", now_ms=int(time.time() * 1000))
    server = _start(path)
    try:
        yield Witness(path, token, server)
    finally:
        server.close()


def _keys() -> FleetPublicKeys:
    return FleetSecretKeys.generate().public()


def _publisher(witness: Witness, operator: SoftwareEd25519Signer, ns: str) -> Publisher:
    publisher = Publisher(WitnessClient(witness.url), ns, operator)
    publisher.ensure_namespace(witness.token, 1)
    return publisher


def _cli(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, witness_url: str, *extra: str
) -> tuple[int, Any]:
    code = main(
        [
            "audit",
            "log",
            "--json",
            "--data-dir",
            str(tmp_path / "data"),
            "--device-dir",
            str(tmp_path / "device"),
            "--witness",
            witness_url,
            *extra,
        ]
    )
    return code, json.loads(capsys.readouterr().out)


def test_audit_log_verifies_every_epoch_and_prints_the_changes(
    witness: Witness,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "300")  # one line per change in the human output
    operator = SoftwareEd25519Signer.generate()
    publisher = _publisher(witness, operator, "app/prod")
    old, new = _keys(), _keys()
    eu = ("eu-west",)
    publisher.publish([PublishedFleet(old, regions=eu)])
    publisher.publish([PublishedFleet(old, regions=eu)])  # re-published, same keys
    publisher.publish(
        [PublishedFleet(old, status="retiring", regions=eu), PublishedFleet(new, regions=eu)]
    )
    publisher.publish(
        [PublishedFleet(new, regions=("eu-west", "us-east"))], decommissioned=[old.fleet_id]
    )

    code, doc = _cli(capsys, tmp_path, witness.url, "--namespace", "app/prod")
    assert code == 0, doc
    assert doc["ok"] is True
    assert [e["epoch"] for e in doc["epochs"]] == [1, 2, 3, 4]
    assert doc["epochs"][0]["baseline"] is True
    assert [f["fleet_id"] for f in doc["epochs"][0]["fleets"]] == [old.fleet_id.hex()]
    # ("reissued" appears when issued_at moved on: seconds, so not always in a test)
    kinds = [[c["kind"] for c in e["changes"] if c["kind"] != "reissued"] for e in doc["epochs"]]
    assert kinds == [
        [],
        [],
        # per fleet in ascending id order
        ["status_changed", "fleet_added"]
        if old.fleet_id < new.fleet_id
        else ["fleet_added", "status_changed"],
        ["fleet_removed", "regions_changed", "decommissioned"]
        if old.fleet_id < new.fleet_id
        else ["regions_changed", "fleet_removed", "decommissioned"],
    ]
    assert doc["operator_public_keys"] == [operator.public_key().hex()]
    assert doc["consistency"] == {"previous_tree_size": None, "status": "first audit"}
    pins = load_pins(tmp_path / "device")
    assert pins is not None  # pinned at first use
    assert pins.witness_name == NAME
    assert pins.operator_public_keys == (operator.public_key(),)

    # the human form names every epoch and the changes
    assert (
        main(
            [
                "audit",
                "log",
                "--data-dir",
                str(tmp_path / "data"),
                "--device-dir",
                str(tmp_path / "device"),
                "--witness",
                witness.url,
                "--namespace",
                "app/prod",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "baseline (first epoch)" in text
    assert "re-published; fleet keys unchanged" in text
    assert f"status_changed: fleet {old.fleet_id.hex()[:16]}: active -> retiring" in text
    assert f"decommissioned: fleet {old.fleet_id.hex()[:16]}" in text
    assert "ok: 4 epochs verified" in text

    # next time: the log grew and must be consistent with what this device saw
    publisher.publish([PublishedFleet(new)])
    code, doc = _cli(capsys, tmp_path, witness.url, "--namespace", "app/prod")
    assert code == 0, doc
    assert doc["consistency"] == {"previous_tree_size": 4, "status": "consistent"}
    assert len(doc["epochs"]) == 5


def test_split_view_is_caught_by_checkpoint_consistency(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A dishonest witness runs two copies of its log (same keys, same name) and signs a
    different digest for epoch 2 in each, showing one to each viewer."""
    path_a = tmp_path / "witness-a"
    token = init_data_dir(path_a, name=NAME, backend="software", now_ms=int(time.time() * 1000))
    operator = SoftwareEd25519Signer.generate()
    fleet = _keys()
    with _start(path_a) as a:
        first = _publisher(Witness(path_a, token, a), operator, "app/split")
        first.publish([PublishedFleet(fleet)])
    path_b = tmp_path / "witness-b"
    shutil.copytree(path_a, path_b)
    with _start(path_a) as a, _start(path_b) as b:
        view_a = _publisher(Witness(path_a, token, a), operator, "app/split")
        view_b = _publisher(Witness(path_b, token, b), operator, "app/split")
        view_a.publish([PublishedFleet(fleet, regions=("eu-west",))])
        view_b.publish([PublishedFleet(fleet, regions=("us-east",))])

        code, doc = _cli(capsys, tmp_path, a.url, "--namespace", "app/split")
        assert code == 0, doc
        # each view is internally valid...
        with WitnessClient(b.url) as client:
            pins = load_pins(tmp_path / "device")
            assert pins is not None
            alone = audit_log(client, "app/split", pins.witness_info(), None, MemoryTrustStore())
            assert len(alone.epochs) == 2
        # ...but not both to one viewer
        code, doc = _cli(capsys, tmp_path, b.url, "--namespace", "app/split")
    assert code == 1
    assert doc["error"] == "audit_failure"
    assert "split view" in doc["detail"]
    assert "size 2" in doc["detail"]


def test_wrong_operator_key_fails_with_the_epoch_and_the_reason(
    witness: Witness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _publisher(witness, SoftwareEd25519Signer.generate(), "app/op").publish(
        [PublishedFleet(_keys())]
    )
    other = SoftwareEd25519Signer.generate().public_key().hex()
    code, doc = _cli(
        capsys, tmp_path, witness.url, "--namespace", "app/op", "--operator-key", other
    )
    assert code == 1
    assert doc["error"] == "audit_failure"
    assert doc["detail"].startswith("epoch 1: the operator counter-signature does not verify")
    assert other[:16] in doc["detail"]
    # nothing was remembered from a failed audit
    assert not (tmp_path / "device" / "audit-store.json").exists()


def test_broken_previous_digest_chain(
    witness: Witness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    operator = SoftwareEd25519Signer.generate()
    publisher = _publisher(witness, operator, "app/chain")
    first = publisher.publish([PublishedFleet(_keys())])
    # a buggy or dishonest operator tool names the wrong previous digest
    bad = FleetKeyArtifact(
        namespace="app/chain",
        epoch=2,
        issued_at=int(time.time()),
        previous_digest=hashlib.sha256(b"not epoch 1").digest(),
        fleets=first.artifact.fleets,
    )
    with WitnessClient(witness.url) as client:
        data = bad.to_bytes()
        digest = hashlib.sha256(data).digest()
        entry = client.submit(
            "app/chain", 2, data, operator.sign(submission_message("app/chain", 2, digest))
        )
        client.put_countersignature(
            "app/chain", 2, operator.sign(countersignature_message(entry.signature))
        )
    code, doc = _cli(capsys, tmp_path, witness.url, "--namespace", "app/chain")
    assert code == 1
    assert doc["detail"] == "epoch 2: previous_digest is not epoch 1's digest (the chain is broken)"


def test_missing_counter_signature(witness: Witness, tmp_path: Path) -> None:
    operator = SoftwareEd25519Signer.generate()
    publisher = _publisher(witness, operator, "app/nocounter")
    first = publisher.publish([PublishedFleet(_keys())])
    nxt = FleetKeyArtifact("app/nocounter", 2, 5, first.artifact.digest(), first.artifact.fleets)
    with WitnessClient(witness.url) as client:
        digest = nxt.digest()
        client.submit(
            "app/nocounter",
            2,
            nxt.to_bytes(),
            operator.sign(submission_message("app/nocounter", 2, digest)),
        )
        info = client.info()
        with pytest.raises(
            AuditFailure, match="epoch 2: the operator counter-signature is missing"
        ):
            audit_log(client, "app/nocounter", info, None)


def _tampering_client(url: str, edit: Callable[[str, dict[str, Any]], None]) -> WitnessClient:
    """A witness client whose answers pass through ``edit(path, json)`` first."""
    upstream = httpx.Client(base_url=url, timeout=10.0)

    def handler(request: httpx.Request) -> httpx.Response:
        answer = upstream.request(
            request.method, request.url.raw_path.decode(), content=request.content
        )
        media = answer.headers.get("content-type", "")
        if not media.startswith("application/json"):
            return httpx.Response(
                answer.status_code, headers=answer.headers, content=answer.content
            )
        doc = answer.json()
        edit(request.url.path, doc)
        return httpx.Response(answer.status_code, json=doc)

    return WitnessClient(url, transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(
    ("what", "edit", "reason"),
    [
        (
            "artifact",
            lambda path, doc: (
                doc.update(artifact=doc["artifact"][:-4] + "AAA=") if "/audits/2" in path else None
            ),
            "epoch 2: the artifact does not hash to the digest the witness signed",
        ),
        (
            "signature",
            lambda path, doc: (
                doc.update(signature="A" * 86 + "==") if "/audits/1" in path else None
            ),
            "epoch 1: the witness signature does not verify",
        ),
        (
            "inclusion proof",
            lambda path, doc: (
                doc.update(proof=["A" * 43 + "=" for _ in doc["proof"]])
                if path == "/proofs/inclusion"
                else None
            ),
            "epoch 1: the entry is not included in the witness's log",
        ),
    ],
)
def test_tampered_witness_answers_are_refused(
    witness: Witness, what: str, edit: Callable[[str, dict[str, Any]], None], reason: str
) -> None:
    operator = SoftwareEd25519Signer.generate()
    publisher = _publisher(witness, operator, "app/tamper")
    keys = _keys()
    publisher.publish([PublishedFleet(keys)])
    publisher.publish([PublishedFleet(keys)])
    with WitnessClient(witness.url) as honest:
        info = honest.info()
        assert len(audit_log(honest, "app/tamper", info, None).epochs) == 2
    with _tampering_client(witness.url, edit) as client, pytest.raises(AuditFailure) as caught:
        audit_log(client, "app/tamper", info, None)
    assert str(caught.value) == reason, what


def test_unpinned_witness_key_and_a_shrinking_history(
    witness: Witness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    publisher = _publisher(witness, SoftwareEd25519Signer.generate(), "app/pins")
    publisher.publish([PublishedFleet(_keys())])
    stranger = SoftwareEd25519Signer.generate().public_key().hex()
    code, doc = _cli(
        capsys, tmp_path, witness.url, "--namespace", "app/pins", "--witness-key", stranger
    )
    assert code == 1
    assert "not pinned" in doc["detail"]
    with WitnessClient(witness.url) as client:
        store = MemoryTrustStore()
        store.put("app/pins", NamespaceTrust(7))
        with pytest.raises(AuditFailure, match="below epoch 7 seen before"):
            audit_log(client, "app/pins", client.info(), None, store)


def test_audit_without_a_witness_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", "--json", "--data-dir", str(tmp_path)]) == 1
    assert "no witness to audit" in json.loads(capsys.readouterr().out)["detail"]
