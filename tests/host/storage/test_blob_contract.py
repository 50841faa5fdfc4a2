"""The BlobStore contract (base.py), run against every adapter: filesystem and S3
(a real ``moto_server``)."""

from __future__ import annotations

import hashlib
import threading
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import pytest

from hsmvault.errors import InvalidParameter
from hsmvault.host.storage.base import BlobStore

from .conftest import BlobOpener

MiB = 1 << 20


def read_all(store: BlobStore, key: str, chunk_size: int = 1 << 20) -> bytes:
    return b"".join(store.read(key, chunk_size))


def test_round_trip_in_pieces(blob_store: BlobStore) -> None:
    key = "users/ab12/backups/main/gen-1"
    pieces = [b"first ", b"", b"second piece ", bytes(range(256)) * 40]
    offset = 0
    for piece in pieces:
        offset = blob_store.append(key, offset, piece)
        assert blob_store.size(key) == offset
    expected = b"".join(pieces)
    assert offset == len(expected)
    assert read_all(blob_store, key) == expected
    assert read_all(blob_store, key, chunk_size=7) == expected
    assert all(len(c) <= 7 for c in blob_store.read(key, 7))


def test_empty_blob_exists_and_grows(blob_store: BlobStore) -> None:
    assert blob_store.append("empty", 0, b"") == 0
    assert blob_store.size("empty") == 0
    assert read_all(blob_store, "empty") == b""
    assert blob_store.append("empty", 0, b"now data") == 8
    assert read_all(blob_store, "empty") == b"now data"


def test_wrong_offsets_are_rejected_and_change_nothing(blob_store: BlobStore) -> None:
    key = "k"
    blob_store.append(key, 0, b"abc")
    for offset in (0, 2, 4, 1000):
        with pytest.raises(InvalidParameter):
            blob_store.append(key, offset, b"xyz")
    with pytest.raises(InvalidParameter):
        blob_store.append(key, -1, b"xyz")
    assert blob_store.size(key) == 3
    assert read_all(blob_store, key) == b"abc"
    assert blob_store.append(key, 3, b"def") == 6
    assert read_all(blob_store, key) == b"abcdef"


def test_append_past_end_of_missing_key_creates_nothing(blob_store: BlobStore) -> None:
    with pytest.raises(InvalidParameter):
        blob_store.append("missing/child", 5, b"data")
    assert blob_store.size("missing/child") is None
    with pytest.raises(KeyError):
        blob_store.read("missing/child")


def test_missing_keys(blob_store: BlobStore) -> None:
    assert blob_store.size("nope") is None
    with pytest.raises(KeyError):
        blob_store.read("nope")  # raised at call time, before iteration
    blob_store.delete("nope")  # no-op
    blob_store.delete("deep/er/nope")


def test_delete_then_recreate(blob_store: BlobStore) -> None:
    blob_store.append("a/b/c", 0, b"one")
    blob_store.append("a/b/d", 0, b"two")
    blob_store.delete("a/b/c")
    assert blob_store.size("a/b/c") is None
    with pytest.raises(KeyError):
        blob_store.read("a/b/c")
    assert read_all(blob_store, "a/b/d") == b"two"  # the sibling is untouched
    blob_store.delete("a/b/c")
    assert blob_store.append("a/b/c", 0, b"again") == 5
    assert read_all(blob_store, "a/b/c") == b"again"


def test_prefix_related_keys_are_independent(blob_store: BlobStore) -> None:
    keys = ["a", "a/b", "a.b", "a/b/c", "ab", "a-b", "a_b", "A"]
    for i, key in enumerate(keys):
        blob_store.append(key, 0, f"value {i}".encode())
    for i, key in enumerate(keys):
        assert read_all(blob_store, key) == f"value {i}".encode()
    blob_store.delete("a")
    assert blob_store.size("a") is None
    assert [blob_store.size(k) for k in keys[1:]] == [len(f"value {i}") for i in range(1, 8)]


BAD_KEYS = [
    "",
    "/abs",
    "trailing/",
    "a//b",
    "..",
    "a/../b",
    ".hidden",
    "a/.",
    "back\\slash",
    "nul\x00byte",
    "new\nline",
    "sp ace",
    "ümlaut",
    "a/~0000000000",
    "x" * 129,
    "/".join(["s"] * 17),
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_keys_outside_the_grammar_are_rejected(blob_store: BlobStore, key: str) -> None:
    with pytest.raises(InvalidParameter):
        blob_store.append(key, 0, b"x")
    with pytest.raises(InvalidParameter):
        blob_store.size(key)
    with pytest.raises(InvalidParameter):
        blob_store.read(key)
    with pytest.raises(InvalidParameter):
        blob_store.delete(key)


def test_bad_chunk_size_is_rejected(blob_store: BlobStore) -> None:
    blob_store.append("k", 0, b"x")
    for bad in (0, -1):
        with pytest.raises(InvalidParameter):
            blob_store.read("k", bad)


def test_data_survives_reopening(open_blob_store: BlobOpener) -> None:
    first = open_blob_store()
    first.append("users/u/backups/b/1", 0, b"persisted ")
    second = open_blob_store()
    assert second.size("users/u/backups/b/1") == 10
    assert second.append("users/u/backups/b/1", 10, b"resumed") == 17
    assert read_all(first, "users/u/backups/b/1") == b"persisted resumed"


def _pattern_chunk(i: int, size: int) -> bytes:
    return hashlib.sha256(i.to_bytes(4, "big")).digest() * (size // 32)


def test_large_object_streams_with_bounded_memory(blob_store: BlobStore) -> None:
    key = "large/object"
    chunks, chunk_len = 5, 4 * MiB  # a 20 MiB blob written in 4 MiB appends
    digest = hashlib.sha256()
    offset = 0
    for i in range(chunks):
        data = _pattern_chunk(i, chunk_len)
        digest.update(data)
        offset = blob_store.append(key, offset, data)
    assert blob_store.size(key) == chunks * chunk_len

    read_chunk = 256 * 1024
    tracemalloc.start()
    try:
        seen = hashlib.sha256()
        total = 0
        for chunk in blob_store.read(key, read_chunk):
            assert 0 < len(chunk) <= read_chunk
            seen.update(chunk)
            total += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == chunks * chunk_len
    assert seen.digest() == digest.digest()
    # Streaming, not buffering: the peak stays far below the 20 MiB object.
    assert peak < 4 * MiB, f"read peaked at {peak / MiB:.1f} MiB"


def test_racing_appends_at_the_same_offset_have_one_winner(blob_store: BlobStore) -> None:
    key = "race/same-offset"
    blob_store.append(key, 0, b"head:")
    n = 8
    barrier = threading.Barrier(n)

    def attempt(i: int) -> bytes | None:
        payload = f"writer-{i};".encode()
        barrier.wait()
        try:
            blob_store.append(key, 5, payload)
        except InvalidParameter:
            return None
        return payload

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(attempt, range(n)))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    assert read_all(blob_store, key) == b"head:" + winners[0]


def test_concurrent_appends_to_distinct_keys(blob_store: BlobStore) -> None:
    n, rounds = 4, 5

    def writer(i: int) -> bytes:
        key = f"par/writer-{i}"
        offset = 0
        content = b""
        for r in range(rounds):
            data = f"{i}:{r}|".encode() * (r + 1)
            offset = blob_store.append(key, offset, data)
            content += data
        return content

    with ThreadPoolExecutor(n) as pool:
        expected = list(pool.map(writer, range(n)))
    for i in range(n):
        assert read_all(blob_store, f"par/writer-{i}") == expected[i]


def test_sequential_appenders_from_many_threads_never_lose_bytes(blob_store: BlobStore) -> None:
    """Threads keep appending to ONE key at whatever offset they last saw; the losers
    of each race re-read the size and retry. Every accepted piece appears exactly once
    and no bytes appear that were not accepted."""
    key = "race/log"
    blob_store.append(key, 0, b"")
    accepted: list[bytes] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        for r in range(4):
            piece = f"<{i}.{r}>".encode()
            while True:
                offset = blob_store.size(key)
                assert offset is not None
                try:
                    blob_store.append(key, offset, piece)
                except InvalidParameter:
                    continue
                with lock:
                    accepted.append(piece)
                break

    with ThreadPoolExecutor(3) as pool:
        list(pool.map(worker, range(3)))
    content = read_all(blob_store, key)
    assert len(content) == sum(len(p) for p in accepted)
    assert sorted(content.replace(b"><", b">\n<").split(b"\n")) == sorted(accepted)
