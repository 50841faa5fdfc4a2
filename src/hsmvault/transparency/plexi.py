"""Plexi ``SignatureMessage`` protobuf encoding (what a Plexi auditor signs), pure.

Wire layout (proto2, all fields ``required``, emitted in field-number order, so even zero
values are written)::

    field  name         proto type                                wire type
    1      ciphersuite  uint32 (0x0001 = protobuf + Ed25519)      0 varint
    2      namespace    string (UTF-8)                            2 length-delimited
    3      timestamp    uint64 (milliseconds since the Unix epoch) 0 varint
    4      epoch        message Epoch { required uint64 inner = 1; }  2 length-delimited
    5      digest       bytes (32 bytes here)                     2 length-delimited

Source: cloudflare/plexi ``plexi_core/src/proto/specs/types.proto`` (commit 0108f7d22adb,
2025-04-16; field 1 was named ``version`` and ``Epoch.inner`` was ``optional`` before
commit 8ee904cf160f, which changes nothing on the wire for these values), encoded by
``prost`` (``plexi_core/src/lib.rs``, ``SignatureMessage::to_vec_proto``).

**Checked against Plexi's own bytes.** ``plexi_core/tests/test-vectors.json`` (unchanged
from commit cc326bb62358 to 0108f7d22adb) gives an Ed25519 seed, a message and the
signature Plexi's ``test_vector`` test reproduces; our encoding of that message, signed
with that seed, gives exactly that signature (``tests/transparency/test_plexi.py``, with
the older vector of commit 289489600a31 too). Ed25519 is deterministic, so this pins the
message bytes. The vectors have no zero-valued field, so "zero values are written" rests
on proto2 ``required`` semantics, not on a Plexi-produced byte.

**Timestamp unit: milliseconds.** Plexi's CLI formats a signature time as
``OffsetDateTime::from_unix_timestamp(timestamp / 1000)`` (``plexi_cli/src/cmd.rs``), and
the vectors' timestamp is 1717084639921 (2024-05-30 in ms).

Not shared with Plexi: its ``key_id`` is one byte (the last byte of the public key,
``plexi_core/src/crypto.rs``); ours is the SHA-256 of the key (ADR 0010).
"""

from __future__ import annotations

from dataclasses import dataclass

from hsmvault.errors import DecodeError, InvalidParameter

__all__ = [
    "CIPHERSUITE_PROTOBUF_ED25519",
    "SignatureMessage",
    "decode_signature_message",
]

CIPHERSUITE_PROTOBUF_ED25519 = 0x0001
_U32 = (1 << 32) - 1
_U64 = (1 << 64) - 1
_VARINT = 0
_LEN = 2


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint((field << 3) | wire_type)


def _len_field(field: int, payload: bytes) -> bytes:
    return _key(field, _LEN) + _varint(len(payload)) + payload


@dataclass(frozen=True)
class SignatureMessage:
    ciphersuite: int
    namespace: str
    timestamp: int
    epoch: int
    digest: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.ciphersuite <= _U32:
            raise InvalidParameter("ciphersuite must fit in 32 bits")
        if not 0 <= self.timestamp <= _U64 or not 0 <= self.epoch <= _U64:
            raise InvalidParameter("timestamp and epoch must fit in 64 bits")
        if len(self.digest) != 32:
            raise InvalidParameter("digest must be 32 bytes")
        try:
            self.namespace.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidParameter("namespace must be valid UTF-8") from None

    def encode(self) -> bytes:
        epoch_msg = _key(1, _VARINT) + _varint(self.epoch)
        return b"".join(
            [
                _key(1, _VARINT) + _varint(self.ciphersuite),
                _len_field(2, self.namespace.encode("utf-8")),
                _key(3, _VARINT) + _varint(self.timestamp),
                _len_field(4, epoch_msg),
                _len_field(5, bytes(self.digest)),
            ]
        )


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def done(self) -> bool:
        return self.pos == len(self.data)

    def varint(self) -> int:
        value = 0
        for shift in range(0, 70, 7):
            if self.pos >= len(self.data):
                raise DecodeError("truncated varint")
            byte = self.data[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if value > _U64:
                    raise DecodeError("varint out of range")
                return value
        raise DecodeError("varint too long")

    def expect_key(self, field: int, wire_type: int) -> None:
        if self.varint() != (field << 3) | wire_type:
            raise DecodeError("unexpected protobuf field")

    def chunk(self) -> bytes:
        n = self.varint()
        if n > len(self.data) - self.pos:
            raise DecodeError("truncated length-delimited field")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out


def decode_signature_message(data: bytes) -> SignatureMessage:
    """Strict inverse of :meth:`SignatureMessage.encode`: only the canonical encoding (the
    five fields once each, in order, minimal varints) is accepted; else DecodeError."""
    r = _Reader(bytes(data))
    r.expect_key(1, _VARINT)
    ciphersuite = r.varint()
    r.expect_key(2, _LEN)
    namespace_raw = r.chunk()
    r.expect_key(3, _VARINT)
    timestamp = r.varint()
    r.expect_key(4, _LEN)
    inner = _Reader(r.chunk())
    inner.expect_key(1, _VARINT)
    epoch = inner.varint()
    if not inner.done():
        raise DecodeError("trailing bytes in epoch")
    r.expect_key(5, _LEN)
    digest = r.chunk()
    if not r.done():
        raise DecodeError("trailing bytes")
    try:
        namespace = namespace_raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError("namespace is not UTF-8") from None
    try:
        msg = SignatureMessage(ciphersuite, namespace, timestamp, epoch, digest)
    except InvalidParameter:
        raise DecodeError("field out of range") from None
    if msg.encode() != bytes(data):
        raise DecodeError("non-canonical encoding")
    return msg
