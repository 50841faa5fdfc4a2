"""One fleet member running pysyncobj Raft behind :class:`FleetTransport`.

:class:`RaftNode` replicates a single method, ``apply(command: bytes) -> bytes``, whose
body is the caller's deterministic state-machine callback. :meth:`RaftNode.submit` commits
a command through the majority and returns the callback's result *on this node*.

Configuration choices (see ``docs/decisions/0004-consensus-engine-pysyncobj.md``):

* our transport (no pickle from the network, no ``password``, no admin commands);
* in-memory journal only (``journalFile=None``) and no snapshots: log compaction is
  switched off, so the log grows with every command (sealed snapshots are a later slice);
* static membership (``dynamicMembershipChange=False``);
* timers from :class:`FleetTimings` (5 ms tick, 10 ms append period by default).

Contracts:

* the state-machine callback runs on pysyncobj's tick thread, in log order, identically on
  every replica; it must be deterministic, must not block, and must not raise. If it
  raises (or returns something other than ``bytes``), the node stops for good
  (fail-stop): applying past a failed entry would let replicas diverge;
* :meth:`RaftNode.submit` raises :class:`Unavailable` when the command is not known to be
  committed within the timeout (no leader, no quorum, leader change, node stopped). The
  command may still commit later: commands must be idempotent (request ids; a later
  slice);
* the node's tick thread stops when the thread that created the node ends (pysyncobj).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from pysyncobj import SyncObj, SyncObjConf, replicated  # type: ignore[import-untyped]
from pysyncobj.config import FAIL_REASON  # type: ignore[import-untyped]

from hsmvault.errors import InvalidParameter, Unavailable
from hsmvault.fleet.codec import MAX_COMMAND_SIZE
from hsmvault.fleet.membership import FleetMembership, FleetNode, IdentitySigner, node_id_for
from hsmvault.fleet.transport import FleetTransport, TransportConfig, fleet_transport_factory

__all__ = ["FleetTimings", "RaftNode", "StateMachine"]

logger = logging.getLogger(__name__)

StateMachine = Callable[[bytes], bytes]
"""Applies one committed command and returns its result. Deterministic; never raises."""

_NEVER: Final = float(2**40)  # seconds: "never" for pysyncobj's compaction timers
_RETRYABLE: Final = frozenset(
    # Failures after which the command is known not to be (and never to be) in the log.
    {
        FAIL_REASON.QUEUE_FULL,
        FAIL_REASON.MISSING_LEADER,
        FAIL_REASON.NOT_LEADER,
        FAIL_REASON.DISCARDED,
    }
)
_FAIL_NAMES: Final = {
    value: name for name, value in vars(FAIL_REASON).items() if isinstance(value, int)
}


@dataclass(frozen=True)
class FleetTimings:
    """Raft timers, in seconds. Defaults favour latency on a local network.

    Constraints (pysyncobj's, checked here): ``election_timeout_min > 3 *
    append_entries_period``, ``election_timeout_max > election_timeout_min``,
    ``connection_timeout >= election_timeout_max``, ``leader_fallback_timeout >
    append_entries_period``; all positive.
    """

    tick: float = 0.005
    """Longest wait of the event loop; incoming bytes wake it sooner."""
    append_entries_period: float = 0.010
    """Leader heartbeat / batching period."""
    election_timeout_min: float = 0.2
    election_timeout_max: float = 0.4
    leader_fallback_timeout: float = 1.0
    """A leader that heard from no majority for this long steps down."""
    connection_timeout: float = 1.0
    """Handshake deadline of a fleet link."""
    reconnect_interval: float = 0.05
    """Wait between two dials of the same peer."""

    def __post_init__(self) -> None:
        values = (
            self.tick,
            self.append_entries_period,
            self.election_timeout_min,
            self.election_timeout_max,
            self.leader_fallback_timeout,
            self.connection_timeout,
            self.reconnect_interval,
        )
        if any(v <= 0 for v in values):
            raise InvalidParameter("timings must be positive")
        if not self.election_timeout_min > 3 * self.append_entries_period:
            raise InvalidParameter("election_timeout_min must exceed 3 append periods")
        if not self.election_timeout_max > self.election_timeout_min:
            raise InvalidParameter("election_timeout_max must exceed election_timeout_min")
        if not self.connection_timeout >= self.election_timeout_max:
            raise InvalidParameter("connection_timeout must be >= election_timeout_max")
        if not self.leader_fallback_timeout > self.append_entries_period:
            raise InvalidParameter("leader_fallback_timeout must exceed the append period")


class _Replicated(SyncObj):  # type: ignore[misc]  # pysyncobj is untyped
    """The pysyncobj object: exactly one replicated method (function id 0)."""

    def __init__(
        self,
        state_machine: StateMachine,
        self_node: FleetNode,
        other_nodes: list[FleetNode],
        conf: Any,
        transport_class: Callable[..., FleetTransport],
    ) -> None:
        self._hsmvault_state_machine = state_machine
        self._hsmvault_failed = False
        super().__init__(
            self_node, other_nodes, conf, nodeClass=FleetNode, transportClass=transport_class
        )

    @replicated  # type: ignore[untyped-decorator]  # pysyncobj is untyped
    def apply(self, command: bytes) -> bytes:
        """Run the state machine on one committed command (tick thread, log order)."""
        try:
            result = self._hsmvault_state_machine(command)
            if type(result) is not bytes:
                raise TypeError("state machine must return bytes")
        except Exception:
            logger.critical("state machine failed; stopping this node (fail-stop)")
            self._hsmvault_failed = True
            self.destroy()
            raise
        return result


class RaftNode:
    """A running fleet member. Starts its tick thread and binds its port on construction.

    Raises :class:`InvalidParameter` if ``identity`` is not in ``membership``, and
    :class:`Unavailable` if the node's port cannot be bound.
    """

    def __init__(
        self,
        identity: IdentitySigner,
        membership: FleetMembership,
        state_machine: StateMachine,
        timings: FleetTimings | None = None,
    ) -> None:
        timings = timings or FleetTimings()
        self._node_id = node_id_for(identity.public_key())
        if self._node_id not in membership:
            raise InvalidParameter("this node's identity is not in the fleet membership")
        config = TransportConfig(
            identity=identity,
            membership=membership,
            handshake_timeout=timings.connection_timeout,
            reconnect_interval=timings.reconnect_interval,
        )
        made: list[FleetTransport] = []
        factory = fleet_transport_factory(config)

        def build(*args: Any) -> FleetTransport:
            transport = factory(*args)
            made.append(transport)
            return transport

        conf = SyncObjConf(
            autoTick=True,
            autoTickPeriod=timings.tick,
            appendEntriesPeriod=timings.append_entries_period,
            appendEntriesUseBatch=True,
            raftMinTimeout=timings.election_timeout_min,
            raftMaxTimeout=timings.election_timeout_max,
            leaderFallbackTimeout=timings.leader_fallback_timeout,
            connectionTimeout=timings.connection_timeout,
            connectionRetryTime=timings.reconnect_interval,
            commandsWaitLeader=True,
            journalFile=None,
            fullDumpFile=None,
            password=None,
            dynamicMembershipChange=False,
            logCompactionMinEntries=2**62,
            logCompactionMinTime=_NEVER,
            useFork=False,
        )
        others = [FleetNode(node_id) for node_id in membership if node_id != self._node_id]
        self._obj = _Replicated(state_machine, FleetNode(self._node_id), others, conf, build)
        self._transport = made[0]
        self._stopped = False
        self._retry_pause = timings.append_entries_period
        if not self._transport.ready:
            self.destroy()
            raise Unavailable("fleet node could not bind its port")

    def __repr__(self) -> str:
        return f"RaftNode(node_id={self._node_id[:12]}…)"

    @property
    def node_id(self) -> str:
        """This node's id (hex)."""
        return self._node_id

    @property
    def is_leader(self) -> bool:
        """Whether this node believes it leads (two nodes may believe so briefly)."""
        return bool(self._obj._isLeader())

    @property
    def has_quorum(self) -> bool:
        """Whether this node is connected to a majority (including itself)."""
        return bool(self._obj.hasQuorum)

    @property
    def last_applied(self) -> int:
        """Index of the last log entry applied on this node."""
        value = self._obj.raftLastApplied
        assert isinstance(value, int)
        return value

    @property
    def failed(self) -> bool:
        """True once the state machine raised and the node stopped (fail-stop)."""
        return bool(self._obj._hsmvault_failed)

    def submit(self, command: bytes, timeout: float) -> bytes:
        """Commit ``command`` through the fleet and return the state machine's result.

        Raises :class:`InvalidParameter` if ``command`` is not bytes, is longer than
        :data:`~hsmvault.fleet.codec.MAX_COMMAND_SIZE` or ``timeout`` is not positive;
        :class:`Unavailable` if the commit is not confirmed within ``timeout`` seconds or
        pysyncobj reports a failure whose outcome is unknown (``LEADER_CHANGED``,
        ``UNKNOWN_OUTCOME``) or final (``REQUEST_DENIED``). After :class:`Unavailable`
        the command may still commit. Failures that prove the command is not in the log
        (``NOT_LEADER``, ``DISCARDED``, ``QUEUE_FULL``, ``MISSING_LEADER``) are retried
        until the deadline.
        """
        if type(command) is not bytes:
            raise InvalidParameter("command must be bytes")
        if len(command) > MAX_COMMAND_SIZE:
            raise InvalidParameter("command exceeds MAX_COMMAND_SIZE")
        if not timeout > 0:
            raise InvalidParameter("timeout must be positive")
        if self._stopped or self.failed:
            raise Unavailable("fleet node is stopped")
        deadline = time.monotonic() + timeout
        while True:
            error, result = self._submit_once(command, deadline - time.monotonic())
            if error == FAIL_REASON.SUCCESS:
                if type(result) is not bytes:
                    raise Unavailable("state machine result missing")
                return result
            reason = _FAIL_NAMES.get(error, "UNKNOWN")
            if error not in _RETRYABLE or time.monotonic() + self._retry_pause >= deadline:
                raise Unavailable(f"command not committed: {reason}")
            time.sleep(self._retry_pause)

    def _submit_once(self, command: bytes, timeout: float) -> tuple[Any, Any]:
        """One attempt: ``(error, result)``; raises Unavailable on timeout."""
        done = threading.Event()
        outcome: list[tuple[Any, Any]] = []

        def on_result(result: Any, error: Any) -> None:
            outcome.append((error, result))
            done.set()

        self._obj.apply(command, callback=on_result)
        if not done.wait(max(timeout, 0.0)):
            raise Unavailable("command not committed within the timeout (outcome unknown)")
        return outcome[0]

    def destroy(self) -> None:
        """Stop the node: close its connections and join its tick thread. Idempotent.
        Must not be called from the state-machine callback (the tick thread)."""
        if self._stopped:
            return
        self._stopped = True
        self._obj.destroy_synchronous()
