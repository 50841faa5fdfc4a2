"""The key ceremony inside one node (ADR 0012): the trusted side of formation.

The node process runs this over its provisioning pipe (``node_process --provision``,
JSON lines on stdin/stdout, one request and one answer per step). The coordinator that
sends the requests is untrusted: every decision that matters is taken here, and every
answer is a statement signed by this node's identity key
(:mod:`hsmvault.evidence.ceremony_format`). Steps, in this order (any other order, or
any failed check, raises :class:`CeremonyRefused`; the process then exits non-zero and
no fleet key is produced or kept):

1. ``identity`` — the custody is open (its identity key was made inside it); the node
   reads its key properties (the token's PKCS#11 attributes, or the honest software
   values), measures its own code (:func:`~hsmvault.evidence.measurement.measure`),
   makes an ephemeral X25519 **transport key** in memory, and signs an ``identity``
   statement binding the ceremony id, its identity key and the transport key.
2. ``attest`` — given a device certificate from the (software) vendor, the node issues
   its attestation document (nonce = the ceremony id) and signs an ``attestation``
   statement citing the document's SHA-256.
3. ``generate`` — only on the **generator**, the member with the lowest identity node
   id: it verifies every member's identity statement and attestation with the same
   verifier an auditor runs (its own measurement expected; token key properties
   required unless the deployment uses software custody), generates the fleet keys,
   HPKE-seals them (RFC 9180, :mod:`hsmvault.crypto.fleet_seal`) to each member's
   transport key and signs the ``fleet-key-statement``.
4. ``deliver`` — every member (the generator too) verifies the generator's identity,
   attestation and statement (it must list this node with its own attestation), opens
   its box, checks the keys against the statement, seals them under its custody, makes
   and certifies its fleet link key, drops the transport key and signs an
   ``acknowledgement``.
5. ``credentials`` — given every member's identity and acknowledgement, the node checks
   that the membership is exactly the acknowledged link keys of the statement's members,
   pins it in NVRAM (epoch 1) and signs one ``credential-destroyed`` statement per
   credential it held: the transport key and, for a token it initialised, the SO PIN.
6. ``close`` — given the whole transcript, the node checks the hash chain and that its
   own statements and the statement it accepted are in it, then signs ``closing`` over
   the transcript head.

The secret fleet keys exist in the clear only inside the generator and inside each
member between opening the box and sealing it; nothing secret is ever written to the
pipe, a log or an error.

The same module verifies node statements for the auditor (:func:`verify_node_entry`,
:func:`parse_identity`, ...), so a node and an auditor apply one rule.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from hsmvault.crypto.fleet_seal import open_from_client, seal_to_fleet
from hsmvault.errors import DecodeError, InvalidParameter, VaultError, VerificationError
from hsmvault.evidence.attestation.base import AttestationError, Expectations
from hsmvault.evidence.attestation.software_vendor import (
    FORMAT as SOFTWARE_VENDOR_FORMAT,
)
from hsmvault.evidence.attestation.software_vendor import (
    CustodyKind,
    SoftwareAttestation,
    SoftwareVendorVerifier,
    StatementKeyProperties,
    issue_attestation,
    key_properties_from_pkcs11,
    software_key_properties,
)
from hsmvault.evidence.ceremony_format import (
    FLEET_KEYS_SEAL_PURPOSE,
    TRANSCRIPT_PURPOSE,
    CeremonyFormatError,
    Entry,
    Statement,
    Transcript,
    canonical,
    fleet_keys_seal_context,
    node_author,
    sha256_hex,
)
from hsmvault.evidence.measurement import measure
from hsmvault.fleet.fleet_keys import FleetPublicKeys, FleetSecretKeys, seal_fleet_keys
from hsmvault.fleet.formation import FORMED_INCARNATION, LINK_CERT_PURPOSE, link_certificate_message
from hsmvault.fleet.membership import node_id_for
from hsmvault.hsm.custody.base import KeyCustody, verify_signature
from hsmvault.hsm.nvram import NodeIdentity, Nvram, SignatureAlgorithm

__all__ = [
    "ALGORITHM_NAMES",
    "CUSTODY_TO_VENDOR",
    "FLEET_KEYS_FILE",
    "LINK_KEY_FILE",
    "LINK_KEY_PURPOSE",
    "REGION_RE",
    "SO_PIN_METHOD",
    "TRANSPORT_KEY_METHOD",
    "Acknowledgement",
    "CeremonyRefused",
    "FleetKeyStatement",
    "IdentityClaim",
    "NodeCeremony",
    "identity_of",
    "parse_acknowledgement",
    "parse_fleet_key_statement",
    "parse_identity",
    "public_keys_digest",
    "serve",
    "verify_node_entry",
]

#: Host-side files the node writes (custody-sealed), as in ``node_process``.
FLEET_KEYS_FILE: Final = "fleet-keys.sealed"
LINK_KEY_FILE: Final = "link-key.sealed"
#: Custody sealing purpose of the link private key (as in ``node_process``).
LINK_KEY_PURPOSE: Final = b"hsmvault/fleet-link-key/v1"
#: Identity-key algorithm names in statements.
ALGORITHM_NAMES: Final[Mapping[SignatureAlgorithm, str]] = {
    SignatureAlgorithm.ED25519: "ed25519",
    SignatureAlgorithm.ECDSA_P256_SHA256: "ecdsa-p256-sha256",
}
_ALGORITHMS: Final = {v: k for k, v in ALGORITHM_NAMES.items()}
#: Formation's custody names -> the software vendor's.
CUSTODY_TO_VENDOR: Final[Mapping[str, CustodyKind]] = {
    "software": CustodyKind.SOFTWARE,
    "softhsm": CustodyKind.SOFTHSM2,
}
TRANSPORT_KEY_METHOD: Final = (
    "X25519 transport key generated in this node's memory for this ceremony only; the "
    "reference was dropped after the fleet keys were opened (not provable in software)"
)
SO_PIN_METHOD: Final = (
    "the token's Security Officer PIN was random, typed into softhsm2-util through a "
    "pseudo-terminal at token initialisation and never stored (not provable in software)"
)
_KEY_SOURCE: Final = "generator-process-csprng"
#: Region names (those of the fleet-key artifact, ADR 0010).
REGION_RE: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_STEPS: Final = ("identity", "attest", "generate", "deliver", "credentials", "close")


class CeremonyRefused(VaultError):
    """This node refuses a ceremony step: a statement, attestation or box does not
    verify, or the coordinator asked for something out of order. Never carries secrets."""


def _refuse(message: str) -> CeremonyRefused:
    return CeremonyRefused(f"ceremony refused: {message}")


# --------------------------------------------------------------------------- claims


def identity_of(algorithm: str, public_key_hex: str) -> NodeIdentity:
    """The :class:`NodeIdentity` a statement names; CeremonyFormatError if invalid."""
    alg = _ALGORITHMS.get(algorithm) if isinstance(algorithm, str) else None
    if (
        alg is None
        or not isinstance(public_key_hex, str)
        or public_key_hex != public_key_hex.lower()
    ):
        raise CeremonyFormatError("identity key: unknown algorithm or non-lowercase hex")
    try:
        return NodeIdentity(alg, bytes.fromhex(public_key_hex))
    except (InvalidParameter, ValueError):
        raise CeremonyFormatError("identity key is not a valid key") from None


def _hex(value: object, length: int, what: str) -> bytes:
    if not isinstance(value, str) or len(value) != 2 * length or value != value.lower():
        raise CeremonyFormatError(f"{what} must be {2 * length} lowercase hex digits")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise CeremonyFormatError(f"{what} is not hex") from None


def _int(value: object, what: str, lo: int = 0, hi: int = 2**31) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise CeremonyFormatError(f"{what} out of range")
    return value


@dataclass(frozen=True)
class IdentityClaim:
    """A parsed ``identity`` statement."""

    index: int
    region: str
    custody: str
    identity: NodeIdentity
    transport_public_key: bytes
    measurement: bytes
    key_properties: StatementKeyProperties


def parse_identity(statement: Statement) -> IdentityClaim:
    """Parse an ``identity`` statement; its author must be its key's node id."""
    if statement.kind != "identity":
        raise CeremonyFormatError("not an identity statement")
    body = statement.body
    key = body["identity_key"]
    if not isinstance(key, dict) or set(key) != {"algorithm", "public_key"}:
        raise CeremonyFormatError("identity_key has missing or unknown fields")
    identity = identity_of(key["algorithm"], key["public_key"])
    if statement.author != node_author(identity.node_id):
        raise CeremonyFormatError("an identity statement's author is not its key")
    custody = body["custody"]
    if custody not in CUSTODY_TO_VENDOR:
        raise CeremonyFormatError("unknown custody kind")
    region = body["region"]
    if not isinstance(region, str) or not REGION_RE.fullmatch(region):
        raise CeremonyFormatError("bad region")
    try:
        properties = StatementKeyProperties.from_json(body["key_properties"])
    except AttestationError:
        raise CeremonyFormatError("bad key properties") from None
    return IdentityClaim(
        index=_int(body["index"], "index", 0, 64),
        region=region,
        custody=custody,
        identity=identity,
        transport_public_key=_hex(body["transport_public_key"], 32, "transport key"),
        measurement=_hex(body["measurement"], 32, "measurement"),
        key_properties=properties,
    )


@dataclass(frozen=True)
class StatementMember:
    node_id: bytes
    attestation_sha256: str
    ciphertext_sha256: str


@dataclass(frozen=True)
class FleetKeyStatement:
    """A parsed ``fleet-key-statement``."""

    generator: bytes
    public_keys: FleetPublicKeys
    members: tuple[StatementMember, ...]
    measurement: bytes
    transcript_head: bytes
    key_source: str

    def member(self, node_id: bytes) -> StatementMember | None:
        for m in self.members:
            if m.node_id == node_id:
                return m
        return None


def parse_fleet_key_statement(statement: Statement) -> FleetKeyStatement:
    if statement.kind != "fleet-key-statement" or statement.author_kind != "node":
        raise CeremonyFormatError("not a node's fleet-key statement")
    body = statement.body
    try:
        public_keys = FleetPublicKeys.from_dict(body["public_keys"])
    except DecodeError:
        raise CeremonyFormatError("bad public keys") from None
    if public_keys.fleet_id != _hex(body["fleet_id"], 32, "fleet_id"):
        raise CeremonyFormatError("the public keys name another fleet")
    raw = body["members"]
    if not isinstance(raw, list) or not 1 <= len(raw) <= 64:
        raise CeremonyFormatError("members must be a non-empty list")
    members = []
    for item in raw:
        if not isinstance(item, dict) or set(item) != {
            "node_id",
            "attestation_sha256",
            "ciphertext_sha256",
        }:
            raise CeremonyFormatError("a member has missing or unknown fields")
        members.append(
            StatementMember(
                _hex(item["node_id"], 32, "node_id"),
                _hex(item["attestation_sha256"], 32, "attestation_sha256").hex(),
                _hex(item["ciphertext_sha256"], 32, "ciphertext_sha256").hex(),
            )
        )
    if len({m.node_id for m in members}) != len(members):
        raise CeremonyFormatError("a member is listed twice")
    source = body["key_source"]
    if not isinstance(source, str) or not 1 <= len(source) <= 64:
        raise CeremonyFormatError("bad key source")
    return FleetKeyStatement(
        generator=statement.author_key,
        public_keys=public_keys,
        members=tuple(members),
        measurement=_hex(body["measurement"], 32, "measurement"),
        transcript_head=_hex(body["transcript_head"], 32, "transcript_head"),
        key_source=source,
    )


@dataclass(frozen=True)
class Acknowledgement:
    """A parsed ``acknowledgement``."""

    node_id: bytes
    fleet_id: bytes
    generator: bytes
    statement_sha256: str
    public_keys_sha256: str
    link_public_key: bytes
    link_certificate: bytes
    fleet_node_id: str


def parse_acknowledgement(statement: Statement) -> Acknowledgement:
    if statement.kind != "acknowledgement" or statement.author_kind != "node":
        raise CeremonyFormatError("not a node's acknowledgement")
    body = statement.body
    link = _hex(body["link_public_key"], 32, "link_public_key")
    fleet_node_id = _hex(body["fleet_node_id"], 32, "fleet_node_id").hex()
    if fleet_node_id != node_id_for(link):
        raise CeremonyFormatError("fleet_node_id is not the link key's node id")
    return Acknowledgement(
        node_id=statement.author_key,
        fleet_id=_hex(body["fleet_id"], 32, "fleet_id"),
        generator=_hex(body["generator"], 32, "generator"),
        statement_sha256=_hex(body["statement_sha256"], 32, "statement_sha256").hex(),
        public_keys_sha256=_hex(body["public_keys_sha256"], 32, "public_keys_sha256").hex(),
        link_public_key=link,
        link_certificate=_hex(body["link_certificate"], 64, "link_certificate"),
        fleet_node_id=fleet_node_id,
    )


def public_keys_digest(public_keys: FleetPublicKeys) -> str:
    """SHA-256 (hex) of the canonical JSON of ``public_keys`` (acknowledgements cite it)."""
    return sha256_hex(canonical(public_keys.to_dict()))


def verify_node_entry(entry: Entry, identity: NodeIdentity) -> None:
    """VerificationError unless ``entry`` is a node statement signed by ``identity``
    (author = its node id; signature under :data:`TRANSCRIPT_PURPOSE`)."""
    statement = entry.statement
    if statement.author != node_author(identity.node_id):
        raise VerificationError("the statement's author is not this identity")
    verify_signature(identity, TRANSCRIPT_PURPOSE, statement.signed_bytes(), entry.signature)


def _wire_entry(obj: object) -> Entry:
    """A signed statement sent over the pipe: ``{"statement": {...}, "signature": b64}``."""
    if not isinstance(obj, dict) or set(obj) != {"statement", "signature"}:
        raise CeremonyFormatError("a signed statement has missing or unknown fields")
    return Entry.from_json({"seq": 0, "prev": "0" * 64, **obj})


def _to_wire(statement: Statement, signature: bytes) -> dict[str, Any]:
    entry = Entry(0, "0" * 64, statement, signature).to_json()
    return {"statement": entry["statement"], "signature": entry["signature"]}


def _b64(value: object, what: str, max_len: int = 1 << 16) -> bytes:
    if not isinstance(value, str) or not value.isascii():
        raise CeremonyFormatError(f"{what} must be base64")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise CeremonyFormatError(f"{what} must be base64") from None
    if not 0 < len(raw) <= max_len:
        raise CeremonyFormatError(f"{what} has a bad length")
    return raw


def _b64e(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


# --------------------------------------------------------------------------- the node


@dataclass
class _Member:
    claim: IdentityClaim
    entry: Entry
    document: bytes


class NodeCeremony:
    """One node's side of the ceremony (module docstring). Feed it requests with
    :meth:`handle`; it answers with JSON-ready dicts or raises CeremonyRefused."""

    def __init__(
        self,
        *,
        custody: KeyCustody,
        nvram: Nvram,
        custody_kind: str,
        index: int,
        host_dir: Path,
        write_private: Callable[[Path, bytes], None],
        clock: Callable[[], float] = time.time,
        measure_self: Callable[[], bytes] | None = None,
    ) -> None:
        if custody_kind not in CUSTODY_TO_VENDOR:
            raise InvalidParameter("unknown custody kind")
        self._custody = custody
        self._nvram = nvram
        self._kind = custody_kind
        self._index = index
        self._host_dir = host_dir
        self._write = write_private
        self._clock = clock
        self._measure = measure_self or (lambda: measure().digest)
        self._done: list[str] = []
        self._ceremony_id = b""
        self._region = ""
        self._measurement = b""
        self._properties: StatementKeyProperties | None = None
        self._transport: X25519PrivateKey | None = None
        self._transport_public = b""
        self._mine: list[Entry] = []
        self._document = b""
        self._accepted: Entry | None = None
        self._statement: FleetKeyStatement | None = None
        self._fleet_id = b""
        self._link_node_id = ""
        self._membership: list[str] = []

    @property
    def node_id(self) -> bytes:
        return self._custody.node_id

    @property
    def finished(self) -> bool:
        return "close" in self._done

    def _now(self) -> int:
        return int(self._clock())

    def _sign(self, kind: str, body: Mapping[str, Any]) -> Entry:
        statement = Statement(self._ceremony_id, kind, node_author(self.node_id), self._now(), body)
        signature = self._custody.sign(TRANSCRIPT_PURPOSE, statement.signed_bytes())
        entry = Entry(0, "0" * 64, statement, signature)
        self._mine.append(entry)
        return entry

    def handle(self, request: object) -> dict[str, Any]:
        """Run one step; the answer to send back."""
        if not isinstance(request, dict) or not isinstance(request.get("step"), str):
            raise _refuse("a request names its step")
        step = request["step"]
        if step not in _STEPS:
            raise _refuse(f"unknown step {step!r}")
        expected = {
            "identity": (),
            "attest": ("identity",),
            "generate": ("identity", "attest"),
            "deliver": ("identity", "attest"),
            "credentials": ("identity", "attest", "deliver"),
            "close": ("identity", "attest", "deliver", "credentials"),
        }[step]
        done = [s for s in self._done if s != "generate"]
        if step in self._done or done != list(expected):
            raise _refuse(f"step {step!r} out of order")
        try:
            handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
                "identity": self._identity,
                "attest": self._attest,
                "generate": self._generate,
                "deliver": self._deliver,
                "credentials": self._credentials,
                "close": self._close,
            }
            answer = handlers[step](request)
        except (CeremonyFormatError, DecodeError, KeyError, TypeError, ValueError) as exc:
            raise _refuse(f"{step}: malformed request ({type(exc).__name__}: {exc})") from None
        except VerificationError as exc:
            raise _refuse(f"{step}: {exc}") from None
        self._done.append(step)
        return answer

    # -- 1. identity ---------------------------------------------------------------------

    def _identity(self, request: dict[str, Any]) -> dict[str, Any]:
        self._ceremony_id = _hex(request["ceremony_id"], 32, "ceremony_id")
        if request["index"] != self._index or request["custody"] != self._kind:
            raise _refuse("the request names another node index or custody kind")
        region = request["region"]
        if not isinstance(region, str) or not REGION_RE.fullmatch(region):
            raise _refuse("a region is 1-63 of [a-z0-9-]")
        self._region = region
        if self._kind == "software":
            self._properties = software_key_properties()
        else:
            # On demand: software-only nodes never load python-pkcs11.
            from hsmvault.hsm.custody.pkcs11 import Pkcs11Custody  # noqa: PLC0415

            if not isinstance(self._custody, Pkcs11Custody):
                raise _refuse("softhsm custody expected")
            self._properties = key_properties_from_pkcs11(self._custody.identity_key_object())
        self._measurement = self._measure()
        self._transport = X25519PrivateKey.generate()
        self._transport_public = self._transport.public_key().public_bytes_raw()
        identity = self._custody.identity
        entry = self._sign(
            "identity",
            {
                "index": self._index,
                "region": self._region,
                "custody": self._kind,
                "identity_key": {
                    "algorithm": ALGORITHM_NAMES[identity.algorithm],
                    "public_key": identity.public_key.hex(),
                },
                "transport_public_key": self._transport_public.hex(),
                "measurement": self._measurement.hex(),
                "key_properties": self._properties.to_json(),
            },
        )
        return {"entry": _to_wire(entry.statement, entry.signature)}

    # -- 2. attest -----------------------------------------------------------------------

    def _attest(self, request: dict[str, Any]) -> dict[str, Any]:
        certificate = x509.load_der_x509_certificate(_b64(request["device_certificate"], "cert"))
        assert self._properties is not None
        try:
            document = issue_attestation(
                self._custody,
                device_certificate=certificate,
                region=self._region,
                custody_kind=CUSTODY_TO_VENDOR[self._kind],
                key_properties=self._properties,
                measurement=self._measurement,
                issued_at=datetime.fromtimestamp(self._now(), UTC),
                nonce=self._ceremony_id,
            )
        except InvalidParameter as exc:
            raise _refuse(f"attest: {exc}") from None
        self._document = document
        entry = self._sign(
            "attestation",
            {"format": SOFTWARE_VENDOR_FORMAT, "document_sha256": sha256_hex(document)},
        )
        return {"document": _b64e(document), "entry": _to_wire(entry.statement, entry.signature)}

    # -- checks shared by generate and deliver -------------------------------------------

    def _roots(self, request: dict[str, Any]) -> list[x509.Certificate]:
        raw = request["vendor_roots"]
        if not isinstance(raw, list) or not 1 <= len(raw) <= 4:
            raise CeremonyFormatError("vendor_roots must list 1..4 certificates")
        return [x509.load_der_x509_certificate(_b64(r, "root")) for r in raw]

    def _verify_member(
        self, identity_wire: object, document_b64: object, roots: Sequence[x509.Certificate]
    ) -> _Member:
        """A member's identity statement and attestation, verified as an auditor does."""
        entry = _wire_entry(identity_wire)
        if entry.statement.ceremony_id != self._ceremony_id:
            raise VerificationError("an identity statement of another ceremony")
        claim = parse_identity(entry.statement)
        verify_node_entry(entry, claim.identity)
        if claim.custody != self._kind:
            raise VerificationError("a member declares another custody kind")
        if not hmac.compare_digest(claim.measurement, self._measurement):
            raise VerificationError("a member reports another measurement than this node's")
        document = _b64(document_b64, "attestation")
        try:
            result = SoftwareVendorVerifier().verify(
                document,
                trust_anchors=roots,
                at_time=datetime.fromtimestamp(self._now(), UTC),
                expected=Expectations(
                    measurement=self._measurement,
                    public_key=claim.identity.public_key,
                    nonce=self._ceremony_id,
                    require_key_properties=self._kind != "software",
                    unsafe_allow_emulated=True,
                ),
            )
        except AttestationError as exc:
            raise VerificationError(
                f"attestation of {claim.identity.node_id.hex()[:16]}: {type(exc).__name__}: {exc}"
            ) from None
        statement = SoftwareAttestation.from_bytes(document).statement
        if (
            statement.region != claim.region
            or statement.custody is not CUSTODY_TO_VENDOR[claim.custody]
        ):
            raise VerificationError("the attestation names another region or custody")
        if result.attested_public_key != claim.identity.public_key:  # pragma: no cover
            raise VerificationError("the attestation covers another key")
        return _Member(claim, entry, document)

    # -- 3. generate (the generator only) ------------------------------------------------

    def _generate(self, request: dict[str, Any]) -> dict[str, Any]:
        roots = self._roots(request)
        raw = request["members"]
        if not isinstance(raw, list) or not 1 <= len(raw) <= 64:
            raise CeremonyFormatError("members must be a non-empty list")
        members = [self._verify_member(m["identity"], m["document"], roots) for m in raw]
        ids = [m.claim.identity.node_id for m in members]
        if len(set(ids)) != len(ids):
            raise VerificationError("a member is listed twice")
        if self.node_id not in ids:
            raise VerificationError("this node is not a member")
        if min(ids) != self.node_id:
            raise VerificationError("this node is not the generator (lowest node id)")
        mine = next(m for m in members if m.claim.identity.node_id == self.node_id)
        if mine.document != self._document:
            raise VerificationError("the request carries another attestation of this node")
        head = _hex(request["transcript_head"], 32, "transcript_head")
        keys = FleetSecretKeys.generate()
        public = keys.public()
        boxes: dict[str, str] = {}
        listed = []
        for m in sorted(members, key=lambda m: m.claim.index):
            node_id = m.claim.identity.node_id
            box = seal_to_fleet(
                m.claim.transport_public_key,
                keys.to_bytes(),
                purpose=FLEET_KEYS_SEAL_PURPOSE,
                context=fleet_keys_seal_context(self._ceremony_id, node_id, head),
            )
            boxes[node_id.hex()] = _b64e(box)
            listed.append(
                {
                    "node_id": node_id.hex(),
                    "attestation_sha256": sha256_hex(m.document),
                    "ciphertext_sha256": sha256_hex(box),
                }
            )
        del keys  # the generator keeps nothing: it gets its own box like every member
        entry = self._sign(
            "fleet-key-statement",
            {
                "fleet_id": public.fleet_id.hex(),
                "public_keys": public.to_dict(),
                "members": listed,
                "measurement": self._measurement.hex(),
                "transcript_head": head.hex(),
                "key_source": _KEY_SOURCE,
            },
        )
        return {"entry": _to_wire(entry.statement, entry.signature), "boxes": boxes}

    # -- 4. deliver ----------------------------------------------------------------------

    def _check_statement(
        self, request: dict[str, Any]
    ) -> tuple[Entry, FleetKeyStatement, bytes, bytes]:
        """The generator's statement, verified: (entry, parsed, generator id, box)."""
        roots = self._roots(request)
        generator = self._verify_member(
            request["generator_identity"], request["generator_document"], roots
        )
        gen_id = generator.claim.identity.node_id
        entry = _wire_entry(request["statement"])
        if entry.statement.ceremony_id != self._ceremony_id:
            raise VerificationError("a statement of another ceremony")
        statement = parse_fleet_key_statement(entry.statement)
        verify_node_entry(entry, generator.claim.identity)
        listed = [m.node_id for m in statement.members]
        if statement.generator != gen_id or min(listed) != gen_id:
            raise VerificationError("the generator is not the member with the lowest node id")
        me = statement.member(self.node_id)
        if me is None:
            raise VerificationError("the fleet-key statement does not list this node")
        if me.attestation_sha256 != sha256_hex(self._document):
            raise VerificationError("the generator did not verify this node's attestation")
        gen_listed = statement.member(gen_id)
        if gen_listed is None or gen_listed.attestation_sha256 != sha256_hex(generator.document):
            raise VerificationError("the statement cites another attestation of the generator")
        if not hmac.compare_digest(statement.measurement, self._measurement):
            raise VerificationError("the generator runs another measurement than this node")
        box = _b64(request["box"], "box")
        if me.ciphertext_sha256 != sha256_hex(box):
            raise VerificationError("the box is not the one the statement lists for this node")
        return entry, statement, gen_id, box

    def _deliver(self, request: dict[str, Any]) -> dict[str, Any]:
        entry, statement, gen_id, box = self._check_statement(request)
        transport = self._transport
        if transport is None:  # pragma: no cover - step order guarantees it
            raise _refuse("no transport key")
        try:
            plaintext = open_from_client(
                transport,
                box,
                purpose=FLEET_KEYS_SEAL_PURPOSE,
                context=fleet_keys_seal_context(
                    self._ceremony_id, self.node_id, statement.transcript_head
                ),
            )
            keys = FleetSecretKeys.from_bytes(plaintext)
        finally:
            # The transport key is used exactly once.
            self._transport = None
            del transport
        del plaintext
        if keys.public() != statement.public_keys:
            raise VerificationError("the box holds other keys than the statement names")
        fleet_id = keys.fleet_id
        self._write(self._host_dir / FLEET_KEYS_FILE, seal_fleet_keys(self._custody, keys))
        del keys
        link_key = Ed25519PrivateKey.generate()
        self._write(
            self._host_dir / LINK_KEY_FILE,
            self._custody.seal(LINK_KEY_PURPOSE, link_key.private_bytes_raw(), fleet_id),
        )
        link_public = link_key.public_key().public_bytes_raw()
        del link_key
        certificate = self._custody.sign(
            LINK_CERT_PURPOSE, link_certificate_message(fleet_id, link_public)
        )
        self._fleet_id = fleet_id
        self._accepted = entry
        self._statement = statement
        self._link_node_id = node_id_for(link_public)
        ack = self._sign(
            "acknowledgement",
            {
                "fleet_id": fleet_id.hex(),
                "generator": gen_id.hex(),
                "statement_sha256": entry.statement.digest(),
                "public_keys_sha256": public_keys_digest(statement.public_keys),
                "link_public_key": link_public.hex(),
                "link_certificate": certificate.hex(),
                "fleet_node_id": self._link_node_id,
            },
        )
        identity = self._custody.identity
        return {
            "entry": _to_wire(ack.statement, ack.signature),
            "identity_algorithm": int(identity.algorithm),
            "identity_public_key": identity.public_key.hex(),
            "link_public_key": link_public.hex(),
            "link_certificate": certificate.hex(),
        }

    # -- 5. credentials ------------------------------------------------------------------

    def _credentials(self, request: dict[str, Any]) -> dict[str, Any]:
        statement = self._statement
        assert statement is not None
        identities: dict[bytes, NodeIdentity] = {}
        for wire in request["identities"]:
            entry = _wire_entry(wire)
            claim = parse_identity(entry.statement)
            verify_node_entry(entry, claim.identity)
            identities[claim.identity.node_id] = claim.identity
        acked: dict[bytes, Acknowledgement] = {}
        for wire in request["acknowledgements"]:
            entry = _wire_entry(wire)
            if entry.statement.ceremony_id != self._ceremony_id:
                raise VerificationError("an acknowledgement of another ceremony")
            ack = parse_acknowledgement(entry.statement)
            identity = identities.get(ack.node_id)
            if identity is None or statement.member(ack.node_id) is None:
                raise VerificationError("an acknowledgement by a node the statement does not list")
            verify_node_entry(entry, identity)
            accepted = self._accepted
            assert accepted is not None
            if (
                ack.fleet_id != self._fleet_id
                or ack.statement_sha256 != accepted.statement.digest()
            ):
                raise VerificationError("an acknowledgement of another fleet-key statement")
            verify_signature(
                identity,
                LINK_CERT_PURPOSE,
                link_certificate_message(ack.fleet_id, ack.link_public_key),
                ack.link_certificate,
            )
            if ack.node_id in acked:
                raise VerificationError("a member acknowledged twice")
            acked[ack.node_id] = ack
        if set(acked) != {m.node_id for m in statement.members}:
            raise VerificationError("not every listed member acknowledged the fleet keys")
        membership = request["membership"]
        if not isinstance(membership, list) or sorted(membership) != sorted(
            a.fleet_node_id for a in acked.values()
        ):
            raise VerificationError("the membership is not the acknowledged link keys")
        if self._link_node_id not in membership:  # pragma: no cover - implied above
            raise VerificationError("the membership does not contain this node")
        self._membership = list(membership)
        self._nvram.set_membership([bytes.fromhex(m) for m in membership], epoch=FORMED_INCARNATION)
        entries = [
            self._sign(
                "credential-destroyed",
                {
                    "credential": "transport-key",
                    "fingerprint": sha256_hex(self._transport_public),
                    "method": TRANSPORT_KEY_METHOD,
                    "provable": False,
                },
            )
        ]
        if self._kind == "softhsm":
            entries.append(
                self._sign(
                    "credential-destroyed",
                    {
                        "credential": "token-so-pin",
                        "fingerprint": None,
                        "method": SO_PIN_METHOD,
                        "provable": False,
                    },
                )
            )
        return {"entries": [_to_wire(e.statement, e.signature) for e in entries]}

    # -- 6. close ------------------------------------------------------------------------

    def _close(self, request: dict[str, Any]) -> dict[str, Any]:
        transcript = Transcript.from_json(request["transcript"])
        if transcript.ceremony_id != self._ceremony_id:
            raise VerificationError("a transcript of another ceremony")
        present = {(e.statement.signed_bytes(), e.signature) for e in transcript.entries}
        for own in self._mine:
            if (own.statement.signed_bytes(), own.signature) not in present:
                raise VerificationError(
                    f"the transcript lacks this node's {own.statement.kind} statement"
                )
        accepted = self._accepted
        assert accepted is not None
        if (accepted.statement.signed_bytes(), accepted.signature) not in present:
            raise VerificationError("the transcript lacks the accepted fleet-key statement")
        kinds = [e.statement.kind for e in transcript.entries]
        if "closing" in kinds or "seal" in kinds:
            raise VerificationError("the transcript is already closed")
        closing = self._sign(
            "closing",
            {
                "transcript_head": transcript.head,
                "fleet_id": self._fleet_id.hex(),
                "pinned_membership": self._membership,
                "nvram_epoch": FORMED_INCARNATION,
            },
        )
        return {"entry": _to_wire(closing.statement, closing.signature)}


def serve(ceremony: NodeCeremony, stdin: IO[str], stdout: IO[str]) -> None:
    """Answer requests (one JSON object a line) until the ``close`` step is done."""
    while not ceremony.finished:
        line = stdin.readline()
        if not line:
            raise _refuse("the coordinator closed the pipe before the ceremony ended")
        try:
            request = json.loads(line)
        except ValueError:
            raise _refuse("a request is not JSON") from None
        answer = ceremony.handle(request)
        stdout.write(json.dumps(answer, sort_keys=True) + "\n")
        stdout.flush()
