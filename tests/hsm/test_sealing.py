"""Sealing and identity signatures, the same attacks against every custody backend.

Each test runs for the software backend and for PKCS#11 on SoftHSM2 with an Ed25519 and
with a P-256 identity key (``backend`` fixture). A sealed blob must come back only to the
node that sealed it, for the purpose and associated data it was sealed with; anything
malformed is a DecodeError, anything well-formed but not genuine a VerificationError.
"""

from __future__ import annotations

import hashlib

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hsmvault.errors import DecodeError, InvalidParameter, VaultError, VerificationError
from hsmvault.hsm.custody import base
from hsmvault.hsm.custody.base import (
    NODE_ID_LEN,
    NONCE_LEN,
    SEALED_MAGIC,
    SEALED_VERSION,
    TAG_LEN,
    KeyCustody,
    SealedBlob,
    signing_input,
    verify_signature,
)
from hsmvault.hsm.nvram import SignatureAlgorithm

PURPOSE = b"vault-state"
AD = b"record 7"
PLAINTEXT = b"guess counter = 3; the rest of the record..."
_SHARED_FIXTURE = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])

# Layout of a version-1 blob sealed for PURPOSE (see hsmvault.hsm.custody.base).
_NODE_ID = range(5, 5 + NODE_ID_LEN)
_PURPOSE_LEN_AT = 5 + NODE_ID_LEN
_PURPOSE = range(_PURPOSE_LEN_AT + 1, _PURPOSE_LEN_AT + 1 + len(PURPOSE))
_NONCE = range(_PURPOSE.stop, _PURPOSE.stop + NONCE_LEN)
_LENGTH = range(_NONCE.stop, _NONCE.stop + 4)


def _expected_error(index: int) -> type[VaultError]:
    """Framing bytes (magic, version, lengths) break the parse; every other byte is
    authenticated and breaks verification."""
    if index < 5 or index == _PURPOSE_LEN_AT or index in _LENGTH:
        return DecodeError
    return VerificationError


# -- round trips -------------------------------------------------------------------------


def test_seal_unseal_round_trip(node: KeyCustody) -> None:
    sealed = node.seal(PURPOSE, PLAINTEXT, AD)
    assert node.unseal(PURPOSE, sealed, AD) == PLAINTEXT


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 4096, 1 << 20])
def test_round_trip_of_any_length(node: KeyCustody, size: int) -> None:
    plaintext = bytes(i % 251 for i in range(size))
    sealed = node.seal(PURPOSE, plaintext)
    assert len(sealed) == _LENGTH.stop + size + TAG_LEN
    assert node.unseal(PURPOSE, sealed) == plaintext


def test_blob_names_version_node_and_purpose_and_hides_plaintext(node: KeyCustody) -> None:
    blob = SealedBlob.from_bytes(node.seal(PURPOSE, PLAINTEXT, AD))
    assert blob.node_id == node.node_id
    assert blob.purpose == PURPOSE
    assert node.seal(PURPOSE, PLAINTEXT)[:5] == SEALED_MAGIC + bytes([SEALED_VERSION])
    assert PLAINTEXT not in blob.ciphertext


def test_two_seals_of_the_same_plaintext_differ(node: KeyCustody) -> None:
    first, second = node.seal(PURPOSE, PLAINTEXT), node.seal(PURPOSE, PLAINTEXT)
    assert first != second
    assert SealedBlob.from_bytes(first).nonce != SealedBlob.from_bytes(second).nonce


# -- attacks: verification ---------------------------------------------------------------


@pytest.mark.parametrize("mask", [0x01, 0x80])
def test_every_tampered_byte_is_refused(node: KeyCustody, mask: int) -> None:
    sealed = node.seal(PURPOSE, PLAINTEXT, AD)
    for index in range(len(sealed)):
        tampered = bytearray(sealed)
        tampered[index] ^= mask
        with pytest.raises(_expected_error(index)):
            node.unseal(PURPOSE, bytes(tampered), AD)


@_SHARED_FIXTURE
@given(st.data())
def test_arbitrary_tampering_never_returns_plaintext(node: KeyCustody, data: st.DataObject) -> None:
    sealed = bytearray(node.seal(PURPOSE, PLAINTEXT, AD))
    for index in data.draw(st.sets(st.integers(0, len(sealed) - 1), min_size=1, max_size=4)):
        sealed[index] ^= data.draw(st.integers(1, 255))
    with pytest.raises((DecodeError, VerificationError)):
        node.unseal(PURPOSE, bytes(sealed), AD)


def test_wrong_purpose_refused(node: KeyCustody) -> None:
    sealed = node.seal(PURPOSE, PLAINTEXT, AD)
    with pytest.raises(VerificationError, match="purpose"):
        node.unseal(b"vault-statE", sealed, AD)


def test_wrong_associated_data_refused(node: KeyCustody) -> None:
    sealed = node.seal(PURPOSE, PLAINTEXT, AD)
    with pytest.raises(VerificationError):
        node.unseal(PURPOSE, sealed, b"record 8")
    with pytest.raises(VerificationError):
        node.unseal(PURPOSE, sealed)


def test_blob_sealed_by_another_node_refused(node: KeyCustody, other_node: KeyCustody) -> None:
    assert node.node_id != other_node.node_id
    sealed = other_node.seal(PURPOSE, PLAINTEXT, AD)
    with pytest.raises(VerificationError, match="another node"):
        node.unseal(PURPOSE, sealed, AD)


def test_other_nodes_blob_relabelled_as_ours_refused(
    node: KeyCustody, other_node: KeyCustody
) -> None:
    blob = SealedBlob.from_bytes(other_node.seal(PURPOSE, PLAINTEXT, AD))
    forged = SealedBlob(node.node_id, blob.purpose, blob.nonce, blob.ciphertext).to_bytes()
    with pytest.raises(VerificationError, match="authentication"):
        node.unseal(PURPOSE, forged, AD)


def test_blob_resealed_under_another_purpose_header_refused(node: KeyCustody) -> None:
    blob = SealedBlob.from_bytes(node.seal(PURPOSE, PLAINTEXT, AD))
    forged = SealedBlob(blob.node_id, b"other-purpose", blob.nonce, blob.ciphertext)
    with pytest.raises(VerificationError):
        node.unseal(b"other-purpose", forged.to_bytes(), AD)


# -- attacks: malformed input ------------------------------------------------------------


def test_every_truncation_is_a_decode_error(node: KeyCustody) -> None:
    sealed = node.seal(PURPOSE, PLAINTEXT, AD)
    for length in range(len(sealed)):
        with pytest.raises(DecodeError):
            node.unseal(PURPOSE, sealed[:length], AD)


@pytest.mark.parametrize("suffix", [b"\x00", b"\x00" * TAG_LEN, b"trailing"])
def test_trailing_bytes_are_a_decode_error(node: KeyCustody, suffix: bytes) -> None:
    with pytest.raises(DecodeError, match="trailing"):
        node.unseal(PURPOSE, node.seal(PURPOSE, PLAINTEXT, AD) + suffix, AD)


def test_unknown_version_is_a_decode_error(node: KeyCustody) -> None:
    sealed = bytearray(node.seal(PURPOSE, PLAINTEXT))
    sealed[4] = SEALED_VERSION + 1
    with pytest.raises(DecodeError, match="version"):
        node.unseal(PURPOSE, bytes(sealed))


@_SHARED_FIXTURE
@given(st.binary(max_size=300))
def test_garbage_is_a_decode_error(node: KeyCustody, garbage: bytes) -> None:
    header = SEALED_MAGIC + bytes([SEALED_VERSION])
    expected = (DecodeError, VerificationError) if garbage.startswith(header) else DecodeError
    with pytest.raises(expected):
        node.unseal(PURPOSE, garbage)


@_SHARED_FIXTURE
@given(st.binary(max_size=200))
def test_garbage_after_a_valid_header_prefix_is_refused(node: KeyCustody, tail: bytes) -> None:
    with pytest.raises((DecodeError, VerificationError)):
        node.unseal(PURPOSE, SEALED_MAGIC + bytes([SEALED_VERSION]) + node.node_id + tail)


@given(st.binary(max_size=200))
def test_parser_accepts_only_canonical_encodings(data: bytes) -> None:
    try:
        blob = SealedBlob.from_bytes(data)
    except DecodeError:
        return
    assert blob.to_bytes() == data


# -- caller errors -----------------------------------------------------------------------


@pytest.mark.parametrize("purpose", [b"", b"x" * 65])
def test_purpose_out_of_range_is_a_caller_error(node: KeyCustody, purpose: bytes) -> None:
    with pytest.raises(InvalidParameter):
        node.seal(purpose, PLAINTEXT)
    with pytest.raises(InvalidParameter):
        node.sign(purpose, PLAINTEXT)


def test_plaintext_over_the_limit_refused(
    node: KeyCustody, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(base, "MAX_PLAINTEXT_LEN", 100)
    node.seal(PURPOSE, bytes(100))
    with pytest.raises(InvalidParameter):
        node.seal(PURPOSE, bytes(101))


# -- identity signatures -----------------------------------------------------------------


def _verify_with_cryptography(node: KeyCustody, data: bytes, signature: bytes) -> None:
    """Check a signature with pyca/cryptography alone, not with our verify_signature."""
    public_key = node.identity_public_key()
    if node.identity.algorithm is SignatureAlgorithm.ED25519:
        ed25519.Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
    else:
        r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), public_key).verify(
            encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256())
        )


def test_signature_verifies_with_cryptography(node: KeyCustody) -> None:
    signature = node.sign(b"raft-vote", b"term 5, candidate x")
    assert len(signature) == 64
    _verify_with_cryptography(node, signing_input(b"raft-vote", b"term 5, candidate x"), signature)
    verify_signature(node.identity, b"raft-vote", b"term 5, candidate x", signature)


def test_signature_covers_purpose_label_and_context(node: KeyCustody) -> None:
    signature = node.sign(b"raft-vote", b"m")
    with pytest.raises(InvalidSignature):
        _verify_with_cryptography(node, b"m", signature)  # bare message: not what is signed
    assert signing_input(b"raft-vote", b"m") == b"hsmvault node signature v1\x00\x09raft-votem"


def test_signature_for_one_purpose_does_not_verify_for_another(node: KeyCustody) -> None:
    signature = node.sign(b"raft-vote", b"m")
    with pytest.raises(VerificationError):
        verify_signature(node.identity, b"raft-append", b"m", signature)
    # Length prefixes keep (purpose, message) splits apart.
    with pytest.raises(VerificationError):
        verify_signature(node.identity, b"raft-vot", b"em", signature)


def test_tampered_signature_or_message_refused(node: KeyCustody) -> None:
    signature = node.sign(b"raft-vote", b"m")
    with pytest.raises(VerificationError):
        verify_signature(node.identity, b"raft-vote", b"n", signature)
    for index in (0, 31, 32, 63):
        bad = bytearray(signature)
        bad[index] ^= 1
        with pytest.raises(VerificationError):
            verify_signature(node.identity, b"raft-vote", b"m", bytes(bad))
    with pytest.raises(VerificationError):
        verify_signature(node.identity, b"raft-vote", b"m", signature + b"\x00")


def test_signature_by_another_node_refused(node: KeyCustody, other_node: KeyCustody) -> None:
    with pytest.raises(VerificationError):
        verify_signature(node.identity, b"raft-vote", b"m", other_node.sign(b"raft-vote", b"m"))


def test_node_id_is_the_public_key_fingerprint(node: KeyCustody) -> None:
    if node.identity.algorithm is SignatureAlgorithm.ED25519:
        key: ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey = (
            ed25519.Ed25519PublicKey.from_public_bytes(node.identity_public_key())
        )
    else:
        key = ec.EllipticCurvePublicKey.from_encoded_point(
            ec.SECP256R1(), node.identity_public_key()
        )
    spki = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert node.node_id == hashlib.sha256(spki).digest()


def test_identity_algorithm_per_backend(node: KeyCustody, backend: str) -> None:
    expected = {
        "software": SignatureAlgorithm.ED25519,
        "pkcs11-ed25519": SignatureAlgorithm.ED25519,
        "pkcs11-p256": SignatureAlgorithm.ECDSA_P256_SHA256,
    }[backend]
    assert node.identity.algorithm is expected
    assert len(node.identity_public_key()) == (32 if expected is SignatureAlgorithm.ED25519 else 65)


def test_repr_shows_no_key_material(node: KeyCustody) -> None:
    text = repr(node)
    assert node.node_id.hex()[:16] in text
    assert "key" not in text.lower()
