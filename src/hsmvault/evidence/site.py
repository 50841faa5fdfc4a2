"""``hsmvault fleet publish``: the evidence as a folder of JSON files plus a static site.

:func:`publish_site` writes, under ``out``::

    index.html                      every published fleet, its regions and its verdict
    fleets.json                     {"version": 1, "fleets": [{"fleet_id", "verdict",
                                     "emulated", "nodes", "regions"}]}
    fleets/<fleet id>/index.html    the fleet's page: the audit report (HSMs, regions,
                                    attestations, measurement, ceremony timeline, bundle
                                    epochs, every check)
    fleets/<fleet id>/report.txt    the same report as text
    fleets/<fleet id>/evidence/     a copy of the evidence folder, with ``running/`` (the
                                    fleet's public member list now) and ``bundles/`` (what
                                    the witness logged, when a witness was given)

The verdict on each page is the audit of the *published copy* alone, so what a reader
sees is what ``hsmvault audit evidence <site>/fleets/<id>/evidence`` (or its URL)
re-checks. Nothing secret is in an evidence folder; the copy refuses symbolic links.
"""

from __future__ import annotations

import html
import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from hsmvault.evidence.attestation._canonical import canonical
from hsmvault.evidence.audit import AuditPolicy, AuditReport, audit_evidence
from hsmvault.evidence.folder import (
    BUNDLES_DIR,
    MANIFEST_FILE,
    RUNNING_FLEET_FILE,
    EvidenceFolderError,
    Manifest,
)
from hsmvault.evidence.report import page, render_html, render_text
from hsmvault.evidence.sources import BUNDLE_INDEX, DirectorySource

__all__ = ["SITE_INDEX", "PublishedFleet", "fleet_id_of", "publish_site"]

SITE_INDEX: Final = "fleets.json"


@dataclass(frozen=True)
class PublishedFleet:
    fleet_id: str
    directory: Path
    report: AuditReport


def fleet_id_of(evidence_dir: Path) -> str:
    """The fleet id (hex) an evidence folder's manifest names."""
    try:
        return Manifest.from_bytes((evidence_dir / MANIFEST_FILE).read_bytes()).fleet_id.hex()
    except OSError:
        raise EvidenceFolderError(f"no manifest in {evidence_dir}") from None


def _copy(evidence_dir: Path, dest: Path) -> None:
    for path in evidence_dir.rglob("*"):
        if path.is_symlink():
            raise EvidenceFolderError(f"refusing to publish a symbolic link: {path}")
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(evidence_dir, dest)


def _write_bundle_index(dest: Path) -> None:
    """``bundles/index.json`` lists the saved files (a web server cannot list them)."""
    directory = dest / BUNDLES_DIR
    directory.mkdir(exist_ok=True)
    names = sorted(
        p.relative_to(dest).as_posix() for p in directory.iterdir() if p.name != "index.json"
    )
    (dest / BUNDLE_INDEX).write_bytes(canonical({"files": names}))


def _index(out: Path, entries: list[dict[str, Any]]) -> None:
    rows = []
    for e in entries:
        emulated = " (EMULATED HARDWARE)" if e["emulated"] else ""
        rows.append(
            f'<tr class="fleet"><td><a href="fleets/{e["fleet_id"]}/index.html">'
            f"<code>{html.escape(e['fleet_id'])}</code></a></td>"
            f"<td>{len(e['nodes'])} HSMs</td><td>{html.escape(', '.join(e['regions']))}</td>"
            f'<td class="status-{"OK" if e["verdict"] == "VERIFIED" else "FAILED"}">'
            f"{html.escape(e['verdict'])}{emulated}</td></tr>"
        )
    body = (
        '<h1 id="title">hsmvault fleets: deployment evidence</h1>'
        "<p>Each fleet's page shows its HSMs, their regions and attestations, the measured"
        " code, the key ceremony and the witness-logged bundles, and the verdict of"
        " <code>hsmvault audit evidence</code> over the published files.</p>"
        '<table id="fleets"><tr><th>Fleet</th><th>HSMs</th><th>Regions</th>'
        "<th>Verdict</th></tr>" + "".join(rows) + "</table>"
    )
    (out / "index.html").write_text(page("hsmvault fleets", body), encoding="utf-8")


def publish_site(
    evidence_dirs: Sequence[Path],
    out: Path,
    *,
    running: Mapping[str, Path] | None = None,
    policy: AuditPolicy | None = None,
) -> list[PublishedFleet]:
    """Publish each evidence folder under ``out`` (module docstring). ``running`` maps a
    fleet id (hex) to that fleet's ``fleet.json``, copied as its running-fleet snapshot.
    The audit runs on the copy, with ``policy`` (its ``fleet_dir`` and ``witness_url``
    are ignored: the published files alone are audited)."""
    out.mkdir(parents=True, exist_ok=True)
    base = replace(policy or AuditPolicy(), fleet_dir=None, witness_url=None)
    published = []
    for evidence_dir in evidence_dirs:
        fleet_id = fleet_id_of(evidence_dir)
        directory = out / "fleets" / fleet_id
        dest = directory / "evidence"
        directory.mkdir(parents=True, exist_ok=True)
        _copy(evidence_dir, dest)
        snapshot = (running or {}).get(fleet_id)
        if snapshot is not None:
            (dest / RUNNING_FLEET_FILE).parent.mkdir(exist_ok=True)
            shutil.copyfile(snapshot, dest / RUNNING_FLEET_FILE)
        _write_bundle_index(dest)
        report = audit_evidence(DirectorySource(dest), base)
        report.source = f"published copy: fleets/{fleet_id}/evidence"
        nav = '<nav><a href="../../index.html">All fleets</a></nav>'
        (directory / "index.html").write_text(
            render_html(report, nav=nav, evidence_link="evidence/manifest.json"), encoding="utf-8"
        )
        (directory / "report.txt").write_text(render_text(report), encoding="utf-8")
        published.append(PublishedFleet(fleet_id, directory, report))
    entries: dict[str, dict[str, Any]] = {}
    index_path = out / SITE_INDEX
    if index_path.exists():
        try:
            for e in json.loads(index_path.read_text(encoding="utf-8"))["fleets"]:
                if (out / "fleets" / str(e["fleet_id"])).is_dir():
                    entries[str(e["fleet_id"])] = e
        except (ValueError, KeyError, TypeError):
            entries = {}
    for p in published:
        entries[p.fleet_id] = {
            "fleet_id": p.fleet_id,
            "verdict": p.report.verdict,
            "emulated": p.report.emulated,
            "nodes": [n.node_id for n in p.report.nodes],
            "regions": sorted({n.region for n in p.report.nodes}),
        }
    ordered = [entries[k] for k in sorted(entries)]
    index_path.write_bytes(canonical({"version": 1, "fleets": ordered}))
    _index(out, ordered)
    return published
