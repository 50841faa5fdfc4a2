"""Key custody: a node's identity signing key and sealing key, behind one interface.

``base``      the :class:`KeyCustody` interface, the sealed-blob format, signature checks
``software``  :class:`SoftwareCustody`, the embedded default (does NOT protect keys from
              the host: they live in process memory and in the node's NVRAM)
``pkcs11``    :class:`Pkcs11Custody`, keys generated in and never leaving a PKCS#11 token

See ``docs/decisions/0003-key-custody.md``. The PKCS#11 backend is imported on demand
(``from hsmvault.hsm.custody.pkcs11 import Pkcs11Custody``) so that the software default
does not need ``python-pkcs11`` loaded.
"""

from hsmvault.hsm.custody.base import (
    CustodyError,
    KeyCustody,
    SealedBlob,
    bind_identity,
    signing_input,
    verify_signature,
)
from hsmvault.hsm.custody.software import SoftwareCustody

__all__ = [
    "CustodyError",
    "KeyCustody",
    "SealedBlob",
    "SoftwareCustody",
    "bind_identity",
    "signing_input",
    "verify_signature",
]
