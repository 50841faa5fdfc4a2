"""A seeded, randomized fault campaign against a real 5-process fleet (test-only).

``run_campaign(CampaignConfig(seed=N, steps=K))`` forms a fresh fleet on loopback (the
:mod:`tests.integration.conftest` machinery: real node processes, a fault proxy on every
Raft link), then at the same time

* runs ``clients`` client threads that register users (small guess limits) and log in
  with the right password, with a wrong one (the attacker: LoginStart, then give up), or
  with a forged KE3 (LoginFinish → ``RecordFailure``); every request is pinned to one node
  (no fail-over, so one client operation is at most one command) and has a timeout; and
* runs ``steps`` fault actions drawn from ``random.Random(seed)``: SIGKILL a node (never
  more than f = 2 nodes down or cut off at once), restart one, partition a minority away
  and heal, make links duplicate / reorder / delay bytes, **replay sealed state** (stop a
  node, put back an older copy of its host-side directory taken at an earlier kill, NVRAM
  untouched: it must detect it — ``RollbackError`` — and never serve from it; per ADR 0005
  it comes back as a new incarnation in joining mode and the fleet re-admits it), and one
  deliberate **majority loss** per 40 steps (3 of 5 killed, later restarted from their
  journals).

Afterwards it restores the fleet (heal, restart everything, wait for convergence), reads
every record on every node, and checks (:meth:`CampaignReport.violations`):

1. all replicas converge to the same counters and record/tombstone counts;
2. per user, the client-observed history (plus one final read) is linearizable against
   the sequential vault model (:mod:`tests.integration.history`) — this covers "no lost or
   doubled increment", "no reset without a success", "acknowledged registrations never
   lost", "erased never comes back";
3. per user, a model-free count: never more than ``limit`` KE2s issued in a window no
   success could have reset (:func:`~tests.integration.history.ke2_window_violations`);
4. a record is tombstoned only if at least ``limit`` attempts can have been counted;
5. every replayed old state was refused (``RollbackError`` in the node's log), the node
   rejoined as a new incarnation and converged; a plain restart after SIGKILL never
   refuses the node's own latest state; a client-side anomaly (a forged KE3 accepted,
   the right password failing on a real record, a wrong wrapped key) is a violation too.

CRITICAL/ERROR lines of the node logs are listed in the report as warnings.

Reproducibility: the fault schedule and each client's sequence of choices are functions
of the seed alone (client ``k`` draws from ``Random(f"{seed}/client/{k}")``); thread
interleavings and Raft timing are not, so a failing seed is re-run, not replayed
byte-for-byte. Every action is logged with the seed (and written to ``actions.log`` in
the campaign directory, which is kept when a run fails).

Longer soaks::

    .venv/bin/python -m tests.integration.campaign --seed 7 --steps 200
    for s in $(seq 100 120); do .venv/bin/python -m tests.integration.campaign --seed $s \\
        --steps 60 || break; done
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import random
import shutil
import signal
import struct
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import pytest

from hsmvault.crypto.opaque import KE2, OpaqueClient
from hsmvault.crypto.session_box import LABEL_WRAPPED_KEY, open_from_session
from hsmvault.errors import InvalidLogin, Unavailable
from hsmvault.fleet.journal import DIGEST_LABEL, FileAnchorStore, JournalConfig
from hsmvault.host.fleet_client import FleetClient, FleetClientConfig
from hsmvault.wire.hsm_api import (
    AttemptsRemainingRequest,
    AttemptsRemainingResponse,
    LoginFinishRequest,
    LoginFinishResponse,
    Outcome,
    StatusRequest,
    StatusResponse,
)

from .conftest import LocalFleet, start_local_fleet
from .history import (
    ABSENT,
    UNKNOWN_LIMIT,
    CheckResult,
    History,
    KeySpec,
    Op,
    OpKind,
    Output,
    check_history,
    describe_state,
    ke2_window_violations,
)
from .vault_client import CONFIG, WRAPPED_KEY, PendingLogin, login_start, register

__all__ = [
    "CampaignConfig",
    "CampaignReport",
    "history_violations",
    "holds_anchored_record",
    "main",
    "run_campaign",
]

F: Final = 2  # faults tolerated by a 5-node fleet
KE3_LEN: Final = 64
REJOIN_TIMEOUT: Final = 45.0
#: The journal file's clear prefix (ADR 0005 / fleet.journal module docstring):
#: "HVJ1" | version u8 | fleet id 32 | node id 32 | incarnation u64 | first seq u64
#: | previous digest 32.
_JOURNAL_PREFIX: Final = struct.Struct(">4sB32s32sQQ32s")
_FAILED = pytest.fail.Exception  # what conftest's helpers raise on a timeout


@dataclass(frozen=True)
class CampaignConfig:
    """One campaign. Times in seconds."""

    seed: int
    steps: int = 20
    nodes: int = 5
    clients: int = 4
    initial_users: int = 3
    max_users: int = 12
    limits: tuple[int, ...] = (3, 4, 5)
    step_pause: tuple[float, float] = (0.15, 0.5)
    think_time: tuple[float, float] = (0.0, 0.03)
    request_timeout: float = 5.0
    connect_timeout: float = 0.5
    majority_loss: bool = True
    rollback: bool = True
    max_configs: int = 2_000_000
    base_dir: Path | None = None
    keep_dir: bool = False
    verbose: bool = True

    def __post_init__(self) -> None:
        if self.nodes != 2 * F + 1:
            raise ValueError("the campaign's fault budget assumes a 5-node fleet")
        if not all(1 <= limit < UNKNOWN_LIMIT for limit in self.limits):
            # The fake answer for unknown users (UNKNOWN_LIMIT - 1) must be
            # distinguishable from a real record's count.
            raise ValueError(f"limits must be in 1..{UNKNOWN_LIMIT - 1}")


@dataclass(frozen=True)
class UserSpec:
    user_id: bytes
    password: bytes
    limit: int


@dataclass
class CampaignReport:
    """What happened and what was wrong (``violations`` empty = the run passed)."""

    seed: int
    steps: int
    base_dir: Path
    faults: Counter[str] = field(default_factory=Counter)
    ops: Counter[str] = field(default_factory=Counter)
    actions: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    final: dict[bytes, str] = field(default_factory=dict)
    checks: dict[bytes, CheckResult] = field(default_factory=dict)
    history: list[Op] = field(default_factory=list)
    specs: dict[bytes, KeySpec] = field(default_factory=dict)
    injected: Counter[str] = field(default_factory=Counter)
    slowest_rejoin: float = 0.0
    duration: float = 0.0

    def summary(self) -> str:
        faults = ", ".join(f"{k}={v}" for k, v in sorted(self.faults.items())) or "none"
        ops = ", ".join(f"{k}={v}" for k, v in sorted(self.ops.items()))
        link = ", ".join(f"{k}={v}" for k, v in sorted(self.injected.items())) or "none"
        configs = sum(r.configs for r in self.checks.values())
        lines = [
            f"campaign seed={self.seed} steps={self.steps}: {self.duration:.1f} s, "
            f"{'PASS' if not self.violations else 'FAIL'}",
            f"  faults: {faults}",
            f"  proxies injected: {link}",
            f"  ops: {ops}",
            f"  checker: {len(self.checks)} keys, {configs} configurations; "
            f"slowest rejoin after a replay {self.slowest_rejoin:.1f} s",
            "  final: " + ", ".join(f"{u.decode()}={s}" for u, s in sorted(self.final.items())),
        ]
        if self.warnings:
            lines.append(f"  node log warnings ({len(self.warnings)}):")
            lines.extend("  ! " + w for w in self.warnings[:10])
        if self.violations:
            lines.append(f"  VIOLATIONS ({len(self.violations)}), campaign dir {self.base_dir}:")
            lines.extend("  - " + v for v in self.violations)
            lines.append(
                f"  reproduce: .venv/bin/python -m tests.integration.campaign "
                f"--seed {self.seed} --steps {self.steps}"
            )
        return "\n".join(lines)


class _Campaign:
    def __init__(self, config: CampaignConfig, base_dir: Path) -> None:
        self.config = config
        self.seed = config.seed
        self.rng = random.Random(config.seed)
        self.base_dir = base_dir
        self.report = CampaignReport(config.seed, config.steps, base_dir)
        self.history = History()
        self.started = time.monotonic()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        user_rng = random.Random(f"{config.seed}/users")  # the schedule keeps self.rng
        self.users = [
            UserSpec(
                b"s%d-u%d" % (config.seed, k),
                b"pw-%d-%d" % (config.seed, k),
                user_rng.choice(config.limits),
            )
            for k in range(config.max_users)
        ]
        self.introduced = 0  # users[:introduced] may have been registered
        self.acknowledged: set[bytes] = set()
        self.down: set[int] = set()
        self.isolated: set[int] = set()
        self.old_copies: dict[int, Path] = {}
        self.progressed: set[int] = set()  # nodes restarted since their copy was taken
        # One deliberate majority loss in every window of 40 steps, at a seeded step.
        self.majority_steps: set[int] = set()
        if config.majority_loss:
            for start in range(0, config.steps, 40):
                length = min(40, config.steps - start)
                if length >= 3:
                    lo, hi = length // 3, max(length // 3 + 1, 2 * length // 3)
                    self.majority_steps.add(start + self.rng.randrange(lo, hi))
        self.link_faults_on = False
        self.rejoining: dict[int, dict[str, int]] = {}  # replayed node -> its log marks
        self.locked_seen: set[bytes] = set()  # a hint for the clients' choices only
        self.fleet: LocalFleet | None = None
        self.client: FleetClient | None = None
        self.log_file = (base_dir / "actions.log").open("a", encoding="utf-8")

    # ----------------------------------------------------------------- logging

    def log(self, message: str) -> None:
        line = f"[seed {self.seed} +{time.monotonic() - self.started:7.2f}s] {message}"
        with self.lock:
            self.report.actions.append(line)
            if not self.log_file.closed:
                self.log_file.write(line + "\n")
                self.log_file.flush()
        if self.config.verbose:
            print(line, file=sys.stderr, flush=True)

    def violation(self, message: str) -> None:
        self.log("VIOLATION: " + message)
        with self.lock:
            tagged = message if message.startswith("[seed ") else f"[seed {self.seed}] {message}"
            self.report.violations.append(tagged)

    def count_op(self, name: str) -> None:
        with self.lock:
            self.report.ops[name] += 1

    # ----------------------------------------------------------------- users

    def introduce(self) -> UserSpec | None:
        with self.lock:
            if self.introduced >= len(self.users):
                return None
            user = self.users[self.introduced]
            self.introduced += 1
        self.history.declare(user.user_id, KeySpec(user.limit))
        return user

    def known_users(self) -> list[UserSpec]:
        with self.lock:
            return self.users[: self.introduced]

    def running(self) -> list[int]:
        with self.lock:
            return [i for i in range(self.config.nodes) if i not in self.down]

    # ----------------------------------------------------------------- client ops

    def op_register(self, client: FleetClient, user: UserSpec, k: int, node: int) -> None:
        op = self.history.begin(user.user_id, OpKind.REGISTER, client=k, node=node)
        try:
            outcome = register(
                client, user.user_id, user.password, guess_limit=user.limit, final_node=node
            )
        except (Unavailable, AssertionError):  # start refused, or no definite answer
            self.history.unknown(op)
            self.count_op("register:unknown")
            return
        mapping: dict[Outcome, Output] = {
            Outcome.OK: "ok",
            Outcome.ALREADY_REGISTERED: "already",
            Outcome.LOCKED_OUT: "locked",
        }
        if outcome in mapping:
            self.history.ok(op, mapping[outcome])
            self.count_op(f"register:{mapping[outcome]}")
            if outcome is Outcome.OK:
                with self.lock:
                    self.acknowledged.add(user.user_id)
            return
        self.history.unknown(op)
        self.count_op("register:unknown")
        if outcome is not Outcome.UNAVAILABLE:
            self.violation(f"register {user.user_id!r} on node {node} answered {outcome.name}")

    def op_login(self, client: FleetClient, user: UserSpec, k: int, node: int, mode: str) -> None:
        """``mode``: ``right`` (owner), ``giveup`` (attacker: start only) or ``forged``
        (start with a wrong password, then a forged KE3)."""
        password = user.password if mode == "right" else b"wrong-" + user.password
        op = self.history.begin(user.user_id, OpKind.BEGIN, client=k, node=node)
        try:
            pending = login_start(client, user.user_id, password, prefer=node, failover=False)
        except Unavailable:
            pending = Outcome.UNAVAILABLE
        if isinstance(pending, Outcome):
            if pending is Outcome.LOCKED_OUT:
                self.history.ok(op, "locked")
                self.locked_seen.add(user.user_id)
                self.count_op("begin:locked")
            else:
                self.history.unknown(op)
                self.count_op("begin:unknown")
                if pending is not Outcome.UNAVAILABLE:
                    self.violation(f"login start {user.user_id!r} answered {pending.name}")
            return
        remaining = pending.start.attempts_remaining
        self.history.ok(op, remaining)
        real = remaining != UNKNOWN_LIMIT - 1
        self.count_op("begin:granted" if real else "begin:fake")
        if mode == "giveup":
            return
        self.finish(client, user, k, pending, mode == "right", real)

    def finish(
        self,
        client: FleetClient,
        user: UserSpec,
        k: int,
        pending: PendingLogin,
        right: bool,
        real: bool,
    ) -> None:
        session_key: bytes | None = None
        ke3 = os.urandom(KE3_LEN)  # a forged KE3: the node must answer INVALID_LOGIN
        if right:
            try:
                result = OpaqueClient(CONFIG).finish_login(
                    pending.state, KE2.from_bytes(pending.start.ke2)
                )
                ke3, session_key = result.ke3.to_bytes(), result.session_key
            except InvalidLogin:
                if real:
                    self.violation(
                        f"the right password failed at the client for the real record "
                        f"{user.user_id!r} (node {pending.node})"
                    )
                right = False  # the fake record (user absent at the start): send a forgery
        op = self.history.begin(
            user.user_id, OpKind.FINISH, right=right, real=real, client=k, node=pending.node
        )
        request = LoginFinishRequest(pending.start.session_id, ke3).to_bytes()
        try:
            answer = client.call(request, prefer=pending.node, failover=False)
        except Unavailable:
            self.history.unknown(op)
            self.count_op("finish:unknown")
            return
        response = answer.response
        assert isinstance(response, LoginFinishResponse)
        match response.outcome:
            case Outcome.OK:
                self.history.ok(op, "ok")
                self.count_op("finish:ok")
                if not right or session_key is None:
                    self.violation(f"a forged KE3 for {user.user_id!r} was accepted")
                elif (
                    open_from_session(
                        session_key, response.sealed_wrapped_key, label=LABEL_WRAPPED_KEY
                    )
                    != WRAPPED_KEY
                ):
                    self.violation(f"login of {user.user_id!r} released the wrong key")
            case Outcome.INVALID_LOGIN:
                self.history.ok(op, "invalid")
                self.count_op("finish:invalid")
            case Outcome.NO_SESSION:  # the node restarted: nothing was submitted
                self.history.discard(op)
                self.count_op("finish:no-session")
            case Outcome.UNAVAILABLE:
                self.history.unknown(op)
                self.count_op("finish:unknown")
            case other:
                self.history.unknown(op)
                self.violation(f"login finish {user.user_id!r} answered {other.name}")

    def client_loop(self, k: int) -> None:
        rng = random.Random(f"{self.seed}/client/{k}")
        client = self.make_client()
        deadline = time.monotonic() + self.config.steps * 10 + 120  # bounded, whatever
        while not self.stop.is_set() and time.monotonic() < deadline:
            nodes = self.running()
            node = rng.choice(nodes) if nodes and rng.random() < 0.9 else rng.randrange(5)
            users = self.known_users()
            # Mostly leave alone the users this client saw locked out (they stay locked).
            fresh = [u for u in users if u.user_id not in self.locked_seen or rng.random() < 0.15]
            roll = rng.random()
            try:
                if roll < 0.05 or not fresh:  # a new user (also when all seem locked)
                    user = self.introduce()
                    if user is not None:
                        self.op_register(client, user, k, node)
                        continue
                    roll = rng.random()
                if roll < 0.12:  # re-register a user (retry after an unknown outcome)
                    self.op_register(client, rng.choice(users), k, node)
                elif roll < 0.15:  # a user nobody registered yet: the fake path
                    with self.lock:
                        spare = self.users[min(self.introduced, len(self.users) - 1)]
                    if spare.user_id not in self.history.specs:
                        self.history.declare(spare.user_id, KeySpec(spare.limit))
                    self.op_login(client, spare, k, node, "giveup")
                else:
                    mode = rng.choices(["right", "giveup", "forged"], [0.5, 0.35, 0.15])[0]
                    self.op_login(client, rng.choice(fresh or users), k, node, mode)
            except Exception as exc:  # a client bug or an unexpected answer: keep going
                self.violation(f"client {k} raised {type(exc).__name__}: {exc}")
            self.stop.wait(rng.uniform(*self.config.think_time))

    def make_client(self) -> FleetClient:
        """A client of its own, pinned requests, bounded timeouts; it carries the fleet's
        public keys (registration uploads are sealed to the fleet)."""
        assert self.fleet is not None
        return FleetClient(
            self.fleet.layout.api_addresses,
            FleetClientConfig(
                connect_timeout=self.config.connect_timeout,
                request_timeout=self.config.request_timeout,
            ),
            public_keys=self.fleet.layout.public_keys,
        )

    # ----------------------------------------------------------------- faults

    @property
    def unavailable(self) -> set[int]:
        return self.down | self.isolated

    def kill(self, i: int, why: str) -> None:
        assert self.fleet is not None
        leader = self.leader_hint()
        self.fleet.kill(i)
        with self.lock:
            self.down.add(i)
        self.report.faults["kill"] += 1
        self.log(f"SIGKILL node {i} ({why}; leader was {leader})")

    def restart(self, i: int) -> bool:
        """Start node ``i`` from its own latest host-side state: it must resume as the
        same member (a crash never looks like a rollback)."""
        assert self.fleet is not None
        host_dir = self.fleet.layout.nodes[i].host_dir
        before = _log_sizes(host_dir)
        try:
            self.fleet.start(i)
        except _FAILED as exc:
            self.violation(f"node {i} failed to restart from its own latest state: {exc}")
            return False
        with self.lock:
            self.down.discard(i)
        self.progressed.add(i)
        self.report.faults["restart"] += 1
        new_log = _log_since(host_dir, before)
        if any(word in new_log for word in _REFUSALS):
            self.violation(
                f"node {i} refused its own latest state after a plain restart "
                f"(it had to rejoin as a new incarnation): {_refusal_line(new_log)}"
            )
        self.log(f"restarted node {i}")
        return True

    def leader_hint(self) -> str:
        """Who leads now (for the log only: never feeds a decision)."""
        assert self.fleet is not None
        for i in self.running():
            info = self.fleet.info(i)
            if info is not None and info.is_leader:
                return str(i)
        return "none"

    def snapshot_host_dir(self, i: int, step: int) -> None:
        assert self.fleet is not None
        node = self.fleet.layout.nodes[i]
        copy = self.base_dir / "old-copies" / f"node-{i}-step-{step}"
        shutil.copytree(node.host_dir, copy)
        self.old_copies[i] = copy
        self.progressed.discard(i)
        self.log(f"copied node {i}'s host-side directory (while down) to {copy.name}")

    def action_kill(self, step: int) -> None:
        candidates = self.running()
        if not candidates:
            return
        i = self.rng.choice(candidates)
        self.kill(i, "random")
        if i not in self.old_copies or self.rng.random() < 0.3:
            self.snapshot_host_dir(i, step)

    def action_partition(self) -> None:
        room = F - len(self.down)
        size = self.rng.randint(1, room)
        up = self.running()
        self.isolated = set(self.rng.sample(up, min(size, len(up))))
        rest = [i for i in range(self.config.nodes) if i not in self.isolated]
        assert self.fleet is not None
        self.fleet.mesh.partition(sorted(self.isolated), rest)
        self.report.faults["partition"] += 1
        self.log(f"partition {sorted(self.isolated)} | {rest} (leader was {self.leader_hint()})")

    def action_heal(self) -> None:
        assert self.fleet is not None
        self.fleet.mesh.heal()
        self.isolated = set()
        self.report.faults["heal"] += 1
        self.log("healed all partitions")

    def action_link_faults(self) -> None:
        assert self.fleet is not None
        delay = self.rng.choice([0.0, 0.001, 0.003])
        duplicate = round(self.rng.uniform(0.0, 0.06), 3)
        reorder = round(self.rng.uniform(0.0, 0.06), 3)
        self.fleet.mesh.set_faults(delay=delay, duplicate=duplicate, reorder=reorder)
        self.link_faults_on = True
        self.report.faults["link-faults"] += 1
        self.log(f"links: delay={delay} duplicate={duplicate} reorder={reorder}")

    def action_clear_link_faults(self) -> None:
        assert self.fleet is not None
        self.fleet.mesh.set_faults()
        self.link_faults_on = False
        self.log("links: faults off")

    def action_majority_loss(self) -> None:
        """Heal, restart every node, then SIGKILL a majority; restart it later from its
        sealed journals."""
        if self.isolated:
            self.action_heal()
        for i in sorted(self.down):
            self.restart(i)
        doomed = sorted(self.rng.sample(range(self.config.nodes), F + 1))
        self.log(f"MAJORITY LOSS: killing {doomed}")
        for i in doomed:
            self.kill(i, "majority loss")
        self.report.faults["majority-loss"] += 1
        time.sleep(self.rng.uniform(1.0, 2.0))  # clients see UNAVAILABLE meanwhile
        for i in doomed:
            self.restart(i)
        self.log(f"majority restored from journals: {doomed}")

    def action_rollback(self, i: int) -> None:
        """Replay an older copy of node ``i``'s host-side state (NVRAM untouched).

        The node must detect it (``RollbackError``) and never serve from it: it comes up
        in joining mode as a new incarnation (ADR 0005, "Rejoin"), the fleet re-admits it
        and it catches up from the leader. The final checks then require it converged."""
        assert self.fleet is not None
        node = self.fleet.layout.nodes[i]
        old = self.old_copies.pop(i)
        if i not in self.down:
            self.kill(i, "to replay old sealed state")
        if holds_anchored_record(old, node.nvram_dir):
            # Nothing anchored since the copy (or only records the node never acted on):
            # not a rollback. Put it back anyway: the node must resume from it.
            self.log(f"replay of {old.name} on node {i} is not a rollback (anchor held)")
            evidence = self.base_dir / "replaced" / f"node-{i}-before-{old.name}"
            evidence.parent.mkdir(exist_ok=True)
            os.replace(node.host_dir, evidence)
            shutil.copytree(old, node.host_dir)
            (node.host_dir / "ready.json").unlink(missing_ok=True)
            self.report.faults["replay-not-rollback"] += 1
            self.restart(i)
            return
        evidence = self.base_dir / "replaced" / f"node-{i}-before-replay-of-{old.name}"
        evidence.parent.mkdir(exist_ok=True)
        os.replace(node.host_dir, evidence)  # kept for the post-mortem, never put back
        shutil.copytree(old, node.host_dir)
        (node.host_dir / "ready.json").unlink(missing_ok=True)
        before = _log_sizes(node.host_dir)
        self.log(f"REPLAY: node {i} gets its host-side state from {old.name}; starting it")
        self.rejoining[i] = before
        try:
            self.fleet.start(i)
        except _FAILED as exc:
            self.violation(f"node {i} did not come up (to rejoin) after the replay: {exc}")
            return
        with self.lock:
            self.down.discard(i)
        new_log = _log_since(node.host_dir, before)
        (self.base_dir / f"replay-node-{i}-{old.name}.log").write_text(new_log)
        if "RollbackError" not in new_log:
            self.violation(
                f"node {i} STARTED from replayed old sealed state ({old.name}) without "
                "a RollbackError"
            )
            return
        self.report.faults["rollback-refused"] += 1
        self.log(f"node {i} refused the replayed state: {_refusal_line(new_log)}")
        # The replayed node holds no state until the fleet re-admits it: wait for that
        # (bounded) so the fault budget stays f = 2 and the schedule stays seed-determined.
        # A majority of healthy members exists (the budget), so this is a liveness check.
        # It counts as up again only once it has also caught up (it votes from then on).
        started = time.monotonic()
        deadline = started + REJOIN_TIMEOUT
        rejoined = False
        while time.monotonic() < deadline:
            if not rejoined and _REJOINED in _log_since(node.host_dir, before):
                rejoined = True
                self.log(
                    f"node {i} rejoined as a new incarnation after "
                    f"{time.monotonic() - started:.1f} s"
                )
            if rejoined and self.caught_up(i):
                took = time.monotonic() - started
                self.report.slowest_rejoin = max(self.report.slowest_rejoin, took)
                self.log(f"node {i} caught up {took:.1f} s after the replay")
                return
            time.sleep(0.2)
        self.violation(
            f"node {i} did not rejoin and catch up within {REJOIN_TIMEOUT:.0f} s although "
            f"a majority of healthy members was available (rejoined: {rejoined})"
        )

    def caught_up(self, i: int) -> bool:
        """Node ``i`` has applied at least what the other running nodes had committed."""
        assert self.fleet is not None
        others = [self.fleet.info(j) for j in self.running() if j != i]  # first, then mine
        target = max((n.commit_index for n in others if n is not None), default=0)
        mine = self.fleet.info(i)
        return mine is not None and mine.last_applied >= target

    def fault_step(self, step: int) -> None:
        rng = self.rng
        options: list[tuple[str, float]] = [("quiet", 1.0), ("link-faults", 1.0)]
        if len(self.unavailable) < F:
            options.append(("kill", 3.0))
        if self.down:
            options.append(("restart", 3.0))
        if not self.isolated and len(self.down) < F:
            options.append(("partition", 2.0))
        if self.isolated:
            options.append(("heal", 2.0))
        if self.link_faults_on:
            options.append(("clear-link-faults", 1.0))
        rollback_targets = [  # copies the node has run past since (else a no-op replay)
            i
            for i in sorted(self.old_copies)
            if i in self.progressed
            and i not in self.isolated
            and (i in self.down or len(self.unavailable) < F)
        ]
        if self.config.rollback and rollback_targets:
            options.append(("rollback", 2.0))
        names, weights = zip(*options, strict=True)
        action = rng.choices(names, weights)[0]
        if step in self.majority_steps:
            action = "majority-loss"
        self.log(f"step {step}: {action}")
        match action:
            case "kill":
                self.action_kill(step)
            case "restart":
                self.restart(rng.choice(sorted(self.down)))
            case "partition":
                self.action_partition()
            case "heal":
                self.action_heal()
            case "link-faults":
                self.action_link_faults()
            case "clear-link-faults":
                self.action_clear_link_faults()
            case "rollback":
                self.action_rollback(rng.choice(rollback_targets))
            case "majority-loss":
                self.action_majority_loss()
            case _:
                pass
        time.sleep(rng.uniform(*self.config.step_pause))

    # ----------------------------------------------------------------- the run

    def run(self) -> CampaignReport:
        cfg = self.config
        self.log(f"forming a {cfg.nodes}-node fleet in {self.base_dir}")
        self.fleet = self.form_fleet()
        try:
            self.client = self.make_client()
            for _ in range(cfg.initial_users):
                user = self.introduce()
                assert user is not None
                self.op_register(self.client, user, -1, self.rng.randrange(cfg.nodes))
            baseline = self.fleet.mesh.totals()
            threads = [
                threading.Thread(target=self.client_loop, args=(k,), name=f"client-{k}")
                for k in range(cfg.clients)
            ]
            for thread in threads:
                thread.start()
            try:
                for step in range(cfg.steps):
                    self.fault_step(step)
            finally:
                self.stop.set()
                for thread in threads:
                    thread.join(2 * cfg.request_timeout + 10)
                    if thread.is_alive():
                        self.violation(f"{thread.name} did not stop (a request without bound?)")
            self.report.injected = self.fleet.mesh.totals() - baseline
            self.restore()
            self.final_checks()
        finally:
            self.fleet.stop_all()
            self.fleet.mesh.close()
            self.log_file.close()
        return self.report

    def form_fleet(self, attempts: int = 3) -> LocalFleet:
        """Form and start a fleet; retried on a port collision at start-up (formation
        picks "free" ports by binding port 0 and closing, and the proxies' or anyone's
        next ephemeral bind can take one before the node binds it)."""
        for attempt in range(1, attempts + 1):
            try:
                return start_local_fleet(
                    self.base_dir / f"fleet-{attempt}" if attempt > 1 else self.base_dir / "fleet",
                    nodes=self.config.nodes,
                    mesh_seed=self.seed,
                )
            except _FAILED as exc:
                if attempt == attempts or "could not bind" not in str(exc):
                    raise
                self.log(f"fleet start-up lost a port race (attempt {attempt}); forming anew")
        raise AssertionError("unreachable")  # pragma: no cover

    def restore(self) -> None:
        assert self.fleet is not None
        self.fleet.mesh.heal()
        self.fleet.mesh.set_faults()
        self.isolated = set()
        for i in sorted(self.down):
            self.restart(i)
        self.log("restored: healed, faults off, every node started")
        try:
            self.fleet.leader(timeout=20)
        except _FAILED:
            self.violation("no single leader within 20 s after restoring the fleet")
        self.wait_stable()

    def wait_stable(self, timeout: float = 30.0) -> None:
        """All nodes report the same applied index, twice in a row 0.5 s apart."""
        assert self.fleet is not None
        deadline = time.monotonic() + timeout
        previous: object = None
        while time.monotonic() < deadline:
            infos = [self.fleet.info(i) for i in range(self.config.nodes)]
            keys = {
                (n.last_applied, n.record_count, n.tombstone_count) if n else None for n in infos
            }
            if len(keys) == 1 and None not in keys:
                if keys == previous:
                    self.log(f"converged: (last_applied, records, tombstones) = {keys.pop()}")
                    return
                previous = keys
            else:
                previous = None
            time.sleep(0.5)
        assert self.fleet is not None
        detail = []
        for i in range(self.config.nodes):
            proc = self.fleet.procs.get(i)
            status = "not started" if proc is None else f"exit={proc.poll()}"
            info = self.fleet.info(i)
            facts = (
                "no answer"
                if info is None
                else f"leader={info.is_leader} quorum={info.has_quorum} term={info.term} "
                f"commit={info.commit_index} applied={info.last_applied} "
                f"records={info.record_count} tombstones={info.tombstone_count}"
            )
            detail.append(f"node {i} ({status}): {facts}")
        self.violation(f"replicas did not converge within {timeout:.0f} s: " + "; ".join(detail))

    def final_checks(self) -> None:
        assert self.fleet is not None
        assert self.client is not None
        report = self.report
        specs = self.history.specs
        live = gone = 0
        for user_id in sorted(specs):
            spec = specs[user_id]
            op = self.history.begin(user_id, OpKind.READ, client=-1, node=0)
            seen: list[Output | None] = [
                self.read_final(user_id, i) for i in range(self.config.nodes)
            ]
            if len(set(seen)) != 1 or seen[0] is None:
                self.history.unknown(op)
                self.violation(f"replicas disagree on {user_id!r}: {seen}")
                continue
            value = seen[0]
            self.history.ok(op, value)
            if value == "locked":
                gone += 1
                report.final[user_id] = f"locked(limit {spec.limit})"
            elif value == spec.unknown_limit:
                report.final[user_id] = "absent"
            else:
                assert isinstance(value, int)
                live += 1
                report.final[user_id] = f"{spec.limit - value}/{spec.limit} used"
                if not 0 <= value <= spec.limit:
                    self.violation(f"{user_id!r}: replicas say {value} left, limit {spec.limit}")
        self.check_status(live, gone)
        self.scan_logs()
        for i, marks in sorted(self.rejoining.items()):
            after = _log_since(self.fleet.layout.nodes[i].host_dir, marks)
            if _REJOINED not in after:
                self.violation(f"node {i} never rejoined the fleet after its replayed state")
            else:
                self.report.faults["rejoined"] += 1
        report.history = self.history.ops()
        report.specs = dict(specs)
        problems, report.checks = history_violations(
            self.seed,
            report.history,
            report.specs,
            self.acknowledged,
            max_configs=self.config.max_configs,
        )
        for problem in problems:
            self.violation(problem)
        for key, result in sorted(report.checks.items()):
            if result.linearizable:
                final = ABSENT if result.final_state is None else result.final_state
                self.log(
                    f"{key.decode()}: {result.ops} ops linearizable "
                    f"({result.configs} configs), final {describe_state(final)}"
                )

    def scan_logs(self) -> None:
        """Report CRITICAL/ERROR lines of every node log (not violations by themselves:
        the invariants decide; but e.g. pysyncobj truncating already-applied entries is
        worth a look)."""
        assert self.fleet is not None
        logs = [node.host_dir / "node.log" for node in self.fleet.layout.nodes]
        logs += sorted(self.base_dir.glob("replaced/*/node.log"))  # replaced dirs' logs
        seen: set[str] = set()
        for path in logs:
            node = path.parent.parent.name if path.parent.name == "host" else path.parent.name
            text = path.read_text(encoding="utf-8", errors="replace")
            for line in text.splitlines():
                serious = " CRITICAL " in line or (
                    " ERROR " in line and "RollbackError" not in line
                )
                if serious and line not in seen:  # copies of a directory repeat its log
                    seen.add(line)
                    self.report.warnings.append(f"{node.split('-before')[0]}: {line[:240]}")
        if self.report.warnings:
            self.log(f"{len(self.report.warnings)} CRITICAL/ERROR log lines (see summary)")

    def read_final(self, user_id: bytes, node: int) -> Output | None:
        assert self.client is not None
        try:
            answer = self.client.call(
                AttemptsRemainingRequest(user_id).to_bytes(), prefer=node, failover=False
            )
        except Unavailable:
            return None
        response = answer.response
        assert isinstance(response, AttemptsRemainingResponse)
        if response.outcome is Outcome.LOCKED_OUT:
            return "locked"
        if response.outcome is Outcome.OK:
            return response.attempts_remaining
        return None

    def check_status(self, live: int, gone: int) -> None:
        assert self.client is not None
        counts = set()
        for i in range(self.config.nodes):
            try:
                answer = self.client.call(StatusRequest().to_bytes(), prefer=i, failover=False)
            except Unavailable:
                self.violation(f"node {i} does not answer its status after the run")
                continue
            response = answer.response
            assert isinstance(response, StatusResponse)
            counts.add((response.record_count, response.tombstone_count))
        if counts != {(live, gone)}:
            self.violation(
                f"record/tombstone counts per node {sorted(counts)} differ from the "
                f"per-user reads ({live} live, {gone} tombstoned)"
            )


def history_violations(
    seed: int,
    ops: list[Op],
    specs: dict[bytes, KeySpec],
    acknowledged: set[bytes],
    *,
    max_configs: int = 2_000_000,
) -> tuple[list[str], dict[bytes, CheckResult]]:
    """Every history-based invariant (checks 2-4 of the module docstring), as messages
    naming the seed; and the checker's per-key results. The final state of a key is the
    output of its READ operation (the converged replicas' answer)."""
    problems: list[str] = []
    per_key: dict[bytes, list[Op]] = {key: [] for key in specs}
    for op in ops:
        per_key[op.key].append(op)
    results = check_history(ops, specs, max_configs=max_configs)
    for key, result in sorted(results.items()):
        spec, key_ops = specs[key], per_key[key]
        if result.linearizable is not True:
            problems.append(f"[seed {seed}] " + result.explain(spec))
        problems.extend(f"[seed {seed}] {key!r}: {p}" for p in ke2_window_violations(spec, key_ops))
        final = [o.output for o in key_ops if o.kind is OpKind.READ and o.output is not None]
        if key in acknowledged and spec.unknown_limit in final:
            problems.append(f"[seed {seed}] acknowledged registration of {key!r} is lost")
        if "locked" in final:
            # A tombstone needs `limit` counted attempts since some reset: at least that
            # many granted or unknown-outcome begins in total.
            counted = sum(
                1
                for o in key_ops
                if o.kind is OpKind.BEGIN
                and (o.output is None or (isinstance(o.output, int) and o.output < spec.limit))
            )
            if counted < spec.limit:
                problems.append(
                    f"[seed {seed}] {key!r} is tombstoned but at most {counted} attempts "
                    f"were ever counted (limit {spec.limit})"
                )
    return problems, results


def holds_anchored_record(host_dir: Path, nvram_dir: Path) -> bool:
    """Test oracle (reads only): does the journal in ``host_dir`` still contain the record
    the node's NVRAM anchor names? If so, starting from it forgets nothing the node ever
    acted on (it may lack records written after the anchor, which were never acted on:
    ADR 0005), and the node must resume; if not, it is a rollback and must be refused.

    Walks the journal's clear framing (prefix, then length-prefixed sealed records; a
    record's digest is SHA-256 of the digest label and the sealed blob): nothing is
    unsealed."""
    anchor = FileAnchorStore(nvram_dir).read_anchor()
    try:
        data = (host_dir / JournalConfig.FILE_NAME).read_bytes()
    except FileNotFoundError:
        return anchor is None
    if anchor is None:
        return True
    if len(data) < _JOURNAL_PREFIX.size:
        return False
    fields = _JOURNAL_PREFIX.unpack_from(data)
    incarnation, seq, digest = fields[4], fields[5] - 1, fields[6]
    if incarnation != anchor.incarnation:
        return False
    pos = _JOURNAL_PREFIX.size
    found = (seq, digest) == (anchor.seq, anchor.digest)
    while not found and pos + 4 <= len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        blob = data[pos + 4 : pos + 4 + length]
        if len(blob) != length:
            break  # torn tail
        seq, digest = seq + 1, hashlib.sha256(DIGEST_LABEL + blob).digest()
        found = (seq, digest) == (anchor.seq, anchor.digest)
        pos += 4 + length
    return found


_REFUSALS: Final = ("RollbackError", "VerificationError")
_LOGS: Final = ("stdout.log", "node.log")
_REJOINED: Final = "rejoined the fleet as incarnation"


def _refusal_line(log: str) -> str:
    for line in log.splitlines():
        if any(word in line for word in _REFUSALS):
            return line[:300]
    return "(no refusal logged)"


def _log_sizes(host_dir: Path) -> dict[str, int]:
    sizes = {}
    for name in _LOGS:
        with contextlib.suppress(OSError):
            sizes[name] = (host_dir / name).stat().st_size
    return sizes


def _log_since(host_dir: Path, sizes: dict[str, int]) -> str:
    """What the node wrote to its logs since ``sizes`` was taken."""
    parts = []
    for name in _LOGS:
        with contextlib.suppress(OSError), (host_dir / name).open("rb") as f:
            f.seek(sizes.get(name, 0))
            parts.append(f.read().decode("utf-8", errors="replace"))
    return "\n".join(parts)


def run_campaign(config: CampaignConfig) -> CampaignReport:
    """Run one campaign (see the module docstring); never leaves a child process behind.
    The campaign directory is removed unless the run failed or ``keep_dir``."""
    if config.base_dir is not None:
        config.base_dir.mkdir(parents=True, exist_ok=True)
        base_dir = Path(tempfile.mkdtemp(prefix=f"campaign-{config.seed}-", dir=config.base_dir))
    else:
        base_dir = Path(tempfile.mkdtemp(prefix=f"hsmvault-campaign-{config.seed}-"))
    campaign = _Campaign(config, base_dir)
    report = campaign.report
    try:
        campaign.run()
    except BaseException as exc:  # record it with the seed, then re-raise
        report.violations.append(
            f"[seed {config.seed}] campaign aborted: {type(exc).__name__}: {exc}"
        )
        raise
    finally:
        campaign.log_file.close()
        report.duration = time.monotonic() - campaign.started
        if not report.violations and not config.keep_dir:
            shutil.rmtree(base_dir, ignore_errors=True)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.integration.campaign")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--max-users", type=int, default=None, help="default: max(12, steps // 3)")
    parser.add_argument("--base-dir", type=Path, default=None)
    parser.add_argument("--keep-dir", action="store_true")
    parser.add_argument("--no-majority-loss", action="store_true")
    parser.add_argument("--quiet", action="store_true", help="print only the summary")
    args = parser.parse_args(argv)
    # SIGTERM (timeout, CI cancel) unwinds like Ctrl-C, so teardown kills every node.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    config = CampaignConfig(
        seed=args.seed,
        steps=args.steps,
        clients=args.clients,
        max_users=args.max_users or max(12, args.steps // 3),
        base_dir=args.base_dir,
        keep_dir=args.keep_dir,
        majority_loss=not args.no_majority_loss,
        verbose=not args.quiet,
    )
    report = run_campaign(config)
    print(report.summary())
    return 0 if not report.violations else 1


if __name__ == "__main__":
    sys.exit(main())
