"""Real servers for the storage contract tests, on loopback only, always stopped.

* :func:`run_moto_server` starts ``moto_server -H 127.0.0.1 -p PORT`` (from the
  virtualenv of the running interpreter) and waits until it answers S3 requests.
* :func:`run_postgres` runs ``initdb`` into a fresh temporary directory and starts
  ``postgres`` on a free loopback port with its unix socket in that directory. PostgreSQL
  refuses to run as root, so under euid 0 every PostgreSQL command runs as the Debian
  ``postgres`` system user through ``setpriv`` (which execs, so the pid we hold is the
  server's) and the directory is chowned to it.

Missing binaries are a test *failure* with a clear message, never a skip: ``make test``
installs them (Debian's ``postgresql`` package, ``moto[server]`` in the dev extras).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
import psycopg
import pytest
from botocore.config import Config  # type: ignore[import-untyped]

LOOPBACK = "127.0.0.1"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def _stop(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Ask ``proc`` (a child we started) to stop with ``sig``; SIGKILL it if it lingers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return "(no log)"


# -- moto_server ----------------------------------------------------------------------


@dataclass(frozen=True)
class MotoServer:
    endpoint_url: str

    def client(self) -> Any:
        """A boto3 S3 client for this server (fixed dummy credentials, no retries storm)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",  # a fixed dummy for the local emulator
            config=Config(
                retries={"max_attempts": 2, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
                max_pool_connections=32,
                s3={"addressing_style": "path"},
            ),
        )


def _moto_binary() -> Path:
    candidate = Path(sys.executable).parent / "moto_server"
    if candidate.is_file():
        return candidate
    found = shutil.which("moto_server")
    if found is None:
        pytest.fail(
            "moto_server not found next to the interpreter or on PATH: install the dev "
            "extras (`make venv`, which installs moto[server])"
        )
    return Path(found)


@contextlib.contextmanager
def run_moto_server() -> Iterator[MotoServer]:
    binary = _moto_binary()
    with tempfile.TemporaryDirectory(prefix="hsmvault-moto-") as tmp:
        log_path = Path(tmp) / "moto.log"
        port = free_port()
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [str(binary), "-H", LOOPBACK, "-p", str(port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            server = MotoServer(f"http://{LOOPBACK}:{port}")
            client = server.client()
            deadline = time.monotonic() + START_TIMEOUT
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"moto_server exited at start:\n{_tail(log_path)}")
                try:
                    client.list_buckets()
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        pytest.fail(f"moto_server did not answer in time:\n{_tail(log_path)}")
                    time.sleep(0.1)
            yield server
        finally:
            _stop(proc, signal.SIGTERM)


# -- PostgreSQL -----------------------------------------------------------------------


@dataclass(frozen=True)
class PostgresServer:
    port: int
    socket_dir: Path
    user: str

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host={LOOPBACK} port={self.port} user={self.user} dbname={dbname}"


def postgres_bindir() -> Path:
    """The newest PostgreSQL server binaries: ``$PG_BINDIR``, Debian's
    ``/usr/lib/postgresql/<v>/bin``, or ``initdb`` on PATH. Fails the test if none."""
    candidates: list[Path] = []
    if env := os.environ.get("PG_BINDIR"):
        candidates.append(Path(env))
    debian = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates.extend(Path(p) for p in debian)
    if found := shutil.which("initdb"):
        candidates.append(Path(found).parent)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "postgres").is_file():
            return bindir
    pytest.fail(
        "PostgreSQL server binaries (initdb, postgres) not found in $PG_BINDIR, "
        "/usr/lib/postgresql/*/bin or PATH: install Debian's `postgresql` package "
        "(`make deps` does)"
    )


def _as_postgres_user(tmp: Path) -> list[str]:
    """The command prefix that drops root to the ``postgres`` user (empty if not root)."""
    if os.geteuid() != 0:
        return []
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail(
            "running as root, and PostgreSQL refuses root: the `postgres` system user "
            "(created by Debian's postgresql package) is missing"
        )
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("running as root needs `setpriv` (util-linux) to drop to `postgres`")
    os.chown(tmp, entry.pw_uid, entry.pw_gid)
    return [
        setpriv,
        f"--reuid={entry.pw_uid}",
        f"--regid={entry.pw_gid}",
        "--init-groups",
        "--",
    ]


@contextlib.contextmanager
def run_postgres() -> Iterator[PostgresServer]:
    bindir = postgres_bindir()
    # Not under pytest's tmp_path: /tmp/pytest-of-root is 0700 and `postgres` must
    # reach the directory. mkdtemp makes it 0700; it is chowned to the server's user.
    tmp = Path(tempfile.mkdtemp(prefix="hsmvault-pg-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        prefix = _as_postgres_user(tmp)
        data = tmp / "data"
        user = "hsmvault"
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        init = subprocess.run(
            [
                *prefix,
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                user,
                "-A",
                "trust",  # only loopback and a 0700 socket dir can reach it
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            capture_output=True,
            env=env,
            check=False,
            timeout=120,
        )
        if init.returncode != 0:
            pytest.fail(f"initdb failed:\n{init.stdout.decode()}\n{init.stderr.decode()}")
        log_path = tmp / "postgres.log"
        port = free_port()
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [
                    *prefix,
                    str(bindir / "postgres"),
                    "-D",
                    str(data),
                    "-k",
                    str(tmp),
                    "-h",
                    LOOPBACK,
                    "-p",
                    str(port),
                    "-c",
                    "fsync=off",  # a throwaway test cluster
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=200",
                    "-c",
                    "shared_buffers=32MB",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        server = PostgresServer(port=port, socket_dir=tmp, user=user)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"postgres exited at start:\n{_tail(log_path)}")
            try:
                with psycopg.connect(server.dsn(), connect_timeout=2):
                    break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    pytest.fail(f"postgres did not accept connections:\n{_tail(log_path)}")
                time.sleep(0.1)
        yield server
    finally:
        if proc is not None:
            _stop(proc, signal.SIGINT)  # "fast" shutdown
        shutil.rmtree(tmp, ignore_errors=True)
