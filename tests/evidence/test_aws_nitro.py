"""AWS Nitro Enclaves attestation documents, verified on the two real samples in
``data/`` (see its README) against the pinned AWS root, and attacked: flipped bytes in
the signature, the payload and every certificate, another root, a forged chain, times
outside the certificates' windows, debug mode, and malformed encodings."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from hsmvault.errors import InvalidParameter
from hsmvault.evidence.attestation import (
    AttestationError,
    AttestationFormatError,
    ChainError,
    Expectations,
    ExpiredError,
    KeyPropertiesError,
    MeasurementMismatch,
    PolicyError,
    SignatureError,
    aws_nitro,
    verifier_for,
)
from hsmvault.evidence.attestation.aws_nitro import (
    AWS_NITRO_ROOT_G1_SHA256,
    NitroDocument,
    NitroVerifier,
    aws_nitro_root,
)
from tests.evidence.forge import (
    DEBUG_TIME,
    PRODUCTION_TIME,
    ForgedCA,
    cose_parts,
    debug,
    forged_payload,
    payload_of,
    production,
)

VERIFIER = NitroVerifier()
ANY = Expectations()
SHARED_ROOT = "/work/shared/vectors/attestation/AWS_NitroEnclaves_Root-G1.pem"
#: cryptography warns (and will refuse) on some flipped certificates; we refuse them too.
FLIP_WARNINGS = ("ignore::cryptography.utils.CryptographyDeprecationWarning", "ignore::UserWarning")


def verify(document: bytes, at: datetime = PRODUCTION_TIME, **kwargs: Any) -> Any:
    expected = kwargs.pop("expected", ANY)
    return VERIFIER.verify(document, at_time=at, expected=expected, **kwargs)


def flipped(document: bytes, position: int, mask: int = 0x01) -> bytes:
    changed = bytearray(document)
    changed[position] ^= mask
    return bytes(changed)


# -- the real samples --------------------------------------------------------------------


def test_production_sample_verifies_with_the_documented_facts() -> None:
    result = verify(production())
    assert result.format == "aws-nitro-enclaves"
    assert result.emulated is False
    assert result.device_identity == "i-0a22e5c5f24d22174-enc0191cceb4289903f"
    assert result.issued_at == PRODUCTION_TIME
    assert result.measurement is not None
    assert result.measurement.hex().startswith("e72a46ca")
    assert sorted(result.measurements) == sorted(f"PCR{i}" for i in range(16))
    assert all(len(v) == 48 for v in result.measurements.values())
    assert result.measurements["PCR0"] == result.measurement
    assert result.attested_public_key == b"\x01" * 1024
    assert result.user_data == b"\x01" * 1024
    assert result.nonce == b"\x01" * 1024
    assert result.attested_key_digest == hashlib.sha256(b"\x01" * 1024).digest()
    assert result.key_properties.basis == "nitro-enclave-measurement"
    # leaf, instance, zonal, regional, root — the root is the pinned one
    assert len(result.chain) == 5
    assert result.chain[-1].sha256 == AWS_NITRO_ROOT_G1_SHA256
    assert result.chain[-1].subject == "CN=aws.nitro-enclaves,OU=AWS,O=Amazon,C=US"
    assert result.chain[0].not_before == datetime(2024, 9, 7, 14, 37, 36, tzinfo=UTC)
    assert result.chain[0].not_after == datetime(2024, 9, 7, 17, 37, 39, tzinfo=UTC)


def test_registry_returns_the_nitro_verifier() -> None:
    verifier = verifier_for("aws-nitro-enclaves")
    assert isinstance(verifier, NitroVerifier)
    assert verifier.verify(production(), trust_anchors=None, at_time=PRODUCTION_TIME, expected=ANY)


def test_tagged_cose_sign1_verifies_like_the_untagged_one() -> None:
    tagged = b"\xd2" + production()  # CBOR tag 18 (COSE_Sign1)
    assert verify(tagged).measurement == verify(production()).measurement


def test_debug_mode_sample_refused() -> None:
    assert payload_of(debug())["pcrs"][0] == bytes(48)
    with pytest.raises(PolicyError, match="debug mode"):
        verify(debug(), DEBUG_TIME)


def test_debug_mode_refused_even_when_the_caller_expects_zero_pcrs() -> None:
    with pytest.raises(PolicyError):
        verify(debug(), DEBUG_TIME, expected=Expectations(measurement=bytes(48)))


def test_pinned_root_is_the_published_aws_root() -> None:
    root = aws_nitro_root()
    shared = x509.load_pem_x509_certificate(Path(SHARED_ROOT).read_bytes())
    assert root == shared
    assert root.subject.rfc4514_string() == "CN=aws.nitro-enclaves,OU=AWS,O=Amazon,C=US"


def test_tampered_pinned_root_is_refused_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aws_nitro, "AWS_NITRO_ROOT_G1_SHA256", "00" * 32)
    aws_nitro_root.cache_clear()
    try:
        with pytest.raises(ChainError, match="pinned"):
            aws_nitro_root()
    finally:
        monkeypatch.undo()
        aws_nitro_root.cache_clear()
    assert aws_nitro_root()


# -- expectations ------------------------------------------------------------------------


def test_expected_pcr0_accepted_when_equal() -> None:
    pcr0 = payload_of(production())["pcrs"][0]
    pcr2 = payload_of(production())["pcrs"][2]
    result = verify(
        production(), expected=Expectations(measurement=pcr0, measurements={"PCR2": pcr2})
    )
    assert result.measurement == pcr0


def test_other_pcr0_is_a_measurement_mismatch() -> None:
    pcr0 = bytearray(payload_of(production())["pcrs"][0])
    pcr0[-1] ^= 1
    with pytest.raises(MeasurementMismatch):
        verify(production(), expected=Expectations(measurement=bytes(pcr0)))


def test_other_named_pcr_is_a_measurement_mismatch() -> None:
    with pytest.raises(MeasurementMismatch, match="PCR1"):
        verify(production(), expected=Expectations(measurements={"PCR1": bytes(48)}))


def test_unmeasured_pcr_name_is_a_measurement_mismatch() -> None:
    with pytest.raises(MeasurementMismatch):
        verify(production(), expected=Expectations(measurements={"PCR31": bytes(48)}))


@pytest.mark.parametrize(
    "expected",
    [
        Expectations(nonce=b"\x02" * 1024),
        Expectations(public_key=b"\x02" * 1024),
        Expectations(user_data=b"\x02" * 1024),
    ],
    ids=["nonce", "public_key", "user_data"],
)
def test_other_nonce_key_or_user_data_refused(expected: Expectations) -> None:
    with pytest.raises(PolicyError):
        verify(production(), expected=expected)


def test_matching_nonce_key_and_user_data_accepted() -> None:
    ones = b"\x01" * 1024
    assert verify(production(), expected=Expectations(nonce=ones, public_key=ones, user_data=ones))


def test_document_older_than_max_age_refused() -> None:
    later = PRODUCTION_TIME + timedelta(hours=1)  # still inside the leaf's window
    assert verify(production(), later, expected=Expectations(max_age=timedelta(hours=2)))
    with pytest.raises(ExpiredError, match="maximum age"):
        verify(production(), later, expected=Expectations(max_age=timedelta(minutes=10)))


def test_emulated_policy_does_not_affect_real_hardware() -> None:
    assert verify(production(), expected=Expectations(unsafe_allow_emulated=False))


# -- time --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "at",
    [
        datetime(2024, 9, 7, 17, 37, 40, tzinfo=UTC),  # one second after the leaf expired
        datetime(2024, 9, 7, 14, 37, 35, tzinfo=UTC),  # one second before the leaf began
        datetime(2026, 1, 1, tzinfo=UTC),  # today: every certificate but the root expired
        datetime(2019, 1, 1, tzinfo=UTC),  # before the root existed
    ],
)
def test_time_outside_the_certificate_windows_refused(at: datetime) -> None:
    with pytest.raises(ExpiredError):
        verify(production(), at)


def test_leaf_window_bounds_are_inclusive() -> None:
    assert verify(production(), datetime(2024, 9, 7, 17, 37, 39, tzinfo=UTC))


def test_naive_verification_time_is_a_caller_error() -> None:
    with pytest.raises(InvalidParameter):
        verify(production(), datetime(2024, 9, 7, 14, 37, 39))


# -- flipped bytes -----------------------------------------------------------------------


def _region(document: bytes, needle: bytes) -> range:
    start = document.index(needle)
    assert document.count(needle) == 1
    return range(start, start + len(needle))


def test_every_flipped_signature_byte_refused() -> None:
    document = production()
    signature = cose_parts(document)[3]
    for position in _region(document, signature):
        with pytest.raises(SignatureError):
            verify(flipped(document, position))


@pytest.mark.filterwarnings(*FLIP_WARNINGS)
def test_flipped_payload_bytes_refused() -> None:
    document = production()
    payload = cose_parts(document)[2]
    region = _region(document, payload)
    refused = 0
    for position in region[::7]:
        with pytest.raises(AttestationError):
            verify(flipped(document, position))
        refused += 1
    assert refused == len(region[::7]) > 1000


@pytest.mark.filterwarnings(*FLIP_WARNINGS)
@pytest.mark.parametrize("which", ["certificate", 0, 1, 2, 3])
def test_flipped_certificate_bytes_refused(which: str | int) -> None:
    document = production()
    fields = payload_of(document)
    cert = fields["certificate"] if which == "certificate" else fields["cabundle"][which]
    for position in _region(document, cert)[::5]:
        for mask in (0x01, 0x80):
            with pytest.raises(AttestationError):
                verify(flipped(document, position, mask))


@pytest.mark.filterwarnings(*FLIP_WARNINGS)
def test_flipped_envelope_bytes_refused() -> None:
    document = production()
    payload_start = document.index(cose_parts(document)[2])
    for position in range(payload_start):  # array head, protected header, payload head
        for mask in (0x01, 0x02, 0x80):
            with pytest.raises(AttestationError):
                verify(flipped(document, position, mask))


@pytest.mark.filterwarnings(*FLIP_WARNINGS)
@given(st.data())
def test_any_flipped_byte_refused(data: st.DataObject) -> None:
    document = production()
    position = data.draw(st.integers(0, len(document) - 1))
    mask = data.draw(st.integers(1, 255))
    with pytest.raises(AttestationError):
        verify(flipped(document, position, mask))


def test_truncated_or_extended_document_refused() -> None:
    document = production()
    for changed in (document[:-1], document + b"\x00", document[: len(document) // 2], b""):
        with pytest.raises(AttestationFormatError):
            verify(changed)


# -- roots and chains --------------------------------------------------------------------


def test_wrong_root_refused() -> None:
    """A root with AWS's very name but another key is not the pinned root."""
    impostor = ForgedCA.make(PRODUCTION_TIME).root
    assert impostor.subject == aws_nitro_root().subject
    with pytest.raises(ChainError, match="trusted root"):
        verify(production(), trust_anchors=[impostor])


def test_unrelated_root_refused() -> None:
    other = ForgedCA.make(
        PRODUCTION_TIME,
        root_name=x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "other vendor")]),
    ).root
    with pytest.raises(ChainError):
        verify(production(), trust_anchors=[other])


def test_forged_chain_named_like_aws_refused_under_the_pinned_root() -> None:
    forged = ForgedCA.make(PRODUCTION_TIME)
    document = forged.sign_document(forged_payload(PRODUCTION_TIME))
    with pytest.raises(ChainError):
        verify(document)
    # The same document is otherwise perfect: under its own root it verifies.
    assert verify(document, trust_anchors=[forged.root]).device_identity


def test_sample_with_cabundle_swapped_for_a_forged_root_refused() -> None:
    """Keep AWS's leaf but claim a forged root: the leaf is not issued by it."""
    forged = ForgedCA.make(PRODUCTION_TIME)
    fields = payload_of(production())
    fields["cabundle"] = [forged.root.public_bytes(serialization.Encoding.DER)]
    document = forged.sign_document(fields)
    with pytest.raises(ChainError):
        verify(document, trust_anchors=[forged.root])


def test_intermediate_dropped_from_the_cabundle_refused() -> None:
    forged = ForgedCA.make(PRODUCTION_TIME)
    fields = payload_of(production())
    fields["cabundle"] = fields["cabundle"][:-1]  # drop the instance CA
    # Re-signed with another key, so we also must fail on the chain first.
    with pytest.raises(ChainError):
        verify(forged.sign_document(fields))


# -- policy on validly signed documents (our own CA as the anchor) ---------------------


def _own(changes: dict[str, Any], *, drop: tuple[str, ...] = ()) -> tuple[bytes, ForgedCA]:
    ca = ForgedCA.make(PRODUCTION_TIME)
    payload = forged_payload(PRODUCTION_TIME, **changes)
    for field in drop:
        del payload[field]
    return ca.sign_document(payload), ca


def test_partly_zero_pcrs_refused() -> None:
    pcrs = dict(payload_of(production())["pcrs"])
    pcrs[1] = bytes(48)
    document, ca = _own({"pcrs": pcrs})
    with pytest.raises(PolicyError, match="PCR0, PCR1 or PCR2"):
        verify(document, trust_anchors=[ca.root])


def test_missing_pcr0_refused() -> None:
    pcrs = {i: v for i, v in payload_of(production())["pcrs"].items() if i != 0}
    document, ca = _own({"pcrs": pcrs})
    with pytest.raises(PolicyError):
        verify(document, trust_anchors=[ca.root])


def test_document_without_public_key_has_no_key_properties() -> None:
    document, ca = _own({}, drop=("public_key",))
    with pytest.raises(KeyPropertiesError):
        verify(document, trust_anchors=[ca.root])
    result = verify(
        document, trust_anchors=[ca.root], expected=Expectations(require_key_properties=False)
    )
    assert result.attested_public_key is None


def test_null_optional_fields_accepted() -> None:
    document, ca = _own({"nonce": None, "user_data": None})
    result = verify(document, trust_anchors=[ca.root])
    assert result.nonce is None
    assert result.user_data is None


def test_document_dated_outside_the_leaf_window_refused() -> None:
    ca = ForgedCA.make(PRODUCTION_TIME)
    document = ca.sign_document(forged_payload(PRODUCTION_TIME + timedelta(hours=4)))
    with pytest.raises(ExpiredError):
        verify(document, PRODUCTION_TIME, trust_anchors=[ca.root])


def test_document_dated_after_the_verification_time_refused() -> None:
    ca = ForgedCA.make(PRODUCTION_TIME)
    document = ca.sign_document(forged_payload(PRODUCTION_TIME + timedelta(hours=1)))
    with pytest.raises(ExpiredError, match="after the verification time"):
        verify(document, PRODUCTION_TIME, trust_anchors=[ca.root])


def test_leaf_with_another_curve_refused() -> None:
    ca = ForgedCA.make(PRODUCTION_TIME, leaf_curve=ec.SECP256R1())
    with pytest.raises(ChainError, match="P-384"):
        verify(ca.sign_document(forged_payload(PRODUCTION_TIME)), trust_anchors=[ca.root])


# -- strict parsing ----------------------------------------------------------------------

Mutation = Callable[[dict[str, Any]], None]


def _set(key: str, value: Any) -> Mutation:
    def mutate(fields: dict[str, Any]) -> None:
        fields[key] = value

    return mutate


def _drop(key: str) -> Mutation:
    def mutate(fields: dict[str, Any]) -> None:
        del fields[key]

    return mutate


PAYLOAD_MUTATIONS: dict[str, Mutation] = {
    "unknown field": _set("extra", b""),
    "missing module_id": _drop("module_id"),
    "missing pcrs": _drop("pcrs"),
    "missing cabundle": _drop("cabundle"),
    "empty module_id": _set("module_id", ""),
    "module_id bytes": _set("module_id", b"i-1"),
    "digest SHA256": _set("digest", "SHA256"),
    "timestamp zero": _set("timestamp", 0),
    "timestamp text": _set("timestamp", "1725719859545"),
    "timestamp bool": _set("timestamp", True),
    "timestamp too far": _set("timestamp", 2**64 - 1),
    "no pcrs": _set("pcrs", {}),
    "pcr index 32": _set("pcrs", {32: bytes(48)}),
    "pcr index text": _set("pcrs", {"0": bytes(48)}),
    "pcr of 32 bytes": _set("pcrs", {0: bytes(32)}),
    "pcr text": _set("pcrs", {0: "00" * 48}),
    "empty certificate": _set("certificate", b""),
    "certificate too long": _set("certificate", b"\x30" * 1025),
    "empty cabundle": _set("cabundle", []),
    "cabundle not an array": _set("cabundle", b"\x30"),
    "cabundle entry text": _set("cabundle", ["cert"]),
    "empty public key": _set("public_key", b""),
    "nonce too long": _set("nonce", b"\x00" * 1025),
    "user_data text": _set("user_data", "hello"),
}


@pytest.mark.parametrize("name", sorted(PAYLOAD_MUTATIONS))
def test_malformed_payload_refused_before_anything_else(name: str) -> None:
    parts = cose_parts(production())
    fields = payload_of(production())
    PAYLOAD_MUTATIONS[name](fields)
    parts[2] = cbor2.dumps(fields)
    with pytest.raises(AttestationFormatError):
        NitroDocument.from_bytes(cbor2.dumps(parts))


ENVELOPE_MUTATIONS: dict[str, Callable[[list[Any]], Any]] = {
    "alg ES256": lambda p: [cbor2.dumps({1: -7}), *p[1:]],
    "extra protected header": lambda p: [cbor2.dumps({1: -35, 4: b"kid"}), *p[1:]],
    "protected not bytes": lambda p: [{1: -35}, *p[1:]],
    "unprotected not empty": lambda p: [p[0], {4: b"kid"}, *p[2:]],
    "payload not bytes": lambda p: [p[0], p[1], cbor2.loads(p[2]), p[3]],
    "short signature": lambda p: [*p[:3], p[3][:-1]],
    "long signature": lambda p: [*p[:3], p[3] + b"\x00"],
    "three elements": lambda p: p[:3],
    "five elements": lambda p: [*p, b""],
    "a map": lambda p: {"payload": p[2]},
    "tag 17": lambda p: cbor2.CBORTag(17, p),
    "tag 98": lambda p: cbor2.CBORTag(98, p),
}


@pytest.mark.parametrize("name", sorted(ENVELOPE_MUTATIONS))
def test_malformed_cose_envelope_refused(name: str) -> None:
    changed = ENVELOPE_MUTATIONS[name](cose_parts(production()))
    with pytest.raises(AttestationFormatError):
        verify(cbor2.dumps(changed))


def test_non_preferred_cbor_encoding_refused() -> None:
    """The same value with a needlessly long length field is a second encoding."""
    document = production()
    assert document[0] == 0x84  # array(4)
    with pytest.raises(AttestationFormatError, match="preferred"):
        verify(b"\x98\x04" + document[1:])  # array, length in one extra byte


def test_indefinite_length_array_refused() -> None:
    document = production()
    with pytest.raises(AttestationFormatError):
        verify(b"\x9f" + document[1:] + b"\xff")


def test_duplicate_payload_key_refused() -> None:
    parts = cose_parts(production())
    payload = parts[2]
    # Bump the map's entry count and append a second "digest" entry.
    assert payload[0] == 0xA9  # map(9)
    parts[2] = b"\xaa" + payload[1:] + cbor2.dumps("digest") + cbor2.dumps("SHA384")
    with pytest.raises(AttestationFormatError):
        NitroDocument.from_bytes(cbor2.dumps(parts))


def test_oversized_document_refused_before_decoding() -> None:
    with pytest.raises(AttestationFormatError, match="length"):
        verify(b"\x00" * (aws_nitro.MAX_DOCUMENT_LEN + 1))


@given(st.binary(max_size=512))
def test_garbage_raises_only_the_format_error(data: bytes) -> None:
    with pytest.raises(AttestationFormatError):
        NitroDocument.from_bytes(data)


@given(st.integers(0, 7538))
def test_every_truncation_raises_only_the_format_error(cut: int) -> None:
    with pytest.raises(AttestationFormatError):
        NitroDocument.from_bytes(production()[:cut])
