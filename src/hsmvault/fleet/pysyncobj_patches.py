"""Raft fixes over pysyncobj 0.3.17's message handler (``docs/decisions/0009``).

pysyncobj 0.3.17 departs from Raft (Ongaro & Ousterhout 2014, §5.3 and Fig. 2,
"AppendEntries RPC") in two places of ``SyncObj.__onMessageReceived`` (syncobj.py):

* follower (L983-1003): once ``prevLogIdx`` matches, it deletes *every* entry after
  ``prevLogIdx`` -- also entries that match the incoming ones, and entries beyond the
  batch -- then appends only the incoming batch. A stale re-send therefore shrinks the
  in-memory log below what the follower already acknowledged, and the follower votes from
  that shrunk log. Raft deletes only from the first *conflicting* entry (same index,
  different term) and appends only entries not already in the log (Fig. 2, receiver
  rules 3 and 4); it sets ``commitIndex = min(leaderCommit, index of last new entry)``
  (rule 5);
* leader (L1071-1078): a ``reset`` reply moves ``nextIndex`` wherever it says, also below
  ``matchIndex + 1`` (a stale reply then makes the leader re-send entries the follower
  already acknowledged).

:class:`RaftFixes` is a mixin placed before ``SyncObj``; it overrides the name-mangled
handler (``_SyncObj__onMessageReceived``, which ``SyncObj.__init__`` registers with the
transport through ``self``) and rewrites each message into one for which pysyncobj's own
code does what Raft prescribes:

* ``append_entries`` whose ``prevLogIdx`` matches: the leading entries already in the log
  (same index and term) are dropped from the message and ``prevLogIdx``/``prevLogTerm``
  advance past them, so pysyncobj deletes only from the first conflict (if any) and appends
  only the rest. If every entry is already present and the log is longer, the handler's
  look-up of the entries after ``prevLogIdx`` returns just that entry for this one call, so
  nothing is deleted and the reply acknowledges exactly ``prevLogIdx + len(entries)``.
  ``commit_index`` is capped at that index (rule 5: a kept, unverified tail is never
  committed). A conflict at or below this node's commit index (or last applied entry)
  cannot come from a correct leader: the node stops for good (fail-stop) instead;
* ``next_node_idx`` with ``reset`` on a leader that would move ``nextIndex`` to or below the
  follower's ``matchIndex``: the reset is dropped (the reply still counts as a response).
  ``matchIndex`` never decreases (pysyncobj already only raises it on success).

Everything else goes to pysyncobj unchanged. The patch relies on pysyncobj's private names
and exact code, so :func:`require_pinned_pysyncobj` refuses any other version.
"""

from __future__ import annotations

import importlib.metadata
import logging
from typing import Any, Final

from pysyncobj import SyncObj  # type: ignore[import-untyped]
from pysyncobj.syncobj import _RAFT_STATE  # type: ignore[import-untyped]
from pysyncobj.version import VERSION as _MODULE_VERSION  # type: ignore[import-untyped]

__all__ = ["PINNED_PYSYNCOBJ", "PysyncobjVersionError", "RaftFixes", "require_pinned_pysyncobj"]

logger = logging.getLogger(__name__)

PINNED_PYSYNCOBJ: Final = "0.3.17"
"""The only pysyncobj version these fixes were verified against (ADR 0009)."""

_PRIVATE_NAMES: Final = (
    "_SyncObj__onMessageReceived",
    "_SyncObj__getEntries",
    "_SyncObj__deleteEntriesFrom",
    "_SyncObj__sendNextNodeIdx",
)


class PysyncobjVersionError(RuntimeError):
    """The installed pysyncobj is not the version the Raft fixes were verified against."""


def require_pinned_pysyncobj() -> None:
    """Raise :class:`PysyncobjVersionError` unless pysyncobj 0.3.17 is installed (package
    metadata and module agree) and exposes the private methods the fixes override."""
    try:
        installed = importlib.metadata.version("pysyncobj")
    except importlib.metadata.PackageNotFoundError:
        installed = None
    if installed != PINNED_PYSYNCOBJ or _MODULE_VERSION != PINNED_PYSYNCOBJ:
        raise PysyncobjVersionError(
            f"pysyncobj {installed or _MODULE_VERSION} is installed but hsmvault's Raft fixes "
            f"(docs/decisions/0009-pysyncobj-raft-fixes.md) are verified only against "
            f"{PINNED_PYSYNCOBJ}: re-verify them before upgrading; refusing to start"
        )
    missing = [name for name in _PRIVATE_NAMES if not hasattr(SyncObj, name)]
    if missing:
        raise PysyncobjVersionError(
            f"pysyncobj {PINNED_PYSYNCOBJ} lacks {', '.join(missing)}: not the audited code"
        )


class RaftFixes(SyncObj):  # type: ignore[misc]  # pysyncobj is untyped
    """Mixin over ``SyncObj`` with the two Raft fixes (see the module docstring)."""

    _hsmvault_single_entry_at: int | None = None
    _hsmvault_failed: bool = False

    # -- pysyncobj overrides (tick thread) --------------------------------------------------

    def _SyncObj__onMessageReceived(self, node: Any, message: Any) -> None:  # noqa: N802
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "append_entries":
            self._hsmvault_append_entries(node, message)
            return
        if kind == "next_node_idx":
            message = self._hsmvault_next_node_idx(node, message)
        super()._SyncObj__onMessageReceived(node, message)

    def _SyncObj__getEntries(  # noqa: N802
        self,
        from_idx: Any,
        count: Any = None,
        max_size_bytes: Any = None,
    ) -> Any:
        # Only during one rewritten append_entries (see _hsmvault_append_entries): the
        # handler's "entries after prevLogIdx" look-up sees just the entry at prevLogIdx,
        # so it neither rolls back membership changes nor deletes the matching tail.
        if (
            self._hsmvault_single_entry_at is not None
            and from_idx == self._hsmvault_single_entry_at
            and count is None
            and max_size_bytes is None
        ):
            count = 1
        return super()._SyncObj__getEntries(from_idx, count, max_size_bytes)

    # -- the fixes -------------------------------------------------------------------------

    def _hsmvault_append_entries(self, node: Any, message: dict[str, Any]) -> None:
        if message.get("term", -1) < self._SyncObj__raftCurrentTerm or "prevLogIdx" not in message:
            super()._SyncObj__onMessageReceived(node, message)  # ignored, or a snapshot
            return
        if "transmission" in message:
            # Chunked single entries: our codec never carries them (codec.py); the fix
            # cannot vouch for them, so they are dropped.
            logger.warning("dropping a chunked append_entries (not supported)")
            return
        log = self._SyncObj__raftLog
        first, last = log[0][1], log[-1][1]
        prev, prev_term = message["prevLogIdx"], message["prevLogTerm"]
        entries = list(message.get("entries", []))
        if prev is None or not first <= prev <= last or log[prev - first][2] != prev_term:
            super()._SyncObj__onMessageReceived(node, message)  # mismatch: pysyncobj resets
            return
        if any(entry[1] != prev + 1 + k for k, entry in enumerate(entries)):
            logger.warning("dropping an append_entries with non-consecutive indexes")
            return
        verified = prev + len(entries)  # Fig. 2 rule 5: "index of last new entry"
        skip = 0
        while skip < len(entries):
            idx, term = entries[skip][1], entries[skip][2]
            if idx > last:
                break
            if log[idx - first][2] != term:
                if idx <= max(self._SyncObj__raftCommitIndex, self._SyncObj__raftLastApplied):
                    self._hsmvault_refuse_truncation(idx)
                    return
                break
            skip += 1
        new_prev = prev + skip
        rewritten = dict(message)
        rewritten["prevLogIdx"] = new_prev
        rewritten["prevLogTerm"] = log[new_prev - first][2]
        rewritten["entries"] = entries[skip:]
        rewritten["commit_index"] = min(message["commit_index"], verified)
        self._hsmvault_single_entry_at = new_prev if skip == len(entries) else None
        try:
            super()._SyncObj__onMessageReceived(node, rewritten)
        finally:
            self._hsmvault_single_entry_at = None
        # pysyncobj records the leader's commit index only for isReady(); keep its value.
        self._SyncObj__leaderCommitIndex = message["commit_index"]

    def _hsmvault_next_node_idx(self, node: Any, message: dict[str, Any]) -> dict[str, Any]:
        if not message.get("reset") or self._SyncObj__raftState != _RAFT_STATE.LEADER:
            return message
        match = self._SyncObj__raftMatchIndex.get(node)
        next_idx = message.get("next_node_idx")
        if match is not None and next_idx is not None and next_idx <= match:
            logger.info("ignoring a stale reset reply below the follower's match index")
            return {**message, "reset": False}
        return message

    def _hsmvault_refuse_truncation(self, idx: int) -> None:
        logger.critical(
            "leader asked to truncate the log from index %d, at or below this node's commit "
            "index %d: committed entries are never removed; stopping this node (fail-stop)",
            idx,
            self._SyncObj__raftCommitIndex,
        )
        self._hsmvault_failed = True
        transport = self._SyncObj__transport
        halt = getattr(transport, "halt", None)
        if callable(halt):
            halt()
        self.destroy()
