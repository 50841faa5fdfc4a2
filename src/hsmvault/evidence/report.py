"""The audit report a person reads: text (:func:`render_text`) and one static HTML page
(:func:`render_html`), from an :class:`~hsmvault.evidence.audit.AuditReport`.

Both show the verdict, one line per check (OK / FAILED / SKIPPED with every failure in
its own sentence), the HSMs (region, attestation format, EMULATED, key properties,
measurement), the witness epochs and the ceremony timeline. Emulated evidence puts
"EMULATED HARDWARE" in the title. The HTML page has no script and a strict CSP; every
value is escaped. :func:`report_json` is the machine form (``--json``).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any, Final

from hsmvault.evidence.attestation.base import EMULATED_WARNING
from hsmvault.evidence.audit import FAILED, OK, AuditReport

__all__ = ["STYLE", "page", "render_html", "render_text", "report_json"]

_MARK: Final = {OK: "OK", FAILED: "FAILED", "SKIPPED": "SKIPPED"}


def _yes(value: bool | None) -> str:
    return "—" if value is None else ("yes" if value else "NO")


def title_of(report: AuditReport) -> str:
    emulated = " — EMULATED HARDWARE" if report.emulated else ""
    return f"hsmvault deployment evidence: fleet {report.fleet_id[:16]}…{emulated}"


def render_text(report: AuditReport) -> str:
    """The plain-text report (what ``hsmvault audit evidence`` prints)."""
    out = [title_of(report), "=" * min(100, len(title_of(report))), ""]
    if report.emulated:
        out += [EMULATED_WARNING, ""]
    facts = [
        ("source", report.source),
        ("fleet", report.fleet_id),
        ("ceremony", report.ceremony_id),
        ("deployment", f"{report.deployment} ({report.custody} custody)"),
        ("evidence digest", report.evidence_digest),
        ("measurement", report.measurement),
        ("transcript head", report.transcript_head),
        ("officers", ", ".join(report.officers)),
        ("audited at", report.audited_at),
    ]
    out += [f"{k + ':':<17}{v}" for k, v in facts]
    failures = report.failures()
    verdict = report.verdict + (f" ({len(failures)} failure(s))" if failures else "")
    out += [f"{'verdict:':<17}{verdict}", "", "Checks"]
    for i, check in enumerate(report.checks, 1):
        out.append(f"  {i}. [{_MARK[check.status]:<7}] {check.title}")
        out += [f"       FAILED: {m}" for m in check.failures]
        out += [f"       {d}" for d in check.details]
    out += ["", "HSMs"]
    header = (
        "node", "region", "identity", "attestation", "emulated", "inside", "non-extr.",
        "measurement",
    )  # fmt: skip
    rows = [header] + [
        (
            f"node-{n.index}",
            n.region,
            n.node_id[:16] + "…",
            n.attestation_format or "NOT ATTESTED",
            "EMULATED" if n.emulated else "hardware",
            _yes(n.generated_inside),
            _yes(n.non_extractable),
            "OK" if n.measurement_ok else "MISMATCH",
        )
        for n in report.nodes
    ]
    out += _table(rows)
    if report.epochs:
        out += ["", "Witness-logged epochs"]
        out += [f"  epoch {e.epoch:<5} {e.status:<15} {e.detail}" for e in report.epochs]
    out += ["", "Ceremony timeline"]
    out += [
        f"  {t.seq:>3}  {t.time}  {t.kind:<21} {t.author:<40} {t.digest[:12]}…  {t.summary}"
        for t in report.timeline
    ]
    return "\n".join(out) + "\n"


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]


def report_json(report: AuditReport) -> dict[str, Any]:
    """The report as JSON-ready data."""
    return {
        "verdict": report.verdict,
        "ok": report.ok,
        "emulated": report.emulated,
        "source": report.source,
        "fleet_id": report.fleet_id,
        "ceremony_id": report.ceremony_id,
        "evidence_digest": report.evidence_digest,
        "measurement": report.measurement,
        "checks": [
            {
                "key": c.key,
                "title": c.title,
                "status": c.status,
                "failures": c.failures,
                "details": c.details,
            }
            for c in report.checks
        ],
        "nodes": [
            {
                "index": n.index,
                "region": n.region,
                "node_id": n.node_id,
                "custody": n.custody,
                "attestation_format": n.attestation_format,
                "emulated": n.emulated,
                "generated_inside": n.generated_inside,
                "non_extractable": n.non_extractable,
                "measurement_ok": n.measurement_ok,
            }
            for n in report.nodes
        ],
        "epochs": [
            {"epoch": e.epoch, "status": e.status, "detail": e.detail} for e in report.epochs
        ],
    }


# --------------------------------------------------------------------------- HTML

STYLE: Final = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:72rem;padding:0 1rem;color:#222}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem}
table{border-collapse:collapse;width:100%;font-size:.9rem}
th,td{border-bottom:1px solid #ddd;padding:.3rem .5rem;text-align:left;vertical-align:top}
code{font-size:.85rem;word-break:break-all}
.verdict{font-size:1.3rem;font-weight:bold;padding:.6rem 1rem;border-radius:.4rem}
.verdict.ok{background:#e3f6e3;color:#135213}.verdict.failed{background:#fde2e2;color:#8a1212}
.emulated{background:#fff3cd;color:#6b4e00;padding:.5rem 1rem;border-left:4px solid #e0a800}
.status-OK{color:#135213;font-weight:bold}.status-FAILED{color:#8a1212;font-weight:bold}
.status-SKIPPED{color:#6b4e00;font-weight:bold}.failure{color:#8a1212}
nav a{margin-right:1rem}
"""


def page(title: str, body: str) -> str:
    """A complete static page (no script, strict CSP)."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src 'none'\">"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n"
        f"<body>\n{body}\n</body></html>\n"
    )


def _e(value: object) -> str:
    return html.escape(str(value))


def render_html(report: AuditReport, *, nav: str = "", evidence_link: str | None = None) -> str:
    """The report as one static HTML page (``nav``: extra links at the top, trusted
    HTML built by the caller; ``evidence_link``: where the evidence files are)."""
    parts = [nav, f'<h1 id="title">{_e(title_of(report))}</h1>']
    if report.emulated:
        parts.append(f'<p class="emulated" id="emulated">{_e(EMULATED_WARNING)}</p>')
    cls = "ok" if report.ok else "failed"
    failures = report.failures()
    parts.append(
        f'<p><span class="verdict {cls}" id="verdict" data-verdict="{report.verdict}">'
        f"Verification verdict: {report.verdict}"
        + (f" — {len(failures)} failure(s)" if failures else "")
        + "</span></p>"
    )
    facts = [
        ("Fleet", report.fleet_id),
        ("Ceremony", report.ceremony_id),
        ("Deployment", f"{report.deployment} ({report.custody} custody)"),
        ("Evidence digest", report.evidence_digest),
        ("Measurement (reproducible build)", report.measurement),
        ("Transcript head", report.transcript_head),
        ("Officers", ", ".join(report.officers)),
        ("Audited at", report.audited_at),
        ("Source", report.source),
    ]
    parts.append('<table id="facts">')
    parts += [f"<tr><th>{_e(k)}</th><td><code>{_e(v)}</code></td></tr>" for k, v in facts]
    parts.append("</table>")
    if evidence_link:
        parts.append(f'<p><a href="{_e(evidence_link)}">Evidence files (manifest.json)</a></p>')
    parts.append(
        '<h2>HSMs</h2><table id="hsms"><thead><tr><th>Node</th><th>Region</th>'
        "<th>Identity (node id)</th><th>Attestation</th><th>Hardware</th>"
        "<th>Key generated inside</th><th>Non-extractable</th><th>Measurement</th>"
        "</tr></thead><tbody>"
    )
    for n in report.nodes:
        parts.append(
            f'<tr class="hsm" data-node="{n.index}"><td>node-{n.index}</td>'
            f'<td class="region">{_e(n.region)}</td><td><code>{_e(n.node_id)}</code></td>'
            f"<td>{_e(n.attestation_format or 'NOT ATTESTED')}<br><small>"
            f"{_e(' → '.join(n.chain))}</small></td>"
            f"<td>{'EMULATED' if n.emulated else 'hardware'}</td>"
            f"<td>{_yes(n.generated_inside)} <small>{_e(n.key_basis)}</small></td>"
            f"<td>{_yes(n.non_extractable)}</td>"
            f"<td>{'OK' if n.measurement_ok else 'MISMATCH'}</td></tr>"
        )
    parts.append("</tbody></table>")
    parts.append('<h2>Checks</h2><table id="checks">')
    for i, c in enumerate(report.checks, 1):
        lines = [f'<div class="failure">{_e(m)}</div>' for m in c.failures]
        lines += [f"<div>{_e(d)}</div>" for d in c.details]
        parts.append(
            f'<tr data-check="{c.key}"><td>{i}</td><td class="status-{c.status}">'
            f"{c.status}</td><td><strong>{_e(c.title)}</strong>{''.join(lines)}</td></tr>"
        )
    parts.append("</table>")
    parts.append("<h2>Witness-logged bundle epochs</h2>")
    if report.epochs:
        parts.append('<table id="epochs"><tr><th>Epoch</th><th>Status</th><th>Detail</th></tr>')
        parts += [
            f"<tr><td>{e.epoch}</td><td>{_e(e.status)}</td><td>{_e(e.detail)}</td></tr>"
            for e in report.epochs
        ]
        parts.append("</table>")
    else:
        parts.append('<p id="epochs">No witness-logged bundle was checked.</p>')
    parts.append(
        '<h2>Ceremony timeline</h2><table id="timeline"><tr><th>#</th><th>Time</th>'
        "<th>Step</th><th>Signed by</th><th>Statement SHA-256</th><th>What</th></tr>"
    )
    parts += [
        f"<tr><td>{t.seq}</td><td>{_e(t.time)}</td><td>{_e(t.kind)}</td><td>{_e(t.author)}</td>"
        f"<td><code>{_e(t.digest[:16])}…</code></td><td>{_e(t.summary)}</td></tr>"
        for t in report.timeline
    ]
    parts.append("</table>")
    return page(title_of(report), "\n".join(parts))
