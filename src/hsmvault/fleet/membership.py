"""Who is in the fleet: node identities, node ids, addresses, and the identity signer.

A fleet is fixed when it forms: a 32-byte **fleet id** and, for every member, its Ed25519
**identity public key** and its network address. A member's **node id** is derived from
its identity key (:func:`node_id_for`), so a node id names exactly one key and cannot be
claimed by anyone who does not hold that key's signer.

The private half of an identity key lives in a key-custody backend (a later slice plugs
PKCS#11 / the software store); this module only needs something that can sign:
:class:`IdentitySigner`. :class:`SoftwareIdentitySigner` is the in-process stand-in used by
tests and demos; it keeps the key in Python memory and gives no protection from the host.

Contracts:

* node id = ``SHA-256(NODE_ID_LABEL || identity public key)``, shown as 64 lowercase hex
  characters (pysyncobj needs string ids);
* :class:`FleetMembership` refuses duplicate keys and duplicate addresses; addresses are
  literal IPs (no DNS);
* nothing here is secret except what :class:`SoftwareIdentitySigner` holds, and its
  ``repr`` never shows it.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519
from pysyncobj.node import Node  # type: ignore[import-untyped]

from hsmvault.errors import InvalidParameter, VerificationError

__all__ = [
    "FLEET_ID_LEN",
    "IDENTITY_KEY_LEN",
    "MAX_MEMBERS",
    "NODE_ID_LABEL",
    "NODE_ID_LEN",
    "SIGNATURE_LEN",
    "FleetMember",
    "FleetMembership",
    "FleetNode",
    "IdentitySigner",
    "SoftwareIdentitySigner",
    "node_id_for",
    "verify_identity_signature",
]

FLEET_ID_LEN = 32
IDENTITY_KEY_LEN = 32  # raw Ed25519 public key
SIGNATURE_LEN = 64  # raw Ed25519 signature
NODE_ID_LEN = 32  # raw SHA-256 digest; the textual id is its hex form
MAX_MEMBERS = 15
NODE_ID_LABEL = b"hsmvault/fleet/node-id/v1\x00"


@runtime_checkable
class IdentitySigner(Protocol):
    """A node's identity key, as seen by the fleet code: it can show its public half and
    sign. A key-custody backend implements this without ever exporting the private key."""

    def public_key(self) -> bytes:
        """The raw 32-byte Ed25519 public key."""
        ...

    def sign(self, message: bytes) -> bytes:
        """A raw 64-byte Ed25519 signature over ``message``."""
        ...


class SoftwareIdentitySigner:
    """An Ed25519 identity key held in process memory (tests, demos, embedded default).

    It offers no protection from the host; production keys live in a custody backend.
    """

    __slots__ = ("_key", "_public")

    def __init__(self, private_key: ed25519.Ed25519PrivateKey) -> None:
        self._key = private_key
        self._public = private_key.public_key().public_bytes_raw()

    @classmethod
    def generate(cls) -> SoftwareIdentitySigner:
        """A fresh random identity key."""
        return cls(ed25519.Ed25519PrivateKey.generate())

    def public_key(self) -> bytes:
        return self._public

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def __repr__(self) -> str:
        return f"SoftwareIdentitySigner(node_id={node_id_for(self._public)[:16]}…, <redacted>)"


def node_id_for(identity_public_key: bytes) -> str:
    """The node id (64 lowercase hex characters) of an identity public key.

    Raises :class:`InvalidParameter` if the key is not 32 bytes.
    """
    if len(identity_public_key) != IDENTITY_KEY_LEN:
        raise InvalidParameter("identity public key must be 32 bytes")
    return hashlib.sha256(NODE_ID_LABEL + identity_public_key).hexdigest()


def verify_identity_signature(identity_public_key: bytes, signature: bytes, message: bytes) -> None:
    """Check an Ed25519 signature; raise :class:`VerificationError` if it does not verify
    (wrong length, malformed key, or a forged signature). Returns nothing on success."""
    if len(signature) != SIGNATURE_LEN or len(identity_public_key) != IDENTITY_KEY_LEN:
        raise VerificationError("identity signature has the wrong length")
    try:
        key = ed25519.Ed25519PublicKey.from_public_bytes(identity_public_key)
        key.verify(signature, message)
    except (InvalidSignature, ValueError):
        raise VerificationError("identity signature did not verify") from None


class FleetNode(Node):  # type: ignore[misc]  # pysyncobj is untyped
    """A pysyncobj node whose id is a fleet node id (hex). Carries no other state: the
    transport looks addresses and keys up in the :class:`FleetMembership` it trusts, never
    in attributes that could have travelled over the network."""

    def __init__(self, node_id: str) -> None:
        super().__init__(node_id)

    @property
    def node_id(self) -> str:
        """The hex node id (same as pysyncobj's ``id``)."""
        value: str = self.id
        return value


@dataclass(frozen=True)
class FleetMember:
    """One member as recorded when the fleet formed."""

    identity_public_key: bytes
    host: str
    port: int

    def __post_init__(self) -> None:
        if len(self.identity_public_key) != IDENTITY_KEY_LEN:
            raise InvalidParameter("identity public key must be 32 bytes")
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            raise InvalidParameter("member host must be a literal IP address") from None
        if not 0 < self.port < 65536:
            raise InvalidParameter("member port out of range")

    @property
    def node_id(self) -> str:
        """This member's node id."""
        return node_id_for(self.identity_public_key)


class FleetMembership(Mapping[str, FleetMember]):
    """The fleet id and its members, keyed by node id. Immutable.

    Raises :class:`InvalidParameter` on a fleet id that is not 32 bytes, fewer than one or
    more than :data:`MAX_MEMBERS` members, a repeated identity key, or a repeated address.
    """

    __slots__ = ("_fleet_id", "_members")

    def __init__(self, fleet_id: bytes, members: Iterable[FleetMember]) -> None:
        if len(fleet_id) != FLEET_ID_LEN:
            raise InvalidParameter("fleet id must be 32 bytes")
        table: dict[str, FleetMember] = {}
        addresses: set[tuple[str, int]] = set()
        for member in members:
            if member.node_id in table:
                raise InvalidParameter("identity key listed twice in the membership")
            if (member.host, member.port) in addresses:
                raise InvalidParameter("address listed twice in the membership")
            table[member.node_id] = member
            addresses.add((member.host, member.port))
        if not 1 <= len(table) <= MAX_MEMBERS:
            raise InvalidParameter("membership size out of range")
        self._fleet_id = bytes(fleet_id)
        self._members = table

    @property
    def fleet_id(self) -> bytes:
        """The 32-byte fleet id bound into every link handshake."""
        return self._fleet_id

    def __getitem__(self, node_id: str) -> FleetMember:
        return self._members[node_id]

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._members))

    def __len__(self) -> int:
        return len(self._members)

    def __repr__(self) -> str:
        ids = ", ".join(node_id[:12] for node_id in self)
        return f"FleetMembership(fleet_id={self._fleet_id.hex()[:16]}…, members=[{ids}])"
