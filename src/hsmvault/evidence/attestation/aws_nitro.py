"""AWS Nitro Enclaves attestation documents: a real vendor format, verified to the
pinned AWS Nitro root.

Spec: aws/aws-nitro-enclaves-nsm-api ``docs/attestation_process.md`` (the document, its
syntactic checks §3.2.2 and the chain rules §3.2.3), RFC 8152 (COSE_Sign1 §4.2, the
``Sig_structure`` §4.4, ES384 §8.1) and RFC 8949 (CBOR). A document is::

    COSE_Sign1 = [protected: bstr .cbor {1: -35}, unprotected: {}, payload: bstr,
                  signature: bstr .size 96]      ; untagged, or CBOR tag 18

and the payload a CBOR map with exactly the keys ``module_id``, ``digest``,
``timestamp``, ``pcrs``, ``certificate``, ``cabundle`` and optionally ``public_key``,
``user_data``, ``nonce``.

:class:`NitroVerifier` checks, in this order (each step's failure its own error):

1. **parse** (:class:`AttestationFormatError`): at most :data:`MAX_DOCUMENT_LEN` bytes;
   CBOR with definite lengths, no duplicate map keys, in preferred serialization
   (re-encoding the decoded value gives back the same bytes, so there are no trailing
   bytes and no second encoding of one document); the COSE_Sign1 shape above; the
   protected header exactly ``{1: -35}``; an empty unprotected header; the payload's
   fields with the types and sizes of §3.2.2. Two relaxations, both seen in real
   documents: ``public_key``/``user_data``/``nonce`` may be null (the NSM encodes an
   absent field so) and ``user_data``/``nonce`` may be up to 1024 bytes (the CDDL
   limit; §3.2.2.2 says 512). The digest must be ``SHA384`` and every PCR 48 bytes.
2. **chain** (:class:`ChainError`): ``certificate`` ← ``cabundle[N-1]`` ← … ←
   ``cabundle[0]``, and ``cabundle[0]`` is a trusted root: by default the AWS Nitro
   Enclaves Root-G1 shipped in ``roots/`` (its certificate SHA-256 is checked when it
   is loaded); CA and key-usage rules of §3.2.3.2-3 (see ``_x509``); the leaf key is
   ECDSA P-384.
3. **time** (:class:`ExpiredError`): every certificate, the root included, is valid at
   ``at_time``, and the document's ``timestamp`` lies inside the leaf's window.
4. **signature** (:class:`SignatureError`): ECDSA P-384 / SHA-384 under the leaf key
   over ``Sig_structure = ["Signature1", protected, h'', payload]``; the raw ``r || s``
   (48 + 48 bytes) is converted to DER for ``cryptography``.
5. **policy** (:class:`PolicyError`): PCR0, PCR1 and PCR2 must be present and not all
   zero: an enclave started in debug mode reports zeros, and its memory is open to the
   parent instance, so its documents prove nothing.
6. **expectations** (:func:`~hsmvault.evidence.attestation.base.apply_expectations`):
   PCR0 is the primary ``measurement``; ``PCR<n>`` name the others.

The attested key is the document's ``public_key`` field (bytes as the enclave put them).
Nitro attests the enclave image, not key attributes: the key properties are reported
as held by the measured enclave code (``basis="nitro-enclave-measurement"``) when a
``public_key`` is present, and a warning says so.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from hsmvault.errors import InvalidParameter
from hsmvault.evidence.attestation._x509 import (
    check_validity,
    der,
    load_der_certificate,
    verify_chain,
)
from hsmvault.evidence.attestation.base import (
    AttestationFormatError,
    AttestationResult,
    AttestationVerifier,
    CertificateSummary,
    ChainError,
    Expectations,
    ExpiredError,
    KeyProperties,
    PolicyError,
    SignatureError,
    apply_expectations,
    check_time,
)

__all__ = [
    "AWS_NITRO_ROOT_G1_SHA256",
    "FORMAT",
    "MAX_DOCUMENT_LEN",
    "NitroDocument",
    "NitroVerifier",
    "aws_nitro_root",
]

FORMAT = "aws-nitro-enclaves"
#: SHA-256 of the DER of the AWS Nitro Enclaves Root-G1 certificate (CN=aws.nitro-
#: enclaves, valid 2019-10-28 to 2049-10-28). AWS publishes the SHA-256 of the zip it
#: ships the PEM in (8cf60e2b…faff7c); this is the certificate's own fingerprint.
AWS_NITRO_ROOT_G1_SHA256 = "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"
_ROOT_RESOURCE = "AWS_NitroEnclaves_Root-G1.pem"

#: The payload is at most 16 KiB (§3.1); the envelope adds a few dozen bytes.
MAX_DOCUMENT_LEN = 16384 + 1024
_MAX_CBOR_DEPTH = 6
_COSE_SIGN1_TAG = 18
_ALG_ES384 = -35
_SIGNATURE_LEN = 96
_PCR_LEN = 48  # SHA-384
_MAX_CERT_LEN = 1024
_MAX_CABUNDLE = 16
_MAX_USER_FIELD_LEN = 1024
_MAX_MODULE_ID_LEN = 1024
_REQUIRED = frozenset({"module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle"})
_OPTIONAL = frozenset({"public_key", "user_data", "nonce"})
_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: PCR0: enclave image; PCR1: Linux kernel and bootstrap; PCR2: application.
_DEBUG_PCRS = (0, 1, 2)

_DECODE_FAILURES = (
    cbor2.CBORError,
    ValueError,
    TypeError,
    OverflowError,
    RecursionError,
    KeyError,
    IndexError,
)


@functools.cache
def aws_nitro_root() -> x509.Certificate:
    """The pinned AWS Nitro Enclaves Root-G1, loaded from this package's ``roots/``.
    Raises ChainError if the shipped file is not exactly that certificate."""
    pem = importlib.resources.files(__package__).joinpath("roots", _ROOT_RESOURCE).read_bytes()
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise ChainError("the shipped AWS Nitro root is not a certificate") from None
    if hashlib.sha256(der(cert)).hexdigest() != AWS_NITRO_ROOT_G1_SHA256:
        raise ChainError("the shipped AWS Nitro root is not the pinned certificate")
    return cert


def _strict_cbor(data: bytes, what: str) -> Any:
    """Decode one CBOR item that must be in preferred serialization (RFC 8949 §4.1)."""
    try:
        value = cbor2.loads(
            data, allow_indefinite=False, allow_duplicate_keys=False, max_depth=_MAX_CBOR_DEPTH
        )
        again = cbor2.dumps(value)
    except _DECODE_FAILURES:
        raise AttestationFormatError(f"{what} is not well-formed CBOR") from None
    if again != data:
        raise AttestationFormatError(f"{what} is not in preferred CBOR serialization")
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bytes(value: object, what: str, low: int, high: int) -> bytes:
    if not isinstance(value, bytes) or not low <= len(value) <= high:
        raise AttestationFormatError(f"{what} must be a byte string of {low}..{high} bytes")
    return value


def _optional_bytes(payload: Mapping[str, object], key: str, low: int) -> bytes | None:
    value = payload.get(key)
    if value is None:
        return None
    return _bytes(value, key, low, _MAX_USER_FIELD_LEN)


@dataclass(frozen=True)
class NitroDocument:
    """A parsed — not yet verified — Nitro attestation document.

    :meth:`from_bytes` is step 1 of the module's checklist and raises only
    :class:`AttestationFormatError`.
    """

    protected: bytes
    payload: bytes
    signature: bytes
    module_id: str
    timestamp_ms: int
    pcrs: Mapping[int, bytes]
    certificate: bytes
    cabundle: tuple[bytes, ...]
    public_key: bytes | None
    user_data: bytes | None
    nonce: bytes | None

    @property
    def timestamp(self) -> datetime:
        """The document's ``timestamp`` as an aware UTC datetime."""
        return _UNIX_EPOCH + timedelta(milliseconds=self.timestamp_ms)

    @classmethod
    def from_bytes(cls, data: bytes) -> NitroDocument:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidParameter("an attestation document is bytes")
        data = bytes(data)
        if not 1 <= len(data) <= MAX_DOCUMENT_LEN:
            raise AttestationFormatError("attestation document has an invalid length")
        outer = _strict_cbor(data, "attestation document")
        if isinstance(outer, cbor2.CBORTag):
            if outer.tag != _COSE_SIGN1_TAG:
                raise AttestationFormatError("attestation document has an unexpected CBOR tag")
            outer = outer.value
        if not isinstance(outer, list | tuple) or len(outer) != 4:
            raise AttestationFormatError("attestation document is not a COSE_Sign1 array")
        protected, unprotected, payload, signature = outer
        if not isinstance(protected, bytes):
            raise AttestationFormatError("COSE protected header must be a byte string")
        header = _strict_cbor(protected, "COSE protected header")
        if not (
            isinstance(header, Mapping)
            and len(header) == 1
            and _is_int(next(iter(header)))
            and header.get(1) == _ALG_ES384
            and _is_int(header.get(1))
        ):
            raise AttestationFormatError("COSE protected header must be exactly {1: -35}")
        if not (isinstance(unprotected, Mapping) and not unprotected):
            raise AttestationFormatError("COSE unprotected header must be empty")
        if not isinstance(payload, bytes):
            raise AttestationFormatError("COSE payload must be a byte string")
        _bytes(signature, "COSE signature", _SIGNATURE_LEN, _SIGNATURE_LEN)
        return cls._parse_payload(protected, payload, signature)

    @classmethod
    def _parse_payload(cls, protected: bytes, payload: bytes, signature: bytes) -> NitroDocument:
        fields = _strict_cbor(payload, "attestation payload")
        if not isinstance(fields, Mapping) or not all(isinstance(k, str) for k in fields):
            raise AttestationFormatError("attestation payload must be a map of text keys")
        keys = set(fields)
        if not keys >= _REQUIRED:
            raise AttestationFormatError("attestation payload lacks a mandatory field")
        if keys - _REQUIRED - _OPTIONAL:
            raise AttestationFormatError("attestation payload has an unknown field")
        module_id = fields["module_id"]
        if not (isinstance(module_id, str) and 1 <= len(module_id) <= _MAX_MODULE_ID_LEN):
            raise AttestationFormatError("module_id must be a non-empty text string")
        if fields["digest"] != "SHA384":
            raise AttestationFormatError("digest must be SHA384")
        timestamp = fields["timestamp"]
        if not (_is_int(timestamp) and 0 < timestamp < 2**64):
            raise AttestationFormatError("timestamp must be a positive 64-bit integer")
        try:
            _UNIX_EPOCH + timedelta(milliseconds=timestamp)
        except OverflowError:
            raise AttestationFormatError("timestamp is out of range") from None
        pcrs = fields["pcrs"]
        if not (isinstance(pcrs, Mapping) and 1 <= len(pcrs) <= 32):
            raise AttestationFormatError("pcrs must be a map of 1..32 entries")
        for index, value in pcrs.items():
            if not (_is_int(index) and 0 <= index < 32):
                raise AttestationFormatError("a PCR index must be an integer in 0..31")
            _bytes(value, f"PCR{index}", _PCR_LEN, _PCR_LEN)
        certificate = _bytes(fields["certificate"], "certificate", 1, _MAX_CERT_LEN)
        cabundle = fields["cabundle"]
        if not (isinstance(cabundle, list | tuple) and 1 <= len(cabundle) <= _MAX_CABUNDLE):
            raise AttestationFormatError("cabundle must be a non-empty array")
        bundle = tuple(_bytes(c, "cabundle entry", 1, _MAX_CERT_LEN) for c in cabundle)
        return cls(
            protected=protected,
            payload=payload,
            signature=signature,
            module_id=module_id,
            timestamp_ms=timestamp,
            pcrs=dict(sorted(pcrs.items())),
            certificate=certificate,
            cabundle=bundle,
            public_key=_optional_bytes(fields, "public_key", 1),
            user_data=_optional_bytes(fields, "user_data", 0),
            nonce=_optional_bytes(fields, "nonce", 0),
        )

    def sig_structure(self) -> bytes:
        """The bytes the signature covers: RFC 8152 §4.4 ``Sig_structure`` for
        COSE_Sign1 with empty external AAD."""
        return cbor2.dumps(["Signature1", self.protected, b"", self.payload])


class NitroVerifier(AttestationVerifier):
    """Verifier for AWS Nitro Enclaves attestation documents (module docstring)."""

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
        anchors = [aws_nitro_root()] if trust_anchors is None else list(trust_anchors)
        # 1. parse
        doc = NitroDocument.from_bytes(document)
        leaf = load_der_certificate(doc.certificate, "the device certificate")
        bundle = [
            load_der_certificate(c, f"cabundle certificate {i}") for i, c in enumerate(doc.cabundle)
        ]
        # 2. chain: leaf <- cabundle[N-1] <- ... <- cabundle[0] = a trusted root
        chain = [leaf, *reversed(bundle)]
        verify_chain(chain, anchors)
        leaf_key = leaf.public_key()
        if not (
            isinstance(leaf_key, ec.EllipticCurvePublicKey)
            and isinstance(leaf_key.curve, ec.SECP384R1)
        ):
            raise ChainError("the device certificate key is not ECDSA P-384")
        # 3. time
        check_validity(chain, at_time)
        if not leaf.not_valid_before_utc <= doc.timestamp <= leaf.not_valid_after_utc:
            raise ExpiredError("document timestamp is outside the device certificate's window")
        # 4. signature
        r = int.from_bytes(doc.signature[:48], "big")
        s = int.from_bytes(doc.signature[48:], "big")
        try:
            leaf_key.verify(
                encode_dss_signature(r, s), doc.sig_structure(), ec.ECDSA(hashes.SHA384())
            )
        except InvalidSignature:
            raise SignatureError("COSE_Sign1 signature does not verify") from None
        # 5. policy: no debug-mode enclaves
        zero = bytes(_PCR_LEN)
        debug = [doc.pcrs.get(i) in (None, zero) for i in _DEBUG_PCRS]
        if all(debug):
            raise PolicyError("enclave runs in debug mode (PCR0-2 are zero): refused")
        if any(debug):
            raise PolicyError("PCR0, PCR1 or PCR2 is missing or zero: refused")
        # 6. expectations
        warnings: tuple[str, ...] = (
            "AWS Nitro attests the enclave image (PCRs), not key attributes: the key is "
            "as safe as the measured code keeps it",
        )
        result = AttestationResult(
            format=FORMAT,
            emulated=False,
            device_identity=doc.module_id,
            chain=tuple(CertificateSummary.of(c) for c in chain),
            issued_at=doc.timestamp,
            attested_public_key=doc.public_key,
            key_properties=KeyProperties(
                generated_inside=doc.public_key is not None,
                non_extractable=doc.public_key is not None,
                basis="nitro-enclave-measurement",
            ),
            measurement=doc.pcrs[0],
            measurements={f"PCR{i}": v for i, v in doc.pcrs.items()},
            nonce=doc.nonce,
            user_data=doc.user_data,
            warnings=warnings,
        )
        return apply_expectations(result, expected, at_time)
