"""Why a validation bundle, a witness answer or a log proof was refused.

One class per check of the client's verification order (ADR 0010), so a caller, a test
and a log line can tell them apart. All are :class:`~hsmvault.errors.VerificationError`
except :class:`BundleFormatError`, which is a :class:`~hsmvault.errors.DecodeError`
(bytes that do not parse). Messages name the check that failed, never key material.
"""

from __future__ import annotations

from hsmvault.errors import DecodeError, VerificationError

__all__ = [
    "ArtifactDigestMismatch",
    "BundleError",
    "BundleFormatError",
    "CheckpointInconsistent",
    "CounterSignatureInvalid",
    "EpochRollback",
    "FleetKeyMismatch",
    "InclusionProofInvalid",
    "NamespaceMismatch",
    "StaleBundle",
    "UnknownWitnessKey",
    "WitnessKeyNotYetValid",
    "WitnessRefused",
    "WitnessSignatureInvalid",
]


class BundleError(VerificationError):
    """Base class: a validation bundle (or its proofs) failed a check."""


class BundleFormatError(DecodeError):
    """A bundle, artifact, checkpoint or proof did not parse (strict, canonical JSON)."""


class ArtifactDigestMismatch(BundleError):
    """Step 1: SHA-256 of the artifact bytes is not the digest the witness signed."""


class UnknownWitnessKey(BundleError):
    """Step 2: the witness key id is not among the pinned witness keys."""


class WitnessKeyNotYetValid(BundleError):
    """Step 2: the signature's timestamp is before the pinned key's ``not_before``."""


class WitnessSignatureInvalid(BundleError):
    """Step 2: the Ed25519 signature over the Plexi ``SignatureMessage`` does not verify."""


class CounterSignatureInvalid(BundleError):
    """Step 3: the operator's counter-signature over the witness signature does not verify."""


class NamespaceMismatch(BundleError):
    """Step 4: the bundle is for another namespace than the client's."""


class EpochRollback(BundleError):
    """Step 5: the epoch is below the highest epoch this client has already accepted."""


class StaleBundle(BundleError):
    """Step 6: the witness timestamp is outside the freshness window (freeze attack)."""


class FleetKeyMismatch(BundleError):
    """Step 7: the fleet of this session, or a key it used, is not in the artifact."""


class InclusionProofInvalid(BundleError):
    """Step 8: the entry is not in the witness log at the checkpoint given."""


class CheckpointInconsistent(BundleError):
    """Step 8: the checkpoint is not an extension of the last one seen (split view)."""


class WitnessRefused(BundleError):
    """The witness refused a submission (out-of-order epoch, duplicate digest, bad auth)."""
