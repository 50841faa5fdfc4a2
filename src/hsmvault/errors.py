"""The exception tree shared by every zone of hsmvault.

This module is a leaf: it imports nothing of ours, so ``crypto`` and ``wire`` may use it
without breaking their "import nothing of ours" contracts (see
``docs/decisions/0001-layout-and-trust-zones.md``).

Contract for every exception here: its message never contains secret material
(keys, passwords, plaintext, OPRF outputs). Messages name *what* failed, not *with what*.
"""

from __future__ import annotations

__all__ = [
    "BackupFormatError",
    "ChunkAuthenticationError",
    "ChunkOrderError",
    "CustodyError",
    "DecodeError",
    "DuplicateChunkError",
    "InvalidLogin",
    "InvalidParameter",
    "LockedOut",
    "ProtocolStateError",
    "RollbackError",
    "TrailingDataError",
    "TruncatedBackupError",
    "Unavailable",
    "VaultError",
    "VerificationError",
    "WrongKeyError",
]


class VaultError(Exception):
    """Base class of every error hsmvault raises on purpose."""


class DecodeError(VaultError):
    """Bytes from outside did not parse: wrong length, unknown version, trailing bytes,
    a point that is not a canonical group element, a scalar out of range, ..."""


class InvalidParameter(VaultError, ValueError):
    """A caller passed an argument outside its documented range (a programming error on
    the caller's side, not an attack)."""


class VerificationError(VaultError):
    """A signature, MAC, proof or authenticated ciphertext did not verify."""


class InvalidLogin(VerificationError):
    """An authentication attempt failed. Outward, every OPAQUE failure is this one error:
    a wrong password, a tampered message and a forged server response look the same."""


class RollbackError(VerificationError):
    """Trusted state was asked to move backwards (an older epoch, an older sealed state,
    a lower bundle epoch than already seen)."""


class CustodyError(VaultError):
    """The key-custody backend cannot do its job: module or token missing, login failed,
    keys missing, incomplete or not protected as required, or a device error. Messages
    name what failed, never a PIN or key."""


class LockedOut(VaultError):
    """The guess limit of a record was reached; its key material is gone for good."""


class Unavailable(VaultError):
    """The service (fleet, gateway) cannot answer now; retrying later may succeed."""


class ProtocolStateError(VaultError):
    """A single-use protocol state was used twice, or steps were called out of order."""


class BackupFormatError(DecodeError):
    """A backup file is malformed: bad magic, unknown version, bad header fields."""


class WrongKeyError(VerificationError):
    """A backup file was opened with a key other than the one it was made with."""


class ChunkAuthenticationError(VerificationError):
    """A backup chunk failed authentication: its bytes were changed (bit flip)."""


class ChunkOrderError(VerificationError):
    """A backup chunk stands at the wrong position: chunks were reordered or dropped."""


class DuplicateChunkError(ChunkOrderError):
    """A backup chunk that was already read appears again."""


class TruncatedBackupError(VerificationError):
    """A backup file ends before its final chunk: it was truncated."""


class TrailingDataError(VerificationError):
    """Bytes follow the final chunk of a backup file: something was appended."""
