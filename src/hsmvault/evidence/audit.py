"""``hsmvault audit evidence``: check a fleet's deployment evidence link by link
(ADR 0012, "Audit chain").

:func:`audit_evidence` reads an evidence folder (:mod:`hsmvault.evidence.sources`) and
runs every check, each on its own, so one broken link never hides another; each failure
is one sentence that names the link and the node:

1. ``files`` — every file matches the manifest; nothing unlisted is mixed in;
2. ``transcript`` — the hash chain, every statement's signature (nodes: their identity
   keys; officers: the keys the inputs declare, or the auditor pins), and completeness:
   every attested HSM signed the transcript head (``closing``) and every officer sealed
   it (``seal``) — a missing or forged signature is named;
3. ``attestations`` — each node's document verifies with its format's plugin at its own
   time and chains to the vendor root the transcript records (nonce = ceremony id, key =
   the node's identity key);
4. ``measurement`` — every attested measurement equals the published reproducible build
   (``measurement/build.json``), which equals the measurement the auditor expects or
   rebuilds, if given;
5. ``keys`` — the fleet keys were generated inside an attested member (the generator's
   statement is signed by an attested identity; identity keys are token keys where the
   deployment requires them), handed only to the attested members, and acknowledged by
   each of them;
6. ``credentials`` — one signed destruction statement per ceremony credential;
7. ``running`` — the running fleet's members (``running/fleet.json`` or a fleet
   directory) are the attested HSMs with the link keys they acknowledged: an HSM swapped
   after the ceremony shows here;
8. ``witness`` — a witness-logged bundle lists this fleet with exactly these keys and this
   evidence digest (:mod:`hsmvault.evidence.bundles`).

The result, :class:`AuditReport`, renders as text and HTML
(:mod:`hsmvault.evidence.report`). Emulated evidence is accepted but labelled EMULATED
HARDWARE in every report.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from hsmvault.client.bundle_verifier import PinnedWitnessKey
from hsmvault.errors import DecodeError, InvalidParameter, VerificationError
from hsmvault.evidence.attestation.base import (
    AttestationError,
    AttestationResult,
    ChainError,
    Expectations,
    verifier_for,
)
from hsmvault.evidence.attestation.software_vendor import SoftwareAttestation
from hsmvault.evidence.bundles import (
    EpochFinding,
    check_bundles,
    fetch_bundles,
    load_saved,
    resolve_trust,
)
from hsmvault.evidence.ceremony_format import (
    CeremonyFormatError,
    Entry,
    Statement,
    Transcript,
    entry_hash,
    officer_message,
)
from hsmvault.evidence.folder import (
    BUILD_FILE,
    MANIFEST_FILE,
    MEMBERS_FILE,
    PUBLIC_KEYS_FILE,
    RUNNING_FLEET_FILE,
    TRANSCRIPT_FILE,
    EvidenceFolderError,
    Manifest,
    attestation_path,
    is_manifested,
    root_path,
)
from hsmvault.evidence.measurement import MeasurementError, measure
from hsmvault.evidence.sources import EvidenceSource
from hsmvault.fleet.fleet_keys import FleetPublicKeys
from hsmvault.fleet.formation import (
    FLEET_FILE,
    LINK_CERT_PURPOSE,
    FleetLayout,
    link_certificate_message,
)
from hsmvault.hsm.ceremony import (
    CUSTODY_TO_VENDOR,
    Acknowledgement,
    FleetKeyStatement,
    IdentityClaim,
    parse_acknowledgement,
    parse_fleet_key_statement,
    parse_identity,
    public_keys_digest,
    verify_node_entry,
)
from hsmvault.hsm.custody.base import verify_signature
from hsmvault.hsm.nvram import NodeIdentity, SignatureAlgorithm
from hsmvault.transparency.witness_client import NamespaceInfo, WitnessClient, WitnessInfo

__all__ = [
    "CHECKS",
    "AuditPolicy",
    "AuditReport",
    "Check",
    "NodeRow",
    "TimelineRow",
    "audit_evidence",
]

#: (key, title) of every check, in report order.
CHECKS: Final = (
    ("files", "Evidence files match the manifest"),
    ("transcript", "Transcript: hash chain and every signature (all HSMs and officers)"),
    ("attestations", "Device attestations chain to the vendor root"),
    ("measurement", "Measurement equals the published reproducible build"),
    ("keys", "Fleet keys generated inside an attested HSM, given only to attested HSMs"),
    ("credentials", "Ceremony credentials destroyed (a signed statement each)"),
    ("running", "The running fleet is the attested fleet (no HSM swapped)"),
    ("witness", "The same fleet keys and evidence are in a witness-logged bundle"),
)
OK: Final = "OK"
FAILED: Final = "FAILED"
SKIPPED: Final = "SKIPPED"


@dataclass(frozen=True)
class AuditPolicy:
    """What the auditor brings. Everything is optional: without pins, keys are taken
    from the evidence itself and the report says so.

    * ``witness_keys`` / ``operator_keys`` / ``officer_keys`` — pinned public keys;
    * ``expected_measurement`` — the published reproducible build's SHA-256;
    * ``rebuild_source`` — a source tree (``src/``) to measure and compare;
    * ``require_token_keys`` — identity keys must be attested as generated inside a token
      and non-extractable (``None``: required when the ceremony declares ``softhsm``);
    * ``witness_url`` / ``namespace`` — fetch bundles live (else ``bundles/``);
    * ``require_witness`` — a missing bundle is a failure (``False``: SKIPPED);
    * ``fleet_dir`` — a formed fleet directory to compare with (else ``running/``).
    """

    witness_keys: tuple[PinnedWitnessKey, ...] = ()
    operator_keys: tuple[bytes, ...] = ()
    officer_keys: tuple[bytes, ...] = ()
    expected_measurement: bytes | None = None
    rebuild_source: Path | None = None
    require_token_keys: bool | None = None
    witness_url: str | None = None
    namespace: str | None = None
    require_witness: bool = True
    fleet_dir: Path | None = None


@dataclass
class Check:
    """One link of the chain: OK, FAILED (with one sentence per failure) or SKIPPED."""

    key: str
    title: str
    status: str = OK
    details: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def fail(self, message: str) -> None:
        self.status = FAILED
        self.failures.append(message)

    def skip(self, reason: str) -> None:
        if self.status == OK:
            self.status = SKIPPED
        self.details.append(reason)


@dataclass
class NodeRow:
    """One HSM as the report shows it."""

    index: int
    region: str
    node_id: str
    custody: str
    attestation_format: str = ""
    emulated: bool = True
    generated_inside: bool | None = None
    non_extractable: bool | None = None
    key_basis: str = ""
    measurement: str = ""
    measurement_ok: bool = False
    attested: bool = False
    chain: list[str] = field(default_factory=list)
    fleet_node_id: str = ""


@dataclass(frozen=True)
class TimelineRow:
    seq: int
    time: str
    kind: str
    author: str
    digest: str
    summary: str


@dataclass
class AuditReport:
    """The whole audit; ``ok`` when no check FAILED."""

    source: str
    checks: list[Check]
    fleet_id: str = ""
    ceremony_id: str = ""
    deployment: str = ""
    custody: str = ""
    emulated: bool = False
    measurement: str = ""
    evidence_digest: str = ""
    transcript_head: str = ""
    nodes: list[NodeRow] = field(default_factory=list)
    timeline: list[TimelineRow] = field(default_factory=list)
    epochs: list[EpochFinding] = field(default_factory=list)
    officers: list[str] = field(default_factory=list)
    audited_at: str = ""

    @property
    def ok(self) -> bool:
        return all(c.status != FAILED for c in self.checks)

    @property
    def verdict(self) -> str:
        return "VERIFIED" if self.ok else "FAILED"

    def failures(self) -> list[str]:
        return [f"{c.key}: {m}" for c in self.checks for m in c.failures]

    def check(self, key: str) -> Check:
        return next(c for c in self.checks if c.key == key)


def _short(hex_id: str) -> str:
    return hex_id[:12] + "…"


def _time(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _identity_from_hex(algorithm: int, public_key: bytes) -> NodeIdentity:
    return NodeIdentity(SignatureAlgorithm(algorithm), public_key)


_Parsed = TypeVar("_Parsed")


def _parse_entry(
    parse: Callable[[Statement], _Parsed], entry: Entry, what: str, check: Check
) -> _Parsed | None:
    """``parse(entry.statement)``, or None after failing ``check`` with
    "entry N: malformed <what>: <reason>" when the parser raises CeremonyFormatError."""
    try:
        return parse(entry.statement)
    except CeremonyFormatError as exc:
        check.fail(f"entry {entry.seq}: malformed {what}: {exc}")
        return None


# --------------------------------------------------------------------------- state


@dataclass
class _Member:
    claim: IdentityClaim
    identity_entry: Entry
    attestation_entry: Entry | None = None
    document: bytes | None = None
    result: AttestationResult | None = None
    ack: Acknowledgement | None = None

    @property
    def node_id(self) -> bytes:
        return self.claim.identity.node_id

    @property
    def label(self) -> str:
        return f"node-{self.claim.index} ({_short(self.node_id.hex())})"


class _Audit:
    """One run of the checks over one source."""

    def __init__(self, source: EvidenceSource, policy: AuditPolicy) -> None:
        self.source = source
        self.policy = policy
        self.report = AuditReport(
            source=source.label,
            checks=[Check(k, t) for k, t in CHECKS],
            audited_at=_time(int(datetime.now(UTC).timestamp())),
        )
        self.manifest: Manifest | None = None
        self.transcript: Transcript | None = None
        self.inputs: dict[str, Any] = {}
        self.members: dict[bytes, _Member] = {}
        self.officers: dict[bytes, str] = {}
        self.statement: FleetKeyStatement | None = None
        self.statement_entry: Entry | None = None
        self.build: dict[str, Any] = {}
        self.public_keys: FleetPublicKeys | None = None
        self.vendor_root_sha256 = ""
        self.vendor_key_sha256 = ""

    def check(self, key: str) -> Check:
        return self.report.check(key)

    def ordered(self) -> list[_Member]:
        return sorted(self.members.values(), key=lambda m: m.claim.index)

    # -- 1. files ------------------------------------------------------------------------

    def files(self) -> None:
        check = self.check("files")
        try:
            raw = self.source.read(MANIFEST_FILE)
            self.manifest = Manifest.from_bytes(raw)
        except EvidenceFolderError as exc:
            check.fail(f"no valid manifest: {exc}")
            return
        self.report.evidence_digest = hashlib.sha256(raw).hexdigest()
        self.report.fleet_id = self.manifest.fleet_id.hex()
        self.report.ceremony_id = self.manifest.ceremony_id.hex()
        for path, digest in sorted(self.manifest.files.items()):
            try:
                data = self.source.read(path)
            except EvidenceFolderError:
                check.fail(f"{path} is listed in the manifest but missing")
                continue
            if hashlib.sha256(data).hexdigest() != digest:
                check.fail(f"{path} does not match its manifest hash (altered after the ceremony)")
        listing = self.source.listing()
        if listing is not None:
            for path in listing:
                if is_manifested(path) and path not in self.manifest.files:
                    check.fail(f"{path} is not covered by the manifest")
        for required in (TRANSCRIPT_FILE, BUILD_FILE, PUBLIC_KEYS_FILE, MEMBERS_FILE):
            if required not in self.manifest.files:
                check.fail(f"the manifest does not cover {required}")
        check.details.append(
            f"{len(self.manifest.files)} files; evidence digest (SHA-256 of manifest.json) "
            f"{self.report.evidence_digest}"
        )

    def _read_json(self, path: str) -> Any:
        return json.loads(self.source.read(path))

    # -- 2. transcript -------------------------------------------------------------------

    def transcript_check(self) -> None:
        check = self.check("transcript")
        try:
            transcript = Transcript.from_bytes(self.source.read(TRANSCRIPT_FILE))
        except (EvidenceFolderError, CeremonyFormatError) as exc:
            check.fail(f"transcript unreadable: {exc}")
            return
        self.transcript = transcript
        entries = transcript.entries
        if self.manifest is not None:
            if transcript.ceremony_id != self.manifest.ceremony_id:
                check.fail("the transcript belongs to another ceremony than the manifest")
            if transcript.head != self.manifest.transcript_head:
                check.fail("the transcript head is not the one the manifest records")
        first = entries[0].statement
        if first.kind != "inputs" or first.author_kind != "officer":
            check.fail("the transcript does not start with the officers' inputs")
            return
        self.inputs = dict(first.body)
        self.report.deployment = str(self.inputs.get("deployment", ""))
        self.report.custody = str(self.inputs.get("custody", ""))
        self._officers(check)
        for entry in entries:
            self._identity(entry, check)
        for entry in entries:
            self._signature(entry, check)
        self._declared_nodes(check)
        self._completeness(check)
        self.report.transcript_head = transcript.head
        check.details.append(
            f"{len(entries)} entries, head {transcript.head}; {len(self.members)} HSMs, "
            f"{len(self.officers)} officer(s)"
        )

    def _officers(self, check: Check) -> None:
        raw = self.inputs.get("officers")
        if not isinstance(raw, list) or not raw:
            check.fail("the inputs declare no officer")
            return
        for item in raw:
            try:
                key = bytes.fromhex(item["public_key"])
                Ed25519PublicKey.from_public_bytes(key)
                name = str(item["name"])
            except (KeyError, TypeError, ValueError):
                check.fail("the inputs declare a malformed officer")
                continue
            self.officers[key] = name
            self.report.officers.append(
                f"{name} ({key.hex()[:16]}…{', ephemeral' if item.get('ephemeral') else ''})"
            )
        for pinned in self.policy.officer_keys:
            if pinned not in self.officers:
                check.fail(f"the pinned officer key {pinned.hex()[:16]}… is not a ceremony officer")
        if not self.policy.officer_keys:
            check.details.append("officer keys NOT pinned: taken from the transcript's inputs")

    def _identity(self, entry: Entry, check: Check) -> None:
        if entry.statement.kind != "identity":
            return
        claim = _parse_entry(parse_identity, entry, "identity statement", check)
        if claim is None:
            return
        if claim.identity.node_id in self.members:
            check.fail(f"entry {entry.seq}: a second identity statement of one node")
            return
        self.members[claim.identity.node_id] = _Member(claim, entry)

    def _declared_nodes(self, check: Check) -> None:
        """The HSMs that stated an identity are the nodes the inputs declare."""
        declared = self.inputs.get("nodes")
        if not isinstance(declared, list):
            check.fail("the inputs declare no nodes")
            return
        wanted = sorted(
            (n["index"] if type(n.get("index")) is int else -1, str(n.get("region")))
            for n in declared
            if isinstance(n, dict)
        )
        stated = sorted((m.claim.index, m.claim.region) for m in self.members.values())
        if stated != wanted:
            check.fail(
                f"the HSMs' identity statements (index, region) {stated} are not the nodes "
                f"the inputs declare {wanted}"
            )
        custody = self.inputs.get("custody")
        for member in self.ordered():
            if member.claim.custody != custody:
                check.fail(f"{member.label} declares {member.claim.custody} custody, not {custody}")

    def _author_label(self, statement: Statement) -> str:
        if statement.author_kind == "officer":
            name = self.officers.get(statement.author_key, "undeclared officer")
            return f"officer {name}"
        member = self.members.get(statement.author_key)
        return member.label if member else f"node {_short(statement.author_key.hex())}"

    def _signature(self, entry: Entry, check: Check) -> None:
        statement = entry.statement
        label = f"entry {entry.seq} ({statement.kind} by {self._author_label(statement)})"
        if statement.author_kind == "officer":
            key = statement.author_key
            if key not in self.officers:
                check.fail(f"{label}: signed by a key that is not a declared officer")
                return
            try:
                Ed25519PublicKey.from_public_bytes(key).verify(
                    entry.signature, officer_message(statement)
                )
            except InvalidSignature:
                check.fail(f"forged transcript signature: {label} does not verify")
            return
        member = self.members.get(statement.author_key)
        if member is None:
            check.fail(f"{label}: signed by a node with no identity statement")
            return
        try:
            verify_node_entry(entry, member.claim.identity)
        except VerificationError:
            check.fail(
                f"forged transcript signature: {label} does not verify under its identity key"
            )

    def _completeness(self, check: Check) -> None:
        assert self.transcript is not None
        entries = self.transcript.entries
        kinds = [e.statement.kind for e in entries]
        seals = [e for e in entries if e.statement.kind == "seal"]
        closings = [e for e in entries if e.statement.kind == "closing"]
        if not closings:
            check.fail("missing transcript signatures: no HSM signed the transcript (no closing)")
        else:
            first = kinds.index("closing")
            head = entry_hash(entries[first - 1])
            signed: dict[bytes, int] = {}
            for e in closings:
                if e.statement.body.get("transcript_head") != head:
                    check.fail(
                        f"the closing of {self._author_label(e.statement)} signs another "
                        "transcript head"
                    )
                signed[e.statement.author_key] = signed.get(e.statement.author_key, 0) + 1
            for member in self.ordered():
                if member.node_id not in signed:
                    check.fail(
                        f"missing transcript signature: {member.label} did not sign the "
                        "transcript (no closing statement)"
                    )
        if not seals:
            check.fail("missing transcript signatures: no officer sealed the transcript")
            return
        first_seal = kinds.index("seal")
        if any(k != "seal" for k in kinds[first_seal:]):
            check.fail("statements follow the officers' seal")
        head = entry_hash(entries[first_seal - 1])
        sealed = set()
        for e in seals:
            if e.statement.body.get("transcript_head") != head:
                check.fail(f"the seal of {self._author_label(e.statement)} signs another head")
            sealed.add(e.statement.author_key)
        for key, name in self.officers.items():
            if key not in sealed:
                check.fail(f"missing transcript signature: officer {name} did not seal it")

    # -- 3. attestations -----------------------------------------------------------------

    def _roots(self, check: Check) -> list[x509.Certificate]:
        assert self.transcript is not None
        roots = [e for e in self.transcript.entries if e.statement.kind == "vendor-root"]
        if len(roots) != 1 or roots[0].statement.author_kind != "officer":
            check.fail("the transcript records no single vendor root")
            return []
        body = roots[0].statement.body
        self.vendor_root_sha256 = str(body["certificate_sha256"])
        self.vendor_key_sha256 = str(body["public_key_sha256"])
        try:
            pem = self.source.read(root_path(self.vendor_root_sha256))
            root = x509.load_pem_x509_certificate(pem)
        except (EvidenceFolderError, ValueError) as exc:
            check.fail(f"the vendor root the transcript records is not in the folder: {exc}")
            return []
        from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

        if hashlib.sha256(root.public_bytes(serialization.Encoding.DER)).hexdigest() != (
            self.vendor_root_sha256
        ):
            check.fail("the vendor root file is not the root the transcript records")
            return []
        check.details.append(
            f"vendor root {root.subject.rfc4514_string()} "
            f"(SHA-256 {_short(self.vendor_root_sha256)})"
        )
        return [root]

    def attestations(self) -> None:
        check = self.check("attestations")
        if self.transcript is None:
            check.fail("cannot check: the transcript is unreadable")
            return
        roots = self._roots(check)
        by_author = {
            e.statement.author_key: e
            for e in self.transcript.entries
            if e.statement.kind == "attestation" and e.statement.author_kind == "node"
        }
        fmt = str(self.inputs.get("attestation_format", ""))
        if not self.members:
            check.fail("the transcript holds no HSM identity")
        for member in self.ordered():
            entry = by_author.get(member.node_id)
            if entry is None:
                check.fail(f"{member.label}: no attestation in the transcript")
                continue
            member.attestation_entry = entry
            try:
                document = self.source.read(attestation_path(member.node_id))
            except EvidenceFolderError:
                check.fail(f"{member.label}: attestation document missing")
                continue
            member.document = document
            if hashlib.sha256(document).hexdigest() != entry.statement.body["document_sha256"]:
                check.fail(f"{member.label}: the attestation document is not the one it signed")
                continue
            doc_format = str(entry.statement.body["format"])
            if doc_format != fmt:
                check.fail(
                    f"{member.label}: attestation format {doc_format} is not the declared {fmt}"
                )
                continue
            try:
                member.result = verifier_for(doc_format).verify(
                    document,
                    trust_anchors=roots or None,
                    at_time=datetime.fromtimestamp(entry.statement.issued_at, UTC),
                    expected=Expectations(
                        public_key=member.claim.identity.public_key,
                        nonce=self.report_ceremony_id(),
                        require_key_properties=False,
                        unsafe_allow_emulated=True,
                    ),
                )
            except ChainError as exc:
                check.fail(
                    f"{member.label}: the attestation does not chain to the vendor root ({exc})"
                )
            except (AttestationError, InvalidParameter) as exc:
                check.fail(f"{member.label}: attestation refused: {type(exc).__name__}: {exc}")
            else:
                self._attested_placement(check, member, document)
        emulated = [m for m in self.members.values() if m.result is not None and m.result.emulated]
        if emulated:
            self.report.emulated = True
            check.details.append(
                "EMULATED HARDWARE: the software vendor attests these nodes; it proves which "
                "keys and code the ceremony used, not that a device kept them"
            )

    def _attested_placement(self, check: Check, member: _Member, document: bytes) -> None:
        """The software vendor's document names the node's region and custody: they
        must be the ones its identity statement declares."""
        if member.result is None or member.result.format != "hsmvault-software-vendor":
            return
        statement = SoftwareAttestation.from_bytes(document).statement
        if (
            statement.region != member.claim.region
            or statement.custody is not (CUSTODY_TO_VENDOR[member.claim.custody])
        ):
            check.fail(f"{member.label}: the attestation names another region or custody")

    def report_ceremony_id(self) -> bytes:
        assert self.transcript is not None
        return self.transcript.ceremony_id

    # -- 4. measurement ------------------------------------------------------------------

    def measurement(self) -> None:
        check = self.check("measurement")
        try:
            self.build = self._read_json(BUILD_FILE)
            published = str(self.build["sha256"])
        except (EvidenceFolderError, ValueError, KeyError, TypeError):
            check.fail("measurement/build.json is missing or malformed")
            return
        self.report.measurement = published
        check.details.append(f"published reproducible build: {published}")
        declared = str(self.inputs.get("measurement"))
        if self.inputs and declared != published:
            check.fail(
                f"wrong measurement: the ceremony inputs expect {_short(declared)}, "
                f"the published reproducible build is {_short(published)}"
            )
        for member in self.ordered():
            attested = (
                member.result.measurement.hex()
                if member.result is not None and member.result.measurement is not None
                else member.claim.measurement.hex()
            )
            if attested != published:
                check.fail(
                    f"wrong measurement: {member.label} attests {_short(attested)}, the "
                    f"published reproducible build is {_short(published)}"
                )
        expected = self.policy.expected_measurement
        if expected is not None and expected.hex() != published:
            check.fail(
                f"wrong measurement: the published build {_short(published)} is not the "
                f"expected {_short(expected.hex())}"
            )
        if self.policy.rebuild_source is not None:
            try:
                rebuilt = measure(self.policy.rebuild_source).sha256
            except MeasurementError as exc:
                check.fail(f"cannot rebuild the measurement: {exc}")
            else:
                if rebuilt != published:
                    check.fail(
                        f"wrong measurement: the rebuilt measurement {_short(rebuilt)} of "
                        f"{self.policy.rebuild_source} is not the published {_short(published)}"
                    )
                else:
                    check.details.append(f"rebuilt from {self.policy.rebuild_source}: equal")
        elif expected is None:
            check.details.append(
                "not rebuilt: run `python -m hsmvault.evidence.measurement --expect "
                f"{published}` on the release tree (or audit with --rebuild)"
            )

    # -- 5. keys -------------------------------------------------------------------------

    def _token_keys_required(self) -> bool:
        if self.policy.require_token_keys is not None:
            return self.policy.require_token_keys
        return self.inputs.get("custody") == "softhsm"

    def keys(self) -> None:  # noqa: PLR0912 - one checklist
        check = self.check("keys")
        if self.transcript is None:
            check.fail("cannot check: the transcript is unreadable")
            return
        try:
            self.public_keys = FleetPublicKeys.from_dict(self._read_json(PUBLIC_KEYS_FILE))
        except (EvidenceFolderError, ValueError, DecodeError):
            check.fail("fleet/fleet-public-keys.json is missing or malformed")
        statements = [
            e for e in self.transcript.entries if e.statement.kind == "fleet-key-statement"
        ]
        if len(statements) != 1:
            check.fail(f"the transcript holds {len(statements)} fleet-key statements, not one")
            return
        entry = statements[0]
        try:
            statement = parse_fleet_key_statement(entry.statement)
        except CeremonyFormatError as exc:
            check.fail(f"malformed fleet-key statement: {exc}")
            return
        self.statement, self.statement_entry = statement, entry
        before = self.transcript.entries[entry.seq - 1] if entry.seq else None
        if before is None or statement.transcript_head.hex() != entry_hash(before):
            check.fail(
                "the fleet-key statement does not name the transcript head before it (the"
                " boxes were sealed to another transcript)"
            )
        generator = self.members.get(statement.generator)
        if generator is None or generator.result is None:
            check.fail(
                "key generated outside an attested HSM: the fleet-key statement is signed by "
                f"{_short(statement.generator.hex())}, which is not an attested member"
            )
        else:
            try:
                verify_node_entry(entry, generator.claim.identity)
            except VerificationError:
                check.fail(
                    "key generated outside an attested HSM: the statement's signature does not"
                    " verify"
                )
            check.details.append(f"generated inside {generator.label} ({statement.key_source})")
        if self.members and statement.generator != min(self.members):
            check.fail("the generator is not the member with the lowest node id")
        if self.public_keys is not None and statement.public_keys != self.public_keys:
            check.fail(
                "key generated outside an attested HSM: the published fleet keys are not the"
                " keys the attested generator stated"
            )
        if self.manifest is not None and statement.public_keys.fleet_id != self.manifest.fleet_id:
            check.fail("the manifest names another fleet than the fleet-key statement")
        required = self._token_keys_required()
        for member in self.ordered():
            if member.result is None:
                continue
            props = member.result.key_properties
            if required and not (props.generated_inside and props.non_extractable):
                check.fail(
                    f"key generated outside an attested HSM: {member.label}'s identity key is "
                    f"not attested as generated inside a token and non-extractable "
                    f"(key properties: {props.basis})"
                )
        if not required:
            check.details.append(
                "token key properties not required (software custody): identity keys live "
                "in process memory"
            )
        self._listed(check, statement)
        self._acknowledgements(check, statement, entry)

    def _listed(self, check: Check, statement: FleetKeyStatement) -> None:
        listed = {m.node_id: m for m in statement.members}
        for node_id in listed:
            if node_id not in self.members:
                check.fail(
                    f"fleet keys handed to {_short(node_id.hex())}, which is not an attested member"
                )
        for member in self.ordered():
            item = listed.get(member.node_id)
            if item is None:
                check.fail(f"{member.label} is attested but the generator did not list it")
            elif (
                member.document is not None
                and item.attestation_sha256 != hashlib.sha256(member.document).hexdigest()
            ):
                check.fail(f"the generator cites another attestation of {member.label}")

    def _acknowledgements(self, check: Check, statement: FleetKeyStatement, entry: Entry) -> None:
        assert self.transcript is not None
        digest = entry.statement.digest()
        keys_digest = public_keys_digest(statement.public_keys)
        for ack_entry in self.transcript.entries:
            if ack_entry.statement.kind != "acknowledgement":
                continue
            ack = _parse_entry(parse_acknowledgement, ack_entry, "acknowledgement", check)
            if ack is None:
                continue
            member = self.members.get(ack.node_id)
            if member is None:
                check.fail(f"entry {ack_entry.seq}: acknowledgement by a node that is not a member")
                continue
            if member.ack is not None:
                check.fail(f"{member.label} acknowledged twice")
            member.ack = ack
            if ack.statement_sha256 != digest or ack.public_keys_sha256 != keys_digest:
                check.fail(f"{member.label} acknowledged another fleet-key statement or key set")
            try:
                verify_signature(
                    member.claim.identity,
                    LINK_CERT_PURPOSE,
                    link_certificate_message(ack.fleet_id, ack.link_public_key),
                    ack.link_certificate,
                )
            except VerificationError:
                check.fail(f"{member.label}: its link certificate does not verify")
        for member in self.ordered():
            if member.ack is None:
                check.fail(f"{member.label} did not acknowledge the fleet keys")
        memberships = [e for e in self.transcript.entries if e.statement.kind == "membership"]
        acked = sorted(m.ack.fleet_node_id for m in self.members.values() if m.ack is not None)
        if len(memberships) != 1:
            check.fail("the transcript records no single membership")
        else:
            raw = memberships[0].statement.body.get("members")
            listed = (
                sorted(str(m.get("fleet_node_id")) for m in raw if isinstance(m, dict))
                if isinstance(raw, list)
                else []
            )
            if listed != acked:
                check.fail("the recorded membership is not the acknowledged link keys")

    # -- 6. credentials ------------------------------------------------------------------

    def credentials(self) -> None:
        check = self.check("credentials")
        if self.transcript is None:
            check.fail("cannot check: the transcript is unreadable")
            return
        destroyed: dict[tuple[bytes, str], Statement] = {}
        for e in self.transcript.entries:
            if e.statement.kind == "credential-destroyed":
                destroyed[(e.statement.author_key, str(e.statement.body.get("credential")))] = (
                    e.statement
                )
        for member in self.ordered():
            statement = destroyed.get((member.node_id, "transport-key"))
            if statement is None:
                check.fail(f"{member.label} signed no destruction of its transport key")
            elif (
                statement.body.get("fingerprint")
                != hashlib.sha256(member.claim.transport_public_key).hexdigest()
            ):
                check.fail(f"{member.label}'s transport-key statement names another key")
            if (
                member.claim.custody == "softhsm"
                and (member.node_id, "token-so-pin") not in destroyed
            ):
                check.fail(f"{member.label} signed no destruction of its token's SO PIN")
        if self.inputs.get("attestation_format") == "hsmvault-software-vendor":
            vendor = [
                s
                for (author, name), s in destroyed.items()
                if name == "software-vendor-ca-key" and s.author_kind == "officer"
            ]
            if not vendor:
                check.fail("no officer signed the destruction of the software vendor's root key")
            elif vendor[0].body.get("fingerprint") != self.vendor_key_sha256:
                check.fail("the vendor-key destruction names another key than the vendor root's")
        check.details.append(
            f"{len(destroyed)} destruction statements; destruction cannot be proven in "
            "software, the statements record who says what was destroyed"
        )

    # -- 7. running ----------------------------------------------------------------------

    def _running_layout(self, check: Check) -> FleetLayout | None:
        if self.policy.fleet_dir is not None:
            try:
                return FleetLayout.load(self.policy.fleet_dir)
            except DecodeError as exc:
                check.fail(f"the fleet directory's fleet.json does not load: {exc}")
                return None
        if not self.source.exists(RUNNING_FLEET_FILE):
            check.skip("no running-fleet snapshot (running/fleet.json) and no --fleet-dir")
            return None
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / FLEET_FILE).write_bytes(self.source.read(RUNNING_FLEET_FILE))
            try:
                return FleetLayout.load(tmp)
            except DecodeError as exc:
                check.fail(f"running/fleet.json does not load: {exc}")
                return None

    def running(self) -> None:
        check = self.check("running")
        layout = self._running_layout(check)
        if layout is None:
            return
        if self.public_keys is not None and (
            layout.fleet_id != self.public_keys.fleet_id or layout.public_keys != self.public_keys
        ):
            check.fail("the running fleet is another fleet, or has other public keys")
        by_identity = {m.claim.identity.public_key: m for m in self.members.values()}
        if len(layout.nodes) != len(self.members):
            check.fail(
                f"the running fleet has {len(layout.nodes)} members, the ceremony attested "
                f"{len(self.members)}"
            )
        for node in layout.nodes:
            member = by_identity.get(node.identity_public_key)
            if member is None:
                check.fail(
                    f"HSM swapped after the ceremony: node-{node.index} ({node.region}) in the "
                    f"running fleet has identity key {_short(node.identity_public_key.hex())}, "
                    "which no attestation of this ceremony covers"
                )
                continue
            if member.ack is None or member.ack.link_public_key != node.link_public_key:
                check.fail(
                    f"HSM swapped after the ceremony: node-{node.index}'s link key is not the "
                    f"one {member.label} acknowledged in the ceremony"
                )
            try:
                verify_signature(
                    _identity_from_hex(node.identity_algorithm, node.identity_public_key),
                    LINK_CERT_PURPOSE,
                    link_certificate_message(layout.fleet_id, node.link_public_key),
                    node.link_certificate,
                )
            except (VerificationError, ValueError, InvalidParameter):
                check.fail(f"node-{node.index}: its link certificate does not verify")
        check.details.append(f"{len(layout.nodes)} running members compared")

    # -- 8. witness ----------------------------------------------------------------------

    def _bundles(
        self, check: Check, fleet_id: bytes, namespace: object
    ) -> tuple[list[bytes], WitnessInfo | None, NamespaceInfo | None, str] | None:
        """(bundles, witness info, namespace info, where the info came from)."""
        try:
            saved, info, ns_info = load_saved(self.source)
        except EvidenceFolderError as exc:
            check.fail(str(exc))
            return None
        origin = "the saved witness information (bundles/witness.json)"
        bundles = [raw for _, raw in saved]
        if self.policy.witness_url is not None:
            if namespace is None:
                check.fail("a witness URL needs a namespace (--namespace)")
                return None
            with WitnessClient(self.policy.witness_url) as client:
                live, info, ns_info = fetch_bundles(client, str(namespace), fleet_id)
            bundles = [b.to_bytes() for b in live]
            origin = f"the witness itself ({self.policy.witness_url}/info)"
        return bundles, info, ns_info, origin

    def witness(self) -> None:
        check = self.check("witness")
        if self.public_keys is None or not self.report.evidence_digest:
            check.fail("cannot check: no fleet keys or evidence digest")
            return
        fleet_id = self.public_keys.fleet_id
        namespace = self.policy.namespace or self.inputs.get("namespace")
        found = self._bundles(check, fleet_id, namespace)
        if found is None:
            return
        bundles, info, ns_info, origin = found
        if not bundles and ns_info is not None and ns_info.last_verified_epoch is not None:
            check.fail(
                "fleet keys absent from the witness-logged bundles: none of the logged epochs "
                f"{ns_info.root_epoch}..{ns_info.last_verified_epoch} of namespace "
                f"{ns_info.name} lists fleet {_short(fleet_id.hex())}"
            )
            return
        if not bundles:
            message = (
                "no witness-logged bundle to check: publish with `hsmvault fleet publish "
                "--witness URL`, or audit with --witness URL"
            )
            if self.policy.require_witness:
                check.fail(message)
            else:
                check.skip(message)
            return
        declared = self.inputs.get("operator_public_key")
        try:
            trust = resolve_trust(
                namespace=None if namespace is None else str(namespace),
                pinned_witness_keys=self.policy.witness_keys,
                pinned_operator_keys=self.policy.operator_keys,
                declared_operator_key=bytes.fromhex(declared)
                if isinstance(declared, str)
                else None,
                info=info,
                namespace_info=ns_info,
                info_origin=origin,
            )
        except (InvalidParameter, ValueError) as exc:
            check.fail(f"cannot verify bundles: {exc}")
            return
        check.details.extend(trust.notes)
        findings = check_bundles(
            bundles,
            trust,
            fleet_id=fleet_id,
            public_keys=self.public_keys,
            evidence_digest=bytes.fromhex(self.report.evidence_digest),
        )
        self.report.epochs = findings
        for f in findings:
            if f.status == "refused":
                check.fail(f"epoch {f.epoch}: the bundle does not verify: {f.detail}")
        matches = [f for f in findings if f.status == "match"]
        if not matches:
            reasons = "; ".join(
                f"epoch {f.epoch} {f.detail}" for f in findings if f.status != "refused"
            )
            check.fail(
                f"fleet keys absent from the witness-logged bundles: no logged epoch lists fleet "
                f"{_short(fleet_id.hex())} with the ceremony's keys and this evidence digest"
                + (f" ({reasons})" if reasons else "")
            )
        else:
            check.details.append(
                "logged in epoch(s) "
                + ", ".join(str(f.epoch) for f in matches)
                + f" of namespace {trust.namespace}"
            )

    # -- rows ----------------------------------------------------------------------------

    def rows(self) -> None:
        published = self.report.measurement
        for member in self.ordered():
            result = member.result
            row = NodeRow(
                index=member.claim.index,
                region=member.claim.region,
                node_id=member.node_id.hex(),
                custody=member.claim.custody,
                measurement=member.claim.measurement.hex(),
                measurement_ok=member.claim.measurement.hex() == published,
                fleet_node_id=member.ack.fleet_node_id if member.ack else "",
            )
            if result is not None:
                row.attested = True
                row.attestation_format = result.format
                row.emulated = result.emulated
                row.generated_inside = result.key_properties.generated_inside
                row.non_extractable = result.key_properties.non_extractable
                row.key_basis = result.key_properties.basis
                row.chain = [c.subject for c in result.chain]
                if result.measurement is not None:
                    row.measurement = result.measurement.hex()
                    row.measurement_ok = row.measurement == published
            self.report.nodes.append(row)
        if self.transcript is None:
            return
        for e in self.transcript.entries:
            s = e.statement
            self.report.timeline.append(
                TimelineRow(
                    seq=e.seq,
                    time=_time(s.issued_at),
                    kind=s.kind,
                    author=self._author_label(s),
                    digest=s.digest(),
                    summary=_summary(s),
                )
            )


def _summary(s: Statement) -> str:
    body = s.body
    summaries: dict[str, Callable[[], str]] = {
        "inputs": lambda: (
            f"{len(body.get('nodes') or [])} nodes, {body.get('custody')} custody, "
            f"measurement {_short(str(body.get('measurement')))}"
        ),
        "vendor-root": lambda: f"root {_short(str(body.get('certificate_sha256')))}",
        "identity": lambda: f"region {body.get('region')}, transport key, key properties",
        "attestation": lambda: f"document {_short(str(body.get('document_sha256')))}",
        "fleet-key-statement": lambda: (
            f"fleet {_short(str(body.get('fleet_id')))} sealed to "
            f"{len(body.get('members') or [])} members"
        ),
        "acknowledgement": lambda: f"link key {_short(str(body.get('fleet_node_id')))}",
        "membership": lambda: f"{len(body.get('members') or [])} members",
        "credential-destroyed": lambda: str(body.get("credential")),
        "closing": lambda: f"signs head {_short(str(body.get('transcript_head')))}",
        "seal": lambda: f"seals head {_short(str(body.get('transcript_head')))}",
    }
    return summaries[s.kind]()


def audit_evidence(source: EvidenceSource, policy: AuditPolicy | None = None) -> AuditReport:
    """Run every check on ``source`` (module docstring); never raises for bad evidence —
    each problem is a FAILED check with its own message. Raises
    :class:`~hsmvault.errors.Unavailable` only when a live witness or site cannot be
    reached."""
    audit = _Audit(source, policy or AuditPolicy())
    steps: tuple[tuple[str, Callable[[], None]], ...] = (
        ("files", audit.files),
        ("transcript", audit.transcript_check),
        ("attestations", audit.attestations),
        ("measurement", audit.measurement),
        ("keys", audit.keys),
        ("credentials", audit.credentials),
        ("running", audit.running),
        ("witness", audit.witness),
    )
    for key, step in steps:
        try:
            step()
        except (KeyError, TypeError, ValueError, AttributeError, DecodeError) as exc:
            # Evidence malformed in a way the step's own parsing did not name.
            audit.check(key).fail(f"malformed evidence ({type(exc).__name__}: {exc})")
    try:
        audit.rows()
    except (KeyError, TypeError, ValueError, AttributeError, DecodeError):
        audit.check("transcript").fail("malformed evidence: the report rows cannot be built")
    return audit.report
