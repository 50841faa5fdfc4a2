"""The key-custody interface and the sealed-blob format shared by every backend.

A :class:`KeyCustody` holds a node's two keys and never hands them out:

* the **identity key** (Ed25519, or ECDSA P-256 where a token lacks CKM_EDDSA): the node
  id is its public fingerprint; :meth:`KeyCustody.sign` signs under a per-purpose domain
  label so a signature made for one purpose never verifies for another;
* the **sealing key** (AES-256): :meth:`KeyCustody.seal` encrypts anything the node writes
  outside itself with AES-256-GCM, binding the format version, the node id and a purpose;
  :meth:`KeyCustody.unseal` checks all three and the tag, and is the only way back in.

Backends supply four primitives (random bytes, raw AEAD encrypt/decrypt, raw sign); this
module does the framing, the checks and their order, so every backend fails the same way:

* malformed input (wrong magic, unknown version, bad lengths, truncated, trailing bytes):
  :class:`~hsmvault.errors.DecodeError`;
* well-formed but not ours (another node, another purpose, other associated data, any
  changed byte under the tag): :class:`~hsmvault.errors.VerificationError`;
* a backend that cannot do its job (token missing, login failed, keys missing or not
  protected): :class:`CustodyError`. No message ever carries a key, a PIN or plaintext.

Sealed blob, version 1 (big-endian)::

    "HVSB" | version u8 = 1 | node id (32) | purpose length u8 (1..64) | purpose
    | nonce (12) | plaintext length u32 | ciphertext (same length) | GCM tag (16)

The GCM associated data is the whole header (everything before the ciphertext) followed by
the caller's associated data; the header is self-delimiting, so the pair is unambiguous.
Nonces are 96 random bits from the backend's RNG: at most 2**32 seals per key keeps the
nonce-collision probability below 2**-32 (NIST SP 800-38D §8.3).
"""

from __future__ import annotations

import hmac
import struct
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from hsmvault.closing import ClosingContext
from hsmvault.errors import (
    CustodyError,
    DecodeError,
    InvalidParameter,
    ProtocolStateError,
    VerificationError,
)
from hsmvault.hsm.nvram import NodeIdentity, Nvram, SignatureAlgorithm

__all__ = [
    "MAX_PLAINTEXT_LEN",
    "MAX_PURPOSE_LEN",
    "NODE_ID_LEN",
    "NONCE_LEN",
    "SEALED_MAGIC",
    "SEALED_VERSION",
    "SIGNATURE_LEN",
    "SIGNING_CONTEXT",
    "TAG_LEN",
    "CustodyError",
    "KeyCustody",
    "SealedBlob",
    "bind_identity",
    "signing_input",
    "verify_signature",
]

SEALED_MAGIC = b"HVSB"
SEALED_VERSION = 1
NODE_ID_LEN = 32
NONCE_LEN = 12
TAG_LEN = 16
#: Purposes (sealing and signing) are 1..64 bytes, e.g. ``b"vault-state"``.
MAX_PURPOSE_LEN = 64
#: Sealing is for node state, not bulk data: one blob holds at most 64 MiB of plaintext.
MAX_PLAINTEXT_LEN = 1 << 26
#: Every identity signature (both algorithms) is 64 bytes.
SIGNATURE_LEN = 64
#: The domain label that starts every signed message (see :func:`signing_input`).
SIGNING_CONTEXT = b"hsmvault node signature v1\x00"

_HEADER_FIXED = struct.Struct(">4sB32sB")  # magic, version, node id, purpose length
_TAIL_FIXED = struct.Struct(">12sI")  # nonce, plaintext length
_SELF_TEST_PURPOSE = b"hsmvault/custody-self-test"


def _check_purpose(purpose: bytes) -> bytes:
    if not isinstance(purpose, bytes | bytearray):
        raise InvalidParameter("a purpose label is bytes")
    if not 1 <= len(purpose) <= MAX_PURPOSE_LEN:
        raise InvalidParameter(f"a purpose label is 1..{MAX_PURPOSE_LEN} bytes")
    return bytes(purpose)


def _check_bytes(value: bytes, what: str) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise InvalidParameter(f"{what} must be bytes")
    return bytes(value)


def signing_input(purpose_label: bytes, message: bytes) -> bytes:
    """The exact bytes an identity key signs for ``message`` under ``purpose_label``::

        SIGNING_CONTEXT | len(purpose_label) u8 | purpose_label | message

    The length prefix makes (purpose, message) pairs injective, so no signature made for
    one purpose is valid for another. Raises InvalidParameter for a bad purpose label.
    """
    purpose = _check_purpose(purpose_label)
    return SIGNING_CONTEXT + bytes([len(purpose)]) + purpose + _check_bytes(message, "message")


def verify_signature(
    identity: NodeIdentity, purpose_label: bytes, message: bytes, signature: bytes
) -> None:
    """Check that ``signature`` is ``identity``'s signature of ``message`` for
    ``purpose_label`` (see :func:`signing_input`). Returns None or raises
    :class:`~hsmvault.errors.VerificationError`; never returns a bool.

    Ed25519 signatures are the 64 bytes of RFC 8032; ECDSA P-256 signatures are
    ``r || s``, 32 bytes each, over SHA-256 of the signing input.
    """
    data = signing_input(purpose_label, message)
    signature = _check_bytes(signature, "signature")
    if len(signature) != SIGNATURE_LEN:
        raise VerificationError("signature has the wrong length")
    try:
        if identity.algorithm is SignatureAlgorithm.ED25519:
            ed25519.Ed25519PublicKey.from_public_bytes(identity.public_key).verify(signature, data)
        else:
            r = int.from_bytes(signature[:32], "big")
            s = int.from_bytes(signature[32:], "big")
            if r == 0 or s == 0:
                raise VerificationError("signature does not verify")
            public = ec.EllipticCurvePublicKey.from_encoded_point(
                ec.SECP256R1(), identity.public_key
            )
            public.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise VerificationError("signature does not verify") from None


def _encode_header(node_id: bytes, purpose: bytes, nonce: bytes, plaintext_len: int) -> bytes:
    return (
        _HEADER_FIXED.pack(SEALED_MAGIC, SEALED_VERSION, node_id, len(purpose))
        + purpose
        + _TAIL_FIXED.pack(nonce, plaintext_len)
    )


@dataclass(frozen=True)
class SealedBlob:
    """The parsed form of a sealed blob (see the module docstring for the layout).

    ``from_bytes`` is strict: it accepts exactly the encodings ``to_bytes`` produces and
    raises :class:`~hsmvault.errors.DecodeError` (and nothing else) on anything else.
    Parsing authenticates nothing; only :meth:`KeyCustody.unseal` does.
    """

    node_id: bytes
    purpose: bytes
    nonce: bytes
    ciphertext: bytes  # ciphertext followed by the 16-byte tag

    def __post_init__(self) -> None:
        if len(self.node_id) != NODE_ID_LEN:
            raise InvalidParameter("node id must be 32 bytes")
        _check_purpose(self.purpose)
        if len(self.nonce) != NONCE_LEN:
            raise InvalidParameter("nonce must be 12 bytes")
        if not TAG_LEN <= len(self.ciphertext) <= MAX_PLAINTEXT_LEN + TAG_LEN:
            raise InvalidParameter("ciphertext length out of range")

    @property
    def plaintext_len(self) -> int:
        return len(self.ciphertext) - TAG_LEN

    def header(self) -> bytes:
        """Everything before the ciphertext: authenticated as GCM associated data."""
        return _encode_header(self.node_id, self.purpose, self.nonce, self.plaintext_len)

    def to_bytes(self) -> bytes:
        return self.header() + self.ciphertext

    @classmethod
    def from_bytes(cls, data: bytes) -> SealedBlob:
        data = _check_bytes(data, "sealed blob")
        if len(data) < len(SEALED_MAGIC) + 1:
            raise DecodeError("sealed blob is truncated")
        if data[: len(SEALED_MAGIC)] != SEALED_MAGIC:
            raise DecodeError("not a sealed blob (bad magic)")
        if data[len(SEALED_MAGIC)] != SEALED_VERSION:
            raise DecodeError("unknown sealed-blob version")
        if len(data) < _HEADER_FIXED.size:
            raise DecodeError("sealed blob is truncated")
        _, _, node_id, purpose_len = _HEADER_FIXED.unpack_from(data)
        if not 1 <= purpose_len <= MAX_PURPOSE_LEN:
            raise DecodeError("sealed blob has an invalid purpose length")
        pos = _HEADER_FIXED.size + purpose_len
        if len(data) < pos + _TAIL_FIXED.size:
            raise DecodeError("sealed blob is truncated")
        purpose = data[_HEADER_FIXED.size : pos]
        nonce, plaintext_len = _TAIL_FIXED.unpack_from(data, pos)
        if plaintext_len > MAX_PLAINTEXT_LEN:
            raise DecodeError("sealed blob declares too long a plaintext")
        pos += _TAIL_FIXED.size
        expected = pos + plaintext_len + TAG_LEN
        if len(data) < expected:
            raise DecodeError("sealed blob is truncated")
        if len(data) > expected:
            raise DecodeError("sealed blob has trailing bytes")
        return cls(node_id, purpose, nonce, data[pos:])


class KeyCustody(ClosingContext, ABC):
    """A node's key custody: identity signing and sealing, keys never handed out.

    Thread-safe: operations are serialized (PKCS#11 sessions are not re-entrant).
    After :meth:`close` every operation raises :class:`~hsmvault.errors.ProtocolStateError`.
    Usable as a context manager.
    """

    def __init__(self, identity: NodeIdentity) -> None:
        self._identity = identity
        self._lock = threading.RLock()
        self._closed = False

    # -- what backends provide ----------------------------------------------------------

    @abstractmethod
    def _random(self, n: int) -> bytes:
        """``n`` bytes from the backend's CSPRNG (the token's RNG for PKCS#11)."""

    @abstractmethod
    def _aead_encrypt(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        """AES-256-GCM under the sealing key: ciphertext followed by a 16-byte tag."""

    @abstractmethod
    def _aead_decrypt(self, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        """Inverse of :meth:`_aead_encrypt`; raises VerificationError if the tag fails."""

    @abstractmethod
    def _sign_raw(self, data: bytes) -> bytes:
        """Sign ``data`` (already domain-separated) with the identity key: 64 bytes."""

    @abstractmethod
    def _release(self) -> None:
        """Free backend resources (close the token session, drop keys). Called once."""

    # -- the interface ------------------------------------------------------------------

    @property
    def identity(self) -> NodeIdentity:
        """The node's public identity (algorithm, public key, node id)."""
        return self._identity

    @property
    def node_id(self) -> bytes:
        """SHA-256 of the identity key's SubjectPublicKeyInfo (32 bytes)."""
        return self._identity.node_id

    def identity_public_key(self) -> bytes:
        """The raw identity public key: 32 bytes (Ed25519) or a 65-byte uncompressed SEC1
        point (P-256); which one is ``identity.algorithm``."""
        return self._identity.public_key

    def sign(self, purpose_label: bytes, message: bytes) -> bytes:
        """Sign ``message`` for ``purpose_label`` with the identity key (64 bytes).
        Anyone checks it with :func:`verify_signature` and the node's identity."""
        data = signing_input(purpose_label, message)
        with self._lock:
            self._check_open()
            signature = self._sign_raw(data)
        if len(signature) != SIGNATURE_LEN:
            raise CustodyError("backend returned a signature of the wrong length")
        return signature

    def seal(self, purpose: bytes, plaintext: bytes, associated_data: bytes = b"") -> bytes:
        """Encrypt and authenticate ``plaintext`` for this node and ``purpose``, also
        authenticating (not storing) ``associated_data``. Returns the sealed blob."""
        purpose = _check_purpose(purpose)
        plaintext = _check_bytes(plaintext, "plaintext")
        associated_data = _check_bytes(associated_data, "associated data")
        if len(plaintext) > MAX_PLAINTEXT_LEN:
            raise InvalidParameter("plaintext too long to seal")
        with self._lock:
            self._check_open()
            nonce = self._random(NONCE_LEN)
            if len(nonce) != NONCE_LEN:
                raise CustodyError("backend returned a nonce of the wrong length")
            header = _encode_header(self.node_id, purpose, nonce, len(plaintext))
            ciphertext = self._aead_encrypt(nonce, plaintext, header + associated_data)
        if len(ciphertext) != len(plaintext) + TAG_LEN:
            raise CustodyError("backend returned a ciphertext of the wrong length")
        return header + ciphertext

    def unseal(self, purpose: bytes, sealed: bytes, associated_data: bytes = b"") -> bytes:
        """Verify and decrypt a blob made by :meth:`seal` of *this* node for ``purpose``
        with the same ``associated_data``. In order:

        1. parse strictly — DecodeError on malformed, truncated or over-long input;
        2. the blob names this node — else VerificationError;
        3. the blob names ``purpose`` — else VerificationError;
        4. the GCM tag over header, associated data and ciphertext — else VerificationError.
        """
        purpose = _check_purpose(purpose)
        associated_data = _check_bytes(associated_data, "associated data")
        blob = SealedBlob.from_bytes(sealed)
        if not hmac.compare_digest(blob.node_id, self.node_id):
            raise VerificationError("sealed blob was sealed by another node")
        if not hmac.compare_digest(blob.purpose, purpose):
            raise VerificationError("sealed blob was sealed for another purpose")
        with self._lock:
            self._check_open()
            return self._aead_decrypt(blob.nonce, blob.ciphertext, blob.header() + associated_data)

    def close(self) -> None:
        """Release the custody (close the token session). Idempotent."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._release()

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"{type(self).__name__}(node_id={self.node_id.hex()[:16]}…, {state})"

    # -- helpers for backends -----------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ProtocolStateError("key custody is closed")

    def self_test(self) -> None:
        """Check that the keys work together: the identity private key matches the public
        key we derived the node id from, and the sealing key round-trips. Raises
        CustodyError otherwise (e.g. a planted public key next to someone else's private
        key)."""
        message = b"hsmvault custody self-test"
        try:
            verify_signature(
                self.identity, _SELF_TEST_PURPOSE, message, self.sign(_SELF_TEST_PURPOSE, message)
            )
            sealed = self.seal(_SELF_TEST_PURPOSE, message)
            if self.unseal(_SELF_TEST_PURPOSE, sealed) != message:
                raise VerificationError("sealing round trip returned other bytes")
        except VerificationError:
            raise CustodyError("custody self-test failed: the keys do not match") from None


def bind_identity(custody: KeyCustody, nvram: Nvram) -> None:
    """Tie ``nvram`` to ``custody``'s identity: record it if the NVRAM has none yet,
    otherwise require it to be the same. Raises CustodyError on a mismatch (this NVRAM
    belongs to another node's keys)."""
    stored = nvram.identity()
    if stored is None:
        nvram.set_identity(custody.identity)
    elif stored != custody.identity:
        raise CustodyError("NVRAM identity does not match the custody's identity key")
