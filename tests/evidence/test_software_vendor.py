"""The software vendor: a deployment's own CA for nodes without attesting hardware.
Documents verify only under their deployment's root, only for the node, key, custody
and region the device certificate names, only inside the certificates' windows, and are
always labelled emulated — and refused unless the caller explicitly allows emulation."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from hypothesis import given
from hypothesis import strategies as st

from hsmvault.errors import InvalidParameter
from hsmvault.evidence.attestation import (
    EMULATED_WARNING,
    AttestationError,
    AttestationFormatError,
    ChainError,
    Expectations,
    ExpiredError,
    KeyPropertiesError,
    MeasurementMismatch,
    PolicyError,
    SignatureError,
    registered_formats,
    verifier_for,
)
from hsmvault.evidence.attestation.software_vendor import (
    EMULATED_LABEL,
    SIGNING_PURPOSE,
    AttestationStatement,
    CustodyKind,
    KeySource,
    SoftwareAttestation,
    SoftwareVendorCA,
    SoftwareVendorVerifier,
    StatementKeyProperties,
    software_key_properties,
)
from tests.evidence.sv_helpers import (
    MEASUREMENT,
    NONCE,
    T0,
    Node,
    p256_node,
    software_node,
    token_properties,
)

VERIFIER = SoftwareVendorVerifier()
EMULATED_OK = Expectations(unsafe_allow_emulated=True, require_key_properties=False)
GOLDEN = Path(__file__).parent / "data" / "software_vendor_golden.json"


@pytest.fixture(scope="module")
def ca() -> SoftwareVendorCA:
    return SoftwareVendorCA.generate("test-deployment", now=T0 - timedelta(days=1))


@pytest.fixture(scope="module")
def node(ca: SoftwareVendorCA) -> Node:
    return software_node(ca)


@pytest.fixture(scope="module")
def token_node(ca: SoftwareVendorCA) -> Node:
    return p256_node(ca)


def verify(
    document: bytes,
    ca: SoftwareVendorCA,
    *,
    at: Any = None,
    expected: Expectations = EMULATED_OK,
    anchors: list[x509.Certificate] | None = None,
) -> Any:
    return VERIFIER.verify(
        document,
        trust_anchors=[ca.root_certificate] if anchors is None else anchors,
        at_time=T0 + timedelta(minutes=1) if at is None else at,
        expected=expected,
    )


# -- issue and verify --------------------------------------------------------------------


def test_software_node_document_verifies_and_is_labelled_emulated(
    ca: SoftwareVendorCA, node: Node
) -> None:
    result = verify(node.attest(), ca)
    assert result.format == "hsmvault-software-vendor"
    assert result.emulated is True
    assert result.warnings[0] == EMULATED_WARNING
    assert "EMULATED" in result.device_identity
    assert node.custody.node_id.hex() in result.device_identity
    assert result.attested_public_key == node.custody.identity_public_key()
    assert result.measurement == MEASUREMENT
    assert result.measurements == {"sha256": MEASUREMENT}
    assert result.nonce == NONCE
    assert result.issued_at == T0
    assert result.key_properties.generated_inside is False
    assert result.key_properties.non_extractable is False
    assert result.key_properties.basis == "software-emulated"
    assert len(result.chain) == 2
    assert f"OU={EMULATED_LABEL}" in result.chain[-1].subject
    assert f"OU={EMULATED_LABEL}: software custody" in result.chain[0].subject


def test_token_node_with_p256_identity_verifies_with_key_properties_required(
    ca: SoftwareVendorCA, token_node: Node
) -> None:
    expected = Expectations(
        unsafe_allow_emulated=True,
        measurement=MEASUREMENT,
        nonce=NONCE,
        public_key=token_node.custody.identity_public_key(),
    )
    result = verify(token_node.attest(), ca, expected=expected)
    assert result.key_properties.generated_inside is True
    assert result.key_properties.non_extractable is True
    assert result.key_properties.basis == "pkcs11-attributes"
    assert result.emulated is True
    assert any("SoftHSM2" in w for w in result.warnings)


def test_registry_knows_the_software_vendor() -> None:
    assert "hsmvault-software-vendor" in registered_formats()
    assert isinstance(verifier_for("hsmvault-software-vendor"), SoftwareVendorVerifier)


# -- policy ------------------------------------------------------------------------------


def test_emulated_hardware_refused_by_default(ca: SoftwareVendorCA, token_node: Node) -> None:
    with pytest.raises(PolicyError, match="emulated"):
        verify(token_node.attest(), ca, expected=Expectations())


def test_software_key_refused_when_key_properties_are_required(
    ca: SoftwareVendorCA, node: Node
) -> None:
    with pytest.raises(KeyPropertiesError):
        verify(node.attest(), ca, expected=Expectations(unsafe_allow_emulated=True))


def test_token_key_that_was_imported_is_refused(ca: SoftwareVendorCA) -> None:
    imported = p256_node(ca)
    imported.properties = StatementKeyProperties(
        source=KeySource.PKCS11_ATTRIBUTES,
        local=False,
        extractable=False,
        never_extractable=False,
        sensitive=True,
        always_sensitive=False,
    )
    with pytest.raises(KeyPropertiesError):
        verify(imported.attest(), ca, expected=Expectations(unsafe_allow_emulated=True))


def test_other_measurement_refused(ca: SoftwareVendorCA, node: Node) -> None:
    expected = Expectations(
        unsafe_allow_emulated=True, require_key_properties=False, measurement=bytes(32)
    )
    with pytest.raises(MeasurementMismatch):
        verify(node.attest(), ca, expected=expected)


def test_other_nonce_refused(ca: SoftwareVendorCA, node: Node) -> None:
    expected = Expectations(
        unsafe_allow_emulated=True, require_key_properties=False, nonce=b"another-nonce-1234"
    )
    with pytest.raises(PolicyError, match="nonce"):
        verify(node.attest(), ca, expected=expected)


def test_other_node_key_refused(ca: SoftwareVendorCA, node: Node, token_node: Node) -> None:
    expected = Expectations(
        unsafe_allow_emulated=True,
        require_key_properties=False,
        public_key=token_node.custody.identity_public_key(),
    )
    with pytest.raises(PolicyError, match="public key"):
        verify(node.attest(), ca, expected=expected)


# -- the chain ---------------------------------------------------------------------------


def test_other_deployments_root_refused(node: Node) -> None:
    other = SoftwareVendorCA.generate("other-deployment", now=T0 - timedelta(days=1))
    with pytest.raises(ChainError):
        verify(node.attest(), other)


def test_root_with_the_same_name_but_another_key_refused(node: Node) -> None:
    twin = SoftwareVendorCA.generate("test-deployment", now=T0 - timedelta(days=1))
    with pytest.raises(ChainError, match="not issued"):
        verify(node.attest(), twin)


def test_non_vendor_root_refused_even_if_it_issued_the_device_cert(node: Node) -> None:
    """A CA that is not labelled as the software vendor cannot vouch for emulated nodes."""
    fake = SoftwareVendorCA.generate("test-deployment", now=T0 - timedelta(days=1))
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "real hardware vendor")])
    root = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(fake._key.public_key())
        .serial_number(1)
        .not_valid_before(fake.root_certificate.not_valid_before_utc)
        .not_valid_after(fake.root_certificate.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            fake.root_certificate.extensions.get_extension_for_class(x509.KeyUsage).value,
            critical=True,
        )
        .sign(fake._key, None)
    )
    unlabelled = SoftwareVendorCA(root, fake._key)
    impostor = software_node(unlabelled)
    with pytest.raises(ChainError, match="software-vendor root"):
        verify(impostor.attest(), unlabelled)


def test_device_certificate_of_another_node_refused(
    ca: SoftwareVendorCA, node: Node, token_node: Node
) -> None:
    fields = json.loads(node.attest())
    fields["device_certificate"] = json.loads(token_node.attest())["device_certificate"]
    forged = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(ChainError, match="does not certify"):
        verify(forged, ca)


def test_signature_of_another_node_refused(
    ca: SoftwareVendorCA, node: Node, token_node: Node
) -> None:
    document = SoftwareAttestation.from_bytes(node.attest())
    statement_bytes = document.statement.signed_bytes()
    other = token_node.custody.sign(SIGNING_PURPOSE, statement_bytes)
    forged = SoftwareAttestation(document.statement, document.device_certificate, other)
    with pytest.raises(SignatureError):
        verify(forged.to_bytes(), ca)


def test_signature_for_another_purpose_refused(ca: SoftwareVendorCA, node: Node) -> None:
    document = SoftwareAttestation.from_bytes(node.attest())
    wrong = node.custody.sign(b"hsmvault/other-purpose", document.statement.signed_bytes())
    forged = SoftwareAttestation(document.statement, document.device_certificate, wrong)
    with pytest.raises(SignatureError):
        verify(forged.to_bytes(), ca)


@pytest.mark.parametrize("change", ["region", "custody"])
def test_statement_that_contradicts_the_device_certificate_refused(
    ca: SoftwareVendorCA, token_node: Node, change: str
) -> None:
    document = SoftwareAttestation.from_bytes(token_node.attest())
    statement = document.statement
    if change == "region":
        altered = AttestationStatement(
            statement.identity,
            "ap-south",
            statement.custody,
            statement.key_properties,
            statement.measurement,
            statement.issued_at,
            statement.nonce,
        )
    else:  # claim the software custody (with its honest properties) under a softhsm2 cert
        altered = AttestationStatement(
            statement.identity,
            statement.region,
            CustodyKind.SOFTWARE,
            software_key_properties(),
            statement.measurement,
            statement.issued_at,
            statement.nonce,
        )
    signature = token_node.custody.sign(SIGNING_PURPOSE, altered.signed_bytes())
    forged = SoftwareAttestation(altered, document.device_certificate, signature)
    with pytest.raises(ChainError, match="does not certify"):
        verify(forged.to_bytes(), ca)


def test_issue_refuses_a_certificate_for_another_key(
    ca: SoftwareVendorCA, node: Node, token_node: Node
) -> None:
    wrong = Node(node.custody, node.kind, node.region, token_node.certificate)
    with pytest.raises(InvalidParameter):
        wrong.attest()


def test_issue_refuses_a_certificate_for_another_region(ca: SoftwareVendorCA, node: Node) -> None:
    wrong = Node(node.custody, node.kind, "ap-south", node.certificate)
    with pytest.raises(InvalidParameter):
        wrong.attest()


# -- time --------------------------------------------------------------------------------


def test_time_after_the_device_certificate_expired_refused(
    ca: SoftwareVendorCA, token_node: Node
) -> None:
    document = token_node.attest()
    assert verify(
        document, ca, at=T0 + timedelta(days=30), expected=Expectations(unsafe_allow_emulated=True)
    )
    with pytest.raises(ExpiredError):
        verify(document, ca, at=T0 + timedelta(days=30, seconds=1))


def test_time_before_the_root_refused(ca: SoftwareVendorCA, node: Node) -> None:
    with pytest.raises(ExpiredError):
        verify(node.attest(), ca, at=T0 - timedelta(days=2))


def test_statement_dated_outside_the_device_window_refused(
    ca: SoftwareVendorCA, token_node: Node
) -> None:
    late = token_node.attest(at=T0 + timedelta(days=31))
    with pytest.raises(ExpiredError):
        verify(late, ca, at=T0 + timedelta(days=1))


def test_statement_dated_after_the_verification_time_refused(
    ca: SoftwareVendorCA, node: Node
) -> None:
    with pytest.raises(ExpiredError, match="after the verification time"):
        verify(node.attest(at=T0 + timedelta(hours=1)), ca, at=T0)


# -- tampering and strict parsing --------------------------------------------------------


@given(st.data())
def test_any_changed_byte_refused(
    ca: SoftwareVendorCA, token_node: Node, data: st.DataObject
) -> None:
    document = token_node.attest()
    position = data.draw(st.integers(0, len(document) - 1))
    replacement = data.draw(st.integers(0, 255).filter(lambda b: b != document[position]))
    changed = document[:position] + bytes([replacement]) + document[position + 1 :]
    with pytest.raises(AttestationError):
        verify(changed, ca, expected=Expectations(unsafe_allow_emulated=True))


def _reencode(document: bytes, edit: Any) -> bytes:
    fields = json.loads(document)
    edit(fields)
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def _fields_statement(f: dict[str, Any]) -> dict[str, Any]:
    statement: dict[str, Any] = f["statement"]
    return statement


EDITS: dict[str, Any] = {
    "unknown top-level key": lambda f: f.update(extra=1),
    "missing signature": lambda f: f.pop("signature"),
    "other format": lambda f: f.update(format="aws-nitro-enclaves"),
    "version 2": lambda f: f.update(version=2),
    "version as text": lambda f: f.update(version="1"),
    "emulated false": lambda f: _fields_statement(f).update(emulated=False),
    "unknown statement key": lambda f: _fields_statement(f).update(extra=True),
    "uppercase hex": lambda f: _fields_statement(f).update(measurement=MEASUREMENT.hex().upper()),
    "short measurement": lambda f: _fields_statement(f).update(measurement="00" * 31),
    "short nonce": lambda f: _fields_statement(f).update(nonce="00" * 15),
    "node id of another key": lambda f: _fields_statement(f).update(node_id="00" * 32),
    "issued_at bool": lambda f: _fields_statement(f).update(issued_at=True),
    "issued_at negative": lambda f: _fields_statement(f).update(issued_at=-1),
    "issued_at past 9999": lambda f: _fields_statement(f).update(issued_at=253402300800),
    "unknown algorithm": lambda f: _fields_statement(f)["identity_key"].update(algorithm="rsa"),
    "unknown custody": lambda f: _fields_statement(f).update(custody="hardware"),
    "bad region": lambda f: _fields_statement(f).update(region="EU West"),
    "emulated key claims local": lambda f: _fields_statement(f)["key_properties"].update(
        local=True
    ),
    "key property as int": lambda f: _fields_statement(f)["key_properties"].update(sensitive=0),
    "unknown key source": lambda f: _fields_statement(f)["key_properties"].update(source="tpm"),
    "signature unpadded base64": lambda f: f.update(signature=f["signature"].rstrip("=")),
    "signature of 63 bytes": lambda f: f.update(
        signature=base64.b64encode(base64.b64decode(f["signature"])[:63]).decode()
    ),
    "certificate not DER": lambda f: f.update(
        device_certificate=base64.b64encode(b"cert").decode()
    ),
}


@pytest.mark.parametrize("name", sorted(EDITS))
def test_malformed_document_refused(ca: SoftwareVendorCA, node: Node, name: str) -> None:
    with pytest.raises(AttestationFormatError):
        verify(_reencode(node.attest(), EDITS[name]), ca)


def test_non_canonical_json_refused(ca: SoftwareVendorCA, node: Node) -> None:
    document = node.attest()
    fields = json.loads(document)
    for variant in (
        json.dumps(fields, sort_keys=True).encode(),  # spaces
        json.dumps(dict(reversed(fields.items())), separators=(",", ":")).encode(),
        document + b"\n",
        b" " + document,
        document.replace(b'"version":1}', b'"version":1.0}'),
        document[:-1] + b',"version":1}',  # duplicate key
    ):
        assert variant != document
        with pytest.raises(AttestationFormatError):
            verify(variant, ca)


def test_round_trip_is_exact(node: Node) -> None:
    document = node.attest()
    assert SoftwareAttestation.from_bytes(document).to_bytes() == document


@given(st.binary(max_size=300))
def test_garbage_raises_only_the_format_error(data: bytes) -> None:
    with pytest.raises(AttestationFormatError):
        SoftwareAttestation.from_bytes(data)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
        max_leaves=10,
    )
)
def test_arbitrary_json_raises_only_the_format_error(value: object) -> None:
    encoded = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(AttestationFormatError):
        SoftwareAttestation.from_bytes(encoded)


def test_trust_anchors_are_required(node: Node) -> None:
    with pytest.raises(InvalidParameter):
        VERIFIER.verify(node.attest(), trust_anchors=None, at_time=T0, expected=EMULATED_OK)


# -- the CA ------------------------------------------------------------------------------


def test_ca_round_trips_through_its_seed(ca: SoftwareVendorCA) -> None:
    again = SoftwareVendorCA.from_private_key(ca.root_der(), ca.private_key_bytes())
    assert again.root_certificate == ca.root_certificate
    assert ca.private_key_bytes().hex() not in repr(ca)


def test_ca_refuses_a_seed_of_another_root(ca: SoftwareVendorCA) -> None:
    other = SoftwareVendorCA.generate("other", now=T0)
    with pytest.raises(InvalidParameter):
        SoftwareVendorCA.from_private_key(ca.root_der(), other.private_key_bytes())


def test_root_is_a_labelled_ca(ca: SoftwareVendorCA) -> None:
    root = ca.root_certificate
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert (
        root.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value
        == EMULATED_LABEL
    )


@pytest.mark.parametrize("name", ["", "has space", "x" * 41, "-leading"])
def test_ca_refuses_bad_deployment_names(name: str) -> None:
    with pytest.raises(InvalidParameter):
        SoftwareVendorCA.generate(name, now=T0)


def test_device_certificate_never_outlives_the_root(ca: SoftwareVendorCA, node: Node) -> None:
    cert = ca.issue_device_certificate(
        node.custody.identity,
        region="eu-west",
        custody=CustodyKind.SOFTWARE,
        now=T0,
        lifetime=timedelta(days=100000),
    )
    assert cert.not_valid_after_utc == ca.root_certificate.not_valid_after_utc


def test_emulated_properties_cannot_claim_protection() -> None:
    with pytest.raises(InvalidParameter):
        StatementKeyProperties(
            source=KeySource.SOFTWARE_EMULATED,
            local=True,
            extractable=True,
            never_extractable=False,
            sensitive=False,
            always_sensitive=False,
        )
    assert token_properties().non_extractable
    assert not software_key_properties().generated_inside


# -- golden file -------------------------------------------------------------------------


def test_golden_document_still_verifies() -> None:
    """A document made by this code when the format was fixed (``sv_helpers.write_golden``):
    format drift fails here."""
    golden = json.loads(GOLDEN.read_text(encoding="ascii"))
    root = x509.load_der_x509_certificate(base64.b64decode(golden["root"]))
    document = golden["document"].encode("ascii")
    at = T0 + timedelta(minutes=1)
    result = VERIFIER.verify(
        document,
        trust_anchors=[root],
        at_time=at,
        expected=Expectations(unsafe_allow_emulated=True, measurement=MEASUREMENT, nonce=NONCE),
    )
    assert result.attested_public_key is not None
    assert result.attested_public_key.hex() == golden["public_key"]
    assert SoftwareAttestation.from_bytes(document).to_bytes() == document
    # P-256 keys verify through the same path as in the token.
    assert json.loads(document)["statement"]["identity_key"]["algorithm"] == "ecdsa-p256-sha256"
