"""The evidence commands through ``hsmvault.cli.main.main``: ``fleet deploy`` (unattended
and with officers pausing), ``fleet publish`` (witness bundles saved, static site), and
``audit evidence`` on a folder, a site, their URLs (a local HTTP server), with ``--html``,
``--json``, ``--rebuild``, and the non-zero exit naming the broken link; a bare
``hsmvault audit`` runs the log audit and the evidence audit."""

from __future__ import annotations

import io
import json
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hsmvault.cli.main import main
from hsmvault.evidence.folder import evidence_digest
from hsmvault.evidence.measurement import default_source_root
from hsmvault.fleet.formation import FleetLayout
from tests.evidence.evidence_kit import (
    NAMESPACE,
    LiveWitness,
    live_witness,
    operator_public,
    publish_and_save,
)

pytestmark = pytest.mark.timeout(240)


@dataclass
class Site:
    data: Path
    layout: FleetLayout
    witness: LiveWitness
    out: Path

    @property
    def evidence(self) -> Path:
        return self.out / "fleets" / self.layout.fleet_id.hex() / "evidence"


def _json(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    out = capsys.readouterr().out
    doc = json.loads(out)
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("cli-evidence")
    data = base / "data"
    code = main(
        [
            "fleet",
            "deploy",
            "--data-dir",
            str(data),
            "--nodes",
            "3",
            "--base-port",
            "0",
            "--namespace",
            NAMESPACE,
            "--operator-key",
            operator_public().hex(),
        ]
    )
    assert code == 0
    layout = FleetLayout.load(data / "fleet")
    with live_witness(base / "witness") as witness:
        # What the operator's publisher does at `hsmvault up`: log keys + evidence digest.
        publish_and_save(witness, layout.evidence_dir, layout.public_keys)
        out = base / "site"
        code = main(
            [
                "fleet",
                "publish",
                "--data-dir",
                str(data),
                "--witness",
                witness.url,
                "--out",
                str(out),
            ]
        )
        assert code == 0
        yield Site(data, layout, witness, out)


@pytest.fixture
def server(site: Site) -> Iterator[str]:
    handler = partial(SimpleHTTPRequestHandler, directory=str(site.out))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_deploy_json_reports_the_evidence_digest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "fleet",
            "deploy",
            "--data-dir",
            str(tmp_path),
            "--nodes",
            "3",
            "--base-port",
            "0",
            "--json",
        ]
    )
    assert code == 0
    doc = _json(capsys)
    assert doc["verdict"] == "VERIFIED"
    assert doc["emulated"] is True
    evidence = Path(str(doc["evidence_dir"]))
    assert doc["evidence_digest"] == evidence_digest(evidence).hex()
    assert len(doc["nodes"]) == 3


def test_publish_writes_the_site_and_saves_the_bundles(site: Site) -> None:
    fleet = site.layout.fleet_id.hex()
    assert (site.out / "index.html").is_file()
    assert fleet in (site.out / "index.html").read_text()
    page = (site.out / "fleets" / fleet / "index.html").read_text()
    assert 'data-verdict="VERIFIED"' in page
    assert (site.evidence / "bundles" / "epoch-1.bundle.json").is_file()
    assert (site.evidence / "running" / "fleet.json").is_file()
    assert (site.layout.evidence_dir / "bundles" / "witness.json").is_file()
    index = json.loads((site.out / "fleets.json").read_text())
    assert [f["verdict"] for f in index["fleets"]] == ["VERIFIED"]


def test_audit_evidence_folder_prints_the_report_and_writes_html(
    site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    html = tmp_path / "report.html"
    assert main(["audit", "evidence", str(site.evidence), "--html", str(html)]) == 0
    out = capsys.readouterr().out
    assert "verdict:         VERIFIED" in out
    assert "EMULATED HARDWARE" in out
    assert 'data-verdict="VERIFIED"' in html.read_text()


def test_audit_the_whole_site_and_its_url(
    site: Site, server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", "evidence", str(site.out), "--json"]) == 0
    assert _json(capsys)["ok"] is True
    fleet = site.layout.fleet_id.hex()
    assert main(["audit", "evidence", f"{server}fleets/{fleet}/evidence/", "--json"]) == 0
    doc = _json(capsys)
    assert doc["ok"] is True
    assert main(["audit", "evidence", server, "--json"]) == 0
    assert len(_json(capsys)["reports"]) == 1


def test_audit_exits_non_zero_naming_the_broken_link(
    site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = Path(shutil.copytree(site.evidence, tmp_path / "evidence"))
    snapshot = copy / "running" / "fleet.json"
    doc = json.loads(snapshot.read_text())
    doc["members"][2]["identity_public_key"] = doc["members"][0]["identity_public_key"]
    snapshot.write_text(json.dumps(doc))
    assert main(["audit", "evidence", str(copy)]) == 1
    captured = capsys.readouterr()
    assert "audit FAILED" in captured.err
    assert "running:" in captured.err
    assert main(["audit", "evidence", str(tmp_path / "nowhere")]) == 1
    assert "no valid manifest" in capsys.readouterr().err


def test_audit_rebuild_of_another_tree_is_a_wrong_measurement(
    site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = tmp_path / "src"
    shutil.copytree(
        default_source_root() / "hsmvault",
        tree / "hsmvault",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    (tree / "hsmvault" / "errors.py").write_text(
        (tree / "hsmvault" / "errors.py").read_text() + "\n# changed\n"
    )
    assert main(["audit", "evidence", str(site.evidence), "--rebuild", str(tree), "--json"]) == 1
    doc = _json(capsys)
    (report,) = doc["reports"]
    failures = [f for c in report["checks"] for f in c["failures"]]
    assert len(failures) == 1
    assert failures[0].startswith("wrong measurement: the rebuilt measurement")


def test_bare_audit_runs_the_log_and_the_evidence_audits(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "audit",
            "--data-dir",
            str(site.data),
            "--witness",
            site.witness.url,
            "--namespace",
            NAMESPACE,
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "verdict:         VERIFIED" in out


def _officer_key(path: Path) -> Path:
    key = Ed25519PrivateKey.generate()
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def test_interactive_deploy_pauses_for_each_officer_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    key = _officer_key(tmp_path / "alice.pem")
    args = ["fleet", "deploy", "--nodes", "3", "--base-port", "0", "--interactive"]
    args += ["--officer", f"alice={key}", "--json"]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n" * 5))
    assert main([*args, "--data-dir", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert err.count("[officer alice]") == 5
    monkeypatch.setattr("sys.stdin", io.StringIO("\n\nabort\n"))
    assert main([*args, "--data-dir", str(tmp_path / "b")]) == 1
    assert "aborted by officer alice at step 'membership'" in capsys.readouterr().out
    assert not (tmp_path / "b" / "fleet" / "fleet.json").exists()
