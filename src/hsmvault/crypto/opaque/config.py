"""Application parameters of OPAQUE-3DH (RFC 9807 §7, §8), in one place."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from hsmvault.crypto.ksf import Argon2idKsf, Ksf
from hsmvault.errors import InvalidParameter

__all__ = ["DEFAULT_CONTEXT", "OpaqueConfig"]

#: The default ``context`` (RFC 9807 §6.4.2.1, §8): it names this application and
#: protocol version so that a transcript can never be valid for another protocol
#: (cross-protocol and downgrade protection). Change the version when the protocol
#: configuration changes.
DEFAULT_CONTEXT: Final = b"hsmvault OPAQUE-3DH ristretto255-SHA512 v1"


@dataclass(frozen=True, slots=True)
class OpaqueConfig:
    """What client and server must agree on besides the ciphersuite.

    * ``context`` — shared context bound into the 3DH transcript (RFC 9807 §6.4.2.1);
      at most 65535 bytes. Default :data:`DEFAULT_CONTEXT`. Interoperating with
      opaque-ke's defaults needs ``b""``.
    * ``ksf`` — the client's key-stretching function (RFC 9807 §2.3, §10.8). Default
      :class:`~hsmvault.crypto.ksf.Argon2idKsf` with
      :data:`~hsmvault.crypto.ksf.DEFAULT_KSF_PARAMS` (RFC 9106 §4 second option:
      t=3, p=4, m=64 MiB). The server never runs the KSF; a record must be used with
      the KSF it was registered with (store ``ksf.params`` beside the record).
    """

    context: bytes = DEFAULT_CONTEXT
    ksf: Ksf = field(default_factory=Argon2idKsf)

    def __post_init__(self) -> None:
        if not isinstance(self.context, bytes) or len(self.context) > 0xFFFF:
            raise InvalidParameter("context must be at most 65535 bytes")
