"""STUB: the witness of a local deployment, until the fleet-keys issue brings the real one.

The real witness signs validation bundles (the fleet's public keys) and logs every one
it signs (ARCHITECTURE "validation bundle"). This stub signs nothing: it serves the
fleet's public keys *as pinned in* ``fleet.json`` when the fleet was formed, so that the
CLI learns them from somewhere other than the gateway and can check that the gateway
serves the same ones. Every answer says ``"stub": true``, and ``hsmvault up`` says so in
its start-up output.

Routes (loopback only, GET only, JSON):

* ``/v1/health`` → ``{"status": "ok", "stub": true}``
* ``/v1/fleet-keys`` → ``{"stub": true, "note": ..., "public_keys": FleetPublicKeys}``
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Final

import httpx

from hsmvault.errors import DecodeError, Unavailable
from hsmvault.fleet.fleet_keys import FleetPublicKeys

__all__ = ["STUB_NOTE", "WitnessStub", "fetch_pinned_keys"]

STUB_NOTE: Final = (
    "witness STUB: serves the fleet keys pinned in fleet.json at formation; it signs and"
    " logs nothing (the real witness comes with the fleet-keys issue)"
)


class WitnessStub:
    """Serves ``public_keys`` on ``sock`` (an already bound loopback socket) in a thread."""

    def __init__(self, public_keys: FleetPublicKeys, sock: socket.socket) -> None:
        body_keys = json.dumps(
            {"stub": True, "note": STUB_NOTE, "public_keys": public_keys.to_dict()}
        ).encode()
        body_health = json.dumps({"status": "ok", "stub": True}).encode()

        class Handler(BaseHTTPRequestHandler):
            server_version = "hsmvault-witness-stub"

            def do_GET(self) -> None:
                routes = {"/v1/fleet-keys": body_keys, "/v1/health": body_health}
                body = routes.get(self.path.split("?", 1)[0])
                if body is None:
                    body = json.dumps({"error": "not_found", "detail": "no such route"}).encode()
                    self.send_response(404)
                else:
                    self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return  # quiet: the CLI prints its own output

        self._server = ThreadingHTTPServer(sock.getsockname()[:2], Handler, bind_and_activate=False)
        self._server.socket.close()
        self._server.socket = sock
        self._server.server_activate()
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="witness-stub", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.socket.getsockname()[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def fetch_pinned_keys(witness_url: str, timeout: float = 5.0) -> FleetPublicKeys:
    """The fleet public keys the witness (stub) serves; :class:`Unavailable` if it does
    not answer, :class:`DecodeError` if the answer is malformed."""
    try:
        response = httpx.get(f"{witness_url.rstrip('/')}/v1/fleet-keys", timeout=timeout)
    except httpx.HTTPError as exc:
        raise Unavailable(f"the witness did not answer ({type(exc).__name__})") from None
    if response.status_code != 200:
        raise Unavailable(f"the witness answered {response.status_code}")
    try:
        doc = response.json()
    except ValueError:
        raise DecodeError("the witness answer is not JSON") from None
    if not isinstance(doc, dict) or "public_keys" not in doc:
        raise DecodeError("the witness answer has no public_keys")
    return FleetPublicKeys.from_dict(doc["public_keys"])
