"""pysyncobj transport over TCP, every byte behind :mod:`~hsmvault.fleet.secure_link`.

This replaces pysyncobj's ``TCPTransport`` (which unpickles whatever arrives on its port)
through the supported hook ``SyncObj(..., transportClass=...)``; build the class argument
with :func:`fleet_transport_factory`. What it guarantees:

* **Who may talk.** A connection carries Raft messages only after the mutual handshake of
  :mod:`secure_link` proved it is a member of the fleet membership (and, for pysyncobj, a
  current peer). Anyone else is dropped after at most :data:`MSG1_LEN` bytes, before any
  public-key work on their behalf (the responder checks the claimed ids first).
* **What may be said.** Frames are decrypted and authenticated in order (replay, reorder,
  drop or tamper kills the connection), then parsed by :mod:`~hsmvault.fleet.codec`, which
  only builds typed values. Nothing received is ever unpickled; pysyncobj's pickle-based
  code path (``TcpConnection``) is never instantiated, and there is no ``password``.
* **No admin port.** pysyncobj's utility ("admin") messages have no encoding in the codec
  and the callbacks pysyncobj registers for them are never called.
* **Bounded.** At most :attr:`TransportConfig.max_pending_handshakes` unauthenticated
  connections, each with a deadline; handshake messages have fixed sizes; frame lengths are
  checked before buffering; the send buffer per peer is capped.

Event loop: the transport runs entirely on pysyncobj's own tick thread. Sockets are
non-blocking and registered on ``syncObj._poller`` (the same poll/select loop pysyncobj
waits on, so incoming bytes wake the loop at once); dialing and handshake deadlines run in
an ``addOnTickCallback`` hook. No extra thread, no lock: every method here must be called
from the tick thread, which is how pysyncobj calls them (``send`` from Raft code,
``addNode``/``dropNode`` on membership changes, ``destroy`` from ``destroy()``).

Connection direction: the member with the smaller node id dials the larger one, so each
pair has one link; a new authenticated link from the same peer (it restarted) replaces the
old one.

**Incarnations and dynamic membership.** A node id names an identity key, which survives
a node losing its host-side state; an *incarnation* (the NVRAM epoch the node runs under)
names one life of its Raft state. Right after the handshake each side sends one *hello*
frame (the first frame of the link, so it is authenticated by the link keys)::

    hello := "HVHI" | version u8 = 1 | sender incarnation u64 | receiver incarnation u64

A link carries Raft messages only after the peer's hello names exactly the incarnation
that the membership in this node's log records for the peer (a change counts once it is
appended, as in Raft), and exactly our own incarnation. So a node that lost its state and
restarted as a new incarnation can never speak for its old self:
the fleet must first remove the old incarnation and add the new one through the log
(:class:`~hsmvault.fleet.codec.MemberNode` entries, whose identity key and address this
transport takes from the log, never from the network; for an identity it was configured
with, the configured address wins over the logged one, since addresses are untrusted
anyway and a node may reach a peer through a route of its own). A **joining** node (a new
incarnation that is not yet a member) accepts whatever incarnation its trusted peers
announce (and names a later one it learnt that way in its next hello), but never
reports a peer as connected to pysyncobj (so it starts no election) and drops vote
requests (so it grants no vote) until :meth:`FleetTransport.set_joined`.
"""

from __future__ import annotations

import errno
import functools
import logging
import socket
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum, auto
from typing import Any, Final

from pysyncobj.poller import POLL_EVENT_TYPE  # type: ignore[import-untyped]
from pysyncobj.transport import Transport  # type: ignore[import-untyped]

from hsmvault.errors import DecodeError, InvalidParameter, VerificationError
from hsmvault.fleet import codec
from hsmvault.fleet.codec import MemberNode
from hsmvault.fleet.membership import FleetMember, FleetMembership, IdentitySigner, node_id_for
from hsmvault.fleet.secure_link import (
    MSG1_LEN,
    MSG2_LEN,
    MSG3_LEN,
    HandshakeInitiator,
    HandshakeResponder,
    SecureLink,
)
from hsmvault.fleet.snapshots import SnapshotGuard

__all__ = ["FleetTransport", "TransportConfig", "fleet_transport_factory"]

logger = logging.getLogger(__name__)

_READ: Final[int] = POLL_EVENT_TYPE.READ
_WRITE: Final[int] = POLL_EVENT_TYPE.WRITE
_ERROR: Final[int] = POLL_EVENT_TYPE.ERROR
_RECV_CHUNK: Final = 64 * 1024
_RECV_PER_EVENT: Final = 16  # chunks read per readiness event before yielding to the loop
_HELLO = struct.Struct(">4sBQQ")
_HELLO_MAGIC: Final = b"HVHI"
_HELLO_VERSION: Final = 1
_JOINING_DROPS: Final = frozenset({"request_vote", "timeout_now"})


@dataclass(frozen=True)
class TransportConfig:
    """Everything the transport trusts, and its limits.

    ``identity`` signs this node's handshakes; ``membership`` is the fleet as this node
    starts with it (ids, identity keys, addresses; later changes come from the log).
    ``incarnation`` is this node's own; ``incarnations`` the peers' (missing ones: 0).
    ``joining``: this node is a new incarnation not yet admitted (see the module docstring).
    Times are seconds.
    """

    identity: IdentitySigner
    membership: FleetMembership
    incarnation: int = 0
    incarnations: Mapping[str, int] | None = None
    joining: bool = False
    snapshot_guard: SnapshotGuard | None = None
    """Set when the node runs sealed snapshots: snapshot chunks are then carried (and
    hashed on the way out and in, see :mod:`~hsmvault.fleet.snapshots`)."""
    handshake_timeout: float = 1.0
    """An unauthenticated or half-open connection is closed after this long."""
    reconnect_interval: float = 0.05
    """Wait between two dials of the same peer."""
    max_pending_handshakes: int = 16
    """Most unauthenticated incoming connections at once; more are closed on accept."""
    max_send_buffer: int = 8 * 1024 * 1024
    """Bytes queued for one peer beyond which its link is closed as too slow."""

    def __post_init__(self) -> None:
        if node_id_for(self.identity.public_key()) not in self.membership:
            raise InvalidParameter("this node's identity is not in the fleet membership")
        if self.handshake_timeout <= 0 or self.reconnect_interval <= 0:
            raise InvalidParameter("timeouts must be positive")
        if self.max_pending_handshakes < 1 or self.max_send_buffer < 1024 * 1024:
            raise InvalidParameter("limits out of range")
        incarnations = [self.incarnation, *(self.incarnations or {}).values()]
        if any(type(i) is not int or not 0 <= i < 2**64 for i in incarnations):
            raise InvalidParameter("incarnations must be ints in [0, 2**64)")

    def __repr__(self) -> str:
        return f"TransportConfig(membership={self.membership!r}, <identity redacted>)"


class _State(Enum):
    CONNECTING = auto()  # outbound, TCP connect in progress
    AWAIT_MSG2 = auto()  # outbound, msg1 sent
    AWAIT_MSG1 = auto()  # inbound, accepted
    AWAIT_MSG3 = auto()  # inbound, msg2 sent
    OPEN = auto()


class _Connection:
    __slots__ = (
        "closed",
        "deadline",
        "hello_ok",
        "inbuf",
        "initiator",
        "link",
        "mask",
        "outbound",
        "outbuf",
        "peer_id",
        "responder",
        "sock",
        "state",
    )

    def __init__(self, sock: socket.socket, state: _State, deadline: float) -> None:
        self.sock = sock
        self.state = state
        self.deadline = deadline
        self.outbound = state is _State.CONNECTING
        self.peer_id: str | None = None
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.initiator: HandshakeInitiator | None = None
        self.responder: HandshakeResponder | None = None
        self.link: SecureLink | None = None
        self.mask = 0
        self.closed = False
        self.hello_ok = False

    def __repr__(self) -> str:
        peer = self.peer_id[:12] if self.peer_id else "?"
        return f"_Connection(peer={peer}, state={self.state.name})"


def _short(node_id: str | None) -> str:
    return node_id[:12] if node_id else "?"


class FleetTransport(Transport):  # type: ignore[misc]  # pysyncobj is untyped
    """pysyncobj ``Transport`` for fleet members. Construct through
    :func:`fleet_transport_factory`; pysyncobj calls ``(syncObj, selfNode, otherNodes)``.

    Raises :class:`InvalidParameter` if ``selfNode`` is not this identity's node or a peer
    is not in the membership.
    """

    def __init__(
        self, sync_obj: Any, self_node: Any, other_nodes: Iterable[Any], *, config: TransportConfig
    ) -> None:
        other_nodes = list(other_nodes)
        super().__init__(sync_obj, self_node, other_nodes)
        self._config = config
        self._membership = config.membership
        self._self_id = node_id_for(config.identity.public_key())
        if self_node is None or self_node.id != self._self_id:
            raise InvalidParameter("selfNode must be this identity's FleetNode")
        incarnations = dict(config.incarnations or {})
        self._incarnation = config.incarnation
        self._joining = config.joining
        self._guard = config.snapshot_guard
        self._halted = False
        self._view: dict[str, tuple[FleetMember, int]] = {
            node_id: (member, incarnations.get(node_id, 0))
            for node_id, member in config.membership.items()
        }
        self._view[self._self_id] = (config.membership[self._self_id], self._incarnation)
        self._highest: dict[str, int] = {n: inc for n, (_, inc) in self._view.items()}
        self._address_book: dict[str, tuple[str, int]] = {
            node_id: (member.host, member.port) for node_id, member in config.membership.items()
        }
        self._poller: Any = sync_obj._poller
        self._peers: dict[str, Any] = {}
        self._established: dict[str, _Connection] = {}
        self._dialing: dict[str, _Connection] = {}
        self._pending: set[_Connection] = set()
        self._next_dial: dict[str, float] = {}
        self._server: socket.socket | None = None
        self._destroyed = False
        for node in other_nodes:
            if node.id not in self._membership:
                raise InvalidParameter("peer is not in the fleet membership")
            self._peers[node.id] = node
        sync_obj.addOnTickCallback(self._on_tick)

    def __repr__(self) -> str:
        return f"FleetTransport(self={_short(self._self_id)}, peers={len(self._peers)})"

    # -- pysyncobj Transport API ---------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True once the listening socket is bound."""
        return self._server is not None

    def tryGetReady(self) -> None:  # noqa: N802  # pysyncobj's name
        """Bind the listening socket. On failure stay not-ready (pysyncobj retries on its
        next tick) rather than raise, which would end pysyncobj's tick thread."""
        if self._server is not None or self._destroyed:
            return
        member = self._membership[self._self_id]
        family = socket.AF_INET6 if ":" in member.host else socket.AF_INET
        server = socket.socket(family, socket.SOCK_STREAM)
        try:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind((member.host, member.port))
            server.listen(64)
            server.setblocking(False)
        except OSError as exc:
            server.close()
            logger.warning("fleet transport could not bind its port (%s)", exc.strerror)
            return
        self._server = server
        self._poller.subscribe(server.fileno(), self._on_accept, _READ | _ERROR)

    def waitReady(self) -> None:  # noqa: N802  # pysyncobj's name
        """Nothing to wait for: binding happens in :meth:`tryGetReady`."""

    def addNode(self, node: Any) -> None:  # noqa: N802  # pysyncobj's name
        """Start talking to ``node`` (a membership change was appended to the log).

        A :class:`MemberNode` brings its member record (identity key, address,
        incarnation) from the log; a plain node is accepted only if already known.
        """
        if node.id == self._self_id:
            return
        if type(node) is MemberNode:
            record = (self._local_address(node.member), node.incarnation)
            if self._view.get(node.id) == record:
                self._peers[node.id] = node
                return
            view = dict(self._view)
            view[node.id] = record
            try:
                membership = FleetMembership(
                    self._membership.fleet_id, [m for m, _ in view.values()]
                )
            except InvalidParameter as exc:
                logger.warning("refusing to add node %s: %s", _short(str(node.id)), exc)
                return
            self._view, self._membership = view, membership
            self._highest[node.id] = max(self._highest.get(node.id, 0), node.incarnation)
            self._drop_links(node.id, "membership record changed")
        elif node.id not in self._view:
            logger.warning("refusing to add node %s: not a fleet member", _short(str(node.id)))
            return
        self._peers[node.id] = node

    def _local_address(self, member: FleetMember) -> FleetMember:
        """``member`` at the address this node was configured to reach it at, if it knows
        that identity (addresses are untrusted either way; a node's own address book, e.g.
        a route through a proxy, wins over the one another member wrote into the log)."""
        local = self._address_book.get(member.node_id)
        if local is None or local == (member.host, member.port):
            return member
        return FleetMember(member.identity_public_key, *local)

    def dropNode(self, node: Any) -> None:  # noqa: N802  # pysyncobj's name
        """Stop talking to ``node``, forget its member record and close its connections."""
        self._peers.pop(node.id, None)
        if node.id != self._self_id and node.id in self._view:
            view = dict(self._view)
            del view[node.id]
            self._view = view
            self._membership = FleetMembership(
                self._membership.fleet_id, [m for m, _ in view.values()]
            )
        self._drop_links(node.id, "node dropped")

    def _drop_links(self, node_id: str, reason: str) -> None:
        for table in (self._established, self._dialing):
            conn = table.get(node_id)
            if conn is not None:
                self._close(conn, reason)

    # -- membership view (read by RaftNode from other threads: copies only) -----------------

    def members(self) -> dict[str, tuple[FleetMember, int]]:
        """The member records this transport currently trusts: node id -> (member,
        incarnation), this node included. A copy."""
        return dict(self._view)

    def highest_incarnation(self, node_id: str) -> int | None:
        """The highest incarnation of ``node_id`` this transport has seen, or None."""
        return self._highest.get(node_id)

    @property
    def joining(self) -> bool:
        """True while this node is a new incarnation not yet admitted to the fleet."""
        return self._joining

    def halt(self) -> None:
        """Stop sending and delivering at once (fail-stop, tick thread); sockets are closed
        by :meth:`destroy` when pysyncobj stops."""
        self._halted = True

    def set_joined(self) -> None:
        """End joining mode (tick thread): the log now lists this node's incarnation.
        Peers with a verified hello are reported to pysyncobj as connected."""
        if not self._joining:
            return
        self._joining = False
        for peer_id, conn in list(self._established.items()):
            node = self._peers.get(peer_id)
            if conn.hello_ok and node is not None and not conn.closed:
                self._onNodeConnected(node)

    def send(self, node: Any, message: Any) -> bool:
        """Encode, seal and queue ``message`` for ``node``. Returns False if there is no
        authenticated link to it, the message is not supported by the codec, or the link
        failed; pysyncobj treats False as "not sent"."""
        conn = self._established.get(node.id)
        if conn is None or conn.link is None or conn.closed or not conn.hello_ok:
            return False
        if self._halted:
            return False
        chunk = message.get("serialized") if isinstance(message, dict) else None
        guard = self._guard
        if guard is not None and type(chunk) is tuple and not guard.outgoing(node.id, chunk):
            return False
        try:
            payload = codec.encode(message, snapshot_chunks=self._guard is not None)
            frame = conn.link.seal(payload)
        except (InvalidParameter, VerificationError) as exc:
            logger.warning("not sending a message: %s", exc)
            return False
        conn.outbuf += frame
        if len(conn.outbuf) > self._config.max_send_buffer:
            self._close(conn, "send buffer full")
            return False
        self._flush(conn)
        return not conn.closed

    def destroy(self) -> None:
        """Close every socket. The transport cannot be used afterwards."""
        self._destroyed = True
        for conn in [*self._established.values(), *self._dialing.values(), *self._pending]:
            self._close(conn, "transport destroyed", notify=False)
        if self._server is not None:
            self._poller.unsubscribe(self._server.fileno())
            self._server.close()
            self._server = None

    # -- loop hooks ----------------------------------------------------------------------

    def _on_tick(self) -> None:
        if self._destroyed or self._server is None:
            return
        now = time.monotonic()
        for conn in [*self._dialing.values(), *self._pending]:
            if now > conn.deadline:
                self._close(conn, "handshake timed out")
        for peer_id in list(self._peers):
            if (
                self._self_id < peer_id
                and peer_id not in self._established
                and peer_id not in self._dialing
                and now >= self._next_dial.get(peer_id, 0.0)
            ):
                self._dial(peer_id, now)

    def _dial(self, peer_id: str, now: float) -> None:
        member = self._membership[peer_id]
        family = socket.AF_INET6 if ":" in member.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Connection(sock, _State.CONNECTING, now + self._config.handshake_timeout)
        conn.peer_id = peer_id
        conn.initiator = HandshakeInitiator(self._config.identity, self._membership, peer_id)
        self._dialing[peer_id] = conn
        err = sock.connect_ex((member.host, member.port))
        if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            self._close(conn, "connect failed")
            return
        self._watch(conn)

    def _on_accept(self, _fd: int, _mask: int) -> None:
        if self._server is None:
            return
        for _ in range(64):
            try:
                sock, _addr = self._server.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if len(self._pending) >= self._config.max_pending_handshakes:
                sock.close()
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            deadline = time.monotonic() + self._config.handshake_timeout
            conn = _Connection(sock, _State.AWAIT_MSG1, deadline)
            conn.responder = HandshakeResponder(self._config.identity, self._membership)
            self._pending.add(conn)
            self._watch(conn)

    def _watch(self, conn: _Connection) -> None:
        """(Re)register ``conn`` with the poller for the events it now needs."""
        if conn.closed:
            return
        mask = _READ | _ERROR
        if conn.outbuf or conn.state is _State.CONNECTING:
            mask |= _WRITE
        if mask != conn.mask:
            conn.mask = mask
            self._poller.subscribe(
                conn.sock.fileno(), functools.partial(self._on_event, conn), mask
            )

    def _on_event(self, conn: _Connection, _fd: int, mask: int) -> None:
        if conn.closed:
            return
        if conn.state is _State.CONNECTING:
            if mask & (_WRITE | _ERROR):
                self._on_connected(conn)
            return
        if mask & _READ:
            self._on_readable(conn)
        if not conn.closed and mask & _WRITE:
            self._flush(conn)
        if not conn.closed and mask & _ERROR and not mask & _READ:
            self._close(conn, "socket error")

    def _on_connected(self, conn: _Connection) -> None:
        if conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
            self._close(conn, "connect failed")
            return
        assert conn.initiator is not None
        conn.state = _State.AWAIT_MSG2
        conn.outbuf += conn.initiator.start()
        self._flush(conn)

    def _on_readable(self, conn: _Connection) -> None:
        for _ in range(_RECV_PER_EVENT):
            try:
                data = conn.sock.recv(_RECV_CHUNK)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._close(conn, "receive failed")
                return
            if not data:
                self._close(conn, "peer closed the connection")
                return
            try:
                self._on_data(conn, data)
            except (VerificationError, DecodeError) as exc:
                self._close(conn, str(exc))
                return
            if conn.closed:
                return

    def _flush(self, conn: _Connection) -> None:
        while conn.outbuf and not conn.closed:
            try:
                sent = conn.sock.send(conn.outbuf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._close(conn, "send failed")
                return
            del conn.outbuf[:sent]
        self._watch(conn)

    # -- protocol ------------------------------------------------------------------------

    def _on_data(self, conn: _Connection, data: bytes) -> None:
        """Advance ``conn``'s state machine. Raises VerificationError/DecodeError on any
        violation; the caller closes the connection."""
        if conn.state is _State.OPEN:
            self._deliver(conn, data)
            return
        conn.inbuf += data
        if conn.state is _State.AWAIT_MSG1:
            if len(conn.inbuf) < MSG1_LEN:
                return
            if len(conn.inbuf) > MSG1_LEN:  # the initiator must wait for msg2
                raise VerificationError("unexpected bytes after handshake message 1")
            assert conn.responder is not None
            msg2 = conn.responder.respond(bytes(conn.inbuf))
            conn.peer_id = conn.responder.peer_id
            conn.inbuf.clear()
            conn.state = _State.AWAIT_MSG3
            conn.outbuf += msg2
            self._flush(conn)
        elif conn.state is _State.AWAIT_MSG3:
            if len(conn.inbuf) < MSG3_LEN:
                return
            assert conn.responder is not None
            link = conn.responder.finish(bytes(conn.inbuf[:MSG3_LEN]))
            rest = bytes(conn.inbuf[MSG3_LEN:])
            conn.inbuf.clear()
            conn.responder = None
            self._pending.discard(conn)
            self._establish(conn, link)
            if rest and not conn.closed:
                self._deliver(conn, rest)
        elif conn.state is _State.AWAIT_MSG2:
            if len(conn.inbuf) < MSG2_LEN:
                return
            if len(conn.inbuf) > MSG2_LEN:  # the responder must wait for msg3
                raise VerificationError("unexpected bytes after handshake message 2")
            assert conn.initiator is not None
            msg3, link = conn.initiator.finish(bytes(conn.inbuf))
            conn.inbuf.clear()
            conn.initiator = None
            conn.outbuf += msg3
            if conn.peer_id is not None and self._dialing.get(conn.peer_id) is conn:
                del self._dialing[conn.peer_id]
            self._establish(conn, link)
            self._flush(conn)

    def _establish(self, conn: _Connection, link: SecureLink) -> None:
        peer_id = link.peer_id
        node = self._peers.get(peer_id)
        if node is None:
            self._close(conn, "authenticated member is not a current peer")
            return
        old = self._established.get(peer_id)
        if old is not None:
            self._close(old, "replaced by a new link", notify=False)
        conn.link = link
        conn.peer_id = peer_id
        conn.state = _State.OPEN
        self._established[peer_id] = conn
        logger.debug("link to %s established", _short(peer_id))
        _, peer_incarnation = self._view[peer_id]
        hello = _HELLO.pack(_HELLO_MAGIC, _HELLO_VERSION, self._incarnation, peer_incarnation)
        conn.outbuf += link.seal(hello)
        self._flush(conn)

    def _check_hello(self, conn: _Connection, plaintext: bytes) -> None:
        """The peer's first frame: its incarnation and what it believes ours is."""
        assert conn.peer_id is not None
        if len(plaintext) != _HELLO.size:
            raise VerificationError("link hello is malformed")
        magic, version, theirs, ours = _HELLO.unpack(plaintext)
        if magic != _HELLO_MAGIC or version != _HELLO_VERSION:
            raise VerificationError("link hello is malformed")
        if ours != self._incarnation:
            raise VerificationError("peer does not know this node's current incarnation")
        record = self._view.get(conn.peer_id)
        if record is None:
            raise VerificationError("peer is not a current member")
        if theirs != record[1]:
            if not self._joining:
                raise VerificationError("peer runs an incarnation the membership does not list")
            if theirs > record[1]:
                # A joining node has no log to learn a peer's later incarnation from
                # (the peer itself rejoined since formation): it takes the one the
                # authenticated peer announces, for the hello of its next link — the
                # peer refuses this one, which named the old incarnation. The log (or
                # a snapshot) overrides it; a joiner neither votes nor commits.
                self._view = {**self._view, conn.peer_id: (record[0], theirs)}
                logger.debug("joining: peer %s runs incarnation %d", _short(conn.peer_id), theirs)
        conn.hello_ok = True
        node = self._peers.get(conn.peer_id)
        if node is not None and not self._joining:
            self._onNodeConnected(node)

    def _deliver(self, conn: _Connection, data: bytes) -> None:
        assert conn.link is not None
        assert conn.peer_id is not None
        node = self._peers.get(conn.peer_id)
        for plaintext in conn.link.receive(data):
            if not conn.hello_ok:
                self._check_hello(conn, plaintext)
                continue
            message = codec.decode(plaintext, snapshot_chunks=self._guard is not None)
            if conn.closed or node is None or self._halted:
                return
            if self._joining and message["type"] in _JOINING_DROPS:
                continue
            chunk = message.get("serialized")
            if self._guard is not None and chunk is not None:
                self._guard.incoming(node.id, chunk)
            self._onMessageReceived(node, message)

    def _close(self, conn: _Connection, reason: str, *, notify: bool = True) -> None:
        if conn.closed:
            return
        conn.closed = True
        if conn.link is not None:
            conn.link.kill()
        self._poller.unsubscribe(conn.sock.fileno())
        conn.sock.close()
        conn.inbuf.clear()
        conn.outbuf.clear()
        self._pending.discard(conn)
        peer_id = conn.peer_id
        logger.debug("connection with %s closed: %s", _short(peer_id), reason)
        if peer_id is None:
            return
        if self._dialing.get(peer_id) is conn:
            del self._dialing[peer_id]
        if conn.outbound:
            self._next_dial[peer_id] = time.monotonic() + self._config.reconnect_interval
        if self._established.get(peer_id) is conn:
            del self._established[peer_id]
            node = self._peers.get(peer_id)
            if notify and node is not None:
                self._onNodeDisconnected(node)


def fleet_transport_factory(config: TransportConfig) -> Callable[..., FleetTransport]:
    """The ``transportClass`` argument for ``SyncObj``: builds a :class:`FleetTransport`
    bound to ``config`` when pysyncobj calls it with ``(syncObj, selfNode, otherNodes)``."""

    def build(sync_obj: Any, self_node: Any, other_nodes: Iterable[Any]) -> FleetTransport:
        return FleetTransport(sync_obj, self_node, other_nodes, config=config)

    return build
