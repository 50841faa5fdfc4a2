"""The byte channel between a host and one HSM node's API port (loopback TCP).

Shared by the node (:mod:`hsmvault.hsm.node_process`) and the host
(:mod:`hsmvault.host.fleet_client`), which must not import each other. It carries the
node's one door (:mod:`hsmvault.wire.hsm_api` bytes, never interpreted here) and one
node-level status query; it adds no security: whoever reaches the port may call the door,
exactly as the host does (the door is built for an untrusted caller).

Frames, both directions (big-endian)::

    frame := length u32 (1..MAX_FRAME_LEN) | kind u8 | body (length - 1 bytes)

* ``KIND_VAULT`` — body is a wire request; the answer is a ``KIND_VAULT`` frame whose body
  is the paired wire response.
* ``KIND_NODE_INFO`` — empty body; the answer's body is a :class:`NodeInfo`.

One request, one response, in order, on a connection; a connection may carry many. A
length outside the bounds, an unknown kind, a non-empty info body or a short read is a
protocol violation: :class:`~hsmvault.errors.DecodeError` here, and the node closes the
connection without answering. The length is checked *before* the body is read.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import Final

from hsmvault.errors import DecodeError, InvalidParameter
from hsmvault.wire.encoding import Reader, Writer

__all__ = [
    "KIND_NODE_INFO",
    "KIND_VAULT",
    "MAX_FRAME_LEN",
    "NODE_INFO_VERSION",
    "NodeInfo",
    "encode_frame",
    "recv_frame",
    "send_frame",
]

#: Frame kinds.
KIND_VAULT: Final = 0x01
KIND_NODE_INFO: Final = 0x02
_KINDS: Final = frozenset({KIND_VAULT, KIND_NODE_INFO})
#: Largest frame (kind byte + body): 128 KiB. Wire messages are a few KiB, plus at most
#: one validation bundle (``wire.hsm_api.MAX_BUNDLE_LEN``, 64 KiB) in ``InstallBundle``
#: and in the start responses.
MAX_FRAME_LEN: Final = 128 * 1024
_LEN: Final = struct.Struct(">I")
NODE_INFO_VERSION: Final = 2
_MAX_REGION_LEN: Final = 64
_U64: Final = (1 << 64) - 1


def encode_frame(kind: int, body: bytes) -> bytes:
    """One frame. Raises :class:`InvalidParameter` for an unknown kind or oversize body."""
    if kind not in _KINDS:
        raise InvalidParameter("unknown frame kind")
    if len(body) + 1 > MAX_FRAME_LEN:
        raise InvalidParameter("frame body too long")
    return _LEN.pack(len(body) + 1) + bytes([kind]) + bytes(body)


def send_frame(sock: socket.socket, kind: int, body: bytes) -> None:
    """Write one frame (the socket's timeout applies; OSError propagates)."""
    sock.sendall(encode_frame(kind, body))


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    parts: list[bytes] = []
    remaining = n
    while remaining:
        chunk = sock.recv(min(remaining, 65536))
        if not chunk:
            raise DecodeError("connection closed inside a frame")
        parts.append(chunk)
        remaining -= len(chunk)
    return b"".join(parts)


def recv_frame(sock: socket.socket) -> tuple[int, bytes] | None:
    """Read one frame: ``(kind, body)``, or ``None`` if the peer closed the connection
    cleanly *between* frames. Raises :class:`DecodeError` on a protocol violation
    (bad length, unknown kind, truncation) and ``OSError``/``TimeoutError`` from the
    socket (its timeout applies to each read)."""
    first = sock.recv(_LEN.size)
    if not first:
        return None
    header = first if len(first) == _LEN.size else first + _recv_exact(sock, _LEN.size - len(first))
    (length,) = _LEN.unpack(header)
    if not 1 <= length <= MAX_FRAME_LEN:
        raise DecodeError("frame length out of range")
    data = _recv_exact(sock, length)
    if data[0] not in _KINDS:
        raise DecodeError("unknown frame kind")
    return data[0], data[1:]


@dataclass(frozen=True)
class NodeInfo:
    """Public, coarse facts about one node (no secrets), for harnesses and operators.

    Encoding (version 2)::

        version u8 | node_id (32) | region (u8 length, 1..64 ASCII) | is_leader bool
        | has_quorum bool | term u64 | commit_index u64 | last_applied u64
        | record_count u32 | tombstone_count u32 | incarnation u64 | joining bool

    ``node_id`` is the fleet node id (the membership's, :func:`fleet.membership.node_id_for`).
    Raft figures are this node's own view and may be stale. ``incarnation`` is the NVRAM
    epoch the node runs under; ``joining`` is True while a new incarnation waits to be
    readmitted (it then serves no vault request).
    """

    node_id: bytes
    region: str
    is_leader: bool
    has_quorum: bool
    term: int
    commit_index: int
    last_applied: int
    record_count: int
    tombstone_count: int
    incarnation: int = 0
    joining: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.node_id, bytes) or len(self.node_id) != 32:
            raise DecodeError("node info: node id must be 32 bytes")
        if not (1 <= len(self.region) <= _MAX_REGION_LEN and self.region.isascii()):
            raise DecodeError("node info: region must be 1..64 ASCII characters")
        for value, top in (
            (self.term, _U64),
            (self.commit_index, _U64),
            (self.last_applied, _U64),
            (self.record_count, 0xFFFF_FFFF),
            (self.tombstone_count, 0xFFFF_FFFF),
            (self.incarnation, _U64),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
                raise DecodeError("node info: counter out of range")
        if not isinstance(self.joining, bool):
            raise DecodeError("node info: joining must be a bool")

    def to_bytes(self) -> bytes:
        w = Writer().u8(NODE_INFO_VERSION).fixed(self.node_id, 32)
        w.var_bytes(self.region.encode("ascii"), prefix=1, max_len=_MAX_REGION_LEN, min_len=1)
        w.boolean(self.is_leader).boolean(self.has_quorum)
        w.u64(self.term).u64(self.commit_index).u64(self.last_applied)
        w.u32(self.record_count).u32(self.tombstone_count)
        w.u64(self.incarnation).boolean(self.joining)
        return w.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> NodeInfo:
        """Parse strictly; raises :class:`DecodeError` only."""
        r = Reader(data)
        if r.u8() != NODE_INFO_VERSION:
            raise DecodeError("node info: unknown version")
        node_id = r.fixed(32)
        region_bytes = r.var_bytes(prefix=1, max_len=_MAX_REGION_LEN, min_len=1)
        try:
            region = region_bytes.decode("ascii")
        except UnicodeDecodeError:
            raise DecodeError("node info: region is not ASCII") from None
        info = cls(
            node_id=node_id,
            region=region,
            is_leader=r.boolean(),
            has_quorum=r.boolean(),
            term=r.u64(),
            commit_index=r.u64(),
            last_applied=r.u64(),
            record_count=r.u32(),
            tombstone_count=r.u32(),
            incarnation=r.u64(),
            joining=r.boolean(),
        )
        r.finish()
        return info
