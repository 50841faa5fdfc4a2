"""Running the gateway inside ``hsmvault up``: uvicorn in a thread, on a socket we bound.

The gateway itself (:mod:`hsmvault.host.gateway`, ADR 0008) is built by another issue;
this module only assembles it for a local deployment — filesystem blobs and SQLite
metadata in the data directory, the fleet of ``fleet.json``, and the dev token issuer
(:mod:`hsmvault.cli.dev_tokens`) as the only trusted issuer — and serves it on loopback.
"""

from __future__ import annotations

import importlib
import socket
import threading
import time
from pathlib import Path
from typing import Any, Final

import uvicorn

from hsmvault.cli.dev_tokens import AUDIENCE, DEV_ISSUER, DevTokenIssuer
from hsmvault.errors import Unavailable, VaultError
from hsmvault.fleet.formation import FleetLayout
from hsmvault.host.fleet_client import FleetClient, FleetClientConfig

__all__ = [
    "LOCAL_RATE",
    "GatewayMissing",
    "GatewayThread",
    "build_local_gateway_app",
    "gateway_available",
]

_START_TIMEOUT_S: Final = 20.0


class GatewayMissing(VaultError):
    """This checkout has no gateway yet (``hsmvault.host.gateway``)."""


def gateway_available() -> bool:
    """True when the gateway package imports in this checkout."""
    try:
        importlib.import_module("hsmvault.host.gateway")
    except ImportError:
        return False
    return True


#: A local deployment serves one person: its rate limits are generous (the gateway's
#: production defaults are in ``hsmvault.host.gateway.config``).
LOCAL_RATE: Final = (50.0, 500)


def build_local_gateway_app(layout: FleetLayout, gateway_dir: Path, issuer: DevTokenIssuer) -> Any:
    """The gateway's ASGI app for a local deployment (see the module docstring).

    Raises :class:`GatewayMissing` when the gateway package is absent."""
    if not gateway_available():
        raise GatewayMissing("the gateway (hsmvault.host.gateway) is not in this checkout yet")
    # Imported on demand: the CLI's other commands must not need the gateway.
    from hsmvault.host.gateway import GatewayConfig, RateLimit, create_app  # noqa: PLC0415
    from hsmvault.host.storage.filesystem import FilesystemBlobStore  # noqa: PLC0415
    from hsmvault.host.storage.sqlite import SqliteMetadataStore  # noqa: PLC0415

    gateway_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    rate = RateLimit(*LOCAL_RATE)
    config = GatewayConfig(
        issuer_public_keys=(issuer.public_key_pem(),),
        issuer=DEV_ISSUER,
        audience=AUDIENCE,
        user_rate=rate,
        address_rate=rate,
        fleets={"default": str(layout.base_dir)},
        default_fleet="default",
    )
    fleet = FleetClient(
        layout.api_addresses,
        FleetClientConfig(connect_timeout=0.5, request_timeout=10.0),
        public_keys=layout.public_keys,
    )
    return create_app(
        config,
        fleets={"default": fleet},
        blobs=FilesystemBlobStore(gateway_dir / "blobs"),
        metadata=SqliteMetadataStore(gateway_dir / "metadata.sqlite3"),
        # The passkey page's test sign-in: only because this deployment's one issuer is
        # the development issuer anyway (anyone on this machine can mint its tokens).
        test_login=issuer.mint,
    )


class GatewayThread:
    """uvicorn serving ``app`` on ``sock`` (bound by the caller) in a daemon thread."""

    def __init__(self, app: Any, sock: socket.socket) -> None:
        self._sock = sock
        config = uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=5
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="gateway", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    def start(self) -> None:
        """Start serving; :class:`Unavailable` if uvicorn did not start in time."""
        self._thread.start()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive():
                raise Unavailable("the gateway stopped during start-up (see logs/gateway.log)")
            if time.monotonic() > deadline:
                raise Unavailable("the gateway did not start in time")
            time.sleep(0.02)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()
