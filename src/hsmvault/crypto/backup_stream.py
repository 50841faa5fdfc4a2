"""Streaming authenticated encryption of backup files: format v1 (``docs/formats/backup.md``).

A backup file is a fixed 81-byte header followed by chunks. Each chunk is AES-256-GCM
under a key derived from the user's backup key ``BK`` and the file's random 32-byte file
id (HKDF-SHA256); the header carries a key-commitment value so a wrong key is refused
before any chunk is read, and every chunk carries an authenticated index and a last-chunk
flag (the STREAM construction) so truncation, reordering, duplication, bit flips and
appended bytes are each refused with their own error class:

================================  ==============================================
what happened                     exception (all from :mod:`hsmvault.errors`)
================================  ==============================================
not a backup / damaged header     :class:`BackupFormatError` (a ``DecodeError``)
a key other than the file's       :class:`WrongKeyError`
a chunk's bytes changed           :class:`ChunkAuthenticationError`
chunks reordered or one dropped   :class:`ChunkOrderError`
a chunk appears a second time     :class:`DuplicateChunkError`
the file ends before its last     :class:`TruncatedBackupError`
bytes after the last chunk        :class:`TrailingDataError`
================================  ==============================================

All but ``BackupFormatError`` are :class:`~hsmvault.errors.VerificationError`.

Public API, in three layers:

* one-shot streams: :func:`encrypt_stream` / :func:`decrypt_stream` over binary file-like
  objects, constant memory (two chunk buffers), zero extra copies of chunk data;
* push objects: :class:`BackupEncryptor` / :class:`BackupDecryptor` (``update`` /
  ``finalize``) and the generator wrappers :func:`encrypt_iter` / :func:`decrypt_iter`;
* files: ``encrypt_file`` / ``decrypt_file`` live in :mod:`hsmvault.client.backup_files`
  (crypto does no I/O); they write to a temporary file and rename it into place.

Release of plaintext: a chunk's plaintext is handed to the caller only after that chunk's
tag verified, but the *file* as a whole is only known to be complete once the last chunk
verified. A stream that is truncated or damaged at chunk ``k`` has already released
chunks ``0..k-1`` (each authentic) when the error is raised. Callers that must not act on
a partial backup decrypt to a temporary location and keep it only on success; that is
what ``hsmvault.client.backup_files.decrypt_file`` does.

The module is pure: no file system, no clocks, no logging, randomness injectable
(``rng``). It uses ``cryptography``'s AESGCM and HKDF only.
Not thread-safe: use one encryptor/decryptor per thread.
"""

from __future__ import annotations

import hmac
import secrets
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from hsmvault.errors import (
    BackupFormatError,
    ChunkAuthenticationError,
    ChunkOrderError,
    DuplicateChunkError,
    InvalidParameter,
    ProtocolStateError,
    TrailingDataError,
    TruncatedBackupError,
    WrongKeyError,
)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "FILE_ID_LEN",
    "FRAME_LEN",
    "HEADER_LEN",
    "MAGIC",
    "MAX_CHUNKS",
    "MAX_CHUNK_SIZE",
    "MAX_PLAINTEXT_BYTES",
    "MIN_CHUNK_SIZE",
    "TAG_LEN",
    "VERSION",
    "BackupDecryptor",
    "BackupEncryptor",
    "BackupHeader",
    "BackupKey",
    "ProgressCallback",
    "RandomBytes",
    "StreamInfo",
    "decrypt_iter",
    "decrypt_stream",
    "encrypt_iter",
    "encrypt_stream",
]

# --------------------------------------------------------------------------------------
# Format constants (docs/formats/backup.md §2-§4). Changing any of these is a new version.
# --------------------------------------------------------------------------------------

#: File signature, PNG-style: a high-bit byte, "HVBK", CR LF, SUB.
MAGIC: Final = b"\x89HVBK\r\n\x1a"
#: The only format version this module reads and writes.
VERSION: Final = 1
#: Length of the random per-file id (HKDF salt; makes every file's keys unique).
FILE_ID_LEN: Final = 32
#: Length of the key-commitment value in the header.
COMMITMENT_LEN: Final = 32
#: Length of the backup key BK and of the derived AES-256 key.
KEY_LEN: Final = 32
#: AES-GCM tag length (full 128 bits; NIST SP 800-38D §5.2.1.2).
TAG_LEN: Final = 16
NONCE_LEN: Final = 12
MIN_CHUNK_SIZE: Final = 4 * 1024
MAX_CHUNK_SIZE: Final = 16 * 1024 * 1024
DEFAULT_CHUNK_SIZE: Final = 1024 * 1024
#: Chunk indices are 32-bit: index ``i`` is used once, so nonces never repeat.
MAX_CHUNKS: Final = 2**32
#: Per-file plaintext cap (1 TiB) keeping AES-GCM's confidentiality bound below ~2^-57.
#: Read at call time (not ``Final``) so tests can lower it.
MAX_PLAINTEXT_BYTES = 2**40

# magic(8) version(1) chunk_size(4) file_id(32) commitment(32) header_crc(4) = 81 bytes
_HEADER: Final = struct.Struct(">8sBI32s32sI")
HEADER_LEN: Final = _HEADER.size
#: magic, version, chunk size and file id: the header fields the keys are derived from.
_PARAMS_LEN: Final = 8 + 1 + 4 + FILE_ID_LEN
_PREFIX_LEN: Final = 8 + 1
# index(4) flags(1) plaintext_length(4) frame_crc(4) = 13 bytes
_FRAME: Final = struct.Struct(">IBII")
FRAME_LEN: Final = _FRAME.size
_FRAME_BODY: Final = struct.Struct(">IBI")
_FLAG_LAST: Final = 0x01
# nonce = 7 zero bytes || index (u32 BE) || last flag (u8)   (STREAM, HRRV 2015 §7)
_NONCE_TAIL: Final = struct.Struct(">IB")
_NONCE_TAIL_AT: Final = NONCE_LEN - _NONCE_TAIL.size

_LABEL_CHUNK_KEY: Final = b"hsmvault backup v1: chunk key"
_LABEL_COMMITMENT: Final = b"hsmvault backup v1: key commitment"

assert HEADER_LEN == 81 and FRAME_LEN == 13 and _PARAMS_LEN == 45  # noqa: PT018

# encrypt_into/decrypt_into (no output allocation) arrived in recent `cryptography`
# releases; older ones (the project allows >= 44) take the allocating path.
_HAVE_INTO: bool = hasattr(AESGCM, "encrypt_into") and hasattr(AESGCM, "decrypt_into")

RandomBytes = Callable[[int], bytes]
"""A source of uniformly random bytes (``secrets.token_bytes`` by default)."""

ProgressCallback = Callable[[int], object]
"""Called after every chunk with the number of plaintext bytes processed so far."""

BytesLike = bytes | bytearray | memoryview


# --------------------------------------------------------------------------------------
# Typed secret
# --------------------------------------------------------------------------------------


class BackupKey:
    """The 32-byte backup key ``BK``: a secret with a redacted ``repr``.

    Contract: ``repr``/``str`` never show key bytes; equality is constant-time; instances
    are unhashable and refuse to be pickled (so they do not end up in caches, logs or
    on disk by accident). :meth:`expose_secret` is the one explicit way to get the bytes.
    """

    __slots__ = ("_secret",)
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, key: BytesLike) -> None:
        """Wrap ``key``; raises :class:`InvalidParameter` unless it is exactly 32 bytes."""
        if not isinstance(key, bytes | bytearray | memoryview):
            raise InvalidParameter("a backup key must be bytes")
        raw = bytes(key)
        if len(raw) != KEY_LEN:
            raise InvalidParameter(f"a backup key must be {KEY_LEN} bytes")
        self._secret = raw

    @classmethod
    def generate(cls, rng: RandomBytes | None = None) -> BackupKey:
        """A fresh random backup key (``secrets.token_bytes`` unless ``rng`` is given)."""
        draw = rng if rng is not None else secrets.token_bytes
        return cls(draw(KEY_LEN))

    def expose_secret(self) -> bytes:
        """The raw key bytes. Every call site is a place where the secret leaves the type."""
        return self._secret

    def __repr__(self) -> str:
        return "BackupKey(<redacted>)"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BackupKey):
            return NotImplemented
        return hmac.compare_digest(self._secret, other._secret)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("BackupKey cannot be pickled")


# --------------------------------------------------------------------------------------
# Header (spec §3)
# --------------------------------------------------------------------------------------


def _check_chunk_size(chunk_size: int) -> None:
    if (
        not isinstance(chunk_size, int)
        or isinstance(chunk_size, bool)
        or not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE
    ):
        raise InvalidParameter(
            f"chunk_size must be an integer in [{MIN_CHUNK_SIZE}, {MAX_CHUNK_SIZE}]"
        )


@dataclass(frozen=True, slots=True)
class BackupHeader:
    """The public header of a backup file. Nothing in it is secret.

    ``commitment`` is derived from the backup key and the other fields (spec §4); it lets
    a reader check the key before reading any chunk, and reveals nothing about the key.
    """

    chunk_size: int
    file_id: bytes
    commitment: bytes
    version: int = VERSION

    def __post_init__(self) -> None:
        if self.version != VERSION:
            raise InvalidParameter(f"only format version {VERSION} is supported")
        _check_chunk_size(self.chunk_size)
        if len(self.file_id) != FILE_ID_LEN:
            raise InvalidParameter(f"file_id must be {FILE_ID_LEN} bytes")
        if len(self.commitment) != COMMITMENT_LEN:
            raise InvalidParameter(f"commitment must be {COMMITMENT_LEN} bytes")

    def params_bytes(self) -> bytes:
        """magic || version || chunk_size || file_id: the bytes the keys are bound to."""
        return _HEADER.pack(MAGIC, self.version, self.chunk_size, self.file_id, b"", 0)[
            :_PARAMS_LEN
        ]

    def to_bytes(self) -> bytes:
        """The 81-byte encoding (spec §3), including its CRC-32."""
        body = self.params_bytes() + self.commitment
        return body + zlib.crc32(body).to_bytes(4, "big")

    @classmethod
    def from_bytes(cls, data: BytesLike) -> BackupHeader:
        """Parse exactly :data:`HEADER_LEN` bytes.

        Checks, in order: magic, version, length, header CRC, chunk-size range. Any
        failure raises :class:`BackupFormatError`; a short input that is a prefix of a
        valid header raises :class:`TruncatedBackupError`.
        """
        _check_header_prefix(data)
        if len(data) < HEADER_LEN:
            raise TruncatedBackupError("backup file ends inside its header")
        if len(data) > HEADER_LEN:
            raise BackupFormatError(f"a backup header is exactly {HEADER_LEN} bytes")
        _magic, _version, chunk_size, file_id, commitment, crc = _HEADER.unpack(data)
        if zlib.crc32(memoryview(data)[: HEADER_LEN - 4]) != crc:
            raise BackupFormatError("backup header checksum mismatch: the header is damaged")
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise BackupFormatError("backup header declares a chunk size out of range")
        return cls(chunk_size=chunk_size, file_id=file_id, commitment=commitment)


def _check_header_prefix(prefix: BytesLike) -> None:
    """Reject early on the first bytes available: magic, then version."""
    n = min(len(prefix), len(MAGIC))
    if bytes(prefix[:n]) != MAGIC[:n]:
        raise BackupFormatError("not a hsmvault backup file (bad magic)")
    if len(prefix) > len(MAGIC) and prefix[len(MAGIC)] != VERSION:
        raise BackupFormatError(f"unsupported backup format version {prefix[len(MAGIC)]}")


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """What one encryption or decryption processed. No secrets."""

    header: BackupHeader
    plaintext_bytes: int
    ciphertext_bytes: int
    chunks: int


# --------------------------------------------------------------------------------------
# Key schedule (spec §4)
# --------------------------------------------------------------------------------------


def _hkdf(bk: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(bk)


def _derive(backup_key: BackupKey, params: bytes, file_id: bytes) -> tuple[AESGCM, bytes]:
    """(AES-GCM under the chunk key, key commitment) for these header parameters."""
    bk = backup_key.expose_secret()
    aead = AESGCM(_hkdf(bk, file_id, _LABEL_CHUNK_KEY + params))
    commitment = _hkdf(bk, file_id, _LABEL_COMMITMENT + params)
    return aead, commitment


# --------------------------------------------------------------------------------------
# Chunk layer (spec §5): the one place chunks are sealed and opened
# --------------------------------------------------------------------------------------


class _ChunkSealer:
    """Seals chunks 0, 1, 2, ... in order; enforces the format limits."""

    __slots__ = ("_ad", "_aead", "_done", "_nonce", "chunks", "header", "header_bytes", "pt")

    def __init__(
        self,
        backup_key: BackupKey,
        chunk_size: int,
        rng: RandomBytes | None,
        unsafe_file_id: bytes | None,
    ) -> None:
        if not isinstance(backup_key, BackupKey):
            raise InvalidParameter("backup_key must be a BackupKey")
        _check_chunk_size(chunk_size)
        if unsafe_file_id is not None and rng is not None:
            raise InvalidParameter("give either rng or unsafe_file_id, not both")
        if unsafe_file_id is not None:
            file_id = bytes(unsafe_file_id)
        else:
            file_id = (rng if rng is not None else secrets.token_bytes)(FILE_ID_LEN)
        if len(file_id) != FILE_ID_LEN:
            raise InvalidParameter(f"the file id must be {FILE_ID_LEN} bytes")
        params = _HEADER.pack(MAGIC, VERSION, chunk_size, file_id, b"", 0)[:_PARAMS_LEN]
        self._aead, commitment = _derive(backup_key, params, file_id)
        self.header = BackupHeader(chunk_size=chunk_size, file_id=file_id, commitment=commitment)
        self.header_bytes = self.header.to_bytes()
        self._ad = bytearray(HEADER_LEN + FRAME_LEN)
        self._ad[:HEADER_LEN] = self.header_bytes
        self._nonce = bytearray(NONCE_LEN)
        self.chunks = 0
        self.pt = 0
        self._done = False

    def seal_into(self, plaintext: memoryview, last: bool, out: memoryview) -> int:
        """Write the framed chunk (frame || ciphertext || tag) to ``out``; return its size.

        ``out`` must hold at least ``FRAME_LEN + len(plaintext) + TAG_LEN`` bytes. A
        non-last chunk must be exactly ``chunk_size`` bytes.
        """
        n = len(plaintext)
        if self._done:
            raise ProtocolStateError("the last chunk was already sealed")
        if n > self.header.chunk_size or (not last and n != self.header.chunk_size):
            raise InvalidParameter("only the last chunk may be shorter than chunk_size")
        if self.chunks >= MAX_CHUNKS or self.pt + n > MAX_PLAINTEXT_BYTES:
            raise InvalidParameter("the backup exceeds the format's size limit")
        index = self.chunks
        flags = _FLAG_LAST if last else 0
        frame = self._ad
        _FRAME_BODY.pack_into(frame, HEADER_LEN, index, flags, n)
        crc = zlib.crc32(memoryview(frame)[HEADER_LEN : HEADER_LEN + _FRAME_BODY.size])
        struct.pack_into(">I", frame, HEADER_LEN + _FRAME_BODY.size, crc)
        out[:FRAME_LEN] = frame[HEADER_LEN:]
        _NONCE_TAIL.pack_into(self._nonce, _NONCE_TAIL_AT, index, flags)
        end = FRAME_LEN + n + TAG_LEN
        if _HAVE_INTO:
            self._aead.encrypt_into(self._nonce, plaintext, self._ad, out[FRAME_LEN:end])
        else:  # cryptography without encrypt_into (tested by forcing _HAVE_INTO off)
            out[FRAME_LEN:end] = self._aead.encrypt(bytes(self._nonce), plaintext, self._ad)
        self.chunks += 1
        self.pt += n
        self._done = last
        return end

    def info(self) -> StreamInfo:
        ct = HEADER_LEN + self.chunks * (FRAME_LEN + TAG_LEN) + self.pt
        return StreamInfo(self.header, self.pt, ct, self.chunks)


class _ChunkOpener:
    """Opens chunks of one file in order. Verification checklist (spec §6):

    1. frame CRC, then frame fields consistent   -> ChunkAuthenticationError
    2. AES-GCM tag under (index, last) from the frame -> ChunkAuthenticationError
    3. the (now authentic) index equals the expected position:
       smaller -> DuplicateChunkError, larger -> ChunkOrderError
    Only then is the plaintext released.
    """

    __slots__ = ("_ad", "_aead", "_nonce", "chunks", "done", "header", "pt")

    def __init__(self, backup_key: BackupKey, header: BackupHeader) -> None:
        if not isinstance(backup_key, BackupKey):
            raise InvalidParameter("backup_key must be a BackupKey")
        aead, commitment = _derive(backup_key, header.params_bytes(), header.file_id)
        if not hmac.compare_digest(commitment, header.commitment):
            raise WrongKeyError("this backup was not made with this backup key")
        self._aead = aead
        self.header = header
        self._ad = bytearray(HEADER_LEN + FRAME_LEN)
        self._ad[:HEADER_LEN] = header.to_bytes()
        self._nonce = bytearray(NONCE_LEN)
        self.chunks = 0
        self.pt = 0
        self.done = False

    def parse_frame(self, frame: memoryview) -> tuple[int, bool, int]:
        """Check a 13-byte frame header; return (index, last, plaintext_length)."""
        index, flags, length, crc = _FRAME.unpack(frame)
        pos = self.chunks
        if zlib.crc32(frame[: _FRAME_BODY.size]) != crc:
            raise ChunkAuthenticationError(f"chunk at position {pos}: frame header damaged")
        last = flags == _FLAG_LAST
        if flags & ~_FLAG_LAST or length > self.header.chunk_size:
            raise ChunkAuthenticationError(f"chunk at position {pos}: invalid frame header")
        if not last and length != self.header.chunk_size:
            raise ChunkAuthenticationError(f"chunk at position {pos}: invalid frame header")
        return index, last, length

    def open_into(
        self, frame: memoryview, index: int, last: bool, body: memoryview, out: memoryview
    ) -> int:
        """Verify ``body`` (ciphertext || tag) and decrypt it into ``out``; return its length.

        On any failure ``out`` holds no plaintext of this chunk (it is zeroed).
        """
        n = len(body) - TAG_LEN
        pos = self.chunks
        self._ad[HEADER_LEN:] = frame
        _NONCE_TAIL.pack_into(self._nonce, _NONCE_TAIL_AT, index, _FLAG_LAST if last else 0)
        dest = out[:n]
        try:
            if _HAVE_INTO:
                self._aead.decrypt_into(self._nonce, body, self._ad, dest)
            else:  # cryptography without decrypt_into
                dest[:] = self._aead.decrypt(bytes(self._nonce), body, self._ad)
        except InvalidTag:
            # decrypt_into may have written unverified plaintext before the tag check.
            dest[:] = bytes(n)
            raise ChunkAuthenticationError(
                f"chunk at position {pos} failed authentication"
            ) from None
        if index != pos:
            dest[:] = bytes(n)
            if index < pos:
                raise DuplicateChunkError(f"chunk {index} appears again at position {pos}")
            raise ChunkOrderError(f"chunk {index} found at position {pos}: reordered or dropped")
        self.chunks += 1
        self.pt += n
        self.done = last
        return n

    def info(self) -> StreamInfo:
        ct = HEADER_LEN + self.chunks * (FRAME_LEN + TAG_LEN) + self.pt
        return StreamInfo(self.header, self.pt, ct, self.chunks)


# --------------------------------------------------------------------------------------
# I/O helpers for file-like objects (no paths)
# --------------------------------------------------------------------------------------


def _read_full(src: BinaryIO, view: memoryview) -> int:
    """Fill ``view`` from ``src``; return the byte count, short only at end of stream."""
    want = len(view)
    total = 0
    readinto = getattr(src, "readinto", None)
    while total < want:
        if readinto is not None:
            got = readinto(view[total:])
        else:
            data = src.read(want - total)
            got = None if data is None else len(data)
            if got is not None and got > want - total:
                raise InvalidParameter("source returned more bytes than requested")
            if got:
                view[total : total + got] = data
        if got is None:
            raise InvalidParameter("source is non-blocking and has no data ready")
        if got == 0:
            break
        total += got
    return total


def _write_all(dst: BinaryIO, view: memoryview) -> None:
    """Write all of ``view``; copes with raw streams that write partially."""
    written = dst.write(view)
    if written is None:  # a writer without a count (not io.RawIOBase): assume all taken
        return
    while written < len(view):
        more = dst.write(view[written:])
        if not more:
            raise InvalidParameter("destination stopped accepting bytes")
        written += more


# --------------------------------------------------------------------------------------
# One-shot streaming API
# --------------------------------------------------------------------------------------


def encrypt_stream(
    backup_key: BackupKey,
    src: BinaryIO,
    dst: BinaryIO,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    rng: RandomBytes | None = None,
    unsafe_file_id: bytes | None = None,
    progress: ProgressCallback | None = None,
) -> StreamInfo:
    """Encrypt everything ``src`` yields until end of stream into ``dst``.

    Memory: two buffers of about ``chunk_size`` bytes, whatever the input size. ``src``
    is read with ``readinto`` when it has one (``read`` otherwise); ``dst.write`` must
    consume the bytes before returning (every ``io`` object does), because the buffer
    it is handed is reused for the next chunk.

    The file id comes from ``rng`` (default ``secrets.token_bytes``). ``unsafe_file_id``
    exists for golden files only: encrypting two different plaintexts under one backup
    key with the same file id reuses AES-GCM nonces, which destroys confidentiality and
    authenticity of both files.

    Raises :class:`InvalidParameter` for a bad ``chunk_size``/file id or input beyond
    :data:`MAX_PLAINTEXT_BYTES`. I/O errors from ``src``/``dst`` propagate unchanged.
    """
    sealer = _ChunkSealer(backup_key, chunk_size, rng, unsafe_file_id)
    _write_all(dst, memoryview(sealer.header_bytes))
    pt_buf = bytearray(chunk_size)
    pt = memoryview(pt_buf)
    out = memoryview(bytearray(FRAME_LEN + chunk_size + TAG_LEN))
    peek = memoryview(bytearray(1))
    n = _read_full(src, pt)
    while True:
        # A full chunk is the last one only if nothing follows: look one byte ahead.
        last = n < chunk_size or _read_full(src, peek) == 0
        size = sealer.seal_into(pt[:n], last, out)
        _write_all(dst, out[:size])
        if progress is not None:
            progress(sealer.pt)
        if last:
            return sealer.info()
        pt_buf[0] = peek[0]
        n = 1 + _read_full(src, pt[1:])


def decrypt_stream(
    backup_key: BackupKey,
    src: BinaryIO,
    dst: BinaryIO,
    *,
    progress: ProgressCallback | None = None,
) -> StreamInfo:
    """Decrypt a backup from ``src`` into ``dst``, verifying everything (spec §6).

    Each chunk is written to ``dst`` only after its tag verified and its position was
    checked. The whole file is verified only when this function returns: if it raises
    after chunk ``k``, chunks ``0..k-1`` were already written (each authentic), so write
    to a temporary file and keep it only on success
    (``hsmvault.client.backup_files.decrypt_file`` does).
    Memory: two buffers of about the file's chunk size.

    Raises one of :class:`BackupFormatError`, :class:`WrongKeyError`,
    :class:`ChunkAuthenticationError`, :class:`ChunkOrderError`,
    :class:`DuplicateChunkError`, :class:`TruncatedBackupError`,
    :class:`TrailingDataError`. I/O errors from ``src``/``dst`` propagate unchanged.
    """
    head = memoryview(bytearray(HEADER_LEN))
    got = _read_full(src, head)
    header = BackupHeader.from_bytes(head[:got])
    opener = _ChunkOpener(backup_key, header)
    cs = header.chunk_size
    inbuf = memoryview(bytearray(FRAME_LEN + cs + TAG_LEN))
    frame = inbuf[:FRAME_LEN]
    out = memoryview(bytearray(cs))
    while not opener.done:
        if _read_full(src, frame) < FRAME_LEN:
            raise TruncatedBackupError(
                f"backup ends before its last chunk (after {opener.chunks} chunks)"
            )
        index, last, length = opener.parse_frame(frame)
        body = inbuf[FRAME_LEN : FRAME_LEN + length + TAG_LEN]
        if _read_full(src, body) < len(body):
            raise TruncatedBackupError(f"backup ends inside chunk {opener.chunks}")
        n = opener.open_into(frame, index, last, body, out)
        _write_all(dst, out[:n])
        if progress is not None:
            progress(opener.pt)
    if _read_full(src, memoryview(bytearray(1))):
        raise TrailingDataError("bytes follow the last chunk of the backup")
    return opener.info()


# --------------------------------------------------------------------------------------
# Push API
# --------------------------------------------------------------------------------------


class BackupEncryptor:
    """Incremental encryption for callers that push plaintext.

    ``update(data)`` returns the ciphertext that is ready (the header with the first
    call, then every completed chunk); ``finalize()`` returns the rest. The concatenation
    of all returned bytes is the backup file. Internal memory is two chunk buffers;
    the bytes returned are proportional to the input of that call, so push bounded
    pieces for constant memory. Single use: calls after ``finalize`` (or after an
    error) raise :class:`ProtocolStateError`. See :func:`encrypt_stream` for
    ``rng`` / ``unsafe_file_id``.
    """

    def __init__(
        self,
        backup_key: BackupKey,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        rng: RandomBytes | None = None,
        unsafe_file_id: bytes | None = None,
    ) -> None:
        self._sealer = _ChunkSealer(backup_key, chunk_size, rng, unsafe_file_id)
        self._cs = chunk_size
        self._pending = bytearray(chunk_size)
        self._have = 0
        self._out = memoryview(bytearray(FRAME_LEN + chunk_size + TAG_LEN))
        self._header_sent = False
        self._closed = False

    @property
    def header(self) -> BackupHeader:
        """The header of the file being written (known before any data)."""
        return self._sealer.header

    def _emit_header(self, parts: list[bytes]) -> None:
        if not self._header_sent:
            parts.append(self._sealer.header_bytes)
            self._header_sent = True

    def _seal(self, last: bool, parts: list[bytes]) -> None:
        size = self._sealer.seal_into(memoryview(self._pending)[: self._have], last, self._out)
        parts.append(bytes(self._out[:size]))
        self._have = 0

    def update(self, data: BytesLike) -> bytes:
        """Take more plaintext; return the ciphertext bytes completed by it."""
        if self._closed:
            raise ProtocolStateError("encryptor already finalized")
        parts: list[bytes] = []
        self._emit_header(parts)
        view = memoryview(data).cast("B")
        pos = 0
        try:
            while pos < len(view):
                if self._have == self._cs:
                    # More data follows, so the pending full chunk is not the last one.
                    self._seal(False, parts)
                take = min(self._cs - self._have, len(view) - pos)
                self._pending[self._have : self._have + take] = view[pos : pos + take]
                self._have += take
                pos += take
        except BaseException:
            self._closed = True
            raise
        return b"".join(parts)

    def finalize(self) -> bytes:
        """Seal the last chunk; return the remaining ciphertext."""
        if self._closed:
            raise ProtocolStateError("encryptor already finalized")
        self._closed = True
        parts: list[bytes] = []
        self._emit_header(parts)
        self._seal(True, parts)
        return b"".join(parts)

    @property
    def info(self) -> StreamInfo:
        """Counts so far (final after :meth:`finalize`)."""
        return self._sealer.info()


class BackupDecryptor:
    """Incremental decryption for callers that push ciphertext.

    ``update(data)`` returns the plaintext of every chunk that completed *and verified*
    with this call; ``finalize()`` checks that the last chunk was seen and returns the
    :class:`StreamInfo`. The same release rule as :func:`decrypt_stream` applies:
    verified chunks are returned before the file is known to be complete. Errors are
    raised as soon as the bytes that prove them arrive; after an error, or after
    ``finalize``, the object refuses further use (:class:`ProtocolStateError`).
    Internal memory: two chunk buffers whatever the size of ``data``.
    """

    def __init__(self, backup_key: BackupKey) -> None:
        if not isinstance(backup_key, BackupKey):
            raise InvalidParameter("backup_key must be a BackupKey")
        self._key: BackupKey | None = backup_key
        self._opener: _ChunkOpener | None = None
        self._stage = bytearray(HEADER_LEN)
        self._need = HEADER_LEN
        self._have = 0
        self._frame: tuple[int, bool, int] | None = None
        self._out: memoryview | None = None
        self._closed = False

    @property
    def header(self) -> BackupHeader | None:
        """The verified header, once it has been read."""
        return None if self._opener is None else self._opener.header

    def update(self, data: BytesLike) -> bytes:
        """Take more ciphertext; return newly verified plaintext (possibly empty)."""
        if self._closed:
            raise ProtocolStateError("decryptor already finalized or failed")
        try:
            return self._update(memoryview(data).cast("B"))
        except BaseException:
            self._closed = True
            raise

    def _update(self, view: memoryview) -> bytes:
        parts: list[bytes] = []
        pos = 0
        while pos < len(view):
            if self._opener is not None and self._opener.done:
                raise TrailingDataError("bytes follow the last chunk of the backup")
            take = min(self._need - self._have, len(view) - pos)
            self._stage[self._have : self._have + take] = view[pos : pos + take]
            self._have += take
            pos += take
            if self._opener is None:
                _check_header_prefix(memoryview(self._stage)[: self._have])
            if self._have == self._need:
                self._step(parts)
        return b"".join(parts)

    def _step(self, parts: list[bytes]) -> None:
        stage = memoryview(self._stage)
        if self._opener is None:
            assert self._key is not None
            header = BackupHeader.from_bytes(stage[:HEADER_LEN])
            self._opener = _ChunkOpener(self._key, header)
            self._key = None
            cs = header.chunk_size
            self._stage = bytearray(FRAME_LEN + cs + TAG_LEN)
            self._out = memoryview(bytearray(cs))
            self._need, self._have = FRAME_LEN, 0
        elif self._frame is None:
            self._frame = self._opener.parse_frame(stage[:FRAME_LEN])
            self._need = FRAME_LEN + self._frame[2] + TAG_LEN
        else:
            assert self._out is not None
            index, last, _ = self._frame
            n = self._opener.open_into(
                stage[:FRAME_LEN], index, last, stage[FRAME_LEN : self._need], self._out
            )
            parts.append(bytes(self._out[:n]))
            self._frame = None
            self._need, self._have = FRAME_LEN, 0

    def finalize(self) -> StreamInfo:
        """Raise :class:`TruncatedBackupError` unless the last chunk verified."""
        if self._closed:
            raise ProtocolStateError("decryptor already finalized or failed")
        self._closed = True
        if self._opener is None:
            _check_header_prefix(memoryview(self._stage)[: self._have])
            raise TruncatedBackupError("backup ends inside its header")
        if not self._opener.done:
            raise TruncatedBackupError(
                f"backup ends before its last chunk (after {self._opener.chunks} chunks)"
            )
        return self._opener.info()


def encrypt_iter(
    backup_key: BackupKey,
    pieces: Iterable[BytesLike],
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    rng: RandomBytes | None = None,
) -> Iterator[bytes]:
    """Encrypt an iterable of plaintext pieces; yield ciphertext pieces (never empty)."""
    enc = BackupEncryptor(backup_key, chunk_size=chunk_size, rng=rng)
    for piece in pieces:
        out = enc.update(piece)
        if out:
            yield out
    yield enc.finalize()


def decrypt_iter(backup_key: BackupKey, pieces: Iterable[BytesLike]) -> Iterator[bytes]:
    """Decrypt an iterable of ciphertext pieces; yield verified plaintext pieces.

    Raises (from the generator) exactly what :func:`decrypt_stream` raises, including
    :class:`TruncatedBackupError` at the end if the last chunk never came. Pieces
    yielded before an error are authentic but the file is incomplete.
    """
    dec = BackupDecryptor(backup_key)
    for piece in pieces:
        out = dec.update(piece)
        if out:
            yield out
    dec.finalize()
