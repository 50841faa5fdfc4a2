"""The key ceremony's coordinator: the scripted, reproducible procedure (ADR 0012).

The coordinator is untrusted: it relays requests between the node processes (the
trusted side, :mod:`hsmvault.hsm.ceremony`), the software vendor of an emulated
deployment (:mod:`hsmvault.evidence.vendor_process`) and the ceremony **officers**, and
chains every signed statement into the transcript. It holds no node key, no fleet key
and no vendor key, and imports nothing of ``hsm`` (``fleet.formation`` uses it, and the
host side reads ``fleet.json`` through that module).

:func:`run_ceremony`, in order (the transcript records each step with its time, its
inputs, its outputs and their digests):

1. the lead officer signs the **inputs**: the ceremony id (32 random bytes, the nonce of
   every attestation), the deployment, nodes, regions, custody, attestation format, the
   expected measurement (the reproducible build, :mod:`hsmvault.evidence.measurement`),
   the officers, and optionally the operator key and witness namespace;
2. the vendor makes its root; the lead officer records it (**vendor-root**);
3. every node signs its **identity** (identity key made inside its custody, key
   properties, its own measurement, a fresh transport key);
4. the vendor certifies each identity; every node signs its **attestation**;
5. the **generator** (lowest identity node id — nobody chooses it) verifies every
   attestation, generates the fleet keys and seals them to each member's transport key
   (**fleet-key-statement**);
6. every member verifies, opens its box, seals the keys under its custody and signs an
   **acknowledgement** with its certified fleet link key;
7. the lead officer records the **membership** (the acknowledged link keys); every node
   checks and pins it and signs one **credential-destroyed** statement per credential;
   the vendor destroys its key and the lead officer records it;
8. every node checks the transcript and signs its head (**closing**); every officer
   then signs the final head (**seal**).

For a real ceremony, :attr:`CeremonyOptions.confirm` pauses before each officer's step
(the CLI asks the officer at the terminal); a local deployment runs unattended with one
ephemeral officer whose key exists only for the ceremony. Any failure raises
:class:`CeremonyError` naming the step; the caller discards the half-formed fleet.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hsmvault.errors import DecodeError, InvalidParameter, VaultError
from hsmvault.evidence.attestation._canonical import canonical
from hsmvault.evidence.ceremony_format import (
    CeremonyFormatError,
    Entry,
    Statement,
    Transcript,
    officer_author,
    officer_message,
    sha256_hex,
)
from hsmvault.evidence.folder import (
    BUILD_FILE,
    MEMBERS_FILE,
    PUBLIC_KEYS_FILE,
    README_FILE,
    TRANSCRIPT_FILE,
    attestation_path,
    root_path,
    write_manifest,
)
from hsmvault.evidence.measurement import Measurement, default_source_root, measure
from hsmvault.fleet.fleet_keys import FleetPublicKeys

__all__ = [
    "ATTESTATION_FORMAT",
    "GENERATOR_RULE",
    "CeremonyError",
    "CeremonyOptions",
    "CeremonyOutcome",
    "Channel",
    "JsonLinesChild",
    "MemberOutcome",
    "Officer",
    "SoftwareOfficer",
    "run_ceremony",
]

ATTESTATION_FORMAT: Final = "hsmvault-software-vendor"
GENERATOR_RULE: Final = "lowest-identity-node-id"
VENDOR_MODULE: Final = "hsmvault.evidence.vendor_process"
DEFAULT_DEPLOYMENT: Final = "local"
#: Certificates start this long before "now", so a node's clock slightly behind the
#: vendor's still dates its attestation inside the device certificate's window.
_CLOCK_ALLOWANCE_S: Final = 300
_CHILD_TIMEOUT_S: Final = 120.0


class CeremonyError(VaultError):
    """The ceremony failed at a named step; no fleet was formed. Never carries secrets."""


# --------------------------------------------------------------------------- officers


class Officer(Protocol):
    """A ceremony officer: a name, an Ed25519 public key and a way to sign with it."""

    @property
    def name(self) -> str: ...

    @property
    def public_key(self) -> bytes: ...

    @property
    def ephemeral(self) -> bool: ...

    def sign(self, message: bytes) -> bytes: ...


@dataclass(frozen=True)
class SoftwareOfficer:
    """An officer key held in this process (a key file, or ephemeral for a local
    deployment). The private key is left out of ``repr``."""

    name: str
    key: Ed25519PrivateKey = field(repr=False, compare=False)
    ephemeral: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not 1 <= len(self.name) <= 64:
            raise InvalidParameter("an officer name is 1..64 characters")
        if not self.name.isprintable():
            raise InvalidParameter("an officer name is printable")

    @classmethod
    def generate(cls, name: str, *, ephemeral: bool = True) -> SoftwareOfficer:
        return cls(name, Ed25519PrivateKey.generate(), ephemeral)

    @classmethod
    def from_pem_file(cls, name: str, path: Path) -> SoftwareOfficer:
        """An officer whose Ed25519 private key is a PEM file (PKCS#8, unencrypted:
        ``openssl genpkey -algorithm ed25519``)."""
        try:
            key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        except (OSError, ValueError, TypeError):
            raise InvalidParameter(f"cannot read an Ed25519 private key from {path}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise InvalidParameter(f"{path} is not an Ed25519 private key")
        return cls(name, key, False)

    @property
    def public_key(self) -> bytes:
        return self.key.public_key().public_bytes_raw()

    def sign(self, message: bytes) -> bytes:
        return self.key.sign(message)


#: ``confirm(officer name, step, summary)`` — called before each officer step; raise to
#: abort the ceremony.
Confirm = Callable[[str, str, str], None]


@dataclass(frozen=True)
class CeremonyOptions:
    """How to run the ceremony. ``officers`` empty: one ephemeral local officer.
    ``operator_public_key`` / ``namespace``: recorded in the inputs (ADR 0010's operator
    counter-signing key and witness namespace), optional."""

    deployment: str = DEFAULT_DEPLOYMENT
    officers: tuple[Officer, ...] = ()
    operator_public_key: bytes | None = None
    namespace: str | None = None
    confirm: Confirm | None = None
    source_root: Path | None = None
    clock: Callable[[], float] = time.time


# --------------------------------------------------------------------------- children


class Channel(Protocol):
    """A JSON-lines conversation with a child process."""

    name: str

    def send(self, obj: Mapping[str, Any]) -> None: ...

    def receive(self) -> dict[str, Any]: ...


class JsonLinesChild:
    """A child process spoken to in JSON lines over its stdin/stdout."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], name: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env),
            text=True,
        )

    def send(self, obj: Mapping[str, Any]) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(obj, sort_keys=True) + "\n")
            self.proc.stdin.flush()
        except OSError:
            raise CeremonyError(f"{self.name} is gone: {self._stderr_tail()}") from None

    def receive(self) -> dict[str, Any]:
        stdout = self.proc.stdout
        assert stdout is not None
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(_CHILD_TIMEOUT_S)
        line = result[0] if result else ""
        if not line:
            if self.proc.poll() is None:
                self.kill()
                raise CeremonyError(f"{self.name} gave no answer in {_CHILD_TIMEOUT_S:.0f} s")
            raise CeremonyError(f"{self.name} failed: {self._stderr_tail()}")
        try:
            answer = json.loads(line)
        except ValueError:
            raise CeremonyError(f"{self.name}: bad answer") from None
        if not isinstance(answer, dict):
            raise CeremonyError(f"{self.name}: bad answer")
        return answer

    def finish(self) -> None:
        """Wait for a clean exit (CeremonyError otherwise)."""
        try:
            code = self.proc.wait(timeout=_CHILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            raise CeremonyError(f"{self.name} did not exit") from None
        if code != 0:
            raise CeremonyError(f"{self.name} exited with {code}: {self._stderr_tail()}")

    def _stderr_tail(self) -> str:
        if self.proc.poll() is None:
            return "no answer"
        if self.proc.stderr is None or self.proc.stderr.closed:
            return f"exit {self.proc.returncode}"
        lines = self.proc.stderr.read().strip().splitlines()
        return lines[-1][:400] if lines else f"exit {self.proc.returncode}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


# --------------------------------------------------------------------------- outcome


@dataclass(frozen=True)
class MemberOutcome:
    """One member as the ceremony made it (all public)."""

    index: int
    region: str
    identity_node_id: bytes
    identity_algorithm: int
    identity_public_key: bytes
    link_public_key: bytes
    link_certificate: bytes


@dataclass(frozen=True)
class CeremonyOutcome:
    """What the ceremony produced: the fleet's public keys, the members, and the evidence
    folder with its digest (:func:`hsmvault.evidence.folder.evidence_digest`)."""

    fleet_id: bytes
    public_keys: FleetPublicKeys
    members: tuple[MemberOutcome, ...]
    evidence_dir: Path
    evidence_digest: bytes
    transcript_head: str
    emulated: bool


# --------------------------------------------------------------------------- the run


def _wire(entry: Entry) -> dict[str, Any]:
    data = entry.to_json()
    return {"statement": data["statement"], "signature": data["signature"]}


def _entry(obj: object, who: str) -> Entry:
    if not isinstance(obj, dict) or set(obj) != {"statement", "signature"}:
        raise CeremonyError(f"{who}: malformed signed statement")
    try:
        return Entry.from_json({"seq": 0, "prev": "0" * 64, **obj})
    except CeremonyFormatError as exc:
        raise CeremonyError(f"{who}: {exc}") from None


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _b64d(value: object, who: str) -> bytes:
    if not isinstance(value, str):
        raise CeremonyError(f"{who}: malformed answer")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise CeremonyError(f"{who}: malformed answer") from None


def _source_commit(source_root: Path) -> str | None:
    """The git commit of the checkout holding ``source_root``, if it is one (the
    measurement, not the commit, is what nodes are checked against)."""
    repo = source_root.parent
    if not (repo / ".git").exists():
        return None
    try:
        done = subprocess.run(  # noqa: S603 - fixed argv
            ["git", "-C", str(repo), "rev-parse", "HEAD"],  # noqa: S607 - git from PATH
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and len(commit) in (40, 64) else None


class _Run:
    """The state of one ceremony run (see :func:`run_ceremony`)."""

    def __init__(
        self,
        nodes: Sequence[Channel],
        vendor: Channel,
        regions: Sequence[str],
        custody: str,
        options: CeremonyOptions,
    ) -> None:
        self.nodes = list(nodes)
        self.vendor = vendor
        self.regions = list(regions)
        self.custody = custody
        self.options = options
        self.officers: tuple[Officer, ...] = options.officers or (
            SoftwareOfficer.generate("local-ceremony-officer"),
        )
        if len({o.public_key for o in self.officers}) != len(self.officers):
            raise InvalidParameter("an officer key is listed twice")
        self.ceremony_id = secrets.token_bytes(32)
        self.transcript = Transcript(self.ceremony_id)
        self.source_root = options.source_root or default_source_root()
        self.build: Measurement = measure(self.source_root)
        self.commit = _source_commit(self.source_root)
        # Filled in step by step:
        self.root: x509.Certificate
        self.identities: list[Entry] = []
        self.documents: list[bytes] = []
        self.generator = 0
        self.statement: Entry
        self.public_keys: FleetPublicKeys
        self.boxes: dict[str, str] = {}
        self.delivered: list[dict[str, Any]] = []
        self.acks: list[Entry] = []
        self.membership: list[str] = []

    def now(self) -> int:
        return int(self.options.clock())

    def officer_step(self, officer: Officer, kind: str, body: Mapping[str, Any], what: str) -> None:
        if self.options.confirm is not None:
            self.options.confirm(officer.name, kind, what)
        statement = Statement(
            self.ceremony_id, kind, officer_author(officer.public_key), self.now(), body
        )
        self.transcript = self.transcript.append(
            statement, officer.sign(officer_message(statement))
        )

    def append(self, entries: Sequence[Entry]) -> None:
        self.transcript = self.transcript.extend([(e.statement, e.signature) for e in entries])

    def ask_all(self, requests: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        for node, request in zip(self.nodes, requests, strict=True):
            node.send(request)
        return [node.receive() for node in self.nodes]

    # -- steps ---------------------------------------------------------------------------

    def inputs(self) -> None:
        lead = self.officers[0]
        body = {
            "deployment": self.options.deployment,
            "custody": self.custody,
            "nodes": [{"index": i, "region": r} for i, r in enumerate(self.regions)],
            "attestation_format": ATTESTATION_FORMAT,
            "measurement": self.build.sha256,
            "officers": [
                {"name": o.name, "public_key": o.public_key.hex(), "ephemeral": o.ephemeral}
                for o in self.officers
            ],
            "operator_public_key": (
                None
                if self.options.operator_public_key is None
                else self.options.operator_public_key.hex()
            ),
            "namespace": self.options.namespace,
            "generator_rule": GENERATOR_RULE,
        }
        self.officer_step(lead, "inputs", body, "sign the ceremony inputs")

    def vendor_root(self) -> None:
        self.vendor.send(
            {
                "step": "root",
                "deployment": self.options.deployment,
                "now": self.now() - _CLOCK_ALLOWANCE_S,
            }
        )
        root_der = _b64d(self.vendor.receive().get("root"), "software vendor")
        root = x509.load_der_x509_certificate(root_der)
        public = root.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        body = {
            "format": ATTESTATION_FORMAT,
            "certificate_sha256": sha256_hex(root_der),
            "public_key_sha256": sha256_hex(public),
            "subject": root.subject.rfc4514_string(),
        }
        self.officer_step(self.officers[0], "vendor-root", body, "record the vendor root")
        self.root = root

    def root_b64(self) -> str:
        return _b64(self.root.public_bytes(serialization.Encoding.DER))

    def collect(self, answers: Sequence[Mapping[str, Any]]) -> list[Entry]:
        entries = [_entry(a.get("entry"), n.name) for a, n in zip(answers, self.nodes, strict=True)]
        self.append(entries)
        return entries

    def identity_step(self) -> None:
        answers = self.ask_all(
            [
                {
                    "step": "identity",
                    "ceremony_id": self.ceremony_id.hex(),
                    "index": i,
                    "region": self.regions[i],
                    "custody": self.custody,
                }
                for i in range(len(self.nodes))
            ]
        )
        entries = [_entry(a.get("entry"), n.name) for a, n in zip(answers, self.nodes, strict=True)]
        for entry, node in zip(entries, self.nodes, strict=True):
            if entry.statement.kind != "identity" or entry.statement.author_kind != "node":
                raise CeremonyError(f"{node.name}: did not answer with an identity statement")
        self.append(entries)
        self.identities = entries

    def attest_step(self) -> None:
        certificates = []
        for entry in self.identities:
            self.vendor.send(
                {"step": "certify", "entry": _wire(entry), "now": self.now() - _CLOCK_ALLOWANCE_S}
            )
            certificates.append(self.vendor.receive().get("certificate"))
        answers = self.ask_all([{"step": "attest", "device_certificate": c} for c in certificates])
        self.documents = [
            _b64d(a.get("document"), n.name) for a, n in zip(answers, self.nodes, strict=True)
        ]
        self.collect(answers)

    def generate_step(self) -> None:
        ids = [e.statement.author_key for e in self.identities]
        self.generator = ids.index(min(ids))
        node = self.nodes[self.generator]
        node.send(
            {
                "step": "generate",
                "vendor_roots": [self.root_b64()],
                "members": [
                    {"identity": _wire(e), "document": _b64(d)}
                    for e, d in zip(self.identities, self.documents, strict=True)
                ],
                "transcript_head": self.transcript.head,
            }
        )
        answer = node.receive()
        self.statement = _entry(answer.get("entry"), node.name)
        boxes = answer.get("boxes")
        if not isinstance(boxes, dict) or self.statement.statement.kind != "fleet-key-statement":
            raise CeremonyError(f"{node.name}: no fleet-key statement")
        self.append([self.statement])
        self.public_keys = FleetPublicKeys.from_dict(self.statement.statement.body["public_keys"])
        self.boxes = boxes

    def deliver_step(self) -> None:
        requests = []
        for entry, node in zip(self.identities, self.nodes, strict=True):
            box = self.boxes.get(entry.statement.author_key.hex())
            if box is None:
                raise CeremonyError(f"the generator sealed no fleet keys to {node.name}")
            requests.append(
                {
                    "step": "deliver",
                    "vendor_roots": [self.root_b64()],
                    "generator_identity": _wire(self.identities[self.generator]),
                    "generator_document": _b64(self.documents[self.generator]),
                    "statement": _wire(self.statement),
                    "box": box,
                }
            )
        self.delivered = self.ask_all(requests)
        self.acks = self.collect(self.delivered)

    def membership_step(self) -> None:
        self.membership = [str(a.statement.body["fleet_node_id"]) for a in self.acks]
        members = [
            {
                "index": i,
                "region": self.regions[i],
                "node_id": identity.statement.author_key.hex(),
                "fleet_node_id": fleet_node_id,
            }
            for i, (identity, fleet_node_id) in enumerate(
                zip(self.identities, self.membership, strict=True)
            )
        ]
        body = {"fleet_id": self.public_keys.fleet_id.hex(), "members": members}
        self.officer_step(self.officers[0], "membership", body, "record the fleet membership")

    def credentials_step(self) -> None:
        request = {
            "step": "credentials",
            "membership": list(self.membership),
            "identities": [_wire(e) for e in self.identities],
            "acknowledgements": [_wire(e) for e in self.acks],
        }
        answers = self.ask_all([request] * len(self.nodes))
        for answer, node in zip(answers, self.nodes, strict=True):
            raw = answer.get("entries")
            if not isinstance(raw, list) or not raw:
                raise CeremonyError(f"{node.name}: no credential statements")
            self.append([_entry(e, node.name) for e in raw])
        self.vendor.send({"step": "destroy"})
        destroyed = self.vendor.receive()
        fingerprint = destroyed.get("public_key_sha256")
        if not isinstance(fingerprint, str):
            raise CeremonyError("software vendor: malformed answer")
        self.officer_step(
            self.officers[0],
            "credential-destroyed",
            {
                "credential": "software-vendor-ca-key",
                "fingerprint": fingerprint,
                "method": (
                    "the software vendor process held the root key in memory only and exited;"
                    " no device can be certified into this deployment any more (not provable"
                    " in software)"
                ),
                "provable": False,
            },
            "confirm that the software vendor's root key is destroyed",
        )

    def close_step(self) -> None:
        request = {"step": "close", "transcript": self.transcript.to_json()}
        self.collect(self.ask_all([request] * len(self.nodes)))
        head = self.transcript.head
        for officer in self.officers:
            if self.options.confirm is not None:
                self.options.confirm(officer.name, "seal", f"sign the transcript head {head}")
            statement = Statement(
                self.ceremony_id,
                "seal",
                officer_author(officer.public_key),
                self.now(),
                {"transcript_head": head},
            )
            self.transcript = self.transcript.append(
                statement, officer.sign(officer_message(statement))
            )

    def members(self) -> tuple[MemberOutcome, ...]:
        out = []
        for i, (identity, answer) in enumerate(zip(self.identities, self.delivered, strict=True)):
            try:
                out.append(
                    MemberOutcome(
                        index=i,
                        region=self.regions[i],
                        identity_node_id=identity.statement.author_key,
                        identity_algorithm=int(answer["identity_algorithm"]),
                        identity_public_key=bytes.fromhex(answer["identity_public_key"]),
                        link_public_key=bytes.fromhex(answer["link_public_key"]),
                        link_certificate=bytes.fromhex(answer["link_certificate"]),
                    )
                )
            except (KeyError, TypeError, ValueError):
                raise CeremonyError(f"node-{i}: malformed acknowledgement answer") from None
        return tuple(out)


def _readme(run: _Run, outcome_keys: FleetPublicKeys, members: Sequence[MemberOutcome]) -> str:
    lines = [
        "EMULATED HARDWARE: attested by the hsmvault software vendor, not by a hardware vendor.",
        "",
        "hsmvault deployment evidence",
        f"fleet id:      {outcome_keys.fleet_id.hex()}",
        f"ceremony id:   {run.ceremony_id.hex()}",
        f"deployment:    {run.options.deployment}",
        f"custody:       {run.custody}",
        f"measurement:   {run.build.sha256} (python -m hsmvault.evidence.measurement)",
        f"transcript:    {len(run.transcript.entries)} entries, head {run.transcript.head}",
        "",
        "members:",
    ]
    for m in members:
        lines.append(f"  node-{m.index}  {m.region:<12} {m.identity_node_id.hex()}")
    lines += [
        "",
        "Verify with: hsmvault audit evidence <this folder>",
        "The evidence digest (SHA-256 of manifest.json) is in the witness-logged fleet-key"
        " artifact.",
        "",
    ]
    return "\n".join(lines)


def _write_evidence(run: _Run, evidence_dir: Path, members: Sequence[MemberOutcome]) -> bytes:
    evidence_dir.mkdir(parents=True, exist_ok=False)
    public_keys = run.public_keys
    files: dict[str, bytes] = {}
    root_der = run.root.public_bytes(serialization.Encoding.DER)
    files[root_path(sha256_hex(root_der))] = run.root.public_bytes(serialization.Encoding.PEM)
    for entry, document in zip(run.identities, run.documents, strict=True):
        files[attestation_path(entry.statement.author_key)] = document
    files[BUILD_FILE] = canonical(
        {
            "sha256": run.build.sha256,
            "size": run.build.size,
            "files": len(run.build.files),
            "dependencies": dict(run.build.dependencies),
            "commit": run.commit,
            "command": f"python -m hsmvault.evidence.measurement --expect {run.build.sha256}",
        }
    )
    files[PUBLIC_KEYS_FILE] = canonical(public_keys.to_dict())
    files[MEMBERS_FILE] = canonical(
        {
            "fleet_id": public_keys.fleet_id.hex(),
            "members": [
                {
                    "index": m.index,
                    "region": m.region,
                    "node_id": m.identity_node_id.hex(),
                    "identity_algorithm": m.identity_algorithm,
                    "identity_public_key": m.identity_public_key.hex(),
                    "link_public_key": m.link_public_key.hex(),
                    "link_certificate": m.link_certificate.hex(),
                }
                for m in members
            ],
        }
    )
    files[TRANSCRIPT_FILE] = run.transcript.to_bytes()
    files[README_FILE] = _readme(run, public_keys, members).encode("utf-8")
    for rel, data in files.items():
        path = evidence_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    manifest = write_manifest(
        evidence_dir,
        fleet_id=public_keys.fleet_id,
        ceremony_id=run.ceremony_id,
        transcript_head=run.transcript.head,
    )
    return manifest.digest()


def _check_inputs(nodes: Sequence[Channel], regions: Sequence[str], custody: str) -> None:
    if len(nodes) != len(regions) or not nodes:
        raise InvalidParameter("one region per node")
    if custody not in ("software", "softhsm"):
        raise InvalidParameter("custody must be 'software' or 'softhsm'")


def run_ceremony(
    nodes: Sequence[Channel],
    *,
    regions: Sequence[str],
    custody: str,
    evidence_dir: Path,
    options: CeremonyOptions | None = None,
    env: Mapping[str, str] | None = None,
) -> CeremonyOutcome:
    """Run the ceremony with the node processes ``nodes`` (in index order, each started
    with ``--provision``) whose regions are ``regions``, and write the evidence folder
    to ``evidence_dir`` (which must not exist). See the module docstring. Raises
    CeremonyError (a step failed: message names it) or InvalidParameter."""
    options = options or CeremonyOptions()
    _check_inputs(nodes, regions, custody)
    environ = dict(os.environ if env is None else env)
    vendor = JsonLinesChild([sys.executable, "-m", VENDOR_MODULE], environ, "software vendor")
    try:
        run = _Run(nodes, vendor, regions, custody, options)
        run.inputs()
        run.vendor_root()
        run.identity_step()
        run.attest_step()
        run.generate_step()
        run.deliver_step()
        run.membership_step()
        run.credentials_step()
        run.close_step()
        vendor.finish()
        members = run.members()
        digest = _write_evidence(run, evidence_dir, members)
    except (DecodeError, KeyError, TypeError, ValueError) as exc:
        raise CeremonyError(f"ceremony failed: {type(exc).__name__}: {exc}") from None
    finally:
        vendor.kill()
    return CeremonyOutcome(
        fleet_id=run.public_keys.fleet_id,
        public_keys=run.public_keys,
        members=members,
        evidence_dir=evidence_dir,
        evidence_digest=digest,
        transcript_head=run.transcript.head,
        emulated=True,
    )
