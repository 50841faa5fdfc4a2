"""Test helpers: the real Nitro samples, and Nitro-shaped documents signed by a CA of our
own (an attacker's, or a test's), so that checks after the signature can be exercised
and so that a forgery that is perfect except for its root can be shown refused."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

DATA = Path(__file__).parent / "data"
PRODUCTION = DATA / "blocky_nitro_attestation.cbor"
DEBUG = DATA / "blocky_nitro_attestation_debug.cbor"
#: Facts from data/README.md.
PRODUCTION_TIME = datetime(2024, 9, 7, 14, 37, 39, 545000, tzinfo=UTC)
DEBUG_TIME = datetime(2024, 9, 7, 14, 38, 6, 508000, tzinfo=UTC)
PROTECTED_ES384 = cbor2.dumps({1: -35})


def production() -> bytes:
    return PRODUCTION.read_bytes()


def debug() -> bytes:
    return DEBUG.read_bytes()


def cose_parts(document: bytes) -> list[Any]:
    """The four COSE_Sign1 elements of an (untagged) document."""
    parts = cbor2.loads(document)
    assert isinstance(parts, list)
    return parts


def payload_of(document: bytes) -> dict[str, Any]:
    payload = cbor2.loads(cose_parts(document)[2])
    assert isinstance(payload, dict)
    return payload


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _key_usage(*, sign: bool, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass
class ForgedCA:
    """A P-384 root and leaf of our own, named like AWS's."""

    root: x509.Certificate
    leaf: x509.Certificate
    leaf_key: ec.EllipticCurvePrivateKey

    @classmethod
    def make(
        cls,
        at: datetime,
        *,
        root_name: x509.Name | None = None,
        leaf_window: timedelta = timedelta(hours=3),
        leaf_curve: ec.EllipticCurve | None = None,
    ) -> ForgedCA:
        root_key = ec.generate_private_key(ec.SECP384R1())
        leaf_key = ec.generate_private_key(leaf_curve or ec.SECP384R1())
        name = root_name or x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Amazon"),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "AWS"),
                x509.NameAttribute(NameOID.COMMON_NAME, "aws.nitro-enclaves"),
            ]
        )
        root = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(root_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(datetime(2019, 10, 28, tzinfo=UTC))
            .not_valid_after(datetime(2049, 10, 28, tzinfo=UTC))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_key_usage(sign=True, cert_sign=True), critical=True)
            .sign(root_key, hashes.SHA384())
        )
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "i-forged.aws")]))
            .issuer_name(name)
            .public_key(leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(at - timedelta(seconds=3))
            .not_valid_after(at - timedelta(seconds=3) + leaf_window)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(sign=True, cert_sign=False), critical=False)
            .sign(root_key, hashes.SHA384())
        )
        return cls(root, leaf, leaf_key)

    def sign_document(
        self, payload: dict[str, Any], *, protected: bytes = PROTECTED_ES384
    ) -> bytes:
        """A COSE_Sign1 over ``payload`` with this CA's certificate and cabundle put in
        (unless the payload already overrides them)."""
        fields = dict(payload)
        fields.setdefault("certificate", _der(self.leaf))
        fields.setdefault("cabundle", [_der(self.root)])
        body = cbor2.dumps(fields)
        to_sign = cbor2.dumps(["Signature1", protected, b"", body])
        r, s = decode_dss_signature(self.leaf_key.sign(to_sign, ec.ECDSA(hashes.SHA384())))
        signature = r.to_bytes(48, "big") + s.to_bytes(48, "big")
        return cbor2.dumps([protected, {}, body, signature])


def forged_payload(at: datetime, **changes: Any) -> dict[str, Any]:
    """A payload shaped like the production sample's, dated ``at`` (certificate and
    cabundle left for :meth:`ForgedCA.sign_document` to fill in)."""
    payload = payload_of(production())
    del payload["certificate"], payload["cabundle"]
    payload["timestamp"] = int(at.timestamp() * 1000)
    payload.update(changes)
    return payload
