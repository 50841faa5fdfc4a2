"""Backup files on disk: atomic encryption and restore of whole files.

The streaming format itself is pure (:mod:`hsmvault.crypto.backup_stream`); this module
is the client-side code that touches paths. A restore never leaves a partial or
unverified file at its destination.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TypeVar

from hsmvault.crypto.backup_stream import (
    DEFAULT_CHUNK_SIZE,
    BackupKey,
    ProgressCallback,
    RandomBytes,
    StreamInfo,
    decrypt_stream,
    encrypt_stream,
)

__all__ = ["decrypt_file", "encrypt_file"]

_T = TypeVar("_T")
PathLike = str | os.PathLike[str]


def _atomic_write(dst_path: PathLike, produce: Callable[[BinaryIO], _T]) -> _T:
    """Run ``produce`` on a new temporary file beside ``dst_path``; rename it over
    ``dst_path`` only if ``produce`` returns; delete it otherwise. The file is created
    with mode 0600 (``tempfile.mkstemp``) and fsynced before the rename."""
    dst = Path(dst_path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".partial", dir=dst.parent)
    try:
        with os.fdopen(fd, "wb") as tmp:
            result = produce(tmp)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename durable (POSIX)
        dir_fd = os.open(dst.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return result


def encrypt_file(
    backup_key: BackupKey,
    src_path: PathLike,
    dst_path: PathLike,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    rng: RandomBytes | None = None,
    progress: ProgressCallback | None = None,
) -> StreamInfo:
    """Encrypt the file ``src_path`` to ``dst_path`` atomically.

    ``dst_path`` either keeps its previous content (on any error) or holds the complete
    backup; it is replaced if it exists.
    """
    with open(src_path, "rb") as src:
        return _atomic_write(
            dst_path,
            lambda dst: encrypt_stream(
                backup_key, src, dst, chunk_size=chunk_size, rng=rng, progress=progress
            ),
        )


def decrypt_file(
    backup_key: BackupKey,
    src_path: PathLike,
    dst_path: PathLike,
    *,
    progress: ProgressCallback | None = None,
) -> StreamInfo:
    """Decrypt the backup ``src_path`` to ``dst_path`` atomically.

    The plaintext goes to a temporary file (mode 0600) beside ``dst_path`` and is renamed
    into place only after the whole backup verified, so ``dst_path`` never holds a
    partial or unverified restore. Raises what
    :func:`~hsmvault.crypto.backup_stream.decrypt_stream` raises.
    """
    with open(src_path, "rb") as src:
        return _atomic_write(
            dst_path, lambda dst: decrypt_stream(backup_key, src, dst, progress=progress)
        )
