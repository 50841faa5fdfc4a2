"""The two messages the namespace operator signs (ADR 0010), shared by operator, witness
and client so that each is built in exactly one place.

* :func:`submission_message` — authenticates ``POST /namespaces/{ns}/audits``: the
  operator asks the witness to sign ``digest`` as ``epoch`` of ``namespace``::

      "hsmvault/witness-submission/v1" || 0x00 || u16be(len ns) || ns (UTF-8)
      || u64be(epoch) || digest (32)

* :func:`countersignature_message` — the operator's counter-signature over the witness
  signature bytes::

      "hsmvault/operator-countersignature/v1" || 0x00 || witness signature (64)
"""

from __future__ import annotations

import struct
from typing import Final

from hsmvault.errors import InvalidParameter

__all__ = [
    "COUNTERSIGNATURE_CONTEXT",
    "SUBMISSION_CONTEXT",
    "countersignature_message",
    "submission_message",
]

SUBMISSION_CONTEXT: Final = b"hsmvault/witness-submission/v1\x00"
COUNTERSIGNATURE_CONTEXT: Final = b"hsmvault/operator-countersignature/v1\x00"
_MAX_NAMESPACE_LEN: Final = 255
_U64: Final = (1 << 64) - 1


def submission_message(namespace: str, epoch: int, digest: bytes) -> bytes:
    """Bytes the operator signs to submit ``digest`` for ``epoch`` of ``namespace``."""
    ns = namespace.encode("utf-8")
    if not 0 < len(ns) <= _MAX_NAMESPACE_LEN:
        raise InvalidParameter("namespace must be 1 to 255 bytes of UTF-8")
    if not 0 <= epoch <= _U64:
        raise InvalidParameter("epoch must fit in 64 bits")
    if len(digest) != 32:
        raise InvalidParameter("digest must be 32 bytes")
    return SUBMISSION_CONTEXT + struct.pack(">H", len(ns)) + ns + struct.pack(">Q", epoch) + digest


def countersignature_message(witness_signature: bytes) -> bytes:
    """Bytes the operator signs to counter-sign one witness signature."""
    if len(witness_signature) != 64:
        raise InvalidParameter("witness signature must be 64 bytes")
    return COUNTERSIGNATURE_CONTEXT + bytes(witness_signature)
