"""An in-process consensus simulator for the vault service tests.

:class:`InstantConsensus` commits every command at once to ``replicas`` independent
:class:`VaultState` instances (as a healthy fleet would) and returns this node's (the
first replica's) result. Setting ``available = False`` makes ``submit`` raise
:class:`Unavailable` without applying anything — a fleet that lost its quorum.
"""

from __future__ import annotations

from hsmvault.errors import Unavailable
from hsmvault.hsm.vault_state import VaultState


class InstantConsensus:
    """Single-process stand-in for the Raft fleet (satisfies ``Consensus``)."""

    def __init__(self, replicas: int = 1) -> None:
        self.replicas = [VaultState() for _ in range(replicas)]
        self.log: list[bytes] = []
        self.available = True

    def submit(self, command: bytes) -> bytes:
        if not self.available:
            raise Unavailable("no quorum")
        self.log.append(command)
        results = [replica.apply(command) for replica in self.replicas]
        assert all(r == results[0] for r in results), "replicas diverged"
        return results[0]

    def state(self) -> VaultState:
        return self.replicas[0]

    def snapshots(self) -> list[bytes]:
        return [replica.snapshot() for replica in self.replicas]
