"""Running the gateway: :func:`run_gateway` (blocking, for the CLI) and
:class:`GatewayServer` (a background thread, for ``hsmvault up`` and tests).

Both bind to loopback by default. Binding elsewhere needs ``allow_remote=True``: the
gateway speaks plain HTTP, so anything beyond loopback belongs behind a TLS-terminating
proxy.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Self

import uvicorn
from fastapi import FastAPI

from hsmvault.errors import InvalidParameter, Unavailable
from hsmvault.host.fleet_client import FleetClient, FleetClientConfig
from hsmvault.host.storage.base import BlobStore, MetadataStore

from .app import FleetLike, create_app
from .config import GatewayConfig

__all__ = ["GatewayServer", "build_app", "run_gateway"]


def _check_host(host: str, allow_remote: bool) -> None:
    if allow_remote or host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise InvalidParameter("the gateway binds to loopback unless allow_remote=True")


def build_app(
    config: GatewayConfig,
    *,
    blobs: BlobStore,
    metadata: MetadataStore,
    fleets: Mapping[str, FleetLike] | None = None,
    fleet_client_config: FleetClientConfig | None = None,
) -> FastAPI:
    """:func:`~.app.create_app` with one :class:`FleetClient` per routing-table entry
    (``FleetClient.from_fleet_dir``) unless ``fleets`` is given."""
    if fleets is None:
        fleets = {
            name: FleetClient.from_fleet_dir(directory, fleet_client_config)
            for name, directory in config.fleets.items()
        }
    return create_app(config, fleets=fleets, blobs=blobs, metadata=metadata)


def run_gateway(
    config: GatewayConfig,
    *,
    blobs: BlobStore,
    metadata: MetadataStore,
    fleets: Mapping[str, FleetLike] | None = None,
    host: str = "127.0.0.1",
    port: int = 8080,
    allow_remote: bool = False,
    log_level: str = "info",
) -> None:
    """Serve the gateway until interrupted (blocking)."""
    _check_host(host, allow_remote)
    app = build_app(config, blobs=blobs, metadata=metadata, fleets=fleets)
    uvicorn.run(app, host=host, port=port, log_level=log_level, server_header=False)


class GatewayServer:
    """The gateway served by uvicorn in a daemon thread::

    with GatewayServer(app) as server:      # port 0: a free port is picked
        httpx.get(server.url + "/v1/health")
    """

    def __init__(
        self,
        app: FastAPI,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        allow_remote: bool = False,
        log_level: str = "warning",
    ) -> None:
        _check_host(host, allow_remote)
        self._config = uvicorn.Config(
            app, host=host, port=port, log_level=log_level, server_header=False, lifespan="off"
        )
        self._server = uvicorn.Server(self._config)
        self._thread: threading.Thread | None = None
        self._host = host

    @property
    def port(self) -> int:
        servers = getattr(self._server, "servers", [])
        for server in servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        raise Unavailable("the gateway is not listening")

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 10.0) -> str:
        """Start serving; the base URL once it listens."""
        self._thread = threading.Thread(target=self._server.run, name="gateway", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise Unavailable("the gateway did not start")
            time.sleep(0.01)
        return self.url

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
