"""The passkey wrap of the backup key (ADR 0011; ``docs/formats/passkey-wrap.md``).

:func:`hsmvault.crypto.key_wrap.wrap_backup_key` with ``secret`` = the passkey's PRF
output (32 bytes), ``purpose`` = ``PURPOSE_PASSKEY_PRF`` (``"passkey-prf"``) and
``context`` = ``rp_id`` (UTF-8) || 0x00 || the raw credential id. The context binds a
wrap to one credential of one relying party: a wrap moved to another credential's row
does not open.
"""

from __future__ import annotations

from hsmvault.crypto.backup_stream import BackupKey
from hsmvault.crypto.key_wrap import PURPOSE_PASSKEY_PRF, unwrap_backup_key, wrap_backup_key
from hsmvault.crypto.ristretto255 import RandomBytes
from hsmvault.errors import InvalidParameter

__all__ = ["PRF_OUTPUT_LEN", "unwrap_with_prf", "wrap_context", "wrap_with_prf"]

#: A WebAuthn PRF output (``prf.results.first``) is 32 bytes.
PRF_OUTPUT_LEN = 32


def wrap_context(rp_id: str, credential_id: bytes) -> bytes:
    """``rp_id`` (UTF-8) || 0x00 || ``credential_id``."""
    if not isinstance(rp_id, str) or not rp_id or "\x00" in rp_id:
        raise InvalidParameter("the RP id must be non-empty text without NUL")
    if not isinstance(credential_id, bytes) or not credential_id:
        raise InvalidParameter("the credential id must be non-empty bytes")
    return rp_id.encode("utf-8") + b"\x00" + credential_id


def _check_prf(prf_output: bytes) -> bytes:
    if not isinstance(prf_output, bytes) or len(prf_output) != PRF_OUTPUT_LEN:
        raise InvalidParameter(f"a PRF output is {PRF_OUTPUT_LEN} bytes")
    return prf_output


def wrap_with_prf(
    prf_output: bytes,
    backup_key: BackupKey,
    *,
    rp_id: str,
    credential_id: bytes,
    rng: RandomBytes | None = None,
) -> bytes:
    """The 93-byte wrap of ``backup_key`` under ``prf_output`` for that credential."""
    return wrap_backup_key(
        _check_prf(prf_output),
        backup_key,
        purpose=PURPOSE_PASSKEY_PRF,
        context=wrap_context(rp_id, credential_id),
        rng=rng,
    )


def unwrap_with_prf(
    prf_output: bytes, wrapped: bytes, *, rp_id: str, credential_id: bytes
) -> BackupKey:
    """Open a wrap made by :func:`wrap_with_prf`. Raises
    :class:`~hsmvault.errors.DecodeError` (malformed) or
    :class:`~hsmvault.errors.VerificationError` (wrong PRF output, RP id or credential,
    or a changed byte)."""
    return unwrap_backup_key(
        _check_prf(prf_output),
        wrapped,
        purpose=PURPOSE_PASSKEY_PRF,
        context=wrap_context(rp_id, credential_id),
    )
