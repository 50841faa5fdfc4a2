"""The gateway (ADR 0008): the untrusted HTTP front of the vault.

It authenticates the calling app's users (JWTs from the app's auth service), rate-limits
them, relays wire requests it cannot read to the user's fleet, and stores backup
ciphertext. Build it with :func:`create_app`; run it with :func:`run_gateway` or
:class:`GatewayServer` (:mod:`.server`).
"""

from __future__ import annotations

from .app import create_app
from .auth import DevTokenIssuer, InvalidToken, TokenVerifier
from .config import GatewayConfig, RateLimit
from .server import GatewayServer, build_app, run_gateway

__all__ = [
    "DevTokenIssuer",
    "GatewayConfig",
    "GatewayServer",
    "InvalidToken",
    "RateLimit",
    "TokenVerifier",
    "build_app",
    "create_app",
    "run_gateway",
]
