"""The evidence folder's manifest and the sources the auditor reads it from: strict
parsing at the trust boundary (paths, hashes, canonical JSON), the evidence digest, and
the same view of a folder on disk and over HTTP."""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hsmvault.evidence.attestation._canonical import canonical
from hsmvault.evidence.folder import (
    EvidenceFolderError,
    Manifest,
    check_path,
    evidence_digest,
    write_manifest,
)
from hsmvault.evidence.sources import BUNDLE_INDEX, DirectorySource, HttpSource, bundle_files

H = "ab" * 32


def _manifest(files: dict[str, str]) -> bytes:
    return canonical(
        {"version": 1, "fleet_id": H, "ceremony_id": H, "transcript_head": H, "files": files}
    )


def test_write_manifest_covers_files_except_bundles_and_running(tmp_path: Path) -> None:
    (tmp_path / "fleet").mkdir()
    (tmp_path / "fleet" / "a.json").write_text("{}")
    (tmp_path / "bundles").mkdir()
    (tmp_path / "bundles" / "epoch-1.bundle.json").write_text("{}")
    (tmp_path / "running").mkdir()
    (tmp_path / "running" / "fleet.json").write_text("{}")
    manifest = write_manifest(
        tmp_path, fleet_id=bytes(32), ceremony_id=bytes(32), transcript_head="00" * 32
    )
    assert dict(manifest.files) == {"fleet/a.json": hashlib.sha256(b"{}").hexdigest()}
    data = (tmp_path / "manifest.json").read_bytes()
    assert Manifest.from_bytes(data) == manifest
    assert evidence_digest(tmp_path) == hashlib.sha256(data).digest() == manifest.digest()


@pytest.mark.parametrize(
    "path",
    ["../x.json", "/etc/passwd", "a/../../b", "bundles/epoch-1.bundle.json", "running/fleet.json",
     "manifest.json", "a//b", ".hidden", "a/b/c/d/e"],
)  # fmt: skip
def test_manifest_refuses_paths_it_may_not_cover(path: str) -> None:
    with pytest.raises(EvidenceFolderError):
        Manifest.from_bytes(_manifest({path: H}))


def test_manifest_refuses_bad_hashes_keys_and_encodings() -> None:
    with pytest.raises(EvidenceFolderError, match="SHA-256"):
        Manifest.from_bytes(_manifest({"a.json": "AB" * 32}))
    with pytest.raises(EvidenceFolderError, match="no files"):
        Manifest.from_bytes(_manifest({}))
    good = _manifest({"a.json": H})
    with pytest.raises(EvidenceFolderError, match="canonical"):
        Manifest.from_bytes(good.replace(b":", b": ", 1))
    obj = json.loads(good)
    obj["extra"] = 1
    with pytest.raises(EvidenceFolderError, match="unknown fields"):
        Manifest.from_bytes(canonical(obj))
    with pytest.raises(EvidenceFolderError, match="no manifest"):
        evidence_digest(Path("/nonexistent"))


@given(st.binary(max_size=300))
def test_manifest_parser_raises_only_its_own_error(data: bytes) -> None:
    with contextlib.suppress(EvidenceFolderError):
        Manifest.from_bytes(data)


def test_check_path_allows_evidence_names() -> None:
    assert check_path("attestations/" + H + ".json") == "attestations/" + H + ".json"
    assert check_path("README.txt") == "README.txt"


def test_directory_source_refuses_symlinks_and_escapes(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("x")
    folder = tmp_path / "evidence"
    folder.mkdir()
    (folder / "link.json").symlink_to(tmp_path / "secret")
    source = DirectorySource(folder)
    with pytest.raises(EvidenceFolderError, match="symbolic link"):
        source.read("link.json")
    with pytest.raises(EvidenceFolderError):
        source.read("../secret")
    with pytest.raises(EvidenceFolderError, match="missing"):
        source.read("absent.json")


def test_http_source_reads_listed_bundles_only(tmp_path: Path) -> None:
    files = {
        "/e/manifest.json": b"{}",
        "/e/" + BUNDLE_INDEX: canonical({"files": ["bundles/epoch-3.bundle.json"]}),
        "/e/bundles/epoch-3.bundle.json": b"bundle",
    }

    def handler(request: httpx.Request) -> httpx.Response:
        body = files.get(request.url.path)
        return httpx.Response(404) if body is None else httpx.Response(200, content=body)

    source = HttpSource("http://127.0.0.1:9/e", transport=httpx.MockTransport(handler))
    assert source.exists("manifest.json")
    assert not source.exists("transcript.json")
    assert source.listing() is None
    assert bundle_files(source) == ["bundles/epoch-3.bundle.json"]
    with pytest.raises(EvidenceFolderError):
        source.read("../x")
