"""Directories (or single files) as a tar stream, and a restore that refuses to escape.

:func:`write_archive` streams ``source`` as a POSIX (pax) tar archive into any writable
binary sink without seeking (``tarfile`` stream mode): memory stays constant whatever
the size of the tree. What goes in:

* directories, regular files and symbolic links whose target is *relative and stays
  inside the tree* (judged lexically); names are relative to ``source`` (a single file
  is stored under its base name), in sorted order;
* owner and group are not recorded (uid/gid 0, no names): a backup does not carry
  account names of the device; permission bits and modification times are;
* hard links are stored as independent regular files; anything else (sockets, FIFOs,
  device files, links pointing out of the tree or absolute) is skipped and reported in
  :attr:`ArchiveInfo.skipped`.

:func:`extract_archive` restores a stream into a *new* directory, atomically: it
extracts into a fresh temporary directory beside ``dest`` and renames it to ``dest``
only after the whole stream was read (and, for a backup, authenticated); on any error
the temporary directory is removed and ``dest`` does not appear. ``dest`` itself is
created ``0o700`` (a restore is private). Each member passes a
numbered checklist before anything is written:

1. ``tarfile.data_filter`` (PEP 706) where the running Python has it: no absolute
   names, nothing outside the destination, no device files, no links out, sane modes;
2. our own rules, independent of the Python version: the name is relative, has no
   ``..`` component, no NUL, is not empty; it does not pass *through* a symbolic link
   this archive created; it was not seen before (no overwriting);
3. the type is a directory, a regular file, or a symbolic link whose relative target
   stays inside the destination; hard links, devices, FIFOs and anything else are
   refused;
4. files are created with ``O_CREAT | O_EXCL | O_NOFOLLOW``, never through an existing
   path; permissions keep only the ``0o755`` bits (no setuid/setgid/sticky, no
   group/other write); directory modes are applied last (so a read-only directory does
   not block its own restore).

Any refused member raises :class:`~hsmvault.client.errors.ArchiveError` and aborts the
restore.
"""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO, Final

from hsmvault.client.errors import ArchiveError
from hsmvault.errors import InvalidParameter

__all__ = ["ArchiveInfo", "ExtractInfo", "extract_archive", "write_archive"]

PathLike = str | os.PathLike[str]
#: Called with the number of bytes written (archive) or restored (extract) so far.
ByteProgress = Callable[[int], object]

_COPY_BUFFER: Final = 1 << 20
_MODE_MASK: Final = 0o755
_DIR_BUILD_MODE: Final = 0o700


@dataclass(frozen=True, slots=True)
class ArchiveInfo:
    """What :func:`write_archive` stored: counts, bytes of the tar stream, and the
    relative names it skipped (unsupported types, links out of the tree)."""

    files: int
    directories: int
    symlinks: int
    file_bytes: int
    archive_bytes: int
    skipped: tuple[str, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class ExtractInfo:
    """What :func:`extract_archive` restored."""

    files: int
    directories: int
    symlinks: int
    file_bytes: int


class _CountingWriter(io.RawIOBase):
    """A write-only stream that counts bytes into ``sink`` and reports progress."""

    def __init__(self, sink: IO[bytes] | io.RawIOBase, progress: ByteProgress | None) -> None:
        self._sink = sink
        self._progress = progress
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(data)
        self._sink.write(view)
        self.count += len(view)
        if self._progress is not None:
            self._progress(self.count)
        return len(view)


def _link_stays_inside(arcname: str, target: str) -> bool:
    """True if the symlink ``arcname -> target`` names a path inside the archive root,
    judged lexically (relative target, no escape through ``..``)."""
    if not target or posixpath.isabs(target) or "\x00" in target:
        return False
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(arcname), target))
    return resolved != ".." and not resolved.startswith("../")


def _base_info(name: str, st: os.stat_result) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = stat.S_IMODE(st.st_mode) & _MODE_MASK
    info.mtime = int(st.st_mtime)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_archive(
    source: PathLike, sink: IO[bytes] | io.RawIOBase, *, progress: ByteProgress | None = None
) -> ArchiveInfo:
    """Stream ``source`` (a directory or a regular file) as a tar archive into
    ``sink``. Constant memory; ``sink`` need not be seekable. Raises
    :class:`InvalidParameter` if ``source`` is neither a directory nor a regular file,
    and ``OSError`` for unreadable files (never silently skipped)."""
    root = Path(source)
    st = root.lstat()
    counts = {"files": 0, "directories": 0, "symlinks": 0, "bytes": 0}
    skipped: list[str] = []
    writer = _CountingWriter(sink, progress)
    with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:

        def add_file(path: Path, name: str) -> None:
            with path.open("rb") as f:
                fst = os.fstat(f.fileno())
                info = _base_info(name, fst)
                info.type = tarfile.REGTYPE
                info.size = fst.st_size
                tar.addfile(info, f)
            counts["files"] += 1
            counts["bytes"] += info.size

        def add_tree(directory: Path, prefix: str) -> None:
            for entry in sorted(os.scandir(directory), key=lambda e: e.name):
                name = f"{prefix}{entry.name}"
                path = Path(entry.path)
                est = path.lstat()
                if stat.S_ISDIR(est.st_mode):
                    info = _base_info(name, est)
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                    counts["directories"] += 1
                    add_tree(path, f"{name}/")
                elif stat.S_ISREG(est.st_mode):
                    add_file(path, name)
                elif stat.S_ISLNK(est.st_mode):
                    target = os.readlink(path)
                    if not _link_stays_inside(name, target):
                        skipped.append(name)
                        continue
                    info = _base_info(name, est)
                    info.mode = 0o777
                    info.type = tarfile.SYMTYPE
                    info.linkname = target
                    tar.addfile(info)
                    counts["symlinks"] += 1
                else:
                    skipped.append(name)

        if stat.S_ISDIR(st.st_mode):
            add_tree(root, "")
        elif stat.S_ISREG(st.st_mode):
            add_file(root, root.name)
        else:
            raise InvalidParameter("a backup source must be a directory or a regular file")
    return ArchiveInfo(
        files=counts["files"],
        directories=counts["directories"],
        symlinks=counts["symlinks"],
        file_bytes=counts["bytes"],
        archive_bytes=writer.count,
        skipped=tuple(skipped),
    )


# ------------------------------------------------------------------ extraction


def _checked_name(raw: str) -> str:
    """Step 2 (names): a clean relative POSIX name, or :class:`ArchiveError`."""
    if not raw or "\x00" in raw or "\\" in raw:
        raise ArchiveError("archive member with an empty or unsafe name")
    if raw.startswith("/") or posixpath.isabs(raw) or (len(raw) > 1 and raw[1] == ":"):
        raise ArchiveError("archive member with an absolute name")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if not parts:
        raise ArchiveError("archive member names the destination itself")
    if ".." in parts:
        raise ArchiveError("archive member with '..' in its name")
    return "/".join(parts)


def _data_filter(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    """Step 1: the standard library's data filter, where it exists."""
    data_filter = getattr(tarfile, "data_filter", None)
    if data_filter is None:  # pragma: no cover - Python without PEP 706
        return member
    try:
        filtered: tarfile.TarInfo = data_filter(member, dest)
    except tarfile.TarError as exc:  # FilterError and subclasses
        raise ArchiveError(
            f"archive member refused by the data filter: {type(exc).__name__}"
        ) from None
    return filtered


def _copy_member(
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    target: str,
    mode: int,
    progress: Callable[[int], None],
) -> int:
    src = tar.extractfile(member)
    if src is None:  # pragma: no cover - a regular member always has a file object
        raise ArchiveError("archive member has no data")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(target, flags, 0o600)
    written = 0
    with os.fdopen(fd, "wb") as out:
        while block := src.read(_COPY_BUFFER):
            out.write(block)
            written += len(block)
            progress(len(block))
        os.fchmod(out.fileno(), mode)
    os.utime(target, (member.mtime, member.mtime), follow_symlinks=False)
    return written


def _extract_into(
    tar: tarfile.TarFile, root: str, progress: ByteProgress | None
) -> tuple[ExtractInfo, list[tuple[str, int, float]]]:
    seen: set[str] = set()
    links: set[str] = set()
    dirs: list[tuple[str, int, float]] = []
    counts = {"files": 0, "directories": 0, "symlinks": 0, "bytes": 0}

    def report(n: int) -> None:
        counts["bytes"] += n
        if progress is not None:
            progress(counts["bytes"])

    real_root = os.path.realpath(root)
    for raw_member in tar:
        name = _checked_name(raw_member.name)  # 2. on the raw name (1. strips a leading /)
        member = _data_filter(raw_member, root)  # 1.
        mode = (member.mode if member.mode is not None else raw_member.mode) & _MODE_MASK
        parents = name.split("/")[:-1]
        if any("/".join(parents[: i + 1]) in links for i in range(len(parents))):
            raise ArchiveError("archive member would be written through a symbolic link")
        if name in seen:
            raise ArchiveError("archive member appears twice")
        seen.add(name)
        target = os.path.join(root, *name.split("/"))
        parent = os.path.dirname(target)
        if os.path.commonpath([os.path.realpath(parent), real_root]) != real_root:
            raise ArchiveError("archive member would land outside the destination")
        os.makedirs(parent, mode=_DIR_BUILD_MODE, exist_ok=True)
        if member.isdir():  # 3.
            os.mkdir(target, _DIR_BUILD_MODE)
            dirs.append((target, mode, raw_member.mtime))
            counts["directories"] += 1
        elif member.isreg():
            _copy_member(tar, raw_member, target, mode, report)  # 4.
            counts["files"] += 1
        elif member.issym():
            if not _link_stays_inside(name, member.linkname):
                raise ArchiveError("archive symbolic link points outside the destination")
            os.symlink(member.linkname, target)
            links.add(name)
            counts["symlinks"] += 1
        elif member.islnk():
            raise ArchiveError("archive hard links are not restored")
        else:
            raise ArchiveError("archive member is a device, FIFO or other special file")
    info = ExtractInfo(
        files=counts["files"],
        directories=counts["directories"],
        symlinks=counts["symlinks"],
        file_bytes=counts["bytes"],
    )
    return info, dirs


def extract_archive(
    source: IO[bytes] | BinaryIO,
    dest: PathLike,
    *,
    progress: ByteProgress | None = None,
    before_publish: Callable[[], object] | None = None,
) -> ExtractInfo:
    """Restore the tar stream ``source`` into the new directory ``dest`` (see the
    module docstring for the checks). ``dest`` must not exist (an empty directory is
    accepted and replaced). ``before_publish`` runs after the archive was read and
    before the rename — the place to drain and authenticate the rest of the stream;
    if it raises, nothing is published. Raises :class:`ArchiveError` for a refused
    member or an existing non-empty ``dest``; ``tarfile`` errors for a malformed
    stream are raised as :class:`ArchiveError` too."""
    target = Path(dest)
    if target.is_symlink() or (target.exists() and (not target.is_dir() or any(target.iterdir()))):
        raise ArchiveError("the restore destination exists and is not an empty directory")
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".restoring", dir=parent)
    try:
        try:
            with tarfile.open(fileobj=source, mode="r|") as tar:
                info, dirs = _extract_into(tar, staging, progress)
        except tarfile.TarError as exc:
            raise ArchiveError(f"the archive is malformed: {type(exc).__name__}") from None
        if before_publish is not None:
            before_publish()
        for path, mode, mtime in reversed(dirs):  # deepest first, after all writes
            os.chmod(path, mode | stat.S_IRWXU)
            os.utime(path, (mtime, mtime))
        if target.exists():
            target.rmdir()  # empty (checked above)
        os.rename(staging, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(staging)
        raise
    return info
