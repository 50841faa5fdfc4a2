"""Running the witness: :func:`run_witness` (blocking, for the command line),
:class:`WitnessServer` (uvicorn in a thread of this process) and
:class:`WitnessProcess` (the witness in a process of its own, as an independent party
would run it — required for the ``softhsm`` key backend when this process already uses
another SoftHSM2 configuration).

Every variant binds to loopback unless ``allow_remote`` is set: the witness speaks plain
HTTP, so anything beyond loopback belongs behind a TLS-terminating proxy.
"""

from __future__ import annotations

import ipaddress
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import uvicorn

from hsmvault.closing import ClosingContext
from hsmvault.errors import InvalidParameter, Unavailable

from .app import DEFAULT_MAX_BODY, create_app
from .core import Witness, default_clock

__all__ = ["WitnessConfig", "WitnessProcess", "WitnessServer", "bind_socket", "run_witness"]

_START_TIMEOUT: Final = 30.0


@dataclass(frozen=True)
class WitnessConfig:
    """How to run a witness over an initialised data directory (``init`` first).

    ``pkcs11_pin`` (for the ``pkcs11`` key backend; kept out of repr) falls back to
    ``$HSMVAULT_WITNESS_PIN``. ``clock`` returns milliseconds since the Unix epoch (tests
    inject one). ``port`` 0 picks a free port.
    """

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    allow_remote: bool = False
    pkcs11_pin: str | None = field(default=None, repr=False, compare=False)
    clock: Callable[[], int] = default_clock
    log_level: str = "warning"
    max_body: int = DEFAULT_MAX_BODY

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise InvalidParameter("port must be 0..65535")
        if not (self.allow_remote or self.host == "localhost"):
            try:
                loopback = ipaddress.ip_address(self.host).is_loopback
            except ValueError:
                loopback = False
            if not loopback:
                raise InvalidParameter("the witness binds to loopback unless allow_remote=True")


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.set_inheritable(True)
    except BaseException:
        sock.close()
        raise
    return sock


def _nodelay(sock: socket.socket) -> socket.socket:
    # Accepted connections inherit it; without it a pre-bound socket answers each
    # keep-alive request only after the peer's delayed ACK (~40 ms).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def _uvicorn_server(witness: Witness, config: WitnessConfig) -> uvicorn.Server:
    app = create_app(witness, max_body=config.max_body)
    return uvicorn.Server(
        uvicorn.Config(
            app,
            log_level=config.log_level,
            server_header=False,
            date_header=False,
            lifespan="off",
            access_log=False,
        )
    )


def run_witness(
    config: WitnessConfig,
    *,
    sock: socket.socket | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Open the witness and serve it until interrupted (SIGINT/SIGTERM); blocking.
    ``on_ready(url)`` is called once the socket listens."""
    witness = Witness.open(config.data_dir, pkcs11_pin=config.pkcs11_pin, clock=config.clock)
    try:
        listening = _nodelay(sock if sock is not None else bind_socket(config.host, config.port))
        try:
            server = _uvicorn_server(witness, config)
            if on_ready is not None:
                on_ready(_url(listening))
            server.run(sockets=[listening])
        finally:
            listening.close()
    finally:
        witness.close()


class WitnessServer(ClosingContext):
    """The witness served by uvicorn in a daemon thread of this process::

        with WitnessServer(WitnessConfig(data_dir)) as server:
            WitnessClient(server.url).info()

    The constructor opens (and re-verifies) the witness and starts serving; raises
    WitnessStateError/CustodyError if it cannot open, Unavailable if it does not start.
    """

    def __init__(self, config: WitnessConfig, *, sock: socket.socket | None = None) -> None:
        self.witness = Witness.open(
            config.data_dir, pkcs11_pin=config.pkcs11_pin, clock=config.clock
        )
        try:
            self._sock = _nodelay(
                sock if sock is not None else bind_socket(config.host, config.port)
            )
            self.url = _url(self._sock)
            self._server = _uvicorn_server(self.witness, config)
            self._thread = threading.Thread(
                target=self._server.run,
                kwargs={"sockets": [self._sock]},
                name="witness",
                daemon=True,
            )
            self._thread.start()
            deadline = time.monotonic() + _START_TIMEOUT
            while not self._server.started:
                if not self._thread.is_alive() or time.monotonic() > deadline:
                    raise Unavailable("the witness did not start")
                time.sleep(0.01)
        except BaseException:
            self.close()
            raise

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def close(self, timeout: float = 10.0) -> None:
        """Stop serving, close the witness (store, keys, directory lock); idempotent."""
        server = getattr(self, "_server", None)
        thread = getattr(self, "_thread", None)
        if server is not None:
            server.should_exit = True
        if thread is not None and thread.is_alive():
            thread.join(timeout)
        sock = getattr(self, "_sock", None)
        if sock is not None:
            sock.close()
        self.witness.close()


class WitnessProcess(ClosingContext):
    """``python -m hsmvault.transparency.witness serve`` in a child process.

    The child prints one JSON line ``{"url": ...}`` once it listens; :attr:`url` is it.
    ``env`` is added to this process's environment for the child (e.g. a PIN); stderr is
    inherited. Raises Unavailable if the child exits or says nothing within the timeout.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 0,
        env: Mapping[str, str] | None = None,
        extra_args: tuple[str, ...] = (),
        timeout: float = _START_TIMEOUT,
    ) -> None:
        argv = [
            sys.executable,
            "-m",
            "hsmvault.transparency.witness",
            "serve",
            "--data-dir",
            str(data_dir),
            "--port",
            str(port),
            *extra_args,
        ]
        child_env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
        child_env.update(env or {})
        self._proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            argv, stdout=subprocess.PIPE, env=child_env, start_new_session=True
        )
        try:
            self.url = self._read_ready(timeout)
        except BaseException:
            self.close()
            raise

    def _read_ready(self, timeout: float) -> str:
        stdout = self._proc.stdout
        assert stdout is not None
        ready, _, _ = select.select([stdout], [], [], timeout)
        line = stdout.readline() if ready else b""
        try:
            obj = json.loads(line)
            url = obj["url"]
        except (ValueError, KeyError, TypeError):
            code = self._proc.poll()
            raise Unavailable(f"the witness process did not start (exit status {code})") from None
        if not isinstance(url, str) or not url.startswith("http://"):
            raise Unavailable("the witness process announced no URL")
        return url

    @property
    def pid(self) -> int:
        return self._proc.pid

    def close(self, timeout: float = 10.0) -> int | None:
        """Stop the child (SIGTERM, then SIGKILL); its exit status."""
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        return self._proc.returncode
