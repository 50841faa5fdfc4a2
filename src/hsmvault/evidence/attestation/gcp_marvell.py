"""Google Cloud HSM (Marvell LiquidSecurity) key attestations.

Cloud KMS serves, for an HSM-protected key version, an **attestation** (gzip-compressed;
the caller gunzips it) made and RSA-signed by the Marvell HSM partition, and the
**certificate chains** of that partition (four PEM certificates: the manufacturer's
card and partition certificates, and Google's owner certificates for the same two
keys). The verification steps are those of Google's published
``kms/attestations/verify_attestation_chains.py`` (GoogleCloudPlatform/
python-docs-samples); the attestation layout is Marvell's key-attribute response as
documented by PeculiarVentures/attestation (``packages/marvell``).

Document (this plugin's envelope for the two files Cloud KMS gives) — canonical JSON
(:mod:`._canonical`)::

    {"attestation": "<base64 of the gunzipped attestation>",
     "certificate_chains": "<the PEM text, as served>",
     "format": "gcp-cloud-hsm-marvell"}

Attestation layout (big-endian)::

    response header: response code u32 (= 0) | flags u32 (GET_ATTR|GET_ATTEST = 3)
                     | total size u32 (= the whole length) | buffer size u32
    16 bytes (object handles, not interpreted)
    buffer:          object version u16 | flags u16 | offset of key 1 u16
                     | offset of key 2 u16 (0 = none)
                     per key, at its offset: handle u32 | attribute count u32
                     | object size u32 | count x (tag u32 | length u32 | value)
    signature:       256 bytes, RSA PKCS#1 v1.5 / SHA-256 over everything before it

:class:`MarvellVerifier` checks, in order:

1. **parse** (:class:`AttestationFormatError`): the envelope; exactly four PEM
   certificates; the layout above with every length consistent, each key's attributes
   ending exactly where the next part begins, no tag twice, no trailing bytes;
2. **chains** (:class:`ChainError`): manufacturer root → card → partition, and owner
   root → card and owner root → partition, where the owner card's and partition's
   keys equal the manufacturer's; each link a subject/issuer match and a signature over
   the TBS certificate; no certificate left over. The roots default to the Marvell
   (Cavium) LiquidSecurity root and Google's Hawksbill Root v1 prod shipped in
   ``roots/`` (fingerprints checked at load); given ``trust_anchors`` are matched to the
   two roles by subject name. The manufacturer certificates are X.509 v1 without
   extensions, so no CA or key-usage rules apply (as in Google's script);
3. **time** (:class:`ExpiredError`): the six certificates are valid at ``at_time``.
   The attestation has no timestamp; ``issued_at`` is reported as ``at_time`` and
   ``Expectations.max_age`` is refused (PolicyError);
4. **signature** (:class:`SignatureError`): under *both* partition keys;
5. **key properties** from the private-key object's attributes (``OBJ_ATTR_LOCAL``,
   ``EXTRACTABLE``, ``NEVER_EXTRACTABLE``, ``SENSITIVE``, ``ALWAYS_SENSITIVE``); the
   attested public key is the public object's key value (``OBJ_ATTR_MODULUS``: an RSA
   modulus, or an uncompressed EC point); then the common expectations. Marvell
   attests keys, not code: there is no measurement.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from hsmvault.errors import InvalidParameter
from hsmvault.evidence.attestation._canonical import (
    b64_field,
    canonical,
    keys_field,
    parse_canonical,
    str_field,
)
from hsmvault.evidence.attestation._x509 import check_validity, der, load_der_certificate
from hsmvault.evidence.attestation.base import (
    AttestationFormatError,
    AttestationResult,
    AttestationVerifier,
    CertificateSummary,
    ChainError,
    Expectations,
    KeyProperties,
    PolicyError,
    SignatureError,
    apply_expectations,
    check_time,
)

__all__ = [
    "FORMAT",
    "GOOGLE_OWNER_ROOT_SHA256",
    "MARVELL_ROOT_SHA256",
    "MarvellAttestation",
    "MarvellKeyObject",
    "MarvellVerifier",
    "bundle_document",
    "pinned_roots",
]

FORMAT = "gcp-cloud-hsm-marvell"
#: SHA-256 of the DER of the manufacturer root (CN=localca.liquidsecurity.cavium.com,
#: valid 2015-11-19 to 2025-11-16).
MARVELL_ROOT_SHA256 = "975757f0d76640e03d14760f8fc9e3a55826fa7807b2c392f7801a95bd69cc28"
#: SHA-256 of the DER of Google's owner root (CN=Hawksbill Root v1 prod, valid
#: 2017-07-01 to 2030-01-01).
GOOGLE_OWNER_ROOT_SHA256 = "46b5fd351d56a0721ca0afcd1731c0f7b74e3941eb818bfd0ec36e29df0de095"
_ROOT_FILES = {
    "marvell_cavium_liquidsecurity_root.pem": MARVELL_ROOT_SHA256,
    "google_hawksbill_root_v1_prod.pem": GOOGLE_OWNER_ROOT_SHA256,
}
SIGNATURE_LEN = 256
MAX_ATTESTATION_LEN = 16384
MAX_CHAINS_LEN = 32768
_RESPONSE = struct.Struct(">IIII")
_HANDLES_LEN = 16
_INFO = struct.Struct(">HHHH")
_OBJECT = struct.Struct(">III")
_TLV = struct.Struct(">II")
_FLAGS_ATTR_AND_ATTEST = 0x3
_CKO_PUBLIC_KEY = 2
_CKO_PRIVATE_KEY = 3
_PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"

# Marvell attribute tags (PKCS#11-like numbering).
ATTR_CLASS = 0x0000
ATTR_KEY_TYPE = 0x0100
ATTR_SENSITIVE = 0x0103
ATTR_MODULUS = 0x0120
ATTR_EXTRACTABLE = 0x0162
ATTR_LOCAL = 0x0163
ATTR_NEVER_EXTRACTABLE = 0x0164
ATTR_ALWAYS_SENSITIVE = 0x0165


@functools.cache
def pinned_roots() -> tuple[x509.Certificate, x509.Certificate]:
    """(manufacturer root, owner root) shipped in ``roots/``; ChainError if a shipped
    file is not the pinned certificate."""
    loaded = []
    for name, fingerprint in _ROOT_FILES.items():
        pem = importlib.resources.files(__package__).joinpath("roots", name).read_bytes()
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError:
            raise ChainError(f"shipped root {name} is not a certificate") from None
        if hashlib.sha256(der(cert)).hexdigest() != fingerprint:
            raise ChainError(f"shipped root {name} is not the pinned certificate")
        loaded.append(cert)
    return loaded[0], loaded[1]


def bundle_document(attestation: bytes, certificate_chains_pem: bytes) -> bytes:
    """The document this plugin verifies, from the two files Cloud KMS serves (the
    attestation already gunzipped)."""
    import base64  # noqa: PLC0415 - only the bundling side needs it

    return canonical(
        {
            "attestation": base64.b64encode(attestation).decode("ascii"),
            "certificate_chains": certificate_chains_pem.decode("ascii"),
            "format": FORMAT,
        }
    )


@dataclass(frozen=True)
class MarvellKeyObject:
    """One key object of the attestation: its handle and attributes (tag -> value)."""

    handle: int
    attributes: Mapping[int, bytes]

    def flag(self, tag: int) -> bool:
        """A boolean attribute (one byte, 0 or 1); AttestationFormatError otherwise."""
        value = self.attributes.get(tag)
        if value not in (b"\x00", b"\x01"):
            raise AttestationFormatError(f"key attribute 0x{tag:04x} is not a boolean")
        return value == b"\x01"

    @property
    def object_class(self) -> int:
        value = self.attributes.get(ATTR_CLASS)
        if value is None or len(value) != 1:
            raise AttestationFormatError("key object has no class")
        return value[0]


def _parse_object(buffer: bytes, start: int, end: int) -> MarvellKeyObject:
    if not 0 <= start <= end <= len(buffer) or end - start < _OBJECT.size:
        raise AttestationFormatError("key object lies outside the attestation")
    handle, count, _size = _OBJECT.unpack_from(buffer, start)
    pos = start + _OBJECT.size
    attributes: dict[int, bytes] = {}
    for _ in range(count):
        if pos + _TLV.size > end:
            raise AttestationFormatError("key attributes are truncated")
        tag, length = _TLV.unpack_from(buffer, pos)
        pos += _TLV.size
        if pos + length > end:
            raise AttestationFormatError("key attribute value is truncated")
        if tag in attributes:
            raise AttestationFormatError("key attribute appears twice")
        attributes[tag] = buffer[pos : pos + length]
        pos += length
    if pos != end:
        raise AttestationFormatError("key attributes do not end where the object ends")
    return MarvellKeyObject(handle, attributes)


@dataclass(frozen=True)
class MarvellAttestation:
    """A parsed (not yet verified) Marvell key attestation."""

    signed_data: bytes
    signature: bytes
    keys: tuple[MarvellKeyObject, ...]

    @classmethod
    def from_bytes(cls, data: bytes) -> MarvellAttestation:
        fixed = _RESPONSE.size + _HANDLES_LEN
        if not fixed + _INFO.size + SIGNATURE_LEN <= len(data) <= MAX_ATTESTATION_LEN:
            raise AttestationFormatError("attestation has an invalid length")
        code, flags, total, size = _RESPONSE.unpack_from(data)
        if code != 0:
            raise AttestationFormatError("attestation reports an HSM error")
        if flags != _FLAGS_ATTR_AND_ATTEST:
            raise AttestationFormatError("attestation does not carry signed attributes")
        if total != len(data) or fixed + size + SIGNATURE_LEN != len(data):
            raise AttestationFormatError("attestation sizes are inconsistent")
        buffer = data[fixed : fixed + size]
        _version, _flags, first, second = _INFO.unpack_from(buffer)
        if first != _INFO.size or (second != 0 and not first < second < size):
            raise AttestationFormatError("attestation key offsets are invalid")
        keys = [_parse_object(buffer, first, second or size)]
        if second:
            keys.append(_parse_object(buffer, second, size))
        return cls(data[:-SIGNATURE_LEN], data[-SIGNATURE_LEN:], tuple(keys))

    def key_of_class(self, object_class: int) -> MarvellKeyObject | None:
        found = [k for k in self.keys if k.object_class == object_class]
        if len(found) > 1:
            raise AttestationFormatError("attestation holds two keys of one class")
        return found[0] if found else None


def _parse_document(document: bytes) -> tuple[MarvellAttestation, list[x509.Certificate]]:
    if not isinstance(document, bytes | bytearray | memoryview):
        raise InvalidParameter("an attestation document is bytes")
    document = bytes(document)
    if not 1 <= len(document) <= 2 * (MAX_ATTESTATION_LEN + MAX_CHAINS_LEN):
        raise AttestationFormatError("attestation document has an invalid length")
    fields = keys_field(
        parse_canonical(document),
        frozenset({"attestation", "certificate_chains", "format"}),
        "attestation document",
    )
    if fields["format"] != FORMAT:
        raise AttestationFormatError("attestation document is of another format")
    attestation = MarvellAttestation.from_bytes(b64_field(fields["attestation"], "attestation"))
    pem = str_field(fields["certificate_chains"], "certificate chains").encode("ascii")
    if pem.count(_PEM_BEGIN) != 4:
        raise AttestationFormatError("certificate chains must hold exactly four certificates")
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise AttestationFormatError("certificate chains are not PEM certificates") from None
    if len(certs) != 4:
        raise AttestationFormatError("certificate chains must hold exactly four certificates")
    return attestation, [load_der_certificate(der(c), "a chain certificate") for c in certs]


def _issued_by(issuer: x509.Certificate, cert: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _take_issued(
    issuer: x509.Certificate, pool: list[x509.Certificate], same_key_as: x509.Certificate | None
) -> x509.Certificate:
    for cert in pool:
        if _issued_by(issuer, cert) and (same_key_as is None or _spki(cert) == _spki(same_key_as)):
            pool.remove(cert)
            return cert
    raise ChainError("certificate chains do not lead from the roots to one HSM partition")


def _roles(
    anchors: Sequence[x509.Certificate] | None,
) -> tuple[x509.Certificate, x509.Certificate]:
    manufacturer, owner = pinned_roots()
    if anchors is None:
        return manufacturer, owner
    by_manufacturer = [a for a in anchors if a.subject == manufacturer.subject]
    by_owner = [a for a in anchors if a.subject == owner.subject]
    if len(by_manufacturer) != 1 or len(by_owner) != 1:
        raise ChainError("trust anchors must hold one manufacturer and one owner root")
    return by_manufacturer[0], by_owner[0]


class MarvellVerifier(AttestationVerifier):
    """Verifier for Google Cloud HSM (Marvell) key attestations (module docstring)."""

    format = FORMAT

    def verify(
        self,
        document: bytes,
        *,
        trust_anchors: Sequence[x509.Certificate] | None = None,
        at_time: datetime,
        expected: Expectations,
    ) -> AttestationResult:
        at_time = check_time(at_time)
        manufacturer_root, owner_root = _roles(trust_anchors)
        # 1. parse
        attestation, certs = _parse_document(document)
        # 2. chains
        for root in (manufacturer_root, owner_root):
            if not _issued_by(root, root):
                raise ChainError("a trusted root is not self-signed")
        pool = list(certs)
        card = _take_issued(manufacturer_root, pool, None)
        partition = _take_issued(card, pool, None)
        owner_card = _take_issued(owner_root, pool, card)
        owner_partition = _take_issued(owner_root, pool, partition)
        if pool:
            raise ChainError("certificate chains hold a certificate that belongs to no chain")
        # 3. time
        check_validity([partition, card, manufacturer_root], at_time)
        check_validity([owner_partition, owner_card, owner_root], at_time)
        if expected.max_age is not None:
            raise PolicyError("Marvell attestations carry no time: max_age cannot be checked")
        # 4. signature under both partition keys
        for signer in (partition, owner_partition):
            key = signer.public_key()
            if not isinstance(key, rsa.RSAPublicKey):
                raise ChainError("a partition certificate key is not RSA")
            try:
                key.verify(
                    attestation.signature,
                    attestation.signed_data,
                    padding.PKCS1v15(),
                    hashes.SHA256(),
                )
            except InvalidSignature:
                raise SignatureError("attestation signature does not verify") from None
        # 5. key properties and expectations
        private = attestation.key_of_class(_CKO_PRIVATE_KEY)
        public = attestation.key_of_class(_CKO_PUBLIC_KEY)
        if private is None:
            properties = KeyProperties(False, False, "marvell-attributes: no private key")
        else:
            properties = KeyProperties(
                generated_inside=private.flag(ATTR_LOCAL),
                non_extractable=(
                    not private.flag(ATTR_EXTRACTABLE)
                    and private.flag(ATTR_NEVER_EXTRACTABLE)
                    and private.flag(ATTR_SENSITIVE)
                    and private.flag(ATTR_ALWAYS_SENSITIVE)
                ),
                basis="marvell-attributes",
            )
        subject = partition.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        result = AttestationResult(
            format=FORMAT,
            emulated=False,
            device_identity=str(subject[0].value) if subject else "unnamed HSM partition",
            chain=tuple(
                CertificateSummary.of(c)
                for c in (
                    partition,
                    card,
                    manufacturer_root,
                    owner_partition,
                    owner_card,
                    owner_root,
                )
            ),
            issued_at=at_time,
            attested_public_key=None if public is None else public.attributes.get(ATTR_MODULUS),
            key_properties=properties,
            measurement=None,
            measurements={},
            warnings=(
                "Marvell attests key attributes, not code: there is no measurement",
                "the attestation carries no time or nonce: freshness comes from elsewhere",
            ),
        )
        return apply_expectations(result, expected, at_time)
