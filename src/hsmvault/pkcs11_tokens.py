"""Small PKCS#11 helpers shared by the HSM key custody and the transparency signers.

This module is a leaf: it imports nothing of ours but :mod:`hsmvault.errors`, so both
``hsm`` and ``transparency`` (which must not depend on ``hsm``) may use it. Messages name
what failed and the PKCS#11 error class (the ``CKR_`` code), never a PIN or a key.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

import pkcs11
from pkcs11 import Attribute
from pkcs11.types import Object, Session

from hsmvault.errors import CustodyError

__all__ = [
    "ED25519_EC_PARAMS",
    "LOCKED_KEY_TEMPLATE",
    "REQUIRED_PROTECTIONS",
    "check_protected",
    "find_one",
    "open_token_session",
    "token_error",
]

#: The accepted DER encodings of the Ed25519 curve parameters (CKA_EC_PARAMS): the RFC 8410
#: OID 1.3.101.112 (what we write when generating), and the PKCS#11 3.0 alternative, the
#: PrintableString "edwards25519".
ED25519_EC_PARAMS: Final = (bytes.fromhex("06032b6570"), b"\x13\x0cedwards25519")

#: Template for a secret or private key generated in the token: a persistent, private,
#: sensitive token object that cannot be extracted, modified or copied. Callers add the
#: usage attributes (``dict(LOCKED_KEY_TEMPLATE, **...)``).
LOCKED_KEY_TEMPLATE: Final[Mapping[Attribute, bool]] = MappingProxyType(
    {
        Attribute.TOKEN: True,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.MODIFIABLE: False,
        Attribute.COPYABLE: False,
    }
)

#: What an existing secret or private key of ours must carry before we use it, including
#: ``CKA_ALWAYS_SENSITIVE``, ``CKA_NEVER_EXTRACTABLE`` and ``CKA_LOCAL`` (generated in the
#: token, so a key imported under our label is refused).
REQUIRED_PROTECTIONS: Final[Mapping[Attribute, bool]] = MappingProxyType(
    {
        Attribute.TOKEN: True,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.ALWAYS_SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.NEVER_EXTRACTABLE: True,
        Attribute.LOCAL: True,
    }
)


def token_error(what: str, exc: BaseException) -> CustodyError:
    """A CustodyError saying ``what`` failed, naming only the class of ``exc``.

    The python-pkcs11 exception class names the ``CKR_`` code; its message is left out.
    """
    return CustodyError(f"{what} ({type(exc).__name__})")


def open_token_session(module_path: str, token_label: str, user_pin: str) -> Session:
    """Load the PKCS#11 module, find the one token labelled ``token_label`` and open a
    read/write session logged in as the user (PKCS#11 v2.40 ``C_OpenSession`` +
    ``C_Login``).

    Raises CustodyError (exception chaining suppressed) if the module cannot be loaded,
    there is not exactly one such token, or the login fails.
    """
    try:
        lib = pkcs11.lib(module_path)
    except Exception as exc:
        raise token_error("cannot load the PKCS#11 module", exc) from None
    try:
        token = lib.get_token(token_label=token_label)
    except pkcs11.exceptions.PKCS11Error as exc:
        raise token_error("cannot find exactly one token with the configured label", exc) from None
    try:
        return token.open(rw=True, user_pin=user_pin)
    except pkcs11.exceptions.PKCS11Error as exc:
        raise token_error("login to the token failed", exc) from None


def check_protected(
    key: Object, what: str, required: Mapping[Attribute, bool] = REQUIRED_PROTECTIONS
) -> None:
    """Raise CustodyError ("<what> in the token is not protected as required") unless every
    attribute in ``required`` has the wanted truth value on ``key`` (a missing attribute
    counts as false). PKCS#11 errors propagate unchanged."""
    values = key.get_attributes(list(required))
    for attribute, wanted in required.items():
        if bool(values.get(attribute)) is not wanted:
            raise CustodyError(f"{what} in the token is not protected as required")


def find_one(session: Session, attrs: Mapping[Attribute, Any]) -> Object | None:
    """The one object in the token matching ``attrs``, or None if there is none.

    Raises CustodyError if more than one matches (an ambiguous label is refused, not
    resolved); PKCS#11 errors propagate unchanged.
    """
    found = list(session.get_objects(dict(attrs)))
    if len(found) > 1:
        raise CustodyError("token holds more than one key under the same label")
    return found[0] if found else None
