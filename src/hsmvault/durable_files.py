"""Crash-safe file writes: replace a file atomically and make the change durable.

This module is a leaf: it imports nothing of ours, so every zone may use it (see
``docs/decisions/0001-layout-and-trust-zones.md``). POSIX only: the durability of a
rename or link needs an ``fsync`` of the directory that holds it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["fsync_directory", "replace_file_atomically"]


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """``fsync`` the directory itself, so that a file created, linked, renamed or removed
    in it survives a crash. Raises OSError (e.g. NotADirectoryError) if it cannot."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file_atomically(
    target: str | os.PathLike[str], data: bytes, *, tmp_prefix: str, tmp_suffix: str = ""
) -> None:
    """Make ``target`` hold exactly ``data``: after a crash it holds either the old or the
    new content in full, never a mix.

    Writes a temporary file (mode 0600, named ``tmp_prefix`` + random + ``tmp_suffix``)
    in ``target``'s directory, fsyncs it, renames it over ``target`` and fsyncs the
    directory. On failure the temporary file is removed (best effort) and the OSError
    propagates; a crash may leave a temporary file behind for the caller to sweep by its
    prefix.
    """
    directory = Path(target).parent
    fd, tmp = tempfile.mkstemp(prefix=tmp_prefix, suffix=tmp_suffix, dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_directory(directory)
