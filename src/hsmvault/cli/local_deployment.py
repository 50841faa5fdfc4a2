"""A complete hsmvault deployment on one machine: what ``hsmvault up`` runs.

Everything lives in one data directory (:class:`DataLayout`)::

    <data dir>/hsmvault.toml       optional configuration (cli.config)
    <data dir>/fleet/              the formed fleet (fleet.formation): fleet.json and
                                   node-<i>/nvram/ (HSM-inside stand-in) + node-<i>/host/
    <data dir>/gateway/blobs/      backup ciphertext (filesystem blob store)
    <data dir>/gateway/metadata.sqlite3   backup metadata (SQLite)
    <data dir>/dev-issuer/         DEVELOPMENT ONLY token signing key (cli.dev_tokens)
    <data dir>/witness/            the witness's own data directory (its keys, admin
                                   token and append-only log; transparency.witness)
    <data dir>/operator/           the operator key (cli.operator_key)
    <data dir>/device/             the CLI's own device keystore (the client side)
    <data dir>/run/                up.lock, state.json (control endpoint; 0600)
    <data dir>/logs/               deployment.log

:class:`LocalDeployment` (one per ``up``): takes the data directory's lock, forms the
fleet the first time (later starts reuse it: no data is lost across restarts), starts
one ``python -m hsmvault.hsm.node_process`` per node and supervises them (a node that
dies by itself is restarted with back-off unless it was stopped on purpose; a node that
keeps refusing to start is marked ``failed`` with the error line it printed), runs the
**witness** in a process of its own (:class:`~hsmvault.transparency.witness.WitnessProcess`,
initialised on first start, namespace :data:`NAMESPACE` registered under the operator
key), publishes a validation bundle through :class:`~hsmvault.host.publisher.Publisher`
when the fleet serves none or the last epoch is older than half the clients' freshness
window (also checked hourly while running) — *before* the gateway accepts traffic —
serves the gateway on loopback, and answers a **control endpoint** — loopback
TCP, one JSON line in and out, authenticated by a random token in ``run/state.json``
(mode 0600) — so that ``hsmvault status``, ``hsmvault node stop|start`` and ``hsmvault
fleet publish-keys`` (separate processes) act on it. :func:`control_request` and
:func:`collect_status` are the other side.

Node processes run in their own process group, so a Ctrl-C in the terminal reaches only
``up``, which then stops the gateway and the nodes in order (SIGTERM, then SIGKILL after
a grace period). If ``up`` itself was killed, the next ``up`` finds the orphans by their
ready files (and the witness by ``run/witness.pid``) and stops them before it starts new
ones.
"""

from __future__ import annotations

import contextlib
import fcntl
import hmac
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import httpx

from hsmvault.cli.config import DeploymentConfig
from hsmvault.cli.dev_tokens import DevTokenIssuer
from hsmvault.cli.gateway_host import (
    GatewayMissing,
    GatewayThread,
    build_local_gateway_app,
)
from hsmvault.cli.operator_key import OperatorKey, open_operator_key, read_operator_public_key
from hsmvault.errors import DecodeError, Unavailable, VaultError
from hsmvault.evidence.folder import evidence_digest
from hsmvault.fleet.formation import (
    FLEET_FILE,
    LOOPBACK,
    FleetLayout,
    NodeLayout,
    form_fleet,
)
from hsmvault.fleet.node_api import NodeInfo
from hsmvault.host.fleet_client import FleetClient, FleetClientConfig
from hsmvault.host.publisher import (
    DEFAULT_FRESHNESS_S,
    PublishedFleet,
    Publisher,
    PublishResult,
)
from hsmvault.transparency.witness import WitnessProcess, init_data_dir, read_admin_token
from hsmvault.transparency.witness.cli import DEFAULT_NAME as WITNESS_NAME
from hsmvault.transparency.witness_client import WitnessClient

__all__ = [
    "NAMESPACE",
    "REPUBLISH_AFTER_S",
    "DataLayout",
    "DeploymentError",
    "LocalDeployment",
    "NodeState",
    "collect_status",
    "control_request",
    "read_state",
]

STATE_VERSION: Final = 1
_READY_FILE: Final = "ready.json"
_GRACE_S: Final = 5.0
_MONITOR_INTERVAL_S: Final = 0.25
#: A node that exits within this many seconds of starting counts as a failed start.
_QUICK_EXIT_S: Final = 10.0
#: Failed starts in a row before a node is marked ``failed`` and left alone.
_MAX_FAILED_STARTS: Final = 5
_CONTROL_TIMEOUT_S: Final = 30.0
#: The namespace a local deployment publishes its fleet directory under.
NAMESPACE: Final = "hsmvault/local"
#: Re-publish when the last epoch is older than half the clients' freshness window.
REPUBLISH_AFTER_S: Final = DEFAULT_FRESHNESS_S // 2
_REPUBLISH_CHECK_S: Final = 3600.0
_WITNESS_PID_FILE: Final = "witness.pid"
_REGION_OK: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")

NodeState = Literal["starting", "running", "stopped", "crashed", "failed"]
Reporter = Callable[[str], None]


class DeploymentError(VaultError):
    """The local deployment cannot start or act (messages are meant for the operator)."""


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class DataLayout:
    """Paths inside one data directory (see the module docstring)."""

    root: Path

    @property
    def fleet_dir(self) -> Path:
        return self.root / "fleet"

    @property
    def gateway_dir(self) -> Path:
        return self.root / "gateway"

    @property
    def device_dir(self) -> Path:
        return self.root / "device"

    @property
    def witness_dir(self) -> Path:
        return self.root / "witness"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    @property
    def state_file(self) -> Path:
        return self.run_dir / "state.json"

    @property
    def lock_file(self) -> Path:
        return self.run_dir / "up.lock"

    @property
    def formed(self) -> bool:
        return (self.fleet_dir / FLEET_FILE).is_file()

    def load_fleet(self) -> FleetLayout:
        return FleetLayout.load(self.fleet_dir)


def _write_private_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def read_state(data: DataLayout) -> dict[str, Any] | None:
    """The running ``up``'s state file, or None if there is none (or it is unreadable)."""
    try:
        doc = json.loads(data.state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION:
        return None
    return doc


# --------------------------------------------------------------------------- nodes


def _bind_loopback(port: int, what: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((LOOPBACK, port))
    except OSError:
        sock.close()
        raise DeploymentError(
            f"{what}: port {port} on {LOOPBACK} is in use (another `hsmvault up`, or another"
            " program?). Stop it, or choose another port in hsmvault.toml / HSMVAULT_* "
            "(docs/operations.md)"
        ) from None
    sock.listen(128)
    return sock


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _tail(path: Path, lines: int = 1) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])[:400]


def _write_private_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(text)
    os.replace(tmp, path)


def _artifact_region(region: str) -> str:
    """A region name as the fleet-key artifact allows it (``[a-z0-9-]``, 1..63, no
    leading or trailing ``-``); ``""`` if nothing is left."""
    text = "".join(c if c in _REGION_OK else "-" for c in region.lower())
    return text.strip("-")[:63].strip("-")


def _is_our_witness(pid: int, witness_dir: Path) -> bool:
    """True if ``pid`` is a witness process serving ``witness_dir`` (Linux /proc)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"hsmvault.transparency.witness" in argv and str(witness_dir).encode() in argv


def _is_our_node(pid: int, node_dir: Path) -> bool:
    """True if ``pid`` is a node process serving ``node_dir`` (Linux /proc check)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"hsmvault.hsm.node_process" in argv and str(node_dir).encode() in argv


@dataclass
class _Node:
    """One supervised node process."""

    layout: NodeLayout
    proc: subprocess.Popen[bytes] | None = None
    wanted: bool = True
    state: NodeState = "stopped"
    started_at: float = 0.0
    restarts: int = 0
    failed_starts: int = 0
    next_restart: float = 0.0
    last_exit: int | None = None
    last_error: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def name(self) -> str:
        return f"node-{self.layout.index}"

    @property
    def stderr_log(self) -> Path:
        return self.layout.host_dir / "stderr.log"

    def spawn(self) -> None:
        """Start the process (does not wait for it to be ready)."""
        host = self.layout.host_dir
        with contextlib.suppress(FileNotFoundError):
            (host / _READY_FILE).unlink()
        stdout = (host / "stdout.log").open("ab")
        stderr = self.stderr_log.open("ab")
        try:
            self.proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                [
                    sys.executable,
                    "-m",
                    "hsmvault.hsm.node_process",
                    "--node-dir",
                    str(self.layout.node_dir),
                ],
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                # nodes select their own SoftHSM2 configuration (never the operator's)
                env={
                    **{k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"},
                    "PYTHONUNBUFFERED": "1",
                },
                process_group=0,  # Ctrl-C reaches `up`, which stops nodes in order
            )
        finally:
            stdout.close()
            stderr.close()
        self.state = "starting"
        self.started_at = time.monotonic()

    def is_ready(self) -> bool:
        """The process is alive and wrote its ready file."""
        if self.proc is None or self.proc.poll() is not None:
            return False
        try:
            doc = json.loads((self.layout.host_dir / _READY_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(doc, dict) and doc.get("pid") == self.proc.pid

    def terminate(self, *, kill: bool, grace: float = _GRACE_S) -> None:
        """Stop the process: SIGKILL at once if ``kill``, else SIGTERM then SIGKILL."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout=grace)
        self.last_exit = proc.returncode
        self.proc = None

    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None


# --------------------------------------------------------------------------- deployment


class LocalDeployment:
    """One ``hsmvault up`` (see the module docstring). Use :meth:`open`, :meth:`start`,
    then :meth:`wait` (blocks until :meth:`request_shutdown`), and always :meth:`close`.
    """

    def __init__(self, config: DeploymentConfig, report: Reporter | None = None) -> None:
        self.config = config
        self.data = DataLayout(config.data_dir)
        self._report: Reporter = report or (lambda _msg: None)
        self._lock_fd: int | None = None
        self._nodes: list[_Node] = []
        self._layout: FleetLayout | None = None
        self._client: FleetClient | None = None
        self._issuer: DevTokenIssuer | None = None
        self._witness: WitnessProcess | None = None
        self._operator: OperatorKey | None = None
        self._publisher: Publisher | None = None
        self._witness_client: WitnessClient | None = None
        self._publish_lock = threading.Lock()
        self._published: dict[str, Any] = {}
        self._next_publish_check = 0.0
        self._gateway: GatewayThread | None = None
        self._gateway_note: str | None = None
        self._control_sock: socket.socket | None = None
        self._control_token = secrets.token_hex(32)
        self._shutdown = threading.Event()
        self._closed = False
        self._monitor: threading.Thread | None = None
        self._started_at = time.time()
        self.formed_now = False

    # ----------------------------------------------------------------- properties

    @property
    def layout(self) -> FleetLayout:
        if self._layout is None:
            raise DeploymentError("the deployment is not open")
        return self._layout

    @property
    def issuer(self) -> DevTokenIssuer:
        if self._issuer is None:
            raise DeploymentError("the deployment is not open")
        return self._issuer

    @property
    def gateway_url(self) -> str | None:
        if self._gateway is None:
            return None
        return f"http://{LOOPBACK}:{self._gateway.port}"

    @property
    def witness_url(self) -> str | None:
        if self._witness is None:
            return None
        return self._witness.url

    @property
    def published(self) -> dict[str, Any]:
        """The current epoch: ``epoch``, ``timestamp_ms`` (witness), ``digest`` (hex),
        ``published_now`` (whether this run published it); empty before :meth:`start`."""
        return dict(self._published)

    @property
    def gateway_note(self) -> str | None:
        """Why there is no gateway (None when it runs)."""
        return self._gateway_note

    # ----------------------------------------------------------------- open / form

    def open(self, *, progress: Callable[[int, int], None] | None = None) -> FleetLayout:
        """Take the data directory's lock, form the fleet if needed, load it."""
        root = self.data.root
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        for d in (self.data.run_dir, self.data.log_dir, self.data.gateway_dir):
            d.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(self.data.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            state = read_state(self.data)
            pid = f" (pid {state['pid']})" if state else ""
            raise DeploymentError(
                f"a deployment is already running on {root}{pid}: use `hsmvault status`,"
                " or stop it with Ctrl-C / `hsmvault down`"
            ) from None
        self._lock_fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        if not self.data.formed:
            self._form(progress)
        try:
            self._layout = self.data.load_fleet()
        except DecodeError as exc:
            raise DeploymentError(f"{self.data.fleet_dir / FLEET_FILE}: {exc}") from None
        self._issuer = DevTokenIssuer.load_or_create(root)
        self._client = FleetClient(
            self._layout.api_addresses,
            FleetClientConfig(connect_timeout=0.5, request_timeout=5.0),
            public_keys=self._layout.public_keys,
        )
        self._nodes = [_Node(n) for n in self._layout.nodes]
        return self._layout

    def _form(self, progress: Callable[[int, int], None] | None) -> None:
        cfg = self.config
        fleet_dir = self.data.fleet_dir
        if fleet_dir.exists() and any(fleet_dir.iterdir()):
            raise DeploymentError(
                f"{fleet_dir} holds a half-formed fleet (formation was interrupted): remove"
                " that directory and run `hsmvault up` again"
            )
        base_port = cfg.node_base_port or None
        if base_port is not None:
            busy = [p for p in range(base_port, base_port + 2 * cfg.nodes) if not _port_free(p)]
            if busy:
                raise DeploymentError(
                    f"node ports {busy} are in use: set fleet.node_base_port (or"
                    " HSMVAULT_NODE_BASE_PORT) to a free range before the fleet is formed"
                )
        self._report(f"forming a fleet of {cfg.nodes} nodes ({cfg.custody} custody)")
        done = threading.Event()

        def tick() -> None:
            # form_fleet provisions all nodes at once; show that nodes appear.
            while not done.wait(0.2):
                if progress is not None:
                    count = sum(
                        1 for p in fleet_dir.glob("node-*/host/link-key.sealed") if p.exists()
                    )
                    progress(count, cfg.nodes)

        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
        try:
            form_fleet(
                fleet_dir,
                nodes=cfg.nodes,
                regions=cfg.regions,
                custody=cfg.custody,
                base_port=base_port,
            )
        except VaultError as exc:
            raise DeploymentError(f"forming the fleet failed: {exc}") from None
        finally:
            done.set()
            ticker.join()
        if progress is not None:
            progress(cfg.nodes, cfg.nodes)
        self.formed_now = True

    # ----------------------------------------------------------------- start

    def start(self, *, progress: Callable[[int, int], None] | None = None) -> None:
        """Start the nodes, wait for a leader, start the witness, publish the fleet's
        keys if needed (see the module docstring), then start the gateway and the
        control endpoint, and write the state file."""
        layout = self.layout
        self._stop_orphans()
        for node in self._nodes:
            for port, what in ((node.layout.api_port, "API"), (node.layout.raft_port, "Raft")):
                if not _port_free(port):
                    raise DeploymentError(
                        f"{node.name} {what} port {port} is in use (another `hsmvault up`"
                        " on another data directory?). The ports of a formed fleet are"
                        f" fixed in {self.data.fleet_dir / FLEET_FILE}"
                    )
        for node in self._nodes:
            node.spawn()
        self._wait_nodes_ready(progress)
        self.wait_for_leader(self.config.start_timeout_s)
        self._start_witness()
        self._start_publisher()
        self._next_publish_check = time.monotonic() + _REPUBLISH_CHECK_S
        self._start_gateway()
        self._start_control()
        self._write_state()
        self._monitor = threading.Thread(target=self._monitor_loop, name="supervisor", daemon=True)
        self._monitor.start()
        del layout

    def _stop_orphans(self) -> None:
        self._stop_orphan_witness()
        for node in self._nodes:
            try:
                doc = json.loads((node.layout.host_dir / _READY_FILE).read_text(encoding="utf-8"))
                pid = int(doc["pid"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if _is_our_node(pid, node.layout.node_dir):
                self._report(f"stopping {node.name} left over from an earlier run (pid {pid})")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + _GRACE_S
                while _is_our_node(pid, node.layout.node_dir) and time.monotonic() < deadline:
                    time.sleep(0.05)
                with contextlib.suppress(ProcessLookupError):
                    if _is_our_node(pid, node.layout.node_dir):
                        os.kill(pid, signal.SIGKILL)

    def _wait_nodes_ready(self, progress: Callable[[int, int], None] | None) -> None:
        deadline = time.monotonic() + self.config.start_timeout_s
        total = len(self._nodes)
        while True:
            ready = [n for n in self._nodes if n.is_ready()]
            for n in self._nodes:
                if n.is_ready():
                    n.state = "running"
            if progress is not None:
                progress(len(ready), total)
            dead = [n for n in self._nodes if n.proc is not None and n.proc.poll() is not None]
            if dead:
                node = dead[0]
                code = node.proc.returncode if node.proc is not None else "?"
                raise DeploymentError(
                    f"{node.name} refused to start (exit {code}):"
                    f" {_tail(node.stderr_log) or 'no message'}"
                    f" — log: {node.layout.host_dir / 'node.log'}"
                )
            if len(ready) == total:
                return
            if time.monotonic() > deadline:
                slow = ", ".join(n.name for n in self._nodes if not n.is_ready())
                raise DeploymentError(
                    f"nodes did not start within {self.config.start_timeout_s:.0f} s: {slow}"
                )
            time.sleep(0.05)

    def wait_for_leader(self, timeout: float) -> int:
        """The index of a node that leads with a quorum (DeploymentError on timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, info in self._infos().items():
                if info is not None and info.is_leader and info.has_quorum:
                    return i
            time.sleep(0.1)
        raise DeploymentError(f"no leader with a quorum within {timeout:.0f} s")

    def _infos(self) -> dict[int, NodeInfo | None]:
        client = self._client
        assert client is not None

        def one(i: int) -> NodeInfo | None:
            try:
                return client.node_info(i)
            except Unavailable:
                return None

        with ThreadPoolExecutor(max_workers=len(self._nodes)) as pool:
            results = list(pool.map(one, range(len(self._nodes))))
        return dict(enumerate(results))

    def _stop_orphan_witness(self) -> None:
        pid_file = self.data.run_dir / _WITNESS_PID_FILE
        try:
            pid = int(pid_file.read_text(encoding="ascii"))
        except (OSError, ValueError):
            return
        witness_dir = self.data.witness_dir
        if _is_our_witness(pid, witness_dir):
            self._report(f"stopping the witness left over from an earlier run (pid {pid})")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + _GRACE_S
            while _is_our_witness(pid, witness_dir) and time.monotonic() < deadline:
                time.sleep(0.05)
            with contextlib.suppress(ProcessLookupError):
                if _is_our_witness(pid, witness_dir):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            pid_file.unlink()

    def _start_witness(self) -> None:
        """The witness in its own process over ``<data dir>/witness`` (made on first
        start, software keys)."""
        witness_dir = self.data.witness_dir
        if not (witness_dir / "witness.json").exists():
            if witness_dir.exists() and any(witness_dir.iterdir()):
                raise DeploymentError(
                    f"{witness_dir} holds a half-made witness (its set-up was interrupted):"
                    " remove that directory and run `hsmvault up` again"
                )
            self._report(f"creating the witness ({WITNESS_NAME}) in {witness_dir}")
            init_data_dir(
                witness_dir, name=WITNESS_NAME, backend="software", now_ms=int(time.time() * 1000)
            )
        port = self.config.witness_port
        if port != 0 and not _port_free(port):
            raise DeploymentError(
                f"witness: port {port} on {LOOPBACK} is in use (another `hsmvault up`, or"
                " another program?). Choose another witness port in hsmvault.toml /"
                " HSMVAULT_WITNESS_PORT (docs/operations.md)"
            )
        try:
            self._witness = WitnessProcess(witness_dir, port=port)
        except Unavailable as exc:
            raise DeploymentError(
                f"the witness did not start ({exc}); its messages are on up's stderr"
            ) from None
        _write_private_text(self.data.run_dir / _WITNESS_PID_FILE, f"{self._witness.pid}\n")
        self._witness_client = WitnessClient(self._witness.url)

    def _start_publisher(self) -> None:
        """Open the operator key, register the namespace, publish if needed."""
        assert self._witness_client is not None
        try:
            self._operator = open_operator_key(self.data.root, self.config.operator_custody)
        except VaultError as exc:
            raise DeploymentError(f"operator key: {exc}") from None
        self._publisher = Publisher(self._witness_client, NAMESPACE, self._operator.signer)
        try:
            self._publisher.ensure_namespace(read_admin_token(self.data.witness_dir), 1)
        except VaultError as exc:
            raise DeploymentError(f"registering {NAMESPACE!r} at the witness: {exc}") from None
        self.publish_if_needed()
        if not self._published:
            raise DeploymentError("no validation bundle could be published")

    def _published_fleet(self) -> PublishedFleet:
        assert self._client is not None
        regions = sorted({_artifact_region(n.region) for n in self.layout.nodes} - {""})
        evidence = self.layout.evidence_dir
        return PublishedFleet(
            self.layout.public_keys,
            clients=(self._client,),
            regions=tuple(regions),
            # The ceremony's evidence (ADR 0012): its digest goes into the artifact, so the
            # witness log ties these keys to the published deployment evidence.
            evidence_digest=evidence_digest(evidence) if evidence.is_dir() else None,
        )

    def publish_if_needed(self) -> PublishResult | None:
        """Publish a new epoch when the fleet serves none, an older one, or the last
        epoch is older than :data:`REPUBLISH_AFTER_S` (the result), else record the
        current epoch (``None``). Raises DeploymentError if publishing fails."""
        publisher = self._publisher
        assert publisher is not None
        assert self._client is not None
        with self._publish_lock:
            try:
                reason = publisher.needs_republish(REPUBLISH_AFTER_S, installed_in=[self._client])
            except VaultError as exc:
                raise DeploymentError(f"checking the published bundle: {exc}") from None
            if reason is None:
                entry = publisher.last_entry()
                assert entry is not None
                self._published = {
                    "epoch": entry.epoch,
                    "timestamp_ms": entry.timestamp,
                    "digest": entry.digest.hex(),
                    "published_now": False,
                }
                return None
            self._report(f"publishing the fleet's keys: {reason}")
            return self._publish_locked()

    def publish_now(self) -> PublishResult:
        """Publish a new epoch now (``hsmvault fleet publish-keys``)."""
        if self._publisher is None:
            raise DeploymentError("the deployment is not started")
        with self._publish_lock:
            return self._publish_locked()

    def _publish_locked(self) -> PublishResult:
        publisher = self._publisher
        assert publisher is not None
        try:
            result = publisher.publish([self._published_fleet()])
            result.raise_for_installs()
        except VaultError as exc:
            raise DeploymentError(f"publishing the fleet's keys failed: {exc}") from None
        self._published = {
            "epoch": result.epoch,
            "timestamp_ms": result.entry.timestamp,
            "digest": result.entry.digest.hex(),
            "published_now": True,
        }
        self._report(
            f"published epoch {result.epoch} of {NAMESPACE!r} (witnessed, counter-signed,"
            " installed in the fleet)"
        )
        return result

    def _start_gateway(self) -> None:
        try:
            app = build_local_gateway_app(self.layout, self.data.gateway_dir, self.issuer)
        except GatewayMissing as exc:
            self._gateway_note = str(exc)
            return
        sock = _bind_loopback(self.config.gateway_port, "gateway")
        gateway = GatewayThread(app, sock)
        try:
            gateway.start()
        except Unavailable as exc:
            sock.close()
            raise DeploymentError(str(exc)) from None
        self._gateway = gateway

    # ----------------------------------------------------------------- state, control

    def _write_state(self) -> None:
        assert self._control_sock is not None
        doc = {
            "version": STATE_VERSION,
            "pid": os.getpid(),
            "started_at": self._started_at,
            "data_dir": str(self.data.root),
            "fleet_id": self.layout.fleet_id.hex(),
            "control": [LOOPBACK, self._control_sock.getsockname()[1]],
            "control_token": self._control_token,
            "gateway_url": self.gateway_url,
            "gateway_note": self._gateway_note,
            "witness_url": self.witness_url,
            "namespace": NAMESPACE,
        }
        _write_private_json(self.data.state_file, doc)

    def _start_control(self) -> None:
        sock = socket.create_server((LOOPBACK, 0), backlog=16)
        sock.settimeout(0.5)
        self._control_sock = sock
        threading.Thread(target=self._control_loop, name="control", daemon=True).start()

    def _control_loop(self) -> None:
        sock = self._control_sock
        assert sock is not None
        while not self._shutdown.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._control_conn, args=(conn,), daemon=True).start()

    def _control_conn(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(_CONTROL_TIMEOUT_S)
            try:
                line = conn.makefile("rb").readline(65536)
                request = json.loads(line)
                if not isinstance(request, dict):
                    raise TypeError
                token = str(request.get("token", ""))
                if not hmac.compare_digest(token.encode(), self._control_token.encode()):
                    answer: dict[str, Any] = {"ok": False, "error": "bad control token"}
                else:
                    answer = self._control(str(request.get("op")), request.get("args") or {})
            except (OSError, ValueError, TypeError):
                return
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps(answer).encode() + b"\n")

    def _control(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        try:
            if op == "status":
                return {"ok": True, "status": self.status()}
            if op in ("stop_node", "start_node"):
                index = int(args["index"])
                if op == "stop_node":
                    self.stop_node(index, kill=bool(args.get("kill", True)))
                else:
                    self.start_node(index)
                return {"ok": True, "status": self.status()}
            if op == "shutdown":
                self.request_shutdown()
                return {"ok": True}
            if op == "publish":
                result = self.publish_now()
                return {
                    "ok": True,
                    "published": {
                        "namespace": result.namespace,
                        "epoch": result.epoch,
                        "timestamp_ms": result.entry.timestamp,
                        "digest": result.entry.digest.hex(),
                        "installed": [
                            {"fleet_id": r.fleet_id.hex() if r.fleet_id else None, "epoch": r.epoch}
                            for r in result.installs
                        ],
                    },
                }
        except (DeploymentError, KeyError, ValueError, TypeError) as exc:
            return {"ok": False, "error": str(exc) or type(exc).__name__}
        return {"ok": False, "error": f"unknown operation {op!r}"}

    # ----------------------------------------------------------------- fault injection

    def _node(self, index: int) -> _Node:
        if not 0 <= index < len(self._nodes):
            raise DeploymentError(f"no node {index}: nodes are 0..{len(self._nodes) - 1}")
        return self._nodes[index]

    def stop_node(self, index: int, *, kill: bool = True) -> None:
        """Stop node ``index`` on purpose (SIGKILL, like a power cut, unless ``kill`` is
        False: then SIGTERM). The supervisor leaves it down until :meth:`start_node`."""
        node = self._node(index)
        with node.lock:
            node.wanted = False
            node.terminate(kill=kill)
            node.state = "stopped"
        self._report(f"{node.name} stopped on request ({'SIGKILL' if kill else 'SIGTERM'})")

    def start_node(self, index: int, *, wait: bool = True) -> None:
        """Start node ``index`` again (no-op if it runs) and wait until it is ready."""
        node = self._node(index)
        with node.lock:
            node.wanted = True
            node.failed_starts = 0
            if node.pid() is None:
                node.spawn()
        if not wait:
            return
        deadline = time.monotonic() + self.config.start_timeout_s
        while not node.is_ready():
            if node.proc is None or node.proc.poll() is not None:
                raise DeploymentError(
                    f"{node.name} refused to start: {_tail(node.stderr_log) or 'no message'}"
                )
            if time.monotonic() > deadline:
                raise DeploymentError(f"{node.name} did not start in time")
            time.sleep(0.05)
        node.state = "running"
        self._report(f"{node.name} started on request")

    def _monitor_loop(self) -> None:
        while not self._shutdown.wait(_MONITOR_INTERVAL_S):
            for node in self._nodes:
                with node.lock:
                    self._supervise(node)
            if time.monotonic() >= self._next_publish_check:
                self._next_publish_check = time.monotonic() + _REPUBLISH_CHECK_S
                try:
                    self.publish_if_needed()
                except DeploymentError as exc:
                    self._report(f"re-publishing the fleet's keys failed (will retry): {exc}")

    def _supervise(self, node: _Node) -> None:
        now = time.monotonic()
        if node.state == "starting" and node.is_ready():
            node.state = "running"
            node.failed_starts = 0
            return
        proc = node.proc
        if node.wanted and proc is not None and proc.poll() is not None:
            code = proc.returncode
            node.last_exit = code
            node.proc = None
            quick = now - node.started_at < _QUICK_EXIT_S
            node.failed_starts = node.failed_starts + 1 if quick else 1
            detail = _tail(node.stderr_log) if code not in (0, -9, -15) else ""
            node.last_error = f"exit {code}" + (f": {detail}" if detail else "")
            if not self.config.restart_crashed:
                node.state = "crashed"
                self._report(f"{node.name} died ({node.last_error}); not restarting")
            elif node.failed_starts >= _MAX_FAILED_STARTS:
                node.state = "failed"
                self._report(f"{node.name} keeps failing ({node.last_error}); giving up on it")
            else:
                node.state = "crashed"
                delay = min(0.5 * 2 ** (node.failed_starts - 1), 10.0)
                node.next_restart = now + delay
                self._report(f"{node.name} died ({node.last_error}); restarting in {delay:.1f} s")
            return
        if (
            node.wanted
            and node.state == "crashed"
            and self.config.restart_crashed
            and now >= node.next_restart
            and not self._shutdown.is_set()
        ):
            node.restarts += 1
            node.spawn()

    # ----------------------------------------------------------------- status

    def status(self) -> dict[str, Any]:
        """Everything ``hsmvault status`` shows (JSON-friendly)."""
        infos = self._infos()
        supervised = {
            n.layout.index: {
                "state": n.state,
                "pid": n.pid(),
                "restarts": n.restarts,
                "last_error": n.last_error,
            }
            for n in self._nodes
        }
        return _status_document(
            self.data,
            self.layout,
            infos,
            supervised,
            running=True,
            gateway_url=self.gateway_url,
            gateway_note=self._gateway_note,
            witness=self._witness_status(),
            pid=os.getpid(),
            started_at=self._started_at,
        )

    def _witness_status(self) -> dict[str, Any]:
        doc = _offline_witness_status(self.data)
        doc["url"] = self.witness_url
        doc.update({k: self._published.get(k) for k in ("epoch", "timestamp_ms", "digest")})
        if self._operator is not None:
            doc["operator_public_key"] = self._operator.public_key.hex()
            doc["operator_custody"] = self._operator.custody
        return doc

    # ----------------------------------------------------------------- stop

    def request_shutdown(self) -> None:
        self._shutdown.set()

    def wait(self) -> None:
        """Block until :meth:`request_shutdown` (signal handlers call it)."""
        while not self._shutdown.wait(0.2):
            pass

    def close(self) -> None:
        """Stop everything this deployment started and release the lock. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._shutdown.set()
        if self._monitor is not None:
            self._monitor.join(timeout=5)
        if self._control_sock is not None:
            with contextlib.suppress(OSError):
                self._control_sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.data.state_file.unlink()
        if self._gateway is not None:
            self._report("stopping the gateway")
            self._gateway.stop()
            self._gateway = None
        if self._witness_client is not None:
            self._witness_client.close()
            self._witness_client = None
        if self._witness is not None:
            self._report("stopping the witness")
            self._witness.close()
            self._witness = None
            with contextlib.suppress(FileNotFoundError):
                (self.data.run_dir / _WITNESS_PID_FILE).unlink()
        if self._operator is not None:
            with contextlib.suppress(VaultError):
                self._operator.close()
            self._operator = None
        running = [n for n in self._nodes if n.pid() is not None]
        if running:
            self._report(f"stopping {len(running)} nodes")
        for node in running:
            if node.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    node.proc.send_signal(signal.SIGTERM)
        for node in self._nodes:
            node.terminate(kill=False)
            node.state = "stopped"
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> LocalDeployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- status


def _health(gateway_url: str | None) -> bool | None:
    if gateway_url is None:
        return None
    try:
        return httpx.get(f"{gateway_url}/v1/health", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _status_document(
    data: DataLayout,
    layout: FleetLayout,
    infos: dict[int, NodeInfo | None],
    supervised: dict[int, dict[str, Any]] | None,
    *,
    running: bool,
    gateway_url: str | None,
    gateway_note: str | None,
    witness: dict[str, Any],
    pid: int | None,
    started_at: float | None,
) -> dict[str, Any]:
    nodes = []
    for n in layout.nodes:
        info = infos.get(n.index)
        sup = (supervised or {}).get(n.index, {})
        entry: dict[str, Any] = {
            "index": n.index,
            "name": f"node-{n.index}",
            "node_id": n.node_id,
            "region": n.region,
            "api": f"{n.host}:{n.api_port}",
            "raft": f"{n.host}:{n.raft_port}",
            "state": sup.get("state", "running" if info else "stopped"),
            "pid": sup.get("pid"),
            "restarts": sup.get("restarts", 0),
            "last_error": sup.get("last_error"),
            "reachable": info is not None,
            "leader": bool(info and info.is_leader),
            "has_quorum": bool(info and info.has_quorum),
            "term": info.term if info else None,
            "commit_index": info.commit_index if info else None,
            "last_applied": info.last_applied if info else None,
            "records": info.record_count if info else None,
            "tombstones": info.tombstone_count if info else None,
        }
        nodes.append(entry)
    reachable = [e for e in nodes if e["reachable"]]
    leaders = [e for e in reachable if e["leader"] and e["has_quorum"]]
    leader = max(leaders, key=lambda e: e["term"]) if leaders else None
    gateway_ok = _health(gateway_url) if running else None
    majority = len(nodes) // 2 + 1
    if not running:
        health = "stopped"
    elif len(reachable) < majority:
        health = "down"
    elif leader is None:
        health = "electing"
    elif len(reachable) < len(nodes) or gateway_ok is False:
        health = "degraded"
    else:
        health = "ok"
    return {
        "running": running,
        "health": health,
        "data_dir": str(data.root),
        "pid": pid,
        "started_at": started_at,
        "fleet_id": layout.fleet_id.hex(),
        "custody": layout.custody,
        "regions": sorted({n.region for n in layout.nodes}),
        "nodes_up": len(reachable),
        "nodes_total": len(nodes),
        "quorum": majority,
        "leader": leader["index"] if leader else None,
        "term": leader["term"] if leader else None,
        "commit_index": leader["commit_index"] if leader else None,
        "records": leader["records"] if leader else None,
        "gateway": {"url": gateway_url, "healthy": gateway_ok, "note": gateway_note},
        "witness": witness,
        "nodes": nodes,
    }


def _offline_witness_status(data: DataLayout) -> dict[str, Any]:
    """What the data directory says about the witness and the operator key."""
    try:
        operator = read_operator_public_key(data.root)
    except DecodeError:
        operator = None
    return {
        "url": None,
        "name": WITNESS_NAME,
        "namespace": NAMESPACE,
        "data_dir": str(data.witness_dir),
        "epoch": None,
        "timestamp_ms": None,
        "digest": None,
        "operator_public_key": operator[0].hex() if operator else None,
        "operator_custody": operator[1] if operator else None,
    }


def control_request(
    data: DataLayout, op: str, args: dict[str, Any] | None = None, timeout: float = 30.0
) -> dict[str, Any]:
    """Send one control operation to the ``up`` running on ``data``.

    Raises :class:`DeploymentError` if none is running or it refused the operation."""
    state = read_state(data)
    if state is None:
        raise DeploymentError(
            f"no deployment is running on {data.root}: start one with `hsmvault up`"
        )
    host, port = state["control"]
    try:
        with socket.create_connection((str(host), int(port)), timeout=timeout) as sock:
            request = {"token": state["control_token"], "op": op, "args": args or {}}
            sock.sendall(json.dumps(request).encode() + b"\n")
            line = sock.makefile("rb").readline(1 << 20)
    except OSError:
        raise DeploymentError(
            f"the deployment on {data.root} does not answer (it may have been killed:"
            " run `hsmvault up` again)"
        ) from None
    try:
        answer = json.loads(line)
    except ValueError:
        raise DeploymentError("the deployment gave a malformed answer") from None
    if not isinstance(answer, dict) or not answer.get("ok"):
        error = answer.get("error") if isinstance(answer, dict) else None
        raise DeploymentError(str(error or "the deployment refused the operation"))
    return answer


def collect_status(data: DataLayout) -> dict[str, Any]:
    """Status of the deployment on ``data``: from the running ``up`` if there is one,
    else what the data directory says (nodes queried directly, in case some run)."""
    if read_state(data) is not None:
        with contextlib.suppress(DeploymentError):
            status: dict[str, Any] = control_request(data, "status")["status"]
            return status
    if not data.formed:
        return {
            "running": False,
            "health": "stopped",
            "formed": False,
            "data_dir": str(data.root),
            "nodes": [],
        }
    layout = data.load_fleet()
    client = FleetClient(layout.api_addresses, FleetClientConfig(connect_timeout=0.3))
    infos: dict[int, NodeInfo | None] = {}
    for n in layout.nodes:
        try:
            infos[n.index] = client.node_info(n.index)
        except Unavailable:
            infos[n.index] = None
    return _status_document(
        data,
        layout,
        infos,
        None,
        running=False,
        gateway_url=None,
        gateway_note=None,
        witness=_offline_witness_status(data),
        pid=None,
        started_at=None,
    )


@contextlib.contextmanager
def running_deployment(
    config: DeploymentConfig, report: Reporter | None = None
) -> Iterator[LocalDeployment]:
    """Open and start a deployment; close it on exit (for the demo and tests)."""
    deployment = LocalDeployment(config, report)
    try:
        deployment.open()
        deployment.start()
        yield deployment
    finally:
        deployment.close()
