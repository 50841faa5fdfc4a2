"""The fleet's shared secret keys: what every node of one fleet holds, and what clients see.

A fleet answers OPAQUE as *one* server and receives uploads sealed to *one* key, so its
nodes share:

* the OPAQUE server AKE key pair (``ake``; ristretto255, RFC 9807 §3.1) and the
  ``oprf_seed`` (64 bytes) every credential's OPRF key is derived from,
* the fake record answering unknown users (RFC 9807 §10.9), fixed at formation so every
  node answers an unknown id identically,
* an X25519 key pair ``enc`` that clients seal registration uploads to
  (HPKE, :mod:`hsmvault.crypto.fleet_seal`; nodes open with :meth:`FleetSecretKeys.enc_private`),
* an Ed25519 key pair ``sig`` (RFC 8032) with which a node signs the first response of
  every session (:func:`hsmvault.wire.fleet_session.fleet_session_message`, ADR 0010), so
  a client can tell that a holder of the published fleet keys answered it.

:class:`FleetSecretKeys` holds them; :class:`FleetPublicKeys` (fleet id, AKE public key,
enc public key, sig public key) is what clients pin or receive in a validation bundle, as
strict JSON.

**Where a node keeps them (decision).** Each node stores its copy *sealed by its own key
custody* (:data:`SEAL_PURPOSE`, associated data = the fleet id) in a file of its
host-side directory (``node-<i>/host/fleet-keys.sealed``), not in NVRAM: the NVRAM is
small and holds only what sealing cannot protect (identity, membership, epoch —
ADR 0003). Sealing protects confidentiality and integrity; the host could put an *older*
sealed copy back, which is harmless while the keys never change. Key rotation will have
to bind the fleet-key epoch into the associated data and keep the epoch in NVRAM.

**Provenance.** The keys are generated inside one attested node during the deployment
ceremony (:mod:`hsmvault.hsm.ceremony`, ADR 0012) and reach the other members only
HPKE-sealed to transport keys their attested identities certified; the formation
process (host side) never sees them in the clear.

Encoding of the secret keys, version 2 (fixed length, :data:`SECRET_KEYS_LEN` bytes)::

    "HVFK" | version u8 = 2 | fleet id (32) | AKE private scalar (32, canonical, non-zero)
    | oprf_seed (64) | fake RegistrationRecord (192) | enc X25519 private key (32)
    | sig Ed25519 private key (32, the RFC 8032 seed)

Version 1 (without ``sig``) is no longer accepted: fleets formed before issue 5 must be
formed again (there is no production data yet).

``from_bytes`` accepts exactly what ``to_bytes`` makes; anything else raises
:class:`~hsmvault.errors.DecodeError`. Secret-bearing objects have a redacted ``repr``,
compare in constant time and refuse to be pickled.
"""

from __future__ import annotations

import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Any, Final, NoReturn, Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from hsmvault.crypto.opaque.config import OpaqueConfig
from hsmvault.crypto.opaque.fake import create_fake_record
from hsmvault.crypto.opaque.messages import RegistrationRecord
from hsmvault.crypto.opaque.parties import OpaqueServer
from hsmvault.crypto.opaque.suite import NH, NSEED, derive_dh_key_pair
from hsmvault.crypto.ristretto255 import Element, Scalar, base_mult
from hsmvault.errors import DecodeError, InvalidParameter, VerificationError

__all__ = [
    "FLEET_ID_LEN",
    "PUBLIC_KEYS_VERSION",
    "SEAL_PURPOSE",
    "SECRET_KEYS_LEN",
    "SECRET_KEYS_MAGIC",
    "SECRET_KEYS_VERSION",
    "SNAPSHOT_KEY_INFO",
    "SNAPSHOT_KEY_LEN",
    "FleetPublicKeys",
    "FleetSecretKeys",
    "Sealer",
    "seal_fleet_keys",
    "unseal_fleet_keys",
]

SECRET_KEYS_MAGIC: Final = b"HVFK"
SECRET_KEYS_VERSION: Final = 2
FLEET_ID_LEN: Final = 32
_KEY_LEN: Final = 32
SECRET_KEYS_LEN: Final = (
    len(SECRET_KEYS_MAGIC)
    + 1
    + FLEET_ID_LEN
    + _KEY_LEN
    + NH
    + RegistrationRecord.LEN
    + _KEY_LEN
    + _KEY_LEN
)
#: The custody purpose under which a node seals its copy of the fleet keys.
SEAL_PURPOSE: Final = b"hsmvault/fleet-keys/v1"
#: Version of the public-keys JSON document (2: ``sig_public_key`` added, issue 5).
PUBLIC_KEYS_VERSION: Final = 2

#: HKDF ``info`` label of the fleet snapshot key (:meth:`FleetSecretKeys.snapshot_key`).
SNAPSHOT_KEY_INFO: Final = b"hsmvault/fleet/raft-snapshot-key/v1"
SNAPSHOT_KEY_LEN: Final = 32

_BOX_INFO: Final = b"hsmvault/fleet-box/v1"
_TAG_LEN: Final = 16


class Sealer(Protocol):
    """What a node's key custody offers for sealing (``hsm.custody.KeyCustody`` fits)."""

    def seal(self, purpose: bytes, plaintext: bytes, associated_data: bytes = b"") -> bytes:
        """Seal ``plaintext`` for this node and ``purpose``."""
        ...

    def unseal(self, purpose: bytes, sealed: bytes, associated_data: bytes = b"") -> bytes:
        """Verify and open a blob this node sealed; raises on any mismatch."""
        ...


def _x25519_public(private_key: bytes) -> bytes:
    return x25519.X25519PrivateKey.from_private_bytes(private_key).public_key().public_bytes_raw()


def _ed25519_public(private_key: bytes) -> bytes:
    return ed25519.Ed25519PrivateKey.from_private_bytes(private_key).public_key().public_bytes_raw()


@dataclass(frozen=True)
class FleetPublicKeys:
    """The public half of a fleet's keys: the fleet id, the OPAQUE AKE public key
    (``server_public_key``), the X25519 ``enc`` key clients seal uploads to and the
    Ed25519 ``sig`` key that signs each session's first response.

    Construction checks lengths and that ``ake_public_key`` is a canonical, non-identity
    ristretto255 element (:class:`~hsmvault.errors.DecodeError` otherwise). The ``sig``
    key is only checked for length here; a malformed point simply never verifies.
    """

    fleet_id: bytes
    ake_public_key: bytes
    enc_public_key: bytes
    sig_public_key: bytes

    def __post_init__(self) -> None:
        if not all(isinstance(v, bytes) for v in (self.fleet_id, self.ake_public_key)):
            raise DecodeError("fleet public keys are bytes")
        if len(self.fleet_id) != FLEET_ID_LEN:
            raise DecodeError("fleet id must be 32 bytes")
        if not isinstance(self.enc_public_key, bytes) or len(self.enc_public_key) != _KEY_LEN:
            raise DecodeError("enc public key must be 32 bytes")
        if not isinstance(self.sig_public_key, bytes) or len(self.sig_public_key) != _KEY_LEN:
            raise DecodeError("sig public key must be 32 bytes")
        Element.from_bytes(self.ake_public_key)  # raises DecodeError if not canonical

    def to_dict(self) -> dict[str, Any]:
        """The JSON object form (hex strings, lowercase)."""
        return {
            "version": PUBLIC_KEYS_VERSION,
            "fleet_id": self.fleet_id.hex(),
            "ake_public_key": self.ake_public_key.hex(),
            "enc_public_key": self.enc_public_key.hex(),
            "sig_public_key": self.sig_public_key.hex(),
        }

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces) of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, obj: object) -> FleetPublicKeys:
        """Parse the object form strictly: exactly the five keys, version
        :data:`PUBLIC_KEYS_VERSION`, lowercase hex of the right lengths. Raises
        :class:`DecodeError` otherwise."""
        expected = {"version", "fleet_id", "ake_public_key", "enc_public_key", "sig_public_key"}
        if not isinstance(obj, dict) or set(obj) != expected:
            raise DecodeError("fleet public keys: unexpected fields")
        if type(obj["version"]) is not int or obj["version"] != PUBLIC_KEYS_VERSION:
            raise DecodeError("fleet public keys: unknown version")
        return cls(
            fleet_id=_hex_field(obj["fleet_id"], FLEET_ID_LEN, "fleet_id"),
            ake_public_key=_hex_field(obj["ake_public_key"], _KEY_LEN, "ake_public_key"),
            enc_public_key=_hex_field(obj["enc_public_key"], _KEY_LEN, "enc_public_key"),
            sig_public_key=_hex_field(obj["sig_public_key"], _KEY_LEN, "sig_public_key"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> FleetPublicKeys:
        """Parse :meth:`to_json` output (any whitespace); DecodeError on anything else."""
        try:
            obj = json.loads(text)
        except (ValueError, UnicodeDecodeError):
            raise DecodeError("fleet public keys: not JSON") from None
        return cls.from_dict(obj)


def _hex_field(value: object, length: int, name: str) -> bytes:
    if not isinstance(value, str) or len(value) != 2 * length:
        raise DecodeError(f"fleet public keys: {name} has the wrong length")
    if value != value.lower():
        raise DecodeError(f"fleet public keys: {name} must be lowercase hex")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise DecodeError(f"fleet public keys: {name} is not hex") from None


@dataclass(frozen=True, eq=False, repr=False)
class FleetSecretKeys:
    """The fleet's secret keys (see the module docstring). Secret: redacted ``repr``,
    constant-time equality, not hashable, not picklable.

    Construction validates every field and raises :class:`DecodeError` on a bad one
    (wrong length, non-canonical or zero scalar, malformed fake record).
    """

    fleet_id: bytes
    ake_private_key: bytes
    oprf_seed: bytes
    fake_record: bytes
    enc_private_key: bytes
    sig_private_key: bytes

    def __post_init__(self) -> None:
        values = (
            self.fleet_id,
            self.ake_private_key,
            self.oprf_seed,
            self.fake_record,
            self.enc_private_key,
            self.sig_private_key,
        )
        if not all(isinstance(v, bytes) for v in values):
            raise DecodeError("fleet secret keys are bytes")
        if len(self.fleet_id) != FLEET_ID_LEN:
            raise DecodeError("fleet id must be 32 bytes")
        if Scalar.from_bytes(self.ake_private_key).is_zero():
            raise DecodeError("AKE private key must not be zero")
        if len(self.oprf_seed) != NH:
            raise DecodeError("oprf_seed must be 64 bytes")
        RegistrationRecord.from_bytes(self.fake_record)
        if len(self.enc_private_key) != _KEY_LEN:
            raise DecodeError("enc private key must be 32 bytes")
        if len(self.sig_private_key) != _KEY_LEN:
            raise DecodeError("sig private key must be 32 bytes")

    @classmethod
    def generate(cls, fleet_id: bytes | None = None) -> FleetSecretKeys:
        """Fresh keys from the OS CSPRNG; a random fleet id unless one is given."""
        if fleet_id is None:
            fleet_id = secrets.token_bytes(FLEET_ID_LEN)
        if not isinstance(fleet_id, bytes) or len(fleet_id) != FLEET_ID_LEN:
            raise InvalidParameter("fleet id must be 32 bytes")
        ake = derive_dh_key_pair(secrets.token_bytes(NSEED))
        return cls(
            fleet_id=fleet_id,
            ake_private_key=bytes(ake.sk),
            oprf_seed=secrets.token_bytes(NH),
            fake_record=create_fake_record().to_bytes(),
            enc_private_key=x25519.X25519PrivateKey.generate().private_bytes_raw(),
            sig_private_key=ed25519.Ed25519PrivateKey.generate().private_bytes_raw(),
        )

    def enc_private(self) -> x25519.X25519PrivateKey:
        """The ``enc`` private key, to open what clients sealed to the fleet
        (:func:`hsmvault.crypto.fleet_seal.open_from_client`)."""
        return x25519.X25519PrivateKey.from_private_bytes(self.enc_private_key)

    def sig_private(self) -> ed25519.Ed25519PrivateKey:
        """The ``sig`` private key, to sign each session's first response over
        :func:`hsmvault.wire.fleet_session.fleet_session_message` (ADR 0010)."""
        return ed25519.Ed25519PrivateKey.from_private_bytes(self.sig_private_key)

    def public(self) -> FleetPublicKeys:
        """The public half."""
        ake_public = bytes(base_mult(Scalar.from_bytes(self.ake_private_key)))
        return FleetPublicKeys(
            self.fleet_id,
            ake_public,
            _x25519_public(self.enc_private_key),
            _ed25519_public(self.sig_private_key),
        )

    def opaque_server(self, config: OpaqueConfig | None = None) -> OpaqueServer:
        """The :class:`OpaqueServer` these keys define (same on every node)."""
        return OpaqueServer(
            Scalar.from_bytes(self.ake_private_key),
            self.oprf_seed,
            config=config,
            fake_record=RegistrationRecord.from_bytes(self.fake_record),
        )

    def snapshot_key(self) -> bytes:
        """The fleet snapshot key (32 secret bytes, identical on every member): the AEAD
        key of sealed Raft snapshots (``fleet.snapshots.SnapshotConfig.key``).

        HKDF-SHA256 (RFC 5869) with the whole secret-key encoding as input keying
        material, the fleet id as salt and :data:`SNAPSHOT_KEY_INFO` as info: a key of
        its own, independent of the OPAQUE, OPRF and ``enc`` keys it is derived from."""
        hkdf = HKDF(
            algorithm=hashes.SHA256(),
            length=SNAPSHOT_KEY_LEN,
            salt=self.fleet_id,
            info=SNAPSHOT_KEY_INFO,
        )
        return hkdf.derive(self.to_bytes())

    def to_bytes(self) -> bytes:
        """The version-2 encoding (secret: seal it before it leaves the node)."""
        return (
            SECRET_KEYS_MAGIC
            + bytes([SECRET_KEYS_VERSION])
            + self.fleet_id
            + self.ake_private_key
            + self.oprf_seed
            + self.fake_record
            + self.enc_private_key
            + self.sig_private_key
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> FleetSecretKeys:
        """Parse the version-2 encoding strictly; raises :class:`DecodeError` only."""
        if not isinstance(data, bytes | bytearray):
            raise DecodeError("fleet secret keys must be bytes")
        data = bytes(data)
        head = len(SECRET_KEYS_MAGIC)
        if len(data) < head + 1 or data[:head] != SECRET_KEYS_MAGIC:
            raise DecodeError("not fleet secret keys (bad magic)")
        if data[head] != SECRET_KEYS_VERSION:
            raise DecodeError("unknown fleet secret keys version")
        if len(data) != SECRET_KEYS_LEN:
            raise DecodeError("fleet secret keys have the wrong length")
        pos = head + 1
        parts: list[bytes] = []
        for size in (FLEET_ID_LEN, _KEY_LEN, NH, RegistrationRecord.LEN, _KEY_LEN, _KEY_LEN):
            parts.append(data[pos : pos + size])
            pos += size
        return cls(*parts)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FleetSecretKeys):
            return NotImplemented
        return hmac.compare_digest(self.to_bytes(), other.to_bytes())

    __hash__ = None  # type: ignore[assignment]  # secrets are not hashable

    def __repr__(self) -> str:
        return f"FleetSecretKeys(fleet_id={self.fleet_id.hex()[:16]}…, <redacted>)"

    def __reduce__(self) -> NoReturn:
        raise TypeError("FleetSecretKeys holds secrets and is not picklable")


def seal_fleet_keys(sealer: Sealer, keys: FleetSecretKeys) -> bytes:
    """Seal ``keys`` under the node's custody (purpose :data:`SEAL_PURPOSE`, associated
    data = the fleet id). The result may be stored on untrusted disk."""
    return sealer.seal(SEAL_PURPOSE, keys.to_bytes(), keys.fleet_id)


def unseal_fleet_keys(sealer: Sealer, sealed: bytes, fleet_id: bytes) -> FleetSecretKeys:
    """Open a blob made by :func:`seal_fleet_keys` on this node for ``fleet_id``.

    Raises :class:`DecodeError` on malformed bytes and
    :class:`~hsmvault.errors.VerificationError` if it was not sealed by this node, for
    this purpose and this fleet (the custody's checks), or names another fleet inside.
    """
    keys = FleetSecretKeys.from_bytes(sealer.unseal(SEAL_PURPOSE, sealed, fleet_id))
    if not hmac.compare_digest(keys.fleet_id, fleet_id):
        raise VerificationError("sealed fleet keys belong to another fleet")
    return keys
