"""The host↔node API channel: frames and NodeInfo parse strictly."""

from __future__ import annotations

import contextlib
import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hsmvault.errors import DecodeError, InvalidParameter
from hsmvault.fleet.node_api import (
    KIND_NODE_INFO,
    KIND_VAULT,
    MAX_FRAME_LEN,
    NodeInfo,
    encode_frame,
    recv_frame,
)
from hsmvault.wire import hsm_api as api

INFO = NodeInfo(bytes(range(32)), "eu-west", True, True, 7, 42, 41, 3, 1, incarnation=2)


def _read(raw: bytes) -> tuple[int, bytes] | None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(raw)
        a.shutdown(socket.SHUT_WR)
        b.settimeout(2)
        return recv_frame(b)


def test_frames_round_trip() -> None:
    assert _read(encode_frame(KIND_VAULT, b"request")) == (KIND_VAULT, b"request")
    assert _read(encode_frame(KIND_NODE_INFO, b"")) == (KIND_NODE_INFO, b"")
    assert _read(b"") is None


@pytest.mark.parametrize(
    "raw",
    [
        struct.pack(">I", 0),
        struct.pack(">I", MAX_FRAME_LEN + 1) + b"\x01",
        struct.pack(">IB", 1, 0x7F),
        struct.pack(">IB", 5, KIND_VAULT) + b"ab",  # truncated body
        b"\x00\x00",  # truncated length
    ],
)
def test_bad_frames_are_decode_errors(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        _read(raw)


def test_encode_frame_refuses_what_a_reader_would_refuse() -> None:
    with pytest.raises(InvalidParameter):
        encode_frame(0x7F, b"")
    with pytest.raises(InvalidParameter):
        encode_frame(KIND_VAULT, bytes(MAX_FRAME_LEN))


def test_node_info_round_trips_and_rejects_trailing_bytes() -> None:
    assert NodeInfo.from_bytes(INFO.to_bytes()) == INFO
    with pytest.raises(DecodeError):
        NodeInfo.from_bytes(INFO.to_bytes() + b"\x00")
    with pytest.raises(DecodeError):
        NodeInfo.from_bytes(b"\x03" + INFO.to_bytes()[1:])
    with pytest.raises(DecodeError):  # version 1 (no incarnation) is no longer accepted
        NodeInfo.from_bytes(b"\x01" + INFO.to_bytes()[1:-9])
    with pytest.raises(DecodeError):
        NodeInfo.from_bytes(INFO.to_bytes()[:-1] + b"\x02")  # joining is a strict bool
    joining = NodeInfo(bytes(32), "r", False, False, 0, 0, 0, 0, 0, incarnation=9, joining=True)
    assert NodeInfo.from_bytes(joining.to_bytes()) == joining


@given(st.binary(max_size=200))
def test_node_info_parser_raises_only_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        NodeInfo.from_bytes(data)


def test_the_largest_wire_messages_fit_in_one_frame() -> None:
    bundle = b"b" * api.MAX_BUNDLE_LEN
    biggest: list[api.Request | api.Response] = [
        api.InstallBundleRequest(api.MAX_EPOCH, bundle),
        api.LoginStartResponse(
            api.Outcome.OK,
            bytes(api.SESSION_ID_LEN),
            b"k" * api.MAX_OPAQUE_MESSAGE_LEN,
            b"p" * api.MAX_KSF_PARAMS_LEN,
            api.MAX_GUESS_LIMIT,
            bytes(api.FLEET_ID_LEN),
            bundle,
            bytes(api.FLEET_SIGNATURE_LEN),
        ),
        api.RegistrationStartResponse(
            api.Outcome.OK,
            bytes(api.CREDENTIAL_NONCE_LEN),
            b"r" * api.MAX_OPAQUE_MESSAGE_LEN,
            bytes(api.FLEET_ID_LEN),
            bundle,
            bytes(api.FLEET_SIGNATURE_LEN),
        ),
    ]
    for message in biggest:
        body = message.to_bytes()
        assert _read(encode_frame(KIND_VAULT, body)) == (KIND_VAULT, body)
