"""The linearizability checker on hand-built histories (no fleet needed).

Each history is a list of operations with invoke/complete times; ``None`` completion is an
unknown outcome (timeout / UNAVAILABLE). Limits are small so the histories stay readable.
"""

from __future__ import annotations

import random
import threading
import time

import pytest

from .history import (
    ABSENT,
    GONE,
    UNKNOWN_LIMIT,
    History,
    KeySpec,
    Op,
    OpKind,
    Output,
    check_history,
    check_key,
    ke2_window_violations,
    step,
)

KEY = b"alice"
SPEC = KeySpec(limit=5)
FAKE = UNKNOWN_LIMIT - 1


class Builder:
    """Hand-built single-key histories: ``b.begin(0, 1, 4)`` = a BeginAttempt invoked at
    t=0, answered at t=1 with 4 attempts remaining."""

    def __init__(self, key: bytes = KEY) -> None:
        self.key = key
        self.ops: list[Op] = []

    def _add(
        self,
        kind: OpKind,
        invoke: float,
        complete: float | None,
        output: Output | None,
        *,
        right: bool = False,
        real: bool = True,
    ) -> Builder:
        if complete is None:
            output = None
        self.ops.append(
            Op(len(self.ops), self.key, kind, invoke, complete, output, right=right, real=real)
        )
        return self

    def register(self, invoke: float, complete: float | None, output: Output = "ok") -> Builder:
        return self._add(OpKind.REGISTER, invoke, complete, output)

    def begin(self, invoke: float, complete: float | None, output: Output | None = None) -> Builder:
        return self._add(OpKind.BEGIN, invoke, complete, output)

    def success(self, invoke: float, complete: float | None, output: Output = "ok") -> Builder:
        return self._add(OpKind.FINISH, invoke, complete, output, right=True)

    def failure(self, invoke: float, complete: float | None) -> Builder:
        return self._add(OpKind.FINISH, invoke, complete, "invalid", right=False)

    def read(self, invoke: float, complete: float, output: Output) -> Builder:
        return self._add(OpKind.READ, invoke, complete, output)

    def check(self, spec: KeySpec = SPEC) -> bool | None:
        result = check_key(self.key, spec, self.ops)
        text = result.explain(spec)
        assert text  # the explanation always renders
        return result.linearizable


def registered() -> Builder:
    return Builder().register(0, 1)


# --------------------------------------------------------------------------- the model


def test_model_counts_resets_and_erases_like_the_vault_state() -> None:
    spec = KeySpec(limit=2)
    begin = Op(0, KEY, OpKind.BEGIN, 0, 1, None)
    right = Op(1, KEY, OpKind.FINISH, 0, 1, None, right=True)
    wrong = Op(2, KEY, OpKind.FINISH, 0, 1, None, right=False)
    assert step(spec, ABSENT, begin) == (ABSENT, spec.unknown_limit - 1)
    assert step(spec, 0, begin) == (1, 1)
    assert step(spec, 1, begin) == (2, 0)
    assert step(spec, 2, begin) == (GONE, "locked")  # the attempt past the limit erases
    assert step(spec, 2, wrong) == (GONE, "invalid")  # RecordFailure at the limit erases
    assert step(spec, 1, wrong) == (1, "invalid")
    assert step(spec, 2, right) == (0, "ok")
    assert step(spec, GONE, right) == (GONE, "invalid")  # stale version


# --------------------------------------------------------------------------- accepted


def test_sequential_history_with_reset_is_linearizable() -> None:
    b = registered().begin(2, 3, 4).begin(4, 5, 3).success(6, 7).begin(8, 9, 4)
    assert b.read(10, 11, 4).check() is True


def test_overlapping_begins_may_linearize_in_either_order() -> None:
    # The one that answered first saw the later count: fine, they overlapped.
    assert registered().begin(2, 5, 4).begin(3, 4, 3).check() is True


def test_unknown_begin_may_or_may_not_have_counted() -> None:
    assert registered().begin(2, 3, 4).begin(4, None).begin(6, 7, 2).check() is True
    assert registered().begin(2, 3, 4).begin(4, None).begin(6, 7, 3).check() is True


def test_unknown_begin_may_take_effect_long_after_the_client_gave_up() -> None:
    # Queued on a partitioned node, committed after the heal.
    b = registered().begin(2, 3, 4).begin(4, None).begin(10, 11, 3).begin(12, 13, 1)
    assert b.check() is True


def test_unknown_success_may_explain_a_reset() -> None:
    b = registered().begin(2, 3, 4).begin(4, 5, 3).success(6, None).begin(8, 9, 4)
    assert b.check() is True


def test_fake_session_finish_is_a_noop_and_absent_user_gets_the_fake_answer() -> None:
    b = Builder().begin(0, 1, FAKE)
    b._add(OpKind.FINISH, 2, 3, "invalid", right=False, real=False)
    b.register(4, 5).begin(6, 7, 4)
    assert b.check() is True


def test_lockout_sequence_is_linearizable() -> None:
    spec = KeySpec(limit=3)
    b = registered().begin(2, 3, 2).begin(4, 5, 1).begin(6, 7, 0).failure(8, 9)
    b.begin(10, 11, "locked").register(12, 13, "locked").read(14, 15, "locked")
    assert b.check(spec) is True


def test_unknown_registration_then_already_registered() -> None:
    b = Builder().register(0, None).register(2, 3, "already").begin(4, 5, 4)
    assert b.check() is True


# --------------------------------------------------------------------------- rejected


def test_rejects_the_same_count_seen_by_two_sequential_begins() -> None:
    # Two completed, non-overlapping BeginAttempts both saw 4 left: an increment was lost.
    assert registered().begin(2, 3, 4).begin(4, 5, 4).check() is False


def test_rejects_a_counter_that_goes_back_up_without_a_success() -> None:
    assert registered().begin(2, 3, 4).begin(4, 5, 3).begin(6, 7, 4).check() is False
    # A failed login (RecordFailure) does not reset either.
    assert registered().begin(2, 3, 4).failure(4, 5).begin(6, 7, 4).check() is False


def test_rejects_a_success_that_is_not_reflected() -> None:
    assert registered().begin(2, 3, 4).success(4, 5).begin(6, 7, 3).check() is False


def test_rejects_more_than_one_effect_of_one_unknown_operation() -> None:
    assert registered().begin(2, 3, 4).begin(4, None).begin(6, 7, 1).check() is False


def test_rejects_an_unknown_operation_taking_effect_before_it_was_invoked() -> None:
    b = registered().begin(2, 3, 4).begin(4, 5, 2).begin(6, None)
    assert b.check() is False


def test_rejects_a_lost_acknowledged_registration() -> None:
    assert registered().begin(2, 3, FAKE).check() is False
    assert registered().read(2, 3, UNKNOWN_LIMIT).check() is False


def test_rejects_erased_material_coming_back() -> None:
    spec = KeySpec(limit=1)
    b = registered().begin(2, 3, 0).begin(4, 5, "locked").begin(6, 7, 0)
    assert b.check(spec) is False


def test_rejects_more_granted_attempts_than_the_limit() -> None:
    spec = KeySpec(limit=2)
    # Three concurrent begins all granted on a limit of 2.
    assert registered().begin(2, 6, 1).begin(3, 6, 0).begin(4, 6, 0).check(spec) is False
    assert ke2_window_violations(spec, registered().begin(2, 3, 1).begin(4, 5, 0).ops) == []
    too_many = registered().begin(2, 3, 1).begin(4, 5, 0).begin(6, 7, 0).ops
    assert ke2_window_violations(spec, too_many)
    # ...unless a success could have reset the counter in between.
    reset = registered().begin(2, 3, 1).begin(4, 5, 0).success(5.5, None).begin(6, 7, 1).ops
    assert ke2_window_violations(spec, reset) == []


def test_final_read_must_match() -> None:
    assert registered().begin(2, 3, 4).read(4, 5, 4).check() is True
    assert registered().begin(2, 3, 4).read(4, 5, 5).check() is False


def test_failure_report_names_the_offending_operation() -> None:
    b = registered().begin(2, 3, 4).begin(4, 5, 4)
    result = check_key(KEY, SPEC, b.ops)
    assert result.linearizable is False
    text = result.explain(SPEC)
    assert "NOT linearizable" in text
    assert "#2" in text  # the second begin is the one that does not fit
    assert "model would answer 3" in text


def test_budget_exhaustion_is_inconclusive_not_a_pass() -> None:
    b = registered().begin(2, 3, 4).begin(4, 5, 3)
    assert check_key(KEY, SPEC, b.ops, max_configs=1).linearizable is None


# --------------------------------------------------------------------------- at scale


def _simulated_history(
    seed: int, n_ops: int, clients: int, spread: float = 1.0
) -> tuple[list[Op], KeySpec]:
    """A history produced by a correct sequential vault with overlapping intervals: each
    op takes effect at a point inside [invoke, complete]; some outcomes are hidden
    (unknown), and some unknown ops never took effect."""
    rng = random.Random(seed)
    spec = KeySpec(limit=rng.choice([3, 4, 5]))
    state = ABSENT
    ops: list[Op] = []
    t = 0.0
    busy_until = [0.0] * clients
    for op_id in range(n_ops):
        t += rng.uniform(0.01, 0.3)  # linearization point
        client = rng.randrange(clients)
        invoke = max(busy_until[client], t - rng.uniform(0, spread))
        if invoke > t:
            t = invoke
        r = rng.random()
        if state == ABSENT and r < 0.5:
            kind, right = OpKind.REGISTER, False
        elif r < 0.7:
            kind, right = OpKind.FINISH, rng.random() < 0.8
        elif r < 0.95:
            kind, right = OpKind.BEGIN, False
        else:
            kind, right = OpKind.REGISTER, False
        real = state >= 0 if kind is OpKind.FINISH else True
        probe = Op(op_id, KEY, kind, invoke, 0.0, None, right=right, real=real)
        hidden = rng.random() < 0.12
        applied = not hidden or rng.random() < 0.5
        if applied:
            state, out = step(spec, state, probe)
        else:
            out = None
        complete = t + rng.uniform(0, spread)
        busy_until[client] = complete
        if hidden:
            ops.append(Op(op_id, KEY, kind, invoke, None, None, right=right, real=real))
        else:
            ops.append(Op(op_id, KEY, kind, invoke, complete, out, right=right, real=real))
    return ops, spec


@pytest.mark.parametrize("seed", range(12))
def test_simulated_correct_histories_are_accepted(seed: int) -> None:
    ops, spec = _simulated_history(seed, n_ops=150, clients=4)
    started = time.monotonic()
    result = check_key(KEY, spec, ops)
    assert result.linearizable is True, result.explain(spec)
    assert time.monotonic() - started < 10


def _lose_one_increment(ops: list[Op]) -> list[Op] | None:
    """Make a granted begin observe the same count as an earlier, non-overlapping one with
    no success that could have reset the counter in between (as if the later increment
    were lost); ``None`` if the history has no such pair."""
    granted = [
        o
        for o in ops
        if o.kind is OpKind.BEGIN and isinstance(o.output, int) and o.output not in (FAKE, 0)
    ]
    for a in granted:
        for b in granted:
            if a.complete is None or not a.complete < b.invoke:
                continue
            if any(  # only a reset can lower the count
                o.invoke < (b.complete or 0) and (o.complete or float("inf")) > a.invoke
                for o in ops
                if o.kind is OpKind.FINISH and o.right
            ):
                continue
            return [
                Op(o.id, o.key, o.kind, o.invoke, o.complete, a.output, o.right, o.real)
                if o is b
                else o
                for o in ops
            ]
    return None


def test_simulated_histories_with_a_lost_increment_are_rejected() -> None:
    mutated_histories = 0
    for seed in range(100):
        ops, spec = _simulated_history(seed, n_ops=200, clients=4, spread=0.15)
        mutated = _lose_one_increment(ops)
        if mutated is None:
            continue
        result = check_key(KEY, spec, mutated)
        assert result.linearizable is False, f"seed {seed}: " + result.explain(spec)
        mutated_histories += 1
        if mutated_histories == 20:
            break
    assert mutated_histories == 20


def test_history_recorder_is_thread_safe_and_checks_per_key() -> None:
    history = History()
    spec = KeySpec(limit=255)
    keys = [b"k%d" % i for i in range(4)]
    for key in keys:
        history.declare(key, spec)
        op = history.begin(key, OpKind.REGISTER)
        history.ok(op, "ok")
    lock = threading.Lock()
    counters = dict.fromkeys(keys, 0)

    def worker(k: int) -> None:
        for j in range(50):
            key = keys[(k + j) % len(keys)]
            op = history.begin(key, OpKind.BEGIN, client=k)
            with lock:  # the "vault": one linearization point inside the interval
                counters[key] += 1
                remaining = spec.limit - counters[key]
            history.ok(op, remaining)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    dropped = history.begin(keys[0], OpKind.FINISH)
    history.discard(dropped)
    history.begin(keys[1], OpKind.BEGIN)  # never ended: counts as unknown
    ops = history.ops()
    assert len(ops) == 4 + 200 + 1
    results = check_history(ops, history.specs)
    assert all(r.linearizable for r in results.values()), [
        r.explain(spec) for r in results.values()
    ]
    with pytest.raises(KeyError):
        check_history([*ops, Op(999, b"undeclared", OpKind.READ, 0, 1, 0)], history.specs)
