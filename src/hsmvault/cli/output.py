"""How the CLI speaks: rich text for people, one JSON document for scripts (``--json``).

Contract of ``--json``: stdout carries exactly one JSON document (``up --json`` is the
exception: one JSON object per line, see ``hsmvault up --help``); errors are
``{"error": "<code>", "detail": "<text>"}`` on stdout with a non-zero exit status. Exit
statuses (also in ``docs/operations.md``): 0 success, 1 error, 2 usage, 3 wrong secret,
4 locked out, 5 service unavailable.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from hsmvault.errors import InvalidLogin, LockedOut, Unavailable, VaultError

__all__ = [
    "EXIT_ERROR",
    "EXIT_LOCKED_OUT",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "EXIT_WRONG_SECRET",
    "Output",
    "error_code",
    "exit_status",
]

EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2
EXIT_WRONG_SECRET: Final = 3
EXIT_LOCKED_OUT: Final = 4
EXIT_UNAVAILABLE: Final = 5


def error_code(exc: BaseException) -> str:
    """A stable snake_case code for ``exc`` (the JSON ``error`` field)."""
    if isinstance(exc, InvalidLogin):
        return "invalid_login"
    if isinstance(exc, LockedOut):
        return "locked_out"
    if isinstance(exc, Unavailable):
        return "unavailable"
    name = type(exc).__name__
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


def exit_status(exc: BaseException) -> int:
    if isinstance(exc, InvalidLogin):
        return EXIT_WRONG_SECRET
    if isinstance(exc, LockedOut):
        return EXIT_LOCKED_OUT
    if isinstance(exc, Unavailable):
        return EXIT_UNAVAILABLE
    return EXIT_ERROR


class Output:
    """Where a command writes: people get ``console``; ``--json`` gets :meth:`data`."""

    def __init__(
        self,
        *,
        json_mode: bool = False,
        stdout: TextIO | None = None,
        console: Console | None = None,
    ) -> None:
        self.json_mode = json_mode
        self._stdout = stdout or sys.stdout
        # In JSON mode human text goes to stderr so stdout stays one document.
        self.console = console or Console(
            file=sys.stderr if json_mode else self._stdout, highlight=False
        )
        self.err = Console(file=sys.stderr, highlight=False)

    def say(self, text: str) -> None:
        """Human text (to stderr in JSON mode)."""
        self.console.print(text)

    def data(self, doc: Any) -> None:
        """The command's JSON document (JSON mode only)."""
        self._stdout.write(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
        self._stdout.flush()

    def line(self, doc: dict[str, Any]) -> None:
        """One compact JSON object on a line (``up --json`` events)."""
        self._stdout.write(json.dumps(doc, sort_keys=True, default=str) + "\n")
        self._stdout.flush()

    def error(self, exc: BaseException, *, hint: str | None = None) -> int:
        """Report ``exc``; returns the exit status for it."""
        detail = str(exc) or type(exc).__name__
        if self.json_mode:
            doc: dict[str, Any] = {"error": error_code(exc), "detail": detail}
            for attr in ("attempts_remaining", "retry_after"):
                value = getattr(exc, attr, None)
                if value is not None:
                    doc[attr] = value
            self.data(doc)
        else:
            self.err.print(f"[bold red]error:[/bold red] {detail}")
            if hint:
                self.err.print(f"  {hint}")
        return exit_status(exc)

    @contextmanager
    def bytes_progress(self, label: str, total: int | None) -> Iterator[Callable[[int], None]]:
        """A byte progress bar (silent in JSON mode); yields ``update(done_bytes)``."""
        if self.json_mode:
            yield lambda _done: None
            return
        columns = (
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=self.console, transient=False) as progress:
            task = progress.add_task(label, total=total)
            yield lambda done: progress.update(task, completed=done)

    @contextmanager
    def steps_progress(self, label: str, total: int) -> Iterator[Callable[[int, int], None]]:
        """A count progress bar (silent in JSON mode); yields ``update(done, total)``."""
        if self.json_mode:
            yield lambda _done, _total: None
            return
        columns = (
            SpinnerColumn(),
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
        )
        with Progress(*columns, console=self.console, transient=False) as progress:
            task = progress.add_task(label, total=total)
            yield lambda done, of: progress.update(task, completed=done, total=of)


def is_vault_error(exc: BaseException) -> bool:
    return isinstance(exc, VaultError)
