"""The fleet codec: every pysyncobj message type round-trips; malformed bytes raise
DecodeError and nothing else; nothing received is unpickled."""

from __future__ import annotations

import contextlib
import os
import pickle
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pysyncobj import pickle as psy_pickle  # type: ignore[import-untyped]

from hsmvault.errors import DecodeError, InvalidParameter
from hsmvault.fleet import codec
from hsmvault.fleet.codec import (
    MAX_COMMAND_SIZE,
    MAX_MESSAGE_SIZE,
    MESSAGE_TYPES,
    decode,
    decode_command,
    encode,
    encode_command,
    make_app_command,
)
from hsmvault.fleet.membership import FleetNode

U64 = st.integers(min_value=0, max_value=2**64 - 1)
NODE_IDS = st.binary(min_size=32, max_size=32).map(bytes.hex)


def membership_command(op: str, node_id: str) -> bytes:
    body: bytes = psy_pickle.dumps([op, node_id, FleetNode(node_id)])
    return b"\x02" + body


COMMANDS = st.one_of(
    st.binary(max_size=512).map(make_app_command),
    st.just(b"\x01"),
    st.builds(membership_command, st.sampled_from(["add", "rem"]), NODE_IDS),
    U64.map(lambda v: b"\x03" + psy_pickle.dumps(v)),
)
ENTRIES = st.lists(st.tuples(COMMANDS, U64, U64), max_size=8)


CALLED: list[str] = []


def record_call(tag: str) -> None:
    CALLED.append(tag)


class _Boom:
    def __reduce__(self) -> tuple[Any, ...]:
        return (record_call, ("unpickled",))


def _msg(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, **fields}


MESSAGES = st.one_of(
    st.builds(
        lambda t, i, lt: _msg("request_vote", term=t, last_log_index=i, last_log_term=lt),
        U64,
        U64,
        U64,
    ),
    st.builds(lambda t: _msg("response_vote", term=t), U64),
    st.builds(lambda t: _msg("timeout_now", term=t), U64),
    st.builds(
        lambda i, r, s: _msg("next_node_idx", next_node_idx=i, reset=r, success=s),
        U64,
        st.booleans(),
        st.booleans(),
    ),
    st.builds(lambda c: _msg("apply_command", command=c), COMMANDS),
    st.builds(lambda c, r: _msg("apply_command", command=c, request_id=r), COMMANDS, U64),
    st.builds(
        lambda r, e: _msg("apply_command_response", request_id=r, error=e),
        U64,
        st.integers(1, 7),
    ),
    st.builds(
        lambda r, i, t: _msg("apply_command_response", request_id=r, log_idx=i, log_term=t),
        U64,
        U64,
        U64,
    ),
    st.builds(
        lambda t, c, pi, pt, e: _msg(
            "append_entries", term=t, commit_index=c, prevLogIdx=pi, prevLogTerm=pt, entries=e
        ),
        U64,
        U64,
        U64,
        U64,
        ENTRIES,
    ),
)


@given(MESSAGES)
def test_every_message_type_round_trips(message: dict[str, Any]) -> None:
    wire = encode(message)
    assert decode(wire) == message
    assert encode(decode(wire)) == wire  # canonical


def test_message_types_cover_pysyncobj_raft_messages() -> None:
    assert set(MESSAGE_TYPES) == {
        "request_vote",
        "response_vote",
        "timeout_now",
        "next_node_idx",
        "apply_command",
        "apply_command_response",
        "append_entries",
    }


@given(COMMANDS)
def test_commands_round_trip_and_are_rebuilt_locally(command: bytes) -> None:
    assert decode_command(encode_command(command)) == command


def test_sync_call_shape_encodes_like_async_call() -> None:
    # `apply(x, sync=True)` logs (0, (x,), {}); the wire form is the same as (0, (x,)).
    sync_shape = b"\x00" + psy_pickle.dumps((0, (b"x",), {}))
    assert encode_command(sync_shape) == encode_command(make_app_command(b"x"))


def test_golden_request_vote_encoding() -> None:
    wire = encode(_msg("request_vote", term=1, last_log_index=2, last_log_term=3))
    assert wire.hex() == "0101" + "0000000000000001" + "0000000000000002" + "0000000000000003"


def test_golden_append_entries_encoding() -> None:
    message = _msg(
        "append_entries",
        term=2,
        commit_index=1,
        prevLogIdx=1,
        prevLogTerm=0,
        entries=[(b"\x01", 2, 2), (make_app_command(b"hi"), 3, 2)],
    )
    expected = (
        "0107"
        + "0000000000000002"
        + "0000000000000001"
        + "0000000000000001"
        + "0000000000000000"
        + "00000002"
        + "01" + "0000000000000002" + "0000000000000002"
        + "00" + "00000002" + "6869" + "0000000000000003" + "0000000000000002"
    )  # fmt: skip
    assert encode(message).hex() == expected


# --- malformed input: DecodeError and nothing else -------------------------------------


@given(st.binary(max_size=256))
def test_garbage_raises_only_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode(data)


@given(MESSAGES, st.data())
def test_truncated_message_is_rejected(message: dict[str, Any], data: st.DataObject) -> None:
    wire = encode(message)
    cut = data.draw(st.integers(0, len(wire) - 1))
    with pytest.raises(DecodeError):
        decode(wire[:cut])


@given(MESSAGES, st.binary(min_size=1, max_size=16))
def test_trailing_bytes_are_rejected(message: dict[str, Any], tail: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(encode(message) + tail)


@given(MESSAGES, st.data())
def test_bit_flips_raise_only_decode_error(message: dict[str, Any], data: st.DataObject) -> None:
    wire = bytearray(encode(message))
    pos = data.draw(st.integers(0, len(wire) - 1))
    wire[pos] ^= 1 << data.draw(st.integers(0, 7))
    with contextlib.suppress(DecodeError):
        decode(bytes(wire))


@pytest.mark.parametrize(
    ("wire", "why"),
    [
        (b"", "empty"),
        (b"\x02\x02" + bytes(8), "unknown version"),
        (b"\x01\x00" + bytes(8), "unknown type 0"),
        (b"\x01\x08" + bytes(8), "unknown type 8"),
        (b"\x01\x04" + bytes(8) + b"\x02\x00", "bool out of range"),
        (b"\x01\x06" + bytes(8) + b"\x00\x00", "error code 0 (SUCCESS) is not an error"),
        (b"\x01\x06" + bytes(8) + b"\x00\x08", "unknown error code"),
        (b"\x01\x06" + bytes(8) + b"\x02", "unknown response form"),
        (b"\x01\x05\x09\x00", "unknown command kind"),
        (b"\x01\x05\x02\x02" + bytes(32) + b"\x00", "unknown membership op"),
        (b"\x01\x07" + bytes(32) + b"\xff\xff\xff\xff", "entry count beyond the message"),
    ],
)
def test_specific_malformations_are_rejected(wire: bytes, why: str) -> None:
    with pytest.raises(DecodeError):
        decode(wire)


def test_oversize_command_payload_is_rejected_before_reading_it() -> None:
    wire = b"\x01\x05\x00" + (MAX_COMMAND_SIZE + 1).to_bytes(4, "big") + bytes(16)
    with pytest.raises(DecodeError, match="MAX_COMMAND_SIZE"):
        decode(wire)


def test_oversize_message_is_rejected() -> None:
    with pytest.raises(DecodeError, match="MAX_MESSAGE_SIZE"):
        decode(b"\x01\x02" + bytes(MAX_MESSAGE_SIZE))


def test_received_pickle_bytes_are_never_unpickled(monkeypatch: pytest.MonkeyPatch) -> None:
    """An app payload that *is* a pickle is carried as opaque bytes: decode rebuilds the
    command with dumps and never calls any loads."""
    calls: list[bytes] = []
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: calls.append(a[0]))
    monkeypatch.setattr(psy_pickle, "loads", lambda *a, **k: calls.append(a[0]))
    monkeypatch.setattr(codec, "_unpickle_local", calls.append)
    evil = pickle.dumps(os.system)
    wire = b"\x01\x05\x00" + len(evil).to_bytes(4, "big") + evil + b"\x00"
    message = decode(wire)
    assert message["command"] == make_app_command(evil)
    assert calls == []


# --- encode refuses what we do not support ---------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        {"type": "status"},  # pysyncobj admin/utility message
        {"type": "unknown", "term": 1},
        _msg("response_vote", term=-1),
        _msg("response_vote", term=2**64),
        _msg("response_vote", term=True),
        _msg("response_vote", term=1, extra=1),
        _msg("response_vote"),
        _msg("next_node_idx", next_node_idx=1, reset=1, success=True),
        _msg("apply_command_response", request_id=1, error=0),
        _msg("append_entries", term=1, commit_index=1, serialized=(b"x", True, True)),
        _msg(
            "append_entries",
            term=1,
            commit_index=1,
            prevLogIdx=1,
            prevLogTerm=1,
            transmission="start",
            data=b"x",
        ),
        _msg(
            "append_entries",
            term=1,
            commit_index=1,
            prevLogIdx=1,
            prevLogTerm=1,
            entries=[(b"\x01", 1)],
        ),
        _msg("apply_command", command=b"\x00" + psy_pickle.dumps((1, (b"x",)))),
        _msg("apply_command", command=b"\x00" + psy_pickle.dumps((0, ("text",)))),
        _msg("apply_command", command=b"\x00" + psy_pickle.dumps((0, (b"x",), {"k": 1}))),
        _msg("apply_command", command=b"\x01\x00"),
        _msg("apply_command", command=b"\x09"),
        _msg("apply_command", command=b"\x00" + psy_pickle.dumps((0, (bytes(20000),)))),
    ],
)
def test_encode_refuses_unsupported_messages(message: dict[str, Any]) -> None:
    with pytest.raises(InvalidParameter):
        encode(message)


def test_local_transcoding_refuses_foreign_globals() -> None:
    """Defence in depth: even a log entry holding a pickle that names another global is
    refused by the restricted unpickler, without calling that global."""
    CALLED.clear()
    with pytest.raises(InvalidParameter):
        encode_command(b"\x00" + pickle.dumps(_Boom(), protocol=2))
    assert CALLED == []


def test_make_app_command_limits() -> None:
    assert make_app_command(bytes(MAX_COMMAND_SIZE))
    with pytest.raises(InvalidParameter):
        make_app_command(bytes(MAX_COMMAND_SIZE + 1))
