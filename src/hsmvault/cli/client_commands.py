"""``hsmvault backup …`` and ``hsmvault secret …``: the CLI as a device.

The device's backup key BK lives in the SDK's
:class:`~hsmvault.client.keystore.DeviceKeystore` (``<data dir>/device`` unless
``--device-dir``: another directory is another device). Everything goes through the SDK
(:class:`~hsmvault.client.sdk.VaultClient`) to the gateway over HTTP.

Which fleet the CLI trusts: every vault session's validation bundle is verified
(:mod:`hsmvault.cli.device_trust`) under the witness and operator keys pinned in the
device directory's ``trust.json`` — pinned at first use from the local deployment, and
announced as such — with the device's accepted epochs and checkpoints in
``trust-store.json``. Backups need no fleet trust (they never touch the fleet).

Tokens: ``$HSMVAULT_TOKEN`` if set (a JWT from your app's auth service, for a remote
gateway), else minted by the data directory's DEVELOPMENT-ONLY issuer
(:mod:`hsmvault.cli.dev_tokens`).
"""

from __future__ import annotations

import getpass
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from hsmvault.cli.dev_tokens import DevTokenIssuer
from hsmvault.cli.device_trust import DeviceTrust
from hsmvault.cli.local_deployment import DataLayout, read_state
from hsmvault.cli.output import EXIT_OK, Output
from hsmvault.client.errors import AlreadyEnrolled, InvalidLogin
from hsmvault.client.keystore import DeviceKeystore
from hsmvault.client.recovery_codes import (
    Password,
    Pin,
    RecoveryCode,
    VaultSecret,
    format_64_digit_key,
    parse_64_digit_key,
)
from hsmvault.client.sdk import Progress as SdkProgress
from hsmvault.client.sdk import VaultClient
from hsmvault.crypto.backup_stream import BackupKey
from hsmvault.errors import InvalidParameter, Unavailable, VaultError

if TYPE_CHECKING:
    from hsmvault.cli.main import Context

__all__ = ["DeviceSession", "dispatch", "open_session"]

_BACKUP_ID_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")


class NoBackupKey(VaultError):
    """This device holds no backup key yet."""


# --------------------------------------------------------------------------- session


def resolve_gateway_url(config_gateway_url: str, explicit_url: str | None, data: DataLayout) -> str:
    """``--gateway-url``, else the running deployment's gateway, else the configured one."""
    state = read_state(data)
    url = explicit_url or (state or {}).get("gateway_url") or config_gateway_url
    return str(url).rstrip("/")


def token_provider(data_dir: Path, user: str, lifetime_s: int) -> Callable[[], str]:
    """``$HSMVAULT_TOKEN``, else dev tokens from the data directory's issuer."""
    static = os.environ.get("HSMVAULT_TOKEN")
    if static:
        return lambda: static
    if not DevTokenIssuer.exists(data_dir):
        raise VaultError(
            f"no token: set HSMVAULT_TOKEN, or run `hsmvault up` on {data_dir} (its"
            " development issuer signs the CLI's tokens)"
        )
    issuer = DevTokenIssuer.load_or_create(data_dir)
    return lambda: issuer.mint(user, lifetime_s)


@dataclass
class DeviceSession:
    """A VaultClient for one user and one device keystore."""

    client: VaultClient
    keystore: DeviceKeystore
    user: str
    gateway_url: str
    trust: DeviceTrust

    def backup_key(self) -> BackupKey:
        key = self.keystore.load()
        if key is None:
            raise NoBackupKey(
                f"this device ({self.keystore.path}) has no backup key: `hsmvault secret set"
                " --pin` creates and protects one; `hsmvault secret recover` gets it back"
            )
        return key


def open_session(
    ctx: Context, progress: Callable[[SdkProgress], object] | None = None
) -> DeviceSession:
    config = ctx.config
    args = ctx.args
    data = DataLayout(config.data_dir)
    user = args.user or config.user
    gateway_url = resolve_gateway_url(config.effective_gateway_url, args.gateway_url, data)
    device_dir = args.device_dir or data.device_dir
    trust = DeviceTrust(
        device_dir, data, announce=lambda text: ctx.out.say(f"[yellow]trust:[/yellow] {text}")
    )
    client = VaultClient(
        gateway_url,
        token_provider(config.data_dir, user, config.token_lifetime_s),
        fleet_trust=trust,
        progress=progress,
        user_id=user,
    )
    return DeviceSession(client, DeviceKeystore(device_dir), user, gateway_url, trust)


# --------------------------------------------------------------------------- secrets


def read_secret(ctx: Context, prompt: str, *, confirm: bool = False) -> str:
    """One secret: a line of stdin with ``--secret-stdin``, else a prompt without echo."""
    if ctx.args.secret_stdin:
        line = sys.stdin.readline()
        if not line:
            raise InvalidParameter("--secret-stdin: stdin ended before the secret")
        return line.rstrip("\r\n")
    if not sys.stdin.isatty():
        raise InvalidParameter("no terminal to ask for the secret: use --secret-stdin")
    text = getpass.getpass(f"{prompt}: ")
    if confirm and getpass.getpass(f"{prompt} (again): ") != text:
        raise InvalidParameter("the two entries differ")
    return text


def _kind(args: Any) -> str:
    for kind in ("pin", "password", "recovery_code", "digit_key"):
        if getattr(args, kind, False):
            return kind
    raise InvalidParameter("choose --pin, --password, --recovery-code or --64-digit-key")


def _typed_secret(kind: str, text: str) -> VaultSecret:
    if kind == "pin":
        return Pin(text)
    if kind == "password":
        return Password(text)
    return RecoveryCode.parse(text)


_KIND_NAMES: Final = {
    "pin": "PIN",
    "password": "password",
    "recovery_code": "recovery code",
    "digit_key": "64-digit key",
}


def _enroll(
    ctx: Context, session: DeviceSession, kind: str, key: BackupKey, limit: int
) -> RecoveryCode | None:
    """Escrow ``key`` under a new secret of ``kind``; the generated code, if any."""
    replace = bool(ctx.args.replace)
    client = session.client
    try:
        if kind == "recovery_code":
            return client.protect_with_recovery_code(key, guess_limit=limit, replace=replace)
        secret = _typed_secret(kind, read_secret(ctx, f"new {_KIND_NAMES[kind]}", confirm=True))
        if isinstance(secret, Pin):
            client.protect_with_pin(secret, key, guess_limit=limit, replace=replace)
        else:
            assert isinstance(secret, Password)
            client.protect_with_password(secret, key, guess_limit=limit, replace=replace)
    except AlreadyEnrolled:
        raise AlreadyEnrolled(
            f"{session.user} already has a protected key: `hsmvault secret change`, or"
            " `hsmvault secret set --replace` to overwrite it"
        ) from None
    return None


def _secret_set(ctx: Context) -> int:
    out = ctx.out
    kind = _kind(ctx.args)
    session = open_session(ctx)
    with session.client:
        key = session.keystore.load()
        created = key is None
        if key is None:
            key = BackupKey.generate()
        if kind == "digit_key":
            session.keystore.store(key)
            digits = format_64_digit_key(key)
            if out.json_mode:
                out.data({"kind": kind, "created_key": created, "key": digits})
            else:
                out.say("Your backup key as 64 digits. Write it down; no server keeps it:")
                out.say(f"  [bold cyan]{digits}[/bold cyan]")
            return EXIT_OK
        limit = ctx.args.guess_limit or ctx.config.guess_limit
        session.trust.prepare()
        code = _enroll(ctx, session, kind, key, limit)
        session.keystore.store(key)
    doc: dict[str, Any] = {
        "kind": kind,
        "user": session.user,
        "created_key": created,
        "guess_limit": limit,
        "device_dir": str(session.keystore.path),
    }
    if code is not None:
        doc["recovery_code"] = code.display()
    if out.json_mode:
        out.data(doc)
    else:
        what = "a new backup key" if created else "this device's backup key"
        out.say(
            f"{what} is now protected by a {_KIND_NAMES[kind]} ({limit} wrong guesses and"
            " the fleet destroys it)"
        )
        if code is not None:
            out.say("Your recovery code — shown once, write it down:")
            out.say(f"  [bold cyan]{code.display()}[/bold cyan]")
    return EXIT_OK


def _secret_change(ctx: Context) -> int:
    kind = _kind(ctx.args)
    session = open_session(ctx)
    with session.client:
        session.trust.prepare()
        current = read_secret(ctx, "current PIN, password or recovery code")
        new: Pin | Password | RecoveryCode
        if kind == "recovery_code":
            new = RecoveryCode.generate()
        else:
            text = read_secret(ctx, f"new {_KIND_NAMES[kind]}", confirm=True)
            new = Pin(text) if kind == "pin" else Password(text)
        key = session.client.change_secret(current, new)
        session.keystore.store(key)
    doc: dict[str, Any] = {"kind": kind, "user": session.user, "changed": True}
    if isinstance(new, RecoveryCode):
        doc["recovery_code"] = new.display()
    if ctx.out.json_mode:
        ctx.out.data(doc)
    else:
        ctx.out.say(f"the backup key is now protected by the new {_KIND_NAMES[kind]}")
        if isinstance(new, RecoveryCode):
            ctx.out.say(f"  new recovery code (shown once): [bold cyan]{new.display()}[/]")
    return EXIT_OK


def _secret_recover(ctx: Context) -> int:
    kind = _kind(ctx.args)
    out = ctx.out
    session = open_session(ctx)
    with session.client:
        text = read_secret(ctx, _KIND_NAMES[kind])
        if kind == "digit_key":
            key = parse_64_digit_key(text)
        else:
            session.trust.prepare()
            try:
                key = session.client.recover(_typed_secret(kind, text))
            except InvalidLogin as exc:
                left = exc.attempts_remaining
                more = f": {left} attempts left" if left is not None else ""
                raise InvalidLogin(
                    f"wrong {_KIND_NAMES[kind]}{more}", attempts_remaining=left
                ) from None
        session.keystore.store(key)
    if out.json_mode:
        out.data(
            {
                "kind": kind,
                "user": session.user,
                "recovered": True,
                "device_dir": str(session.keystore.path),
            }
        )
    else:
        out.say(f"backup key recovered into this device's keystore ({session.keystore.path})")
    return EXIT_OK


def _secret_status(ctx: Context) -> int:
    session = open_session(ctx)
    with session.client:
        has_key = session.keystore.exists()
        try:
            left: int | None = session.client.attempts_remaining()
        except Unavailable:
            left = None
    doc = {
        "user": session.user,
        "device_has_key": has_key,
        "device_dir": str(session.keystore.path),
        "attempts_remaining": left,
        "fleet_keys_from": session.trust.describe(),
        "gateway_url": session.gateway_url,
    }
    if ctx.out.json_mode:
        ctx.out.data(doc)
    else:
        ctx.out.say(
            f"user {session.user}: this device {'holds' if has_key else 'does not hold'} a"
            f" backup key; guesses left on the fleet: {'?' if left is None else left}"
        )
        ctx.out.say(f"fleet trust: {session.trust.describe()}")
    return EXIT_OK


# --------------------------------------------------------------------------- backups


class _Bars:
    """Rich progress bars keyed by the SDK's phases."""

    _LABELS: Final = {
        "archive": "archiving + encrypting",
        "upload": "uploading",
        "download": "downloading + decrypting",
        "restore": "writing files",
    }

    def __init__(self, progress: Progress | None, totals: dict[str, int | None]) -> None:
        self._progress = progress
        self._totals = totals
        self._tasks: dict[str, TaskID] = {}

    def __call__(self, report: SdkProgress) -> None:
        if self._progress is None:
            return
        task = self._tasks.get(report.phase)
        total = report.total if report.total is not None else self._totals.get(report.phase)
        if task is None:
            task = self._progress.add_task(
                self._LABELS.get(report.phase, report.phase), total=total
            )
            self._tasks[report.phase] = task
        self._progress.update(task, completed=report.done, total=total)


@contextmanager
def _bars(out: Output, totals: dict[str, int | None]) -> Iterator[_Bars]:
    if out.json_mode:
        yield _Bars(None, totals)
        return
    columns = (
        TextColumn("[progress.description]{task.description:<26}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=out.console) as progress:
        yield _Bars(progress, totals)


def _tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            p = Path(root) / name
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
    return total


def default_backup_id(path: Path) -> str:
    """A backup id from ``path``'s name: ``[A-Za-z0-9_-]``, at most 64 characters."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", path.resolve().name).strip("-")[:64]
    return name or "backup"


def _backup_create(ctx: Context) -> int:
    path: Path = ctx.args.path
    if not path.exists():
        raise InvalidParameter(f"{path} does not exist")
    backup_id = ctx.args.backup_id or default_backup_id(path)
    if not _BACKUP_ID_RE.fullmatch(backup_id):
        raise InvalidParameter("a backup id is 1..64 of A-Z a-z 0-9 _ -")
    with _bars(ctx.out, {"archive": _tree_size(path)}) as bars:
        session = open_session(ctx, bars)
        with session.client:
            info = session.client.create_backup(
                path, backup_id, backup_key=session.backup_key(), label=ctx.args.label
            )
    doc = {
        "backup_id": info.backup_id,
        "size": info.size,
        "sha256": info.sha256,
        "created_at": info.created_at,
        "label": info.label,
    }
    if ctx.out.json_mode:
        ctx.out.data(doc)
    else:
        ctx.out.say(
            f"backed up {path} as [bold]{info.backup_id}[/bold] ({info.size} bytes of"
            " ciphertext; the gateway never sees the key)"
        )
    return EXIT_OK


def _backup_restore(ctx: Context) -> int:
    dest: Path = ctx.args.dest
    if dest.exists():
        raise InvalidParameter(f"{dest} exists: restore into a new path")
    session = open_session(ctx)
    with session.client:
        key = session.backup_key()
        size = next(
            (b.size for b in session.client.list_backups() if b.backup_id == ctx.args.backup_id),
            None,
        )
    with _bars(ctx.out, {"download": size}) as bars:
        session = open_session(ctx, bars)
        with session.client:
            result = session.client.restore_backup(ctx.args.backup_id, dest, backup_key=key)
    doc = {
        "backup_id": ctx.args.backup_id,
        "dest": str(dest),
        "ciphertext_bytes": result.ciphertext_bytes,
        "files": result.extract.files,
        "directories": result.extract.directories,
        "file_bytes": result.extract.file_bytes,
    }
    if ctx.out.json_mode:
        ctx.out.data(doc)
    else:
        ctx.out.say(f"restored [bold]{ctx.args.backup_id}[/bold] into {dest}")
    return EXIT_OK


def _backup_list(ctx: Context) -> int:
    session = open_session(ctx)
    with session.client:
        backups = session.client.list_backups()
    docs: list[dict[str, Any]] = [
        {
            "backup_id": b.backup_id,
            "size": b.size,
            "sha256": b.sha256,
            "created_at": b.created_at,
            "label": b.label,
        }
        for b in backups
    ]
    if ctx.out.json_mode:
        ctx.out.data({"backups": docs})
    elif not docs:
        ctx.out.say(f"no backups for {session.user}")
    else:
        for d in docs:
            label = f"  ({d['label']})" if d["label"] else ""
            ctx.out.say(f"{d['backup_id']:<24} {d['size']:>12} bytes  {d['sha256'][:16]}…{label}")
    return EXIT_OK


def _backup_delete(ctx: Context) -> int:
    session = open_session(ctx)
    with session.client:
        session.client.delete_backup(ctx.args.backup_id)
    if ctx.out.json_mode:
        ctx.out.data({"backup_id": ctx.args.backup_id, "deleted": True})
    else:
        ctx.out.say(f"deleted {ctx.args.backup_id}")
    return EXIT_OK


_HANDLERS: Final[dict[tuple[str, str], Callable[[Context], int]]] = {
    ("backup", "create"): _backup_create,
    ("backup", "restore"): _backup_restore,
    ("backup", "list"): _backup_list,
    ("backup", "delete"): _backup_delete,
    ("secret", "set"): _secret_set,
    ("secret", "change"): _secret_change,
    ("secret", "recover"): _secret_recover,
    ("secret", "status"): _secret_status,
}


def dispatch(ctx: Context) -> int:
    """Run ``backup …`` or ``secret …``."""
    args = ctx.args
    action = args.backup_command if args.command == "backup" else args.secret_command
    return _HANDLERS[(args.command, action)](ctx)
