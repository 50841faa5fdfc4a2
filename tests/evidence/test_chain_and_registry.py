"""The shared chain checks (one test per RFC 5280 rule we enforce) and the plugin
registry and expectation order of ``attestation.base``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hsmvault.errors import DecodeError, InvalidParameter, VerificationError
from hsmvault.evidence.attestation import (
    AttestationError,
    AttestationFormatError,
    AttestationResult,
    ChainError,
    Expectations,
    ExpiredError,
    KeyProperties,
    KeyPropertiesError,
    MeasurementMismatch,
    PolicyError,
    UnsupportedFormat,
    registered_formats,
    verifier_for,
)
from hsmvault.evidence.attestation._x509 import (
    check_validity,
    der,
    load_der_certificate,
    verify_chain,
)
from hsmvault.evidence.attestation.base import MAX_CLOCK_SKEW, apply_expectations

NOW = datetime(2026, 11, 27, tzinfo=UTC)


def _usage(*, sign: bool, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def issue(
    name: str,
    issuer: Issued | None,
    *,
    ca: bool | None = True,
    ca_critical: bool = True,
    path_length: int | None = None,
    usage: x509.KeyUsage | None = None,
    extra: x509.ExtensionType | None = None,
    window: tuple[datetime, datetime] = (NOW - timedelta(days=1), NOW + timedelta(days=1)),
) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(window[0])
        .not_valid_after(window[1])
    )
    if ca is not None:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=ca, path_length=path_length if ca else None),
            critical=ca_critical,
        )
    if usage is None:
        usage = _usage(sign=not ca, cert_sign=bool(ca))
    builder = builder.add_extension(usage, critical=True)
    if extra is not None:
        builder = builder.add_extension(extra, critical=True)
    signer = issuer.key if issuer else key
    return Issued(builder.sign(signer, hashes.SHA256()), key)


def chain_of(*issued: Issued) -> list[x509.Certificate]:
    return [i.cert for i in issued]


@pytest.fixture
def root() -> Issued:
    return issue("root", None)


def test_valid_three_link_chain_passes(root: Issued) -> None:
    inter = issue("inter", root, path_length=0)
    leaf = issue("leaf", inter, ca=False)
    verify_chain(chain_of(leaf, inter, root), [root.cert])
    check_validity(chain_of(leaf, inter, root), NOW)


def test_chain_ending_in_an_untrusted_root_refused(root: Issued) -> None:
    leaf = issue("leaf", root, ca=False)
    with pytest.raises(ChainError, match="trusted root"):
        verify_chain(chain_of(leaf, root), [issue("other", None).cert])


def test_single_certificate_is_not_a_chain(root: Issued) -> None:
    with pytest.raises(ChainError, match="too short"):
        verify_chain([root.cert], [root.cert])


def test_repeated_certificate_refused(root: Issued) -> None:
    leaf = issue("leaf", root, ca=False)
    with pytest.raises(ChainError, match="repeats"):
        verify_chain(chain_of(leaf, root, root), [root.cert])


def test_anchor_that_is_not_self_signed_refused(root: Issued) -> None:
    inter = issue("inter", root)
    leaf = issue("leaf", inter, ca=False)
    with pytest.raises(ChainError, match="self-signed"):
        verify_chain(chain_of(leaf, inter), [inter.cert])


def test_skipped_link_refused(root: Issued) -> None:
    inter = issue("inter", root)
    leaf = issue("leaf", inter, ca=False)
    with pytest.raises(ChainError, match="not issued"):
        verify_chain(chain_of(leaf, root), [root.cert])


def test_intermediate_without_ca_flag_refused(root: Issued) -> None:
    inter = issue("inter", root, ca=False, usage=_usage(sign=True, cert_sign=True))
    leaf = issue("leaf", inter, ca=False)
    with pytest.raises(ChainError, match="basicConstraints"):
        verify_chain(chain_of(leaf, inter, root), [root.cert])


def test_intermediate_with_non_critical_basic_constraints_refused(root: Issued) -> None:
    inter = issue("inter", root, ca_critical=False)
    leaf = issue("leaf", inter, ca=False)
    with pytest.raises(ChainError, match="basicConstraints"):
        verify_chain(chain_of(leaf, inter, root), [root.cert])


def test_intermediate_without_key_cert_sign_refused(root: Issued) -> None:
    inter = issue("inter", root, usage=_usage(sign=True, cert_sign=False))
    leaf = issue("leaf", inter, ca=False)
    with pytest.raises(ChainError, match="keyUsage"):
        verify_chain(chain_of(leaf, inter, root), [root.cert])


def test_path_length_exceeded_refused() -> None:
    root = issue("root", None, path_length=0)
    inter = issue("inter", root)
    leaf = issue("leaf", inter, ca=False)
    with pytest.raises(ChainError, match="pathLen"):
        verify_chain(chain_of(leaf, inter, root), [root.cert])


def test_leaf_that_is_a_ca_refused(root: Issued) -> None:
    leaf = issue("leaf", root, ca=True)
    with pytest.raises(ChainError, match="is a CA"):
        verify_chain(chain_of(leaf, root), [root.cert])


def test_leaf_that_may_not_sign_refused(root: Issued) -> None:
    leaf = issue("leaf", root, ca=False, usage=_usage(sign=False, cert_sign=False))
    with pytest.raises(ChainError, match="may not sign"):
        verify_chain(chain_of(leaf, root), [root.cert])


def test_unknown_critical_extension_refused(root: Issued) -> None:
    leaf = issue("leaf", root, ca=False, extra=x509.OCSPNoCheck())
    with pytest.raises(ChainError, match="unknown critical"):
        verify_chain(chain_of(leaf, root), [root.cert])


@pytest.mark.parametrize("which", [0, 1])
def test_certificate_outside_its_window_refused(root: Issued, which: int) -> None:
    window = (NOW + timedelta(hours=1), NOW + timedelta(days=1))
    leaf = issue("leaf", root, ca=False, window=window if which == 0 else (NOW, NOW))
    chain = chain_of(leaf, root)
    check_validity(chain, NOW + timedelta(hours=1) if which == 0 else NOW)
    with pytest.raises(ExpiredError):
        check_validity(chain, NOW if which == 0 else NOW + timedelta(seconds=1))


def test_der_loader_refuses_trailing_bytes_and_garbage(root: Issued) -> None:
    assert load_der_certificate(der(root.cert), "root") == root.cert
    for bad in (der(root.cert) + b"\x00", der(root.cert)[:-1], b"", b"\x30\x00"):
        with pytest.raises(AttestationFormatError):
            load_der_certificate(bad, "cert")


# -- errors, registry, expectations ------------------------------------------------------


def test_error_tree() -> None:
    assert issubclass(AttestationError, VerificationError)
    assert issubclass(AttestationFormatError, DecodeError)
    assert issubclass(AttestationFormatError, AttestationError)
    for cls in (ChainError, ExpiredError, KeyPropertiesError, MeasurementMismatch, PolicyError):
        assert issubclass(cls, AttestationError)


def test_registry_lists_the_formats() -> None:
    assert registered_formats() == (
        "aws-nitro-enclaves",
        "gcp-cloud-hsm-marvell",
        "hsmvault-software-vendor",
    )
    for name in registered_formats():
        assert verifier_for(name).format == name


def test_unknown_format_refused() -> None:
    with pytest.raises(UnsupportedFormat):
        verifier_for("tpm2-quote")


def _result(**changes: object) -> AttestationResult:
    fields: dict[str, object] = {
        "format": "test",
        "emulated": False,
        "device_identity": "device",
        "chain": (),
        "issued_at": NOW,
        "attested_public_key": b"key",
        "key_properties": KeyProperties(True, True, "test"),
        "measurement": b"m" * 32,
        "measurements": {"sha256": b"m" * 32},
        "nonce": b"n" * 16,
    }
    fields.update(changes)
    return AttestationResult(**fields)  # type: ignore[arg-type]


def test_expectations_checked_in_documented_order() -> None:
    """Emulated is refused before anything else; key properties before values."""
    everything_wrong = Expectations(measurement=b"x" * 32, nonce=b"x" * 16)
    bad = _result(emulated=True, key_properties=KeyProperties(False, False, "test"))
    with pytest.raises(PolicyError, match="emulated"):
        apply_expectations(bad, everything_wrong, NOW)
    allowed = Expectations(unsafe_allow_emulated=True, measurement=b"x" * 32, nonce=b"x" * 16)
    with pytest.raises(KeyPropertiesError):
        apply_expectations(bad, allowed, NOW)
    with pytest.raises(PolicyError, match="nonce"):
        apply_expectations(_result(), everything_wrong, NOW)
    with pytest.raises(MeasurementMismatch):
        apply_expectations(_result(), Expectations(measurement=b"x" * 32), NOW)
    assert apply_expectations(_result(), Expectations(measurement=b"m" * 32), NOW)


def test_document_from_the_future_refused_beyond_the_skew() -> None:
    assert apply_expectations(_result(issued_at=NOW + MAX_CLOCK_SKEW), Expectations(), NOW)
    with pytest.raises(ExpiredError):
        apply_expectations(
            _result(issued_at=NOW + MAX_CLOCK_SKEW + timedelta(seconds=1)), Expectations(), NOW
        )


def test_missing_nonce_does_not_match_an_expected_one() -> None:
    with pytest.raises(PolicyError):
        apply_expectations(_result(nonce=None), Expectations(nonce=b"n" * 16), NOW)


def test_naive_time_is_a_caller_error() -> None:
    with pytest.raises(InvalidParameter):
        apply_expectations(_result(), Expectations(), datetime(2026, 1, 1))
