"""``hsmvault demo``: a guided walk through what hsmvault does.

:func:`run_full_demo` (``hsmvault demo``) runs on real processes and real HTTP: a
temporary local deployment (or the running ``hsmvault up``), the SDK on three "phones".
It backs up a sample chat history, restores it on a new phone with the PIN, shows that
the stored ciphertext cannot be altered unnoticed, counts wrong guesses down to a
lockout, and restores again with two of five nodes killed. Exits 0 only if every check
held.

:func:`run_demo` (``hsmvault demo --offline``) is the crypto core alone, in this
process: its OPAQUE server runs in-process and is labelled as such; every other step is
the real code path (the streaming backup format, OPAQUE-3DH with Argon2id on the client,
the backup-key wrap).
"""

from __future__ import annotations

import hashlib
import random
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import httpx
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from hsmvault.cli.config import DeploymentConfig
from hsmvault.cli.dev_tokens import DevTokenIssuer
from hsmvault.cli.local_deployment import (
    NAMESPACE,
    DataLayout,
    DeploymentError,
    LocalDeployment,
    control_request,
    read_state,
)
from hsmvault.cli.operator_key import read_operator_public_key
from hsmvault.client.backup_files import decrypt_file, encrypt_file
from hsmvault.client.bundle_verifier import (
    BundleFleetTrust,
    BundleVerifier,
    PinnedWitnessKey,
    TrustPolicy,
)
from hsmvault.client.errors import InvalidLogin as SdkInvalidLogin
from hsmvault.client.keystore import DeviceKeystore
from hsmvault.client.recovery_codes import Pin, format_64_digit_key
from hsmvault.client.sdk import Progress as SdkProgress
from hsmvault.client.sdk import VaultClient
from hsmvault.client.trust_store import MemoryTrustStore
from hsmvault.crypto.backup_stream import BackupKey
from hsmvault.crypto.key_wrap import PURPOSE_OPAQUE_EXPORT_KEY, unwrap_backup_key, wrap_backup_key
from hsmvault.crypto.opaque import OpaqueClient, OpaqueServer, RegistrationRecord
from hsmvault.errors import InvalidLogin, LockedOut, Unavailable, VaultError, VerificationError
from hsmvault.transparency.witness_client import WitnessClient

__all__ = ["DemoOptions", "format_64_digit_key", "run_demo", "run_full_demo", "write_sample_chat"]

_SAMPLE_PEOPLE = ["Ada", "Grace", "Alan", "Radia", "Whitfield", "Martin"]
_SAMPLE_LINES = [
    "are we still on for lunch?",
    "sent you the photos from the trip",
    "the build is green again",
    "can you call me when you land",
    "happy birthday!!",
    "I backed up my chats, finally",
]


@dataclass(frozen=True)
class DemoOptions:
    """Knobs of the demo; defaults make it finish in a few seconds."""

    size_mib: int = 16
    pin: str = "482916"
    workdir: Path | None = None


def write_sample_chat(path: Path, size_bytes: int, seed: int = 7) -> None:
    """A synthetic chat export of about ``size_bytes`` (deterministic for ``seed``)."""
    rng = random.Random(seed)  # noqa: S311 - sample data, not a secret
    written = 0
    with path.open("w", encoding="utf-8") as out:
        while written < size_bytes:
            line = (
                f"[2026-11-{rng.randint(1, 27):02d} {rng.randint(0, 23):02d}:"
                f"{rng.randint(0, 59):02d}] {rng.choice(_SAMPLE_PEOPLE)}: "
                f"{rng.choice(_SAMPLE_LINES)}\n"
            )
            out.write(line)
            written += len(line)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _with_progress(
    console: Console, label: str, total: int, work: Callable[[Callable[[int], object]], object]
) -> None:
    columns = (
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(label, total=total)
        work(lambda done: progress.update(task, completed=done))


def run_demo(options: DemoOptions, console: Console) -> int:  # noqa: PLR0915 - a script
    """Run the walk-through; returns 0 when every check held, 1 otherwise."""
    with tempfile.TemporaryDirectory(prefix="hsmvault-demo-", dir=options.workdir) as tmp:
        root = Path(tmp)
        chat = root / "chat-export.txt"
        encrypted = root / "chat-export.hsmvault"
        restored = root / "restored-chat-export.txt"

        console.rule("[bold]1. Back up a chat history on the old phone")
        write_sample_chat(chat, options.size_mib << 20)
        size = chat.stat().st_size
        backup_key = BackupKey.generate()
        _with_progress(
            console,
            "encrypting",
            size,
            lambda cb: encrypt_file(backup_key, chat, encrypted, progress=cb),
        )
        console.print(
            f"  {size / 2**20:.1f} MiB chat export -> {encrypted.stat().st_size / 2**20:.1f} MiB"
            " encrypted backup (AES-256-GCM chunks, docs/formats/backup.md)"
        )
        console.print(
            "  Users who want no server at all write the backup key down as 64 digits"
            " (shown here only so you can see the format):"
        )
        console.print(f"  [cyan]{format_64_digit_key(backup_key)}[/cyan]")

        console.rule("[bold]2. Protect the backup key with a PIN (OPAQUE, RFC 9807)")
        console.print(
            "  [yellow]The OPAQUE server runs in this process for now; the replicated HSM"
            " fleet that counts guesses is the next milestone.[/yellow]"
        )
        server = OpaqueServer.generate()
        user = b"user:alice"
        client = OpaqueClient()
        started = time.perf_counter()
        request, reg_state = client.start_registration(options.pin.encode())
        response = server.create_registration_response(request, user)
        registration = client.finish_registration(reg_state, response)
        record: RegistrationRecord = registration.record
        wrapped = wrap_backup_key(
            registration.export_key, backup_key, purpose=PURPOSE_OPAQUE_EXPORT_KEY, context=user
        )
        console.print(
            f"  registered in {time.perf_counter() - started:.2f} s (Argon2id on the client);"
            f" the server stores a {len(record.to_bytes())}-byte record and a"
            f" {len(wrapped)}-byte wrapped key, and learns nothing about the PIN"
        )

        def login(pin: str) -> BackupKey:
            ke1, state = client.start_login(pin.encode())
            ke2, server_state = server.start_login(ke1, user, record)
            result = client.finish_login(state, ke2)
            server.finish_login(server_state, result.ke3)
            return unwrap_backup_key(
                result.export_key, wrapped, purpose=PURPOSE_OPAQUE_EXPORT_KEY, context=user
            )

        console.rule("[bold]3. Restore on a new phone")
        wrong_pin = "000000" if options.pin != "000000" else "111111"
        try:
            login(wrong_pin)
        except InvalidLogin:
            console.print(f"  PIN {wrong_pin}: [red]refused[/red] (InvalidLogin), nothing learned")
        else:
            console.print("  [red]a wrong PIN was accepted: demo failed[/red]")
            return 1
        recovered = login(options.pin)
        console.print("  correct PIN: backup key recovered through OPAQUE")
        _with_progress(
            console,
            "decrypting",
            size,
            lambda cb: decrypt_file(recovered, encrypted, restored, progress=cb),
        )
        same = _sha256(chat) == _sha256(restored)
        verdict = "[green]identical[/green]" if same else "[red]DIFFERENT[/red]"
        console.print(f"  restored chat export is {verdict} to the original (SHA-256)")

        console.rule("[bold]4. The cloud cannot alter the backup unnoticed")
        data = bytearray(encrypted.read_bytes())
        data[len(data) // 2] ^= 0x01
        tampered = root / "tampered.hsmvault"
        tampered.write_bytes(bytes(data))
        try:
            decrypt_file(recovered, tampered, root / "never.txt")
        except VerificationError as err:
            console.print(f"  one flipped bit: [red]refused[/red] ({type(err).__name__}: {err})")
            caught = True
        else:
            caught = False
            console.print("  [red]a tampered backup was accepted: demo failed[/red]")
        console.rule()
        ok = same and caught
        console.print("[bold green]demo complete[/bold green]" if ok else "[bold red]demo FAILED")
        return 0 if ok else 1


# --------------------------------------------------------------------------- full walk
#
# ``hsmvault demo`` (without --offline): the same story through real processes and real
# HTTP — the SDK talks to the gateway, which relays to the HSM node processes.


class _DemoFailed(Exception):
    """A check of the guided walk did not hold."""


@dataclass
class _Fleet:
    """The deployment the walk runs on: started here, or the running ``hsmvault up``."""

    gateway_url: str
    trust: BundleFleetTrust
    namespace: str
    issuer: DevTokenIssuer
    stop_node: Callable[[int], object]
    start_node: Callable[[int], object]
    status: Callable[[], dict[str, Any]]
    temporary: bool


@contextmanager
def _deployment(config: DeploymentConfig, workdir: Path, console: Console) -> Iterator[_Fleet]:
    data = DataLayout(config.data_dir)
    state = read_state(data)
    if state is not None and state.get("gateway_url"):
        try:
            control_request(data, "status")
        except DeploymentError:
            state = None
    if state is not None and state.get("gateway_url"):
        console.print(f"  using the running deployment on {config.data_dir}")
        yield _Fleet(
            gateway_url=str(state["gateway_url"]),
            trust=_bundle_trust(data, str(state["witness_url"]), str(state["namespace"])),
            namespace=str(state["namespace"]),
            issuer=DevTokenIssuer.load_or_create(config.data_dir),
            stop_node=lambda i: control_request(data, "stop_node", {"index": i}),
            start_node=lambda i: control_request(data, "start_node", {"index": i}, 120),
            status=lambda: dict(control_request(data, "status")["status"]),
            temporary=False,
        )
        return
    temp_config = replace(
        config,
        data_dir=workdir / "deployment",
        node_base_port=0,
        gateway_port=0,
        witness_port=0,
    )
    console.print(
        "  no deployment is running: starting a temporary one (5 HSM node processes,"
        " the witness, gateway) — `hsmvault up` runs a lasting one"
    )
    deployment = LocalDeployment(temp_config)
    try:
        with _progress_steps(console, "forming the fleet", temp_config.nodes) as tick:
            deployment.open(progress=tick)
        with _progress_steps(console, "starting HSM nodes", temp_config.nodes) as tick:
            deployment.start(progress=tick)
        if deployment.gateway_url is None or deployment.witness_url is None:
            raise _DemoFailed(f"the gateway is not available: {deployment.gateway_note}")
        yield _Fleet(
            gateway_url=deployment.gateway_url,
            trust=_bundle_trust(deployment.data, deployment.witness_url, NAMESPACE),
            namespace=NAMESPACE,
            issuer=deployment.issuer,
            stop_node=deployment.stop_node,
            start_node=deployment.start_node,
            status=deployment.status,
            temporary=True,
        )
    finally:
        console.print("  stopping the temporary deployment")
        deployment.close()


def _bundle_trust(data: DataLayout, witness_url: str, namespace: str) -> BundleFleetTrust:
    """The phones' trust: the witness keys (``/info``) and the operator key of the
    deployment, pinned now; every session's validation bundle is verified under them."""
    operator = read_operator_public_key(data.root)
    if operator is None:
        raise _DemoFailed(f"{data.root} has no operator key")
    with WitnessClient(witness_url) as client:
        info = client.info()

    def consistency(first: int, second: int) -> list[bytes]:
        with WitnessClient(witness_url) as client:
            return list(client.consistency_proof(first, second).proof)

    policy = TrustPolicy(
        namespace=namespace,
        witness_keys=tuple(PinnedWitnessKey(k.public_key, k.not_before) for k in info.keys),
        operator_public_keys=(operator[0],),
        log_key=info.log_key,
        require_inclusion=True,
    )
    return BundleFleetTrust(
        BundleVerifier(policy, MemoryTrustStore(), consistency_fetcher=consistency)
    )


@contextmanager
def _progress_steps(
    console: Console, label: str, total: int
) -> Iterator[Callable[[int, int], None]]:
    columns = (
        "[progress.description]{task.description}",
        BarColumn(),
        "{task.completed}/{task.total}",
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(label, total=total)
        yield lambda done, of: progress.update(task, completed=done, total=of)


def _write_sample_dir(root: Path, size_bytes: int) -> None:
    """A chat export directory: the messages and a few small "media" files."""
    (root / "media").mkdir(parents=True)
    write_sample_chat(root / "messages.txt", size_bytes)
    rng = random.Random(11)  # noqa: S311 - sample data
    for i in range(3):
        (root / "media" / f"photo-{i}.jpg").write_bytes(rng.randbytes(48 * 1024))


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(_sha256(path).encode())
    return digest.hexdigest()


def _client(
    fleet: _Fleet, user: str, progress: Callable[[SdkProgress], object] | None = None
) -> VaultClient:
    return VaultClient(
        fleet.gateway_url,
        lambda: fleet.issuer.mint(user, 300),
        fleet_trust=fleet.trust,
        user_id=user,
        progress=progress,
    )


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise _DemoFailed(what)


def run_full_demo(options: DemoOptions, config: DeploymentConfig, console: Console) -> int:
    """The guided walk on real processes; returns 0 when every check held."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hsmvault-demo-", dir=options.workdir) as tmp:
        root = Path(tmp)
        try:
            console.rule("[bold]0. A deployment: HSM fleet, witness, gateway")
            with _deployment(config, root, console) as fleet:
                status = fleet.status()
                console.print(
                    f"  fleet {status['fleet_id'][:16]}…: {status['nodes_total']} nodes in"
                    f" {len(status['regions'])} regions, leader node-{status['leader']};"
                    f" gateway {fleet.gateway_url}"
                )
                witness = status.get("witness") or {}
                console.print(
                    f"  fleet keys published as epoch {witness.get('epoch')} of"
                    f" {fleet.namespace!r}: signed and logged by the witness, counter-signed"
                    " by the operator; the phones pin the witness and operator keys and"
                    " verify that validation bundle in every session"
                )
                _walk(options, fleet, root, console)
        except _DemoFailed as failed:
            console.print(f"[bold red]demo FAILED:[/bold red] {failed}")
            return 1
        except (VaultError, OSError) as exc:
            console.print(f"[bold red]demo FAILED:[/bold red] {type(exc).__name__}: {exc}")
            return 1
    console.rule()
    console.print(
        f"[bold green]demo complete[/bold green] in {time.perf_counter() - started:.0f} s:"
        " every check held"
    )
    return 0


def _walk(options: DemoOptions, fleet: _Fleet, root: Path, console: Console) -> None:  # noqa: PLR0915
    suffix = secrets.token_hex(3)
    user = f"alice-{suffix}" if not fleet.temporary else "alice"
    chats = root / "chats"
    _write_sample_dir(chats, options.size_mib << 20)
    original = _tree_digest(chats)
    size = sum(p.stat().st_size for p in chats.rglob("*") if p.is_file())

    console.rule("[bold]1. The old phone backs up its chat history")
    old_phone = DeviceKeystore(root / "old-phone")
    backup_key = BackupKey.generate()
    old_phone.store(backup_key)
    with _client(fleet, user) as client:
        _with_progress(
            console,
            "archive + encrypt + upload",
            size,
            lambda cb: _create_with(fleet, user, chats, backup_key, cb),
        )
        listed = {b.backup_id: b for b in client.list_backups()}
        _check("chats" in listed, "the backup is not listed")
        console.print(
            f"  {size / 2**20:.1f} MiB of chats -> {listed['chats'].size / 2**20:.1f} MiB of"
            " ciphertext at the gateway (it never sees the key)"
        )
        t0 = time.perf_counter()
        client.protect_with_pin(options.pin, backup_key, guess_limit=10)
        console.print(
            f"  backup key protected by PIN {options.pin} through OPAQUE in"
            f" {time.perf_counter() - t0:.1f} s (Argon2id on the phone; the fleet stores a"
            " sealed record and counts guesses; 10 allowed)"
        )
    console.print(
        "  the no-server option — the backup key as 64 digits:"
        f" [cyan]{format_64_digit_key(backup_key)}[/cyan]"
    )

    console.rule("[bold]2. A new phone restores it")
    new_phone = DeviceKeystore(root / "new-phone")
    wrong = "000000" if options.pin != "000000" else "111111"
    with _client(fleet, user) as client:
        try:
            client.recover(Pin(wrong))
        except SdkInvalidLogin as exc:
            console.print(
                f"  PIN {wrong}: [red]refused[/red] — {exc.attempts_remaining} attempts left"
            )
        else:
            raise _DemoFailed("a wrong PIN was accepted")
        recovered = client.recover(Pin(options.pin))
        new_phone.store(recovered)
        console.print("  right PIN: backup key recovered into the new phone's keystore")
        restored = root / "restored"
        client.restore_backup("chats", restored, backup_key=recovered)
    same = _tree_digest(restored) == original
    verdict = "[green]identical[/green]" if same else "[red]DIFFERENT[/red]"
    console.print(f"  restored chat history is {verdict} to the original (SHA-256 of every file)")
    _check(same, "the restored backup differs from the original")

    console.rule("[bold]3. The cloud cannot alter the backup unnoticed")
    ciphertext = root / "downloaded.hsmvault"
    response = httpx.get(
        f"{fleet.gateway_url}/v1/backups/chats",
        headers={"Authorization": f"Bearer {fleet.issuer.mint(user, 300)}"},
        timeout=30,
    )
    _check(response.status_code == 200, "the ciphertext could not be downloaded")
    data = bytearray(response.content)
    data[len(data) // 2] ^= 0x01
    ciphertext.write_bytes(bytes(data))
    try:
        decrypt_file(recovered, ciphertext, root / "never.tar")
    except VerificationError as err:
        console.print(
            f"  one flipped bit in the stored ciphertext: [red]refused[/red] ({type(err).__name__})"
        )
    else:
        raise _DemoFailed("a tampered backup was accepted")

    console.rule("[bold]4. Someone guesses the PIN: the fleet counts, then destroys the key")
    target = f"bob-{suffix}"
    limit = 5
    with _client(fleet, target) as client:
        client.protect_with_pin("913372", BackupKey.generate(), guess_limit=limit)
        console.print(f"  bob protects his key with a PIN, {limit} wrong guesses allowed")
        locked = False
        for guess in range(1, limit + 1):
            pin = f"{100000 + guess:06d}"
            try:
                client.recover(Pin(pin))
            except SdkInvalidLogin as exc:
                console.print(f"  guess {guess} ({pin}): wrong — {exc.attempts_remaining} left")
            except LockedOut:
                console.print(f"  guess {guess} ({pin}): wrong — [red]LOCKED OUT[/red], key erased")
                locked = True
                break
        _check(locked, "the guess limit did not lock the record")
        try:
            client.recover(Pin("913372"))
        except LockedOut:
            console.print(
                "  even the right PIN now gets [red]LockedOut[/red]: the key is gone for good"
            )
        else:
            raise _DemoFailed("the right PIN worked after the lockout")

    console.rule("[bold]5. The fleet survives two nodes down")
    status = fleet.status()
    leader = status["leader"] if status["leader"] is not None else 0
    down = [leader, (leader + 1) % status["nodes_total"]]
    for index in down:
        fleet.stop_node(index)
    console.print(
        f"  node-{down[0]} (the leader) and node-{down[1]} killed (SIGKILL);"
        f" {status['nodes_total'] - 2} of {status['nodes_total']} still run"
    )
    third = DeviceKeystore(root / "third-phone")
    with _client(fleet, user) as client:
        key = _retry_unavailable(lambda: client.recover(Pin(options.pin)), console)
        third.store(key)
        again = root / "restored-again"
        client.restore_backup("chats", again, backup_key=key)
    _check(_tree_digest(again) == original, "restore with two nodes down differs")
    after = fleet.status()
    console.print(
        f"  new leader node-{after['leader']} (term {after['term']}): the key was recovered"
        " and the backup restored, [green]identical[/green]"
    )
    for index in down:
        fleet.start_node(index)
    console.print(
        f"  node-{down[0]} and node-{down[1]} started again; they catch up from the others"
    )


def _create_with(
    fleet: _Fleet, user: str, path: Path, key: BackupKey, progress: Callable[[int], object]
) -> None:
    total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())

    def report(r: SdkProgress) -> None:
        if r.phase == "archive":
            progress(min(r.done, total))

    with _client(fleet, user, report) as client:
        client.create_backup(path, "chats", backup_key=key, label="chat history")
    progress(total)


_T = TypeVar("_T")


def _retry_unavailable(call: Callable[[], _T], console: Console, attempts: int = 20) -> _T:
    """``call``, retried while the fleet elects a new leader (Unavailable)."""
    for attempt in range(attempts):
        try:
            return call()
        except Unavailable:
            if attempt == 0:
                console.print("  (the fleet is electing a new leader: retrying)")
            time.sleep(0.5)
    return call()
