"""``hsmvault audit evidence`` (ADR 0012): a deployment's published files alone are
accepted, and each broken link is caught by its own check with its own message.

The fleet is formed once (3 software nodes, a test-held officer and operator key), its
keys and evidence digest are logged by a real witness (in-process, 127.0.0.1), and the
witness's answers and the running fleet's member list are saved into the evidence folder
as ``hsmvault fleet publish`` does. Each attack then starts from a copy. Attacks that
need new signatures are done as a dishonest operator of an *emulated* deployment could:
with the officer key, the operator key and every software node's custody key — but never
the vendor's destroyed root — and the rewritten evidence is logged again by the witness,
so only the link under test can fail.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hsmvault.client.bundle_verifier import PinnedWitnessKey
from hsmvault.evidence.attestation.software_vendor import (
    CustodyKind,
    SoftwareVendorCA,
    issue_attestation,
    software_key_properties,
)
from hsmvault.evidence.audit import AuditPolicy, AuditReport, audit_evidence
from hsmvault.evidence.ceremony_format import (
    Statement,
    Transcript,
    node_author,
    officer_message,
    sha256_hex,
)
from hsmvault.evidence.folder import attestation_path, evidence_digest
from hsmvault.evidence.measurement import default_source_root
from hsmvault.evidence.report import render_html, render_text, report_json
from hsmvault.evidence.sources import DirectorySource
from hsmvault.fleet.fleet_keys import FleetPublicKeys, FleetSecretKeys
from hsmvault.fleet.formation import LINK_CERT_PURPOSE, link_certificate_message
from hsmvault.fleet.membership import node_id_for
from hsmvault.hsm.custody.software import SoftwareCustody
from hsmvault.hsm.nvram import MemoryNvram
from tests.evidence.evidence_kit import (
    NAMESPACE,
    Deployment,
    LiveWitness,
    deploy,
    fleet_entry,
    live_witness,
    mutate_statements,
    node_custodies,
    officer,
    operator_public,
    publish_and_save,
    read_transcript,
    rechain,
    reseal,
    resign,
    running_snapshot,
    save_from_witness,
)
from tests.transparency.bundle_kit import TestFleet

pytestmark = pytest.mark.timeout(180)


@dataclass
class Published:
    dep: Deployment
    witness: LiveWitness
    source_copy: Path


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Published]:
    base = tmp_path_factory.mktemp("audit")
    dep = deploy(base / "fleet", nodes=3)
    # The tree the nodes measured, copied now (other work may edit the checkout later).
    source_copy = base / "src"
    shutil.copytree(
        default_source_root() / "hsmvault",
        source_copy / "hsmvault",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    with live_witness(base / "witness") as witness:
        publish_and_save(witness, dep.evidence, dep.layout.public_keys)
        running_snapshot(dep.layout, dep.evidence)
        yield Published(dep, witness, source_copy)


@pytest.fixture
def folder(published: Published, tmp_path: Path) -> Path:
    """A copy of the published evidence folder, away from the fleet directory."""
    return Path(shutil.copytree(published.dep.evidence, tmp_path / "evidence"))


def failed(report: AuditReport) -> dict[str, list[str]]:
    return {c.key: c.failures for c in report.checks if c.status == "FAILED"}


def audit(path: Path, **policy: object) -> AuditReport:
    return audit_evidence(DirectorySource(path), AuditPolicy(**policy))  # type: ignore[arg-type]


def republish(published: Published, folder: Path) -> None:
    """The operator logs the rewritten evidence (its new digest) and saves the bundles."""
    keys = json.loads((folder / "fleet" / "fleet-public-keys.json").read_text())
    publish_and_save(published.witness, folder, FleetPublicKeys.from_dict(keys))


# --------------------------------------------------------------------------- accepted


def test_published_files_alone_are_accepted(folder: Path) -> None:
    report = audit(folder)
    assert report.ok, report.failures()
    assert [c.status for c in report.checks] == ["OK"] * 8
    assert report.emulated
    assert len(report.nodes) == 3
    assert all(n.attested and n.emulated and n.measurement_ok for n in report.nodes)
    assert report.epochs[0].status == "match"
    text = render_text(report)
    assert "verdict:         VERIFIED" in text
    assert text.startswith("hsmvault deployment evidence")
    assert "EMULATED HARDWARE" in text.splitlines()[0]


def test_live_witness_and_pinned_keys_are_accepted(published: Published, folder: Path) -> None:
    info = published.witness.client.info()
    report = audit(
        folder,
        witness_url=published.witness.url,
        witness_keys=tuple(PinnedWitnessKey(k.public_key, k.not_before) for k in info.keys),
        operator_keys=(operator_public(),),
        officer_keys=(officer().public_key,),
        rebuild_source=published.source_copy,
    )
    assert report.ok, report.failures()
    details = " ".join(report.check("witness").details)
    assert "witness keys pinned" in details
    assert "operator key pinned" in details
    assert any("rebuilt from" in d for d in report.check("measurement").details)


# --------------------------------------------------------------------------- measurement


def test_wrong_measurement_against_the_rebuilt_tree(published: Published, tmp_path: Path) -> None:
    other = tmp_path / "src"
    shutil.copytree(published.source_copy, other)
    target = other / "hsmvault" / "hsm" / "ceremony.py"
    target.write_text(target.read_text() + "\n# one changed line\n")
    report = audit(published.dep.evidence, rebuild_source=other)
    assert set(failed(report)) == {"measurement"}
    (message,) = failed(report)["measurement"]
    assert message.startswith("wrong measurement: the rebuilt measurement")
    assert "is not the published" in message


def test_wrong_measurement_against_the_expected_build(folder: Path) -> None:
    report = audit(folder, expected_measurement=bytes(32))
    assert failed(report) == {
        "measurement": [
            f"wrong measurement: the published build {report.measurement[:12]}… is not the "
            "expected 000000000000…"
        ]
    }


# --------------------------------------------------------------------------- attestations


def test_attestation_that_does_not_chain_to_the_vendor_root(
    published: Published, folder: Path
) -> None:
    """node-1's document re-issued under a rogue vendor CA and re-signed by its own key;
    every statement re-signed and the evidence logged again: only the chain breaks."""
    dep = published.dep
    transcript = read_transcript(folder)
    build = json.loads((folder / "measurement" / "build.json").read_text())
    rogue = SoftwareVendorCA.generate("rogue", now=datetime.now(UTC))
    generator = next(
        e.statement.author_key
        for e in transcript.entries
        if e.statement.kind == "fleet-key-statement"
    )
    with node_custodies(dep.layout) as signers:
        # not the generator: its refusal would also (rightly) fail the keys link
        custody = next(c for c in signers.values() if c.node_id != generator)
        target = next(
            n for n in dep.layout.nodes if n.identity_public_key == custody.identity.public_key
        )
        cert = rogue.issue_device_certificate(
            custody.identity,
            region=target.region,
            custody=CustodyKind.SOFTWARE,
            now=datetime.now(UTC),
        )
        document = issue_attestation(
            custody,
            device_certificate=cert,
            region=target.region,
            custody_kind=CustodyKind.SOFTWARE,
            key_properties=software_key_properties(),
            measurement=bytes.fromhex(build["sha256"]),
            issued_at=datetime.now(UTC),
            nonce=transcript.ceremony_id,
        )
        (folder / attestation_path(custody.node_id)).write_bytes(document)
        new_hash = sha256_hex(document)

        def change(s: Statement) -> Statement:
            body = dict(s.body)
            if s.kind == "attestation" and s.author_key == custody.node_id:
                body["document_sha256"] = new_hash
            if s.kind == "fleet-key-statement":
                body["members"] = [
                    {**m, "attestation_sha256": new_hash}
                    if m["node_id"] == custody.node_id.hex()
                    else m
                    for m in body["members"]
                ]
            return replace(s, body=body)

        forged = resign(
            mutate_statements(transcript, change),
            ceremony_id=transcript.ceremony_id,
            signers=signers,
            who=dep.officer,
        )
    reseal(folder, forged)
    republish(published, folder)
    report = audit(folder)
    assert set(failed(report)) == {"attestations"}, report.failures()
    (message,) = failed(report)["attestations"]
    assert message.startswith(
        f"node-{target.index} ({custody.node_id.hex()[:12]}…): the attestation does not chain"
        " to the vendor root"
    )


# --------------------------------------------------------------------------- keys


def test_software_keys_where_token_keys_are_required(folder: Path) -> None:
    report = audit(folder, require_token_keys=True)
    assert set(failed(report)) == {"keys"}
    messages = failed(report)["keys"]
    assert len(messages) == 3
    assert all(
        m.startswith("key generated outside an attested HSM: node-")
        and "not attested as generated inside a token" in m
        and "software-emulated" in m
        for m in messages
    )


def test_fleet_keys_from_outside_the_ceremony(published: Published, folder: Path) -> None:
    """Published keys that are not the generator's (same fleet id), logged by the witness
    with a re-sealed manifest: the keys link fails, nothing else."""
    fleet_id = published.dep.layout.fleet_id
    outside = FleetSecretKeys.generate(fleet_id).public()
    (folder / "fleet" / "fleet-public-keys.json").write_text(outside.to_json())
    snapshot = folder / "running" / "fleet.json"
    running = json.loads(snapshot.read_text())
    running["public_keys"] = outside.to_dict()  # the fleet serves those keys
    snapshot.write_text(json.dumps(running))
    reseal(folder, read_transcript(folder))
    republish(published, folder)
    report = audit(folder)
    assert failed(report) == {
        "keys": [
            "key generated outside an attested HSM: the published fleet keys are not the keys"
            " the attested generator stated"
        ]
    }


def test_fleet_key_statement_by_a_node_that_is_not_attested(
    published: Published, folder: Path
) -> None:
    dep = published.dep
    transcript = read_transcript(folder)
    rogue = SoftwareCustody.open(MemoryNvram(), create=True)

    def change(s: Statement) -> Statement:
        if s.kind == "fleet-key-statement":
            return replace(s, author=node_author(rogue.node_id))
        if s.kind == "acknowledgement":
            return replace(s, body={**s.body, "generator": rogue.node_id.hex()})
        return s

    with node_custodies(dep.layout) as signers:
        forged = resign(
            mutate_statements(transcript, change),
            ceremony_id=transcript.ceremony_id,
            signers={**signers, rogue.node_id: rogue},
            who=dep.officer,
        )
    reseal(folder, forged)
    republish(published, folder)
    report = audit(folder)
    assert set(failed(report)) == {"transcript", "keys"}, report.failures()
    assert any(
        m.startswith("key generated outside an attested HSM: the fleet-key statement is signed by")
        and "which is not an attested member" in m
        for m in failed(report)["keys"]
    )
    assert any(
        "signed by a node with no identity statement" in m for m in failed(report)["transcript"]
    )


# --------------------------------------------------------------------------- transcript


def _label(report: AuditReport, index: int) -> str:
    node = next(n for n in report.nodes if n.index == index)
    return f"node-{index} ({node.node_id[:12]}…)"


def test_missing_transcript_signature(published: Published, folder: Path) -> None:
    transcript = read_transcript(folder)
    node2 = published.dep.layout.nodes[2].identity_public_key
    ids = {
        e.statement.author_key: e.statement.body["identity_key"]["public_key"]
        for e in transcript.entries
        if e.statement.kind == "identity"
    }
    dropped = next(k for k, v in ids.items() if v == node2.hex())
    kept = [
        (e.statement, e.signature)
        for e in transcript.entries
        if not (e.statement.kind == "closing" and e.statement.author_key == dropped)
    ]
    reseal(folder, rechain(kept, published.dep.officer, transcript.ceremony_id))
    republish(published, folder)
    report = audit(folder)
    assert failed(report) == {
        "transcript": [
            f"missing transcript signature: {_label(report, 2)} did not sign the transcript "
            "(no closing statement)"
        ]
    }


def test_forged_node_signature_on_the_transcript(published: Published, folder: Path) -> None:
    transcript = read_transcript(folder)
    forger = SoftwareCustody.open(MemoryNvram(), create=True)
    target = next(e for e in transcript.entries if e.statement.kind == "closing")
    signed = [
        (e.statement, forger.sign(b"x", e.statement.signed_bytes()) if e is target else e.signature)
        for e in transcript.entries
    ]
    # the dishonest officer re-seals the altered transcript
    reseal(folder, rechain(signed, published.dep.officer, transcript.ceremony_id))
    republish(published, folder)
    report = audit(folder)
    assert failed(report) == {
        "transcript": [
            f"forged transcript signature: entry {target.seq} (closing by "
            f"{_label(report, _index_of(report, target.statement.author_key))}) does not verify"
            " under its identity key"
        ]
    }


def test_forged_officer_seal(published: Published, folder: Path) -> None:
    transcript = read_transcript(folder)
    stranger = officer("mallory")
    entries = list(transcript.entries)
    seal = entries[-1]
    signed = [(e.statement, e.signature) for e in entries[:-1]]
    signed.append((seal.statement, stranger.sign(officer_message(seal.statement))))
    reseal(folder, Transcript(transcript.ceremony_id).extend(signed))
    republish(published, folder)
    report = audit(folder)
    assert failed(report) == {
        "transcript": [
            f"forged transcript signature: entry {seal.seq} (seal by officer alice) does not verify"
        ]
    }


def _index_of(report: AuditReport, node_id: bytes) -> int:
    return next(n.index for n in report.nodes if n.node_id == node_id.hex())


def test_unsealed_transcript_and_altered_files(folder: Path) -> None:
    (folder / "README.txt").write_text("nothing to see\n")
    (folder / "fleet" / "extra.json").write_text("{}")
    report = audit(folder)
    assert failed(report) == {
        "files": [
            "README.txt does not match its manifest hash (altered after the ceremony)",
            "fleet/extra.json is not covered by the manifest",
        ]
    }


# --------------------------------------------------------------------------- running


def test_hsm_swapped_after_the_ceremony(published: Published, folder: Path) -> None:
    snapshot = folder / "running" / "fleet.json"
    doc = json.loads(snapshot.read_text())
    newcomer = SoftwareCustody.open(MemoryNvram(), create=True)
    link = SoftwareCustody.open(MemoryNvram(), create=True).identity.public_key
    fleet_id = bytes.fromhex(doc["fleet_id"])
    member = doc["members"][2]
    member["identity_public_key"] = newcomer.identity.public_key.hex()
    member["link_public_key"] = link.hex()
    member["node_id"] = node_id_for(link)
    member["link_certificate"] = newcomer.sign(
        LINK_CERT_PURPOSE, link_certificate_message(fleet_id, link)
    ).hex()
    snapshot.write_text(json.dumps(doc))
    report = audit(folder)
    assert set(failed(report)) == {"running"}
    (message,) = failed(report)["running"]
    assert message.startswith(
        "HSM swapped after the ceremony: node-2 (ap-south) in the running fleet"
    )
    assert "which no attestation of this ceremony covers" in message


def test_running_fleet_compared_from_a_fleet_directory(published: Published, folder: Path) -> None:
    report = audit(folder, fleet_dir=published.dep.layout.base_dir)
    assert report.ok, report.failures()
    assert report.check("running").details == ["3 running members compared"]


# --------------------------------------------------------------------------- witness


@pytest.fixture
def fresh_witness(tmp_path: Path) -> Iterator[LiveWitness]:
    with live_witness(tmp_path / "witness2") as witness:
        yield witness


def test_fleet_key_absent_from_the_logged_bundle(
    published: Published, folder: Path, fresh_witness: LiveWitness
) -> None:
    keys = published.dep.layout.public_keys
    other = FleetSecretKeys.generate(keys.fleet_id).public()
    mixed = replace(keys, enc_public_key=other.enc_public_key)
    fresh_witness.publish([fleet_entry(mixed, evidence_digest(folder))])
    save_from_witness(fresh_witness, folder, keys.fleet_id)
    report = audit(folder)
    assert failed(report) == {
        "witness": [
            f"fleet keys absent from the witness-logged bundles: no logged epoch lists fleet "
            f"{keys.fleet_id.hex()[:12]}… with the ceremony's keys and this evidence digest "
            "(epoch 1 lists the fleet with other keys (enc differ))"
        ]
    }


def test_fleet_absent_from_every_logged_epoch(
    published: Published, folder: Path, fresh_witness: LiveWitness
) -> None:
    fresh_witness.publish([TestFleet("someone-else").entry(not_before=0, not_after=2**40)])
    save_from_witness(fresh_witness, folder, published.dep.layout.fleet_id)
    report = audit(folder)
    assert failed(report) == {
        "witness": [
            "fleet keys absent from the witness-logged bundles: none of the logged epochs 1..1 "
            f"of namespace {NAMESPACE} lists fleet {published.dep.layout.fleet_id.hex()[:12]}…"
        ]
    }


def test_bundle_with_a_forged_counter_signature(folder: Path) -> None:
    path = next((folder / "bundles").glob("epoch-*.bundle.json"))
    doc = json.loads(path.read_bytes())
    doc["operator"]["signature"] = "A" * 86 + "=="
    path.write_bytes(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())
    report = audit(folder)
    assert set(failed(report)) == {"witness"}
    assert failed(report)["witness"][0].startswith(
        "epoch 1: the bundle does not verify: CounterSignatureInvalid"
    )


def test_evidence_never_logged(folder: Path) -> None:
    shutil.rmtree(folder / "bundles")
    report = audit(folder)
    assert set(failed(report)) == {"witness"}
    assert failed(report)["witness"][0].startswith("no witness-logged bundle to check")
    relaxed = audit(folder, require_witness=False)
    assert relaxed.ok
    assert relaxed.check("witness").status == "SKIPPED"


# --------------------------------------------------------------------------- reports


def test_html_report_shows_hsms_verdict_and_escapes(folder: Path) -> None:
    report = audit(folder)
    report.source = "<script>alert(1)</script>"
    page = render_html(report)
    assert 'data-verdict="VERIFIED"' in page
    assert "EMULATED HARDWARE" in page.split("</title>")[0]
    assert page.count('class="hsm"') == 3
    assert "<script>" not in page
    assert "&lt;script&gt;" in page
    assert "default-src 'none'" in page
    doc = report_json(report)
    assert doc["verdict"] == "VERIFIED"
    assert len(doc["nodes"]) == 3


@pytest.mark.parametrize(
    "body",
    [
        {"nodes": ["not a node"]},
        {"nodes": [{"index": "0", "region": 7}]},
        {"officers": [["x"]]},
        {"custody": None, "attestation_format": 3, "namespace": 5},
    ],
)
def test_malformed_inputs_are_reported_not_raised(
    published: Published, folder: Path, body: dict[str, object]
) -> None:
    transcript = read_transcript(folder)
    first = transcript.entries[0].statement
    changed = replace(first, body={**first.body, **body})
    signed = [(changed, published.dep.officer.sign(officer_message(changed)))]
    signed += [(e.statement, e.signature) for e in transcript.entries[1:]]
    reseal(folder, rechain(signed, published.dep.officer, transcript.ceremony_id))
    report = audit(folder)
    assert not report.ok
    assert "transcript" in failed(report) or "attestations" in failed(report)
