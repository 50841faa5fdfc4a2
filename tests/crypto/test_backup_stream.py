"""Tests for the backup file format v1 (docs/formats/backup.md, hsmvault.crypto.backup_stream).

One test per attack, each asserting its own exception class; a golden file so format
drift fails CI; Hypothesis properties for round trips, single-byte changes and garbage.

Golden file provenance: ``data/backup_golden_v1.bin`` is the encryption of
``data/backup_golden_v1.plain`` under ``GOLDEN_KEY`` with ``GOLDEN_FILE_ID`` and chunk
size 4096, made by this module. Regenerate (only for a deliberate format change, which
also needs a new format version) with::

    .venv/bin/python -m tests.crypto.test_backup_stream --regenerate-golden
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import random
import struct
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given
from hypothesis import strategies as st

from hsmvault.crypto import backup_stream as bs
from hsmvault.crypto.backup_stream import (
    DEFAULT_CHUNK_SIZE,
    FRAME_LEN,
    HEADER_LEN,
    MAGIC,
    MAX_CHUNK_SIZE,
    MIN_CHUNK_SIZE,
    TAG_LEN,
    BackupDecryptor,
    BackupEncryptor,
    BackupHeader,
    BackupKey,
    StreamInfo,
    decrypt_iter,
    decrypt_stream,
    encrypt_iter,
    encrypt_stream,
)
from hsmvault.errors import (
    BackupFormatError,
    ChunkAuthenticationError,
    ChunkOrderError,
    DuplicateChunkError,
    InvalidParameter,
    ProtocolStateError,
    TrailingDataError,
    TruncatedBackupError,
    VerificationError,
    WrongKeyError,
)

DATA = Path(__file__).parent / "data"
GOLDEN_BIN = DATA / "backup_golden_v1.bin"
GOLDEN_PLAIN = DATA / "backup_golden_v1.plain"
GOLDEN_KEY = BackupKey(bytes(range(32)))
GOLDEN_FILE_ID = bytes(range(0xA0, 0xC0))
GOLDEN_CHUNK_SIZE = 4096

KEY = BackupKey(bytes(range(1, 33)))
OTHER_KEY = BackupKey(bytes(range(2, 34)))
CS = MIN_CHUNK_SIZE


# ---------------------------------------------------------------------------- helpers


def pattern(n: int, seed: int = 7) -> bytes:
    """Deterministic pseudo-random bytes (not secret; just varied)."""
    return random.Random(seed).randbytes(n)


def enc(plaintext: bytes, *, key: BackupKey = KEY, chunk_size: int = CS) -> bytes:
    out = io.BytesIO()
    encrypt_stream(key, io.BytesIO(plaintext), out, chunk_size=chunk_size)
    return out.getvalue()


def dec(ciphertext: bytes, *, key: BackupKey = KEY) -> bytes:
    out = io.BytesIO()
    decrypt_stream(key, io.BytesIO(ciphertext), out)
    return out.getvalue()


def split(ciphertext: bytes) -> tuple[bytes, list[bytes]]:
    """Independent parser of the framing (spec §5): header and the list of framed chunks."""
    header, rest = ciphertext[:HEADER_LEN], ciphertext[HEADER_LEN:]
    chunks = []
    while rest:
        _, _, length, _ = struct.unpack(">IBII", rest[:FRAME_LEN])
        size = FRAME_LEN + length + TAG_LEN
        chunks.append(rest[:size])
        rest = rest[size:]
    return header, chunks


def join(header: bytes, chunks: list[bytes]) -> bytes:
    return header + b"".join(chunks)


def reframe(chunk: bytes, *, index: int | None = None, flags: int | None = None) -> bytes:
    """Rewrite a chunk's frame fields *and fix its CRC*, as a deliberate forger would."""
    old_index, old_flags, length, _ = struct.unpack(">IBII", chunk[:FRAME_LEN])
    body = struct.pack(
        ">IBI",
        old_index if index is None else index,
        old_flags if flags is None else flags,
        length,
    )
    return body + zlib.crc32(body).to_bytes(4, "big") + chunk[FRAME_LEN:]


def fix_header_crc(header: bytes) -> bytes:
    return header[:-4] + zlib.crc32(header[:-4]).to_bytes(4, "big")


def flip(data: bytes, pos: int, mask: int = 0x01) -> bytes:
    b = bytearray(data)
    b[pos] ^= mask
    return bytes(b)


THREE_CHUNKS = pattern(2 * CS + 1000)  # chunks of 4096, 4096, 1000 bytes
FOUR_CHUNKS = pattern(3 * CS + 5, seed=11)


# ------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    "size", [0, 1, 15, 16, 17, CS - 1, CS, CS + 1, 2 * CS, 3 * CS, 3 * CS + 1, 5 * CS + 17]
)
def test_round_trip_stream(size: int) -> None:
    plaintext = pattern(size)
    ciphertext = enc(plaintext)
    assert dec(ciphertext) == plaintext
    chunks = max(1, -(-size // CS))  # an empty file still has one (final, empty) chunk
    assert len(ciphertext) == HEADER_LEN + chunks * (FRAME_LEN + TAG_LEN) + size
    _, framed = split(ciphertext)
    assert len(framed) == chunks


@pytest.mark.parametrize("size", [0, 1, CS, 2 * CS, 3 * CS + 5])
def test_round_trip_push_api_matches_stream_byte_for_byte(size: int) -> None:
    plaintext = pattern(size)
    reference = io.BytesIO()
    info = encrypt_stream(KEY, io.BytesIO(plaintext), reference, chunk_size=CS)
    encryptor = BackupEncryptor(KEY, chunk_size=CS, unsafe_file_id=info.header.file_id)
    pieces = [encryptor.update(plaintext[i : i + 999]) for i in range(0, size, 999)]
    ciphertext = b"".join(pieces) + encryptor.finalize()
    assert ciphertext == reference.getvalue()
    assert encryptor.info == info

    decryptor = BackupDecryptor(KEY)
    out = b"".join(
        decryptor.update(ciphertext[i : i + 1234]) for i in range(0, len(ciphertext), 1234)
    )
    assert decryptor.finalize() == info
    assert out == plaintext
    assert decryptor.header == info.header


def test_round_trip_iterables() -> None:
    plaintext = pattern(3 * CS + 77)
    pieces = [plaintext[i : i + 500] for i in range(0, len(plaintext), 500)]
    ciphertext = b"".join(encrypt_iter(KEY, pieces, chunk_size=CS))
    assert dec(ciphertext) == plaintext
    ct_pieces = [ciphertext[i : i + 3000] for i in range(0, len(ciphertext), 3000)]
    assert b"".join(decrypt_iter(KEY, ct_pieces)) == plaintext


def test_round_trip_default_and_extreme_chunk_sizes() -> None:
    plaintext = pattern(2 * DEFAULT_CHUNK_SIZE + 3)
    out = io.BytesIO()
    info = encrypt_stream(KEY, io.BytesIO(plaintext), out)
    assert info.header.chunk_size == DEFAULT_CHUNK_SIZE
    assert info.chunks == 3
    assert dec(out.getvalue()) == plaintext
    big = pattern(MAX_CHUNK_SIZE + 1, seed=3)
    assert dec(enc(big, chunk_size=MAX_CHUNK_SIZE)) == big


def test_stream_info_counts_and_progress() -> None:
    plaintext = pattern(2 * CS + 10)
    seen: list[int] = []
    out = io.BytesIO()
    info = encrypt_stream(KEY, io.BytesIO(plaintext), out, chunk_size=CS, progress=seen.append)
    assert seen == [CS, 2 * CS, 2 * CS + 10]
    assert info == StreamInfo(info.header, len(plaintext), len(out.getvalue()), 3)
    seen.clear()
    info2 = decrypt_stream(KEY, io.BytesIO(out.getvalue()), io.BytesIO(), progress=seen.append)
    assert seen == [CS, 2 * CS, 2 * CS + 10]
    assert info2 == info


def test_every_encryption_uses_a_fresh_file_id() -> None:
    a, b = enc(b"same"), enc(b"same")
    assert a[13:45] != b[13:45]
    assert a != b


class _Trickle(io.RawIOBase):
    """A raw stream that reads and writes at most 7 bytes per call (like a pipe)."""

    def __init__(self, data: bytes = b"") -> None:
        self._src = io.BytesIO(data)
        self.sink = bytearray()

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._src.read(min(7, len(b)))
        b[: len(data)] = data
        return len(data)

    def write(self, b: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        taken = bytes(b[:7])
        self.sink += taken
        return len(taken)


class _ReadOnly:
    """A source with ``read`` but no ``readinto``."""

    def __init__(self, data: bytes) -> None:
        self._src = io.BytesIO(data)

    def read(self, n: int = -1) -> bytes:
        return self._src.read(min(n, 5) if n >= 0 else n)


def test_partial_reads_and_writes_and_read_only_sources() -> None:
    plaintext = pattern(2 * CS + 3)
    trickle = _Trickle(plaintext)
    encrypt_stream(KEY, trickle, trickle, chunk_size=CS)  # type: ignore[arg-type]
    ciphertext = bytes(trickle.sink)
    assert dec(ciphertext) == plaintext
    out = _Trickle(ciphertext)
    decrypt_stream(KEY, out, out)  # type: ignore[arg-type]
    assert bytes(out.sink) == plaintext
    sink = io.BytesIO()
    decrypt_stream(KEY, _ReadOnly(ciphertext), sink)  # type: ignore[arg-type]
    assert sink.getvalue() == plaintext


def test_allocating_fallback_path_gives_identical_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    plaintext = pattern(2 * CS + 9)
    fast = io.BytesIO()
    info = encrypt_stream(KEY, io.BytesIO(plaintext), fast, chunk_size=CS)
    monkeypatch.setattr(bs, "_HAVE_INTO", False)
    slow = io.BytesIO()
    encrypt_stream(
        KEY, io.BytesIO(plaintext), slow, chunk_size=CS, unsafe_file_id=info.header.file_id
    )
    assert slow.getvalue() == fast.getvalue()
    assert dec(fast.getvalue()) == plaintext
    with pytest.raises(ChunkAuthenticationError):
        dec(flip(fast.getvalue(), HEADER_LEN + FRAME_LEN + 5))


# ----------------------------------------------------------------------------- attacks


@pytest.mark.parametrize("keep_chunks", [0, 1, 2])
def test_truncation_at_chunk_boundary_is_detected(keep_chunks: int) -> None:
    header, chunks = split(enc(THREE_CHUNKS))
    with pytest.raises(TruncatedBackupError):
        dec(join(header, chunks[:keep_chunks]))


@pytest.mark.parametrize(
    "cut",
    [
        0,  # empty file
        5,  # inside the magic
        HEADER_LEN - 1,  # inside the header
        HEADER_LEN + 6,  # inside the first frame header
        HEADER_LEN + FRAME_LEN + 100,  # inside the first chunk's ciphertext
        HEADER_LEN + FRAME_LEN + CS + 3,  # inside the first chunk's tag
    ],
)
def test_truncation_mid_chunk_or_header_is_detected(cut: int) -> None:
    ciphertext = enc(THREE_CHUNKS)
    with pytest.raises(TruncatedBackupError):
        dec(ciphertext[:cut])


def test_truncation_inside_the_last_chunk_is_detected() -> None:
    ciphertext = enc(THREE_CHUNKS)
    for cut in (1, TAG_LEN, TAG_LEN + 500):
        with pytest.raises(TruncatedBackupError):
            dec(ciphertext[:-cut])


def test_dropping_the_last_chunk_reads_as_truncation() -> None:
    header, chunks = split(enc(THREE_CHUNKS))
    with pytest.raises(TruncatedBackupError):
        dec(join(header, chunks[:-1]))


def test_swapped_chunks_are_detected() -> None:
    header, chunks = split(enc(FOUR_CHUNKS))
    swapped = [chunks[0], chunks[2], chunks[1], chunks[3]]
    with pytest.raises(ChunkOrderError) as excinfo:
        dec(join(header, swapped))
    assert type(excinfo.value) is ChunkOrderError


def test_swapping_with_the_last_chunk_is_detected() -> None:
    header, chunks = split(enc(THREE_CHUNKS))
    with pytest.raises(ChunkOrderError) as excinfo:
        dec(join(header, [chunks[0], chunks[2], chunks[1]]))
    assert type(excinfo.value) is ChunkOrderError


def test_dropped_chunk_is_detected() -> None:
    header, chunks = split(enc(FOUR_CHUNKS))
    with pytest.raises(ChunkOrderError) as excinfo:
        dec(join(header, [chunks[0], chunks[2], chunks[3]]))
    assert type(excinfo.value) is ChunkOrderError


@pytest.mark.parametrize(("dup", "at"), [(0, 1), (1, 2), (0, 3)])
def test_duplicated_chunk_is_detected(dup: int, at: int) -> None:
    header, chunks = split(enc(FOUR_CHUNKS))
    chunks.insert(at, chunks[dup])
    with pytest.raises(DuplicateChunkError):
        dec(join(header, chunks))


def test_every_single_bit_flip_in_the_header_is_a_format_error() -> None:
    ciphertext = enc(THREE_CHUNKS)
    for pos in range(HEADER_LEN):
        for bit in range(8):
            with pytest.raises(BackupFormatError):
                dec(flip(ciphertext, pos, 1 << bit))


def test_bit_flip_in_each_chunk_is_an_authentication_error() -> None:
    ciphertext = enc(THREE_CHUNKS)
    _, chunks = split(ciphertext)
    start = HEADER_LEN
    for chunk in chunks:
        positions = set(range(FRAME_LEN))  # every frame byte
        positions |= set(range(len(chunk) - TAG_LEN, len(chunk)))  # every tag byte
        positions |= set(range(FRAME_LEN, len(chunk) - TAG_LEN, 97))  # ciphertext bytes
        for offset in sorted(positions):
            for bit in (0, 3, 7):
                with pytest.raises(ChunkAuthenticationError):
                    dec(flip(ciphertext, start + offset, 1 << bit))
        start += len(chunk)


def test_wrong_key_is_detected_before_any_chunk_is_read() -> None:
    ciphertext = enc(THREE_CHUNKS)

    class HeaderOnly(io.BytesIO):
        def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
            if self.tell() >= HEADER_LEN:
                raise AssertionError("a chunk was read before the key was checked")
            return super().readinto(b)

    sink = io.BytesIO()
    with pytest.raises(WrongKeyError):
        decrypt_stream(OTHER_KEY, HeaderOnly(ciphertext), sink)
    assert sink.getvalue() == b""
    with pytest.raises(WrongKeyError):
        BackupDecryptor(OTHER_KEY).update(ciphertext[:HEADER_LEN])


def test_trailing_bytes_are_detected() -> None:
    ciphertext = enc(THREE_CHUNKS)
    _, chunks = split(ciphertext)
    for extra in (b"\x00", b"garbage" * 100, chunks[-1]):
        with pytest.raises(TrailingDataError):
            dec(ciphertext + extra)
        decryptor = BackupDecryptor(KEY)
        with pytest.raises(TrailingDataError):
            decryptor.update(ciphertext + extra)


def test_bad_magic_and_unknown_version_are_format_errors() -> None:
    ciphertext = enc(b"hello")
    with pytest.raises(BackupFormatError, match="magic"):
        dec(b"PK\x03\x04" + ciphertext[4:])
    with pytest.raises(BackupFormatError, match="version"):
        dec(fix_header_crc(ciphertext[:8] + b"\x02" + ciphertext[9:HEADER_LEN]) + ciphertext[81:])
    with pytest.raises(BackupFormatError, match="magic"):
        dec(b"not a backup")


@pytest.mark.parametrize("chunk_size", [0, MIN_CHUNK_SIZE - 1, MAX_CHUNK_SIZE + 1, 2**32 - 1])
def test_header_declaring_chunk_size_out_of_range_is_a_format_error(chunk_size: int) -> None:
    ciphertext = enc(b"hello")
    header = ciphertext[:9] + struct.pack(">I", chunk_size) + ciphertext[13:HEADER_LEN]
    with pytest.raises(BackupFormatError, match="chunk size"):
        dec(fix_header_crc(header) + ciphertext[HEADER_LEN:])


def test_forged_header_fields_with_fixed_checksum_fail_the_key_commitment() -> None:
    ciphertext = enc(THREE_CHUNKS)
    header = bytearray(ciphertext[:HEADER_LEN])
    for pos in (10, 20, 50):  # chunk size, file id, commitment
        forged = bytearray(header)
        forged[pos] ^= 0x01
        if pos == 10:
            forged[9:13] = struct.pack(">I", CS * 2)
        with pytest.raises(WrongKeyError):
            dec(fix_header_crc(bytes(forged)) + ciphertext[HEADER_LEN:])


def test_header_of_another_file_with_the_same_key_is_rejected() -> None:
    _, chunks_a = split(enc(THREE_CHUNKS))
    header_b, _ = split(enc(THREE_CHUNKS))
    with pytest.raises(ChunkAuthenticationError):
        dec(join(header_b, chunks_a))


def test_chunk_spliced_from_another_file_with_the_same_key_is_rejected() -> None:
    header_a, chunks_a = split(enc(THREE_CHUNKS))
    _, chunks_b = split(enc(THREE_CHUNKS))
    with pytest.raises(ChunkAuthenticationError):
        dec(join(header_a, [chunks_a[0], chunks_b[1], chunks_a[2]]))


def test_forged_last_flag_cannot_truncate_the_file() -> None:
    """The classic truncation attack: mark an inner chunk 'last' (fixing the frame CRC)."""
    header, chunks = split(enc(THREE_CHUNKS))
    with pytest.raises(ChunkAuthenticationError):
        dec(join(header, [chunks[0], reframe(chunks[1], flags=0x01)]))
    with pytest.raises(ChunkAuthenticationError):
        dec(join(header, [chunks[0], chunks[1], reframe(chunks[2], flags=0x00)]))
    with pytest.raises(ChunkAuthenticationError):
        dec(join(header, [chunks[0], reframe(chunks[1], flags=0x03), chunks[2]]))


def test_forged_chunk_index_is_rejected() -> None:
    header, chunks = split(enc(FOUR_CHUNKS))
    with pytest.raises(ChunkAuthenticationError):
        dec(join(header, [chunks[0], reframe(chunks[2], index=1), chunks[2], chunks[3]]))


def test_no_unverified_plaintext_is_released() -> None:
    ciphertext = enc(THREE_CHUNKS)
    bad = flip(ciphertext, HEADER_LEN + (FRAME_LEN + CS + TAG_LEN) + FRAME_LEN + 10)
    sink = io.BytesIO()
    with pytest.raises(ChunkAuthenticationError):
        decrypt_stream(KEY, io.BytesIO(bad), sink)
    assert sink.getvalue() == THREE_CHUNKS[:CS]  # chunk 0 (verified) only

    decryptor = BackupDecryptor(KEY)
    released = decryptor.update(bad[: HEADER_LEN + FRAME_LEN + CS + TAG_LEN + 50])
    assert released == THREE_CHUNKS[:CS]
    with pytest.raises(ChunkAuthenticationError):
        decryptor.update(bad[HEADER_LEN + FRAME_LEN + CS + TAG_LEN + 50 :])


def test_reordered_chunk_plaintext_is_not_released() -> None:
    header, chunks = split(enc(FOUR_CHUNKS))
    sink = io.BytesIO()
    with pytest.raises(ChunkOrderError):
        decrypt_stream(KEY, io.BytesIO(join(header, [chunks[0], chunks[2]])), sink)
    assert sink.getvalue() == FOUR_CHUNKS[:CS]


# -------------------------------------------------------------------- API contracts


def test_push_objects_are_single_use() -> None:
    encryptor = BackupEncryptor(KEY, chunk_size=CS)
    encryptor.finalize()
    with pytest.raises(ProtocolStateError):
        encryptor.update(b"x")
    with pytest.raises(ProtocolStateError):
        encryptor.finalize()

    decryptor = BackupDecryptor(KEY)
    with pytest.raises(BackupFormatError):
        decryptor.update(b"garbage!!!")
    with pytest.raises(ProtocolStateError):
        decryptor.update(b"")
    with pytest.raises(ProtocolStateError):
        decryptor.finalize()


@pytest.mark.parametrize("cut", [0, 3, HEADER_LEN, HEADER_LEN + 5, HEADER_LEN + FRAME_LEN + 9])
def test_push_decryptor_finalize_detects_truncation(cut: int) -> None:
    decryptor = BackupDecryptor(KEY)
    decryptor.update(enc(THREE_CHUNKS)[:cut])
    with pytest.raises(TruncatedBackupError):
        decryptor.finalize()


def test_invalid_parameters_are_refused() -> None:
    for bad in (0, MIN_CHUNK_SIZE - 1, MAX_CHUNK_SIZE + 1, True):
        with pytest.raises(InvalidParameter):
            enc(b"x", chunk_size=bad)
    with pytest.raises(InvalidParameter):
        BackupEncryptor(KEY, rng=os.urandom, unsafe_file_id=bytes(32))
    with pytest.raises(InvalidParameter):
        BackupEncryptor(KEY, unsafe_file_id=bytes(16))
    with pytest.raises(InvalidParameter):
        BackupEncryptor(KEY, rng=lambda n: bytes(n - 1))
    with pytest.raises(InvalidParameter):
        BackupKey(bytes(31))
    with pytest.raises(InvalidParameter):
        encrypt_stream(bytes(32), io.BytesIO(), io.BytesIO())  # type: ignore[arg-type]
    with pytest.raises(InvalidParameter):
        BackupDecryptor(bytes(32))  # type: ignore[arg-type]
    with pytest.raises(InvalidParameter):
        BackupHeader(chunk_size=CS, file_id=bytes(31), commitment=bytes(32))


def test_plaintext_size_limit_is_enforced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bs, "MAX_PLAINTEXT_BYTES", 2 * CS)
    assert dec(enc(pattern(2 * CS))) == pattern(2 * CS)
    with pytest.raises(InvalidParameter, match="limit"):
        enc(pattern(2 * CS + 1))


def test_header_round_trip_and_strict_parsing() -> None:
    ciphertext = enc(b"abc")
    header = BackupHeader.from_bytes(ciphertext[:HEADER_LEN])
    assert header.to_bytes() == ciphertext[:HEADER_LEN]
    assert header.chunk_size == CS
    assert header.version == 1
    with pytest.raises(BackupFormatError):
        BackupHeader.from_bytes(ciphertext[: HEADER_LEN + 1])
    with pytest.raises(TruncatedBackupError):
        BackupHeader.from_bytes(ciphertext[: HEADER_LEN - 1])


def test_backup_key_never_shows_its_secret() -> None:
    raw = bytes(range(1, 33))
    key = BackupKey(raw)
    assert repr(key) == str(key) == "BackupKey(<redacted>)"
    assert raw.hex() not in repr(key)
    assert key == BackupKey(raw)
    assert key != OTHER_KEY
    assert key != raw
    with pytest.raises(TypeError):
        pickle.dumps(key)
    with pytest.raises(TypeError):
        hash(key)
    assert len(BackupKey.generate().expose_secret()) == 32
    assert BackupKey.generate(bytes) == BackupKey(bytes(32))


def test_error_messages_carry_no_secret_or_plaintext() -> None:
    plaintext = b"TOPSECRET" * 1000
    ciphertext = enc(plaintext)
    secrets_ = [KEY.expose_secret().hex(), OTHER_KEY.expose_secret().hex(), "TOPSECRET"]
    attempts: list[Callable[[], object]] = [
        lambda: dec(ciphertext, key=OTHER_KEY),
        lambda: dec(flip(ciphertext, HEADER_LEN + 40)),
        lambda: dec(ciphertext[:-1]),
        lambda: dec(ciphertext + b"x"),
    ]
    for attempt in attempts:
        with pytest.raises(VerificationError) as excinfo:
            attempt()
        text = f"{excinfo.value!s} {excinfo.value!r}"
        assert not any(s in text for s in secrets_)
        assert excinfo.value.__cause__ is None


# ------------------------------------------------------------------------------ golden


def _golden_encrypt(plaintext: bytes) -> bytes:
    out = io.BytesIO()
    encrypt_stream(
        GOLDEN_KEY,
        io.BytesIO(plaintext),
        out,
        chunk_size=GOLDEN_CHUNK_SIZE,
        unsafe_file_id=GOLDEN_FILE_ID,
    )
    return out.getvalue()


def _golden_plaintext() -> bytes:
    lines = [f"hsmvault golden backup v1, line {i:04d}\n".encode() for i in range(300)]
    return b"".join(lines)[: 2 * GOLDEN_CHUNK_SIZE + 1000]


def test_golden_file_decrypts() -> None:
    plaintext = GOLDEN_PLAIN.read_bytes()
    assert plaintext == _golden_plaintext()
    out = io.BytesIO()
    info = decrypt_stream(GOLDEN_KEY, io.BytesIO(GOLDEN_BIN.read_bytes()), out)
    assert out.getvalue() == plaintext
    assert info.chunks == 3
    assert info.header.file_id == GOLDEN_FILE_ID
    assert info.header.chunk_size == GOLDEN_CHUNK_SIZE


def test_golden_file_reencrypts_byte_for_byte() -> None:
    assert _golden_encrypt(GOLDEN_PLAIN.read_bytes()) == GOLDEN_BIN.read_bytes()


# The values printed in docs/formats/backup.md §10 (test vector).
GOLDEN_HEADER_HEX = (
    "894856424b0d0a1a"  # magic
    "01"  # version
    "00001000"  # chunk size 4096
    "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf"  # file id
    "1d4797ec82ea9b76b7c82b3bce0e6a96478b85a7589ffe55d021bb6a6ee9b538"  # commitment
    "9cba0342"  # header CRC-32
)
GOLDEN_CHUNK_KEY_HEX = "646b4f451c11d614469caf5fd6ecfcd61bcb398cb41c6dcde83f3d081e394588"


def test_golden_header_matches_the_spec_vector() -> None:
    assert GOLDEN_BIN.read_bytes()[:HEADER_LEN].hex() == GOLDEN_HEADER_HEX
    assert MAGIC.hex() == GOLDEN_HEADER_HEX[:16]


def test_golden_chunks_open_by_following_the_spec_alone() -> None:
    """Re-derive everything from the text of spec §4-§5 with raw primitives, bypassing
    the module: catches a spec/code mismatch that round-trip tests cannot see."""
    data = GOLDEN_BIN.read_bytes()
    header = data[:HEADER_LEN]
    params = header[:45]

    def hkdf(label: bytes) -> bytes:
        kdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=GOLDEN_FILE_ID, info=label + params)
        return kdf.derive(GOLDEN_KEY.expose_secret())

    chunk_key = hkdf(b"hsmvault backup v1: chunk key")
    assert chunk_key.hex() == GOLDEN_CHUNK_KEY_HEX
    assert hkdf(b"hsmvault backup v1: key commitment") == header[45:77]
    aead = AESGCM(chunk_key)
    _, chunks = split(data)
    plaintext = b""
    for i, chunk in enumerate(chunks):
        frame = chunk[:FRAME_LEN]
        index, flags, length, crc = struct.unpack(">IBII", frame)
        assert (index, flags) == (i, 1 if i == len(chunks) - 1 else 0)
        assert crc == zlib.crc32(frame[:9])
        nonce = bytes(7) + struct.pack(">IB", index, flags)
        plaintext += aead.decrypt(nonce, chunk[FRAME_LEN:], header + frame)
        assert len(chunk) == FRAME_LEN + length + TAG_LEN
    assert plaintext == GOLDEN_PLAIN.read_bytes()


# -------------------------------------------------------------------------- properties


@st.composite
def plaintext_and_chunk_size(draw: st.DrawFn) -> tuple[bytes, int]:
    chunk_size = draw(
        st.one_of(
            st.integers(MIN_CHUNK_SIZE, 4 * MIN_CHUNK_SIZE),
            st.integers(MIN_CHUNK_SIZE, MAX_CHUNK_SIZE),
            st.sampled_from([MIN_CHUNK_SIZE, DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE]),
        )
    )
    chunks = draw(st.integers(0, 3))
    delta = draw(st.sampled_from([-1, 0, 1]) | st.integers(-chunk_size + 1, chunk_size - 1))
    size = max(0, chunks * chunk_size + delta)
    return pattern(size, seed=draw(st.integers(0, 2**32))), chunk_size


@given(plaintext_and_chunk_size())
def test_any_plaintext_round_trips_for_any_chunk_size(case: tuple[bytes, int]) -> None:
    plaintext, chunk_size = case
    assert dec(enc(plaintext, chunk_size=chunk_size)) == plaintext


@given(st.binary(max_size=3 * CS + 100), st.data())
def test_push_decryptor_agrees_with_stream_for_any_split(
    plaintext: bytes, data: st.DataObject
) -> None:
    ciphertext = enc(plaintext)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(ciphertext)), max_size=8)))
    decryptor = BackupDecryptor(KEY)
    out = b""
    for a, b in zip([0, *cuts], [*cuts, len(ciphertext)], strict=True):
        out += decryptor.update(ciphertext[a:b])
    decryptor.finalize()
    assert out == plaintext


_SMALL_CT = enc(pattern(2 * CS + 300, seed=5))


@given(st.integers(0, len(_SMALL_CT) - 1), st.integers(1, 255))
def test_any_single_byte_change_is_rejected_with_its_class(pos: int, delta: int) -> None:
    damaged = flip(_SMALL_CT, pos, delta)
    expected = BackupFormatError if pos < HEADER_LEN else ChunkAuthenticationError
    with pytest.raises((VerificationError, BackupFormatError)) as excinfo:
        dec(damaged)
    assert isinstance(excinfo.value, expected)
    decryptor = BackupDecryptor(KEY)
    with pytest.raises(expected):
        decryptor.update(damaged)


def _only_our_errors(data: bytes) -> None:
    with contextlib.suppress(VerificationError, BackupFormatError):
        dec(data)
    decryptor = BackupDecryptor(KEY)
    with contextlib.suppress(VerificationError, BackupFormatError):
        decryptor.update(data)
        decryptor.finalize()


@given(st.binary(max_size=400))
def test_arbitrary_garbage_raises_only_our_errors(garbage: bytes) -> None:
    _only_our_errors(garbage)
    _only_our_errors(MAGIC + b"\x01" + garbage)
    _only_our_errors(_SMALL_CT[:HEADER_LEN] + garbage)


@given(st.data())
def test_arbitrary_edits_of_a_valid_backup_raise_only_our_errors(data: st.DataObject) -> None:
    damaged = bytearray(_SMALL_CT)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(damaged)))
        action = data.draw(st.sampled_from(["insert", "delete", "replace", "cut"]))
        if action == "insert":
            damaged[pos:pos] = data.draw(st.binary(min_size=1, max_size=40))
        elif action == "delete":
            del damaged[pos : pos + data.draw(st.integers(1, 40))]
        elif action == "replace" and pos < len(damaged):
            damaged[pos] ^= data.draw(st.integers(1, 255))
        else:
            del damaged[pos:]
    if bytes(damaged) != _SMALL_CT:
        with pytest.raises((VerificationError, BackupFormatError)):
            dec(bytes(damaged))


# ---------------------------------------------------------------------- regeneration


def _regenerate_golden() -> None:  # pragma: no cover - manual tool
    DATA.mkdir(exist_ok=True)
    plaintext = _golden_plaintext()
    GOLDEN_PLAIN.write_bytes(plaintext)
    GOLDEN_BIN.write_bytes(_golden_encrypt(plaintext))
    print(f"wrote {GOLDEN_PLAIN} and {GOLDEN_BIN}")


if __name__ == "__main__":  # pragma: no cover
    if sys.argv[1:] == ["--regenerate-golden"]:
        _regenerate_golden()
    else:
        raise SystemExit("usage: python -m tests.crypto.test_backup_stream --regenerate-golden")
