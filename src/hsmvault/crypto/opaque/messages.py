"""OPAQUE-3DH wire structures, ristretto255-SHA512 (RFC 9807 §4.1.1, §5.1, §6.1, §6.3.1).

Each structure is a frozen dataclass whose :meth:`to_bytes` is the RFC's byte-exact
encoding (fixed-length fields concatenated, no length prefixes) and whose
:meth:`from_bytes` parses strictly: the input must have exactly the RFC length (no
trailing bytes), and every group element must be a canonical, non-identity ristretto255
encoding (RFC 9497 §2.1 ``DeserializeElement``; RFC 9807 §10.7). Any failure raises
:class:`~hsmvault.errors.DecodeError` and nothing else. Constructors check field lengths
too, so an instance is always encodable.

Sizes: ``Noe = Npk = Nn = 32``, ``Nm = Nh = 64``.

==========================  =====  ==========================================
structure                   bytes  layout
==========================  =====  ==========================================
Envelope                       96  envelope_nonce[32] auth_tag[64]
RegistrationRequest            32  blinded_message[32]
RegistrationResponse           64  evaluated_message[32] server_public_key[32]
RegistrationRecord            192  client_public_key[32] masking_key[64]
                                   envelope[96]
CredentialRequest              32  blinded_message[32]
AuthRequest                    64  client_nonce[32] client_public_keyshare[32]
KE1                            96  CredentialRequest AuthRequest
CredentialResponse            192  evaluated_message[32] masking_nonce[32]
                                   masked_response[128]
AuthResponse                  128  server_nonce[32] server_public_keyshare[32]
                                   server_mac[64]
KE2                           320  CredentialResponse AuthResponse
KE3                            64  client_mac[64]
==========================  =====  ==========================================
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import ClassVar, Final

from hsmvault.crypto.opaque.suite import NH, NM, NN, NOE, NPK
from hsmvault.crypto.ristretto255 import Element
from hsmvault.errors import DecodeError

__all__ = [
    "KE1",
    "KE2",
    "KE3",
    "AuthRequest",
    "AuthResponse",
    "CredentialRequest",
    "CredentialResponse",
    "Envelope",
    "RegistrationRecord",
    "RegistrationRequest",
    "RegistrationResponse",
]

#: ``masked_response`` length: ``Npk + Nn + Nm`` (RFC 9807 §6.3.1).
MASKED_RESPONSE_LEN: Final = NPK + NN + NM


def _split(data: bytes, what: str, *lengths: int) -> list[bytes]:
    """Cut ``data`` into fields of the given lengths; the total must match exactly."""
    data = bytes(data)
    if len(data) != sum(lengths):
        raise DecodeError(f"{what} must be exactly {sum(lengths)} bytes")
    out, pos = [], 0
    for n in lengths:
        out.append(data[pos : pos + n])
        pos += n
    return out


def _check_len(value: bytes, length: int, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != length:
        raise DecodeError(f"{what} must be {length} bytes")


def _element(data: bytes) -> Element:
    """RFC 9497 §2.1 ``DeserializeElement``, strictly: canonical, non-identity."""
    return Element.from_bytes(data)


def _check_element(value: Element, what: str) -> None:
    if not isinstance(value, Element) or value.is_identity() or value.encoded[-1] & 0x80:
        raise DecodeError(f"{what} must be a canonical non-identity group element")


@dataclass(frozen=True, slots=True)
class Envelope:
    """RFC 9807 §4.1.1 ``Envelope``: ``envelope_nonce[Nn] || auth_tag[Nm]``."""

    LEN: ClassVar[int] = NN + NM

    envelope_nonce: bytes
    auth_tag: bytes

    def __post_init__(self) -> None:
        _check_len(self.envelope_nonce, NN, "envelope_nonce")
        _check_len(self.auth_tag, NM, "auth_tag")

    @classmethod
    def zero(cls) -> Envelope:
        """The all-zero envelope of a fake record (RFC 9807 §6.3.2.2)."""
        return cls(bytes(NN), bytes(NM))

    def to_bytes(self) -> bytes:
        return self.envelope_nonce + self.auth_tag

    @classmethod
    def from_bytes(cls, data: bytes) -> Envelope:
        nonce, tag = _split(data, "Envelope", NN, NM)
        return cls(nonce, tag)


@dataclass(frozen=True, slots=True)
class RegistrationRequest:
    """RFC 9807 §5.1 ``RegistrationRequest``: ``blinded_message[Noe]``."""

    LEN: ClassVar[int] = NOE

    blinded_message: Element

    def __post_init__(self) -> None:
        _check_element(self.blinded_message, "blinded_message")

    def to_bytes(self) -> bytes:
        return bytes(self.blinded_message)

    @classmethod
    def from_bytes(cls, data: bytes) -> RegistrationRequest:
        (blinded,) = _split(data, "RegistrationRequest", NOE)
        return cls(_element(blinded))


@dataclass(frozen=True, slots=True)
class RegistrationResponse:
    """RFC 9807 §5.1 ``RegistrationResponse``:
    ``evaluated_message[Noe] || server_public_key[Npk]``."""

    LEN: ClassVar[int] = NOE + NPK

    evaluated_message: Element
    server_public_key: Element

    def __post_init__(self) -> None:
        _check_element(self.evaluated_message, "evaluated_message")
        _check_element(self.server_public_key, "server_public_key")

    def to_bytes(self) -> bytes:
        return bytes(self.evaluated_message) + bytes(self.server_public_key)

    @classmethod
    def from_bytes(cls, data: bytes) -> RegistrationResponse:
        evaluated, server_pk = _split(data, "RegistrationResponse", NOE, NPK)
        return cls(_element(evaluated), _element(server_pk))


@dataclass(frozen=True, slots=True, eq=False)
class RegistrationRecord:
    """RFC 9807 §5.1 ``RegistrationRecord`` (the server's stored credential file):
    ``client_public_key[Npk] || masking_key[Nh] || envelope``.

    ``masking_key`` is secret (it unmasks credential responses; RFC 9807 §10.10): it is
    left out of the ``repr`` and records compare in constant time.
    """

    LEN: ClassVar[int] = NPK + NH + Envelope.LEN

    client_public_key: Element
    masking_key: bytes = field(repr=False)
    envelope: Envelope

    def __post_init__(self) -> None:
        _check_element(self.client_public_key, "client_public_key")
        _check_len(self.masking_key, NH, "masking_key")
        if not isinstance(self.envelope, Envelope):
            raise DecodeError("envelope must be an Envelope")

    def to_bytes(self) -> bytes:
        return bytes(self.client_public_key) + self.masking_key + self.envelope.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> RegistrationRecord:
        pk, masking_key, envelope = _split(data, "RegistrationRecord", NPK, NH, Envelope.LEN)
        return cls(_element(pk), masking_key, Envelope.from_bytes(envelope))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RegistrationRecord):
            return NotImplemented
        return hmac.compare_digest(self.to_bytes(), other.to_bytes())

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class CredentialRequest:
    """RFC 9807 §6.3.1 ``CredentialRequest``: ``blinded_message[Noe]``."""

    LEN: ClassVar[int] = NOE

    blinded_message: Element

    def __post_init__(self) -> None:
        _check_element(self.blinded_message, "blinded_message")

    def to_bytes(self) -> bytes:
        return bytes(self.blinded_message)

    @classmethod
    def from_bytes(cls, data: bytes) -> CredentialRequest:
        (blinded,) = _split(data, "CredentialRequest", NOE)
        return cls(_element(blinded))


@dataclass(frozen=True, slots=True)
class CredentialResponse:
    """RFC 9807 §6.3.1 ``CredentialResponse``:
    ``evaluated_message[Noe] || masking_nonce[Nn] || masked_response[Npk + Nn + Nm]``."""

    LEN: ClassVar[int] = NOE + NN + MASKED_RESPONSE_LEN

    evaluated_message: Element
    masking_nonce: bytes
    masked_response: bytes

    def __post_init__(self) -> None:
        _check_element(self.evaluated_message, "evaluated_message")
        _check_len(self.masking_nonce, NN, "masking_nonce")
        _check_len(self.masked_response, MASKED_RESPONSE_LEN, "masked_response")

    def to_bytes(self) -> bytes:
        return bytes(self.evaluated_message) + self.masking_nonce + self.masked_response

    @classmethod
    def from_bytes(cls, data: bytes) -> CredentialResponse:
        evaluated, nonce, masked = _split(data, "CredentialResponse", NOE, NN, MASKED_RESPONSE_LEN)
        return cls(_element(evaluated), nonce, masked)


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """RFC 9807 §6.1 ``AuthRequest``: ``client_nonce[Nn] || client_public_keyshare[Npk]``."""

    LEN: ClassVar[int] = NN + NPK

    client_nonce: bytes
    client_public_keyshare: Element

    def __post_init__(self) -> None:
        _check_len(self.client_nonce, NN, "client_nonce")
        _check_element(self.client_public_keyshare, "client_public_keyshare")

    def to_bytes(self) -> bytes:
        return self.client_nonce + bytes(self.client_public_keyshare)

    @classmethod
    def from_bytes(cls, data: bytes) -> AuthRequest:
        nonce, keyshare = _split(data, "AuthRequest", NN, NPK)
        return cls(nonce, _element(keyshare))


@dataclass(frozen=True, slots=True)
class AuthResponse:
    """RFC 9807 §6.1 ``AuthResponse``:
    ``server_nonce[Nn] || server_public_keyshare[Npk] || server_mac[Nm]``."""

    LEN: ClassVar[int] = NN + NPK + NM

    server_nonce: bytes
    server_public_keyshare: Element
    server_mac: bytes

    def __post_init__(self) -> None:
        _check_len(self.server_nonce, NN, "server_nonce")
        _check_element(self.server_public_keyshare, "server_public_keyshare")
        _check_len(self.server_mac, NM, "server_mac")

    def to_bytes(self) -> bytes:
        return self.server_nonce + bytes(self.server_public_keyshare) + self.server_mac

    @classmethod
    def from_bytes(cls, data: bytes) -> AuthResponse:
        nonce, keyshare, server_mac = _split(data, "AuthResponse", NN, NPK, NM)
        return cls(nonce, _element(keyshare), server_mac)


@dataclass(frozen=True, slots=True)
class KE1:
    """RFC 9807 §6.1 ``KE1``: ``CredentialRequest || AuthRequest``."""

    LEN: ClassVar[int] = CredentialRequest.LEN + AuthRequest.LEN

    credential_request: CredentialRequest
    auth_request: AuthRequest

    def __post_init__(self) -> None:
        if not isinstance(self.credential_request, CredentialRequest) or not isinstance(
            self.auth_request, AuthRequest
        ):
            raise DecodeError("KE1 holds a CredentialRequest and an AuthRequest")

    def to_bytes(self) -> bytes:
        return self.credential_request.to_bytes() + self.auth_request.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> KE1:
        req, auth = _split(data, "KE1", CredentialRequest.LEN, AuthRequest.LEN)
        return cls(CredentialRequest.from_bytes(req), AuthRequest.from_bytes(auth))


@dataclass(frozen=True, slots=True)
class KE2:
    """RFC 9807 §6.1 ``KE2``: ``CredentialResponse || AuthResponse``."""

    LEN: ClassVar[int] = CredentialResponse.LEN + AuthResponse.LEN

    credential_response: CredentialResponse
    auth_response: AuthResponse

    def __post_init__(self) -> None:
        if not isinstance(self.credential_response, CredentialResponse) or not isinstance(
            self.auth_response, AuthResponse
        ):
            raise DecodeError("KE2 holds a CredentialResponse and an AuthResponse")

    def to_bytes(self) -> bytes:
        return self.credential_response.to_bytes() + self.auth_response.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> KE2:
        resp, auth = _split(data, "KE2", CredentialResponse.LEN, AuthResponse.LEN)
        return cls(CredentialResponse.from_bytes(resp), AuthResponse.from_bytes(auth))


@dataclass(frozen=True, slots=True)
class KE3:
    """RFC 9807 §6.1 ``KE3``: ``client_mac[Nm]``."""

    LEN: ClassVar[int] = NM

    client_mac: bytes

    def __post_init__(self) -> None:
        _check_len(self.client_mac, NM, "client_mac")

    def to_bytes(self) -> bytes:
        return self.client_mac

    @classmethod
    def from_bytes(cls, data: bytes) -> KE3:
        (client_mac,) = _split(data, "KE3", NM)
        return cls(client_mac)
