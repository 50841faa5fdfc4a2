"""Certificate-chain checks shared by the attestation verifiers (internal).

A deliberately small subset of RFC 5280 §6.1 path validation for chains whose order the
format fixes (no path building, no revocation: the vendor formats we verify carry the
whole chain and name no revocation process for attestation). For a chain given leaf
first and ending in a trust anchor, :func:`verify_chain` checks, in order:

1. the chain ends in one of the trusted anchors (DER equality) and the anchor is
   self-signed;
2. no certificate appears twice;
3. every link: the child's issuer is the parent's subject and the parent's key verifies
   the child's signature over its TBSCertificate (``verify_directly_issued_by``);
4. every CA certificate (all but the leaf): basicConstraints present, critical,
   ``cA`` true, ``pathLenConstraint`` (if any) not exceeded (§4.2.1.9), keyUsage
   present with ``keyCertSign`` (§4.2.1.3);
5. the leaf is not a CA and, when it has keyUsage, may sign (``digitalSignature``);
6. no certificate carries a critical extension we do not process (§4.2).

:func:`check_validity` then checks every certificate's window at the verification time
(§6.1.3 (a)(2)). Failures raise :class:`ChainError` / :class:`ExpiredError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtensionOID

from hsmvault.evidence.attestation.base import AttestationFormatError, ChainError, ExpiredError

__all__ = ["check_validity", "der", "load_der_certificate", "verify_chain"]

#: What cryptography raises on malformed certificates (found by flipping every byte of
#: the real Nitro samples).
_PARSE_FAILURES = (
    ValueError,
    TypeError,
    UnsupportedAlgorithm,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)
_PROCESSED_CRITICAL = frozenset({ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE})


def der(cert: x509.Certificate) -> bytes:
    """The certificate's DER bytes."""
    return cert.public_bytes(serialization.Encoding.DER)


def load_der_certificate(data: bytes, what: str) -> x509.Certificate:
    """Parse one DER certificate strictly: exactly one certificate, no trailing bytes,
    well-formed extensions. Raises AttestationFormatError naming ``what``."""
    try:
        cert = x509.load_der_x509_certificate(bytes(data))
        # cryptography parses these lazily: make every malformation fail here, once.
        _parsed = (
            cert.subject,
            cert.issuer,
            cert.extensions,
            cert.not_valid_before_utc,
            cert.not_valid_after_utc,
            cert.public_key(),
        )
    except _PARSE_FAILURES:
        raise AttestationFormatError(f"{what} is not a well-formed DER certificate") from None
    if der(cert) != bytes(data):
        raise AttestationFormatError(f"{what} is not a well-formed DER certificate")
    if cert.serial_number <= 0:
        raise AttestationFormatError(f"{what} has a non-positive serial number")
    return cert


def _extension(
    cert: x509.Certificate, oid: x509.ObjectIdentifier
) -> x509.Extension[x509.ExtensionType] | None:
    try:
        return cert.extensions.get_extension_for_oid(oid)
    except x509.ExtensionNotFound:
        return None


def _name(index: int, length: int) -> str:
    if index == 0:
        return "the device (leaf) certificate"
    if index == length - 1:
        return "the root certificate"
    return f"intermediate certificate {index}"


def verify_chain(
    chain: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    *,
    leaf_must_sign: bool = True,
) -> None:
    """Check that ``chain`` (leaf first, trust anchor last) is a valid certification
    path to one of ``anchors`` (module docstring, checks 1-6). Raises ChainError."""
    if len(chain) < 2:
        raise ChainError("certificate chain is too short to reach a root")
    root_der = der(chain[-1])
    if not any(der(anchor) == root_der for anchor in anchors):
        raise ChainError("certificate chain does not end in a trusted root")
    ders = [der(cert) for cert in chain]
    if len(set(ders)) != len(ders):
        raise ChainError("certificate chain repeats a certificate")
    try:
        chain[-1].verify_directly_issued_by(chain[-1])
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        raise ChainError("trusted root is not self-signed") from None
    for index in range(len(chain) - 1):
        child, parent = chain[index], chain[index + 1]
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            raise ChainError(
                f"{_name(index, len(chain))} is not issued by the next certificate"
            ) from None
    for index, cert in enumerate(chain):
        what = _name(index, len(chain))
        for extension in cert.extensions:
            if extension.critical and extension.oid not in _PROCESSED_CRITICAL:
                raise ChainError(f"{what} has an unknown critical extension")
        if index == 0:
            _check_leaf(cert, what, leaf_must_sign=leaf_must_sign)
        else:
            _check_ca(cert, what, cas_below=index - 1)


def _check_leaf(cert: x509.Certificate, what: str, *, leaf_must_sign: bool) -> None:
    basic = _extension(cert, ExtensionOID.BASIC_CONSTRAINTS)
    if basic is not None and isinstance(basic.value, x509.BasicConstraints) and basic.value.ca:
        raise ChainError(f"{what} is a CA certificate")
    usage = _extension(cert, ExtensionOID.KEY_USAGE)
    if (
        leaf_must_sign
        and usage is not None
        and isinstance(usage.value, x509.KeyUsage)
        and not usage.value.digital_signature
    ):
        raise ChainError(f"{what} may not sign")


def _check_ca(cert: x509.Certificate, what: str, *, cas_below: int) -> None:
    """``cas_below``: CA certificates between this one and the leaf."""
    basic = _extension(cert, ExtensionOID.BASIC_CONSTRAINTS)
    if not (
        basic is not None
        and basic.critical
        and isinstance(basic.value, x509.BasicConstraints)
        and basic.value.ca
    ):
        raise ChainError(f"{what} is not a CA certificate (basicConstraints)")
    if basic.value.path_length is not None and basic.value.path_length < cas_below:
        raise ChainError(f"{what} allows a shorter path (pathLenConstraint)")
    usage = _extension(cert, ExtensionOID.KEY_USAGE)
    if not (
        usage is not None and isinstance(usage.value, x509.KeyUsage) and usage.value.key_cert_sign
    ):
        raise ChainError(f"{what} may not sign certificates (keyUsage)")


def check_validity(chain: Sequence[x509.Certificate], at_time: datetime) -> None:
    """Every certificate of ``chain`` (leaf first) is valid at ``at_time`` (inclusive
    bounds). Raises ExpiredError naming the first one that is not."""
    for index, cert in enumerate(chain):
        if not cert.not_valid_before_utc <= at_time <= cert.not_valid_after_utc:
            raise ExpiredError(f"{_name(index, len(chain))} is not valid at the verification time")
