"""HSM attestation: one verifier interface, one plugin per vendor format.

``base``             the interface, the result and expectation types, the error per broken
                     link, the registry (:func:`verifier_for`)
``software_vendor``  the hsmvault "software vendor" CA and its documents, for software and
                     SoftHSM2 nodes: EMULATED hardware, labelled so in every result
``aws_nitro``        AWS Nitro Enclaves attestation documents (COSE_Sign1, ES384), pinned
                     to the AWS Nitro Enclaves Root-G1 in ``roots/``
``gcp_marvell``      Google Cloud HSM (Marvell LiquidSecurity) key attestations

Plugins are imported on demand (``verifier_for(name)``), so importing this package loads
no vendor dependency such as ``cbor2``.
"""

from hsmvault.evidence.attestation.base import (
    EMULATED_WARNING,
    AttestationError,
    AttestationFormatError,
    AttestationResult,
    AttestationVerifier,
    CertificateSummary,
    ChainError,
    Expectations,
    ExpiredError,
    KeyProperties,
    KeyPropertiesError,
    MeasurementMismatch,
    PolicyError,
    SignatureError,
    UnsupportedFormat,
    registered_formats,
    verifier_for,
)

__all__ = [
    "EMULATED_WARNING",
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
    "registered_formats",
    "verifier_for",
]
