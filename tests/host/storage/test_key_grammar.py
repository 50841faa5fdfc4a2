"""Property tests of the blob key grammar: an independent oracle agrees with the
validator on arbitrary strings, and every valid key round-trips through every BlobStore
without colliding with another key or leaving the filesystem root."""

from __future__ import annotations

import os
import string
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hsmvault.errors import InvalidParameter
from hsmvault.host.storage.base import BlobStore
from hsmvault.host.storage.filesystem import FilesystemBlobStore
from hsmvault.host.storage.validation import check_blob_key, is_valid_blob_key

SAFE = string.ascii_letters + string.digits + "_-"


def oracle(key: str) -> bool:
    """The grammar written out by hand, without regular expressions."""
    if not 1 <= len(key) <= 512:
        return False
    segments = key.split("/")
    if len(segments) > 16:
        return False
    for segment in segments:
        if not 1 <= len(segment) <= 128 or segment[0] not in SAFE:
            return False
        if any(c not in SAFE + "." for c in segment):
            return False
    return True


segments = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from(SAFE),
    st.text(alphabet=SAFE + ".", max_size=20),
)
valid_keys = st.lists(segments, min_size=1, max_size=5).map("/".join)
# Strings that are *near* the grammar: its own characters plus the dangerous ones.
near_keys = st.text(alphabet=SAFE[:6] + "./\\~ \x00\n:é", max_size=40)


@given(st.one_of(near_keys, valid_keys, st.text(max_size=60)))
def test_validator_agrees_with_oracle(key: str) -> None:
    expected = oracle(key)
    assert is_valid_blob_key(key) == expected
    if expected:
        assert check_blob_key(key) == key
    else:
        try:
            check_blob_key(key)
        except InvalidParameter:
            pass
        else:
            raise AssertionError(f"accepted {key!r}")


@given(valid_keys)
def test_valid_keys_never_contain_path_escapes(key: str) -> None:
    parts = key.split("/")
    assert ".." not in parts
    assert "." not in parts
    assert not key.startswith("/")
    assert all(p and not p.startswith(".") for p in parts)


@settings(
    max_examples=25,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(key=valid_keys, other=valid_keys, data=st.binary(max_size=64))
def test_valid_keys_round_trip_without_collisions(
    blob_store: BlobStore, key: str, other: str, data: bytes
) -> None:
    try:
        assert blob_store.append(key, 0, data) == len(data)
        assert b"".join(blob_store.read(key)) == data
        if other != key:
            assert blob_store.size(other) is None
        if isinstance(blob_store, FilesystemBlobStore):
            _assert_inside(blob_store.root)
    finally:
        blob_store.delete(key)
    assert blob_store.size(key) is None


def _assert_inside(root: Path) -> None:
    """Every file and directory under ``root`` is private and was not a symlink."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            assert not path.is_symlink()
            assert path.resolve().is_relative_to(root)
            assert path.stat().st_mode & 0o077 == 0
