"""One fleet member running pysyncobj Raft behind :class:`FleetTransport`.

:class:`RaftNode` replicates a single method, ``apply(command: bytes) -> bytes``, whose
body is the caller's deterministic state-machine callback. :meth:`RaftNode.submit` commits
a command through the majority and returns the callback's result *on this node*.

Configuration choices (see ``docs/decisions/0004-consensus-engine-pysyncobj.md``):

* our transport (no pickle from the network, no ``password``, no admin commands);
* our journal (:class:`~hsmvault.fleet.journal.SealedJournal`): with a
  :class:`~hsmvault.fleet.journal.JournalConfig` the Raft log, term and vote are sealed on
  the host's disk, durable before pysyncobj acknowledges them, and rollback-checked
  against an NVRAM anchor on every start (``docs/decisions/0005-rollback-resistance.md``);
  without one the node keeps them in memory (a restarted node is then a new incarnation);
* log compaction only with ``snapshots=`` (:class:`~hsmvault.fleet.snapshots.SnapshotConfig`):
  sealed snapshots under a fleet snapshot key, checked against the anchored journal on
  restart and against the received bytes on transfer; without it compaction is off and
  the log grows with every command;
* dynamic membership (``dynamicMembershipChange=True``), one change at a time through the
  leader: :meth:`RaftNode.remove_member` / :meth:`RaftNode.add_member`. A node id names an
  identity key; an **incarnation** (the NVRAM epoch) names one life of the node's Raft
  state. The fleet never lists two incarnations of one node id: to readmit a node that
  lost its state, remove its old incarnation, then add the new one, which starts with
  ``joining=True`` and catches up from the leader;
* timers from :class:`FleetTimings` (5 ms tick, 10 ms append period by default);
* pysyncobj's AppendEntries handling corrected to Raft §5.3 / Fig. 2 (a follower truncates
  only from a conflicting entry, never below its commit index; a leader ignores stale
  reset replies): :mod:`hsmvault.fleet.pysyncobj_patches`, ADR 0009. Only pysyncobj 0.3.17
  is accepted (:class:`~hsmvault.fleet.pysyncobj_patches.PysyncobjVersionError` otherwise).

Start-up contract for the node process:

* resume: ``RaftNode(..., incarnation=nvram_epoch, journal=JournalConfig(dir, custody,
  anchors))``. If it raises :class:`~hsmvault.errors.RollbackError` or
  :class:`~hsmvault.errors.VerificationError` the node cannot prove its Raft state: it must
  not retry with the same incarnation. Advance the NVRAM epoch, start with
  ``incarnation=new_epoch, journal=JournalConfig(..., fresh=True), joining=True``, and have
  a member run ``remove_member(node_id)`` then ``add_member(member, new_epoch)``;
* peers' incarnations (``incarnations=``) are those of the fleet as formed; later changes
  are replayed from the journal.

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

import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from pysyncobj import SyncObjConf, replicated  # type: ignore[import-untyped]
from pysyncobj.config import FAIL_REASON  # type: ignore[import-untyped]

from hsmvault.errors import InvalidParameter, RollbackError, Unavailable
from hsmvault.fleet import codec
from hsmvault.fleet.codec import MAX_COMMAND_SIZE, MemberNode
from hsmvault.fleet.journal import JournalConfig, SealedJournal, journal_hook
from hsmvault.fleet.membership import (
    FleetMember,
    FleetMembership,
    FleetNode,
    IdentitySigner,
    node_id_for,
)
from hsmvault.fleet.pysyncobj_patches import RaftFixes, require_pinned_pysyncobj
from hsmvault.fleet.snapshots import SNAPSHOT_FILE, SnapshotConfig, SnapshotManager
from hsmvault.fleet.transport import FleetTransport, TransportConfig, fleet_transport_factory

__all__ = ["FleetTimings", "RaftNode", "StateMachine"]

logger = logging.getLogger(__name__)

StateMachine = Callable[[bytes], bytes]
"""Applies one committed command and returns its result. Deterministic; never raises."""

_NEVER: Final = float(2**40)  # seconds: "never" for pysyncobj's compaction timers
_SNAPSHOT_CHUNK: Final = 64 * 1024
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


class _Replicated(RaftFixes):
    """The pysyncobj object: exactly one replicated method (function id 0), with the Raft
    fixes of ``docs/decisions/0009-pysyncobj-raft-fixes.md``."""

    def __init__(
        self,
        state_machine: StateMachine,
        self_node: FleetNode,
        other_nodes: list[FleetNode],
        conf: Any,
        transport_class: Callable[..., FleetTransport],
        *,
        journal: SealedJournal,
    ) -> None:
        self._hsmvault_state_machine = state_machine
        self._hsmvault_failed = False
        with journal_hook(journal):
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

    Keyword-only options (all default to the first slice's behaviour):

    * ``incarnation``: this node's incarnation (its NVRAM epoch);
    * ``incarnations``: the peers' incarnations in ``membership`` (missing ones: 0);
    * ``journal``: persist the Raft state (sealed, anchored); None keeps it in memory;
    * ``joining``: this node is a new incarnation waiting to be added by the fleet: it
      follows a leader but neither votes nor stands for election until the log lists it;
    * ``snapshots``: enable log compaction with sealed snapshots (needs ``journal``).

    Raises :class:`InvalidParameter` if ``identity`` is not in ``membership``;
    :class:`~hsmvault.errors.RollbackError` / :class:`~hsmvault.errors.VerificationError`
    if ``journal`` does not verify (see the module docstring: start a new incarnation);
    :class:`Unavailable` if the node's port cannot be bound.
    """

    def __init__(
        self,
        identity: IdentitySigner,
        membership: FleetMembership,
        state_machine: StateMachine,
        timings: FleetTimings | None = None,
        *,
        incarnation: int = 0,
        incarnations: Mapping[str, int] | None = None,
        journal: JournalConfig | None = None,
        joining: bool = False,
        snapshots: SnapshotConfig | None = None,
    ) -> None:
        require_pinned_pysyncobj()  # the Raft fixes (ADR 0009) are verified for 0.3.17 only
        timings = timings or FleetTimings()
        self._node_id = node_id_for(identity.public_key())
        if self._node_id not in membership:
            raise InvalidParameter("this node's identity is not in the fleet membership")
        if snapshots is not None and journal is None:
            raise InvalidParameter("snapshots need a journal")
        config = TransportConfig(
            identity=identity,
            membership=membership,
            handshake_timeout=timings.connection_timeout,
            reconnect_interval=timings.reconnect_interval,
            incarnation=incarnation,
            incarnations=incarnations,
            joining=joining,
        )
        self._incarnation = incarnation
        if journal is None:
            log = SealedJournal.in_memory()
        else:
            log = SealedJournal.open(
                journal,
                fleet_id=membership.fleet_id,
                node_id=bytes.fromhex(self._node_id),
                incarnation=incarnation,
            )
        manager: SnapshotManager | None = None
        if snapshots is not None and journal is not None:
            if journal.fresh:
                _retire_snapshot(journal.directory, incarnation)
            manager = SnapshotManager(
                snapshots,
                journal.directory,
                fleet_id=membership.fleet_id,
                node_id=bytes.fromhex(self._node_id),
                incarnation=incarnation,
            )
            manager.verify_at_start(log)
        if joining and any(self._admits_me(entry[0]) for entry in log):
            joining = False
        config = TransportConfig(
            **{
                **vars(config),
                "joining": joining,
                "snapshot_guard": manager.guard if manager is not None else None,
            }
        )
        self._journal = log
        made: list[FleetTransport] = []
        factory = fleet_transport_factory(config)

        def build(sync_obj: Any, *args: Any) -> FleetTransport:
            transport = factory(sync_obj, *args)
            made.append(transport)
            self._transport = transport  # before the tick thread can call _on_append
            stop = functools.partial(_fail_stop, sync_obj, transport)
            log.on_failure = stop
            if manager is not None:
                manager.attach(transport, stop)
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
            password=None,
            dynamicMembershipChange=True,
            logCompactionMinEntries=2**62 if snapshots is None else snapshots.min_entries,
            logCompactionMinTime=_NEVER if snapshots is None else snapshots.min_time,
            logCompactionBatchSize=_SNAPSHOT_CHUNK,
            logCompactionSplit=False,
            fullDumpFile=None if manager is None else str(manager.path),
            serializer=None if manager is None else manager.serialize,
            deserializer=None if manager is None else manager.deserialize,
            useFork=False,
        )
        others = [FleetNode(node_id) for node_id in membership if node_id != self._node_id]
        log.on_append = self._on_append
        self._obj = _Replicated(
            state_machine, FleetNode(self._node_id), others, conf, build, journal=log
        )
        self._transport = made[0]
        self._snapshots = manager is not None
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
    def term(self) -> int:
        """This node's current Raft term (its own view; may be stale)."""
        value = self._obj.raftCurrentTerm
        assert isinstance(value, int)
        return value

    @property
    def commit_index(self) -> int:
        """The highest log index this node knows to be committed (its own view)."""
        value = self._obj.raftCommitIndex
        assert isinstance(value, int)
        return value

    @property
    def incarnation(self) -> int:
        """This node's incarnation (the NVRAM epoch it runs under)."""
        return self._incarnation

    def highest_incarnation(self, node_id: str) -> int | None:
        """The highest incarnation of ``node_id`` this node has seen (formation, log or
        snapshot), or None for an identity the fleet does not know."""
        return self._transport.highest_incarnation(node_id)

    def sync(self, timeout: float) -> None:
        """Read barrier: commit a no-op entry through the leader and return once it is
        applied here, so :meth:`members` and the state machine reflect every entry
        committed before the call. Raises :class:`Unavailable` (not confirmed within
        ``timeout``, joining, stopped) or :class:`InvalidParameter` (bad timeout)."""
        if not timeout > 0:
            raise InvalidParameter("timeout must be positive")
        if self._stopped or self.failed:
            raise Unavailable("fleet node is stopped")
        if self._transport.joining:
            raise Unavailable("fleet node is joining the fleet (not yet added as a member)")
        deadline = time.monotonic() + timeout
        while True:
            error, _ = self._wait_callback(
                lambda cb: self._obj.setCodeVersion(0, callback=cb), deadline - time.monotonic()
            )
            if error == FAIL_REASON.SUCCESS:
                return
            reason = _FAIL_NAMES.get(error, "UNKNOWN")
            if error not in _RETRYABLE or time.monotonic() + self._retry_pause >= deadline:
                raise Unavailable(f"barrier not committed: {reason}")
            time.sleep(self._retry_pause)

    @property
    def joining(self) -> bool:
        """True while this node waits to be added to the fleet (see ``joining=``)."""
        return self._transport.joining

    def members(self) -> dict[str, tuple[FleetMember, int]]:
        """The membership as this node currently applies it: node id -> (member record,
        incarnation), this node included. Changes take effect when appended to the log
        (Raft), so a follower may briefly lag the leader."""
        return self._transport.members()

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
        the command may still commit. A joining node refuses at once (:class:`Unavailable`).
        Failures that prove the command is not in the log
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
        if self._transport.joining:
            raise Unavailable("fleet node is joining the fleet (not yet added as a member)")
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
        return self._wait_callback(lambda cb: self._obj.apply(command, callback=cb), timeout)

    @staticmethod
    def _wait_callback(start: Callable[[Any], None], timeout: float) -> tuple[Any, Any]:
        done = threading.Event()
        outcome: list[tuple[Any, Any]] = []

        def on_result(result: Any, error: Any) -> None:
            outcome.append((error, result))
            done.set()

        start(on_result)
        if not done.wait(max(timeout, 0.0)):
            raise Unavailable("command not committed within the timeout (outcome unknown)")
        return outcome[0]

    # -- membership ------------------------------------------------------------------------

    def add_member(self, member: FleetMember, incarnation: int, timeout: float) -> None:
        """Commit "add ``member`` at ``incarnation``" through the leader; returns once the
        change is committed and applied on this node.

        The identity key must be one this fleet already knows (a member as formed, or a
        member seen since): admitting a new HSM needs a fleet ceremony, not this call. The
        node id must not be a member now (remove its old incarnation first), and
        ``incarnation`` must be higher than any incarnation of that node seen here.
        Raises :class:`InvalidParameter` for those, :class:`RollbackError` for a stale
        incarnation, :class:`Unavailable` if not committed within ``timeout`` (the change
        may still commit; pysyncobj allows one uncommitted change at a time and such
        refusals are retried until the deadline).
        """
        if type(incarnation) is not int or not 0 <= incarnation < 2**64:
            raise InvalidParameter("incarnation must be an int in [0, 2**64)")
        node_id = member.node_id
        seen = self._transport.highest_incarnation(node_id)
        if seen is None:
            raise InvalidParameter("identity key is not a known fleet member")
        if node_id in self._transport.members():
            raise InvalidParameter("node is a member: remove its current incarnation first")
        if incarnation <= seen:
            raise RollbackError("incarnation must be higher than any seen for this node")
        node = MemberNode(member, incarnation)

        def done() -> bool:
            record = self._transport.members().get(node_id)
            return record is not None and record[1] == incarnation

        self._change(lambda cb: self._obj.addNodeToCluster(node, callback=cb), done, timeout)

    def remove_member(self, node_id: str, timeout: float) -> None:
        """Commit "remove ``node_id``'s current incarnation" through the leader; returns
        once committed and applied on this node. A node cannot remove itself.

        Raises :class:`InvalidParameter` if ``node_id`` is this node or not a member,
        :class:`Unavailable` as for :meth:`add_member`.
        """
        if node_id == self._node_id:
            raise InvalidParameter("a node cannot remove itself")
        record = self._transport.members().get(node_id)
        if record is None:
            raise InvalidParameter("node is not a member")
        node = MemberNode(*record)

        def done() -> bool:
            return node_id not in self._transport.members()

        self._change(lambda cb: self._obj.removeNodeFromCluster(node, callback=cb), done, timeout)

    def _change(
        self, start: Callable[[Any], None], done: Callable[[], bool], timeout: float
    ) -> None:
        """Submit a membership change until it is known to be committed.

        After an unknown outcome (``LEADER_CHANGED``, ``UNKNOWN_OUTCOME``) or a refusal
        (``REQUEST_DENIED``: another change pending, or this one already applied), commit a
        barrier entry (pysyncobj's code-version command with the unchanged version 0, a
        no-op) and check the membership this node applies once the barrier is applied:
        then the change is in the committed prefix of the log."""
        if not timeout > 0:
            raise InvalidParameter("timeout must be positive")
        if self._stopped or self.failed:
            raise Unavailable("fleet node is stopped")
        deadline = time.monotonic() + timeout
        while True:
            error, _ = self._wait_callback(start, deadline - time.monotonic())
            if error == FAIL_REASON.SUCCESS:
                return
            reason = _FAIL_NAMES.get(error, "UNKNOWN")
            if error not in _RETRYABLE and self._settled(done, deadline):
                return
            if time.monotonic() + self._retry_pause >= deadline:
                raise Unavailable(f"membership change not committed: {reason}")
            time.sleep(self._retry_pause)

    def _settled(self, done: Callable[[], bool], deadline: float) -> bool:
        try:
            error, _ = self._wait_callback(
                lambda cb: self._obj.setCodeVersion(0, callback=cb), deadline - time.monotonic()
            )
        except Unavailable:
            return False
        return bool(error == FAIL_REASON.SUCCESS and done())

    # -- journal hooks (tick thread) --------------------------------------------------------

    def _admits_me(self, command: bytes) -> bool:
        change = codec.membership_change(command)
        if change is None:
            return False
        op, node = change
        return (
            op == "add"
            and type(node) is MemberNode
            and node.id == self._node_id
            and node.incarnation == self._incarnation
        )

    def _on_append(self, command: bytes, _idx: int, _term: int) -> None:
        transport: FleetTransport | None = getattr(self, "_transport", None)
        if transport is not None and transport.joining and self._admits_me(command):
            logger.info("this node's incarnation was added to the fleet; leaving joining mode")
            transport.set_joined()

    def compact(self) -> None:
        """Ask pysyncobj to write a snapshot and compact the log at its next tick (only
        with ``snapshots=``; a no-op otherwise)."""
        if self._snapshots:
            self._obj.forceLogCompaction()

    @property
    def log_length(self) -> int:
        """Number of entries in this node's (possibly compacted) log."""
        return len(self._journal)

    def destroy(self) -> None:
        """Stop the node: close its connections and join its tick thread. Idempotent.
        Must not be called from the state-machine callback (the tick thread)."""
        if self._stopped:
            return
        self._stopped = True
        self._obj.destroy_synchronous()


def _retire_snapshot(directory: Path, incarnation: int) -> None:
    """A new incarnation starts empty and catches up from the leader: a snapshot file left
    in ``directory`` (an earlier incarnation's, or a copy the host put back) is renamed
    away rather than adopted as "newer than the (empty) journal"."""
    path = Path(directory) / SNAPSHOT_FILE
    if path.exists():
        os.replace(path, path.with_name(f"{path.name}.retired-{incarnation}"))
        logger.warning("retired the snapshot of an earlier incarnation")


def _fail_stop(sync_obj: Any, transport: FleetTransport) -> None:
    """Stop a node for good from its tick thread (journal or snapshot failure)."""
    sync_obj._hsmvault_failed = True
    transport.halt()
    sync_obj.destroy()
