"""The deployment-evidence commands (ADR 0012, ``docs/evidence.md``):

* ``hsmvault fleet deploy`` — form a fleet through the key ceremony (unattended for a
  local deployment; ``--interactive`` pauses for each officer's step) and check the
  evidence it wrote;
* ``hsmvault fleet publish`` — save what the witness logged for the fleet into its
  evidence folder and publish the evidence as JSON files plus a static site;
* ``hsmvault audit evidence PATH_OR_URL`` — verify a fleet's evidence link by link; a
  readable report (text, ``--html FILE``), exit status 0 only when every check holds.

:func:`register_fleet_commands` and :func:`register_audit_commands` add them to the
``fleet`` and ``audit`` groups of :mod:`hsmvault.cli.main`; each sub-parser sets
``handler=<callable(Context) -> int>``. :func:`audit_configured_evidence` is the evidence
half of a bare ``hsmvault audit``.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from hsmvault.cli.output import EXIT_ERROR, EXIT_OK, EXIT_USAGE, Output
from hsmvault.errors import InvalidParameter, VaultError

if TYPE_CHECKING:
    from hsmvault.cli.main import Context
    from hsmvault.client.bundle_verifier import PinnedWitnessKey
    from hsmvault.evidence.audit import AuditPolicy, AuditReport

__all__ = [
    "audit_configured_evidence",
    "audit_log_and_evidence",
    "cmd_audit_evidence",
    "cmd_fleet_deploy",
    "cmd_fleet_publish",
    "register_audit_commands",
    "register_fleet_commands",
]

_S: Final = argparse.SUPPRESS


def _opt(args: argparse.Namespace, name: str) -> Any:
    return getattr(args, name, None)


def _hex_key(text: str, what: str) -> bytes:
    try:
        raw = bytes.fromhex(text.strip())
    except ValueError:
        raise ValueError(f"{what} must be hex") from None
    if len(raw) != 32:
        raise ValueError(f"{what} must be 32 bytes (64 hex digits)")
    return raw


def _witness_keys(values: Sequence[str] | None) -> tuple[PinnedWitnessKey, ...]:
    from hsmvault.client.bundle_verifier import PinnedWitnessKey  # noqa: PLC0415

    out = []
    for value in values or ():
        key, _, not_before = value.partition("@")
        try:
            ms = int(not_before) if not_before else 0
        except ValueError:
            raise ValueError("--witness-key is HEX[@NOT_BEFORE_MS]") from None
        out.append(PinnedWitnessKey(_hex_key(key, "--witness-key"), ms))
    return tuple(out)


# --------------------------------------------------------------------------- parsers


def register_fleet_commands(
    fleet_subparsers: Any, parents: Sequence[argparse.ArgumentParser] = ()
) -> None:
    """Add ``deploy`` and ``publish`` to the ``fleet`` group."""
    deploy = fleet_subparsers.add_parser(
        "deploy",
        help="form a fleet through the attested key ceremony and write its evidence",
        description="Run the key ceremony (ADR 0012): every HSM makes its identity key"
        " inside its custody and attests it (emulated hardware for software and SoftHSM2"
        " nodes), the fleet keys are generated inside one attested HSM and sealed to the"
        " others, credentials are destroyed, and the signed transcript, attestations and"
        " measurement are written to <fleet dir>/evidence. Unattended by default;"
        " --interactive pauses before each officer's step.",
        parents=list(parents),
        conflict_handler="resolve",
    )
    deploy.add_argument("--fleet-dir", type=Path, default=None, help="default <data dir>/fleet")
    deploy.add_argument("--nodes", type=int, default=None, help="default: the configuration's")
    deploy.add_argument("--regions", default=None, help="comma-separated, e.g. eu-west,us-east")
    deploy.add_argument("--custody", choices=("software", "softhsm"), default=None)
    deploy.add_argument(
        "--base-port", type=int, default=None, help="0: free ports (default: the configuration's)"
    )
    deploy.add_argument("--deployment", default="local", help="deployment name (vendor root CN)")
    deploy.add_argument(
        "--officer",
        action="append",
        default=[],
        metavar="NAME=KEY.pem",
        help="a ceremony officer and its Ed25519 private key (PEM, `openssl genpkey"
        " -algorithm ed25519`); repeatable; default: one ephemeral local officer",
    )
    deploy.add_argument("--operator-key", default=_S, help="operator public key to record (hex)")
    deploy.add_argument("--namespace", default=_S, help="witness namespace to record")
    deploy.add_argument(
        "--interactive", action="store_true", help="pause for each officer's step (a real one)"
    )
    deploy.set_defaults(handler=cmd_fleet_deploy)

    publish = fleet_subparsers.add_parser(
        "publish",
        help="publish the deployment evidence as JSON files and a static site",
        description="Copy each fleet's evidence folder under OUT/fleets/<fleet id>/evidence"
        " with the running fleet's member list and (with --witness) every witness-logged"
        " bundle that lists the fleet, audit the copy, and write a static site: OUT/index.html"
        " and a page per fleet (HSMs, regions, attestations, measurement, ceremony timeline,"
        " bundle epochs, verdict). Exits non-zero if a published fleet fails its audit.",
        parents=list(parents),
        conflict_handler="resolve",
    )
    publish.add_argument(
        "--evidence",
        type=Path,
        action="append",
        default=[],
        help="an evidence folder (repeatable; default <data dir>/fleet/evidence)",
    )
    publish.add_argument("--out", type=Path, default=None, help="default <data dir>/evidence-site")
    publish.add_argument(
        "--witness",
        default=_S,
        help="witness URL to fetch the bundles from (default: the running deployment's)",
    )
    publish.add_argument(
        "--namespace",
        default=_S,
        help="default: the ceremony's, else the running deployment's (hsmvault/local)",
    )
    _trust_options(publish)
    publish.set_defaults(handler=cmd_fleet_publish)


def _trust_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--witness-key",
        action="append",
        default=_S,
        metavar="HEX[@MS]",
        help="pin a witness signing key (repeatable; default: the witness's published keys)",
    )
    p.add_argument("--operator-key", default=_S, help="pin the operator public key (hex)")
    p.add_argument(
        "--officer-key", action="append", default=[], help="pin a ceremony officer key (hex)"
    )
    p.add_argument(
        "--expect-measurement", default=None, help="the published reproducible build (hex)"
    )
    p.add_argument(
        "--require-token-keys",
        action="store_true",
        help="identity keys must be token keys (default: when the ceremony used softhsm)",
    )


def register_audit_commands(
    audit_subparsers: Any, parents: Sequence[argparse.ArgumentParser] = ()
) -> None:
    """Add ``evidence`` to the ``audit`` group."""
    evidence = audit_subparsers.add_parser(
        "evidence",
        help="verify a fleet's deployment evidence from a folder or URL",
        description="Verify the chain vendor root → device attestation → key attestations →"
        " measurement = the published reproducible build → fleet keys generated inside an"
        " attested HSM → the same keys in a witness-logged bundle → every transcript"
        " signature. PATH_OR_URL is an evidence folder, a published site (all its fleets),"
        " or their URL. Prints a report; exits 1 naming every broken link.",
        parents=list(parents),
        conflict_handler="resolve",
    )
    evidence.add_argument("path", metavar="PATH_OR_URL")
    evidence.add_argument("--html", type=Path, default=None, help="also write an HTML report")
    evidence.add_argument("--text", type=Path, default=None, help="also write the text report")
    evidence.add_argument("--witness", default=_S, help="fetch bundles live from this witness")
    evidence.add_argument("--namespace", default=_S, help="default: the ceremony's namespace")
    evidence.add_argument(
        "--rebuild",
        type=Path,
        default=None,
        metavar="SRC",
        help="measure this source tree (the directory holding hsmvault/) and compare",
    )
    evidence.add_argument(
        "--fleet-dir", type=Path, default=None, help="compare with this formed fleet directory"
    )
    evidence.add_argument(
        "--no-witness",
        action="store_true",
        help="do not fail when no witness-logged bundle is available (SKIPPED)",
    )
    _trust_options(evidence)
    evidence.set_defaults(handler=cmd_audit_evidence)


# --------------------------------------------------------------------------- policy


def _policy(args: argparse.Namespace, **overrides: Any) -> AuditPolicy:
    from hsmvault.evidence.audit import AuditPolicy  # noqa: PLC0415

    operator = _opt(args, "operator_key")
    measurement = _opt(args, "expect_measurement")
    values: dict[str, Any] = {
        "witness_keys": _witness_keys(_opt(args, "witness_key")),
        "operator_keys": () if not operator else (_hex_key(operator, "--operator-key"),),
        "officer_keys": tuple(
            _hex_key(k, "--officer-key") for k in _opt(args, "officer_key") or ()
        ),
        "expected_measurement": None
        if not measurement
        else _hex_key(measurement, "--expect-measurement"),
        "require_token_keys": True if _opt(args, "require_token_keys") else None,
        "namespace": _opt(args, "namespace"),
    }
    values.update(overrides)
    return AuditPolicy(**values)


def _print_report(ctx: Context, report: AuditReport) -> None:
    from hsmvault.evidence.report import render_text  # noqa: PLC0415

    if ctx.out.json_mode:
        return
    ctx.out.console.print(render_text(report), markup=False, highlight=False, end="")


# --------------------------------------------------------------------------- deploy


def _confirm(officer: str, step: str, what: str) -> None:
    """Pause for an officer: Enter signs, anything else aborts."""
    from hsmvault.evidence.ceremony import CeremonyError  # noqa: PLC0415

    print(f"\n[officer {officer}] step '{step}': {what}", file=sys.stderr)
    print("  press Enter to sign, or type 'abort' and Enter to stop: ", end="", file=sys.stderr)
    sys.stderr.flush()
    answer = sys.stdin.readline()
    if not answer or answer.strip():
        raise CeremonyError(f"ceremony aborted by officer {officer} at step '{step}'")


def cmd_fleet_deploy(ctx: Context) -> int:
    """``hsmvault fleet deploy``."""
    from hsmvault.evidence.audit import audit_evidence  # noqa: PLC0415
    from hsmvault.evidence.ceremony import CeremonyOptions, SoftwareOfficer  # noqa: PLC0415
    from hsmvault.evidence.sources import DirectorySource  # noqa: PLC0415
    from hsmvault.fleet.formation import form_fleet  # noqa: PLC0415

    args, config = ctx.args, ctx.config
    fleet_dir = args.fleet_dir or config.data_dir / "fleet"
    officers = []
    for spec in args.officer:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError("--officer is NAME=KEY.pem")
        officers.append(SoftwareOfficer.from_pem_file(name, Path(path)))
    operator = _opt(args, "operator_key")
    options = CeremonyOptions(
        deployment=args.deployment,
        officers=tuple(officers),
        operator_public_key=None if not operator else _hex_key(operator, "--operator-key"),
        namespace=_opt(args, "namespace"),
        confirm=_confirm if args.interactive else None,
    )
    regions = tuple(args.regions.split(",")) if args.regions else config.regions
    # 0 (flag or configuration): free loopback ports
    base_port = (args.base_port if args.base_port is not None else config.node_base_port) or None
    nodes = args.nodes or config.nodes
    custody = args.custody or config.custody
    if not ctx.out.json_mode:
        ctx.out.say(
            f"key ceremony: {nodes} HSMs ({custody} custody) in {', '.join(regions)} → {fleet_dir}"
        )
    layout = form_fleet(
        fleet_dir,
        nodes=nodes,
        regions=regions,
        custody=custody,
        base_port=base_port,
        ceremony=options,
    )
    report = audit_evidence(
        DirectorySource(layout.evidence_dir),
        _policy(args, fleet_dir=fleet_dir, require_witness=False),
    )
    summary = {
        "fleet_id": layout.fleet_id.hex(),
        "fleet_dir": str(fleet_dir),
        "evidence_dir": str(layout.evidence_dir),
        "evidence_digest": report.evidence_digest,
        "measurement": report.measurement,
        "emulated": report.emulated,
        "verdict": report.verdict,
        "failures": report.failures(),
        "nodes": [
            {"index": n.index, "region": n.region, "node_id": n.node_id} for n in report.nodes
        ],
    }
    if ctx.out.json_mode:
        ctx.out.data(summary)
    else:
        _print_report(ctx, report)
        ctx.out.say(
            f"fleet {layout.fleet_id.hex()} formed; evidence in {layout.evidence_dir}\n"
            f"evidence digest (goes into the fleet-key artifact): {report.evidence_digest}\n"
            "next: `hsmvault up` (publishes the keys to the witness), then"
            " `hsmvault fleet publish --witness URL`"
        )
    return EXIT_OK if report.ok else EXIT_ERROR


# --------------------------------------------------------------------------- publish


def cmd_fleet_publish(ctx: Context) -> int:
    """``hsmvault fleet publish``."""
    from hsmvault.cli.local_deployment import NAMESPACE, DataLayout, read_state  # noqa: PLC0415
    from hsmvault.evidence.bundles import fetch_bundles, save_bundles  # noqa: PLC0415
    from hsmvault.evidence.ceremony_format import Transcript  # noqa: PLC0415
    from hsmvault.evidence.folder import TRANSCRIPT_FILE  # noqa: PLC0415
    from hsmvault.evidence.site import fleet_id_of, publish_site  # noqa: PLC0415
    from hsmvault.fleet.formation import FLEET_FILE  # noqa: PLC0415
    from hsmvault.transparency.witness_client import WitnessClient  # noqa: PLC0415

    args, config = ctx.args, ctx.config
    data = DataLayout(config.data_dir)
    # Without --evidence: this deployment's fleet, and its running witness if any.
    state = {} if args.evidence else (read_state(data) or {})
    folders = [p.resolve() for p in args.evidence] or [data.fleet_dir / "evidence"]
    out = (args.out or config.data_dir / "evidence-site").resolve()
    witness = _opt(args, "witness") or state.get("witness_url")
    running: dict[str, Path] = {}
    for folder in folders:
        fleet_id = fleet_id_of(folder)
        fleet_file = folder.parent / FLEET_FILE
        if fleet_file.is_file():
            running[fleet_id] = fleet_file
        if witness is None:
            continue
        inputs = Transcript.from_bytes((folder / TRANSCRIPT_FILE).read_bytes()).entries[0]
        namespace = (
            _opt(args, "namespace")
            or inputs.statement.body.get("namespace")
            or state.get("namespace")
            or NAMESPACE
        )
        if not isinstance(namespace, str):
            raise InvalidParameter("the namespace must be a string: pass --namespace")
        with WitnessClient(witness) as client:
            bundles, info, ns = fetch_bundles(client, namespace, bytes.fromhex(fleet_id))
        save_bundles(folder, bundles, info, ns)
        if not ctx.out.json_mode:
            ctx.out.say(f"fleet {fleet_id[:16]}…: {len(bundles)} witness-logged epoch(s) saved")
    published = publish_site(folders, out, running=running, policy=_policy(args))
    if ctx.out.json_mode:
        ctx.out.data(
            {
                "site": str(out),
                "fleets": [
                    {
                        "fleet_id": p.fleet_id,
                        "page": str(p.directory / "index.html"),
                        "verdict": p.report.verdict,
                        "failures": p.report.failures(),
                    }
                    for p in published
                ],
            }
        )
    else:
        for p in published:
            ctx.out.say(
                f"fleet {p.fleet_id[:16]}… {p.report.verdict}: {p.directory / 'index.html'}"
            )
            for failure in p.report.failures():
                ctx.out.say(f"  FAILED {failure}")
        ctx.out.say(f"site: {out / 'index.html'}")
    return EXIT_OK if all(p.report.ok for p in published) else EXIT_ERROR


# --------------------------------------------------------------------------- audit


def _targets(path: str) -> list[str]:
    """The evidence folders (paths or URLs) a PATH_OR_URL names: itself, or every fleet of
    a published site (``fleets.json``)."""
    from hsmvault.evidence.folder import MANIFEST_FILE  # noqa: PLC0415
    from hsmvault.evidence.site import SITE_INDEX  # noqa: PLC0415
    from hsmvault.evidence.sources import HttpSource, open_source  # noqa: PLC0415

    source = open_source(path)
    if source.exists(MANIFEST_FILE):
        return [path]
    if not source.exists(SITE_INDEX):
        return [path]  # the audit reports the missing manifest
    try:
        doc = json.loads(source.read(SITE_INDEX))
        ids = [str(f["fleet_id"]) for f in doc["fleets"]]
    except (ValueError, KeyError, TypeError):
        raise InvalidParameter(f"{SITE_INDEX} of the site is malformed") from None
    if isinstance(source, HttpSource):
        return [f"{source.base_url}fleets/{i}/evidence/" for i in ids]
    return [str(Path(source.label) / "fleets" / i / "evidence") for i in ids]


def _run_audits(ctx: Context, targets: Sequence[str], policy: AuditPolicy) -> int:
    from hsmvault.evidence.audit import audit_evidence  # noqa: PLC0415
    from hsmvault.evidence.report import render_html, render_text, report_json  # noqa: PLC0415
    from hsmvault.evidence.sources import open_source  # noqa: PLC0415

    args = ctx.args
    reports = [audit_evidence(open_source(t), policy) for t in targets]
    html_path, text_path = _opt(args, "html"), _opt(args, "text")
    for i, report in enumerate(reports):
        suffix = "" if len(reports) == 1 else f".{report.fleet_id[:16]}"
        if html_path is not None:
            target = html_path.with_name(html_path.stem + suffix + html_path.suffix)
            target.write_text(render_html(report), encoding="utf-8")
        if text_path is not None:
            target = text_path.with_name(text_path.stem + suffix + text_path.suffix)
            target.write_text(render_text(report), encoding="utf-8")
        if i:
            ctx.out.say("")
        _print_report(ctx, report)
    if ctx.out.json_mode:
        ctx.out.data(
            {"ok": all(r.ok for r in reports), "reports": [report_json(r) for r in reports]}
        )
    else:
        for report in reports:
            if not report.ok:
                first = report.failures()[0]
                ctx.out.err.print(f"audit FAILED for {report.source}: {first}", markup=False)
    return EXIT_OK if all(r.ok for r in reports) else EXIT_ERROR


def cmd_audit_evidence(ctx: Context) -> int:
    """``hsmvault audit evidence PATH_OR_URL``."""
    args = ctx.args
    targets = _targets(args.path)
    if not targets:  # pragma: no cover - _targets returns at least the path
        return EXIT_USAGE
    policy = _policy(
        args,
        witness_url=_opt(args, "witness"),
        rebuild_source=args.rebuild,
        fleet_dir=args.fleet_dir,
        require_witness=not args.no_witness,
    )
    return _run_audits(ctx, targets, policy)


def audit_configured_evidence(ctx: Context) -> int:
    """The evidence half of a bare ``hsmvault audit``: the configured deployment's fleet
    (``<data dir>/fleet/evidence`` against ``<data dir>/fleet``), with the bundles of
    ``--witness`` or of the running ``hsmvault up``'s witness (namespace: ``--namespace``,
    the running deployment's, or the ceremony's), else those saved in the folder by
    ``hsmvault fleet publish``."""
    from hsmvault.cli.local_deployment import DataLayout, read_state  # noqa: PLC0415

    args = ctx.args
    data = DataLayout(ctx.config.data_dir)
    evidence = data.fleet_dir / "evidence"
    if not (evidence / "manifest.json").is_file():
        raise VaultError(
            f"no deployment evidence in {evidence}: form the fleet with `hsmvault up` or"
            " `hsmvault fleet deploy` first"
        )
    state = read_state(data) or {}
    url = _opt(args, "witness") or state.get("witness_url")
    namespace = _opt(args, "namespace") or state.get("namespace")
    policy = _policy(
        args,
        witness_url=str(url) if url else None,
        namespace=str(namespace) if namespace else None,
        fleet_dir=data.fleet_dir,
    )
    return _run_audits(ctx, [str(evidence)], policy)


def audit_log_and_evidence(ctx: Context, log_audit: Callable[[Context], int]) -> int:
    """A bare ``hsmvault audit``: the witness-log audit (``log_audit``, issue 5), then the
    evidence audit of the configured deployment; the first non-zero status wins."""
    if not ctx.out.json_mode:
        status = log_audit(ctx)
        ctx.out.say("")
        evidence_status = audit_configured_evidence(ctx)
        return status or evidence_status
    # --json: stdout stays ONE document, {"log": ..., "evidence": ...}.
    docs: dict[str, Any] = {}
    statuses: list[int] = []
    for name, run in (("log", log_audit), ("evidence", audit_configured_evidence)):
        buffer = io.StringIO()
        part = dataclasses.replace(
            ctx, out=Output(json_mode=True, stdout=buffer, console=ctx.out.console)
        )
        statuses.append(run(part))
        text = buffer.getvalue().strip()
        docs[name] = json.loads(text) if text else None
    status = next((s for s in statuses if s), EXIT_OK)
    ctx.out.data({**docs, "ok": status == EXIT_OK})
    return status
