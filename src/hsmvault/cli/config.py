"""Configuration of ``hsmvault`` on one machine: a TOML file, ``HSMVAULT_*`` variables.

Precedence, lowest first: the defaults below, the TOML file, the environment, then
command-line flags (``--data-dir``, ``--config``). Every key is listed once, in
:data:`SETTINGS` (section, key, environment variable, default, meaning); the table in
``docs/operations.md`` is the same list, and a test keeps the two in step.

Where the file is: ``--config PATH``, else ``$HSMVAULT_CONFIG``, else
``<data dir>/hsmvault.toml`` if it exists (no file is fine: the defaults are a complete
local deployment). The data directory is ``--data-dir``, else ``$HSMVAULT_HOME``, else
``data_dir`` in the file, else ``~/.local/share/hsmvault``.

Contracts: :func:`load_config` raises :class:`ConfigError` (never a raw ``KeyError`` or
``TOMLDecodeError``) naming the file or variable and the key at fault; unknown sections or
keys are refused, so a typo cannot silently fall back to a default. Nothing here is a
secret; the configuration may be printed (``hsmvault config``).
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Literal

from hsmvault.errors import VaultError
from hsmvault.fleet.formation import DEFAULT_NODES, DEFAULT_REGIONS, MAX_NODES, MIN_NODES

__all__ = [
    "CONFIG_FILE_NAME",
    "DEFAULT_GATEWAY_PORT",
    "DEFAULT_NODE_BASE_PORT",
    "DEFAULT_WITNESS_PORT",
    "SETTINGS",
    "ConfigError",
    "DeploymentConfig",
    "Setting",
    "default_data_dir",
    "load_config",
    "render_toml",
]

CONFIG_FILE_NAME: Final = "hsmvault.toml"
DEFAULT_GATEWAY_PORT: Final = 8420
DEFAULT_WITNESS_PORT: Final = 8421
DEFAULT_NODE_BASE_PORT: Final = 8430
#: JWT lifetimes the gateway accepts (ADR 0008: at most 15 minutes).
MAX_TOKEN_LIFETIME_S: Final = 900

CustodyName = Literal["software", "softhsm"]


class ConfigError(VaultError):
    """The configuration file or an ``HSMVAULT_*`` variable is invalid."""


def default_data_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$HSMVAULT_HOME``, else ``$XDG_DATA_HOME/hsmvault``, else
    ``~/.local/share/hsmvault``."""
    env = os.environ if env is None else env
    if env.get("HSMVAULT_HOME"):
        return Path(env["HSMVAULT_HOME"]).expanduser()
    if env.get("XDG_DATA_HOME"):
        return Path(env["XDG_DATA_HOME"]).expanduser() / "hsmvault"
    return Path("~/.local/share/hsmvault").expanduser()


@dataclass(frozen=True)
class DeploymentConfig:
    """A local deployment and the CLI's client side, with documented limits.

    Ports: ``0`` means "any free port" (chosen when the fleet is formed for nodes — and
    then kept in ``fleet.json`` — or at each start for the gateway and witness). Every
    listener of ``hsmvault up`` binds a loopback address; a multi-host layout is described
    in ``docs/operations.md``.
    """

    data_dir: Path = field(default_factory=default_data_dir)
    # [fleet]
    nodes: int = DEFAULT_NODES
    regions: tuple[str, ...] = DEFAULT_REGIONS
    custody: CustodyName = "software"
    node_base_port: int = DEFAULT_NODE_BASE_PORT
    restart_crashed: bool = True
    start_timeout_s: float = 30.0
    # [gateway]
    gateway_host: str = "127.0.0.1"
    gateway_port: int = DEFAULT_GATEWAY_PORT
    # [witness]
    witness_port: int = DEFAULT_WITNESS_PORT
    # [operator]
    operator_custody: CustodyName = "software"
    # [client]
    user: str = "local-user"
    gateway_url: str = ""
    guess_limit: int = 10
    token_lifetime_s: int = 300

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def effective_gateway_url(self) -> str:
        """``gateway_url`` if set, else the local deployment's gateway."""
        if self.gateway_url:
            return self.gateway_url.rstrip("/")
        host = f"[{self.gateway_host}]" if ":" in self.gateway_host else self.gateway_host
        return f"http://{host}:{self.gateway_port}"

    def with_data_dir(self, data_dir: Path) -> DeploymentConfig:
        return replace(self, data_dir=data_dir)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly (paths and tuples as strings and lists)."""
        doc = asdict(self)
        doc["data_dir"] = str(self.data_dir)
        doc["regions"] = list(self.regions)
        return doc


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _validate(c: DeploymentConfig) -> None:
    if not MIN_NODES <= c.nodes <= MAX_NODES or c.nodes % 2 == 0:
        raise ConfigError(f"fleet.nodes must be odd, {MIN_NODES}..{MAX_NODES}")
    if not c.regions or any(
        not r or len(r) > 64 or not r.isascii() or not r.isprintable() for r in c.regions
    ):
        raise ConfigError("fleet.regions must be a non-empty list of short ASCII names")
    if c.custody not in ("software", "softhsm"):
        raise ConfigError("fleet.custody must be 'software' or 'softhsm'")
    if c.operator_custody not in ("software", "softhsm"):
        raise ConfigError("operator.custody must be 'software' or 'softhsm'")
    if c.node_base_port != 0 and not 1024 <= c.node_base_port <= 65535 - 2 * c.nodes:
        raise ConfigError("fleet.node_base_port must be 0 or 1024..65535 minus 2 per node")
    _validate_listeners(c)


def _validate_listeners(c: DeploymentConfig) -> None:
    for name, port in (("gateway.port", c.gateway_port), ("witness.port", c.witness_port)):
        if port != 0 and not 1024 <= port <= 65535:
            raise ConfigError(f"{name} must be 0 or 1024..65535")
    if c.gateway_port != 0 and c.gateway_port == c.witness_port:
        raise ConfigError("gateway.port and witness.port must differ")
    if not _is_loopback(c.gateway_host):
        raise ConfigError(
            "gateway.host must be a loopback address: hsmvault up serves this machine only"
            " (multi-host layout: docs/operations.md)"
        )
    if not c.start_timeout_s > 0:
        raise ConfigError("fleet.start_timeout_s must be positive")
    _validate_client(c)


def _validate_client(c: DeploymentConfig) -> None:
    if not 1 <= c.guess_limit <= 255:
        raise ConfigError("client.guess_limit must be 1..255")
    if not 1 <= len(c.user.encode()) <= 255 or not c.user.isprintable():
        raise ConfigError("client.user must be 1..255 bytes of printable text")
    if not 30 <= c.token_lifetime_s <= MAX_TOKEN_LIFETIME_S:
        raise ConfigError(f"client.token_lifetime_s must be 30..{MAX_TOKEN_LIFETIME_S}")
    if c.gateway_url and not c.gateway_url.startswith(("http://", "https://")):
        raise ConfigError("client.gateway_url must be an http:// or https:// URL")


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Setting:
    """One configuration key: where it lives in TOML, its variable, its field."""

    section: str
    key: str
    attr: str
    doc: str

    @property
    def env(self) -> str:
        if self.attr == "data_dir":
            return "HSMVAULT_HOME"
        return f"HSMVAULT_{self.attr.upper()}"


SETTINGS: Final[tuple[Setting, ...]] = (
    Setting("", "data_dir", "data_dir", "where the fleet, storage, keys and state live"),
    Setting("fleet", "nodes", "nodes", "HSM nodes (odd, 3..9); fixed when the fleet is formed"),
    Setting("fleet", "regions", "regions", "region names, dealt to nodes round-robin"),
    Setting("fleet", "custody", "custody", "node key custody: software or softhsm (SoftHSM2)"),
    Setting(
        "fleet",
        "node_base_port",
        "node_base_port",
        "node i gets Raft port base+2i and API port base+2i+1 (0: free ports at formation)",
    ),
    Setting("fleet", "restart_crashed", "restart_crashed", "restart a node that died by itself"),
    Setting("fleet", "start_timeout_s", "start_timeout_s", "seconds to wait for a node or leader"),
    Setting("gateway", "host", "gateway_host", "gateway listen address (loopback only)"),
    Setting("gateway", "port", "gateway_port", "gateway port (0: any free port)"),
    Setting("witness", "port", "witness_port", "witness port, same host (0: any free port)"),
    Setting(
        "operator",
        "custody",
        "operator_custody",
        "operator key custody: software (seed file) or softhsm (SoftHSM2 token)",
    ),
    Setting("client", "user", "user", "user id the CLI acts as (dev tokens' sub)"),
    Setting("client", "gateway_url", "gateway_url", "gateway the CLI talks to (empty: local)"),
    Setting("client", "guess_limit", "guess_limit", "wrong guesses before the key is destroyed"),
    Setting("client", "token_lifetime_s", "token_lifetime_s", "lifetime of dev tokens (30..900)"),
)

_BY_SECTION: Final = {(s.section, s.key): s for s in SETTINGS}


_TRUE: Final = ("1", "true", "yes", "on")
_FALSE: Final = ("0", "false", "no", "off")


def _to_bool(value: object, from_env: bool) -> object:
    if from_env and isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    if isinstance(value, bool):
        return value
    raise ValueError


def _to_int(value: object, from_env: bool) -> object:
    if from_env and isinstance(value, str):
        return int(value.strip())
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError


def _to_float(value: object, from_env: bool) -> object:
    if from_env and isinstance(value, str):
        return float(value.strip())
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise ValueError


def _to_tuple(value: object, from_env: bool) -> object:
    if from_env and isinstance(value, str):
        return tuple(p.strip() for p in value.split(",") if p.strip())
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError


def _to_path(value: object, from_env: bool) -> object:
    if isinstance(value, str) and value:
        return Path(value).expanduser()
    raise ValueError


def _to_str(value: object, from_env: bool) -> object:
    if isinstance(value, str):
        return value
    raise ValueError


#: Checked in order: bool before int (a bool is an int).
_CONVERTERS: Final[tuple[tuple[type, Callable[[object, bool], object]], ...]] = (
    (bool, _to_bool),
    (int, _to_int),
    (float, _to_float),
    (tuple, _to_tuple),
    (Path, _to_path),
    (str, _to_str),
)


def _convert(attr: str, value: object, where: str, *, from_env: bool = False) -> object:
    """A TOML value (or an environment string) as the field's type; ConfigError
    otherwise."""
    default = getattr(_DEFAULTS, attr)
    for kind, converter in _CONVERTERS:
        if isinstance(default, kind):
            try:
                return converter(value, from_env)
            except ValueError:
                name = "list of strings" if kind is tuple else kind.__name__
                if from_env and kind is tuple:
                    name += " (comma-separated)"
                raise ConfigError(f"{where}: expected {name}") from None
    raise ConfigError(f"{where}: unsupported setting")  # pragma: no cover


_DEFAULTS: Final = DeploymentConfig(data_dir=Path("/nonexistent"))


def _read_toml(path: Path) -> dict[str, object]:
    """``attr -> raw value`` from a TOML file, refusing unknown sections and keys."""
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({type(exc).__name__})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    out: dict[str, object] = {}
    for name, value in doc.items():
        if isinstance(value, dict):
            for key, inner in value.items():
                setting = _BY_SECTION.get((name, key))
                if setting is None:
                    raise ConfigError(f"{path}: unknown key [{name}] {key}")
                out[setting.attr] = _convert(setting.attr, inner, f"{path}: [{name}] {key}")
        else:
            setting = _BY_SECTION.get(("", name))
            if setting is None:
                raise ConfigError(f"{path}: unknown key or section {name!r}")
            out[setting.attr] = _convert(setting.attr, value, f"{path}: {name}")
    return out


def _read_env(env: Mapping[str, str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for setting in SETTINGS:
        raw = env.get(setting.env)
        if raw is None or raw == "":
            continue
        out[setting.attr] = _convert(setting.attr, raw, setting.env, from_env=True)
    return out


def load_config(
    *,
    config_file: Path | None = None,
    data_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> DeploymentConfig:
    """The effective configuration (see the module docstring for precedence).

    ``overrides`` maps field names to values from the command line (highest
    precedence)."""
    env = os.environ if env is None else env
    explicit = config_file or (Path(env["HSMVAULT_CONFIG"]) if env.get("HSMVAULT_CONFIG") else None)
    # The data dir decides where the default file is, so resolve it without the file
    # first; the file may then name a data dir of its own (lower than env / flags).
    pre_dir = data_dir or (Path(env["HSMVAULT_HOME"]) if env.get("HSMVAULT_HOME") else None)
    if explicit is not None:
        path: Path | None = explicit.expanduser()
        assert path is not None
        if not path.is_file():
            raise ConfigError(f"{path}: configuration file not found")
    else:
        candidate = (pre_dir or default_data_dir(env)).expanduser() / CONFIG_FILE_NAME
        path = candidate if candidate.is_file() else None
    values: dict[str, object] = {}
    if path is not None:
        values.update(_read_toml(path))
    values.update(_read_env(env))
    if data_dir is not None:
        values["data_dir"] = data_dir
    if "data_dir" not in values:
        values["data_dir"] = default_data_dir(env)
    values.update(overrides or {})
    values["data_dir"] = Path(str(values["data_dir"])).expanduser().absolute()
    try:
        return DeploymentConfig(**values)  # type: ignore[arg-type]
    except TypeError as exc:  # pragma: no cover - overrides name a field that is not one
        raise ConfigError(f"unknown setting: {exc}") from None


def render_toml(config: DeploymentConfig) -> str:
    """``config`` as a TOML file :func:`load_config` reads back (used by ``hsmvault
    config --toml`` and the docs)."""
    lines: list[str] = []
    section = None
    for s in SETTINGS:
        if s.section != section:
            if s.section:
                lines.append(f"\n[{s.section}]")
            section = s.section
        lines.append(f"{s.key} = {_toml_value(getattr(config, s.attr))}  # {s.doc}")
    return "\n".join(lines).lstrip("\n") + "\n"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'
