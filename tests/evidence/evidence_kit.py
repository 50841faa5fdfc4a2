"""Test helpers for the key ceremony and the evidence audit: a deployment with a
test-held officer key, a real witness (H2's package, in-process on 127.0.0.1) with a
test-held operator key, and the tools an attacker with those keys would use to rewrite
evidence (re-chain, re-sign with every software node's custody, re-seal the manifest,
publish a new epoch). Nothing here is a production code path.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hsmvault.evidence.bundles import fetch_bundles, save_bundles
from hsmvault.evidence.ceremony import CeremonyOptions, SoftwareOfficer
from hsmvault.evidence.ceremony_format import (
    TRANSCRIPT_PURPOSE,
    Statement,
    Transcript,
    officer_message,
)
from hsmvault.evidence.folder import TRANSCRIPT_FILE, evidence_digest, write_manifest
from hsmvault.fleet.fleet_keys import FleetPublicKeys
from hsmvault.fleet.formation import FleetLayout, form_fleet
from hsmvault.hsm.custody.base import KeyCustody
from hsmvault.hsm.custody.software import SoftwareCustody
from hsmvault.hsm.nvram import DirectoryNvram
from hsmvault.transparency.artifact import FleetEntry, FleetKeyArtifact
from hsmvault.transparency.operator_messages import countersignature_message, submission_message
from hsmvault.transparency.witness import WitnessConfig, WitnessServer, init_data_dir
from hsmvault.transparency.witness_client import AuditEntry, WitnessClient

NAMESPACE = "hsmvault/evidence-test"
YEAR = 365 * 24 * 3600


def seed(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def officer(label: str = "alice") -> SoftwareOfficer:
    return SoftwareOfficer(label, Ed25519PrivateKey.from_private_bytes(seed(f"officer/{label}")))


OPERATOR = Ed25519PrivateKey.from_private_bytes(seed("operator"))


def operator_public() -> bytes:
    return OPERATOR.public_key().public_bytes_raw()


@dataclass
class Deployment:
    """A formed fleet whose ceremony had the test officer and operator key."""

    layout: FleetLayout
    officer: SoftwareOfficer

    @property
    def evidence(self) -> Path:
        return self.layout.evidence_dir


def deploy(base: Path, *, nodes: int = 3, custody: str = "software") -> Deployment:
    who = officer()
    layout = form_fleet(
        base,
        nodes=nodes,
        custody="softhsm" if custody == "softhsm" else "software",
        ceremony=CeremonyOptions(
            officers=(who,), operator_public_key=operator_public(), namespace=NAMESPACE
        ),
    )
    return Deployment(layout, who)


# --------------------------------------------------------------------------- witness


@dataclass
class LiveWitness:
    """A real witness with the namespace registered under the test operator key."""

    url: str
    client: WitnessClient
    epoch: int = 0
    last_digest: bytes | None = None
    entries: list[AuditEntry] = field(default_factory=list)

    def publish(
        self,
        fleets: Sequence[FleetEntry],
        *,
        decommissioned: Sequence[bytes] = (),
    ) -> AuditEntry:
        """Submit the next epoch and counter-sign it (what the operator's publisher does)."""
        self.epoch += 1
        art = FleetKeyArtifact(
            namespace=NAMESPACE,
            epoch=self.epoch,
            issued_at=int(time.time()),
            previous_digest=self.last_digest,
            fleets=tuple(fleets),
            decommissioned=tuple(decommissioned),
        )
        raw = art.to_bytes()
        digest = hashlib.sha256(raw).digest()
        entry = self.client.submit(
            NAMESPACE,
            self.epoch,
            raw,
            OPERATOR.sign(submission_message(NAMESPACE, self.epoch, digest)),
        )
        entry = self.client.put_countersignature(
            NAMESPACE, self.epoch, OPERATOR.sign(countersignature_message(entry.signature))
        )
        self.last_digest = digest
        self.entries.append(entry)
        return entry


@contextmanager
def live_witness(data_dir: Path) -> Iterator[LiveWitness]:
    token = init_data_dir(data_dir, name="witness.test/evidence", backend="software", now_ms=0)
    with WitnessServer(WitnessConfig(data_dir)) as server, WitnessClient(server.url) as client:
        client.register_namespace(token, NAMESPACE, 1, operator_public())
        yield LiveWitness(server.url, client)


def fleet_entry(
    keys: FleetPublicKeys, digest: bytes | None, regions: Sequence[str] = ("eu-west",)
) -> FleetEntry:
    now = int(time.time())
    return FleetEntry(
        fleet_id=keys.fleet_id,
        status="active",
        ake_public_key=keys.ake_public_key,
        enc_public_key=keys.enc_public_key,
        sig_public_key=keys.sig_public_key,
        not_before=now - 60,
        not_after=now + YEAR,
        regions=tuple(sorted(set(regions))),
        evidence_digest=digest,
    )


def publish_and_save(witness: LiveWitness, evidence: Path, keys: FleetPublicKeys) -> AuditEntry:
    """Log an epoch listing the fleet with this evidence's digest, then save what the
    witness logged for the fleet into ``evidence/bundles`` (as ``fleet publish`` does)."""
    entry = witness.publish([fleet_entry(keys, evidence_digest(evidence))])
    save_from_witness(witness, evidence, keys.fleet_id)
    return entry


def save_from_witness(witness: LiveWitness, evidence: Path, fleet_id: bytes) -> None:
    bundles, info, ns = fetch_bundles(witness.client, NAMESPACE, fleet_id)
    save_bundles(evidence, bundles, info, ns)


def running_snapshot(layout: FleetLayout, evidence: Path) -> None:
    """``running/fleet.json`` as ``fleet publish`` writes it."""
    (evidence / "running").mkdir(exist_ok=True)
    shutil.copyfile(layout.fleet_file, evidence / "running" / "fleet.json")


# --------------------------------------------------------------------------- rewriting


def read_transcript(evidence: Path) -> Transcript:
    return Transcript.from_bytes((evidence / TRANSCRIPT_FILE).read_bytes())


def reseal(evidence: Path, transcript: Transcript) -> None:
    """Write ``transcript`` and a manifest over the folder as it now is."""
    (evidence / TRANSCRIPT_FILE).write_bytes(transcript.to_bytes())
    fleet_id = bytes.fromhex(
        next(
            e.statement.body["fleet_id"]
            for e in transcript.entries
            if e.statement.kind == "fleet-key-statement"
        )
    )
    write_manifest(
        evidence,
        fleet_id=fleet_id,
        ceremony_id=transcript.ceremony_id,
        transcript_head=transcript.head,
    )


def rechain(
    signed: Sequence[tuple[Statement, bytes]], who: SoftwareOfficer, ceremony_id: bytes
) -> Transcript:
    """Chain ``signed`` again, replacing the officer's seal by a new one over the new
    head (what a dishonest officer can do without any node key)."""
    body = [(s, sig) for s, sig in signed if s.kind != "seal"]
    out = Transcript(ceremony_id).extend(body)
    seal = Statement(
        ceremony_id,
        "seal",
        signed[-1][0].author,
        signed[-1][0].issued_at,
        {"transcript_head": out.head},
    )
    return out.append(seal, who.sign(officer_message(seal)))


@contextmanager
def node_custodies(layout: FleetLayout) -> Iterator[dict[bytes, KeyCustody]]:
    """Every software node's custody (the nodes are not running)."""
    opened: list[tuple[DirectoryNvram, SoftwareCustody]] = []
    try:
        for node in layout.nodes:
            nvram = DirectoryNvram(node.nvram_dir)
            opened.append((nvram, SoftwareCustody.open(nvram)))
        yield {c.node_id: c for _, c in opened}
    finally:
        for nvram, custody in opened:
            custody.close()
            nvram.close()


def resign(
    statements: Sequence[Statement],
    *,
    ceremony_id: bytes,
    signers: dict[bytes, KeyCustody],
    who: SoftwareOfficer,
) -> Transcript:
    """Re-sign every statement with its author's key (software custodies, the officer)
    and fix what depends on the chain: the generator's transcript head, acknowledgements'
    statement digest, closing and seal heads — a full forgery by someone holding every
    key of an emulated deployment except the vendor's root."""
    out = Transcript(ceremony_id)
    statement_digest = None
    first_closing_head = None
    first_seal_head = None
    for st in statements:
        body = dict(st.body)
        if st.kind == "fleet-key-statement":
            body["transcript_head"] = out.head
        if st.kind == "acknowledgement" and statement_digest is not None:
            body["statement_sha256"] = statement_digest
        if st.kind == "closing":
            first_closing_head = first_closing_head or out.head
            body["transcript_head"] = first_closing_head
        if st.kind == "seal":
            first_seal_head = first_seal_head or out.head
            body["transcript_head"] = first_seal_head
        new = replace(st, body=body)
        if st.kind == "fleet-key-statement":
            statement_digest = new.digest()
        if new.author_kind == "officer":
            signature = who.sign(officer_message(new))
        else:
            signature = signers[new.author_key].sign(TRANSCRIPT_PURPOSE, new.signed_bytes())
        out = out.append(new, signature)
    return out


def copy_evidence(evidence: Path, dest: Path) -> Path:
    shutil.copytree(evidence, dest)
    return dest


def mutate_statements(
    transcript: Transcript, change: Callable[[Statement], Statement | None]
) -> list[Statement]:
    """Statements with ``change`` applied (None drops the statement)."""
    out = []
    for entry in transcript.entries:
        new = change(entry.statement)
        if new is not None:
            out.append(new)
    return out
