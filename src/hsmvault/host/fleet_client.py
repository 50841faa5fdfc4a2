"""The host's client for one HSM fleet: send a request to a node, fail over to another.

Host-side and untrusted: it moves the bytes of :mod:`hsmvault.wire.hsm_api` requests and
responses between a caller (the gateway, tests) and the nodes' API ports
(:mod:`hsmvault.fleet.node_api` frames). It never opens, logs or keeps a secret; what it
reads of a response is only the closed :class:`~hsmvault.wire.hsm_api.Outcome`.

Contracts of :meth:`FleetClient.call`:

* nodes are tried starting at ``prefer`` (else at the last node that answered), then in
  index order, each at most once per call;
* a node that cannot be reached, times out, or breaks the frame protocol is skipped; so
  is one that answers ``UNAVAILABLE`` (no quorum on its side) — the next node is tried;
* ``failover=False`` pins the request to one node (use it for ``LoginFinish``,
  ``ChangeSecret`` and ``Delete``: their sessions live in the memory of the node that
  answered ``LoginStart``);
* when no node gave a definite answer it raises :class:`~hsmvault.errors.Unavailable`
  naming how many nodes were tried — never a raw socket error.

Retrying a request on another node is safe for the vault: a ``LoginStart`` whose answer
was lost may have counted one guess (the count is committed before KE2 exists), and
repeating it counts at most one more, exactly as a user retrying would.

:meth:`FleetClient.install_bundle` is the operator's path to the fleet's validation
bundle (ADR 0010, "Delivery"): one ``InstallBundle`` request with failover (installing
is idempotent, so a retry on another node is safe).

:meth:`FleetClient.decommission` is the operator's last step of a fleet rotation (ADR
0013): one ``Decommission`` request with failover (idempotent), then a ``Status`` to every
node in turn until each reports the fleet decommissioned — which also makes each node ask
its consensus engine for a fresh snapshot and log compaction — within a deadline.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hsmvault.errors import DecodeError, InvalidParameter, Unavailable, VaultError
from hsmvault.fleet.fleet_keys import FleetPublicKeys
from hsmvault.fleet.formation import FleetLayout
from hsmvault.fleet.node_api import KIND_NODE_INFO, KIND_VAULT, NodeInfo, recv_frame, send_frame
from hsmvault.wire.hsm_api import (
    FLEET_ID_LEN,
    MAX_BUNDLE_LEN,
    MAX_EPOCH,
    DecommissionRequest,
    DecommissionResponse,
    InstallBundleRequest,
    InstallBundleResponse,
    Outcome,
    Response,
    StatusRequest,
    StatusResponse,
    decode_response,
)

__all__ = [
    "BundleInstallRefused",
    "DecommissionRefused",
    "DecommissionReport",
    "FleetClient",
    "FleetClientConfig",
    "NodeAnswer",
]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FleetClientConfig:
    """Timeouts, in seconds.

    * ``connect_timeout`` — TCP connect to one node (loopback or LAN: short);
    * ``request_timeout`` — one request on one node; must exceed the nodes' commit
      timeout (3 s by default) or slow commits look like dead nodes.
    """

    connect_timeout: float = 1.0
    request_timeout: float = 10.0

    def __post_init__(self) -> None:
        if not (self.connect_timeout > 0 and self.request_timeout > 0):
            raise InvalidParameter("timeouts must be positive")


class BundleInstallRefused(VaultError):
    """The fleet refused a validation bundle: ``outcome`` is ``STALE_EPOCH`` (it holds a
    higher epoch), ``EPOCH_CONFLICT`` (other bytes for this epoch) or ``BAD_REQUEST``."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(f"the fleet refused the bundle: {outcome.name}")
        self.outcome = outcome


class DecommissionRefused(VaultError):
    """The fleet refused to decommission: ``outcome`` is ``BAD_REQUEST`` (the fleet id is
    not this fleet's, or the nodes predate the request). Nothing was erased."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(f"the fleet refused to decommission: {outcome.name}")
        self.outcome = outcome


@dataclass(frozen=True)
class DecommissionReport:
    """What :meth:`FleetClient.decommission` achieved: ``erased_records`` records and
    tombstones erased by this call (0 if the fleet already was decommissioned);
    ``confirmed`` the indexes of the nodes whose status reported the fleet
    decommissioned (each then asked its engine for a snapshot); ``unconfirmed`` those
    that did not answer so before the deadline (down, or lagging: the decommissioning is
    in the replicated log, so they apply it when they catch up)."""

    erased_records: int
    confirmed: tuple[int, ...]
    unconfirmed: tuple[int, ...]


@dataclass(frozen=True)
class NodeAnswer:
    """A decoded response and the index of the node that gave it."""

    node: int
    response: Response
    raw: bytes


class FleetClient:
    """Talks to the nodes at ``addresses`` (index order = the fleet's). Thread-safe: each
    call opens its own connection (loopback connections are cheap; pooling can come with
    the gateway).

    ``public_keys`` (optional) are the fleet's published public keys (``fleet.json``),
    which the host hands to devices: they seal registration uploads to its ``enc`` key.
    The client itself never uses them."""

    def __init__(
        self,
        addresses: Sequence[tuple[str, int]],
        config: FleetClientConfig | None = None,
        *,
        public_keys: FleetPublicKeys | None = None,
    ) -> None:
        if not addresses:
            raise InvalidParameter("a fleet client needs at least one node address")
        self._addresses = [(str(h), int(p)) for h, p in addresses]
        self._public_keys = public_keys
        self._config = config or FleetClientConfig()
        self._lock = threading.Lock()
        self._last_good = 0

    @classmethod
    def from_fleet_dir(
        cls, base_dir: str | Path, config: FleetClientConfig | None = None
    ) -> FleetClient:
        """A client for the fleet whose ``fleet.json`` is in ``base_dir`` (with its
        public keys)."""
        layout = FleetLayout.load(base_dir)
        return cls(layout.api_addresses, config, public_keys=layout.public_keys)

    @property
    def size(self) -> int:
        return len(self._addresses)

    @property
    def public_keys(self) -> FleetPublicKeys | None:
        """The fleet's public keys, if this client was given them."""
        return self._public_keys

    def __repr__(self) -> str:
        return f"FleetClient(nodes={len(self._addresses)})"

    # ----------------------------------------------------------------- calls

    def call(
        self, request: bytes, *, prefer: int | None = None, failover: bool = True
    ) -> NodeAnswer:
        """Send one wire request; return the first definite answer (see the module
        docstring). Raises :class:`Unavailable` if none came."""
        order = self._order(prefer, failover)
        last_unavailable: NodeAnswer | None = None
        for index in order:
            try:
                kind, body = self._exchange(index, KIND_VAULT, request)
                if kind != KIND_VAULT:
                    raise DecodeError("node answered with another frame kind")
                response = decode_response(body)
            except (OSError, DecodeError) as exc:
                _log.info("node %d failed: %s", index, type(exc).__name__)
                continue
            answer = NodeAnswer(index, response, body)
            if response.outcome is Outcome.UNAVAILABLE:
                last_unavailable = answer
                continue
            with self._lock:
                self._last_good = index
            return answer
        if last_unavailable is not None and not failover:
            return last_unavailable
        raise Unavailable(f"no node of the fleet answered (tried {len(order)})")

    def install_bundle(self, epoch: int, bundle: bytes) -> int:
        """Make ``bundle`` (1..64 KiB, opaque to the fleet) the fleet's validation bundle
        at ``epoch``, committed through consensus. Returns the epoch now current (==
        ``epoch``; also when that exact bundle was already installed). Raises
        :class:`BundleInstallRefused` for a lower epoch or other bytes at the same epoch,
        :class:`Unavailable` if no node could commit it (it may still have; calling again
        is safe), :class:`InvalidParameter` for arguments out of range."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= MAX_EPOCH:
            raise InvalidParameter("epoch must be a u64")
        if not isinstance(bundle, bytes) or not 1 <= len(bundle) <= MAX_BUNDLE_LEN:
            raise InvalidParameter(f"bundle must be 1..{MAX_BUNDLE_LEN} bytes")
        answer = self.call(InstallBundleRequest(epoch, bundle).to_bytes())
        response = answer.response
        if not isinstance(response, InstallBundleResponse):
            raise BundleInstallRefused(response.outcome)  # ErrorResponse: a node too old
        if response.outcome is Outcome.OK:
            if response.epoch != epoch:  # pragma: no cover - a node that breaks the contract
                raise DecodeError("the fleet installed another epoch than requested")
            return response.epoch
        raise BundleInstallRefused(response.outcome)

    def decommission(
        self,
        fleet_id: bytes | None = None,
        *,
        confirm_timeout: float = 15.0,
        sleep: Callable[[float], object] = time.sleep,
    ) -> DecommissionReport:
        """Decommission the fleet (ADR 0013): erase every record in every replica, for
        good. ``fleet_id`` defaults to :attr:`public_keys`' fleet id (the node refuses
        another fleet's id: a request sent to the wrong fleet erases nothing).

        Sends one ``Decommission`` (failover: it is idempotent), then asks every node's
        status until each reports ``decommissioned`` or ``confirm_timeout`` seconds
        passed. Raises :class:`DecommissionRefused` (``BAD_REQUEST``),
        :class:`Unavailable` if no node could commit it (it may still have; calling
        again is safe), :class:`InvalidParameter` for a bad fleet id."""
        if fleet_id is None:
            if self._public_keys is None:
                raise InvalidParameter("decommission needs the fleet id (or public keys)")
            fleet_id = self._public_keys.fleet_id
        if not isinstance(fleet_id, bytes) or len(fleet_id) != FLEET_ID_LEN:
            raise InvalidParameter("fleet id must be 32 bytes")
        if not confirm_timeout >= 0:
            raise InvalidParameter("confirm_timeout must be >= 0")
        response = self.call(DecommissionRequest(fleet_id).to_bytes()).response
        if not isinstance(response, DecommissionResponse) or response.outcome is not Outcome.OK:
            raise DecommissionRefused(response.outcome)  # ErrorResponse: a node too old
        _log.warning("fleet decommissioned (%d records erased)", response.erased_records)
        deadline = time.monotonic() + confirm_timeout
        pending = list(range(len(self._addresses)))
        confirmed: list[int] = []
        while True:
            for index in list(pending):
                if self._reports_decommissioned(index):
                    pending.remove(index)
                    confirmed.append(index)
            if not pending or time.monotonic() >= deadline:
                break
            sleep(0.05)
        return DecommissionReport(response.erased_records, tuple(sorted(confirmed)), tuple(pending))

    def _reports_decommissioned(self, index: int) -> bool:
        try:
            answer = self.call(StatusRequest().to_bytes(), prefer=index, failover=False)
        except Unavailable:
            return False
        response = answer.response
        return (
            isinstance(response, StatusResponse)
            and response.outcome is Outcome.OK
            and response.decommissioned
        )

    def status(self, index: int) -> StatusResponse:
        """Node ``index``'s :class:`StatusResponse` (counts, decommissioned flag);
        :class:`Unavailable` if it gives no OK status."""
        answer = self.call(StatusRequest().to_bytes(), prefer=index, failover=False)
        response = answer.response
        if not isinstance(response, StatusResponse) or response.outcome is not Outcome.OK:
            raise Unavailable(f"node {index} gave no status ({response.outcome.name})")
        return response

    def node_info(self, index: int) -> NodeInfo:
        """Node ``index``'s :class:`NodeInfo`; :class:`Unavailable` if it cannot answer."""
        try:
            kind, body = self._exchange(index, KIND_NODE_INFO, b"")
            if kind != KIND_NODE_INFO:
                raise DecodeError("node answered with another frame kind")
            return NodeInfo.from_bytes(body)
        except (OSError, DecodeError) as exc:
            raise Unavailable(f"node {index} did not answer ({type(exc).__name__})") from None

    def _order(self, prefer: int | None, failover: bool) -> list[int]:
        n = len(self._addresses)
        if prefer is not None and not 0 <= prefer < n:
            raise InvalidParameter("prefer must be a node index")
        with self._lock:
            start = prefer if prefer is not None else self._last_good
        if not failover:
            return [start]
        return [start] + [i for i in range(n) if i != start]

    def _exchange(self, index: int, kind: int, body: bytes) -> tuple[int, bytes]:
        host, port = self._addresses[index]
        with socket.create_connection((host, port), timeout=self._config.connect_timeout) as sock:
            sock.settimeout(self._config.request_timeout)
            send_frame(sock, kind, body)
            frame = recv_frame(sock)
        if frame is None:
            raise DecodeError("node closed the connection without answering")
        return frame
