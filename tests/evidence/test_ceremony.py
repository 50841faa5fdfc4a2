"""The key ceremony (ADR 0012): the node side in-process (every refusal a node makes), the
statement and transcript format, and whole ceremonies run by ``form_fleet`` over real node
processes (software custody, and SoftHSM2 whose token attributes are attested).

What these prove: the fleet keys come out of one attested node and reach only members
that verified the generator; a node refuses a wrong measurement, a foreign vendor root, a
box or statement that is not its own, any step out of order, and a membership that is not
the acknowledged link keys; the formation process and the evidence hold no fleet secret;
officers can pause or abort a ceremony; the code a node runs in the ceremony is measured.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st

from hsmvault.errors import InvalidParameter
from hsmvault.evidence.attestation.software_vendor import SoftwareVendorCA
from hsmvault.evidence.audit import AuditPolicy, audit_evidence
from hsmvault.evidence.ceremony import CeremonyError, CeremonyOptions
from hsmvault.evidence.ceremony_format import (
    CeremonyFormatError,
    Entry,
    Statement,
    Transcript,
    entry_hash,
    node_author,
    officer_author,
    officer_message,
)
from hsmvault.evidence.folder import MANIFEST_FILE, Manifest, evidence_digest
from hsmvault.evidence.sources import DirectorySource
from hsmvault.evidence.vendor_process import run_vendor
from hsmvault.fleet.fleet_keys import FleetSecretKeys, unseal_fleet_keys
from hsmvault.fleet.formation import FLEET_FILE, FleetLayout, FormationError, form_fleet
from hsmvault.hsm import ceremony as node_side
from hsmvault.hsm import node_process
from hsmvault.hsm.ceremony import CeremonyRefused, NodeCeremony
from hsmvault.hsm.custody.software import SoftwareCustody
from hsmvault.hsm.nvram import DirectoryNvram, MemoryNvram
from tests.evidence.evidence_kit import deploy, officer
from tests.evidence.import_closure import is_measured, loaded_hsmvault_files

pytestmark = pytest.mark.timeout(180)

M = bytes(range(32))
CID = bytes(range(100, 132))
NOW = 1_795_000_000


# --------------------------------------------------------------------------- in-process


@dataclass
class Node:
    ceremony: NodeCeremony
    custody: SoftwareCustody
    nvram: MemoryNvram
    host_dir: Path
    identity: dict[str, Any] = field(default_factory=dict)
    document: str = ""


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def _measurer(i: int, measure: Callable[[int], bytes] | None) -> Callable[[], bytes]:
    return (lambda: measure(i)) if measure else (lambda: M)


class Driver:
    """Drives NodeCeremony objects the way the coordinator does (test code)."""

    def __init__(
        self, tmp: Path, n: int = 3, measure: Callable[[int], bytes] | None = None
    ) -> None:
        self.ca = SoftwareVendorCA.generate("test", now=datetime.fromtimestamp(NOW - 60, UTC))
        self.nodes = []
        for i in range(n):
            nvram = MemoryNvram()
            custody = SoftwareCustody.open(nvram, create=True)
            host = tmp / f"node-{i}"
            host.mkdir()
            ceremony = NodeCeremony(
                custody=custody,
                nvram=nvram,
                custody_kind="software",
                index=i,
                host_dir=host,
                write_private=_write,
                clock=lambda: NOW,
                measure_self=_measurer(i, measure),
            )
            self.nodes.append(Node(ceremony, custody, nvram, host))
        self.transcript = Transcript(CID)

    def root(self, ca: SoftwareVendorCA | None = None) -> str:
        der = (ca or self.ca).root_certificate.public_bytes(serialization.Encoding.DER)
        return base64.b64encode(der).decode()

    def append(self, wire: dict[str, Any]) -> None:
        entry = Entry.from_json({"seq": 0, "prev": "0" * 64, **wire})
        self.transcript = self.transcript.append(entry.statement, entry.signature)

    def identities(self) -> None:
        for i, node in enumerate(self.nodes):
            answer = node.ceremony.handle(
                {
                    "step": "identity",
                    "ceremony_id": CID.hex(),
                    "index": i,
                    "region": "eu-west",
                    "custody": "software",
                }
            )
            node.identity = answer["entry"]
            self.append(answer["entry"])

    def attest(self, ca_for: Callable[[int], SoftwareVendorCA] | None = None) -> None:
        for i, node in enumerate(self.nodes):
            ca = ca_for(i) if ca_for else self.ca
            cert = ca.issue_device_certificate(
                node.custody.identity,
                region="eu-west",
                custody="software",  # type: ignore[arg-type]
                now=datetime.fromtimestamp(NOW - 60, UTC),
            )
            der = cert.public_bytes(serialization.Encoding.DER)
            answer = node.ceremony.handle(
                {"step": "attest", "device_certificate": base64.b64encode(der).decode()}
            )
            node.document = answer["document"]
            self.append(answer["entry"])

    @property
    def generator(self) -> Node:
        return min(self.nodes, key=lambda n: n.custody.node_id)

    def generate_request(self) -> dict[str, Any]:
        return {
            "step": "generate",
            "vendor_roots": [self.root()],
            "members": [{"identity": n.identity, "document": n.document} for n in self.nodes],
            "transcript_head": self.transcript.head,
        }

    def generate(self) -> dict[str, Any]:
        answer = self.generator.ceremony.handle(self.generate_request())
        self.statement = answer["entry"]
        self.boxes = answer["boxes"]
        self.append(answer["entry"])
        return answer

    def deliver_request(self, node: Node, **change: Any) -> dict[str, Any]:
        gen = self.generator
        request = {
            "step": "deliver",
            "vendor_roots": [self.root()],
            "generator_identity": gen.identity,
            "generator_document": gen.document,
            "statement": self.statement,
            "box": self.boxes[node.custody.node_id.hex()],
        }
        request.update(change)
        return request

    def deliver(self) -> None:
        self.acks = []
        for node in self.nodes:
            answer = node.ceremony.handle(self.deliver_request(node))
            self.acks.append(answer["entry"])
            self.append(answer["entry"])

    def credentials_request(self) -> dict[str, Any]:
        return {
            "step": "credentials",
            "membership": [a["statement"]["body"]["fleet_node_id"] for a in self.acks],
            "identities": [n.identity for n in self.nodes],
            "acknowledgements": self.acks,
        }

    def credentials(self) -> None:
        for node in self.nodes:
            for wire in node.ceremony.handle(self.credentials_request())["entries"]:
                self.append(wire)

    def close(self) -> list[dict[str, Any]]:
        request = {"step": "close", "transcript": self.transcript.to_json()}
        return [n.ceremony.handle(request)["entry"] for n in self.nodes]


@pytest.fixture
def driver(tmp_path: Path) -> Driver:
    return Driver(tmp_path)


def test_in_process_ceremony_hands_every_member_the_same_keys(driver: Driver) -> None:
    driver.identities()
    driver.attest()
    answer = driver.generate()
    statement = Entry.from_json({"seq": 0, "prev": "0" * 64, **answer["entry"]}).statement
    assert statement.author == node_author(driver.generator.custody.node_id)
    assert set(answer["boxes"]) == {n.custody.node_id.hex() for n in driver.nodes}
    driver.deliver()
    publics = set()
    for node in driver.nodes:
        sealed = (node.host_dir / node_side.FLEET_KEYS_FILE).read_bytes()
        keys = unseal_fleet_keys(node.custody, sealed, bytes.fromhex(statement.body["fleet_id"]))
        publics.add(keys.public().to_json())
        # the box was opened once: the transport key is gone
        assert node.ceremony._transport is None
    assert publics == {
        json.dumps(statement.body["public_keys"], sort_keys=True, separators=(",", ":"))
    }
    driver.credentials()
    for node in driver.nodes:
        assert len(node.nvram.membership()) == 3
        assert node.nvram.epoch() == 1
    closings = driver.close()
    heads = {c["statement"]["body"]["transcript_head"] for c in closings}
    assert heads == {driver.transcript.head}


def test_steps_out_of_order_are_refused(driver: Driver) -> None:
    with pytest.raises(CeremonyRefused, match="out of order"):
        driver.nodes[0].ceremony.handle({"step": "attest", "device_certificate": ""})
    driver.identities()
    with pytest.raises(CeremonyRefused, match="out of order"):
        driver.nodes[0].ceremony.handle({"step": "identity"})
    with pytest.raises(CeremonyRefused, match="unknown step"):
        driver.nodes[0].ceremony.handle({"step": "export-keys"})


def test_generator_refuses_a_member_with_another_measurement(tmp_path: Path) -> None:
    driver = Driver(tmp_path, measure=lambda i: M if i != 2 else bytes(32))
    driver.identities()
    driver.attest()
    with pytest.raises(CeremonyRefused, match="another measurement"):
        driver.generate()


def test_generator_refuses_an_attestation_from_another_vendor_root(driver: Driver) -> None:
    rogue = SoftwareVendorCA.generate("rogue", now=datetime.fromtimestamp(NOW - 60, UTC))
    driver.identities()
    driver.attest(lambda i: rogue if i == 1 else driver.ca)
    with pytest.raises(CeremonyRefused, match="ChainError"):
        driver.generate()


def test_only_the_lowest_node_id_generates(driver: Driver) -> None:
    driver.identities()
    driver.attest()
    other = next(n for n in driver.nodes if n is not driver.generator)
    with pytest.raises(CeremonyRefused, match="lowest node id"):
        other.ceremony.handle(driver.generate_request())


def test_member_refuses_a_box_that_is_not_its_own(driver: Driver) -> None:
    driver.identities()
    driver.attest()
    driver.generate()
    a, b = driver.nodes[0], driver.nodes[1]
    stolen = driver.boxes[b.custody.node_id.hex()]
    with pytest.raises(CeremonyRefused, match="box is not the one"):
        a.ceremony.handle(driver.deliver_request(a, box=stolen))
    assert not (a.host_dir / node_side.FLEET_KEYS_FILE).exists()


def test_member_refuses_a_statement_not_signed_by_the_generator(driver: Driver) -> None:
    driver.identities()
    driver.attest()
    driver.generate()
    forged = dict(driver.statement)
    forged["signature"] = base64.b64encode(bytes(64)).decode()
    node = driver.nodes[0]
    with pytest.raises(CeremonyRefused, match="does not verify"):
        node.ceremony.handle(driver.deliver_request(node, statement=forged))


def test_membership_must_be_the_acknowledged_link_keys(driver: Driver) -> None:
    driver.identities()
    driver.attest()
    driver.generate()
    driver.deliver()
    request = driver.credentials_request()
    request["membership"] = [*request["membership"][:2], "ab" * 32]
    with pytest.raises(CeremonyRefused, match="acknowledged link keys"):
        driver.nodes[0].ceremony.handle(request)
    assert driver.nodes[0].nvram.membership() == ()


def test_closing_refuses_a_transcript_without_the_nodes_statements(driver: Driver) -> None:
    driver.identities()
    driver.attest()
    driver.generate()
    driver.deliver()
    driver.credentials()
    node = driver.nodes[0]
    mine = node_author(node.custody.node_id)
    kept = [
        (e.statement, e.signature) for e in driver.transcript.entries if e.statement.author != mine
    ]
    request = {"step": "close", "transcript": Transcript(CID).extend(kept).to_json()}
    with pytest.raises(CeremonyRefused, match="lacks this node's"):
        node.ceremony.handle(request)


def test_vendor_process_certifies_only_self_signed_identities(driver: Driver) -> None:
    driver.identities()
    good = driver.nodes[0].identity
    bad = dict(good)
    bad["signature"] = driver.nodes[1].identity["signature"]
    lines = [
        {"step": "root", "deployment": "t", "now": NOW},
        {"step": "certify", "entry": good, "now": NOW},
        {"step": "certify", "entry": bad, "now": NOW},
    ]
    stdin = io.StringIO("".join(json.dumps(line) + "\n" for line in lines))
    stdout = io.StringIO()
    with pytest.raises(Exception, match="not signed by its key"):
        run_vendor(stdin, stdout)
    answers = [json.loads(x) for x in stdout.getvalue().splitlines()]
    assert set(answers[0]) == {"root"}
    assert set(answers[1]) == {"certificate"}
    assert len(answers) == 2


# --------------------------------------------------------------------------- format


def _statement(kind: str = "seal", issued_at: int = NOW) -> Statement:
    key = officer().public_key
    return Statement(CID, kind, officer_author(key), issued_at, {"transcript_head": "00" * 32})


def test_transcript_round_trip_and_chain_checks() -> None:
    who = officer()
    s = _statement()
    t = Transcript(CID).append(s, who.sign(officer_message(s))).append(s, bytes(64))
    assert Transcript.from_bytes(t.to_bytes()) == t
    assert t.entries[1].prev == entry_hash(t.entries[0])
    doc = t.to_json()
    doc["entries"][1]["prev"] = "11" * 32
    with pytest.raises(CeremonyFormatError, match="hash chain"):
        Transcript.from_json(doc)
    doc = t.to_json()
    doc["entries"][0]["statement"]["body"]["extra"] = 1
    with pytest.raises(CeremonyFormatError, match="unknown fields"):
        Transcript.from_json(doc)
    with pytest.raises(CeremonyFormatError, match="canonical"):
        Transcript.from_bytes(b"{ " + t.to_bytes()[1:])
    with pytest.raises(InvalidParameter):
        Statement(CID, "seal", "node:xyz", NOW, {"transcript_head": "00"})


_FIELDS = st.sampled_from(
    ["version", "ceremony_id", "kind", "author", "issued_at", "body", "other"]
)
_VALUES = st.one_of(
    st.integers(),
    st.text(max_size=70),
    st.none(),
    st.sampled_from(["seal", CID.hex(), officer_author(bytes(32))]),
    st.dictionaries(st.sampled_from(["transcript_head", "x"]), st.text(max_size=64), max_size=2),
)


@given(st.dictionaries(_FIELDS, _VALUES))
def test_statement_parser_refuses_or_round_trips(obj: dict[str, Any]) -> None:
    try:
        parsed = Statement.from_json(obj)
    except CeremonyFormatError:
        return
    assert parsed.to_json() == obj


def test_node_constants_match_the_node_process() -> None:
    assert node_side.FLEET_KEYS_FILE == node_process.FLEET_KEYS_FILE
    assert node_side.LINK_KEY_FILE == node_process.LINK_KEY_FILE
    assert node_side.LINK_KEY_PURPOSE == node_process.LINK_KEY_PURPOSE


def test_ceremony_code_in_the_node_is_measured() -> None:
    files = loaded_hsmvault_files("hsmvault.hsm.node_process", "hsmvault.hsm.ceremony")
    assert "hsmvault/hsm/ceremony.py" in files
    assert "hsmvault/evidence/ceremony_format.py" in files
    assert [f for f in files if not is_measured(f)] == []


# --------------------------------------------------------------------------- processes


@pytest.fixture(scope="module")
def software(tmp_path_factory: pytest.TempPathFactory) -> FleetLayout:
    return deploy(tmp_path_factory.mktemp("ceremony"), nodes=3).layout


def test_formation_writes_evidence_whose_digest_is_the_manifest_hash(software: FleetLayout) -> None:
    evidence = software.evidence_dir
    manifest = Manifest.from_bytes((evidence / MANIFEST_FILE).read_bytes())
    assert manifest.fleet_id == software.fleet_id
    assert evidence_digest(evidence) == manifest.digest()
    assert (evidence / "README.txt").read_text().startswith("EMULATED HARDWARE")
    names = set(manifest.files)
    assert {"transcript.json", "measurement/build.json", "fleet/fleet-public-keys.json"} <= names
    assert sum(n.startswith("attestations/") for n in names) == 3


def test_transcript_records_every_step_in_order(software: FleetLayout) -> None:
    t = Transcript.from_bytes((software.evidence_dir / "transcript.json").read_bytes())
    kinds = [e.statement.kind for e in t.entries]
    assert kinds == (
        ["inputs", "vendor-root"]
        + ["identity"] * 3
        + ["attestation"] * 3
        + ["fleet-key-statement"]
        + ["acknowledgement"] * 3
        + ["membership"]
        + ["credential-destroyed"] * 4
        + ["closing"] * 3
        + ["seal"]
    )
    generator = next(e for e in t.entries if e.statement.kind == "fleet-key-statement")
    ids = [e.statement.author_key for e in t.entries if e.statement.kind == "identity"]
    assert generator.statement.author_key == min(ids)
    assert t.entries[0].statement.body["operator_public_key"] is not None


def test_nodes_hold_the_published_keys_and_the_evidence_holds_no_secret(
    software: FleetLayout,
) -> None:
    public = b"".join(p.read_bytes() for p in software.evidence_dir.rglob("*") if p.is_file())
    public += (software.base_dir / FLEET_FILE).read_bytes()
    for node in software.nodes:
        with DirectoryNvram(node.nvram_dir) as nvram, SoftwareCustody.open(nvram) as custody:
            sealed = (node.host_dir / node_process.FLEET_KEYS_FILE).read_bytes()
            keys: FleetSecretKeys = unseal_fleet_keys(custody, sealed, software.fleet_id)
            assert nvram.membership() == software.pinned_member_ids()
        assert keys.public() == software.public_keys
        for secret in (
            keys.ake_private_key,
            keys.oprf_seed,
            keys.enc_private_key,
            keys.sig_private_key,
        ):
            assert secret not in public
            assert secret.hex().encode() not in public


def test_fresh_ceremony_evidence_passes_the_audit(software: FleetLayout) -> None:
    report = audit_evidence(
        DirectorySource(software.evidence_dir),
        AuditPolicy(
            fleet_dir=software.base_dir, require_witness=False, officer_keys=(officer().public_key,)
        ),
    )
    assert report.ok, report.failures()
    assert report.emulated
    assert report.check("witness").status == "SKIPPED"
    assert [n.region for n in report.nodes] == ["eu-west", "us-east", "ap-south"]


def test_officers_are_asked_before_each_of_their_steps(tmp_path: Path) -> None:
    seen: list[tuple[str, str]] = []
    officers = (officer("alice"), officer("bob"))
    form_fleet(
        tmp_path / "f",
        nodes=3,
        ceremony=CeremonyOptions(
            officers=officers, confirm=lambda who, step, what: seen.append((who, step))
        ),
    )
    assert seen == [
        ("alice", "inputs"),
        ("alice", "vendor-root"),
        ("alice", "membership"),
        ("alice", "credential-destroyed"),
        ("alice", "seal"),
        ("bob", "seal"),
    ]


def test_an_officer_can_abort_and_no_fleet_is_formed(tmp_path: Path) -> None:
    def confirm(who: str, step: str, what: str) -> None:
        if step == "membership":
            raise CeremonyError("aborted by the officer")

    with pytest.raises(FormationError, match="aborted by the officer"):
        form_fleet(tmp_path / "f", nodes=3, ceremony=CeremonyOptions(confirm=confirm))
    assert not (tmp_path / "f" / FLEET_FILE).exists()
    assert not (tmp_path / "f" / "evidence").exists()


def test_regions_must_be_artifact_region_names(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameter, match="regions"):
        form_fleet(tmp_path, nodes=3, regions=("EU West",))


def test_softhsm_ceremony_attests_token_generated_keys(tmp_path: Path) -> None:
    dep = deploy(tmp_path / "f", nodes=3, custody="softhsm")
    report = audit_evidence(
        DirectorySource(dep.evidence),
        AuditPolicy(fleet_dir=dep.layout.base_dir, require_witness=False, require_token_keys=True),
    )
    assert report.ok, report.failures()
    assert all(n.generated_inside and n.non_extractable for n in report.nodes)
    assert {n.key_basis for n in report.nodes} == {"pkcs11-attributes"}
    t = Transcript.from_bytes((dep.evidence / "transcript.json").read_bytes())
    credentials = [
        e.statement.body["credential"]
        for e in t.entries
        if e.statement.kind == "credential-destroyed"
    ]
    assert credentials.count("token-so-pin") == 3
