"""Google Cloud HSM (Marvell) key attestations, verified on the real sample in ``data/``
(see its README) against the pinned Marvell and Google roots, and attacked."""

from __future__ import annotations

import base64
import json
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given
from hypothesis import strategies as st

from hsmvault.evidence.attestation import (
    AttestationError,
    AttestationFormatError,
    ChainError,
    Expectations,
    ExpiredError,
    MeasurementMismatch,
    PolicyError,
    SignatureError,
    verifier_for,
)
from hsmvault.evidence.attestation.gcp_marvell import (
    GOOGLE_OWNER_ROOT_SHA256,
    MARVELL_ROOT_SHA256,
    MarvellAttestation,
    MarvellVerifier,
    bundle_document,
    pinned_roots,
)

DATA = Path(__file__).parent / "data"
ATTESTATION = (DATA / "marvell_gcp_attestation.dat").read_bytes()
CHAINS = (DATA / "marvell_gcp_cert_chains.pem").read_bytes()
AT = datetime(2024, 8, 16, tzinfo=UTC)
VERIFIER = MarvellVerifier()
ANY = Expectations()


def verify(
    attestation: bytes = ATTESTATION,
    chains: bytes = CHAINS,
    *,
    at: datetime = AT,
    expected: Expectations = ANY,
    anchors: list[x509.Certificate] | None = None,
) -> Any:
    return VERIFIER.verify(
        bundle_document(attestation, chains), trust_anchors=anchors, at_time=at, expected=expected
    )


def pem_certs() -> list[bytes]:
    return [
        b"-----BEGIN CERTIFICATE-----" + part
        for part in CHAINS.split(b"-----BEGIN CERTIFICATE-----")[1:]
    ]


def test_sample_verifies_with_its_key_attributes() -> None:
    result = verify()
    assert result.format == "gcp-cloud-hsm-marvell"
    assert result.emulated is False
    assert result.device_identity == "HSM:5.3G1953-ICM001225:PARTN:1, for FIPS mode"
    assert result.key_properties.generated_inside is True
    assert result.key_properties.non_extractable is True
    assert result.attested_public_key is not None
    assert len(result.attested_public_key) == 65
    assert result.attested_public_key[0] == 0x04  # an uncompressed EC point
    assert result.measurement is None
    assert len(result.chain) == 6
    assert result.chain[2].sha256 == MARVELL_ROOT_SHA256
    assert result.chain[5].sha256 == GOOGLE_OWNER_ROOT_SHA256


def test_registry_returns_the_marvell_verifier() -> None:
    assert isinstance(verifier_for("gcp-cloud-hsm-marvell"), MarvellVerifier)


def test_certificate_order_in_the_pem_does_not_matter() -> None:
    assert verify(chains=b"".join(reversed(pem_certs())))


def test_parsed_objects_are_a_public_and_a_private_key() -> None:
    parsed = MarvellAttestation.from_bytes(ATTESTATION)
    assert [k.object_class for k in parsed.keys] == [2, 3]
    assert len(parsed.signature) == 256
    assert len(parsed.signed_data) == 1856


def test_pinned_roots_are_the_published_ones() -> None:
    manufacturer, owner = pinned_roots()
    assert manufacturer.subject.rfc4514_string().startswith("CN=localca.liquidsecurity.cavium.com")
    assert owner.subject.rfc4514_string().startswith("CN=Hawksbill Root v1 prod")


# -- refusals ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "at",
    [
        datetime(2026, 1, 1, tzinfo=UTC),  # the manufacturer root expired 2025-11-16
        datetime(2024, 4, 15, 18, 0, tzinfo=UTC),  # before the partition certificates
    ],
)
def test_time_outside_the_certificate_windows_refused(at: datetime) -> None:
    with pytest.raises(ExpiredError):
        verify(at=at)


def test_every_third_flipped_attestation_byte_refused() -> None:
    for position in range(0, len(ATTESTATION), 3):
        changed = bytearray(ATTESTATION)
        changed[position] ^= 0x01
        with pytest.raises(AttestationError):
            verify(bytes(changed))


def test_flipped_signature_byte_refused() -> None:
    changed = bytearray(ATTESTATION)
    changed[-1] ^= 0x01
    with pytest.raises(SignatureError):
        verify(bytes(changed))


def test_wrong_manufacturer_root_refused() -> None:
    manufacturer, owner = pinned_roots()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    impostor = (
        x509.CertificateBuilder()
        .subject_name(manufacturer.subject)
        .issuer_name(manufacturer.subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(manufacturer.not_valid_before_utc)
        .not_valid_after(manufacturer.not_valid_after_utc)
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(ChainError):
        verify(anchors=[impostor, owner])


def test_anchors_without_both_roles_refused() -> None:
    manufacturer, _ = pinned_roots()
    with pytest.raises(ChainError, match="one manufacturer and one owner"):
        verify(anchors=[manufacturer])


def test_missing_or_extra_certificate_refused() -> None:
    certs = pem_certs()
    for chains in (b"".join(certs[:3]), b"".join(certs) + certs[0]):
        with pytest.raises(AttestationFormatError):
            verify(chains=chains)


def test_owner_certificate_replaced_by_the_manufacturer_one_refused() -> None:
    certs = pem_certs()
    # certs: manufacturer partition, manufacturer card, owner partition, owner card
    chains = certs[0] + certs[1] + certs[0] + certs[3]
    with pytest.raises(ChainError):
        verify(chains=chains)


def test_max_age_cannot_be_checked() -> None:
    with pytest.raises(PolicyError, match="no time"):
        verify(expected=Expectations(max_age=timedelta(days=1)))


def test_expected_measurement_or_nonce_cannot_match() -> None:
    with pytest.raises(MeasurementMismatch):
        verify(expected=Expectations(measurement=bytes(32)))
    with pytest.raises(PolicyError):
        verify(expected=Expectations(nonce=bytes(16)))


def test_other_public_key_refused() -> None:
    with pytest.raises(PolicyError):
        verify(expected=Expectations(public_key=b"\x04" + bytes(64)))
    assert verify(expected=Expectations(public_key=verify().attested_public_key))


# -- strict parsing ----------------------------------------------------------------------


def _patched(offset: int, fmt: str, value: int) -> bytes:
    changed = bytearray(ATTESTATION)
    struct.pack_into(fmt, changed, offset, value)
    return bytes(changed)


@pytest.mark.parametrize(
    "data",
    [
        _patched(0, ">I", 1),  # HSM error code
        _patched(4, ">I", 1),  # attributes without the signature flag
        _patched(8, ">I", 2111),  # total size wrong
        _patched(12, ">I", 1823),  # buffer size wrong
        _patched(32 + 4, ">H", 9),  # first key offset wrong
        _patched(32 + 6, ">H", 5000),  # second key offset outside
        _patched(32 + 8 + 4, ">I", 36),  # one attribute too many
        ATTESTATION[:-1],
        ATTESTATION + b"\x00",
        ATTESTATION[:100],
    ],
    ids=lambda d: str(len(d)),
)
def test_malformed_attestation_refused(data: bytes) -> None:
    with pytest.raises(AttestationFormatError):
        MarvellAttestation.from_bytes(data)


def test_envelope_must_be_canonical_and_complete() -> None:
    document = json.loads(bundle_document(ATTESTATION, CHAINS))
    for changed in (
        {**document, "format": "aws-nitro-enclaves"},
        {k: v for k, v in document.items() if k != "certificate_chains"},
        {**document, "attestation": base64.b64encode(b"short").decode()},
    ):
        encoded = json.dumps(changed, sort_keys=True, separators=(",", ":")).encode()
        with pytest.raises(AttestationFormatError):
            VERIFIER.verify(encoded, trust_anchors=None, at_time=AT, expected=ANY)


@given(st.binary(max_size=3000))
def test_garbage_attestation_raises_only_the_format_error(data: bytes) -> None:
    with pytest.raises(AttestationFormatError):
        MarvellAttestation.from_bytes(data)


@given(st.integers(0, len(ATTESTATION) - 1))
def test_truncated_attestation_raises_only_the_format_error(cut: int) -> None:
    with pytest.raises(AttestationFormatError):
        MarvellAttestation.from_bytes(ATTESTATION[:cut])
