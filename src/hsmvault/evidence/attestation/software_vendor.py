"""The hsmvault "software vendor": attestation for nodes without attesting hardware.

.. warning::

    This is **emulated hardware attestation**. Software-custody and SoftHSM2 nodes have
    no hardware vendor to vouch for them, so a deployment makes its own vendor CA. Its
    documents prove which identity keys and which code (measurement) a deployment's
    ceremony used, and what the token reported about each key; they do not prove that
    a tamper-resistant device keeps the keys. Every subject it issues, every statement
    it signs and every result its verifier returns is labelled EMULATED, and the
    generic verifier refuses them unless the caller sets
    ``Expectations.unsafe_allow_emulated``.

Pieces (pure: no I/O, no clock; the caller passes times, keys and bytes):

* :class:`SoftwareVendorCA` — a root CA (Ed25519, X.509 via ``cryptography``) made for
  one deployment (``O=hsmvault software vendor, OU=EMULATED HARDWARE``), which issues
  each node a **device certificate** for its identity key (Ed25519 or ECDSA P-256):
  ``CN=<node id hex>, OU=EMULATED HARDWARE: <custody> custody, L=<region>``. The
  ceremony destroys the CA key once every node is certified (ADR 0012).
* :class:`StatementKeyProperties` — how the identity key is held:
  :func:`key_properties_from_pkcs11` reads the token's own attributes of a real
  python-pkcs11 key object (``CKA_LOCAL``, ``CKA_EXTRACTABLE``,
  ``CKA_NEVER_EXTRACTABLE``, ``CKA_SENSITIVE``, ``CKA_ALWAYS_SENSITIVE``);
  :func:`software_key_properties` states honestly that a software key was neither
  generated inside a device nor protected from extraction.
* :func:`issue_attestation` — the node signs its statement with its identity key
  (``KeyCustody.sign``, purpose :data:`SIGNING_PURPOSE`), inside the node.
* :class:`SoftwareVendorVerifier` — the plugin for format :data:`FORMAT`.

Document v1 — canonical JSON (UTF-8/ASCII, ``sort_keys``, no whitespace, the rules of
ADR 0010: the parser re-serialises and demands byte equality, refuses unknown or
missing keys, wrong types, floats and non-lowercase hex)::

    {"device_certificate": "<base64 DER>",
     "format": "hsmvault-software-vendor",
     "signature": "<base64, 64 bytes>",
     "statement": {
        "custody": "software" | "softhsm2",
        "emulated": true,
        "identity_key": {"algorithm": "ed25519" | "ecdsa-p256-sha256",
                         "public_key": "<hex: 32-byte raw | 65-byte SEC1 point>"},
        "issued_at": <int seconds since the Unix epoch, UTC>,
        "key_properties": {"source": "pkcs11-attributes" | "software-emulated",
                           "local": bool, "extractable": bool,
                           "never_extractable": bool, "sensitive": bool,
                           "always_sensitive": bool},
        "measurement": "<64 hex: SHA-256 of the reproducible build>",
        "node_id": "<64 hex: SHA-256 of the identity key's SubjectPublicKeyInfo>",
        "nonce": "<hex, 16..64 bytes: the ceremony's challenge>",
        "region": "<[a-z0-9][a-z0-9-]{0,62}>",
        "version": 1},
     "version": 1}

The signature is the node's ``KeyCustody.sign(SIGNING_PURPOSE, canonical JSON of
"statement")``: Ed25519, or ECDSA P-256 ``r || s`` over SHA-256 (ADR 0003).

Verification, in order: 1. parse (:class:`AttestationFormatError`); 2. the device
certificate is issued by a trusted software-vendor root and both carry the EMULATED
label (:class:`ChainError`); 3. both certificates are valid at ``at_time`` and the
statement's time lies in the device certificate's window (:class:`ExpiredError`);
4. the device certificate certifies exactly the statement's key, node id, custody and
region (:class:`ChainError`); 5. the statement's signature (:class:`SignatureError`);
6. :func:`~hsmvault.evidence.attestation.base.apply_expectations` (emulated refused
unless allowed; key properties; nonce, key, measurement).
"""

from __future__ import annotations

import base64
import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from hsmvault.errors import CustodyError, InvalidParameter, VerificationError
from hsmvault.evidence.attestation._canonical import (
    b64_field,
    bool_field,
    canonical,
    hex_field,
    int_field,
    keys_field,
    parse_canonical,
    str_field,
)
from hsmvault.evidence.attestation._x509 import (
    check_validity,
    der,
    load_der_certificate,
    verify_chain,
)
from hsmvault.evidence.attestation.base import (
    EMULATED_WARNING,
    AttestationFormatError,
    AttestationResult,
    AttestationVerifier,
    CertificateSummary,
    ChainError,
    Expectations,
    ExpiredError,
    KeyProperties,
    SignatureError,
    apply_expectations,
    check_time,
)
from hsmvault.hsm.custody.base import KeyCustody, verify_signature
from hsmvault.hsm.nvram import NodeIdentity, SignatureAlgorithm

if TYPE_CHECKING:
    from pkcs11.types import Object as Pkcs11Object

__all__ = [
    "EMULATED_LABEL",
    "FORMAT",
    "SIGNING_PURPOSE",
    "VENDOR_ORGANIZATION",
    "AttestationStatement",
    "CustodyKind",
    "KeySource",
    "SoftwareAttestation",
    "SoftwareVendorCA",
    "SoftwareVendorVerifier",
    "StatementKeyProperties",
    "issue_attestation",
    "key_properties_from_pkcs11",
    "software_key_properties",
]

FORMAT = "hsmvault-software-vendor"
VERSION = 1
#: The identity-key signing purpose of attestation statements (ADR 0003 domain label).
SIGNING_PURPOSE = b"hsmvault/attestation/software-vendor/v1"
#: The label in the OU of every certificate this vendor issues.
EMULATED_LABEL = "EMULATED HARDWARE"
VENDOR_ORGANIZATION = "hsmvault software vendor"
MAX_DOCUMENT_LEN = 16384
NONCE_MIN_LEN = 16
NONCE_MAX_LEN = 64
MEASUREMENT_LEN = 32
#: The last second a statement may carry (9999-12-31T23:59:59Z).
MAX_TIME = 253402300799
DEFAULT_ROOT_LIFETIME = timedelta(days=3653)
DEFAULT_DEVICE_LIFETIME = timedelta(days=3652)

_REGION = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_DEPLOYMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,39}")
_ALGORITHM_NAMES = {
    SignatureAlgorithm.ED25519: "ed25519",
    SignatureAlgorithm.ECDSA_P256_SHA256: "ecdsa-p256-sha256",
}
_ALGORITHMS = {v: k for k, v in _ALGORITHM_NAMES.items()}


class CustodyKind(enum.StrEnum):
    """Which key custody a node uses (ADR 0003)."""

    SOFTWARE = "software"
    SOFTHSM2 = "softhsm2"


class KeySource(enum.StrEnum):
    """Where a statement's key properties come from."""

    #: Read from the token: the PKCS#11 attributes of the identity private key.
    PKCS11_ATTRIBUTES = "pkcs11-attributes"
    #: No token: the fixed, honest values of a key held in process memory.
    SOFTWARE_EMULATED = "software-emulated"


def _epoch_seconds(moment: datetime) -> int:
    return int(check_time(moment).timestamp())


def _from_epoch(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


# -- key properties ---------------------------------------------------------------------


#: (local, extractable, never_extractable, sensitive, always_sensitive) of a software key.
_SOFTWARE_CLAIMS = (False, True, False, False, False)


@dataclass(frozen=True)
class StatementKeyProperties:
    """The identity key's PKCS#11 protection attributes as the node reports them.

    ``generated_inside`` is ``CKA_LOCAL`` (the token generated the key);
    ``non_extractable`` needs ``CKA_EXTRACTABLE`` false, ``CKA_NEVER_EXTRACTABLE``,
    ``CKA_SENSITIVE`` and ``CKA_ALWAYS_SENSITIVE`` true (PKCS#11 v3.0 §4.9). For
    :attr:`KeySource.SOFTWARE_EMULATED` every value is the fixed "not protected" one.
    """

    source: KeySource
    local: bool
    extractable: bool
    never_extractable: bool
    sensitive: bool
    always_sensitive: bool

    def __post_init__(self) -> None:
        claims = (
            self.local,
            self.extractable,
            self.never_extractable,
            self.sensitive,
            self.always_sensitive,
        )
        if self.source is KeySource.SOFTWARE_EMULATED and claims != _SOFTWARE_CLAIMS:
            raise InvalidParameter("software-emulated key properties claim a protection")

    @property
    def generated_inside(self) -> bool:
        return self.local

    @property
    def non_extractable(self) -> bool:
        return (
            not self.extractable
            and self.never_extractable
            and self.sensitive
            and self.always_sensitive
        )

    def to_json(self) -> dict[str, object]:
        return {
            "source": self.source.value,
            "local": self.local,
            "extractable": self.extractable,
            "never_extractable": self.never_extractable,
            "sensitive": self.sensitive,
            "always_sensitive": self.always_sensitive,
        }

    @classmethod
    def from_json(cls, obj: object) -> StatementKeyProperties:
        fields = keys_field(
            obj,
            frozenset(
                {
                    "source",
                    "local",
                    "extractable",
                    "never_extractable",
                    "sensitive",
                    "always_sensitive",
                }
            ),
            "key_properties",
        )
        try:
            source = KeySource(str_field(fields["source"], "key source"))
        except ValueError:
            raise AttestationFormatError("unknown key-properties source") from None
        try:
            return cls(
                source=source,
                local=bool_field(fields["local"], "local"),
                extractable=bool_field(fields["extractable"], "extractable"),
                never_extractable=bool_field(fields["never_extractable"], "never_extractable"),
                sensitive=bool_field(fields["sensitive"], "sensitive"),
                always_sensitive=bool_field(fields["always_sensitive"], "always_sensitive"),
            )
        except InvalidParameter:
            raise AttestationFormatError("software-emulated key properties are not") from None


def software_key_properties() -> StatementKeyProperties:
    """The honest properties of a software-custody key: not generated in a device,
    extractable, not sensitive (it lives in process memory and in the NVRAM file)."""
    return StatementKeyProperties(
        source=KeySource.SOFTWARE_EMULATED,
        local=False,
        extractable=True,
        never_extractable=False,
        sensitive=False,
        always_sensitive=False,
    )


def key_properties_from_pkcs11(private_key: Pkcs11Object) -> StatementKeyProperties:
    """Read the protection attributes of a python-pkcs11 private-key object from its
    token (one C_GetAttributeValue). Raises CustodyError if the object is not a private
    key or the token does not report a boolean for every attribute."""
    # On demand: software-only nodes never load python-pkcs11.
    import pkcs11  # noqa: PLC0415
    from pkcs11 import Attribute, ObjectClass  # noqa: PLC0415

    wanted = (
        Attribute.LOCAL,
        Attribute.EXTRACTABLE,
        Attribute.NEVER_EXTRACTABLE,
        Attribute.SENSITIVE,
        Attribute.ALWAYS_SENSITIVE,
    )
    try:
        if private_key.object_class != ObjectClass.PRIVATE_KEY:
            raise CustodyError("key properties are read from a private key object")
        values = private_key.get_attributes(list(wanted))
    except pkcs11.exceptions.PKCS11Error as exc:
        raise CustodyError(f"cannot read key attributes ({type(exc).__name__})") from None
    flags = [values.get(attribute) for attribute in wanted]
    if not all(isinstance(flag, bool) for flag in flags):
        raise CustodyError("token did not report every key attribute as a boolean")
    local, extractable, never_extractable, sensitive, always_sensitive = (
        bool(flag) for flag in flags
    )
    return StatementKeyProperties(
        source=KeySource.PKCS11_ATTRIBUTES,
        local=local,
        extractable=extractable,
        never_extractable=never_extractable,
        sensitive=sensitive,
        always_sensitive=always_sensitive,
    )


# -- the vendor CA ----------------------------------------------------------------------


def _public_key_of(identity: NodeIdentity) -> ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey:
    if identity.algorithm is SignatureAlgorithm.ED25519:
        return ed25519.Ed25519PublicKey.from_public_bytes(identity.public_key)
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), identity.public_key)


def _device_unit(custody: CustodyKind) -> str:
    return f"{EMULATED_LABEL}: {custody.value} custody"


def _check_region(region: str) -> str:
    if not isinstance(region, str) or not _REGION.fullmatch(region):
        raise InvalidParameter("a region is [a-z0-9][a-z0-9-]{0,62}")
    return region


@dataclass(frozen=True)
class SoftwareVendorCA:
    """A deployment's software-vendor root: certificate and Ed25519 key.

    The key is secret (left out of ``repr`` and equality); :meth:`private_key_bytes`
    hands the raw 32-byte seed to a caller that must keep it (or, at the end of a
    ceremony, destroy it).
    """

    root_certificate: x509.Certificate
    _key: ed25519.Ed25519PrivateKey = field(repr=False, compare=False)

    @classmethod
    def generate(
        cls, deployment: str, *, now: datetime, lifetime: timedelta = DEFAULT_ROOT_LIFETIME
    ) -> SoftwareVendorCA:
        """A fresh root for ``deployment`` (``[A-Za-z0-9][A-Za-z0-9._/-]{0,39}``), valid
        from ``now`` for ``lifetime``."""
        if not isinstance(deployment, str) or not _DEPLOYMENT.fullmatch(deployment):
            raise InvalidParameter("a deployment name is [A-Za-z0-9][A-Za-z0-9._/-]{0,39}")
        now = check_time(now)
        key = ed25519.Ed25519PrivateKey.generate()
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, VENDOR_ORGANIZATION),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, EMULATED_LABEL),
                x509.NameAttribute(NameOID.COMMON_NAME, f"software vendor root {deployment}"),
            ]
        )
        public = key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, None)
        )
        return cls(cert, key)

    @classmethod
    def from_private_key(cls, root_certificate_der: bytes, seed: bytes) -> SoftwareVendorCA:
        """Rebuild a CA from its certificate and 32-byte key seed; InvalidParameter if
        the key is not the certificate's."""
        cert = x509.load_der_x509_certificate(root_certificate_der)
        if len(seed) != 32:
            raise InvalidParameter("a software vendor key seed is 32 bytes")
        key = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
        mine = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        theirs = cert.public_key()
        if not (
            isinstance(theirs, ed25519.Ed25519PublicKey)
            and theirs.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            == mine
        ):
            raise InvalidParameter("the key seed does not belong to the root certificate")
        return cls(cert, key)

    def private_key_bytes(self) -> bytes:
        """The 32-byte Ed25519 seed of the root key (secret)."""
        return self._key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    def root_der(self) -> bytes:
        return der(self.root_certificate)

    def issue_device_certificate(
        self,
        identity: NodeIdentity,
        *,
        region: str,
        custody: CustodyKind,
        now: datetime,
        lifetime: timedelta = DEFAULT_DEVICE_LIFETIME,
    ) -> x509.Certificate:
        """Certify ``identity`` as a node of this deployment: ``CN=<node id hex>,
        OU=EMULATED HARDWARE: <custody> custody, L=<region>``, valid from ``now`` for
        ``lifetime`` (never past the root's own end)."""
        now = check_time(now)
        region = _check_region(region)
        custody = CustodyKind(custody)
        not_after = min(now + lifetime, self.root_certificate.not_valid_after_utc)
        public = _public_key_of(identity)
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, VENDOR_ORGANIZATION),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, _device_unit(custody)),
                x509.NameAttribute(NameOID.LOCALITY_NAME, region),
                x509.NameAttribute(NameOID.COMMON_NAME, identity.node_id.hex()),
            ]
        )
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.root_certificate.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, None)
        )


# -- the statement and the document -----------------------------------------------------


@dataclass(frozen=True)
class AttestationStatement:
    """What a node states about itself (the signed part of the document)."""

    identity: NodeIdentity
    region: str
    custody: CustodyKind
    key_properties: StatementKeyProperties
    measurement: bytes
    issued_at: int
    nonce: bytes

    def __post_init__(self) -> None:
        _check_region(self.region)
        CustodyKind(self.custody)
        if len(self.measurement) != MEASUREMENT_LEN:
            raise InvalidParameter("a measurement is a 32-byte SHA-256 digest")
        if not NONCE_MIN_LEN <= len(self.nonce) <= NONCE_MAX_LEN:
            raise InvalidParameter(f"a nonce is {NONCE_MIN_LEN}..{NONCE_MAX_LEN} bytes")
        if not 0 <= self.issued_at <= MAX_TIME:
            raise InvalidParameter("issued_at is out of range")
        if (self.custody is CustodyKind.SOFTWARE) != (
            self.key_properties.source is KeySource.SOFTWARE_EMULATED
        ):
            raise InvalidParameter("software custody goes with software-emulated properties")

    def to_json(self) -> dict[str, object]:
        return {
            "custody": self.custody.value,
            "emulated": True,
            "identity_key": {
                "algorithm": _ALGORITHM_NAMES[self.identity.algorithm],
                "public_key": self.identity.public_key.hex(),
            },
            "issued_at": self.issued_at,
            "key_properties": self.key_properties.to_json(),
            "measurement": self.measurement.hex(),
            "node_id": self.identity.node_id.hex(),
            "nonce": self.nonce.hex(),
            "region": self.region,
            "version": VERSION,
        }

    def signed_bytes(self) -> bytes:
        """The exact bytes the identity key signs: the statement's canonical JSON."""
        return canonical(self.to_json())

    @classmethod
    def from_json(cls, obj: object) -> AttestationStatement:
        fields = keys_field(
            obj,
            frozenset(
                {
                    "custody",
                    "emulated",
                    "identity_key",
                    "issued_at",
                    "key_properties",
                    "measurement",
                    "node_id",
                    "nonce",
                    "region",
                    "version",
                }
            ),
            "statement",
        )
        if int_field(fields["version"], "statement version", 0, 2**31) != VERSION:
            raise AttestationFormatError("unknown statement version")
        if fields["emulated"] is not True:
            raise AttestationFormatError("a software-vendor statement must say emulated")
        key = keys_field(fields["identity_key"], frozenset({"algorithm", "public_key"}), "key")
        algorithm = _ALGORITHMS.get(str_field(key["algorithm"], "key algorithm"))
        if algorithm is None:
            raise AttestationFormatError("unknown identity key algorithm")
        try:
            identity = NodeIdentity(algorithm, hex_field(key["public_key"], "public key", 32, 65))
            custody = CustodyKind(str_field(fields["custody"], "custody"))
        except (InvalidParameter, ValueError):
            raise AttestationFormatError("invalid identity key or custody") from None
        node_id = hex_field(fields["node_id"], "node_id", 32, 32)
        if node_id != identity.node_id:
            raise AttestationFormatError("node_id is not the identity key's fingerprint")
        try:
            return cls(
                identity=identity,
                region=str_field(fields["region"], "region"),
                custody=custody,
                key_properties=StatementKeyProperties.from_json(fields["key_properties"]),
                measurement=hex_field(fields["measurement"], "measurement", 32, 32),
                issued_at=int_field(fields["issued_at"], "issued_at", 0, MAX_TIME),
                nonce=hex_field(fields["nonce"], "nonce", NONCE_MIN_LEN, NONCE_MAX_LEN),
            )
        except InvalidParameter:
            raise AttestationFormatError("statement fields are inconsistent") from None


@dataclass(frozen=True)
class SoftwareAttestation:
    """A parsed software-vendor attestation document (not yet verified)."""

    statement: AttestationStatement
    device_certificate: bytes
    signature: bytes

    def to_bytes(self) -> bytes:
        return canonical(
            {
                "device_certificate": base64.b64encode(self.device_certificate).decode("ascii"),
                "format": FORMAT,
                "signature": base64.b64encode(self.signature).decode("ascii"),
                "statement": self.statement.to_json(),
                "version": VERSION,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> SoftwareAttestation:
        """Strict parse; raises only AttestationFormatError on bad input."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidParameter("an attestation document is bytes")
        data = bytes(data)
        if not 1 <= len(data) <= MAX_DOCUMENT_LEN:
            raise AttestationFormatError("attestation document has an invalid length")
        fields = keys_field(
            parse_canonical(data),
            frozenset({"device_certificate", "format", "signature", "statement", "version"}),
            "attestation document",
        )
        if fields["format"] != FORMAT:
            raise AttestationFormatError("attestation document is of another format")
        if int_field(fields["version"], "version", 0, 2**31) != VERSION:
            raise AttestationFormatError("unknown attestation document version")
        signature = b64_field(fields["signature"], "signature")
        if len(signature) != 64:
            raise AttestationFormatError("signature must be 64 bytes")
        certificate = b64_field(fields["device_certificate"], "device certificate")
        if not 1 <= len(certificate) <= 4096:
            raise AttestationFormatError("device certificate has an invalid length")
        return cls(AttestationStatement.from_json(fields["statement"]), certificate, signature)


def issue_attestation(
    custody: KeyCustody,
    *,
    device_certificate: x509.Certificate,
    region: str,
    custody_kind: CustodyKind,
    key_properties: StatementKeyProperties,
    measurement: bytes,
    issued_at: datetime,
    nonce: bytes,
) -> bytes:
    """Make and sign this node's attestation document (runs inside the node: the
    identity key signs through ``custody``). InvalidParameter if the device certificate
    is not for this custody's identity key, names another region or custody, or a field
    is out of range."""
    identity = custody.identity
    if _spki(device_certificate) != identity.spki_der():
        raise InvalidParameter("the device certificate is not for this node's identity key")
    subject = device_certificate.subject
    if _attribute(subject, NameOID.LOCALITY_NAME) != region or _attribute(
        subject, NameOID.ORGANIZATIONAL_UNIT_NAME
    ) != _device_unit(CustodyKind(custody_kind)):
        raise InvalidParameter("the device certificate names another region or custody")
    statement = AttestationStatement(
        identity=identity,
        region=region,
        custody=CustodyKind(custody_kind),
        key_properties=key_properties,
        measurement=bytes(measurement),
        issued_at=_epoch_seconds(issued_at),
        nonce=bytes(nonce),
    )
    signature = custody.sign(SIGNING_PURPOSE, statement.signed_bytes())
    return SoftwareAttestation(statement, der(device_certificate), signature).to_bytes()


def _spki(cert: x509.Certificate) -> bytes:
    """DER SubjectPublicKeyInfo of a certificate's key."""
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _attribute(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    values = name.get_attributes_for_oid(oid)
    if len(values) != 1 or not isinstance(values[0].value, str):
        return None
    return values[0].value


def _is_vendor_root(cert: x509.Certificate) -> bool:
    return (
        _attribute(cert.subject, NameOID.ORGANIZATION_NAME) == VENDOR_ORGANIZATION
        and _attribute(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME) == EMULATED_LABEL
    )


def _chain_to_root(
    device: x509.Certificate, anchors: Sequence[x509.Certificate]
) -> list[x509.Certificate]:
    """``[device, root]`` for the trusted root that issued ``device``; ChainError if
    none did."""
    failure = ChainError("device certificate is not issued by a trusted root")
    for anchor in anchors:
        if anchor.subject != device.issuer:
            continue
        try:
            verify_chain([device, anchor], anchors)
        except ChainError as exc:
            failure = exc
            continue
        return [device, anchor]
    raise failure


class SoftwareVendorVerifier(AttestationVerifier):
    """Verifier for software-vendor documents (module docstring). ``trust_anchors``
    are the deployment's software-vendor roots (required: there is no pinned root)."""

    format = FORMAT

    def verify(
        self,
        document: bytes,
        *,
        trust_anchors: Sequence[x509.Certificate] | None,
        at_time: datetime,
        expected: Expectations,
    ) -> AttestationResult:
        at_time = check_time(at_time)
        if not trust_anchors:
            raise InvalidParameter("software-vendor documents need the deployment's root")
        # 1. parse
        doc = SoftwareAttestation.from_bytes(document)
        statement = doc.statement
        device = load_der_certificate(doc.device_certificate, "the device certificate")
        # 2. chain to a trusted software-vendor root, labels on both
        chain = _chain_to_root(device, trust_anchors)
        if not _is_vendor_root(chain[-1]):
            raise ChainError("the trusted root is not a software-vendor root")
        # 3. time
        check_validity(chain, at_time)
        issued_at = _from_epoch(statement.issued_at)
        if not device.not_valid_before_utc <= issued_at <= device.not_valid_after_utc:
            raise ExpiredError("statement time is outside the device certificate's window")
        # 4. the device certificate certifies exactly this node
        if not (
            _spki(device) == statement.identity.spki_der()
            and _attribute(device.subject, NameOID.COMMON_NAME) == statement.identity.node_id.hex()
            and _attribute(device.subject, NameOID.ORGANIZATION_NAME) == VENDOR_ORGANIZATION
            and _attribute(device.subject, NameOID.ORGANIZATIONAL_UNIT_NAME)
            == _device_unit(statement.custody)
            and _attribute(device.subject, NameOID.LOCALITY_NAME) == statement.region
        ):
            raise ChainError("device certificate does not certify this node, custody or region")
        # 5. the node's signature
        try:
            verify_signature(
                statement.identity, SIGNING_PURPOSE, statement.signed_bytes(), doc.signature
            )
        except VerificationError:
            raise SignatureError("statement signature does not verify") from None
        # 6. expectations
        properties = statement.key_properties
        warnings = [EMULATED_WARNING]
        if statement.custody is CustodyKind.SOFTWARE:
            warnings.append(
                "software custody: the identity key lives in process memory and in the "
                "node's NVRAM file on the host"
            )
        else:
            warnings.append(
                "SoftHSM2 is a software token: its attributes are honest about the key's "
                "handling, but its key files are readable by whoever owns the machine"
            )
        warnings.append("the measurement is self-reported by the node")
        result = AttestationResult(
            format=FORMAT,
            emulated=True,
            device_identity=(
                f"{statement.identity.node_id.hex()} ({statement.custody.value} custody, "
                f"region {statement.region}, EMULATED)"
            ),
            chain=tuple(CertificateSummary.of(c) for c in chain),
            issued_at=issued_at,
            attested_public_key=statement.identity.public_key,
            key_properties=KeyProperties(
                generated_inside=properties.generated_inside,
                non_extractable=properties.non_extractable,
                basis=properties.source.value,
            ),
            measurement=statement.measurement,
            measurements={"sha256": statement.measurement},
            nonce=statement.nonce,
            warnings=tuple(warnings),
        )
        return apply_expectations(result, expected, at_time)
