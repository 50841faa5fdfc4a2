"""``hsmvault up``: run :class:`~hsmvault.cli.local_deployment.LocalDeployment` in the
foreground, print what it serves, stop it cleanly on Ctrl-C or SIGTERM."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from hsmvault.cli.config import DeploymentConfig
from hsmvault.cli.dev_tokens import ISSUER_DIR
from hsmvault.cli.local_deployment import DeploymentError, LocalDeployment
from hsmvault.cli.output import EXIT_ERROR, EXIT_OK, Output

__all__ = ["print_ready", "run_up"]


def print_ready(deployment: LocalDeployment, status: dict[str, Any], out: Output) -> None:
    """The readable start-up summary: fleet, nodes, endpoints, the published epoch."""
    layout = deployment.layout
    regions = sorted({n.region for n in layout.nodes})
    formed = "formed now" if deployment.formed_now else "restarted from the data directory"
    out.say("")
    out.say(f"[bold green]hsmvault is up[/bold green] ({formed}) — data dir {deployment.data.root}")
    out.say(f"  fleet id   {layout.fleet_id.hex()}")
    out.say(
        f"  fleet      {len(layout.nodes)} HSM nodes in {len(regions)} regions"
        f" ({', '.join(regions)}), {layout.custody} custody; leader node-{status['leader']},"
        f" term {status['term']}, {status['records']} records"
    )
    for node in layout.nodes:
        out.say(
            f"    node-{node.index}  {node.region:<10} api {node.host}:{node.api_port}"
            f"  raft {node.host}:{node.raft_port}"
        )
    if deployment.gateway_url:
        out.say(f"  gateway    {deployment.gateway_url}   (API v1, OpenAPI at /openapi.json)")
        port = deployment.gateway_url.rsplit(":", 1)[-1]
        out.say(f"  passkeys   http://localhost:{port}/passkeys   (test sign-in: any name)")
    else:
        out.say(f"  gateway    [yellow]not running: {deployment.gateway_note}[/yellow]")
    witness = status.get("witness") or {}
    published = deployment.published
    fresh = "published now" if published.get("published_now") else "already published"
    out.say(
        f"  witness    {deployment.witness_url}   {witness.get('name')} (its own process,"
        f" data in {deployment.data.witness_dir})"
    )
    out.say(
        f"  keys       namespace {witness.get('namespace')!r}, epoch {published.get('epoch')}"
        f" ({fresh}; witnessed, counter-signed by the operator key"
        f" {str(witness.get('operator_public_key'))[:16]}…, {witness.get('operator_custody')}"
        " custody)"
    )
    out.say(
        f"  tokens     [yellow]DEVELOPMENT ONLY[/yellow] issuer key in"
        f" {deployment.data.root / ISSUER_DIR} (`hsmvault token`)"
    )
    out.say("")
    out.say(
        "Try, in another terminal: [bold]hsmvault status[/bold], [bold]hsmvault backup"
        " create PATH[/bold], [bold]hsmvault node stop 1[/bold]. Press Ctrl-C to stop."
    )


def _start(deployment: LocalDeployment, config: DeploymentConfig, out: Output) -> int | None:
    """Open (forming the fleet on the first run) and start; an exit status on failure."""
    try:
        if deployment.data.formed:
            deployment.open()
        else:
            with out.steps_progress("forming the fleet (first run)", config.nodes) as tick:
                deployment.open(progress=tick)
        with out.steps_progress("starting HSM nodes", len(deployment.layout.nodes)) as tick:
            deployment.start(progress=tick)
    except DeploymentError as exc:
        if out.json_mode:
            out.line({"event": "error", "error": "deployment_error", "detail": str(exc)})
            return EXIT_ERROR
        return out.error(exc, hint="see docs/operations.md, 'Troubleshooting'")
    return None


def run_up(config: DeploymentConfig, out: Output) -> int:
    """Run until Ctrl-C / SIGTERM / ``hsmvault down``; returns the exit status."""
    json_mode = out.json_mode

    def report(message: str) -> None:
        if json_mode:
            out.line({"event": "log", "message": message})
        else:
            out.say(f"[dim]·[/dim] {message}")

    deployment = LocalDeployment(config, report)
    stop_requested = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop_requested.is_set():
            raise KeyboardInterrupt  # second Ctrl-C: stop waiting politely
        stop_requested.set()
        deployment.request_shutdown()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if not json_mode:
            out.say(f"[bold]hsmvault up[/bold] — data dir {config.data_dir}")
        failed = _start(deployment, config, out)
        if failed is not None:
            return failed
        status = deployment.status()
        if json_mode:
            out.line({"event": "ready", **status})
        else:
            print_ready(deployment, status, out)
        if stop_requested.is_set():
            deployment.request_shutdown()
        deployment.wait()
        if not json_mode:
            out.say("stopping…")
        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_ERROR
    finally:
        deployment.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if json_mode:
            out.line({"event": "stopped", "data_dir": str(config.data_dir)})
        else:
            out.say(
                f"stopped; everything is kept in {config.data_dir} — `hsmvault up` starts it again"
            )
