"""Real processes, real HTTP: ``hsmvault up`` in a subprocess, the CLI in others.

:class:`UpProcess` starts ``hsmvault up --json`` on a temporary data directory with
every port chosen free (``HSMVAULT_*_PORT=0``), waits for its ``ready`` event, and on
:meth:`stop` sends SIGTERM (then SIGKILL) to it and kills any node or witness process it
may have left behind, by the pids in the nodes' ready files and ``run/witness.pid``.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

READY_TIMEOUT = 120.0
CLI_TIMEOUT = 120.0


def deployment_env(data_dir: Path) -> dict[str, str]:
    # no HSMVAULT_* of ours, and no SoftHSM2 configuration another test may have selected
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("HSMVAULT_") and k != "SOFTHSM2_CONF"
    }
    env.update(
        HSMVAULT_HOME=str(data_dir),
        HSMVAULT_NODE_BASE_PORT="0",
        HSMVAULT_GATEWAY_PORT="0",
        HSMVAULT_WITNESS_PORT="0",
        PYTHONUNBUFFERED="1",
        COLUMNS="200",
    )
    return env


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


@dataclass
class UpProcess:
    """One ``hsmvault up`` and the CLI that talks to it."""

    hsmvault: Sequence[str]
    """argv prefix that runs the CLI (e.g. ``[python, -m, hsmvault.cli.main]``)."""
    data_dir: Path
    cwd: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    """More ``HSMVAULT_*`` settings for ``up`` and the CLI (e.g. the operator custody)."""
    proc: subprocess.Popen[bytes] | None = None
    ready: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {**deployment_env(self.data_dir), **self.extra_env}

    def start(self) -> dict[str, Any]:
        assert self.proc is None
        log = (self.data_dir.parent / f"{self.data_dir.name}-up.stderr").open("ab")
        self.proc = subprocess.Popen(
            [*self.hsmvault, "up", "--json"],
            stdout=subprocess.PIPE,
            stderr=log,
            env=self.env,
            cwd=self.cwd,
        )
        log.close()
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + READY_TIMEOUT
        buffer = b""
        while time.monotonic() < deadline:
            if not select.select([fd], [], [], 0.5)[0]:
                if self.proc.poll() is not None:
                    break
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                event: dict[str, Any] = json.loads(line)
                self.events.append(event)
                if event.get("event") == "ready":
                    self.ready = event
                    return event
                if event.get("event") == "error":
                    self.stop()
                    raise AssertionError(f"hsmvault up failed: {event}")
        self.stop()
        raise AssertionError(f"hsmvault up did not become ready: {self.events}")

    def state(self) -> dict[str, Any]:
        """The running ``up``'s ``run/state.json`` (gateway, witness, namespace)."""
        doc: dict[str, Any] = json.loads((self.data_dir / "run" / "state.json").read_text())
        return doc

    def cli(self, *args: str, stdin: str = "", device: Path | None = None) -> CliResult:
        argv = [*self.hsmvault, *args]
        if device is not None:
            argv += ["--device-dir", str(device)]
        done = subprocess.run(
            argv,
            input=stdin.encode(),
            capture_output=True,
            env=self.env,
            cwd=self.cwd,
            timeout=CLI_TIMEOUT,
            check=False,
        )
        return CliResult(done.returncode, done.stdout.decode(), done.stderr.decode())

    def secret(
        self, *args: str, user: str | None = None, stdin: str, device: Path | None = None
    ) -> CliResult:
        """``hsmvault secret ARGS... --secret-stdin [--user USER]`` with ``stdin`` (the
        secret, or the old and the new one, one a line) on its standard input."""
        who = () if user is None else ("--user", user)
        return self.cli("secret", *args, "--secret-stdin", *who, stdin=stdin, device=device)

    def stop(self) -> None:
        """SIGTERM ``up`` (SIGKILL after 30 s), then kill leftover node processes."""
        proc = self.proc
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()
            self.proc = None
        kill_leftover_nodes(self.data_dir)


def serving(deployment: UpProcess) -> Iterator[UpProcess]:
    """Start ``deployment``, yield it, and stop it afterwards (a module fixture's body:
    ``yield from serving(UpProcess(...))``)."""
    deployment.start()
    try:
        yield deployment
    finally:
        deployment.stop()


def ok(result: CliResult) -> CliResult:
    """``result``, asserting that the command exited 0 (its output in the message)."""
    assert result.code == 0, (result.stdout, result.stderr)
    return result


def kill_leftover_nodes(data_dir: Path) -> list[int]:
    """SIGKILL node processes of ``data_dir`` still alive (by their ready files), and
    its witness process (by ``run/witness.pid``)."""
    killed = []
    with contextlib.suppress(OSError, ValueError):
        pid = int((data_dir / "run" / "witness.pid").read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if b"hsmvault.transparency.witness" in cmdline and str(data_dir).encode() in cmdline:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    for ready in data_dir.glob("fleet/node-*/host/ready.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            pid = int(json.loads(ready.read_text())["pid"])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"hsmvault.hsm.node_process" in cmdline and str(data_dir).encode() in cmdline:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    return killed


def tree_digest(root: Path) -> dict[str, bytes]:
    """Relative path → bytes of every regular file (empty directories as b"<dir>")."""
    out: dict[str, bytes] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_dir():
            out[rel] = b"<dir>"
        elif path.is_file():
            out[rel] = path.read_bytes()
    return out
