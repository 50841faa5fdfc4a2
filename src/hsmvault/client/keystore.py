"""A small local keystore for the device's copy of the backup key BK.

**A stand-in.** On a phone, BK lives in the platform's secure storage (Android Keystore,
iOS Keychain / Secure Enclave), where the key that protects it cannot be read out. On a
desktop or server there is no such thing by default, so :class:`DeviceKeystore` keeps
two files in a directory of mode ``0o700``:

* ``device.key`` — 32 random bytes, mode ``0o600``: the device key;
* ``backup-key.wrapped`` — BK wrapped under the device key (``crypto.key_wrap``, purpose
  ``device-keystore``, AES-256-GCM), mode ``0o600``.

Keeping the wrap and the key in separate files means ``device.key`` can be moved to
something better (a TPM-sealed blob, a hardware token, another mount) by passing
``device_key_path``, without changing the format; as shipped, anyone who can read both
files as this user has BK — the same trust as an SSH private key without a passphrase.
Files are written atomically (temporary file, ``fsync``, rename) and refused on load if
they are readable by group or others.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import tempfile
from pathlib import Path
from typing import Final

from hsmvault.crypto.backup_stream import BackupKey
from hsmvault.crypto.key_wrap import unwrap_backup_key, wrap_backup_key
from hsmvault.errors import InvalidParameter, VerificationError

__all__ = ["PURPOSE_DEVICE_KEYSTORE", "DeviceKeystore"]

#: Key-wrap purpose of the device keystore (never opens a wrap made for another purpose).
PURPOSE_DEVICE_KEYSTORE: Final = b"device-keystore"
_CONTEXT: Final = b"hsmvault/device-keystore/v1"
_DEVICE_KEY_LEN: Final = 32
_PRIVATE_FILE: Final = 0o600
_PRIVATE_DIR: Final = 0o700


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically with mode 0600."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), _PRIVATE_FILE)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _read_private(path: Path) -> bytes:
    """Read ``path``, refusing a file that group or others may read or write."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if stat.S_IMODE(mode) & (stat.S_IRWXG | stat.S_IRWXO):
            raise VerificationError(f"{path.name} is accessible to group or others: refused")
        return f.read()


class DeviceKeystore:
    """BK on this device (see the module docstring). ``directory`` is created with
    mode 0700 on first :meth:`store`; ``device_key_path`` defaults to
    ``directory / "device.key"``."""

    __slots__ = ("_device_key_path", "_directory", "_wrapped_path")

    def __init__(self, directory: str | os.PathLike[str], *, device_key_path: Path | None = None):
        self._directory = Path(directory)
        self._device_key_path = (
            device_key_path if device_key_path is not None else self._directory / "device.key"
        )
        self._wrapped_path = self._directory / "backup-key.wrapped"

    def __repr__(self) -> str:
        return f"DeviceKeystore({str(self._directory)!r})"

    @property
    def path(self) -> Path:
        """The keystore directory."""
        return self._directory

    def exists(self) -> bool:
        """True if a backup key is stored."""
        return self._wrapped_path.exists()

    def _device_key(self, *, create: bool) -> bytes | None:
        if self._device_key_path.exists():
            key = _read_private(self._device_key_path)
            if len(key) != _DEVICE_KEY_LEN:
                raise VerificationError("the device key file is damaged")
            return key
        if not create:
            return None
        self._device_key_path.parent.mkdir(mode=_PRIVATE_DIR, parents=True, exist_ok=True)
        key = secrets.token_bytes(_DEVICE_KEY_LEN)
        _write_private(self._device_key_path, key)
        return key

    def store(self, backup_key: BackupKey) -> None:
        """Keep ``backup_key`` (replacing any stored one)."""
        if not isinstance(backup_key, BackupKey):
            raise InvalidParameter("backup_key must be a BackupKey")
        self._directory.mkdir(mode=_PRIVATE_DIR, parents=True, exist_ok=True)
        os.chmod(self._directory, _PRIVATE_DIR)
        device_key = self._device_key(create=True)
        assert device_key is not None
        wrapped = wrap_backup_key(
            device_key, backup_key, purpose=PURPOSE_DEVICE_KEYSTORE, context=_CONTEXT
        )
        _write_private(self._wrapped_path, wrapped)

    def load(self) -> BackupKey | None:
        """The stored backup key, or ``None`` if there is none. Raises
        :class:`VerificationError` if the files were changed, swapped or made readable
        to others, or the device key is missing."""
        if not self._wrapped_path.exists():
            return None
        wrapped = _read_private(self._wrapped_path)
        device_key = self._device_key(create=False)
        if device_key is None:
            raise VerificationError("the device key is missing: the stored key cannot be opened")
        return unwrap_backup_key(
            device_key, wrapped, purpose=PURPOSE_DEVICE_KEYSTORE, context=_CONTEXT
        )

    def clear(self) -> None:
        """Forget the stored backup key and the device key (files unlinked; a file
        system may keep old blocks — this is not secure erasure)."""
        for path in (self._wrapped_path, self._device_key_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
