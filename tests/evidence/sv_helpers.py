"""Test helpers for the software vendor: a deployment CA, nodes, and their documents."""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from hsmvault.evidence.attestation.software_vendor import (
    CustodyKind,
    KeySource,
    SoftwareVendorCA,
    StatementKeyProperties,
    issue_attestation,
    software_key_properties,
)
from hsmvault.hsm.custody.base import KeyCustody
from hsmvault.hsm.custody.software import SoftwareCustody
from hsmvault.hsm.nvram import MemoryNvram, NodeIdentity, SignatureAlgorithm

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
MEASUREMENT = bytes(range(32))
NONCE = b"ceremony-nonce-0123456789"


class P256Custody(KeyCustody):
    """A test double with a P-256 identity key (as a token without CKM_EDDSA has):
    signs ``r || s`` over SHA-256, like the PKCS#11 backend. No sealing."""

    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        public = self._key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        super().__init__(NodeIdentity(SignatureAlgorithm.ECDSA_P256_SHA256, public))

    def _random(self, n: int) -> bytes:
        return os.urandom(n)

    def _aead_encrypt(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        raise NotImplementedError

    def _aead_decrypt(self, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        raise NotImplementedError

    def _sign_raw(self, data: bytes) -> bytes:
        r, s = decode_dss_signature(self._key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def _release(self) -> None:
        pass


def token_properties() -> StatementKeyProperties:
    """What a token reports for a key it generated and protects."""
    return StatementKeyProperties(
        source=KeySource.PKCS11_ATTRIBUTES,
        local=True,
        extractable=False,
        never_extractable=True,
        sensitive=True,
        always_sensitive=True,
    )


@dataclass
class Node:
    custody: KeyCustody
    kind: CustodyKind
    region: str
    certificate: x509.Certificate
    properties: StatementKeyProperties = field(default_factory=software_key_properties)

    def attest(
        self,
        *,
        at: datetime = T0,
        measurement: bytes = MEASUREMENT,
        nonce: bytes = NONCE,
    ) -> bytes:
        return issue_attestation(
            self.custody,
            device_certificate=self.certificate,
            region=self.region,
            custody_kind=self.kind,
            key_properties=self.properties,
            measurement=measurement,
            issued_at=at,
            nonce=nonce,
        )


def software_node(ca: SoftwareVendorCA, region: str = "eu-west") -> Node:
    custody = SoftwareCustody.open(MemoryNvram(), create=True)
    cert = ca.issue_device_certificate(
        custody.identity, region=region, custody=CustodyKind.SOFTWARE, now=T0
    )
    return Node(custody, CustodyKind.SOFTWARE, region, cert)


def p256_node(
    ca: SoftwareVendorCA, region: str = "us-east", lifetime: timedelta = timedelta(days=30)
) -> Node:
    custody = P256Custody()
    cert = ca.issue_device_certificate(
        custody.identity, region=region, custody=CustodyKind.SOFTHSM2, now=T0, lifetime=lifetime
    )
    return Node(custody, CustodyKind.SOFTHSM2, region, cert, token_properties())


GOLDEN_PATH = Path(__file__).parent / "data" / "software_vendor_golden.json"


def write_golden() -> None:
    """Regenerate ``data/software_vendor_golden.json`` (only when the format changes on
    purpose): ``python -c "from tests.evidence.sv_helpers import write_golden; write_golden()"``.
    """
    ca = SoftwareVendorCA.generate("golden", now=T0 - timedelta(days=1))
    node = p256_node(ca)
    record = {
        "root": base64.b64encode(ca.root_der()).decode("ascii"),
        "document": node.attest().decode("ascii"),
        "public_key": node.custody.identity_public_key().hex(),
    }
    GOLDEN_PATH.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="ascii")
