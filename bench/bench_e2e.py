"""End to end through the gateway and the SDK, against a real local deployment.

Run: ``.venv/bin/python -m bench.bench_e2e [--size-mib N] [--users N] [--rounds N]
[--raise-rate-limits] [--json]``

This process starts what ``hsmvault up`` starts (:class:`LocalDeployment` on a temporary
data directory, every port chosen free on 127.0.0.1): 5 ``hsmvault.hsm.node_process``
processes, the witness stub, and the gateway (uvicorn, in a thread of *this* process).
Every client runs in a **child process** (``python -m bench.bench_e2e _child``, spec on
stdin, one JSON line back), so the client's memory and CPU are its own and the gateway's
are not counted in them.

1. **backup / restore** — ``--size-mib`` (default 1024) of generated files (a mix of
   sizes: about 20 % of the bytes in 1 to 64 KiB files, 30 % in 256 KiB to 8 MiB files, 50 %
   in files of up to 128 MiB; random bytes, written once under the temporary directory)
   are backed up with :meth:`VaultClient.create_backup` (tar → encrypt → spool → chunked
   upload → commit) and restored with :meth:`VaultClient.restore_backup` (download →
   decrypt → extract) into a fresh directory, which is then compared with the source
   (sizes and SHA-256 of every file; not timed). **Baseline**: ``shutil.copytree`` of the
   same source to the same filesystem, in a child process too, before every round and
   after the last; the backup's and the restore's MiB/s (plaintext bytes ÷ wall time of
   the SDK call) are reported as ratios to the median copy rate.
2. **users** — ``--users`` (default 200) simulated users, one thread each in one child
   process, each with its own dev token (``sub`` = its user id, minted per request by the
   deployment's dev issuer) and its own :class:`VaultClient` / HTTP connection: all
   register a PIN at once (:meth:`~VaultClient.protect_with_pin`: RegistrationStart +
   Register), then all recover at once (:meth:`~VaultClient.recover`: LoginStart +
   LoginFinish; the recovered backup key is compared). Rate, p50 / p99 latency and every
   error, by type. **Baseline**: ``--serial-users`` (default 10) users doing the same one
   at a time first (the unloaded latency and rate of one client).

Client KSF: Argon2id m = 8 KiB, t = 1, p = 1 for enrolment, and a :class:`KsfPolicy`
whose floor is the same (the client's default floor is 19 MiB, t = 2; the nodes accept
any Argon2id, they only refuse the identity KSF) — so key stretching costs well under a
millisecond and does not dominate.

Memory: the child resets its peak-RSS counter just before the SDK call (``5`` into
``/proc/self/clear_refs``; ``VmHWM`` then restarts from the current ``VmRSS``) and
reports ``VmHWM`` after the call minus ``VmRSS`` before it (``/proc/self/status``). The
gateway process's growth is measured the same way around each child (it is this process,
which otherwise only supervises). Before each timed child the parent calls ``os.sync()``
(so no step pays for the write-back of the previous one's dirty pages). CPU: the child's
``getrusage``, the nodes' ``/proc/<pid>/stat``, this process's ``os.times()``, and the
whole machine's ``/proc/stat`` (what is left is other people's jobs on the shared machine).

Rate limits: by default the gateway runs with the local deployment's limits
(``gateway_host.LOCAL_RATE``: 50 requests/s, burst 500, per token user and per client
address — and all users share the address 127.0.0.1); ``--raise-rate-limits`` replaces
them with 10^6/s for this run only (reported in the output).

Every child (clients and nodes) is killed on exit, Ctrl-C or SIGTERM (by pid; nodes via
:meth:`LocalDeployment.close`). A SIGKILL of this process leaves them behind.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Final
from unittest import mock

from hsmvault.cli import gateway_host
from hsmvault.cli.config import DeploymentConfig
from hsmvault.cli.dev_tokens import DevTokenIssuer
from hsmvault.cli.local_deployment import LocalDeployment
from hsmvault.client.recovery_codes import Pin
from hsmvault.client.sdk import Progress, ProgressCallback, VaultClient
from hsmvault.client.vault_protocol import KsfPolicy, VaultProtocolConfig
from hsmvault.crypto.backup_stream import BackupKey
from hsmvault.crypto.ksf import KsfAlgorithm, KsfParams
from hsmvault.fleet.fleet_keys import FleetPublicKeys
from hsmvault.fleet.formation import FleetLayout

TINY_KSF: Final = KsfParams(KsfAlgorithm.ARGON2ID, memory_kib=8, iterations=1, parallelism=1)
PROTOCOL: Final = VaultProtocolConfig(enrolment_ksf=TINY_KSF, ksf_policy=KsfPolicy(floor=TINY_KSF))
RAISED_RATE: Final = (1_000_000.0, 1_000_000)
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
MIB: Final = 1024 * 1024
REPO_ROOT: Final = Path(__file__).resolve().parent.parent

#: (share of the bytes, smallest file, largest file) — see the module docstring.
SIZE_MIX: Final = (
    (0.20, 1024, 64 * 1024),
    (0.30, 256 * 1024, 8 * MIB),
    (0.50, 32 * MIB, 128 * MIB),
)
FILES_PER_DIR: Final = 64
WRITE_PIECE: Final = 8 * MIB


# --------------------------------------------------------------------------- /proc


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


@dataclass
class Peak:
    """Peak RSS growth over a block (MiB) and how it was measured."""

    mib: float = float("nan")
    method: str = ""


@contextlib.contextmanager
def peak_rss_growth() -> Iterator[Peak]:
    """Peak RSS growth of this process over the block: ``VmHWM`` after it minus
    ``VmRSS`` before it, the peak counter reset first (``5`` into
    ``/proc/self/clear_refs``); ``ru_maxrss`` instead of ``VmHWM`` if the reset is
    refused (then the growth can only be over-estimated)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    peak = Peak(method="VmHWM reset via clear_refs" if reset else "ru_maxrss")
    before = _status_kib("VmRSS")
    try:
        yield peak
    finally:
        high = (
            _status_kib("VmHWM")
            if reset
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        )
        peak.mib = max(0, high - before) / 1024


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def _pid_cpu(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def _machine_busy() -> float:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


# --------------------------------------------------------------------------- data


def plan_files(total: int, seed: int = 7) -> list[tuple[str, int]]:
    """Relative path and size of every file of a ``total``-byte source tree."""
    rng = random.Random(seed)
    files: list[tuple[str, int]] = []
    for bucket, (share, low, high) in enumerate(SIZE_MIX):
        budget = (
            int(total * share) if bucket < len(SIZE_MIX) - 1 else total - sum(s for _, s in files)
        )
        n = 0
        while budget > 0 and n <= total // low + 1:  # bounded: every file but the last >= low
            size = min(budget, rng.randint(low, max(low, min(high, budget))))
            files.append((f"b{bucket}/d{n // FILES_PER_DIR:04d}/f{n:05d}.bin", size))
            budget -= size
            n += 1
    return files


def write_source(root: Path, files: Sequence[tuple[str, int]], seed: int = 11) -> None:
    rng = random.Random(seed)
    for rel, size in files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            left = size
            while left > 0:
                piece = min(WRITE_PIECE, left)
                f.write(rng.randbytes(piece))
                left -= piece


def tree_digest(root: Path) -> str:
    """SHA-256 over every regular file's relative path, size and contents, in order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(root)}\0{path.stat().st_size}\0".encode())
        with path.open("rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()


# --------------------------------------------------------------------------- child side


def _client(
    spec: dict[str, Any],
    user: str,
    issuer: DevTokenIssuer,
    keys: FleetPublicKeys,
    progress: ProgressCallback | None = None,
) -> VaultClient:
    """A client of ``user`` with its own token and HTTP connection, the fleet keys
    pinned (as an app would ship them; fetched once per process from the witness)."""
    return VaultClient(
        spec["gateway_url"],
        lambda: issuer.mint(user, 300),
        fleet_keys=keys,
        user_id=user,
        protocol=PROTOCOL,
        spool_dir=spec.get("spool_dir"),
        progress=progress,
    )


@dataclass
class _Snap:
    """CPU seconds so far: this process, the nodes, the gateway (our parent), the
    machine; and the time."""

    client: float
    nodes: float
    gateway: float
    machine: float
    wall: float

    @classmethod
    def take(cls, node_pids: Sequence[int]) -> _Snap:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return cls(
            ru.ru_utime + ru.ru_stime,
            sum(_pid_cpu(p) for p in node_pids),
            _pid_cpu(os.getppid()),
            _machine_busy(),
            time.perf_counter(),
        )

    def cpu_per_op_ms(self, later: _Snap, ops: int) -> dict[str, float]:
        n = max(ops, 1)
        client, nodes, gateway = (
            later.client - self.client,
            later.nodes - self.nodes,
            later.gateway - self.gateway,
        )
        other = later.machine - self.machine - client - nodes - gateway
        return {
            "client_cpu_ms_per_op": client / n * 1e3,
            "node_cpu_ms_per_op": nodes / n * 1e3,
            "gateway_cpu_ms_per_op": gateway / n * 1e3,
            "other_jobs_cores": max(0.0, other) / max(later.wall - self.wall, 1e-9),
        }


def _child_transfer(spec: dict[str, Any]) -> dict[str, Any]:
    """``copy``, ``backup`` or ``restore``: one timed call, its memory and CPU."""
    kind = spec["kind"]
    phases = _PhaseClock()
    work: Callable[[], object]
    client: VaultClient | None = None
    if kind == "copy":

        def work() -> object:
            return shutil.copytree(spec["source"], spec["dest"])

    else:
        issuer = DevTokenIssuer.load_or_create(Path(spec["data_dir"]))
        keys = FleetLayout.load(Path(spec["data_dir"]) / "fleet").public_keys  # pinned mode
        client = _client(spec, spec["user"], issuer, keys, phases.report)
        key = BackupKey(bytes.fromhex(spec["backup_key"]))
        if kind == "backup":

            def work() -> object:
                assert client is not None
                return client.create_backup(spec["source"], spec["backup_id"], backup_key=key)

        else:

            def work() -> object:
                assert client is not None
                return client.restore_backup(spec["backup_id"], spec["dest"], backup_key=key)

    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    with peak_rss_growth() as mem:
        t0 = time.perf_counter()
        result = work()
        seconds = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    if client is not None:
        client.close()
    out: dict[str, Any] = {
        "seconds": seconds,
        "peak_rss_growth_mib": mem.mib,
        "rss_method": mem.method,
        "cpu_s": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime),
        "process_cpu_s": cpu1.ru_utime + cpu1.ru_stime,
        "cpu_sys_s": cpu1.ru_stime - cpu0.ru_stime,
        "phase_first_report_s": {k: v - t0 for k, v in phases.first.items()},
    }
    if kind == "backup":
        out["ciphertext_bytes"] = getattr(result, "size", None)
    if kind == "restore":
        out["ciphertext_bytes"] = getattr(result, "ciphertext_bytes", None)
    return out


class _PhaseClock:
    """When the SDK first reported each progress phase (``archive``, ``upload``, ...)."""

    def __init__(self) -> None:
        self.first: dict[str, float] = {}

    def report(self, progress: Progress) -> None:
        self.first.setdefault(progress.phase, time.perf_counter())


@dataclass
class _PhaseLog:
    latencies_ms: list[float]
    errors: Counter[str]
    started: float = 0.0
    ended: float = 0.0


def _error_name(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    return f"{type(exc).__name__}" + (f" (HTTP {status})" if status else "")


def _pin(rng: random.Random) -> Pin:
    return Pin(f"{rng.randrange(10**7, 10**8)}")


def _user_op(client: VaultClient, op: str, pin: Pin, key: BackupKey) -> None:
    """``register`` (escrow ``key`` under ``pin``) or ``recover`` (and compare)."""
    if op == "register":
        client.protect_with_pin(pin, key)
    elif client.recover(pin) != key:
        raise ValueError("recovered key differs")


def _child_users(spec: dict[str, Any]) -> dict[str, Any]:
    """Serial baseline users, then ``users`` threads registering at once, then recovering
    at once."""
    issuer = DevTokenIssuer.load_or_create(Path(spec["data_dir"]))
    keys = FleetLayout.load(Path(spec["data_dir"]) / "fleet").public_keys  # pinned mode
    node_pids: list[int] = spec["node_pids"]
    timeout = float(spec["timeout_s"])
    rng = random.Random(spec["seed"])
    out: dict[str, Any] = {}
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)

    # serial baseline: one user at a time
    serial = {"register": _PhaseLog([], Counter()), "recover": _PhaseLog([], Counter())}
    t_start = time.perf_counter()
    for i in range(int(spec["serial_users"])):
        user = f"{spec['prefix']}-serial-{i}"
        key, pin = BackupKey.generate(), _pin(rng)
        with _client(spec, user, issuer, keys) as client:
            for op in ("register", "recover"):
                t0 = time.perf_counter()
                try:
                    _user_op(client, op, pin, key)
                except Exception as exc:
                    serial[op].errors[_error_name(exc)] += 1
                    break
                serial[op].latencies_ms.append((time.perf_counter() - t0) * 1e3)
    out["serial"] = {
        "seconds": time.perf_counter() - t_start,
        **{op: _phase_summary(log, None) for op, log in serial.items()},
    }

    # concurrent: every user a thread, a barrier before each operation
    n = int(spec["users"])
    logs = {"register": _PhaseLog([], Counter()), "recover": _PhaseLog([], Counter())}
    lock = threading.Lock()

    snaps: dict[str, _Snap] = {}

    def released(op: str) -> Callable[[], None]:
        def action() -> None:
            snaps[op] = _Snap.take(node_pids)
            logs[op].started = time.perf_counter()

        return action

    barriers = {op: threading.Barrier(n, action=released(op)) for op in logs}
    pins = [_pin(rng) for _ in range(n)]
    skipped = [0]

    def user_thread(i: int) -> None:
        user = f"{spec['prefix']}-{i}"
        key = BackupKey.generate()
        with _client(spec, user, issuer, keys) as client:
            registered = False
            for op in ("register", "recover"):
                try:
                    barriers[op].wait(timeout)
                except threading.BrokenBarrierError:
                    with lock:
                        logs[op].errors["barrier broken"] += 1
                    return
                if op == "recover" and not registered:
                    with lock:
                        skipped[0] += 1
                    continue
                t0 = time.perf_counter()
                try:
                    _user_op(client, op, pins[i], key)
                    registered = True
                except Exception as exc:
                    with lock:
                        logs[op].errors[_error_name(exc)] += 1
                        logs[op].ended = max(logs[op].ended, time.perf_counter())
                    continue
                t1 = time.perf_counter()
                with lock:
                    logs[op].latencies_ms.append((t1 - t0) * 1e3)
                    logs[op].ended = max(logs[op].ended, t1)

    threads = [
        threading.Thread(target=user_thread, args=(i,), daemon=True, name=f"user-{i}")
        for i in range(n)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 2 * timeout
    for t in threads:
        t.join(max(0.1, deadline - time.monotonic()))
    hung = sum(1 for t in threads if t.is_alive())
    snaps["end"] = _Snap.take(node_pids)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    out["concurrent"] = {op: _phase_summary(log, n) for op, log in logs.items()}
    # CPU per operation over each phase: register = its barrier to recover's barrier
    for op, nxt in (("register", "recover"), ("recover", "end")):
        if op in snaps and nxt in snaps:
            ops = out["concurrent"][op]["ok"] + out["concurrent"][op]["errors"]
            out["concurrent"][op].update(snaps[op].cpu_per_op_ms(snaps[nxt], ops))
    out["concurrent"]["recover"]["skipped_not_registered"] = skipped[0]
    out["hung_threads"] = hung
    out["cpu_s"] = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    out["process_cpu_s"] = cpu1.ru_utime + cpu1.ru_stime
    return out


def _pct(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    if not s:
        return float("nan")
    return s[min(len(s) - 1, int(q / 100 * len(s)))]


def _phase_summary(log: _PhaseLog, users: int | None) -> dict[str, Any]:
    ok = len(log.latencies_ms)
    # serial (users None): the rate of one client, i.e. over the sum of its latencies
    seconds = sum(log.latencies_ms) / 1e3 if users is None else max(0.0, log.ended - log.started)
    return {
        "ok": ok,
        "errors": sum(log.errors.values()),
        "errors_by_type": dict(log.errors),
        "seconds": seconds,
        "ops_per_s": ok / seconds if seconds > 0 else float("nan"),
        "p50_ms": _pct(log.latencies_ms, 50),
        "p99_ms": _pct(log.latencies_ms, 99),
        "max_ms": max(log.latencies_ms, default=float("nan")),
    }


def child_main() -> int:
    spec = json.loads(sys.stdin.read())
    result = _child_users(spec) if spec["kind"] == "users" else _child_transfer(spec)
    print(json.dumps(result), flush=True)
    return 0


# --------------------------------------------------------------------------- parent side


class Children:
    """Client child processes, killed by pid on the way out."""

    def __init__(self) -> None:
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def run(self, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.bench_e2e", "_child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,  # Ctrl-C reaches us only; we kill the child
        )
        self.procs[proc.pid] = proc
        try:
            stdout, _ = proc.communicate(json.dumps(spec).encode(), timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_all()
            raise RuntimeError(f"{spec['kind']} child timed out after {timeout:.0f} s") from None
        finally:
            self.procs.pop(proc.pid, None)
        if proc.returncode != 0:
            raise RuntimeError(f"{spec['kind']} child failed (exit {proc.returncode})")
        doc: dict[str, Any] = json.loads(stdout.decode().strip().splitlines()[-1])
        return doc

    def kill_all(self) -> None:
        for pid, proc in list(self.procs.items()):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            self.procs.pop(pid, None)


@dataclass
class Probe:
    """CPU of the nodes, of this process (the gateway) and of the machine over a phase."""

    node_pids: list[int]

    def snap(self) -> tuple[float, float, float, float]:
        return (
            sum(_pid_cpu(p) for p in self.node_pids),
            _own_cpu(),
            _machine_busy(),
            time.monotonic(),
        )

    def measure(self, children: Children, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
        os.sync()  # start with no dirty pages of an earlier step being written back
        s0 = self.snap()
        with peak_rss_growth() as gw_mem:
            doc = children.run(spec, timeout)
        s1 = self.snap()
        nodes, gateway, busy, wall = (b - a for a, b in zip(s0, s1, strict=True))
        client = float(doc["process_cpu_s"])  # start-up included
        doc["node_cpu_s"] = nodes
        doc["gateway_cpu_s"] = gateway
        doc["gateway_peak_rss_growth_mib"] = gw_mem.mib
        doc["other_jobs_cores"] = max(0.0, busy - nodes - gateway - client) / wall
        return doc


def _median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def run(args: argparse.Namespace, base: Path, children: Children) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "client_ksf": "Argon2id m=8 KiB t=1 p=1 (KsfPolicy floor lowered to the same)",
        "rate_limits": (
            f"raised for this run to {RAISED_RATE[0]:.0f}/s, burst {RAISED_RATE[1]}"
            if args.raise_rate_limits
            else f"local deployment's: {gateway_host.LOCAL_RATE[0]:.0f}/s, burst "
            f"{gateway_host.LOCAL_RATE[1]} per user and per address"
        ),
    }
    source = base / "source"
    if not args.skip_transfer:
        files = plan_files(args.size_mib * MIB)
        t0 = time.perf_counter()
        write_source(source, files)
        total = sum(s for _, s in files)
        source_digest = tree_digest(source)
        doc["data"] = {
            "bytes": total,
            "mib": total / MIB,
            "files": len(files),
            "files_per_bucket": [
                sum(1 for p, _ in files if p.startswith(f"b{b}/")) for b in range(3)
            ],
            "generated_in_s": time.perf_counter() - t0,
        }
        print(f"  source: {total / MIB:.0f} MiB in {len(files)} files", file=sys.stderr)

    config = DeploymentConfig(
        data_dir=base / "deployment", node_base_port=0, gateway_port=0, witness_port=0
    )
    rate = RAISED_RATE if args.raise_rate_limits else gateway_host.LOCAL_RATE
    deployment = LocalDeployment(config, lambda m: print(f"  [up] {m}", file=sys.stderr))
    try:
        t0 = time.perf_counter()
        deployment.open()
        with mock.patch.object(gateway_host, "LOCAL_RATE", rate):
            deployment.start()
        doc["deployment_start_s"] = time.perf_counter() - t0
        if deployment.gateway_url is None or deployment.witness_url is None:
            raise RuntimeError(f"no gateway: {deployment.gateway_note}")
        status = deployment.status()
        node_pids = [int(n["pid"]) for n in status["nodes"] if n["pid"] is not None]
        doc["nodes"] = len(node_pids)
        probe = Probe(node_pids)
        common = {
            "gateway_url": deployment.gateway_url,
            "witness_url": deployment.witness_url,
            "data_dir": str(config.data_dir),
            "spool_dir": str(base),
        }
        print(
            f"  deployment: {len(node_pids)} nodes, gateway {deployment.gateway_url}",
            file=sys.stderr,
        )
        if not args.skip_transfer:
            doc["transfer"] = _transfer(args, base, source, source_digest, common, probe, children)
        if args.users > 0:
            doc["users"] = _users(args, common, probe, children)
    finally:
        deployment.close()
    return doc


def _transfer(
    args: argparse.Namespace,
    base: Path,
    source: Path,
    source_digest: str,
    common: dict[str, Any],
    probe: Probe,
    children: Children,
) -> dict[str, Any]:
    total = sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
    copies: list[dict[str, Any]] = []
    backups: list[dict[str, Any]] = []
    restores: list[dict[str, Any]] = []
    timeout = args.child_timeout

    def copy() -> None:
        dest = base / "copy"
        copies.append(
            probe.measure(
                children, {"kind": "copy", "source": str(source), "dest": str(dest)}, timeout
            )
        )
        shutil.rmtree(dest)
        _say("copytree", copies[-1], total)

    for r in range(args.rounds):
        copy()
        key = os.urandom(32).hex()
        spec = {**common, "user": "bench-e2e-backup", "backup_key": key, "backup_id": f"r{r}"}
        backups.append(
            probe.measure(children, {**spec, "kind": "backup", "source": str(source)}, timeout)
        )
        _say("backup", backups[-1], total)
        dest = base / "restored"
        restores.append(
            probe.measure(children, {**spec, "kind": "restore", "dest": str(dest)}, timeout)
        )
        _say("restore", restores[-1], total)
        restores[-1]["verified"] = tree_digest(dest) == source_digest
        shutil.rmtree(dest)
        if not restores[-1]["verified"]:
            raise RuntimeError("the restored tree differs from the source")
    copy()

    def rate(doc: dict[str, Any]) -> float:
        return total / MIB / float(doc["seconds"])

    copy_rate = _median([rate(c) for c in copies])
    out: dict[str, Any] = {"plaintext_mib": total / MIB, "copytree_mib_s_median": copy_rate}
    for name, runs in (("copytree", copies), ("backup", backups), ("restore", restores)):
        rates = [rate(x) for x in runs]
        out[name] = {
            "mib_s_rounds": rates,
            "mib_s_median": _median(rates),
            "ratio_to_copytree": _median(rates) / copy_rate,
            "client_peak_rss_growth_mib_max": max(x["peak_rss_growth_mib"] for x in runs),
            "gateway_peak_rss_growth_mib_max": max(x["gateway_peak_rss_growth_mib"] for x in runs),
            "client_cpu_s_per_gib": _median([x["cpu_s"] for x in runs]) * 1024 / (total / MIB),
            "gateway_cpu_s_per_gib": _median([x["gateway_cpu_s"] for x in runs])
            * 1024
            / (total / MIB),
            "other_jobs_cores_rounds": [x["other_jobs_cores"] for x in runs],
            "rss_method": runs[0]["rss_method"],
            "runs": runs,
        }
    # where a backup's time goes: tar + encrypt into the spool until the first upload
    # report, then the chunked upload and the commit
    archive = [float(b["phase_first_report_s"].get("upload", "nan")) for b in backups]
    out["backup"]["archive_encrypt_spool_s_median"] = _median(archive)
    out["backup"]["upload_commit_s_median"] = _median(
        [float(b["seconds"]) - a for a, b in zip(archive, backups, strict=True)]
    )
    return out


def _say(name: str, doc: dict[str, Any], total: int) -> None:
    print(
        f"  {name:8} {total / MIB / doc['seconds']:8.1f} MiB/s ({doc['seconds']:.1f} s), "
        f"client peak RSS +{doc['peak_rss_growth_mib']:.1f} MiB, CPU client "
        f"{doc['cpu_s']:.1f} s (sys {doc['cpu_sys_s']:.1f}) / gateway "
        f"{doc['gateway_cpu_s']:.1f} s / nodes "
        f"{doc['node_cpu_s']:.1f} s; other jobs {doc['other_jobs_cores']:.2f} cores; "
        f"phases {doc.get('phase_first_report_s', {})}",
        file=sys.stderr,
        flush=True,
    )


def _users(
    args: argparse.Namespace, common: dict[str, Any], probe: Probe, children: Children
) -> dict[str, Any]:
    spec = {
        **common,
        "kind": "users",
        "users": args.users,
        "serial_users": args.serial_users,
        "prefix": f"u{os.getpid()}",
        "seed": 5,
        "timeout_s": args.child_timeout / 2,
        "node_pids": probe.node_pids,
    }
    doc = probe.measure(children, spec, args.child_timeout)
    for label, part in (("serial", doc["serial"]), ("concurrent", doc["concurrent"])):
        for op in ("register", "recover"):
            r = part[op]
            print(
                f"  {label:10} {op:8} {r['ops_per_s']:7.1f}/s p50 {r['p50_ms']:7.1f} ms "
                f"p99 {r['p99_ms']:7.1f} ms ok {r['ok']} errors {r['errors']} "
                f"{r['errors_by_type'] or ''}",
                file=sys.stderr,
                flush=True,
            )
    for op in ("register", "recover"):
        conc, ser = doc["concurrent"][op], doc["serial"][op]
        conc["rate_over_serial"] = conc["ops_per_s"] / ser["ops_per_s"]
        conc["p50_over_serial_p50"] = conc["p50_ms"] / ser["p50_ms"]
    return doc


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_child"]:
        return child_main()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--size-mib", type=int, default=1024, help="source data (MiB)")
    parser.add_argument("--rounds", type=int, default=2, help="backup + restore rounds")
    parser.add_argument("--users", type=int, default=200, help="concurrent users (0: skip)")
    parser.add_argument("--serial-users", type=int, default=10, help="baseline users")
    parser.add_argument(
        "--raise-rate-limits", action="store_true", help="gateway limits 10^6/s (stated)"
    )
    parser.add_argument("--skip-transfer", action="store_true", help="users phase only")
    parser.add_argument("--child-timeout", type=float, default=900.0, help="seconds per child")
    parser.add_argument("--dir", type=Path, default=None, help="where the temp dir goes")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if not 1 <= args.size_mib <= 64 * 1024:
        parser.error("--size-mib must be in 1..65536")
    if not 0 <= args.users <= 1000 or not 1 <= args.serial_users <= 100:
        parser.error("--users must be in 0..1000, --serial-users in 1..100")
    if not 1 <= args.rounds <= 10:
        parser.error("--rounds must be in 1..10")

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    children = Children()
    base = Path(tempfile.mkdtemp(prefix="hsmvault-bench-e2e-", dir=args.dir))
    interrupted = False
    doc: dict[str, Any] = {}
    try:
        doc = run(args, base, children)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        children.kill_all()
        shutil.rmtree(base, ignore_errors=True)
    doc["interrupted"] = interrupted
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        _print_summary(doc)
    return 130 if interrupted else 0


def _print_summary(doc: dict[str, Any]) -> None:
    t = doc.get("transfer")
    if t is not None:
        print(f"plain copy (shutil.copytree), baseline: {t['copytree_mib_s_median']:.0f} MiB/s")
        for name in ("backup", "restore"):
            x = t[name]
            print(
                f"{name}: {x['mib_s_median']:.0f} MiB/s = {x['ratio_to_copytree']:.3f} x copytree;"
                f" client peak RSS growth {x['client_peak_rss_growth_mib_max']:.1f} MiB"
            )
    u = doc.get("users")
    if u is not None:
        for op in ("register", "recover"):
            c = u["concurrent"][op]
            print(
                f"{op} ({doc['users']['concurrent'][op]['ok']} ok, {c['errors']} errors): "
                f"{c['ops_per_s']:.1f}/s, p50 {c['p50_ms']:.0f} ms, p99 {c['p99_ms']:.0f} ms; "
                f"{c['rate_over_serial']:.2f} x one serial client"
            )
    print(f"rate limits: {doc.get('rate_limits')}; client KSF: {doc.get('client_ksf')}")


if __name__ == "__main__":
    sys.exit(main())
