"""The ``hsmvault`` command.

Run a complete deployment on this machine (``up``, ``down``, ``status``, ``node``,
``token``, ``config``), publish and audit its fleet keys (``fleet``, ``audit``,
``witness``), use it as a device would (``backup``, ``secret``), or watch it work
(``demo``). Every command has ``--help``; commands whose output is data take
``--json`` (:mod:`hsmvault.cli.output` for the contract and exit statuses).

Configuration: :mod:`hsmvault.cli.config` (TOML file + ``HSMVAULT_*``), documented in
``docs/operations.md``.

Extending a command group (``fleet``, ``audit``): add a sub-parser to its sub-parser set
with ``set_defaults(handler=<callable(Context) -> int>)``; :func:`main` runs the
``handler`` of the command line when there is one (see the ``EXTENSIONS`` lines in
:func:`build_parser`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from rich.table import Table

from hsmvault import __version__
from hsmvault.cli import evidence_commands
from hsmvault.cli.config import ConfigError, DeploymentConfig, load_config, render_toml
from hsmvault.cli.output import EXIT_ERROR, EXIT_OK, EXIT_USAGE, Output
from hsmvault.errors import VaultError

__all__ = ["Context", "build_parser", "main"]

_EPILOG: Final = (
    "Configuration: hsmvault.toml in the data directory (or --config) and HSMVAULT_*"
    " variables; see docs/operations.md."
)


@dataclass
class Context:
    """What every command gets: the effective configuration and where to write."""

    config: DeploymentConfig
    out: Output
    args: argparse.Namespace


Handler = Callable[[Context], int]


# --------------------------------------------------------------------------- parser


def _common(json_flag: bool) -> argparse.ArgumentParser:
    """Options every subcommand accepts (after its name, too)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--data-dir",
        type=Path,
        default=argparse.SUPPRESS,
        help="data directory (default: $HSMVAULT_HOME or ~/.local/share/hsmvault)",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        help="TOML configuration file (default: <data dir>/hsmvault.toml if present)",
    )
    if json_flag:
        p.add_argument("--json", action="store_true", default=False, help="machine-readable output")
    return p


def _client_common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--user", default=None, help="user id to act as (default: client.user, 'local-user')"
    )
    p.add_argument(
        "--device-dir",
        type=Path,
        default=None,
        help="this device's keystore (default: <data dir>/device); another directory"
        " is another device",
    )
    p.add_argument(
        "--gateway-url",
        default=None,
        help="gateway to use (default: the running `hsmvault up`, else client.gateway_url)",
    )
    return p


def _secret_kind(p: argparse.ArgumentParser, *, key: bool, code: bool) -> None:
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--pin", action="store_true", help="a PIN (at least 6 digits)")
    group.add_argument("--password", action="store_true", help="a password")
    if code:
        group.add_argument("--recovery-code", action="store_true", help="a generated recovery code")
    if key:
        group.add_argument(
            "--64-digit-key",
            dest="digit_key",
            action="store_true",
            help="the backup key itself, written down as 64 digits (no server involved)",
        )
    p.add_argument(
        "--secret-stdin",
        action="store_true",
        help="read the secret from the first line of stdin instead of a prompt (scripts)",
    )


def _audit_options() -> argparse.ArgumentParser:
    """Options of ``audit`` / ``audit log`` (SUPPRESS: either level may carry them)."""
    p = argparse.ArgumentParser(add_help=False)
    s = argparse.SUPPRESS
    p.add_argument("--witness", default=s, help="witness URL (default: the running deployment's)")
    p.add_argument("--namespace", default=s, help="namespace (default: hsmvault/local)")
    p.add_argument(
        "--operator-key",
        default=s,
        help="operator Ed25519 public key, hex (default: pinned, else the namespace's)",
    )
    p.add_argument(
        "--witness-key",
        action="append",
        default=s,
        metavar="HEX[@MS]",
        help="pin a witness signing key (repeatable; @MS = its not_before in ms)",
    )
    p.add_argument("--log-key", default=s, help="pin the witness's log key (note verifier key)")
    p.add_argument(
        "--device-dir",
        type=Path,
        default=s,
        help="where the pins and the last checkpoint seen are kept (default <data dir>/device)",
    )
    return p


def build_parser(*, with_witness: bool = True) -> argparse.ArgumentParser:  # noqa: PLR0915
    """The whole command line (exposed for tests and docs). ``with_witness=False``
    leaves the ``witness`` actions out (importing the witness costs a second; :func:`main`
    adds them only when the command line names ``witness``)."""
    parser = argparse.ArgumentParser(
        prog="hsmvault",
        description="HSM-backed backup key vault for end-to-end encrypted backups.",
        epilog=_EPILOG,
        parents=[_common(json_flag=False)],
    )
    parser.add_argument("--version", action="version", version=f"hsmvault {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    plain = _common(json_flag=False)
    data = _common(json_flag=True)
    client = _client_common()

    def add(name: str, help_: str, description: str, parents: list[Any]) -> Any:
        return sub.add_parser(
            name, help=help_, description=description, epilog=_EPILOG, parents=parents
        )

    up = add(
        "up",
        "run a complete local deployment (Ctrl-C stops it)",
        "Start 5 HSM nodes in 3 regions, the witness (its own process) and the gateway on"
        " loopback, from the data directory. The first run forms the fleet; later runs"
        " restart it without losing data. Before the gateway serves, the fleet's keys are"
        " published (witnessed, counter-signed by the operator key, installed in the"
        " fleet) when no bundle is installed or the last is older than half the clients'"
        " freshness window. Ctrl-C stops everything cleanly. With --json,"
        " stdout carries one JSON object per line: log events, then"
        ' {"event": "ready", ...} once serving, and {"event": "stopped"} at the end.',
        [data],
    )
    up.add_argument("--nodes", type=int, default=None, help="nodes, when forming (default 5)")
    up.add_argument(
        "--custody",
        choices=("software", "softhsm"),
        default=None,
        help="node key custody, when forming (default software)",
    )
    up.add_argument("--port", type=int, default=None, help="gateway port (default 8420)")
    add(
        "down",
        "stop the deployment `hsmvault up` runs on this data directory",
        "Ask the running `hsmvault up` to stop cleanly (as Ctrl-C in its terminal).",
        [data],
    )
    add(
        "status",
        "nodes, regions, leader, term, commit index, records, health",
        "Show the deployment on the data directory: every node's region, state, Raft view"
        " and record count, the leader, the gateway's and the witness's endpoints.",
        [data],
    )

    node = add(
        "node",
        "stop or start one HSM node (fault injection)",
        "Fault injection on a running local deployment.",
        [plain],
    )
    node_sub = node.add_subparsers(dest="node_command", metavar="ACTION", required=True)
    stop = node_sub.add_parser(
        "stop",
        help="stop a node (SIGKILL, like a power cut; the supervisor leaves it down)",
        description="Stop node N (index 0..n-1 or node-N) until `hsmvault node start N`.",
        parents=[data],
    )
    stop.add_argument("node", help="node index or name, e.g. 2 or node-2")
    stop.add_argument("--graceful", action="store_true", help="SIGTERM instead of SIGKILL")
    start = node_sub.add_parser(
        "start",
        help="start a stopped node again",
        description="Start node N again and wait until it serves.",
        parents=[data],
    )
    start.add_argument("node", help="node index or name, e.g. 2 or node-2")

    token = add(
        "token",
        "print a DEVELOPMENT-ONLY token for the local gateway",
        "Mint a JWT signed by the local deployment's dev issuer key (DEVELOPMENT ONLY:"
        " a production gateway trusts only the app's auth service). Use it as"
        " `Authorization: Bearer <token>` against the local gateway.",
        [data],
    )
    token.add_argument("--user", default=None, help="the token's user (sub)")
    token.add_argument("--lifetime", type=int, default=None, help="seconds (30..900)")

    cfg = add(
        "config",
        "show the effective configuration",
        "Print the configuration after the file, HSMVAULT_* variables and flags.",
        [data],
    )
    cfg.add_argument("--toml", action="store_true", help="as a hsmvault.toml file")

    backup = add(
        "backup",
        "create, restore, list or delete encrypted backups",
        "Backups are encrypted on this device with its backup key; the gateway stores"
        " only ciphertext.",
        [plain],
    )
    backup_sub = backup.add_subparsers(dest="backup_command", metavar="ACTION", required=True)
    b_create = backup_sub.add_parser(
        "create",
        help="back up a file or a directory",
        description="Encrypt PATH (a file, or a directory as an archive) and upload it.",
        parents=[data, client],
    )
    b_create.add_argument("path", type=Path, help="file or directory to back up")
    b_create.add_argument("--id", dest="backup_id", default=None, help="backup id ([A-Za-z0-9_-])")
    b_create.add_argument("--label", default="", help="a label stored with the backup")
    b_restore = backup_sub.add_parser(
        "restore",
        help="download and decrypt a backup",
        description="Download backup ID and decrypt it into DEST (must not exist).",
        parents=[data, client],
    )
    b_restore.add_argument("backup_id", metavar="ID")
    b_restore.add_argument("dest", type=Path, metavar="DEST")
    backup_sub.add_parser(
        "list", help="list this user's backups", description="List backups.", parents=[data, client]
    )
    b_delete = backup_sub.add_parser(
        "delete", help="delete a backup", description="Delete backup ID.", parents=[data, client]
    )
    b_delete.add_argument("backup_id", metavar="ID")

    secret = add(
        "secret",
        "protect, change or recover this device's backup key",
        "The backup key is protected by a PIN, a password or a recovery code through"
        " OPAQUE against the HSM fleet, which counts wrong guesses and destroys the key at"
        " the limit; or written down as 64 digits, with no server at all.",
        [plain],
    )
    secret_sub = secret.add_subparsers(dest="secret_command", metavar="ACTION", required=True)
    s_set = secret_sub.add_parser(
        "set",
        help="protect the backup key (creates one if this device has none)",
        description="Enrol the backup key with the fleet under a PIN, password or a"
        " generated recovery code (shown once), or show it as 64 digits.",
        parents=[data, client],
    )
    _secret_kind(s_set, key=True, code=True)
    s_set.add_argument(
        "--guess-limit", type=int, default=None, help="wrong guesses allowed (default 10)"
    )
    s_set.add_argument(
        "--replace", action="store_true", help="overwrite an existing protection of this user"
    )
    s_change = secret_sub.add_parser(
        "change",
        help="replace the PIN or password (needs the current one)",
        description="Log in with the current secret, then enrol the new one.",
        parents=[data, client],
    )
    _secret_kind(s_change, key=False, code=True)
    s_recover = secret_sub.add_parser(
        "recover",
        help="get the backup key back on this device",
        description="Recover the backup key with the PIN, password, recovery code, or the"
        " 64-digit key; each wrong PIN/password/code costs one of the limited guesses.",
        parents=[data, client],
    )
    _secret_kind(s_recover, key=True, code=True)
    secret_sub.add_parser(
        "status",
        help="guesses left and whether this device holds the key",
        description="Show whether this device holds a backup key and the guesses left.",
        parents=[data, client],
    )

    fleet = add(
        "fleet",
        "publish the fleet's keys (validation bundles)",
        "Operator commands on the fleets of the running deployment.",
        [plain],
    )
    fleet_sub = fleet.add_subparsers(dest="fleet_command", metavar="ACTION", required=True)
    publish = fleet_sub.add_parser(
        "publish-keys",
        help="publish a new epoch of the fleet directory now",
        description="Ask the running `hsmvault up` to publish its fleet's keys as a new epoch:"
        " the witness signs and logs it, the operator key counter-signs it, the bundle is"
        " verified and installed in the fleet.",
        parents=[data],
    )
    publish.set_defaults(handler=_cmd_fleet_publish_keys)

    audit_opts = _audit_options()
    audit = add(
        "audit",
        "audit the witness log and the deployment evidence (default: both)",
        "Audit what the witness logged for a namespace (`audit log`) and a fleet's"
        " deployment evidence (`audit evidence`). Without an action: `audit log`, then"
        " `audit evidence` of the configured deployment's fleet.",
        [data, audit_opts],
    )
    audit.set_defaults(  # bare `hsmvault audit`: the witness log, then the deployment evidence
        handler=lambda ctx: evidence_commands.audit_log_and_evidence(ctx, _cmd_audit_log)
    )
    audit_sub = audit.add_subparsers(dest="audit_command", metavar="ACTION")
    log = audit_sub.add_parser(
        "log",
        help="verify every epoch and show how the fleet keys changed",
        description="Fetch every epoch of the namespace from the witness; verify each witness"
        " signature (pinned keys), operator counter-signature, the artifact digests and"
        " their previous_digest chain, each entry's inclusion in the latest checkpoint, and"
        " that checkpoint's consistency with the one this device saw last time; print how"
        " the fleet keys changed from epoch to epoch (the first epoch is the baseline)."
        " Exits non-zero with the reason on any failure.",
        parents=[data, audit_opts],
    )
    log.set_defaults(handler=_cmd_audit_log)
    # EXTENSIONS: one line per group; each sub-parser sets
    # ``handler=<callable(Context) -> int>`` (issue 6: fleet deploy/publish, audit evidence).
    evidence_commands.register_fleet_commands(fleet_sub, [data])
    evidence_commands.register_audit_commands(audit_sub, [data])

    witness = add(
        "witness",
        "run or administer a witness (its own data directory)",
        "The witness commands (python -m hsmvault.transparency.witness): init, serve,"
        " register-namespace, add-key, info, repair. Each takes --data-dir, the witness's"
        " own directory (a local deployment's is <data dir>/witness). Prints JSON.",
        [],
    )
    if with_witness:
        from hsmvault.transparency.witness import cli as witness_commands  # noqa: PLC0415

        witness_commands.add_commands(
            witness.add_subparsers(dest="witness_command", metavar="ACTION", required=True)
        )

    demo = add(
        "demo",
        "a guided end-to-end walk (back up, restore, lockout, two nodes down)",
        "Back up a sample chat history, restore it on a 'new device', show wrong guesses"
        " counting down to lockout, and show the fleet surviving two nodes down — on the"
        " running deployment if there is one, else on a temporary one. Exits 0 only if"
        " every check held.",
        [plain],
    )
    demo.add_argument("--size-mib", type=int, default=16, help="size of the sample (default 16)")
    demo.add_argument("--pin", default="482916", help="the PIN to protect the key with")
    demo.add_argument("--workdir", type=Path, default=None, help="where to put temporary files")
    demo.add_argument(
        "--offline",
        action="store_true",
        help="only the crypto core, in this process (no fleet, no gateway)",
    )
    return parser


# --------------------------------------------------------------------------- helpers


def parse_node(text: str, count: int | None = None) -> int:
    """``2`` or ``node-2`` → 2 (:class:`ValueError` otherwise)."""
    raw = text.removeprefix("node-")
    if not raw.isdigit():
        raise ValueError(f"not a node: {text!r} (use an index like 2 or a name like node-2)")
    index = int(raw)
    if count is not None and not 0 <= index < count:
        raise ValueError(f"no node {index}: nodes are 0..{count - 1}")
    return index


def _load(args: argparse.Namespace) -> DeploymentConfig:
    overrides: dict[str, object] = {}
    for flag, attr in (("nodes", "nodes"), ("custody", "custody"), ("port", "gateway_port")):
        value = getattr(args, flag, None)
        if value is not None and args.command == "up":
            overrides[attr] = value
    return load_config(
        config_file=getattr(args, "config", None),
        data_dir=getattr(args, "data_dir", None),
        overrides=overrides,
    )


# --------------------------------------------------------------------------- commands


def _cmd_up(ctx: Context) -> int:
    from hsmvault.cli.up import run_up  # noqa: PLC0415 - keep --help fast

    return run_up(ctx.config, ctx.out)


def _cmd_down(ctx: Context) -> int:
    from hsmvault.cli.local_deployment import DataLayout, control_request  # noqa: PLC0415

    control_request(DataLayout(ctx.config.data_dir), "shutdown")
    if ctx.out.json_mode:
        ctx.out.data({"stopping": True, "data_dir": str(ctx.config.data_dir)})
    else:
        ctx.out.say(f"asked the deployment on {ctx.config.data_dir} to stop")
    return EXIT_OK


def _cmd_status(ctx: Context) -> int:
    from hsmvault.cli.local_deployment import DataLayout, collect_status  # noqa: PLC0415

    status = collect_status(DataLayout(ctx.config.data_dir))
    if ctx.out.json_mode:
        ctx.out.data(status)
    else:
        render_status(status, ctx.out)
    return EXIT_OK


def render_status(status: dict[str, Any], out: Output) -> None:
    """The human form of :func:`hsmvault.cli.local_deployment.collect_status`."""
    if not status.get("nodes"):
        out.say(f"no fleet in {status['data_dir']} yet: `hsmvault up` forms one and starts it")
        return
    colour = {
        "ok": "green",
        "degraded": "yellow",
        "electing": "yellow",
        "down": "red",
        "stopped": "dim",
    }[status["health"]]
    running = "running" if status["running"] else "not running"
    out.say(
        f"[bold]hsmvault[/bold] {running} — health [{colour}]{status['health']}[/{colour}]"
        f" — data dir {status['data_dir']}"
    )
    out.say(
        f"fleet {status['fleet_id'][:16]}…  custody {status['custody']}  regions"
        f" {', '.join(status['regions'])}"
    )
    if status["leader"] is not None:
        out.say(
            f"leader node-{status['leader']}  term {status['term']}  commit index"
            f" {status['commit_index']}  records {status['records']}"
            f"  nodes up {status['nodes_up']}/{status['nodes_total']} (quorum {status['quorum']})"
        )
    else:
        out.say(
            f"[red]no leader with a quorum[/red] (yet): nodes up {status['nodes_up']}/"
            f"{status['nodes_total']}, a majority of {status['quorum']} is needed"
        )
    table = Table(box=None, pad_edge=False)
    for col in ("node", "region", "state", "role", "term", "commit", "records", "api port", "pid"):
        table.add_column(col)
    for n in status["nodes"]:
        role = "leader" if n["leader"] else ("follower" if n["reachable"] else "—")
        state_colour = {"running": "green", "stopped": "dim", "starting": "yellow"}.get(
            n["state"], "red"
        )
        table.add_row(
            n["name"],
            n["region"],
            f"[{state_colour}]{n['state']}[/{state_colour}]",
            role,
            "" if n["term"] is None else str(n["term"]),
            "" if n["commit_index"] is None else str(n["commit_index"]),
            "" if n["records"] is None else str(n["records"]),
            n["api"].rsplit(":", 1)[-1],
            "" if n["pid"] is None else str(n["pid"]),
        )
    out.console.print(table)
    for n in status["nodes"]:
        if n.get("last_error") and n["state"] != "running":
            out.say(f"  {n['name']}: last exit {n['last_error']}")
    gateway = status.get("gateway") or {}
    if gateway.get("url"):
        healthy = gateway.get("healthy")
        ok = "[green]healthy[/green]" if healthy else "[red]not answering[/red]"
        out.say(f"gateway {gateway['url']} {ok}")
    elif gateway.get("note"):
        out.say(f"gateway: [yellow]{gateway['note']}[/yellow]")
    witness = status.get("witness") or {}
    if witness.get("url"):
        out.say(
            f"witness {witness['url']} ({witness.get('name')})  namespace"
            f" {witness.get('namespace')!r}  epoch {witness.get('epoch')}"
        )
    if witness.get("operator_public_key"):
        out.say(
            f"operator key {witness['operator_public_key'][:16]}…"
            f" ({witness.get('operator_custody')} custody)"
        )


def _cmd_node(ctx: Context) -> int:
    from hsmvault.cli.local_deployment import (  # noqa: PLC0415
        DataLayout,
        control_request,
    )

    args = ctx.args
    data = DataLayout(ctx.config.data_dir)
    index = parse_node(args.node)
    if args.node_command == "stop":
        answer = control_request(data, "stop_node", {"index": index, "kill": not args.graceful})
    else:
        answer = control_request(data, "start_node", {"index": index}, timeout=120)
    status = answer["status"]
    if ctx.out.json_mode:
        ctx.out.data({"node": index, "action": args.node_command, "status": status})
    else:
        verb = "stopped" if args.node_command == "stop" else "started"
        ctx.out.say(f"node-{index} {verb}")
        render_status(status, ctx.out)
    return EXIT_OK


def _cmd_token(ctx: Context) -> int:
    from hsmvault.cli.dev_tokens import DEV_ISSUER, DevTokenIssuer  # noqa: PLC0415

    config = ctx.config
    if not DevTokenIssuer.exists(config.data_dir):
        raise VaultError(
            f"no dev issuer key in {config.data_dir}: run `hsmvault up` on this data"
            " directory first"
        )
    issuer = DevTokenIssuer.load_or_create(config.data_dir)
    user = ctx.args.user or config.user
    lifetime = ctx.args.lifetime or config.token_lifetime_s
    if not 30 <= lifetime <= 900:
        raise ValueError("--lifetime must be 30..900 seconds")
    token = issuer.mint(user, lifetime)
    if ctx.out.json_mode:
        ctx.out.data({"token": token, "user": user, "lifetime_s": lifetime, "issuer": DEV_ISSUER})
    else:
        print(token)
    return EXIT_OK


def _cmd_config(ctx: Context) -> int:
    if ctx.args.toml:
        print(render_toml(ctx.config), end="")
    elif ctx.out.json_mode:
        ctx.out.data(ctx.config.to_dict())
    else:
        for key, value in ctx.config.to_dict().items():
            ctx.out.say(f"{key} = {value}")
    return EXIT_OK


def _cmd_fleet_publish_keys(ctx: Context) -> int:
    from hsmvault.cli.local_deployment import DataLayout, control_request  # noqa: PLC0415

    answer = control_request(DataLayout(ctx.config.data_dir), "publish", timeout=120)
    published = answer["published"]
    if ctx.out.json_mode:
        ctx.out.data(published)
    else:
        ctx.out.say(
            f"published epoch {published['epoch']} of {published['namespace']!r}: witnessed,"
            f" counter-signed, installed in {len(published['installed'])} fleet(s)"
        )
    return EXIT_OK


def _cmd_audit_log(ctx: Context) -> int:
    from hsmvault.cli.audit_commands import run_log_audit  # noqa: PLC0415

    return run_log_audit(ctx)


def _run_witness(args: argparse.Namespace) -> int:
    """``hsmvault witness ...``: the witness's own command line (JSON output)."""
    try:
        status: int = args.func(args)
    except VaultError as exc:
        sys.stderr.write(f"witness: {type(exc).__name__}: {exc}\n")
        return EXIT_ERROR
    return status


def _cmd_client(ctx: Context) -> int:
    from hsmvault.cli import client_commands  # noqa: PLC0415 - needs the SDK

    return client_commands.dispatch(ctx)


def _cmd_demo(ctx: Context) -> int:
    args = ctx.args
    if not 1 <= args.size_mib <= 4096:
        raise ValueError("--size-mib must be between 1 and 4096")
    from hsmvault.cli.demo import DemoOptions, run_demo  # noqa: PLC0415 - keep --help fast

    options = DemoOptions(size_mib=args.size_mib, pin=args.pin, workdir=args.workdir)
    if args.offline:
        return run_demo(options, ctx.out.console)
    from hsmvault.cli.demo import run_full_demo  # noqa: PLC0415

    return run_full_demo(options, ctx.config, ctx.out.console)


_COMMANDS: Final[dict[str, Handler]] = {
    "up": _cmd_up,
    "down": _cmd_down,
    "status": _cmd_status,
    "node": _cmd_node,
    "token": _cmd_token,
    "config": _cmd_config,
    "backup": _cmd_client,
    "secret": _cmd_client,
    "demo": _cmd_demo,
}


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    words = sys.argv[1:] if argv is None else argv
    parser = build_parser(with_witness="witness" in words)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_OK
    if args.command == "demo" and not 1 <= args.size_mib <= 4096:
        parser.error("--size-mib must be between 1 and 4096")
    if args.command == "witness":
        return _run_witness(args)
    out = Output(json_mode=bool(getattr(args, "json", False)))
    try:
        config = _load(args)
    except ConfigError as exc:
        out.error(exc, hint="see docs/operations.md, 'Configuration'")
        return EXIT_USAGE
    ctx = Context(config, out, args)
    handler: Handler = getattr(args, "handler", None) or _COMMANDS[args.command]
    try:
        return handler(ctx)
    except KeyboardInterrupt:
        out.err.print("interrupted")
        return 130
    except (VaultError, ValueError, OSError) as exc:
        return out.error(exc)


if __name__ == "__main__":
    sys.exit(main())
