"""Directories as tar streams, and restores that cannot be steered out of their place."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from hsmvault.client.archive import extract_archive, write_archive
from hsmvault.client.errors import ArchiveError
from hsmvault.errors import InvalidParameter


class NoSeekSink(io.RawIOBase):
    """A sink that refuses seek/tell, like a pipe: the archive must be streamed."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.biggest_write = 0

    def writable(self) -> bool:
        return True

    def write(self, b: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self.data += b
        self.biggest_write = max(self.biggest_write, len(b))
        return len(b)

    def seekable(self) -> bool:
        return False


def make_tree(root: Path) -> None:
    (root / "chats" / "2026").mkdir(parents=True)
    (root / "chats" / "2026" / "nov.txt").write_text("hello\n" * 1000)
    (root / "media").mkdir()
    (root / "media" / "photo.bin").write_bytes(os.urandom(300_000))
    (root / "empty").mkdir()
    (root / "empty.txt").write_bytes(b"")
    (root / "script.sh").write_text("#!/bin/sh\n")
    (root / "script.sh").chmod(0o755)
    (root / "latest").symlink_to("chats/2026/nov.txt")
    os.link(root / "empty.txt", root / "hardlink.txt")


def snapshot(root: Path) -> dict[str, tuple[str, bytes | str, int]]:
    out: dict[str, tuple[str, bytes | str, int]] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        st = path.lstat()
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path), 0)
        elif path.is_dir():
            out[rel] = ("dir", b"", 0)
        else:
            out[rel] = ("file", path.read_bytes(), stat.S_IMODE(st.st_mode) & 0o111)
    return out


def test_directory_round_trip_streams_without_seeking(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    sink = NoSeekSink()
    seen: list[int] = []
    info = write_archive(src, sink, progress=seen.append)
    assert info.archive_bytes == len(sink.data) == seen[-1]
    assert sink.biggest_write <= 64 * 1024  # streamed in blocks, not built in memory
    assert (info.files, info.directories, info.symlinks) == (5, 4, 1)
    dest = tmp_path / "restored"
    result = extract_archive(io.BytesIO(bytes(sink.data)), dest)
    assert result.files == 5
    assert snapshot(dest) == snapshot(src)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o700


def test_single_file_is_stored_under_its_name(tmp_path: Path) -> None:
    src = tmp_path / "notes.txt"
    src.write_text("a note")
    sink = io.BytesIO()
    write_archive(src, sink)
    extract_archive(io.BytesIO(sink.getvalue()), tmp_path / "out")
    assert (tmp_path / "out" / "notes.txt").read_text() == "a note"


def test_links_out_of_the_tree_and_fifos_are_skipped_not_stored(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "abs").symlink_to("/etc/passwd")
    (src / "up").symlink_to("../outside")
    os.mkfifo(src / "pipe")
    (src / "ok.txt").write_text("ok")
    sink = io.BytesIO()
    info = write_archive(src, sink)
    assert sorted(info.skipped) == ["abs", "pipe", "up"]
    with tarfile.open(fileobj=io.BytesIO(sink.getvalue())) as tar:
        assert tar.getnames() == ["ok.txt"]


def test_source_must_be_a_directory_or_file(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(InvalidParameter):
        write_archive(tmp_path / "pipe", io.BytesIO())


# ------------------------------------------------------------------ hostile archives


def hostile(*members: tuple[tarfile.TarInfo, bytes | None]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    buf.seek(0)
    return buf


def file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode = 0o644
    return info, data


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def special(name: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info, None


ATTACKS: dict[str, Callable[[], io.BytesIO]] = {
    "absolute path": lambda: hostile(file("/tmp/evil")),
    "dot-dot": lambda: hostile(file("../evil")),
    "dot-dot inside": lambda: hostile(file("a/../../evil")),
    "symlink out (absolute)": lambda: hostile(link("l", "/etc")),
    "symlink out (relative)": lambda: hostile(link("l", "../../etc")),
    "write through a symlink": lambda: hostile(link("l", "sub"), file("l/evil")),
    "write through a link out": lambda: hostile(link("l", ".."), file("l/evil")),
    "hard link out": lambda: hostile(link("h", "/etc/passwd", tarfile.LNKTYPE)),
    "hard link inside": lambda: hostile(file("a"), link("h", "a", tarfile.LNKTYPE)),
    "character device": lambda: hostile(special("dev", tarfile.CHRTYPE)),
    "block device": lambda: hostile(special("blk", tarfile.BLKTYPE)),
    "fifo": lambda: hostile(special("fifo", tarfile.FIFOTYPE)),
    "duplicate name": lambda: hostile(file("a"), file("a")),
    "overwrite via symlink": lambda: hostile(link("a", "b"), file("a")),
    "empty name": lambda: hostile(file("./")),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_hostile_archive_is_refused_and_nothing_is_published(tmp_path: Path, attack: str) -> None:
    outside = tmp_path / "evil"
    dest = tmp_path / "area" / "restore"
    with pytest.raises(ArchiveError):
        extract_archive(ATTACKS[attack](), dest)
    assert not dest.exists()
    assert not outside.exists()
    assert list((tmp_path / "area").iterdir()) == []  # the staging directory is gone


def test_setuid_and_world_writable_bits_are_dropped(tmp_path: Path) -> None:
    info, data = file("tool", b"#!/bin/sh\n")
    info.mode = 0o4777
    extract_archive(hostile((info, data)), tmp_path / "out")
    assert stat.S_IMODE((tmp_path / "out" / "tool").stat().st_mode) == 0o755


def test_read_only_directories_do_not_block_their_restore(tmp_path: Path) -> None:
    ro = tarfile.TarInfo("ro")
    ro.type = tarfile.DIRTYPE
    ro.mode = 0o555
    extract_archive(hostile((ro, None), file("ro/inner")), tmp_path / "out")
    assert (tmp_path / "out" / "ro" / "inner").read_bytes() == b"x"


def test_destination_must_be_new_or_empty(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    extract_archive(hostile(file("a")), dest)  # empty: accepted and replaced
    assert (dest / "a").exists()
    with pytest.raises(ArchiveError, match="not an empty directory"):
        extract_archive(hostile(file("b")), dest)
    assert sorted(p.name for p in dest.iterdir()) == ["a"]


def test_failure_before_publish_leaves_nothing(tmp_path: Path) -> None:
    def refuse() -> None:
        raise ValueError("the stream did not authenticate")

    with pytest.raises(ValueError, match="authenticate"):
        extract_archive(hostile(file("a")), tmp_path / "out", before_publish=refuse)
    assert list(tmp_path.iterdir()) == []


def test_garbage_is_an_archive_error(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="malformed"):
        extract_archive(io.BytesIO(b"\x01" * 1024), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
