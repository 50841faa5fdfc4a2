"""The attestation-verifier plugin interface: one door for every vendor format.

An **attestation document** is a vendor's signed statement about one device: which
device it is (a certificate chain to the vendor's root), which key it holds and how
(generated inside, never extractable), and which code runs in it (a measurement).
Each format is a plugin, an :class:`AttestationVerifier` with a ``format`` name, found
through :func:`verifier_for`. Every plugin returns the same :class:`AttestationResult`
or raises one error per broken link, all under :class:`AttestationError`
(a :class:`~hsmvault.errors.VerificationError`):

====================================  ==================================================
:class:`AttestationFormatError`       the bytes do not parse (also a ``DecodeError``)
:class:`ChainError`                   the device certificate does not chain to the
                                      vendor root the caller trusts
:class:`ExpiredError`                 a certificate (or the document) is outside its
                                      validity window at the verification time
:class:`SignatureError`               the document's signature does not verify
:class:`KeyPropertiesError`           the key is not attested as generated inside and
                                      non-extractable (when required)
:class:`MeasurementMismatch`          the measured code is not the expected code
:class:`PolicyError`                  a well-formed, genuine document that policy
                                      refuses (debug mode, emulated hardware not
                                      allowed, another nonce or key than expected)
:class:`UnsupportedFormat`            no verifier is registered under that name
====================================  ==================================================

Verification never returns a bool. The verification time is always an input
(``at_time``, timezone-aware): the vendor certificates of real samples are short-lived,
and an auditor re-checks old ceremonies at the time they were held.

Results from **emulated** hardware (the hsmvault "software vendor", see
:mod:`hsmvault.evidence.attestation.software_vendor`) carry ``emulated=True`` and a
warning; a verifier refuses them unless the caller sets
``Expectations.unsafe_allow_emulated``.

This module imports no vendor format (no ``cbor2``): plugins load on demand.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import ClassVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from hsmvault.errors import DecodeError, InvalidParameter, VerificationError

__all__ = [
    "EMULATED_WARNING",
    "MAX_CLOCK_SKEW",
    "AttestationError",
    "AttestationFormatError",
    "AttestationResult",
    "AttestationVerifier",
    "CertificateSummary",
    "ChainError",
    "Expectations",
    "ExpiredError",
    "KeyProperties",
    "KeyPropertiesError",
    "MeasurementMismatch",
    "PolicyError",
    "SignatureError",
    "UnsupportedFormat",
    "apply_expectations",
    "check_time",
    "registered_formats",
    "verifier_for",
]

#: How far a document's own time may lie after the verification time.
MAX_CLOCK_SKEW = timedelta(minutes=5)

#: The warning every result from emulated hardware carries (and reports print).
EMULATED_WARNING = (
    "EMULATED HARDWARE: attested by the hsmvault software vendor CA, not by a hardware "
    "vendor; it proves which keys and code a deployment used, not that a device kept them"
)


class AttestationError(VerificationError):
    """Base class: an attestation document was refused."""


class AttestationFormatError(AttestationError, DecodeError):
    """The document (or a certificate in it) does not parse, or breaks the format's
    syntax rules: wrong types, unknown or missing fields, bad lengths, trailing bytes."""


class ChainError(AttestationError):
    """The device certificate does not chain to the trusted vendor root: a link's names
    or signature do not match, a CA lacks the CA extensions, the chain ends in another
    root, or an unknown critical extension is present."""


class ExpiredError(AttestationError):
    """A certificate of the chain, or the document itself, is outside its validity
    window at the verification time (or older than ``Expectations.max_age``)."""


class SignatureError(AttestationError):
    """The document's signature does not verify under the device certificate's key."""


class KeyPropertiesError(AttestationError):
    """The attested key is not shown to be generated inside the device and
    non-extractable, and the caller requires it."""


class MeasurementMismatch(AttestationError):
    """The measurement (code identity) differs from the expected one."""


class PolicyError(AttestationError):
    """A genuine document that policy refuses: debug mode, emulated hardware without
    ``unsafe_allow_emulated``, or a nonce, key or user data other than expected."""


class UnsupportedFormat(AttestationError):
    """No verifier is registered for the requested format name."""


@dataclass(frozen=True)
class KeyProperties:
    """How the attested key is held, and on what ``basis`` the verifier says so
    (e.g. ``"pkcs11-attributes"``: the token's CKA_LOCAL / CKA_EXTRACTABLE flags)."""

    generated_inside: bool
    non_extractable: bool
    basis: str


@dataclass(frozen=True)
class CertificateSummary:
    """The facts of one certificate a report shows (no key material)."""

    subject: str
    issuer: str
    serial: str
    not_before: datetime
    not_after: datetime
    sha256: str

    @classmethod
    def of(cls, cert: x509.Certificate) -> CertificateSummary:
        der = cert.public_bytes(serialization.Encoding.DER)
        return cls(
            subject=cert.subject.rfc4514_string(),
            issuer=cert.issuer.rfc4514_string(),
            serial=format(cert.serial_number, "x"),
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            sha256=hashlib.sha256(der).hexdigest(),
        )


@dataclass(frozen=True)
class Expectations:
    """What the caller requires of a document beyond "genuine", checked by
    :func:`apply_expectations` after the format's own checks. ``None`` means "not
    checked".

    * ``measurement``: the expected primary measurement (hsmvault formats: the SHA-256
      of the reproducible build; AWS Nitro: PCR0), compared in constant time;
    * ``measurements``: further expected values by name (``"PCR1"``, ...);
    * ``public_key``: the attested key must be exactly these bytes;
    * ``nonce`` / ``user_data``: the document must carry exactly these bytes;
    * ``max_age``: the document must be at most this old at ``at_time``;
    * ``require_key_properties``: the key must be attested as generated inside and
      non-extractable (default True);
    * ``unsafe_allow_emulated``: accept documents of emulated hardware (the software
      vendor). Off by default: a deployment that claims hardware must not pass with
      emulated evidence. Results stay labelled ``emulated`` either way.
    """

    measurement: bytes | None = None
    measurements: Mapping[str, bytes] = field(default_factory=dict)
    public_key: bytes | None = None
    nonce: bytes | None = None
    user_data: bytes | None = None
    max_age: timedelta | None = None
    require_key_properties: bool = True
    unsafe_allow_emulated: bool = False


@dataclass(frozen=True)
class AttestationResult:
    """What a verified document establishes.

    ``chain`` runs from the device (leaf) certificate to the trust anchor. ``measurement``
    is the format's primary measurement and ``measurements`` every measured value by
    name. ``attested_public_key`` is the key bytes as the document states them (format
    specific: raw key or DER SubjectPublicKeyInfo). ``emulated`` is True for the hsmvault
    software vendor; its ``warnings`` then start with :data:`EMULATED_WARNING`.
    """

    format: str
    emulated: bool
    device_identity: str
    chain: tuple[CertificateSummary, ...]
    issued_at: datetime
    attested_public_key: bytes | None
    key_properties: KeyProperties
    measurement: bytes | None
    measurements: Mapping[str, bytes]
    nonce: bytes | None = None
    user_data: bytes | None = None
    warnings: tuple[str, ...] = ()

    @property
    def attested_key_digest(self) -> bytes | None:
        """SHA-256 of ``attested_public_key`` (what reports and transcripts cite)."""
        if self.attested_public_key is None:
            return None
        return hashlib.sha256(self.attested_public_key).digest()


class AttestationVerifier(ABC):
    """A verifier of one attestation format. Stateless: one instance may verify any
    number of documents, from any thread."""

    #: The format name this verifier is registered under.
    format: ClassVar[str]

    @abstractmethod
    def verify(
        self,
        document: bytes,
        *,
        trust_anchors: Sequence[x509.Certificate] | None,
        at_time: datetime,
        expected: Expectations,
    ) -> AttestationResult:
        """Verify ``document`` at ``at_time`` against ``trust_anchors`` (the vendor
        roots the caller trusts; ``None`` = the roots pinned in this package, for
        formats that pin one) and ``expected``. Returns the result or raises an
        :class:`AttestationError` subclass naming the broken link."""


#: format name -> "module:class"; loaded on demand so that no plugin's dependencies
#: (cbor2, ...) load until that format is asked for.
_REGISTRY: dict[str, str] = {
    "hsmvault-software-vendor": (
        "hsmvault.evidence.attestation.software_vendor:SoftwareVendorVerifier"
    ),
    "aws-nitro-enclaves": "hsmvault.evidence.attestation.aws_nitro:NitroVerifier",
    "gcp-cloud-hsm-marvell": "hsmvault.evidence.attestation.gcp_marvell:MarvellVerifier",
}


def registered_formats() -> tuple[str, ...]:
    """The format names :func:`verifier_for` knows, sorted."""
    return tuple(sorted(_REGISTRY))


def verifier_for(format_name: str) -> AttestationVerifier:
    """The verifier registered for ``format_name``; raises :class:`UnsupportedFormat`."""
    target = _REGISTRY.get(format_name)
    if target is None:
        raise UnsupportedFormat(f"no attestation verifier for format {format_name!r}")
    module_name, _, class_name = target.partition(":")
    verifier_class = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(verifier_class, type) and issubclass(verifier_class, AttestationVerifier)):
        raise UnsupportedFormat(f"registered verifier for {format_name!r} is not a verifier")
    if verifier_class.format != format_name:
        raise UnsupportedFormat(f"registered verifier for {format_name!r} names another format")
    verifier: AttestationVerifier = verifier_class()
    return verifier


def check_time(at_time: datetime) -> datetime:
    """``at_time`` as an aware UTC datetime; InvalidParameter if it is naive."""
    if not isinstance(at_time, datetime) or at_time.tzinfo is None:
        raise InvalidParameter("the verification time must be a timezone-aware datetime")
    return at_time.astimezone(UTC)


def _same(actual: bytes | None, wanted: bytes) -> bool:
    return actual is not None and hmac.compare_digest(actual, wanted)


def apply_expectations(
    result: AttestationResult, expected: Expectations, at_time: datetime
) -> AttestationResult:
    """The caller's requirements, checked in this order on a result whose document is
    already verified (every plugin ends with this call):

    1. emulated hardware only with ``unsafe_allow_emulated`` — else PolicyError;
    2. the document is not dated after ``at_time`` (beyond :data:`MAX_CLOCK_SKEW`) nor
       older than ``max_age`` at ``at_time`` — else ExpiredError;
    3. key properties (generated inside, non-extractable) if required — else
       KeyPropertiesError;
    4. ``public_key``, ``nonce``, ``user_data`` equal — else PolicyError;
    5. ``measurement`` and every named ``measurements`` value equal — else
       MeasurementMismatch.

    Returns ``result`` unchanged.
    """
    at_time = check_time(at_time)
    if result.emulated and not expected.unsafe_allow_emulated:
        raise PolicyError("document attests emulated hardware, which this policy refuses")
    if result.issued_at > at_time + MAX_CLOCK_SKEW:
        raise ExpiredError("document is dated after the verification time")
    if expected.max_age is not None and at_time - result.issued_at > expected.max_age:
        raise ExpiredError("document is older than the maximum age allowed")
    if expected.require_key_properties and not (
        result.key_properties.generated_inside and result.key_properties.non_extractable
    ):
        raise KeyPropertiesError(
            "key is not attested as generated inside the device and non-extractable"
        )
    if expected.public_key is not None and not _same(
        result.attested_public_key, expected.public_key
    ):
        raise PolicyError("document attests another public key than expected")
    if expected.nonce is not None and not _same(result.nonce, expected.nonce):
        raise PolicyError("document carries another nonce than expected")
    if expected.user_data is not None and not _same(result.user_data, expected.user_data):
        raise PolicyError("document carries other user data than expected")
    if expected.measurement is not None and not _same(result.measurement, expected.measurement):
        raise MeasurementMismatch("measurement differs from the expected measurement")
    for name, wanted in sorted(expected.measurements.items()):
        if not _same(result.measurements.get(name), wanted):
            raise MeasurementMismatch(f"measurement {name} differs from the expected value")
    return result
