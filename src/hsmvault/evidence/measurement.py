"""The measurement of the HSM application: SHA-256 of its reproducible build.

The **HSM application** is the code that runs inside a node's trust boundary: the node
process (``hsmvault.hsm.node_process``) and everything it imports of ours. Its
**reproducible build** is one uncompressed POSIX ustar archive holding exactly those
sources plus a manifest of the third-party distributions that run with them; its
**measurement** is the SHA-256 of the archive's bytes. The same sources and
dependency versions give the same bytes — and so the same digest — on any machine,
whatever the checkout's file times, permissions, owner, umask or directory order:

* members are sorted by name (bytewise; names are ASCII, relative to ``src/``);
* every member is a regular file with mtime 1980-01-01T00:00:00Z (315532800, the
  SOURCE_DATE_EPOCH convention's floor that zip also uses), mode 0644, uid/gid 0,
  empty owner and group names; there are no directory entries;
* no compression (a compressor's output may change between versions);
* sources are taken byte for byte. A file with a carriage return (CRLF checkout) or
  that is not UTF-8 is **refused**, never rewritten: a silent normalisation would make
  two different trees measure the same, or one tree measure differently by platform.

What is measured (:data:`MEASURED_SOURCES`, one place):

* ``hsmvault/__init__.py`` and the leaf modules the node imports (``errors``,
  ``closing``, ``durable_files``, ``pkcs11_tokens``);
* the packages ``hsmvault/crypto``, ``hsmvault/wire``, ``hsmvault/hsm`` and
  ``hsmvault/fleet`` (the node runs the vault state machine, key custody, NVRAM,
  the wire door, and the Raft replication among HSMs);
* the few ``hsmvault/evidence`` modules a node runs itself during the deployment
  ceremony: this module (a software node reports its own measurement) and the
  software-vendor attestation statement with what it imports
  (``attestation/__init__``, ``base``, ``_canonical``, ``_x509``, ``software_vendor``),
  and the ceremony's statement format (``ceremony_format``).

Inside a package every ``*.py`` file is measured; ``__pycache__`` directories are
skipped, and any other file (a data file, an editor's swap file, a symlink) is refused
so that nothing next to the code can change behaviour unmeasured. The manifest member
``hsmvault-measurement.txt`` names the format and, one ``name==version`` a line, the
installed versions of :data:`MEASURED_DISTRIBUTIONS` (read through
``importlib.metadata``). A test checks that the node process's import closure lies
within the measured set.

Run ``python -m hsmvault.evidence.measurement --archive hsm-app.tar`` to rebuild it;
``docs/reproducible-build.md`` says how to check a published digest and what the
digest does not prove.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import importlib.metadata
import io
import os
import stat
import sys
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hsmvault.errors import VaultError

__all__ = [
    "ARCHIVE_MODE",
    "ARCHIVE_MTIME",
    "MANIFEST_NAME",
    "MEASURED_DISTRIBUTIONS",
    "MEASURED_SOURCES",
    "Measurement",
    "MeasurementError",
    "build_archive",
    "build_archive_bytes",
    "default_source_root",
    "installed_dependencies",
    "main",
    "measure",
]

#: The sources that run inside the HSM, relative to ``src/``: a path ending in ``.py``
#: is one file, any other path a package measured recursively (see the module docstring).
MEASURED_SOURCES: tuple[str, ...] = (
    "hsmvault/__init__.py",
    "hsmvault/errors.py",
    "hsmvault/closing.py",
    "hsmvault/durable_files.py",
    "hsmvault/pkcs11_tokens.py",
    "hsmvault/crypto",
    "hsmvault/wire",
    "hsmvault/hsm",
    "hsmvault/fleet",
    "hsmvault/evidence/__init__.py",
    "hsmvault/evidence/measurement.py",
    "hsmvault/evidence/attestation/__init__.py",
    "hsmvault/evidence/attestation/_canonical.py",
    "hsmvault/evidence/attestation/_x509.py",
    "hsmvault/evidence/attestation/base.py",
    "hsmvault/evidence/attestation/software_vendor.py",
    "hsmvault/evidence/ceremony_format.py",
)
#: Third-party distributions that run inside the HSM; their installed versions are
#: part of the measurement.
MEASURED_DISTRIBUTIONS: tuple[str, ...] = (
    "cryptography",
    "pysodium",
    "pysyncobj",
    "python-pkcs11",
)
#: Every member's mtime: 1980-01-01T00:00:00Z.
ARCHIVE_MTIME = 315532800
ARCHIVE_MODE = 0o644
MANIFEST_NAME = "hsmvault-measurement.txt"
_FORMAT_LINE = "hsmvault HSM application measurement v1"
_SKIPPED_DIRS = frozenset({"__pycache__"})


class MeasurementError(VaultError):
    """The tree cannot be measured as it is: a measured file is missing, not a regular
    file, not UTF-8, has CRLF line endings, or an unexpected file sits in a measured
    package; or a measured distribution is not installed."""


@dataclass(frozen=True)
class Measurement:
    """The result of a build: the archive's SHA-256 (lowercase hex), its member names
    in archive order, its size in bytes, and the dependency versions it records."""

    sha256: str
    files: tuple[str, ...]
    size: int
    dependencies: tuple[tuple[str, str], ...]

    @property
    def digest(self) -> bytes:
        """The 32-byte measurement (what attestation statements carry)."""
        return bytes.fromhex(self.sha256)


def default_source_root() -> Path:
    """The directory that holds the running ``hsmvault`` package (``src/`` of a
    checkout installed in editable mode)."""
    import hsmvault  # noqa: PLC0415 - the package that contains this module

    return Path(hsmvault.__file__).resolve().parent.parent


def installed_dependencies() -> dict[str, str]:
    """The installed version of every :data:`MEASURED_DISTRIBUTIONS` entry."""
    versions: dict[str, str] = {}
    for name in MEASURED_DISTRIBUTIONS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            raise MeasurementError(f"measured distribution {name} is not installed") from None
    return versions


def _list_dir(path: str) -> list[str]:
    """The names in a directory, in whatever order the OS gives (sorted later)."""
    return os.listdir(path)


def _read_source(path: str, name: str) -> bytes:
    info = os.lstat(path)
    if not stat.S_ISREG(info.st_mode):
        raise MeasurementError(f"{name} is not a regular file")
    with open(path, "rb") as handle:
        data = handle.read()
    if b"\r" in data:
        raise MeasurementError(f"{name} has a carriage return (CRLF line endings?)")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise MeasurementError(f"{name} is not UTF-8") from None
    return data


def _walk_package(root: Path, package: str, out: dict[str, bytes]) -> None:
    directory = os.path.join(root, package)
    info = os.lstat(directory) if os.path.lexists(directory) else None
    if info is None or not stat.S_ISDIR(info.st_mode):
        raise MeasurementError(f"measured package {package} is missing")
    for entry in _list_dir(directory):
        name = f"{package}/{entry}"
        path = os.path.join(directory, entry)
        mode = os.lstat(path).st_mode
        if stat.S_ISDIR(mode):
            if entry not in _SKIPPED_DIRS:
                _walk_package(root, name, out)
        elif stat.S_ISREG(mode) and entry.endswith(".py"):
            out[name] = _read_source(path, name)
        else:
            raise MeasurementError(f"unexpected file in a measured package: {name}")


def _collect(root: Path) -> dict[str, bytes]:
    sources: dict[str, bytes] = {}
    for entry in MEASURED_SOURCES:
        if entry.endswith(".py"):
            path = os.path.join(root, entry)
            if not os.path.lexists(path):
                raise MeasurementError(f"measured file {entry} is missing")
            sources[entry] = _read_source(path, entry)
        else:
            _walk_package(root, entry, sources)
    for name in sources:
        if not name.isascii():
            raise MeasurementError(f"measured file name is not ASCII: {name!r}")
    return sources


def _manifest(dependencies: Mapping[str, str]) -> bytes:
    if set(dependencies) != set(MEASURED_DISTRIBUTIONS):
        raise MeasurementError("dependency versions must name exactly the measured ones")
    lines = [_FORMAT_LINE]
    for name in sorted(dependencies):
        version = dependencies[name]
        if not version or not version.isascii() or any(c.isspace() for c in version):
            raise MeasurementError(f"invalid version for {name}")
        lines.append(f"{name}=={version}")
    return ("\n".join(lines) + "\n").encode("ascii")


def build_archive_bytes(
    source_root: Path | None = None, dependencies: Mapping[str, str] | None = None
) -> tuple[bytes, Measurement]:
    """Build the archive in memory; returns its bytes and its :class:`Measurement`.
    ``source_root`` defaults to :func:`default_source_root`, ``dependencies`` to
    :func:`installed_dependencies`. Raises MeasurementError (module docstring)."""
    root = default_source_root() if source_root is None else Path(source_root)
    versions = installed_dependencies() if dependencies is None else dict(dependencies)
    members = _collect(root)
    members[MANIFEST_NAME] = _manifest(versions)
    names = sorted(members, key=lambda n: n.encode("ascii"))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name in names:
            data = members[name]
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = ARCHIVE_MTIME
            info.mode = ARCHIVE_MODE
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.type = tarfile.REGTYPE
            archive.addfile(info, io.BytesIO(data))
    data = buffer.getvalue()
    measurement = Measurement(
        sha256=hashlib.sha256(data).hexdigest(),
        files=tuple(names),
        size=len(data),
        dependencies=tuple(sorted(versions.items())),
    )
    return data, measurement


def measure(
    source_root: Path | None = None, dependencies: Mapping[str, str] | None = None
) -> Measurement:
    """The measurement of the HSM application in ``source_root`` (see
    :func:`build_archive_bytes`)."""
    return build_archive_bytes(source_root, dependencies)[1]


def build_archive(
    out_path: Path,
    source_root: Path | None = None,
    dependencies: Mapping[str, str] | None = None,
) -> Measurement:
    """Write the archive to ``out_path`` (replacing it) and return its measurement:
    ``sha256sum out_path`` prints the same digest."""
    data, measurement = build_archive_bytes(source_root, dependencies)
    Path(out_path).write_bytes(data)
    return measurement


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hsmvault.evidence.measurement [--archive PATH] [--source-root DIR]
    [--expect HEX] [--list]``: print the measurement (``<sha256>  <size> bytes, <n>
    files``); with ``--expect``, exit 1 unless it equals HEX."""
    parser = argparse.ArgumentParser(
        prog="python -m hsmvault.evidence.measurement",
        description="Rebuild the HSM application archive and print its SHA-256.",
    )
    parser.add_argument("--archive", type=Path, help="also write the archive here")
    parser.add_argument("--source-root", type=Path, help="directory holding hsmvault/")
    parser.add_argument("--expect", help="the published measurement (64 hex)")
    parser.add_argument("--list", action="store_true", help="list the archive's members")
    args = parser.parse_args(argv)
    try:
        if args.archive is not None:
            result = build_archive(args.archive, args.source_root)
        else:
            result = measure(args.source_root)
    except MeasurementError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.list:
        for name in result.files:
            print(name)
    print(f"{result.sha256}  {result.size} bytes, {len(result.files)} files")
    for name, version in result.dependencies:
        print(f"  {name}=={version}")
    if args.expect is not None:
        if not hmac.compare_digest(args.expect.strip().lower(), result.sha256):
            print("MISMATCH: the rebuilt measurement differs from the expected one")
            return 1
        print("OK: the rebuilt measurement equals the expected one")
    return 0


if __name__ == "__main__":
    sys.exit(main())
