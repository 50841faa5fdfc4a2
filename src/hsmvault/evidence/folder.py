"""The evidence folder of one fleet and its manifest (ADR 0012).

Layout (every path relative to the folder; ``/`` separated)::

    manifest.json                 canonical JSON: {"version": 1, "fleet_id", "ceremony_id",
                                  "transcript_head", "files": {path: sha256 hex}}
    transcript.json               the ceremony transcript (``evidence.ceremony_format``)
    roots/<sha256 of DER>.pem     every vendor root the attestations chain to
    attestations/<node id>.json   each node's attestation document, byte for byte
    measurement/build.json        the reproducible build the nodes must run
    fleet/fleet-public-keys.json  the fleet's public keys (``FleetPublicKeys``)
    fleet/members.json            the members as formed (identity and link keys)
    README.txt                    a generated summary; its first line says EMULATED
    bundles/                      NOT in the manifest: witness-logged bundles saved by
                                  ``hsmvault fleet publish`` (they come later)
    running/                      NOT in the manifest: the running fleet's public member
                                  list at publication (``fleet.json``)

The manifest covers every file except itself and what lies under ``bundles/`` and
``running/``. :func:`evidence_digest` — what the operator's publisher puts into the
fleet-key artifact's ``FleetEntry.evidence_digest`` — is the SHA-256 of the manifest's
bytes, so the witness log pins every file of the ceremony's evidence.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from hsmvault.errors import DecodeError, InvalidParameter, VaultError
from hsmvault.evidence.attestation._canonical import canonical, parse_canonical

__all__ = [
    "ATTESTATIONS_DIR",
    "BUILD_FILE",
    "BUNDLES_DIR",
    "MANIFEST_FILE",
    "MANIFEST_VERSION",
    "MEMBERS_FILE",
    "PUBLIC_KEYS_FILE",
    "README_FILE",
    "ROOTS_DIR",
    "RUNNING_DIR",
    "RUNNING_FLEET_FILE",
    "TRANSCRIPT_FILE",
    "UNMANIFESTED_DIRS",
    "EvidenceFolderError",
    "Manifest",
    "attestation_path",
    "evidence_digest",
    "is_manifested",
    "root_path",
    "write_manifest",
]

MANIFEST_FILE: Final = "manifest.json"
MANIFEST_VERSION: Final = 1
TRANSCRIPT_FILE: Final = "transcript.json"
ROOTS_DIR: Final = "roots"
ATTESTATIONS_DIR: Final = "attestations"
BUILD_FILE: Final = "measurement/build.json"
PUBLIC_KEYS_FILE: Final = "fleet/fleet-public-keys.json"
MEMBERS_FILE: Final = "fleet/members.json"
README_FILE: Final = "README.txt"
BUNDLES_DIR: Final = "bundles"
RUNNING_DIR: Final = "running"
RUNNING_FLEET_FILE: Final = "running/fleet.json"
#: Directories whose files come after the ceremony and are not in the manifest.
UNMANIFESTED_DIRS: Final = (BUNDLES_DIR, RUNNING_DIR)
_MAX_MANIFEST: Final = 1 << 20
_MAX_FILES: Final = 1024
_PATH = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}(?:/[A-Za-z0-9][A-Za-z0-9._-]{0,127}){0,3}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


class EvidenceFolderError(VaultError):
    """The evidence folder or its manifest is malformed or incomplete."""


def attestation_path(node_id: bytes) -> str:
    return f"{ATTESTATIONS_DIR}/{node_id.hex()}.json"


def root_path(certificate_sha256: str) -> str:
    return f"{ROOTS_DIR}/{certificate_sha256}.pem"


def is_manifested(path: str) -> bool:
    """Whether a relative path must be listed in the manifest."""
    return path != MANIFEST_FILE and path.split("/", 1)[0] not in UNMANIFESTED_DIRS


def check_path(path: str) -> str:
    """A safe relative path (plain names, at most 4 levels, no ``..``)."""
    if not isinstance(path, str) or not _PATH.fullmatch(path) or ".." in path.split("/"):
        raise EvidenceFolderError(f"not a valid evidence path: {path!r}")
    return path


@dataclass(frozen=True)
class Manifest:
    """The parsed manifest: which ceremony, and the SHA-256 of every covered file."""

    fleet_id: bytes
    ceremony_id: bytes
    transcript_head: str
    files: Mapping[str, str]

    def to_bytes(self) -> bytes:
        return canonical(
            {
                "version": MANIFEST_VERSION,
                "fleet_id": self.fleet_id.hex(),
                "ceremony_id": self.ceremony_id.hex(),
                "transcript_head": self.transcript_head,
                "files": dict(sorted(self.files.items())),
            }
        )

    def digest(self) -> bytes:
        """The evidence digest: SHA-256 of the manifest bytes."""
        return hashlib.sha256(self.to_bytes()).digest()

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        """Strict parse (EvidenceFolderError): canonical JSON, exact keys, safe paths."""
        if not isinstance(data, bytes) or not 0 < len(data) <= _MAX_MANIFEST:
            raise EvidenceFolderError("manifest is empty or too large")
        try:
            obj = parse_canonical(data)
        except DecodeError:
            raise EvidenceFolderError("manifest is not canonical JSON") from None
        keys = {"version", "fleet_id", "ceremony_id", "transcript_head", "files"}
        if set(obj) != keys or obj["version"] != MANIFEST_VERSION:
            raise EvidenceFolderError("manifest has unknown fields or version")
        for key in ("fleet_id", "ceremony_id", "transcript_head"):
            if not isinstance(obj[key], str) or not _HEX64.fullmatch(obj[key]):
                raise EvidenceFolderError(f"manifest: {key} must be 64 lowercase hex")
        files = obj["files"]
        if not isinstance(files, dict) or not 0 < len(files) <= _MAX_FILES:
            raise EvidenceFolderError("manifest lists no files, or too many")
        for path, digest in files.items():
            if not is_manifested(check_path(path)):
                raise EvidenceFolderError(f"manifest lists a file it may not cover: {path}")
            if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
                raise EvidenceFolderError(f"manifest: the hash of {path} is not SHA-256 hex")
        return cls(
            bytes.fromhex(obj["fleet_id"]),
            bytes.fromhex(obj["ceremony_id"]),
            obj["transcript_head"],
            dict(files),
        )


def _covered_files(folder: Path) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            raise EvidenceFolderError(f"symbolic link in the evidence folder: {path.name}")
        if not path.is_file():
            continue
        rel = path.relative_to(folder).as_posix()
        if is_manifested(rel):
            out[check_path(rel)] = path.read_bytes()
    return out


def write_manifest(
    folder: Path, *, fleet_id: bytes, ceremony_id: bytes, transcript_head: str
) -> Manifest:
    """Hash every covered file of ``folder`` into ``manifest.json`` (replacing it)."""
    if len(fleet_id) != 32 or len(ceremony_id) != 32 or not _HEX64.fullmatch(transcript_head):
        raise InvalidParameter("fleet id, ceremony id and head are 32 bytes / 64 hex")
    files = {rel: hashlib.sha256(data).hexdigest() for rel, data in _covered_files(folder).items()}
    manifest = Manifest(fleet_id, ceremony_id, transcript_head, files)
    tmp = folder / (MANIFEST_FILE + ".tmp")
    tmp.write_bytes(manifest.to_bytes())
    os.replace(tmp, folder / MANIFEST_FILE)
    return manifest


def evidence_digest(folder: str | os.PathLike[str]) -> bytes:
    """The 32-byte evidence digest of the evidence folder ``folder``: SHA-256 of its
    ``manifest.json`` bytes (checked to be a well-formed manifest first). This is what
    goes into ``FleetEntry.evidence_digest`` of the fleet-key artifact (ADR 0010).
    Raises EvidenceFolderError if the manifest is missing or malformed."""
    path = Path(folder) / MANIFEST_FILE
    try:
        data = path.read_bytes()
    except OSError:
        raise EvidenceFolderError(f"no manifest in {folder}") from None
    Manifest.from_bytes(data)
    return hashlib.sha256(data).digest()
