"""``hsmvault demo``: a guided walk through what hsmvault can do today.

Until the HSM fleet exists (see README "Status"), the OPAQUE server here runs in this
process and is labelled as such; every other step is the real code path: the streaming
backup format, OPAQUE-3DH with Argon2id on the client, and the backup-key wrap.
"""

from __future__ import annotations

import hashlib
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from hsmvault.client.backup_files import decrypt_file, encrypt_file
from hsmvault.crypto.backup_stream import BackupKey
from hsmvault.crypto.key_wrap import PURPOSE_OPAQUE_EXPORT_KEY, unwrap_backup_key, wrap_backup_key
from hsmvault.crypto.opaque import OpaqueClient, OpaqueServer, RegistrationRecord
from hsmvault.errors import InvalidLogin, VerificationError

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


def format_64_digit_key(key: BackupKey) -> str:
    """BK as 64 hexadecimal digits in groups of four (the no-server option)."""
    digits = key.expose_secret().hex()
    return " ".join(digits[i : i + 4] for i in range(0, 64, 4))


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
