"""A :class:`~hsmvault.host.storage.base.BlobStore` on a local directory (the default).

Layout: key ``a/b/c`` is the file ``<root>/a.d/b.d/c.blob``. Directory names end in
``.d`` and file names in ``.blob``, so key ``a`` and key ``a/b`` never collide (the
mapping is injective and every name is in the key grammar plus a suffix). Keys are
checked against the strict grammar of :mod:`.validation` before they touch a path, and
the final component is opened with ``O_NOFOLLOW``.

Durability: every append is written with ``pwrite`` at the checked offset and
``fsync``-ed before it returns; a new file's directory chain is ``fsync``-ed as well.
A crash mid-append can leave a prefix of that chunk on disk: ``size`` then reports it
and the client resumes from there (the gateway verifies size and sha256 at commit).

Concurrency: an append holds an exclusive ``flock`` on the file while it checks the size
and writes, so racing appenders at the same offset (threads or processes on the same
host) see exactly one winner; the losers get ``InvalidParameter``. A ``delete`` that
races an ``append`` to the same key may let that append land in the unlinked file.

Permissions: directories 0700, files 0600 (ciphertext, but still nobody else's).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from hsmvault.errors import InvalidParameter
from hsmvault.host.storage.validation import check_blob_key, check_chunk_size

__all__ = ["FilesystemBlobStore"]

_DIR_SUFFIX = ".d"
_FILE_SUFFIX = ".blob"
_O_FLAGS = os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_CREATE_ATTEMPTS = 5


class FilesystemBlobStore:
    """Blobs as files under ``root`` (created 0700 if missing)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self._root = Path(root).resolve()
        self._root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not self._root.is_dir():
            raise InvalidParameter("blob store root is not a directory")

    @property
    def root(self) -> Path:
        return self._root

    # -- key mapping -----------------------------------------------------------------

    def _path(self, key: str) -> Path:
        parts = check_blob_key(key).split("/")
        path = self._root.joinpath(*(p + _DIR_SUFFIX for p in parts[:-1]), parts[-1] + _FILE_SUFFIX)
        # Defence in depth: the grammar already forbids every way out of the root.
        if path.parent != self._root and self._root not in path.parents:
            raise InvalidParameter("blob key escapes the store")
        return path

    # -- BlobStore -------------------------------------------------------------------

    def append(self, key: str, offset: int, data: bytes) -> int:
        path = self._path(key)
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise InvalidParameter("offset must be a non-negative integer")
        view = memoryview(data)
        fd = self._open_for_append(path, create=offset == 0)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            current = os.fstat(fd).st_size
            if current != offset:
                raise InvalidParameter(f"append offset {offset} != current size {current}")
            written = 0
            while written < len(view):
                written += os.pwrite(fd, view[written:], offset + written)
            os.fsync(fd)
            return offset + written
        finally:
            os.close(fd)  # also releases the flock

    def size(self, key: str) -> int | None:
        path = self._path(key)
        try:
            return path.stat().st_size
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            return None

    def read(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """Open now (a missing key raises :class:`KeyError` here, not on iteration) and
        stream the file in ``chunk_size`` pieces."""
        path = self._path(key)
        check_chunk_size(chunk_size)
        try:
            fd = os.open(path, os.O_RDONLY | _O_FLAGS)
        except (FileNotFoundError, NotADirectoryError):
            raise KeyError(key) from None
        # A file object (not a bare fd) so an iterator dropped unstarted still closes it.
        return _stream(os.fdopen(fd, "rb"), chunk_size)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            return
        self._fsync_dir(path.parent)
        # Prune now-empty parent directories (best effort; a racing append recreates).
        parent = path.parent
        while parent != self._root:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    # -- helpers ---------------------------------------------------------------------

    def _open_for_append(self, path: Path, *, create: bool) -> int:
        if not create:
            try:
                return os.open(path, os.O_WRONLY | _O_FLAGS)
            except (FileNotFoundError, NotADirectoryError):
                raise InvalidParameter("append offset is past the end of a missing blob") from None
        # A concurrent delete may prune a directory between mkdir and open: retry.
        for _ in range(_CREATE_ATTEMPTS):
            new_dirs = self._make_parents(path.parent)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | _O_FLAGS, 0o600)
            except FileNotFoundError:
                continue
            for directory in [path.parent, *new_dirs]:
                self._fsync_dir(directory)
            return fd
        raise OSError(errno.EAGAIN, "could not create blob file (directory kept vanishing)")

    def _make_parents(self, directory: Path) -> list[Path]:
        """Create ``directory`` and missing ancestors (0700); return the parents of the
        created ones (whose entries must be fsync-ed)."""
        missing: list[Path] = []
        d = directory
        while d != self._root and not d.is_dir():
            missing.append(d)
            d = d.parent
        touched: list[Path] = []
        for d in reversed(missing):
            with contextlib.suppress(FileExistsError):
                d.mkdir(mode=0o700)
            touched.append(d.parent)
        return touched

    @staticmethod
    def _fsync_dir(directory: Path) -> None:
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _stream(file: BinaryIO, chunk_size: int) -> Iterator[bytes]:
    with file:
        while chunk := file.read(chunk_size):
            yield chunk
