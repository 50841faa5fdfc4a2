"""Strict binary codec for pysyncobj 0.3.17's Raft messages — no pickle on the wire.

pysyncobj hands its transport plain dicts (``{'type': 'request_vote', 'term': 3, ...}``)
and expects the same dicts back. Log entries inside them carry pysyncobj's *own* command
bytes, which are pickles. This module encodes every supported dict into one canonical byte
string and back. It never puts a pickle on the wire, and never unpickles received bytes:

* **Sending**: a command from the local log (made in this process by ``pickle.dumps``,
  either by pysyncobj or by :func:`decode` below) is *transcoded* into typed fields. The
  local pickle is read with a restricted unpickler that resolves only the globals those
  pickles need (``_codecs.encode`` and ``bytes`` for ``bytes`` values under protocol 2,
  and :class:`FleetNode`).
* **Receiving**: the typed fields are checked and pysyncobj's command bytes are rebuilt
  *here* with ``pysyncobj.pickle.dumps``. So every byte string pysyncobj ever unpickles was
  made in its own process.

Wire format, version 1 (all integers big-endian)::

    message  := VERSION(u8 = 1) type(u8) body
    request_vote            term u64 | last_log_index u64 | last_log_term u64
    response_vote           term u64
    timeout_now             term u64
    next_node_idx           next_node_idx u64 | reset bool | success bool
    apply_command           command | has_request_id bool | [request_id u64]
    apply_command_response  request_id u64 | form u8 (0: error u8 | 1: log_idx u64 log_term u64)
    append_entries          term u64 | commit_index u64 | prev_log_idx u64 | prev_log_term u64
                            | count u32 | count * (command | idx u64 | term u64)
    snapshot_chunk (8)      term u64 | commit_index u64 | present bool
                            | [is_first bool | is_last bool | length u32 | data]
                            — pysyncobj's ``append_entries`` with ``serialized``: a chunk
                            (at most MAX_SNAPSHOT_CHUNK bytes) of the leader's snapshot
                            file, which is sealed (see fleet/snapshots.py), or None
    bool     := u8 in {0, 1}
    command  := kind u8 (0: app  len u32 | payload   — payload <= MAX_COMMAND_SIZE
                         1: noop
                         2: membership  op u8 (0 add, 1 rem) | node id 32 bytes
                         3: version  u64
                         4: member change  op u8 (0 add, 1 rem) | identity key 32 bytes
                            | incarnation u64 | host length u8 | host (ASCII literal IP)
                            | port u16)

Kind 4 carries the whole member record (:class:`MemberNode`: identity key, address and
incarnation) of a dynamic membership change, so that every replica learns a new member's
identity key from the replicated log, never from the network; its node id is derived from
the key. Kind 2 (a bare node id) is what pysyncobj makes for plain :class:`FleetNode`
objects; the transport accepts such a change only for members it already knows.

Not supported, by design (encode raises :class:`InvalidParameter`, decode cannot express
them): oversized-entry chunks
(``transmission``/``data``), read-only nodes and pysyncobj's admin ("utility") messages.
Replicated commands are restricted to one method (function id 0) taking one ``bytes``
argument of at most :data:`MAX_COMMAND_SIZE` bytes, so pysyncobj's pickled entry stays far
below its 64 KiB ``appendEntriesBatchSizeBytes`` and the chunked path is never taken.

Errors: :func:`decode` raises only :class:`DecodeError` on any malformed input (unknown
version or type, bad lengths, out-of-range values, trailing bytes, oversize).
:func:`encode` raises :class:`InvalidParameter` for a dict it does not support (a local
programming error or an unsupported pysyncobj feature, never an attack).
"""

from __future__ import annotations

import io
import pickle
import struct
from typing import Any, Final

from pysyncobj import pickle as psy_pickle  # type: ignore[import-untyped]

from hsmvault.errors import DecodeError, InvalidParameter
from hsmvault.fleet.membership import IDENTITY_KEY_LEN, NODE_ID_LEN, FleetMember, FleetNode

__all__ = [
    "MAX_COMMAND_SIZE",
    "MAX_ENTRIES",
    "MAX_MESSAGE_SIZE",
    "MAX_SNAPSHOT_CHUNK",
    "MESSAGE_TYPES",
    "WIRE_VERSION",
    "MemberNode",
    "Message",
    "decode",
    "decode_command",
    "encode",
    "encode_command",
    "make_app_command",
    "membership_change",
]

Message = dict[str, Any]

WIRE_VERSION: Final = 1
MAX_COMMAND_SIZE: Final = 16 * 1024
"""Largest replicated command payload (bytes). Its pickle stays < 64 KiB even in the worst
case (protocol 2 stores ``bytes`` as latin-1 text: at most two bytes per byte)."""
MAX_MESSAGE_SIZE: Final = 1024 * 1024
"""Largest encoded message. pysyncobj batches about 64 KiB of commands per message."""
MAX_ENTRIES: Final = 65_536
MAX_SNAPSHOT_CHUNK: Final = 128 * 1024
"""Largest snapshot chunk in one message (pysyncobj's ``logCompactionBatchSize`` must not
exceed it; the fleet uses 64 KiB)."""
"""Most log entries in one ``append_entries``."""
U64_MAX: Final = 2**64 - 1

# pysyncobj internals we rely on (pinned 0.3.17, syncobj.py:56-60, config.py:2-10).
_CMD_REGULAR: Final = 0
_CMD_NO_OP: Final = 1
_CMD_MEMBERSHIP: Final = 2
_CMD_VERSION: Final = 3
_APP_FUNC_ID: Final = 0
_FAIL_REASONS: Final = frozenset(range(1, 8))  # QUEUE_FULL .. UNKNOWN_OUTCOME

_T_REQUEST_VOTE: Final = 1
_T_RESPONSE_VOTE: Final = 2
_T_TIMEOUT_NOW: Final = 3
_T_NEXT_NODE_IDX: Final = 4
_T_APPLY_COMMAND: Final = 5
_T_APPLY_COMMAND_RESPONSE: Final = 6
_T_APPEND_ENTRIES: Final = 7

MESSAGE_TYPES: Final = {
    "request_vote": _T_REQUEST_VOTE,
    "response_vote": _T_RESPONSE_VOTE,
    "timeout_now": _T_TIMEOUT_NOW,
    "next_node_idx": _T_NEXT_NODE_IDX,
    "apply_command": _T_APPLY_COMMAND,
    "apply_command_response": _T_APPLY_COMMAND_RESPONSE,
    "append_entries": _T_APPEND_ENTRIES,
}
_T_SNAPSHOT_CHUNK: Final = 8  # pysyncobj's "append_entries" carrying "serialized"
_TYPE_NAMES: Final = {v: k for k, v in MESSAGE_TYPES.items()} | {
    _T_SNAPSHOT_CHUNK: "append_entries"
}

_K_APP: Final = 0
_K_NOOP: Final = 1
_K_MEMBERSHIP: Final = 2
_K_VERSION: Final = 3
_K_MEMBER: Final = 4
_MAX_HOST_LEN: Final = 45  # longest textual IPv6 address
_MEMBERSHIP_OPS: Final = ("add", "rem")
_MIN_ENTRY_WIRE: Final = 1 + 8 + 8  # a noop entry

_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")


class MemberNode(FleetNode):
    """A :class:`FleetNode` that carries the member record of a dynamic membership change:
    identity key, address and incarnation. pysyncobj keeps it in its log entry (a local
    pickle) and hands it to the transport (``addNode``/``dropNode``).

    Equality and hashing stay those of pysyncobj's ``Node`` (by node id only), so two
    incarnations of one node id are "the same node" to pysyncobj: the fleet therefore
    never holds two incarnations of a node id at once (remove the old one first).
    """

    def __init__(self, member: FleetMember, incarnation: int) -> None:
        if type(incarnation) is not int or not 0 <= incarnation <= U64_MAX:
            raise InvalidParameter("incarnation must be an int in [0, 2**64)")
        super().__init__(member.node_id)
        self.identity_public_key = member.identity_public_key
        self.host = member.host
        self.port = member.port
        self.incarnation = incarnation

    @property
    def member(self) -> FleetMember:
        """The member record (identity key and address) this node names."""
        return FleetMember(self.identity_public_key, self.host, self.port)

    def __repr__(self) -> str:
        return f"MemberNode({self.node_id[:12]}…, incarnation={self.incarnation})"


# ---------------------------------------------------------------------------------------
# Local pickles: made in this process, read with an allow-list of three globals.


class _LocalCommandUnpickler(pickle.Unpickler):
    """Reads pysyncobj command pickles made in this process. Resolves only the globals
    those pickles use; anything else is refused (defence in depth: the input is local)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):  # non-empty bytes, protocol 2
            return super().find_class(module, name)
        if (module, name) in (("__builtin__", "bytes"), ("builtins", "bytes")):  # b""
            return bytes
        if (module, name) == (FleetNode.__module__, FleetNode.__qualname__):
            return FleetNode
        if (module, name) == (MemberNode.__module__, MemberNode.__qualname__):
            return MemberNode
        raise InvalidParameter("local command pickle refers to an unexpected global")


def _unpickle_local(data: bytes) -> Any:
    """Unpickle bytes that were produced by ``pickle.dumps`` in this process (a pysyncobj
    log entry). Never called with received bytes."""
    try:
        return _LocalCommandUnpickler(io.BytesIO(data)).load()  # local bytes only
    except InvalidParameter:
        raise
    except Exception:
        raise InvalidParameter("local command pickle is malformed") from None


def _dumps(value: object) -> bytes:
    # Through pysyncobj's module attribute so instrumentation sees every pickle we make.
    out: bytes = psy_pickle.dumps(value)
    return out


def make_app_command(payload: bytes) -> bytes:
    """pysyncobj's log-entry bytes for ``apply(payload)`` (type byte + pickle), exactly
    as :func:`decode` rebuilds them. Raises :class:`InvalidParameter` if too large."""
    if type(payload) is not bytes:
        raise InvalidParameter("command payload must be bytes")
    if len(payload) > MAX_COMMAND_SIZE:
        raise InvalidParameter("command payload exceeds MAX_COMMAND_SIZE")
    return bytes([_CMD_REGULAR]) + _dumps((_APP_FUNC_ID, (payload,)))


# ---------------------------------------------------------------------------------------
# Encoding


def _u64(value: object, what: str) -> bytes:
    if type(value) is not int or not 0 <= value <= U64_MAX:
        raise InvalidParameter(f"{what} must be an int in [0, 2**64)")
    return _U64.pack(value)


def _bool(value: object, what: str) -> bytes:
    if type(value) is not bool:
        raise InvalidParameter(f"{what} must be a bool")
    return b"\x01" if value else b"\x00"


def _app_payload(body: object) -> bytes:
    """The ``bytes`` argument of a pysyncobj regular command tuple, or raise."""
    if type(body) is not tuple or len(body) not in (2, 3):
        raise InvalidParameter("unsupported replicated call shape")
    if len(body) == 3 and body[2] != {}:  # `sync=True` calls log (id, args, {})
        raise InvalidParameter("replicated calls take no keyword arguments")
    func_id, args = body[0], body[1]
    if type(func_id) is not int or func_id != _APP_FUNC_ID:
        raise InvalidParameter("only the single replicated apply method is supported")
    if type(args) is not tuple or len(args) != 1 or type(args[0]) is not bytes:
        raise InvalidParameter("apply takes exactly one bytes argument")
    payload: bytes = args[0]
    if len(payload) > MAX_COMMAND_SIZE:
        raise InvalidParameter("command payload exceeds MAX_COMMAND_SIZE")
    return payload


def encode_command(command: bytes) -> bytes:
    """Transcode one of pysyncobj's local log-entry commands into its wire form.

    Raises :class:`InvalidParameter` for a command kind or shape we do not support.
    """
    if type(command) is not bytes or not command:
        raise InvalidParameter("command must be non-empty bytes")
    kind = command[0]
    if kind == _CMD_NO_OP:
        if len(command) != 1:
            raise InvalidParameter("no-op command has trailing bytes")
        return bytes([_K_NOOP])
    body = _unpickle_local(command[1:])
    if kind == _CMD_REGULAR:
        payload = _app_payload(body)
        return bytes([_K_APP]) + _U32.pack(len(payload)) + payload
    if kind == _CMD_MEMBERSHIP:
        if type(body) is not list or len(body) != 3 or body[0] not in _MEMBERSHIP_OPS:
            raise InvalidParameter("unsupported membership command shape")
        node_id, node = body[1], body[2]
        if type(node_id) is not str or not isinstance(node, FleetNode) or node.id != node_id:
            raise InvalidParameter("membership command must name a FleetNode")
        op = _MEMBERSHIP_OPS.index(body[0])
        if type(node) is MemberNode:
            return bytes([_K_MEMBER, op]) + _member_record(node)
        if type(node) is not FleetNode:
            raise InvalidParameter("membership command must name a FleetNode")
        return bytes([_K_MEMBERSHIP, op]) + _node_id_bytes(node_id)
    if kind == _CMD_VERSION:
        return bytes([_K_VERSION]) + _u64(body, "code version")
    raise InvalidParameter("unknown pysyncobj command type")


def _member_record(node: MemberNode) -> bytes:
    member = node.member  # re-validates the record (key length, literal IP, port)
    if member.node_id != node.id:
        raise InvalidParameter("member record does not match its node id")
    host = member.host.encode("ascii")
    return b"".join(
        [
            member.identity_public_key,
            _u64(node.incarnation, "incarnation"),
            bytes([len(host)]),
            host,
            struct.pack(">H", member.port),
        ]
    )


def membership_change(command: bytes) -> tuple[str, MemberNode | FleetNode] | None:
    """For one of pysyncobj's local log-entry commands: ``(op, node)`` if it is a
    membership change (``op`` is ``"add"`` or ``"rem"``), else None. Reads only local
    pickles (see :func:`encode_command`); raises :class:`InvalidParameter` on a malformed
    one."""
    if type(command) is not bytes or not command or command[0] != _CMD_MEMBERSHIP:
        return None
    body = _unpickle_local(command[1:])
    if type(body) is not list or len(body) != 3 or body[0] not in _MEMBERSHIP_OPS:
        raise InvalidParameter("unsupported membership command shape")
    node = body[2]
    if not isinstance(node, FleetNode):
        raise InvalidParameter("membership command must name a FleetNode")
    op: str = body[0]
    return op, node


def _node_id_bytes(node_id: str) -> bytes:
    if len(node_id) != 2 * NODE_ID_LEN or node_id != node_id.lower():
        raise InvalidParameter("node id must be 64 lowercase hex characters")
    try:
        return bytes.fromhex(node_id)
    except ValueError:
        raise InvalidParameter("node id must be 64 lowercase hex characters") from None


def _check_fields(message: Message, required: set[str], optional: frozenset[str]) -> None:
    keys = set(message) - {"type"}
    if not required <= keys:
        raise InvalidParameter("message is missing a field")
    if keys - required - optional:
        raise InvalidParameter("message has an unsupported field")


def _encode_body(msg_type: int, m: Message) -> bytes:  # noqa: PLR0911  # one arm per type
    none: frozenset[str] = frozenset()
    if msg_type in (_T_RESPONSE_VOTE, _T_TIMEOUT_NOW):
        _check_fields(m, {"term"}, none)
        return _u64(m["term"], "term")
    if msg_type == _T_REQUEST_VOTE:
        _check_fields(m, {"term", "last_log_index", "last_log_term"}, none)
        return b"".join(_u64(m[k], k) for k in ("term", "last_log_index", "last_log_term"))
    if msg_type == _T_NEXT_NODE_IDX:
        _check_fields(m, {"next_node_idx", "reset", "success"}, none)
        return (
            _u64(m["next_node_idx"], "next_node_idx")
            + _bool(m["reset"], "reset")
            + _bool(m["success"], "success")
        )
    if msg_type == _T_APPLY_COMMAND:
        _check_fields(m, {"command"}, frozenset({"request_id"}))
        out = encode_command(m["command"])
        if "request_id" in m:
            return out + b"\x01" + _u64(m["request_id"], "request_id")
        return out + b"\x00"
    if msg_type == _T_APPLY_COMMAND_RESPONSE:
        if "error" in m:
            _check_fields(m, {"request_id", "error"}, none)
            if type(m["error"]) is not int or m["error"] not in _FAIL_REASONS:
                raise InvalidParameter("error must be a pysyncobj failure reason")
            return _u64(m["request_id"], "request_id") + bytes([0, m["error"]])
        _check_fields(m, {"request_id", "log_idx", "log_term"}, none)
        return b"".join(
            [
                _u64(m["request_id"], "request_id"),
                b"\x01",
                _u64(m["log_idx"], "log_idx"),
                _u64(m["log_term"], "log_term"),
            ]
        )
    # append_entries: the regular form (no chunked transmission).
    _check_fields(m, {"term", "commit_index", "prevLogIdx", "prevLogTerm", "entries"}, none)
    entries = m["entries"]
    if type(entries) is not list or len(entries) > MAX_ENTRIES:
        raise InvalidParameter("entries must be a list of at most MAX_ENTRIES")
    parts = [
        _u64(m["term"], "term"),
        _u64(m["commit_index"], "commit_index"),
        _u64(m["prevLogIdx"], "prevLogIdx"),
        _u64(m["prevLogTerm"], "prevLogTerm"),
        _U32.pack(len(entries)),
    ]
    for entry in entries:
        if type(entry) is not tuple or len(entry) != 3:
            raise InvalidParameter("log entry must be a (command, idx, term) tuple")
        parts += [encode_command(entry[0]), _u64(entry[1], "idx"), _u64(entry[2], "term")]
    return b"".join(parts)


def _encode_snapshot_chunk(m: Message) -> bytes:
    _check_fields(m, {"term", "commit_index", "serialized"}, frozenset())
    head = _u64(m["term"], "term") + _u64(m["commit_index"], "commit_index")
    chunk = m["serialized"]
    if chunk is None:
        return head + b"\x00"
    if type(chunk) is not tuple or len(chunk) != 3 or type(chunk[0]) is not bytes:
        raise InvalidParameter("snapshot chunk must be (bytes, is_first, is_last)")
    if len(chunk[0]) > MAX_SNAPSHOT_CHUNK:
        raise InvalidParameter("snapshot chunk exceeds MAX_SNAPSHOT_CHUNK")
    return b"".join(
        [
            head,
            b"\x01",
            _bool(chunk[1], "is_first"),
            _bool(chunk[2], "is_last"),
            _U32.pack(len(chunk[0])),
            chunk[0],
        ]
    )


def encode(message: Message, *, snapshot_chunks: bool = False) -> bytes:
    """Encode one pysyncobj message dict into the canonical wire form.

    Snapshot chunks (``append_entries`` with ``serialized``) are encoded only with
    ``snapshot_chunks=True`` (a node that runs sealed snapshots); otherwise refused.

    Raises :class:`InvalidParameter` if the dict has an unknown type, a missing or extra
    field, a value of the wrong type or range, or is larger than :data:`MAX_MESSAGE_SIZE`.
    """
    if not isinstance(message, dict):
        raise InvalidParameter("message must be a dict")
    msg_type = MESSAGE_TYPES.get(message.get("type"))  # type: ignore[arg-type]
    if msg_type is None:
        raise InvalidParameter("unsupported message type")
    if msg_type == _T_APPEND_ENTRIES and "serialized" in message:
        if not snapshot_chunks:
            raise InvalidParameter("snapshot chunks are not enabled")
        out = bytes([WIRE_VERSION, _T_SNAPSHOT_CHUNK]) + _encode_snapshot_chunk(message)
    else:
        out = bytes([WIRE_VERSION, msg_type]) + _encode_body(msg_type, message)
    if len(out) > MAX_MESSAGE_SIZE:
        raise InvalidParameter("message exceeds MAX_MESSAGE_SIZE")
    return out


# ---------------------------------------------------------------------------------------
# Decoding


class _Reader:
    """A cursor over received bytes; every read is bounds-checked."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def remaining(self) -> int:
        return len(self._data) - self._pos

    def take(self, n: int) -> bytes:
        if n > self.remaining():
            raise DecodeError("message is truncated")
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        value: int = _U32.unpack(self.take(4))[0]
        return value

    def u64(self) -> int:
        value: int = _U64.unpack(self.take(8))[0]
        return value

    def boolean(self) -> bool:
        value = self.u8()
        if value > 1:
            raise DecodeError("boolean is not 0 or 1")
        return value == 1

    def end(self) -> None:
        if self.remaining():
            raise DecodeError("message has trailing bytes")


def _read_command(r: _Reader) -> bytes:
    kind = r.u8()
    if kind == _K_APP:
        size = r.u32()
        if size > MAX_COMMAND_SIZE:
            raise DecodeError("command payload exceeds MAX_COMMAND_SIZE")
        return make_app_command(r.take(size))
    if kind == _K_NOOP:
        return bytes([_CMD_NO_OP])
    if kind == _K_MEMBERSHIP:
        op = r.u8()
        if op >= len(_MEMBERSHIP_OPS):
            raise DecodeError("unknown membership operation")
        node_id = r.take(NODE_ID_LEN).hex()
        return bytes([_CMD_MEMBERSHIP]) + _dumps([_MEMBERSHIP_OPS[op], node_id, FleetNode(node_id)])
    if kind == _K_VERSION:
        return bytes([_CMD_VERSION]) + _dumps(r.u64())
    if kind == _K_MEMBER:
        op = r.u8()
        if op >= len(_MEMBERSHIP_OPS):
            raise DecodeError("unknown membership operation")
        key = r.take(IDENTITY_KEY_LEN)
        incarnation = r.u64()
        host_len = r.u8()
        if not 1 <= host_len <= _MAX_HOST_LEN:
            raise DecodeError("member host has an invalid length")
        raw_host = r.take(host_len)
        port = struct.unpack(">H", r.take(2))[0]
        try:
            host = raw_host.decode("ascii")
            node = MemberNode(FleetMember(key, host, port), incarnation)
        except (UnicodeDecodeError, InvalidParameter):
            raise DecodeError("member record is invalid") from None
        return bytes([_CMD_MEMBERSHIP]) + _dumps([_MEMBERSHIP_OPS[op], node.id, node])
    raise DecodeError("unknown command kind")


def decode_command(data: bytes) -> bytes:
    """Rebuild pysyncobj's log-entry bytes from one wire command (see module docstring).

    Raises :class:`DecodeError` on malformed input or trailing bytes.
    """
    r = _Reader(bytes(data))
    command = _read_command(r)
    r.end()
    return command


def _decode_snapshot_chunk(r: _Reader) -> Message:
    m: Message = {"type": "append_entries", "term": r.u64(), "commit_index": r.u64()}
    if not r.boolean():
        m["serialized"] = None
        return m
    is_first, is_last = r.boolean(), r.boolean()
    size = r.u32()
    if size > MAX_SNAPSHOT_CHUNK:
        raise DecodeError("snapshot chunk exceeds MAX_SNAPSHOT_CHUNK")
    m["serialized"] = (r.take(size), is_first, is_last)
    return m


def _decode_body(msg_type: int, r: _Reader) -> Message:
    name = _TYPE_NAMES[msg_type]
    if msg_type in (_T_RESPONSE_VOTE, _T_TIMEOUT_NOW):
        return {"type": name, "term": r.u64()}
    if msg_type == _T_REQUEST_VOTE:
        return {"type": name, "term": r.u64(), "last_log_index": r.u64(), "last_log_term": r.u64()}
    if msg_type == _T_NEXT_NODE_IDX:
        return {
            "type": name,
            "next_node_idx": r.u64(),
            "reset": r.boolean(),
            "success": r.boolean(),
        }
    if msg_type == _T_APPLY_COMMAND:
        m: Message = {"type": name, "command": _read_command(r)}
        if r.boolean():
            m["request_id"] = r.u64()
        return m
    if msg_type == _T_APPLY_COMMAND_RESPONSE:
        m = {"type": name, "request_id": r.u64()}
        form = r.u8()
        if form == 0:
            error = r.u8()
            if error not in _FAIL_REASONS:
                raise DecodeError("unknown failure reason")
            m["error"] = error
        elif form == 1:
            m["log_idx"] = r.u64()
            m["log_term"] = r.u64()
        else:
            raise DecodeError("unknown apply_command_response form")
        return m
    m = {"type": name, "term": r.u64(), "commit_index": r.u64()}
    m["prevLogIdx"] = r.u64()
    m["prevLogTerm"] = r.u64()
    count = r.u32()
    # Checked before building anything: each entry takes at least _MIN_ENTRY_WIRE bytes.
    if count > MAX_ENTRIES or count * _MIN_ENTRY_WIRE > r.remaining():
        raise DecodeError("entry count is larger than the message allows")
    m["entries"] = [(_read_command(r), r.u64(), r.u64()) for _ in range(count)]
    return m


def decode(data: bytes, *, snapshot_chunks: bool = False) -> Message:
    """Decode one wire message into the dict pysyncobj expects. Snapshot chunks (type 8)
    are accepted only with ``snapshot_chunks=True``.

    Raises :class:`DecodeError` (and nothing else) on an oversize message, an unknown
    version or type, a truncated or malformed field, or trailing bytes.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError("message must be bytes")
    if len(data) > MAX_MESSAGE_SIZE:
        raise DecodeError("message exceeds MAX_MESSAGE_SIZE")
    r = _Reader(bytes(data))
    if r.u8() != WIRE_VERSION:
        raise DecodeError("unknown wire version")
    msg_type = r.u8()
    if msg_type not in _TYPE_NAMES or (msg_type == _T_SNAPSHOT_CHUNK and not snapshot_chunks):
        raise DecodeError("unknown message type")
    if msg_type == _T_SNAPSHOT_CHUNK:
        message = _decode_snapshot_chunk(r)
    else:
        message = _decode_body(msg_type, r)
    r.end()
    return message
