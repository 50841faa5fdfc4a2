"""Client-observed histories of the vault's guess counters, and a linearizability checker.

A *history* is what clients saw: for every operation, when it was invoked and when it
completed (``time.monotonic`` in one process, so comparable across client threads), and
its outcome — or that its outcome is **unknown** (timeout, ``UNAVAILABLE``): such an
operation may have taken effect or not, at most once, at any time after its invocation
(possibly long after the client gave up: a command queued on a partitioned node can
commit after the partition heals).

The checker decides whether, for every user id, the observed operations can be put in one
sequential order that (1) respects real time — an operation that completed before another
was invoked comes first — and (2) produces exactly the observed outcomes when run through a
sequential model of the vault (:func:`step`). That is *linearizability* (Herlihy & Wing,
"Linearizability: A Correctness Condition for Concurrent Objects", ACM TOPLAS 12(3),
1990). Because linearizability is *local* (ibid., §3.3: a history is linearizable iff
every object's sub-history is), each user id is checked on its own: every vault command
touches exactly one record.

The sequential model (one record; mirrors :mod:`hsmvault.hsm.vault_state` and the door in
:mod:`hsmvault.hsm.vault_service` for the operations the campaign issues; no Replace or
Delete, so a record has one version):

* state: ``ABSENT``, ``GONE`` (tombstone: limit reached, material erased), or
  ``used`` guesses (``0 <= used <= limit``);
* ``register`` — ABSENT → 0, ``"ok"``; a record → ``"already"``; GONE → ``"locked"``;
* ``begin`` (LoginStart = committed ``BeginAttempt``) — ``used < limit`` → ``used + 1``
  and the answer ``remaining = limit - used - 1``; ``used >= limit`` → GONE,
  ``"locked"``; GONE → ``"locked"``; ABSENT → unchanged, the fake answer
  ``unknown_limit - 1`` (RFC 9807 §10.9 fake record);
* ``finish`` (LoginFinish) of a session whose start found the record (``real``):
  right secret → ``RecordSuccess``: a record → 0, ``"ok"``, else ``"invalid"``; wrong
  secret (forged KE3) → ``RecordFailure``: ``used >= limit`` → GONE; ``"invalid"``.
  A session whose start got the fake answer commits a ``NoOp``: ``"invalid"``;
* ``read`` (AttemptsRemaining, only issued when the fleet is quiescent and converged):
  ``limit - used``, ``"locked"``, or ``unknown_limit`` for ABSENT.

The search is Wing & Gong's (J. M. Wing and C. Gong, "Testing and Verifying Concurrent
Objects", J. Parallel and Distributed Computing 17, 1993): repeatedly pick an operation
that is *minimal* — invoked before every not-yet-linearized completed operation returned —
apply it to the model, backtrack on a mismatch. Two reductions make it practical:

* **memoisation of configurations** ``(set of linearized operations, model state)``:
  a configuration already explored cannot lead anywhere new (G. Lowe, "Testing for
  linearizability", Concurrency and Computation: Practice and Experience 29(4), 2017,
  which adds this cache to Wing & Gong's algorithm);
* **unknown-outcome operations**: they have no response, so their return time is +∞ and
  the search may leave them out (succeeds when every *completed* operation is
  linearized). Two enabled unknown operations of the same kind are interchangeable from
  then on (both can be placed anywhere later), so only the earliest-invoked one of each
  kind is tried; and one whose effect would leave the state unchanged is not tried (not
  placing it keeps every option open).

The search is bounded (``max_configs``): an exhausted budget is reported as
*inconclusive*, never as a pass.

This module is a test utility; no code was taken from other implementations.
"""

from __future__ import annotations

import enum
import itertools
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeAlias

__all__ = [
    "ABSENT",
    "GONE",
    "UNKNOWN_LIMIT",
    "CheckResult",
    "History",
    "KeySpec",
    "Op",
    "OpKind",
    "Output",
    "check_history",
    "check_key",
    "describe_state",
    "ke2_window_violations",
    "step",
]

#: Model states other than a guess count.
ABSENT: Final = -1
GONE: Final = -2
#: The limit unknown user ids appear to have (``VaultServiceConfig`` default).
UNKNOWN_LIMIT: Final = 10
#: Default bound on explored configurations per key.
DEFAULT_MAX_CONFIGS: Final = 2_000_000

#: An operation's outcome: ``"ok"``, ``"already"``, ``"locked"``, ``"invalid"``, or a
#: number of attempts remaining.
Output: TypeAlias = str | int


class OpKind(enum.Enum):
    REGISTER = "register"
    BEGIN = "begin"
    FINISH = "finish"
    READ = "read"


@dataclass(frozen=True)
class KeySpec:
    """What the model needs to know about one user id."""

    limit: int
    unknown_limit: int = UNKNOWN_LIMIT

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= 255:
            raise ValueError("guess limit must be in 1..255")


@dataclass(frozen=True)
class Op:
    """One client-observed operation on one key.

    ``complete``/``output`` are ``None`` when the outcome is unknown (the operation may
    or may not have taken effect, at most once, at any time after ``invoke``).
    ``right``/``real`` only matter for FINISH (see the module docstring).
    """

    id: int
    key: bytes
    kind: OpKind
    invoke: float
    complete: float | None
    output: Output | None
    right: bool = False
    real: bool = True
    client: int = -1
    node: int = -1

    @property
    def unknown(self) -> bool:
        return self.complete is None

    def __str__(self) -> str:
        what = self.kind.value
        if self.kind is OpKind.FINISH:
            what += "(" + ("right" if self.right else "wrong")
            what += ")" if self.real else ",fake-session)"
        end = "?" if self.complete is None else f"{self.complete:.4f}"
        out = "UNKNOWN" if self.output is None else repr(self.output)
        return f"#{self.id} c{self.client}@n{self.node} {what} -> {out} [{self.invoke:.4f}, {end}]"


def describe_state(state: int) -> str:
    if state == ABSENT:
        return "ABSENT"
    if state == GONE:
        return "GONE"
    return f"used={state}"


def step(spec: KeySpec, state: int, op: Op) -> tuple[int, Output]:
    """The sequential model: ``(new state, output)`` of ``op`` in ``state``."""
    limit = spec.limit
    match op.kind:
        case OpKind.REGISTER:
            if state == ABSENT:
                return 0, "ok"
            return state, ("locked" if state == GONE else "already")
        case OpKind.BEGIN:
            if state == ABSENT:
                return ABSENT, spec.unknown_limit - 1
            if state == GONE or state >= limit:
                return GONE, "locked"
            return state + 1, limit - state - 1
        case OpKind.FINISH:
            if not op.real or state < 0:  # NoOp, or RecordX on a gone record (stale)
                return state, "invalid"
            if op.right:
                return 0, "ok"
            return (GONE if state >= limit else state), "invalid"
        case OpKind.READ:
            if state == ABSENT:
                return state, spec.unknown_limit
            if state == GONE:
                return state, "locked"
            return state, limit - state
    raise AssertionError("unreachable")  # pragma: no cover


# --------------------------------------------------------------------------- recording


class History:
    """A thread-safe recorder of client operations.

    ``begin`` returns an id; end each operation with exactly one of :meth:`ok`,
    :meth:`unknown` (timeout / UNAVAILABLE: may or may not have happened) or
    :meth:`discard` (certainly had no effect and observed nothing, e.g. ``NO_SESSION``).
    An operation never ended counts as unknown.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._open: dict[int, tuple[bytes, OpKind, float, bool, bool, int, int]] = {}
        self._ops: dict[int, Op] = {}
        self.specs: dict[bytes, KeySpec] = {}

    def declare(self, key: bytes, spec: KeySpec) -> None:
        with self._lock:
            self.specs[key] = spec

    def begin(
        self,
        key: bytes,
        kind: OpKind,
        *,
        right: bool = False,
        real: bool = True,
        client: int = -1,
        node: int = -1,
    ) -> int:
        with self._lock:
            op_id = next(self._ids)
            self._open[op_id] = (key, kind, self._clock(), right, real, client, node)
            return op_id

    def _end(self, op_id: int, output: Output | None, *, keep: bool = True) -> None:
        now = self._clock()
        with self._lock:
            key, kind, invoke, right, real, client, node = self._open.pop(op_id)
            if keep:
                complete = None if output is None else now
                self._ops[op_id] = Op(
                    op_id, key, kind, invoke, complete, output, right, real, client, node
                )

    def ok(self, op_id: int, output: Output) -> None:
        """The operation completed with this observed outcome."""
        self._end(op_id, output)

    def unknown(self, op_id: int) -> None:
        """No definite answer: the operation may or may not take effect (once)."""
        self._end(op_id, None)

    def discard(self, op_id: int) -> None:
        """The operation certainly had no effect and observed nothing."""
        self._end(op_id, None, keep=False)

    def ops(self) -> list[Op]:
        """Every ended operation, plus still-open ones as unknown, by id."""
        with self._lock:
            ops = dict(self._ops)
            for op_id, (key, kind, invoke, right, real, client, node) in self._open.items():
                ops[op_id] = Op(op_id, key, kind, invoke, None, None, right, real, client, node)
        return [ops[i] for i in sorted(ops)]


# --------------------------------------------------------------------------- checking


@dataclass
class CheckResult:
    """The verdict for one key (``linearizable`` is ``None`` when inconclusive)."""

    key: bytes
    linearizable: bool | None
    ops: int
    unknown_ops: int
    configs: int
    witness: list[Op] = field(default_factory=list)
    """A linearization (when linearizable): the order the model ran the ops in."""
    final_state: int | None = None
    deepest: list[Op] = field(default_factory=list)
    """When not linearizable: the longest prefix of completed ops that could be placed."""
    deepest_state: int | None = None
    blocked: list[tuple[Op, Output | None]] = field(default_factory=list)
    """...and the completed ops that were minimal there, with what the model expected."""

    def explain(self, spec: KeySpec) -> str:
        head = (
            f"key {self.key!r} (limit {spec.limit}): {self.ops} ops "
            f"({self.unknown_ops} unknown), {self.configs} configurations explored"
        )
        if self.linearizable:
            final = ABSENT if self.final_state is None else self.final_state
            return head + f": linearizable, final {describe_state(final)}"
        if self.linearizable is None:
            return head + ": INCONCLUSIVE (search budget exhausted)"
        lines = [head + ": NOT linearizable"]
        lines.append("  longest consistent prefix (model order):")
        state = ABSENT
        for op in self.deepest:
            state, out = step(spec, state, op)
            lines.append(f"    {op}   => {describe_state(state)} (model says {out!r})")
        at = ABSENT if self.deepest_state is None else self.deepest_state
        lines.append(
            f"  then, in state {describe_state(at)}, the minimal completed ops were "
            "(none of them leads to a full linearization):"
        )
        for op, expected in self.blocked:
            lines.append(f"    {op}   model would answer {expected!r}")
        return "\n".join(lines)


def check_key(
    key: bytes, spec: KeySpec, ops: Sequence[Op], *, max_configs: int = DEFAULT_MAX_CONFIGS
) -> CheckResult:
    """Is the history of one key linearizable w.r.t. :func:`step`? (See module doc.)"""
    ops = sorted(ops, key=lambda o: (o.invoke, o.id))
    n = len(ops)
    inf = float("inf")
    ret = [inf if o.complete is None else o.complete for o in ops]
    completed = [i for i in range(n) if not ops[i].unknown]
    completed_mask = 0
    for i in completed:
        completed_mask |= 1 << i
    by_return = sorted(completed, key=lambda i: ret[i])
    n_unknown = n - len(completed)
    signature = [(o.kind, o.right, o.real) for o in ops]

    def min_return(mask: int) -> float:
        for i in by_return:
            if not mask >> i & 1:
                return ret[i]
        return inf

    def candidates(mask: int, state: int) -> list[tuple[int, int]]:
        """Minimal ops that fit the model here: (index, new state), completed first."""
        bound = min_return(mask)
        done_ops: list[tuple[int, int]] = []
        unknown_ops: list[tuple[int, int]] = []
        seen: set[tuple[OpKind, bool, bool]] = set()
        for i in range(n):
            if ops[i].invoke > bound:
                break
            if mask >> i & 1:
                continue
            new_state, out = step(spec, state, ops[i])
            if ops[i].unknown:
                if signature[i] in seen:
                    continue  # an earlier-invoked twin stands for it
                seen.add(signature[i])
                if new_state != state:
                    unknown_ops.append((i, new_state))
            elif out == ops[i].output:
                done_ops.append((i, new_state))
        done_ops.sort(key=lambda c: ret[c[0]])
        return done_ops + unknown_ops

    result = CheckResult(key, None, n, n_unknown, 0)
    visited: set[tuple[int, int]] = {(0, ABSENT)}
    # Iterative DFS: each frame is (mask, state, candidates, next index); path = op order.
    stack: list[tuple[int, int, list[tuple[int, int]], int]] = [
        (0, ABSENT, candidates(0, ABSENT), 0)
    ]
    path: list[int] = []
    best_done = -1
    configs = 1
    while stack:
        mask, state, cands, k = stack[-1]
        if mask & completed_mask == completed_mask:
            result.linearizable = True
            result.witness = [ops[i] for i in path]
            result.final_state = state
            result.configs = configs
            return result
        done_count = (mask & completed_mask).bit_count()
        if done_count > best_done:
            best_done = done_count
            result.deepest = [ops[i] for i in path]
            result.deepest_state = state
            bound = min_return(mask)
            result.blocked = [
                (ops[i], step(spec, state, ops[i])[1])
                for i in range(n)
                if not ops[i].unknown and not mask >> i & 1 and ops[i].invoke <= bound
            ]
        if k == len(cands):
            stack.pop()
            if path:
                path.pop()
            continue
        stack[-1] = (mask, state, cands, k + 1)
        i, new_state = cands[k]
        new_mask = mask | 1 << i
        if (new_mask, new_state) in visited:
            continue
        visited.add((new_mask, new_state))
        configs += 1
        if configs > max_configs:
            result.configs = configs
            return result  # inconclusive
        path.append(i)
        stack.append((new_mask, new_state, candidates(new_mask, new_state), 0))
    result.linearizable = False
    result.configs = configs
    return result


def check_history(
    ops: Iterable[Op],
    specs: Mapping[bytes, KeySpec],
    *,
    max_configs: int = DEFAULT_MAX_CONFIGS,
) -> dict[bytes, CheckResult]:
    """Check every key's sub-history (locality: Herlihy & Wing 1990, §3.3)."""
    per_key: dict[bytes, list[Op]] = {key: [] for key in specs}
    for op in ops:
        if op.key not in specs:
            raise KeyError(f"no KeySpec for key {op.key!r}")
        per_key[op.key].append(op)
    return {
        key: check_key(key, specs[key], key_ops, max_configs=max_configs)
        for key, key_ops in per_key.items()
    }


def ke2_window_violations(spec: KeySpec, ops: Sequence[Op]) -> list[str]:
    """A model-free check of "failed guesses never exceed the limit" for one key.

    A KE2 for a real record is issued only after a granted ``BeginAttempt`` (an observed
    ``begin`` with a number of attempts remaining that is not the fake answer). Only a
    ``RecordSuccess`` resets the count; one can take effect only between its finish's
    invocation and response (or any time after invocation if its outcome is unknown).
    So in any time window that no such reset window overlaps, at most ``limit`` granted
    begins can both start and end. Also each granted answer is in ``0..limit-1``.
    """
    problems: list[str] = []
    fake = spec.unknown_limit - 1
    granted = [
        o for o in ops if o.kind is OpKind.BEGIN and isinstance(o.output, int) and o.output != fake
    ]
    for o in granted:
        assert isinstance(o.output, int)
        if not 0 <= o.output < spec.limit:
            problems.append(f"{o}: attempts remaining out of 0..{spec.limit - 1}")
    resets = sorted(
        (o.invoke, float("inf") if o.complete is None else o.complete)
        for o in ops
        if o.kind is OpKind.FINISH and o.right and o.real and o.output in ("ok", None)
    )
    # Gaps between the union of reset windows: (-inf, first start), (end_k, start_k+1)...
    gaps: list[tuple[float, float]] = []
    lo = float("-inf")
    for start, end in resets:
        if start > lo:
            gaps.append((lo, start))
        lo = max(lo, end)
    gaps.append((lo, float("inf")))
    for lo_t, hi_t in gaps:
        inside = [
            o for o in granted if o.complete is not None and lo_t < o.invoke and o.complete < hi_t
        ]
        if len(inside) > spec.limit:
            problems.append(
                f"{len(inside)} KE2s issued with no possible reset in between "
                f"(limit {spec.limit}): " + ", ".join(str(o) for o in inside)
            )
    return problems
