"""Mutually authenticated, encrypted links between two fleet members (sans I/O).

Hazmat-level module: it decides who a peer is. Callers move bytes; this module decides.

Handshake (SIGMA-style; three fixed-size messages; ``I`` initiates, ``R`` responds)::

    msg1  I -> R  version(1) | fleet_id(32) | id_I(32) | id_R(32) | eph_I(32)       (129 B)
    msg2  R -> I  eph_R(32) | sig_R(64)                                              ( 96 B)
    msg3  I -> R  sig_I(64)                                                          ( 64 B)

    th2   = SHA-256(TRANSCRIPT_LABEL || msg1 || eph_R)
    sig_R = Sign(identity_R, RESPONDER_SIG_LABEL || th2)
    th3   = SHA-256(TRANSCRIPT_LABEL || msg1 || msg2)
    sig_I = Sign(identity_I, INITIATOR_SIG_LABEL || th3)
    k_IR || k_RI = HKDF-SHA256(ikm = X25519(eph_I, eph_R), salt = th3, info = KEYS_LABEL, 64)

Checklist, enforced in order by the classes below:

1. ``R`` parses msg1: version, fleet id equal to its own, ``id_R`` equal to its own node id,
   ``id_I`` a *member* other than itself. Anything else: :class:`VerificationError`, and
   ``R`` has done no public-key work.
2. ``I`` checks ``sig_R`` under the identity key the membership records for ``id_R``.
3. ``R`` checks ``sig_I`` under the identity key the membership records for ``id_I``.
4. Both derive the per-direction keys; an all-zero X25519 result is refused.

Both signatures cover the fleet id, both node ids and both ephemeral keys, each under its own
domain label, so a signature made for one purpose or one link is useless for another.
Ephemeral keys give forward secrecy; a new handshake always gives new keys.

Records (after the handshake), one :class:`SecureLink` per connection::

    frame := length u32 | counter u64 | AES-256-GCM(key_dir, nonce = 0^4 || counter,
                                                    plaintext, aad = length || counter)

``length`` counts the ciphertext with its 16-byte tag and is checked against
:data:`MAX_FRAME_CIPHERTEXT` *before* any byte of the body is buffered. Each direction
counts from 0; the receiver accepts only the next counter it expects. A replayed,
reordered, dropped or altered frame raises :class:`VerificationError` and the link is dead
for good (every later call raises too): the connection must be closed and a new handshake
run. Handshake states are single-use (:class:`ProtocolStateError` on reuse).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from hsmvault.errors import InvalidParameter, ProtocolStateError, VerificationError
from hsmvault.fleet.membership import (
    FLEET_ID_LEN,
    NODE_ID_LEN,
    SIGNATURE_LEN,
    FleetMembership,
    IdentitySigner,
    node_id_for,
    verify_identity_signature,
)

__all__ = [
    "FRAME_HEADER_LEN",
    "HANDSHAKE_VERSION",
    "INITIATOR_SIG_LABEL",
    "KEYS_LABEL",
    "MAX_FRAME_CIPHERTEXT",
    "MAX_FRAME_PLAINTEXT",
    "MSG1_LEN",
    "MSG2_LEN",
    "MSG3_LEN",
    "RESPONDER_SIG_LABEL",
    "TRANSCRIPT_LABEL",
    "HandshakeInitiator",
    "HandshakeResponder",
    "SecureLink",
]

HANDSHAKE_VERSION: Final = 1
TRANSCRIPT_LABEL: Final = b"hsmvault/fleet/link/v1/transcript\x00"
RESPONDER_SIG_LABEL: Final = b"hsmvault/fleet/link/v1/responder-signature\x00"
INITIATOR_SIG_LABEL: Final = b"hsmvault/fleet/link/v1/initiator-signature\x00"
KEYS_LABEL: Final = b"hsmvault/fleet/link/v1/traffic-keys"

_EPH_LEN: Final = 32
MSG1_LEN: Final = 1 + FLEET_ID_LEN + NODE_ID_LEN + NODE_ID_LEN + _EPH_LEN
MSG2_LEN: Final = _EPH_LEN + SIGNATURE_LEN
MSG3_LEN: Final = SIGNATURE_LEN

_TAG_LEN: Final = 16
_HEADER = struct.Struct(">IQ")
FRAME_HEADER_LEN: Final = _HEADER.size
MAX_FRAME_PLAINTEXT: Final = 1024 * 1024 + 1024
"""Largest plaintext one frame may carry (the codec's largest message, with slack)."""
MAX_FRAME_CIPHERTEXT: Final = MAX_FRAME_PLAINTEXT + _TAG_LEN
_COUNTER_MAX: Final = 2**64 - 1


def _transcript_hash(*parts: bytes) -> bytes:
    h = hashlib.sha256(TRANSCRIPT_LABEL)
    for part in parts:
        h.update(part)
    return h.digest()


def _exchange(private: x25519.X25519PrivateKey, peer_public: bytes) -> bytes:
    try:
        shared = private.exchange(x25519.X25519PublicKey.from_public_bytes(peer_public))
    except ValueError:  # low-order point: all-zero shared secret
        raise VerificationError("peer ephemeral key is invalid") from None
    if hmac.compare_digest(shared, bytes(len(shared))):
        raise VerificationError("peer ephemeral key is invalid")
    return shared


def _traffic_keys(shared: bytes, th3: bytes) -> tuple[bytes, bytes]:
    okm = HKDF(algorithm=hashes.SHA256(), length=64, salt=th3, info=KEYS_LABEL).derive(shared)
    return okm[:32], okm[32:]


def _raw_public(private: x25519.X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes_raw()


class SecureLink:
    """One established link: :meth:`seal` frames outgoing messages, :meth:`receive` parses
    an incoming byte stream into authenticated messages, in order.

    After any :class:`VerificationError` the link is dead: every
    later call raises :class:`VerificationError`. Not thread-safe.
    """

    __slots__ = (
        "_buffer",
        "_dead",
        "_recv_aead",
        "_recv_counter",
        "_send_aead",
        "_send_counter",
        "peer_id",
    )

    def __init__(self, peer_id: str, send_key: bytes, recv_key: bytes) -> None:
        if len(send_key) != 32 or len(recv_key) != 32:
            raise InvalidParameter("link keys must be 32 bytes")
        self.peer_id: Final = peer_id
        self._send_aead = AESGCM(send_key)
        self._recv_aead = AESGCM(recv_key)
        self._send_counter = 0
        self._recv_counter = 0
        self._buffer = bytearray()
        self._dead = False

    def __repr__(self) -> str:
        state = "dead" if self._dead else "open"
        return f"SecureLink(peer={self.peer_id[:12]}…, {state}, <keys redacted>)"

    @property
    def dead(self) -> bool:
        """True once the link has failed; it must then be closed and re-established."""
        return self._dead

    def _check_alive(self) -> None:
        if self._dead:
            raise VerificationError("link is closed after an earlier failure")

    def seal(self, plaintext: bytes) -> bytes:
        """One frame carrying ``plaintext``. Raises :class:`InvalidParameter` if it is
        larger than :data:`MAX_FRAME_PLAINTEXT`, :class:`VerificationError` on a dead link."""
        self._check_alive()
        if len(plaintext) > MAX_FRAME_PLAINTEXT:
            raise InvalidParameter("frame plaintext exceeds MAX_FRAME_PLAINTEXT")
        if self._send_counter >= _COUNTER_MAX:
            self._dead = True
            raise VerificationError("link counter exhausted; re-establish the link")
        counter = self._send_counter
        self._send_counter += 1
        header = _HEADER.pack(len(plaintext) + _TAG_LEN, counter)
        nonce = b"\x00\x00\x00\x00" + header[4:]
        return header + self._send_aead.encrypt(nonce, plaintext, header)

    def receive(self, data: bytes) -> list[bytes]:
        """Feed bytes read from the connection; return the messages now complete, in order.

        Raises :class:`VerificationError` (and kills the link) on a frame length out of
        bounds, a counter other than the next expected one (replay, reorder, drop), or a
        frame that fails authentication. Buffers at most one frame.
        """
        self._check_alive()
        self._buffer += data
        out: list[bytes] = []
        try:
            while len(self._buffer) >= FRAME_HEADER_LEN:
                length, counter = _HEADER.unpack_from(self._buffer)
                if not _TAG_LEN <= length <= MAX_FRAME_CIPHERTEXT:
                    raise VerificationError("frame length out of bounds")
                if counter != self._recv_counter:
                    raise VerificationError("frame counter out of order (replay, reorder or drop)")
                if len(self._buffer) < FRAME_HEADER_LEN + length:
                    break
                header = bytes(self._buffer[:FRAME_HEADER_LEN])
                body = bytes(self._buffer[FRAME_HEADER_LEN : FRAME_HEADER_LEN + length])
                del self._buffer[: FRAME_HEADER_LEN + length]
                try:
                    plain = self._recv_aead.decrypt(b"\x00\x00\x00\x00" + header[4:], body, header)
                except InvalidTag:
                    raise VerificationError("frame failed authentication") from None
                self._recv_counter += 1
                out.append(plain)
        except VerificationError:
            self._dead = True
            self._buffer.clear()
            raise
        return out

    def kill(self) -> None:
        """Mark the link dead (e.g. after its connection closed)."""
        self._dead = True
        self._buffer.clear()


class HandshakeInitiator:
    """The dialing side. ``start()`` gives msg1; ``finish(msg2)`` checks the responder and
    returns ``(msg3, link)``. Each step runs once (:class:`ProtocolStateError` otherwise)."""

    def __init__(self, identity: IdentitySigner, membership: FleetMembership, peer_id: str) -> None:
        self_id = node_id_for(identity.public_key())
        if self_id not in membership:
            raise InvalidParameter("this node is not a member of the fleet")
        if peer_id not in membership or peer_id == self_id:
            raise InvalidParameter("peer is not another member of the fleet")
        self._identity = identity
        self._membership = membership
        self._self_id = self_id
        self._peer_id = peer_id
        self._eph: x25519.X25519PrivateKey | None = None
        self._msg1: bytes | None = None
        self._finished = False

    def __repr__(self) -> str:
        return f"HandshakeInitiator(peer={self._peer_id[:12]}…)"

    def start(self) -> bytes:
        """msg1 (129 bytes)."""
        if self._msg1 is not None:
            raise ProtocolStateError("handshake already started")
        self._eph = x25519.X25519PrivateKey.generate()
        self._msg1 = b"".join(
            [
                bytes([HANDSHAKE_VERSION]),
                self._membership.fleet_id,
                bytes.fromhex(self._self_id),
                bytes.fromhex(self._peer_id),
                _raw_public(self._eph),
            ]
        )
        return self._msg1

    def finish(self, msg2: bytes) -> tuple[bytes, SecureLink]:
        """Verify msg2; return msg3 and the established link.

        Raises :class:`VerificationError` if msg2 has the wrong length, its signature does
        not verify under the peer's recorded identity key, or its ephemeral key is invalid.
        """
        if self._msg1 is None or self._eph is None or self._finished:
            raise ProtocolStateError("finish() needs exactly one start() before it")
        self._finished = True
        eph, self._eph = self._eph, None
        if len(msg2) != MSG2_LEN:
            raise VerificationError("handshake message 2 has the wrong length")
        eph_r, sig_r = bytes(msg2[:_EPH_LEN]), bytes(msg2[_EPH_LEN:])
        th2 = _transcript_hash(self._msg1, eph_r)
        peer_key = self._membership[self._peer_id].identity_public_key
        verify_identity_signature(peer_key, sig_r, RESPONDER_SIG_LABEL + th2)
        shared = _exchange(eph, eph_r)
        th3 = _transcript_hash(self._msg1, bytes(msg2))
        k_ir, k_ri = _traffic_keys(shared, th3)
        msg3 = self._identity.sign(INITIATOR_SIG_LABEL + th3)
        if len(msg3) != MSG3_LEN:
            raise InvalidParameter("identity signer returned a malformed signature")
        return msg3, SecureLink(self._peer_id, send_key=k_ir, recv_key=k_ri)


class HandshakeResponder:
    """The accepting side. ``respond(msg1)`` checks who is calling and gives msg2;
    ``finish(msg3)`` checks the caller's signature and returns the link."""

    def __init__(self, identity: IdentitySigner, membership: FleetMembership) -> None:
        self_id = node_id_for(identity.public_key())
        if self_id not in membership:
            raise InvalidParameter("this node is not a member of the fleet")
        self._identity = identity
        self._membership = membership
        self._self_id = self_id
        self._peer_id: str | None = None
        self._th3: bytes | None = None
        self._keys: tuple[bytes, bytes] | None = None
        self._responded = False
        self._finished = False

    def __repr__(self) -> str:
        return "HandshakeResponder(<state redacted>)"

    @property
    def peer_id(self) -> str | None:
        """The claimed initiator (a member), known after :meth:`respond`; authenticated
        only once :meth:`finish` returns."""
        return self._peer_id

    def respond(self, msg1: bytes) -> bytes:
        """Check msg1 (checklist step 1) and return msg2.

        Raises :class:`VerificationError` for a wrong length or version, another fleet,
        another addressee, or an initiator that is not a member.
        """
        if self._responded:
            raise ProtocolStateError("respond() already called")
        self._responded = True
        msg1 = bytes(msg1)
        if len(msg1) != MSG1_LEN or msg1[0] != HANDSHAKE_VERSION:
            raise VerificationError("handshake message 1 is malformed")
        pos = 1
        fleet_id = msg1[pos : pos + FLEET_ID_LEN]
        pos += FLEET_ID_LEN
        initiator_id = msg1[pos : pos + NODE_ID_LEN].hex()
        pos += NODE_ID_LEN
        responder_id = msg1[pos : pos + NODE_ID_LEN].hex()
        pos += NODE_ID_LEN
        eph_i = msg1[pos:]
        if not hmac.compare_digest(fleet_id, self._membership.fleet_id):
            raise VerificationError("handshake is for another fleet")
        if not hmac.compare_digest(responder_id, self._self_id):
            raise VerificationError("handshake is addressed to another node")
        if initiator_id not in self._membership or initiator_id == self._self_id:
            raise VerificationError("handshake from a node that is not a fleet member")
        eph = x25519.X25519PrivateKey.generate()
        eph_r = _raw_public(eph)
        shared = _exchange(eph, eph_i)
        th2 = _transcript_hash(msg1, eph_r)
        sig_r = self._identity.sign(RESPONDER_SIG_LABEL + th2)
        if len(sig_r) != SIGNATURE_LEN:
            raise InvalidParameter("identity signer returned a malformed signature")
        msg2 = eph_r + sig_r
        self._th3 = _transcript_hash(msg1, msg2)
        self._keys = _traffic_keys(shared, self._th3)
        self._peer_id = initiator_id
        return msg2

    def finish(self, msg3: bytes) -> SecureLink:
        """Check the initiator's signature (checklist step 3); return the link.

        Raises :class:`VerificationError` if msg3 does not verify under the identity key
        the membership records for the claimed initiator.
        """
        if self._th3 is None or self._keys is None or self._peer_id is None or self._finished:
            raise ProtocolStateError("finish() needs exactly one successful respond() before it")
        self._finished = True
        th3, (k_ir, k_ri), peer_id = self._th3, self._keys, self._peer_id
        self._th3 = self._keys = None
        if len(msg3) != MSG3_LEN:
            raise VerificationError("handshake message 3 has the wrong length")
        peer_key = self._membership[peer_id].identity_public_key
        verify_identity_signature(peer_key, bytes(msg3), INITIATOR_SIG_LABEL + th3)
        return SecureLink(peer_id, send_key=k_ri, recv_key=k_ir)
