"""Where the auditor reads an evidence folder from: a directory, or a published site
over HTTP(S) (``hsmvault audit evidence PATH_OR_URL``).

Both give the same view: :meth:`EvidenceSource.read` of a relative path, and
:meth:`EvidenceSource.listing` of the files that exist (a directory lists itself; a
web server cannot, so a published folder carries ``bundles/index.json`` for the files
that the manifest does not list). Paths are checked (:func:`folder.check_path`) before
any read, so a hostile manifest cannot read outside the folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

import httpx

from hsmvault.errors import Unavailable
from hsmvault.evidence.folder import BUNDLES_DIR, EvidenceFolderError, check_path

__all__ = [
    "BUNDLE_INDEX",
    "DirectorySource",
    "EvidenceSource",
    "HttpSource",
    "bundle_files",
    "open_source",
]

#: ``bundles/index.json``: ``{"files": ["bundles/<name>", ...]}`` (written by publish).
BUNDLE_INDEX: Final = f"{BUNDLES_DIR}/index.json"
_MAX_FILE: Final = 8 * 1024 * 1024


class EvidenceSource(Protocol):
    """Read-only access to one evidence folder."""

    @property
    def label(self) -> str:
        """Where it is (a path or a URL), for reports."""
        ...

    def read(self, path: str) -> bytes:
        """The bytes of ``path``; EvidenceFolderError if absent or unreadable."""
        ...

    def exists(self, path: str) -> bool: ...

    def listing(self) -> list[str] | None:
        """Every file of the folder (relative), or None if the source cannot list."""
        ...


@dataclass(frozen=True)
class DirectorySource:
    """An evidence folder on disk."""

    root: Path

    @property
    def label(self) -> str:
        return str(self.root)

    def _path(self, path: str) -> Path:
        return self.root / check_path(path)

    def read(self, path: str) -> bytes:
        target = self._path(path)
        if target.is_symlink():
            raise EvidenceFolderError(f"{path} is a symbolic link")
        try:
            data = target.read_bytes()
        except OSError:
            raise EvidenceFolderError(f"{path} is missing from the evidence folder") from None
        if len(data) > _MAX_FILE:
            raise EvidenceFolderError(f"{path} is too large")
        return data

    def exists(self, path: str) -> bool:
        return self._path(path).is_file()

    def listing(self) -> list[str] | None:
        if not self.root.is_dir():
            return []
        return sorted(
            p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file()
        )


@dataclass
class HttpSource:
    """A published evidence folder (``.../fleets/<id>/evidence/``) over HTTP(S)."""

    base_url: str
    timeout: float = 10.0
    transport: httpx.BaseTransport | None = None
    _cache: dict[str, bytes | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise EvidenceFolderError("an evidence URL is http(s)")
        if not self.base_url.endswith("/"):
            self.base_url += "/"

    @property
    def label(self) -> str:
        return self.base_url

    def _get(self, path: str) -> bytes | None:
        path = check_path(path)
        if path not in self._cache:
            try:
                with httpx.Client(
                    timeout=self.timeout, follow_redirects=False, transport=self.transport
                ) as client:
                    response = client.get(self.base_url + path)
            except httpx.HTTPError as exc:
                raise Unavailable(f"evidence site unreachable ({type(exc).__name__})") from None
            if response.status_code == 404:
                self._cache[path] = None
            elif response.status_code != 200:
                raise Unavailable(f"evidence site answered HTTP {response.status_code}")
            elif len(response.content) > _MAX_FILE:
                raise EvidenceFolderError(f"{path} is too large")
            else:
                self._cache[path] = response.content
        return self._cache[path]

    def read(self, path: str) -> bytes:
        data = self._get(path)
        if data is None:
            raise EvidenceFolderError(f"{path} is missing from the evidence folder")
        return data

    def exists(self, path: str) -> bool:
        return self._get(path) is not None

    def listing(self) -> list[str] | None:
        return None


def bundle_files(source: EvidenceSource) -> list[str]:
    """The saved bundle files of a folder (``bundles/*.bundle.json``), via its listing
    or ``bundles/index.json``."""
    listing = source.listing()
    if listing is not None:
        names = [p for p in listing if p.startswith(BUNDLES_DIR + "/")]
    elif source.exists(BUNDLE_INDEX):
        try:
            doc = json.loads(source.read(BUNDLE_INDEX))
        except ValueError:
            raise EvidenceFolderError("bundles/index.json is not JSON") from None
        files = doc.get("files") if isinstance(doc, dict) else None
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            raise EvidenceFolderError("bundles/index.json must list file names")
        names = [check_path(f) for f in files]
    else:
        names = []
    return sorted(n for n in names if n.endswith(".bundle.json"))


def open_source(path_or_url: str | Path) -> EvidenceSource:
    """A directory or an http(s) URL."""
    text = str(path_or_url)
    if text.startswith(("http://", "https://")):
        return HttpSource(text)
    return DirectorySource(Path(text).expanduser().resolve())
