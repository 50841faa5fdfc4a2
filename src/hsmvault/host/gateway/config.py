"""The gateway's configuration: every limit and default in one place (ADR 0008).

Load it from the ``[gateway]`` table of a TOML file::

    [gateway]
    issuer = "https://auth.example.com"          # the app's auth service (JWT "iss")
    audience = "hsmvault"                        # JWT "aud"
    issuer_public_keys = ["-----BEGIN PUBLIC KEY-----\\n..."]   # PEM, Ed25519 or P-256
    issuer_public_key_files = ["/etc/hsmvault/issuer.pem"]     # or read from files
    token_max_lifetime = 900                     # seconds, exp - iat
    leeway = 30                                  # seconds of clock skew
    session_ttl = 420                            # seconds a login session is routed
    max_sessions = 100000
    max_upload_chunk = 8388608                   # bytes per PUT
    max_backup_size = 68719476736                # bytes per backup
    default_fleet = "default"
    passkey_rp_id = "example.com"                # WebAuthn RP id (ADR 0011; not an IP)
    passkey_origins = ["https://example.com"]    # pages allowed to use passkeys

    [gateway.rate_limits.user]                   # token bucket per token user
    rate = 5.0                                   # requests per second, sustained
    burst = 30                                   # bucket size

    [gateway.rate_limits.address]                # token bucket per client address
    rate = 20.0
    burst = 100

    [gateway.fleets]                             # the routing table: name -> fleet dir
    default = "/var/lib/hsmvault/fleet"

    # fleet rotation (ADR 0013): names in [gateway.fleets] that take no new users
    # retiring_fleets = ["old"]

``GatewayConfig.from_toml(tomllib.load(f)["gateway"])`` or
``GatewayConfig.from_toml_file(path)``. Unknown keys are refused
(:class:`~hsmvault.errors.InvalidParameter`): a typo must not silently fall back to a
default.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from fido2.rpid import verify_rp_id

from hsmvault.errors import InvalidParameter

__all__ = [
    "DEFAULT_AUDIENCE",
    "MAX_TOKEN_LIFETIME",
    "GatewayConfig",
    "RateLimit",
]

#: The ``aud`` every token must carry (ADR 0008).
DEFAULT_AUDIENCE: Final = "hsmvault"
#: ADR 0008 caps a token's lifetime (``exp - iat``) at 15 minutes.
MAX_TOKEN_LIFETIME: Final = 900.0
#: ADR 0008: at most 8 MiB per upload request.
MAX_UPLOAD_CHUNK: Final = 8 * 1024 * 1024


@dataclass(frozen=True)
class RateLimit:
    """A token bucket: ``rate`` requests per second sustained, ``burst`` at once."""

    rate: float
    burst: int

    def __post_init__(self) -> None:
        if not (self.rate > 0 and isinstance(self.burst, int) and self.burst >= 1):
            raise InvalidParameter("a rate limit needs rate > 0 and burst >= 1")


def _frozen(mapping: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class GatewayConfig:
    """What the gateway enforces. Defaults follow ADR 0008.

    * ``issuer_public_keys`` — PEM public keys of the app's auth service (Ed25519 for
      ``EdDSA``, P-256 for ``ES256``); a token verifies if any key of its algorithm
      accepts it (so keys can be rotated by listing old and new). At least one.
    * ``issuer`` / ``audience`` — required ``iss`` / ``aud`` claims.
    * ``token_max_lifetime`` — largest ``exp - iat`` accepted (≤ 900 s, ADR 0008).
    * ``leeway`` — clock skew tolerated on ``exp`` and ``iat`` (30 s).
    * ``user_rate`` / ``address_rate`` — token buckets per token user and per client
      address (the address bucket also applies before authentication).
    * ``session_ttl`` — how long a login session stays routed: the node's login TTL
      (120 s) plus its authenticated-session TTL (300 s).
    * ``max_sessions`` — bound on the session routing table (oldest dropped first).
    * ``max_upload_chunk`` — bytes per upload request (≤ 8 MiB).
    * ``max_backup_size`` — declared size of one backup (64 GiB).
    * ``max_vault_request`` — bytes of one wire request (the largest is ~2.2 KiB).
    * ``fleets`` — the routing table, fleet name → fleet directory (``fleet.json``);
      users are spread over the names by consistent hashing (:mod:`hsmvault.host.routing`).
    * ``retiring_fleets`` — names in ``fleets`` that take no new users (ADR 0013): their
      users stay until the SDK moves them at their next recovery; everyone else without
      a fleet assignment goes to the other (*active*) fleets. At least one fleet must
      stay active, and ``default_fleet`` must be one.
    * ``default_fleet`` — the fleet whose keys ``GET /v1/fleet`` shows without a token.
    * ``passkey_rp_id`` — the WebAuthn relying party id of ``/v1/passkeys`` (ADR 0011):
      a domain name (``localhost`` by default), never an IP address.
    * ``passkey_origins`` — the exact origins (``scheme://host[:port]``) whose
      WebAuthn answers are accepted; each must be valid for the RP id (``https``, or
      ``http`` on ``localhost``). Empty (the default): ``http://localhost:<port>``, the
      port being the one the gateway serves the request on.
    """

    issuer_public_keys: tuple[str, ...]
    issuer: str
    audience: str = DEFAULT_AUDIENCE
    token_max_lifetime: float = MAX_TOKEN_LIFETIME
    leeway: float = 30.0
    user_rate: RateLimit = field(default_factory=lambda: RateLimit(5.0, 30))
    address_rate: RateLimit = field(default_factory=lambda: RateLimit(20.0, 100))
    session_ttl: float = 420.0
    max_sessions: int = 100_000
    max_upload_chunk: int = MAX_UPLOAD_CHUNK
    max_backup_size: int = 64 * 1024**3
    max_vault_request: int = 64 * 1024
    fleets: Mapping[str, str] = field(default_factory=lambda: _frozen({"default": "fleet"}))
    retiring_fleets: tuple[str, ...] = ()
    default_fleet: str = "default"
    passkey_rp_id: str = "localhost"
    passkey_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "issuer_public_keys", tuple(self.issuer_public_keys))
        object.__setattr__(self, "passkey_origins", tuple(self.passkey_origins))
        _check_passkey_settings(self.passkey_rp_id, self.passkey_origins)
        object.__setattr__(self, "fleets", _frozen(self.fleets))
        if not self.issuer_public_keys or not all(
            isinstance(k, str) and "PUBLIC KEY" in k for k in self.issuer_public_keys
        ):
            raise InvalidParameter("issuer_public_keys: at least one PEM public key")
        if not self.issuer or not self.audience:
            raise InvalidParameter("issuer and audience must be non-empty")
        if not 0 < self.token_max_lifetime <= MAX_TOKEN_LIFETIME:
            raise InvalidParameter(f"token_max_lifetime must be in (0, {MAX_TOKEN_LIFETIME}]")
        if not 0 <= self.leeway <= 300:
            raise InvalidParameter("leeway must be in 0..300 seconds")
        if not (self.session_ttl > 0 and self.max_sessions >= 1):
            raise InvalidParameter("session_ttl must be > 0 and max_sessions >= 1")
        if not 1 <= self.max_upload_chunk <= MAX_UPLOAD_CHUNK:
            raise InvalidParameter(f"max_upload_chunk must be in 1..{MAX_UPLOAD_CHUNK}")
        if not (self.max_backup_size >= 1 and self.max_vault_request >= 1024):
            raise InvalidParameter("max_backup_size >= 1 and max_vault_request >= 1024")
        if not self.fleets:
            raise InvalidParameter("fleets: the routing table needs at least one fleet")
        if self.default_fleet not in self.fleets:
            raise InvalidParameter("default_fleet must be a name in fleets")
        self._check_retiring()

    def _check_retiring(self) -> None:
        """``retiring_fleets``: distinct names of ``fleets``, not all of them, not the
        default fleet (ADR 0013)."""
        if isinstance(self.retiring_fleets, str):
            raise InvalidParameter("retiring_fleets is a list of fleet names")
        object.__setattr__(self, "retiring_fleets", tuple(self.retiring_fleets))
        retiring = set(self.retiring_fleets)
        if len(retiring) != len(self.retiring_fleets) or not retiring <= set(self.fleets):
            raise InvalidParameter("retiring_fleets must be distinct names in fleets")
        if retiring == set(self.fleets):
            raise InvalidParameter("retiring_fleets: at least one fleet must stay active")
        if self.default_fleet in retiring:
            raise InvalidParameter("default_fleet must be an active (not retiring) fleet")

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_toml(cls, table: Mapping[str, Any], *, base_dir: Path | None = None) -> GatewayConfig:
        """Build from the ``[gateway]`` table of a TOML document (already parsed).
        Relative paths (key files, fleet dirs) are resolved against ``base_dir``."""
        known = {f for f in cls.__dataclass_fields__ if f not in ("user_rate", "address_rate")}
        known |= {"rate_limits", "issuer_public_key_files"}
        unknown = set(table) - known
        if unknown:
            raise InvalidParameter(f"gateway config: unknown keys {sorted(unknown)}")
        base = base_dir or Path.cwd()
        values: dict[str, Any] = {
            k: v
            for k, v in table.items()
            if k not in ("rate_limits", "issuer_public_key_files", "fleets")
        }
        keys = list(table.get("issuer_public_keys", []))
        for name in table.get("issuer_public_key_files", []):
            keys.append((base / str(name)).read_text())
        values["issuer_public_keys"] = tuple(keys)
        limits = table.get("rate_limits", {})
        if not isinstance(limits, Mapping) or set(limits) - {"user", "address"}:
            raise InvalidParameter("gateway config: rate_limits has only user and address")
        for which in ("user", "address"):
            if which in limits:
                values[f"{which}_rate"] = _rate_limit(limits[which])
        if "fleets" in table:
            fleets = table["fleets"]
            if not isinstance(fleets, Mapping):
                raise InvalidParameter("gateway config: fleets is a table name -> directory")
            values["fleets"] = {str(n): str(base / str(d)) for n, d in fleets.items()}
        try:
            return cls(**values)
        except TypeError as exc:
            raise InvalidParameter(f"gateway config: {exc}") from None

    @classmethod
    def from_toml_file(cls, path: str | Path) -> GatewayConfig:
        """Read the ``[gateway]`` table of the TOML file at ``path``."""
        path = Path(path)
        with path.open("rb") as f:
            document = tomllib.load(f)
        table = document.get("gateway")
        if not isinstance(table, dict):
            raise InvalidParameter(f"{path}: no [gateway] table")
        return cls.from_toml(table, base_dir=path.parent)


_DOMAIN_LABEL: Final = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def _check_passkey_settings(rp_id: object, origins: tuple[object, ...]) -> None:
    """ADR 0011: the RP id is a lowercase domain name, not an IP address; every origin is
    ``scheme://host[:port]`` and valid for that RP id (WebAuthn §5.1.3 via python-fido2's
    ``verify_rp_id``: ``https``, or ``http`` on ``localhost``)."""
    if (
        not isinstance(rp_id, str)
        or not 0 < len(rp_id) <= 253
        or not all(_DOMAIN_LABEL.fullmatch(label) for label in rp_id.split("."))
    ):
        raise InvalidParameter("passkey_rp_id must be a lowercase domain name")
    try:
        ipaddress.ip_address(rp_id)
    except ValueError:
        pass
    else:
        raise InvalidParameter("passkey_rp_id must be a domain name, not an IP address")
    for origin in origins:
        if not isinstance(origin, str):
            raise InvalidParameter("passkey_origins must be strings")
        parts = urllib.parse.urlsplit(origin)
        canonical = f"{parts.scheme}://{parts.netloc}"
        try:
            _ = parts.port  # a port must be a number in range
        except ValueError:
            raise InvalidParameter("a passkey origin has an invalid port") from None
        if origin != canonical or not parts.hostname or parts.username or parts.password:
            raise InvalidParameter("a passkey origin is scheme://host[:port], nothing more")
        if not verify_rp_id(rp_id, origin):
            raise InvalidParameter("a passkey origin is not valid for passkey_rp_id")


def _rate_limit(value: object) -> RateLimit:
    if not isinstance(value, Mapping) or set(value) != {"rate", "burst"}:
        raise InvalidParameter("gateway config: a rate limit is {rate, burst}")
    return RateLimit(float(value["rate"]), int(value["burst"]))
