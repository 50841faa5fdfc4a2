"""HSM fleet throughput, failover and memory: real node processes on loopback.

Run: ``.venv/bin/python -m bench.bench_fleet [--nodes 3 5] [--seconds N] [--concurrency C]
[--json]``

For each fleet size it forms a fleet (:func:`hsmvault.fleet.formation.form_fleet`,
software custody, in a temporary directory — ``--dir`` to choose where, since every
node fsyncs its sealed Raft journal and NVRAM anchor), starts one ``python -m
hsmvault.hsm.node_process`` per node (no fault proxies: nodes dial each other directly on
127.0.0.1) and drives it from this process through :class:`FleetClient`, with the
device's side of the protocol from :mod:`hsmvault.client.vault_protocol` (pinned fleet
keys: every start response's fleet signature is verified, uploads sealed to the pinned
``enc`` key, the backup key wrapped and unwrapped as a real device does):

1. **throughput** — ``C`` client threads (default 16: the machine has 2 cores, shared by
   the nodes *and* this client) run whole OPAQUE registrations (RegistrationStart +
   Register: one commit) and whole recoveries (LoginStart + LoginFinish: two commits,
   BeginAttempt and RecordSuccess) for ``--seconds`` per round; rate and p50/p99 latency
   per operation. Requests go to the leader (``--target spread``: round-robin over all
   nodes; followers forward commits to the leader). The client KSF is a tiny Argon2id
   (8 KiB, t = 1, p = 1; the nodes refuse the identity KSF) so that key stretching does
   not dominate: the client side of a login costs well under a millisecond.
2. **baseline** — in this process, single-threaded, no fleet running: a full login with
   the same KSF, timing only ``OpaqueServer.start_login`` + ``finish_login`` (the
   server's work); the fleet's recoveries/s is reported as a ratio to that rate. Baseline
   rounds run before the first fleet, between fleets and after the last (same run).
3. **failover** — 4 threads keep registering; the leader is SIGKILLed; the figure is the
   time from the kill to the first successful Register *sent after the kill* (so an
   answer to a request the old leader committed does not count). The victim is
   restarted (it resumes from its journal) and the fleet converges before the next
   repeat.
4. **memory** — every node's VmRSS (``/proc/<pid>/status``) before and after
   registering ``--mem-records`` records, in two equal steps; MiB per 100k records per
   node is the growth scaled linearly (an extrapolation unless 100k were registered).

Also reported: the fleet's idle CPU (Raft timers) and CPU seconds per operation spent in
the nodes and in this client process, from ``/proc/<pid>/stat`` and ``os.times()``.
Every child is killed (SIGKILL, by pid) on exit, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from hsmvault.client import vault_protocol
from hsmvault.client.fleet_trust import FleetTrust, PinnedFleetTrust
from hsmvault.crypto.backup_stream import BackupKey
from hsmvault.crypto.ksf import Argon2idKsf, KsfAlgorithm, KsfParams
from hsmvault.crypto.opaque import OpaqueClient, OpaqueConfig, OpaqueServer
from hsmvault.errors import Unavailable, VaultError
from hsmvault.fleet.formation import FleetLayout, form_fleet
from hsmvault.host.fleet_client import FleetClient, FleetClientConfig
from hsmvault.wire.hsm_api import (
    LoginFinishRequest,
    LoginStartResponse,
    RegisterRequest,
    decode_request,
)

TINY_KSF = Argon2idKsf(KsfParams(KsfAlgorithm.ARGON2ID, memory_kib=8, iterations=1, parallelism=1))
CONFIG = OpaqueConfig(ksf=TINY_KSF)
PROTOCOL = vault_protocol.VaultProtocolConfig(
    enrolment_ksf=TINY_KSF.params, ksf_policy=vault_protocol.KsfPolicy(floor=TINY_KSF.params)
)
PASSWORD = b"correct horse battery staple"
BACKUP_KEY = BackupKey.generate()  # escrowed for every user (each wrapped under its own login)
START_TIMEOUT = 30.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- fleet


def _read_line(fd: int, timeout: float) -> bytes:
    """One line from ``fd`` within ``timeout`` seconds (b"" on EOF or timeout)."""
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n") and len(data) < 4096:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            return b""
        chunk = os.read(fd, 1)
        if not chunk:
            return data
        data += chunk
    return data


def _wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)


@dataclass
class Fleet:
    """A formed fleet and its node processes (index ``i`` ↔ ``node-<i>``)."""

    layout: FleetLayout
    client: FleetClient
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.layout.nodes)

    @property
    def trust(self) -> FleetTrust:
        """Pinned trust in the fleet's published public keys."""
        return PinnedFleetTrust(self.layout.public_keys)

    def start(self, i: int) -> None:
        node = self.layout.nodes[i]
        with open(node.host_dir / "stdout.log", "ab") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "hsmvault.hsm.node_process",
                    "--node-dir",
                    str(node.node_dir),
                ],
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,  # Ctrl-C reaches us only; we kill the nodes
            )
        self.procs[i] = proc
        assert proc.stdout is not None
        if not _read_line(proc.stdout.fileno(), START_TIMEOUT).startswith(b"READY "):
            self.kill(i)
            tail = (node.host_dir / "stdout.log").read_text(errors="replace")[-500:]
            raise RuntimeError(f"node {i} did not start: {tail}")

    def kill(self, i: int) -> None:
        """SIGKILL node ``i`` (by pid) and reap it."""
        proc = self.procs.pop(i)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()

    def stop_all(self) -> None:
        for i in list(self.procs):
            self.kill(i)

    def leader(self, timeout: float = 15.0) -> int:
        """The one running node that leads with a quorum."""
        found: list[int] = []

        def one() -> bool:
            found.clear()
            for i in sorted(self.procs):
                with contextlib.suppress(Unavailable):
                    info = self.client.node_info(i)
                    if info.is_leader and info.has_quorum:
                        found.append(i)
            return len(found) == 1

        _wait_until(one, timeout, "a single leader")
        return found[0]

    def applied(self) -> dict[int, int | None]:
        """Each running node's last applied index (None: no answer)."""
        out: dict[int, int | None] = {}
        for i in sorted(self.procs):
            try:
                out[i] = self.client.node_info(i).last_applied
            except Unavailable:
                out[i] = None
        return out

    def wait_converged(self, timeout: float = 60.0) -> None:
        def same() -> bool:
            keys = set()
            for i in sorted(self.procs):
                try:
                    info = self.client.node_info(i)
                except Unavailable:
                    return False
                keys.add((info.last_applied, info.record_count))
            return len(keys) == 1

        _wait_until(same, timeout, "all nodes to converge")

    def rss_kib(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for i, proc in self.procs.items():
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out[i] = int(line.split()[1])
        return out

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of every running node process."""
        total = 0.0
        for proc in self.procs.values():
            stat = Path(f"/proc/{proc.pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime
        return total


@contextlib.contextmanager
def running_fleet(base_dir: Path, nodes: int) -> Iterator[Fleet]:
    layout = form_fleet(base_dir, nodes=nodes)
    client = FleetClient(
        layout.api_addresses, FleetClientConfig(connect_timeout=0.5, request_timeout=10.0)
    )
    fleet = Fleet(layout, client)
    try:
        for i in range(nodes):
            fleet.start(i)
        fleet.leader(timeout=START_TIMEOUT)
        yield fleet
    finally:
        fleet.stop_all()


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def _machine_busy() -> float:
    """Busy CPU seconds of the whole machine so far (``/proc/stat``, all cores)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


# --------------------------------------------------------------------------- client ops


class OpFailed(Exception):
    """A benchmark operation got no OK answer."""


class _Route:
    """The transport of one flow over ``client``: every request goes to ``prefer`` (with
    failover) except ``LoginFinish``, which goes only to the node that answered
    ``LoginStart`` (its session lives there). Notes when ``Register`` was sent."""

    def __init__(self, client: FleetClient, prefer: int | None) -> None:
        self.client = client
        self.prefer = prefer
        self.session_node: int | None = None
        self.register_sent = float("nan")

    def __call__(self, request: bytes) -> bytes:
        decoded = decode_request(request)
        if isinstance(decoded, LoginFinishRequest):
            return self.client.call(request, prefer=self.session_node, failover=False).raw
        if isinstance(decoded, RegisterRequest):
            self.register_sent = time.monotonic()
        answer = self.client.call(request, prefer=self.prefer)
        if isinstance(answer.response, LoginStartResponse):
            self.session_node = answer.node
        return answer.raw


def register(client: FleetClient, trust: FleetTrust, user_id: bytes, prefer: int | None) -> float:
    """A whole enrolment (:func:`vault_protocol.enroll`: RegistrationStart, fleet
    signature checked, Register with the upload sealed to the trusted ``enc`` key);
    returns the monotonic time the Register request was sent."""
    route = _Route(client, prefer)
    try:
        vault_protocol.enroll(route, user_id, PASSWORD, BACKUP_KEY, trust, config=PROTOCOL)
    except Unavailable:
        raise
    except VaultError as exc:
        raise OpFailed(type(exc).__name__) from None
    return route.register_sent


def recover(client: FleetClient, trust: FleetTrust, user_id: bytes, prefer: int | None) -> None:
    """A whole recovery (:func:`vault_protocol.recover`: LoginStart with failover, fleet
    signature checked, LoginFinish on the same node) that unwraps the backup key."""
    try:
        key = vault_protocol.recover(
            _Route(client, prefer), user_id, PASSWORD, trust, config=PROTOCOL
        )
    except Unavailable:
        raise
    except VaultError as exc:
        raise OpFailed(type(exc).__name__) from None
    if key != BACKUP_KEY:
        raise OpFailed("backup key mismatch")


@dataclass(frozen=True)
class LoadResult:
    name: str
    ops: int
    failures: int
    seconds: float
    latencies_ms: tuple[float, ...]
    node_cpu_s: float
    client_cpu_s: float
    other_cpu_s: float
    """CPU seconds used by processes other than the fleet and this one (others' jobs on
    the shared machine) during the round."""

    @property
    def other_cores(self) -> float:
        return self.other_cpu_s / self.seconds

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds

    def pct(self, q: float) -> float:
        xs = sorted(self.latencies_ms)
        if not xs:
            return float("nan")
        return xs[min(len(xs) - 1, int(q / 100 * len(xs)))]


def run_load(
    fleet: Fleet,
    name: str,
    op: Callable[[int, int], object],
    *,
    threads: int,
    seconds: float,
    max_ops: int,
) -> LoadResult:
    """``threads`` threads call ``op(thread, k)`` until ``seconds`` pass or ``max_ops``
    calls were started in all."""
    counter = itertools.count()
    lock = threading.Lock()
    latencies: list[float] = []
    failures = [0]
    deadline = time.monotonic() + seconds

    def worker(t: int) -> None:
        while time.monotonic() < deadline:
            k = next(counter)
            if k >= max_ops:
                return
            t0 = time.perf_counter()
            try:
                op(t, k)
            except (OpFailed, Unavailable):
                with lock:
                    failures[0] += 1
                continue
            dt = (time.perf_counter() - t0) * 1e3
            with lock:
                latencies.append(dt)

    cpu0, own0, busy0, t0 = fleet.cpu_seconds(), _own_cpu(), _machine_busy(), time.monotonic()
    workers = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(seconds + 60.0)
    elapsed = time.monotonic() - t0
    node_cpu, own_cpu = fleet.cpu_seconds() - cpu0, _own_cpu() - own0
    return LoadResult(
        name,
        len(latencies),
        failures[0],
        elapsed,
        tuple(latencies),
        node_cpu,
        own_cpu,
        max(0.0, _machine_busy() - busy0 - node_cpu - own_cpu),
    )


# --------------------------------------------------------------------------- baseline


def bench_baseline(seconds: float) -> tuple[float, float]:
    """In-process logins with the same KSF; returns server-side logins per second
    (``OpaqueServer.start_login`` + ``finish_login`` only are timed) and the cores other
    jobs on the machine used meanwhile."""
    busy0, own0, t_start = _machine_busy(), _own_cpu(), time.monotonic()
    server = OpaqueServer.generate(config=CONFIG)
    client = OpaqueClient(CONFIG)
    cred = b"bench-credential"
    request, state = client.start_registration(PASSWORD)
    record = client.finish_registration(
        state, server.create_registration_response(request, cred)
    ).record
    spent, ops = 0.0, 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ke1, cstate = client.start_login(PASSWORD)
        t0 = time.perf_counter()
        ke2, sstate = server.start_login(ke1, cred, record)
        spent += time.perf_counter() - t0
        result = client.finish_login(cstate, ke2)
        t0 = time.perf_counter()
        server.finish_login(sstate, result.ke3)
        spent += time.perf_counter() - t0
        ops += 1
    other = _machine_busy() - busy0 - (_own_cpu() - own0)
    return ops / spent, max(0.0, other / (time.monotonic() - t_start))


# --------------------------------------------------------------------------- failover


def measure_failover(fleet: Fleet, prefix: str, threads: int = 4) -> float:
    """SIGKILL the leader while ``threads`` threads keep registering; seconds from the
    kill to the first OK Register sent after it. Restarts the victim afterwards."""
    victim = fleet.leader()
    stop = threading.Event()
    killed_at = [float("inf")]
    first_ok: list[float] = []
    lock = threading.Lock()
    counter = itertools.count()

    def worker() -> None:
        client = FleetClient(
            fleet.layout.api_addresses, FleetClientConfig(connect_timeout=0.5, request_timeout=10)
        )
        while not stop.is_set():
            user = f"{prefix}-{next(counter)}".encode()
            try:
                sent = register(client, fleet.trust, user, None)
            except (OpFailed, Unavailable):
                continue
            done = time.monotonic()
            with lock:
                if sent > killed_at[0]:
                    first_ok.append(done)

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    try:
        time.sleep(1.0)  # steady state
        with lock:
            killed_at[0] = time.monotonic()
        fleet.kill(victim)
        _wait_until(lambda: bool(first_ok), 30.0, "a commit after the leader was killed")
    finally:
        stop.set()
        for w in workers:
            w.join(30.0)
    gap = min(first_ok) - killed_at[0]
    fleet.start(victim)
    fleet.leader()
    return gap


# --------------------------------------------------------------------------- per fleet


@dataclass
class FleetReport:
    nodes: int
    registrations: list[LoadResult] = field(default_factory=list)
    recoveries: list[LoadResult] = field(default_factory=list)
    idle_cpu_percent: float = 0.0
    serial: LoadResult | None = None
    """Registrations from one client thread: the latency of one commit, unloaded."""
    failover_s: list[float] = field(default_factory=list)
    mem_steps: list[tuple[int, dict[int, int], float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """What stopped a phase early (e.g. a restarted node that did not catch up)."""


def bench_fleet(
    base_dir: Path,
    report: FleetReport,
    args: argparse.Namespace,
    baseline_rounds: list[tuple[float, float]],
) -> None:
    """Run every phase for one fleet size, filling ``report`` as it goes (so an
    interrupted run still reports what it measured)."""
    nodes = report.nodes
    with running_fleet(base_dir / f"fleet-{nodes}", nodes) as fleet:
        leader = fleet.leader()
        cpu0, t0 = fleet.cpu_seconds(), time.monotonic()
        time.sleep(3.0)
        report.idle_cpu_percent = (fleet.cpu_seconds() - cpu0) / (time.monotonic() - t0) * 100
        print(
            f"  {nodes} nodes: idle fleet CPU {report.idle_cpu_percent:.1f} % of one core",
            file=sys.stderr,
            flush=True,
        )
        users: list[bytes] = []
        users_lock = threading.Lock()

        def target(k: int) -> int:
            return leader if args.target == "leader" else k % nodes

        report.serial = run_load(
            fleet,
            "registration, 1 client thread",
            lambda _t, k: register(fleet.client, fleet.trust, f"s-{k}".encode(), leader),
            threads=1,
            seconds=min(5.0, args.seconds),
            max_ops=10**6,
        )
        print(
            f"  {nodes} nodes: 1 thread: {report.serial.ops_per_s:.1f} reg/s, "
            f"p50 {report.serial.pct(50):.1f} ms",
            file=sys.stderr,
            flush=True,
        )
        for r in range(args.rounds):

            def reg(_t: int, k: int, r: int = r) -> None:
                user = f"r{r}-{k}".encode()
                register(fleet.client, fleet.trust, user, target(k))
                with users_lock:
                    users.append(user)

            report.registrations.append(
                run_load(
                    fleet,
                    "registration",
                    reg,
                    threads=args.concurrency,
                    seconds=args.seconds,
                    max_ops=10**6,
                )
            )
            pool = list(users)

            def rec(t: int, k: int, pool: list[bytes] = pool) -> None:
                # thread t only logs in as users t, t + C, ...: never two logins of
                # one user at once (each holds a guess until LoginFinish)
                slots = max(1, len(pool) // args.concurrency)
                recover(
                    fleet.client, fleet.trust, pool[t + args.concurrency * (k % slots)], target(k)
                )

            report.recoveries.append(
                run_load(
                    fleet,
                    "recovery",
                    rec,
                    threads=args.concurrency,
                    seconds=args.seconds,
                    max_ops=10**6,
                )
            )
            _print_round(nodes, r, report)
        failovers = args.failovers if _converged(fleet, report, args.catch_up_timeout) else 0
        for k in range(failovers):
            try:
                gap = measure_failover(fleet, f"fo{k}")
            except RuntimeError as exc:
                report.notes.append(f"failover {k}: {exc}")
                break
            report.failover_s.append(gap)
            print(
                f"  {nodes} nodes: leader kill -> next commit {gap:.3f} s",
                file=sys.stderr,
                flush=True,
            )
            if not _converged(fleet, report, args.catch_up_timeout):
                break

        if args.mem_records > 0 and _converged(fleet, report, args.catch_up_timeout):
            time.sleep(1.0)
            report.mem_steps.append((_record_count(fleet), fleet.rss_kib(), 0.0))
            step = args.mem_records // 2
            for s in range(2):

                def mem_reg(_t: int, k: int, s: int = s) -> None:
                    register(fleet.client, fleet.trust, f"m{s}-{k}".encode(), target(k))

                loaded = run_load(
                    fleet,
                    "registration",
                    mem_reg,
                    threads=args.concurrency,
                    seconds=3600.0,
                    max_ops=step,
                )
                if not _converged(fleet, report, args.catch_up_timeout):
                    break
                time.sleep(1.0)
                report.mem_steps.append((_record_count(fleet), fleet.rss_kib(), loaded.ops_per_s))
                print(
                    f"  {nodes} nodes: {report.mem_steps[-1][0]} records, RSS KiB "
                    f"{report.mem_steps[-1][1]} ({loaded.ops_per_s:.0f} reg/s, "
                    f"{loaded.failures} failed)",
                    file=sys.stderr,
                    flush=True,
                )
    baseline_rounds.append(bench_baseline(args.baseline_seconds))
    print(f"  baseline round: {baseline_rounds[-1]}", file=sys.stderr, flush=True)


def _converged(fleet: Fleet, report: FleetReport, timeout: float) -> bool:
    """Wait for every node to apply the same index; on timeout note how far each got."""
    start = time.monotonic()
    try:
        fleet.wait_converged(timeout)
    except RuntimeError:
        note = (
            f"nodes did not converge within {timeout:.0f} s (last applied per node: "
            f"{fleet.applied()}); later phases skipped"
        )
        report.notes.append(note)
        print(f"  {report.nodes} nodes: {note}", file=sys.stderr, flush=True)
        return False
    report.notes.append(f"converged after {time.monotonic() - start:.1f} s")
    return True


def _record_count(fleet: Fleet) -> int:
    return fleet.client.node_info(fleet.leader()).record_count


def _print_round(nodes: int, r: int, report: FleetReport) -> None:
    for res in (report.registrations[-1], report.recoveries[-1]):
        print(
            f"  {nodes} nodes round {r}: {res.name:12} {res.ops_per_s:7.1f}/s "
            f"p50 {res.pct(50):6.1f} ms p99 {res.pct(99):6.1f} ms "
            f"(n={res.ops}, failed {res.failures}; CPU/op nodes "
            f"{res.node_cpu_s / max(res.ops, 1) * 1e3:.1f} ms, client "
            f"{res.client_cpu_s / max(res.ops, 1) * 1e3:.1f} ms; other jobs "
            f"{res.other_cores:.2f} cores)",
            file=sys.stderr,
            flush=True,
        )


# --------------------------------------------------------------------------- summary


def _median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def summarize(report: FleetReport, baseline: float) -> dict[str, object]:
    out: dict[str, object] = {"nodes": report.nodes}
    for name, results in (("registration", report.registrations), ("recovery", report.recoveries)):
        out[name] = {
            "ops_per_s_median": _median([r.ops_per_s for r in results]),
            "ops_per_s_rounds": [r.ops_per_s for r in results],
            "p50_ms_median": _median([r.pct(50) for r in results]),
            "p99_ms_median": _median([r.pct(99) for r in results]),
            "failures": sum(r.failures for r in results),
            "node_cpu_ms_per_op": _median([r.node_cpu_s / max(r.ops, 1) * 1e3 for r in results]),
            "client_cpu_ms_per_op": _median(
                [r.client_cpu_s / max(r.ops, 1) * 1e3 for r in results]
            ),
            "other_jobs_cores_rounds": [r.other_cores for r in results],
        }
    if report.serial is not None:
        out["registration_one_thread"] = {
            "ops_per_s": report.serial.ops_per_s,
            "p50_ms": report.serial.pct(50),
            "p99_ms": report.serial.pct(99),
        }
    rec = _median([r.ops_per_s for r in report.recoveries])
    out["recovery_over_baseline"] = rec / baseline
    out["idle_cpu_percent_all_nodes"] = report.idle_cpu_percent
    out["notes"] = report.notes
    out["failover_s"] = report.failover_s
    out["failover_s_median"] = _median(report.failover_s)
    if len(report.mem_steps) >= 2:
        n0, rss0, _ = report.mem_steps[0]
        n1, rss1, _ = report.mem_steps[-1]
        added = n1 - n0
        per_node = {str(i): (rss1[i] - rss0[i]) / 1024 / added * 100_000 for i in rss0 if i in rss1}
        steps = []
        for (na, ra, _), (nb, rb, rate) in itertools.pairwise(report.mem_steps):
            growth = [(rb[i] - ra[i]) / 1024 / (nb - na) * 100_000 for i in ra if i in rb]
            steps.append(
                {
                    "records_before": na,
                    "records_after": nb,
                    "registrations_per_s": rate,
                    "mib_per_100k_per_node_median": _median(growth),
                }
            )
        out["memory"] = {
            "records_added": added,
            "rss_kib": [
                {"records": n, "rss_kib": {str(i): v for i, v in r.items()}}
                for n, r, _ in report.mem_steps
            ],
            "steps": steps,
            "mib_per_100k_records_per_node": per_node,
            "mib_per_100k_records_per_node_median": _median(list(per_node.values())),
            "extrapolated_linearly_from_records": added if added < 100_000 else None,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--nodes", type=int, nargs="+", default=[3, 5], help="fleet sizes")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per load round")
    parser.add_argument("--rounds", type=int, default=3, help="load rounds per fleet size")
    parser.add_argument("--concurrency", type=int, default=16, help="client threads")
    parser.add_argument("--target", choices=["leader", "spread"], default="leader")
    parser.add_argument("--failovers", type=int, default=3, help="leader kills per fleet")
    parser.add_argument(
        "--mem-records", type=int, default=20_000, help="records registered for memory (0: skip)"
    )
    parser.add_argument(
        "--catch-up-timeout", type=float, default=120.0, help="seconds to wait for convergence"
    )
    parser.add_argument("--baseline-seconds", type=float, default=3.0)
    parser.add_argument("--dir", type=Path, default=None, help="where fleets live (temp dir)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if not 1 <= args.concurrency <= 64:
        parser.error("--concurrency must be in 1..64 (a node serves 64 connections at most)")

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    base = Path(tempfile.mkdtemp(prefix="hsmvault-bench-fleet-", dir=args.dir))
    baseline_rounds: list[tuple[float, float]] = [bench_baseline(args.baseline_seconds)]
    print(f"  baseline round: {baseline_rounds[-1]}", file=sys.stderr, flush=True)
    reports: list[FleetReport] = []
    interrupted = False
    try:
        for nodes in args.nodes:
            reports.append(FleetReport(nodes))
            bench_fleet(base, reports[-1], args, baseline_rounds)
    except KeyboardInterrupt:
        interrupted = True  # the fleet is already torn down; report what was measured
        if reports:
            reports[-1].notes.append("interrupted (Ctrl-C / SIGTERM): partial figures")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    baseline = _median([b[0] for b in baseline_rounds])
    summaries = [summarize(r, baseline) for r in reports if r.recoveries]
    doc = {
        "baseline": {
            "name": "in-process OpaqueServer.start_login + finish_login (tiny Argon2id client)",
            "logins_per_s_median": baseline,
            "logins_per_s_rounds": [b[0] for b in baseline_rounds],
            "other_jobs_cores_rounds": [b[1] for b in baseline_rounds],
        },
        "client_ksf": "Argon2id m=8 KiB t=1 p=1",
        "concurrency": args.concurrency,
        "target": args.target,
        "fleets": summaries,
        "interrupted": interrupted,
    }
    if args.json:
        print(json.dumps(doc, indent=2))
        return 130 if interrupted else 0
    print(
        f"baseline: {baseline:,.0f} server logins/s in-process (rounds, other cores: "
        f"{baseline_rounds})"
    )
    for s in summaries:
        print(json.dumps(s, indent=2))
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
