"""Whole-file backup and restore: atomic, private, never a partial restore."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from hsmvault.client.backup_files import decrypt_file, encrypt_file
from hsmvault.crypto.backup_stream import FRAME_LEN, HEADER_LEN, TAG_LEN
from hsmvault.errors import VerificationError
from tests.crypto.test_backup_stream import CS, KEY, OTHER_KEY, THREE_CHUNKS, enc, flip


def test_file_round_trip_is_atomic_and_private(tmp_path: Path) -> None:
    plain = tmp_path / "plain.bin"
    plain.write_bytes(THREE_CHUNKS)
    backup = tmp_path / "backup.hvb"
    restored = tmp_path / "restored.bin"
    info = encrypt_file(KEY, plain, backup, chunk_size=CS)
    assert backup.stat().st_size == info.ciphertext_bytes
    assert decrypt_file(KEY, backup, restored) == info
    assert restored.read_bytes() == THREE_CHUNKS
    assert stat.S_IMODE(restored.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "backup.hvb",
        "plain.bin",
        "restored.bin",
    ]


@pytest.mark.parametrize("damage", ["truncate", "flip", "wrong_key"])
def test_failed_restore_leaves_destination_untouched(tmp_path: Path, damage: str) -> None:
    backup = tmp_path / "backup.hvb"
    ciphertext = enc(THREE_CHUNKS)
    key = KEY
    if damage == "truncate":
        ciphertext = ciphertext[: HEADER_LEN + FRAME_LEN + CS + TAG_LEN]
    elif damage == "flip":
        ciphertext = flip(ciphertext, len(ciphertext) - 3)
    else:
        key = OTHER_KEY
    backup.write_bytes(ciphertext)
    restored = tmp_path / "restored.bin"
    restored.write_bytes(b"previous content")
    with pytest.raises(VerificationError):
        decrypt_file(key, backup, restored)
    assert restored.read_bytes() == b"previous content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup.hvb", "restored.bin"]
