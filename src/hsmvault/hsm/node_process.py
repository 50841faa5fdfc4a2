"""One HSM node as an OS process: ``python -m hsmvault.hsm.node_process --node-dir DIR``.

The node directory is laid out by :func:`hsmvault.fleet.formation.form_fleet`
(``DIR/nvram`` = trusted-zone stand-in, ``DIR/host`` = untrusted host-side state). At
start, in order (any failure: exit status 2, one line on stderr and in the log):

1. read ``host/node.json`` and the fleet file it names (public, untrusted);
2. open the NVRAM and the key custody (software keys from NVRAM, or the SoftHSM2 token
   whose PIN file lives in ``nvram/``); the NVRAM identity must match the custody;
3. check that the membership pinned in NVRAM at formation equals the fleet file's member
   ids — a host that edits ``fleet.json`` cannot add, drop or swap a member key — and
   that every member's link key is certified by its custody identity key;
4. unseal the fleet link key and the fleet keys from ``host/`` (custody-sealed; any
   tampering is a :class:`~hsmvault.errors.VerificationError`), and check that they match
   this node's member entry and the fleet's published public keys;
5. build the vault state machine, the Raft node (:class:`~hsmvault.fleet.raft_node.RaftNode`)
   with its sealed journal in ``host/`` (anchored in ``nvram/``; incarnation = the NVRAM
   epoch; ``fresh`` = :func:`~hsmvault.fleet.journal.needs_fresh_journal`), sealed
   snapshots under the fleet snapshot key
   (:meth:`~hsmvault.fleet.fleet_keys.FleetSecretKeys.snapshot_key`), and
   :class:`~hsmvault.hsm.vault_service.VaultService` over a :class:`RaftConsensus`. The
   vault state is rebuilt from the snapshot and the journal;
6. **rejoin** (ADR 0005, "Rejoin"): if the Raft state is absent, corrupt or rolled back
   (:class:`~hsmvault.errors.RollbackError` / :class:`~hsmvault.errors.VerificationError`
   from the journal or snapshot checks), the node does not retry under the same
   incarnation and does not exit: it logs an operator message, advances the NVRAM epoch
   (a new incarnation), starts with a fresh journal in joining mode, and sends a signed
   rejoin ticket (:class:`~hsmvault.wire.hsm_api.RejoinRequest`, custody identity key,
   purpose :data:`REJOIN_PURPOSE`) to the other members' API ports, with bounded backoff,
   until the fleet has committed "remove old incarnation, add new one". While joining it
   answers every vault request ``UNAVAILABLE``. A member receiving a ticket checks it
   against the identity key pinned at formation and that the incarnation is higher than
   any it knows for that node, then makes the two membership changes;
7. serve the API port (:mod:`hsmvault.fleet.node_api` frames) on loopback, write
   ``host/ready.json`` and print ``READY <node id>`` on stdout.

SIGTERM or SIGINT stops it cleanly (server, Raft node, custody, NVRAM; ready file
removed). SIGKILL is, of course, also allowed: that is what the fault tests do.

The API server: one thread per connection, at most :data:`MAX_CONNECTIONS` at once (more
are closed on accept), an idle timeout per connection, frame sizes bounded before any body
is read, and any protocol violation closes the connection. It adds no authority: the door
(``VaultService.handle``) is built for an untrusted caller.

Logs go to ``host/node.log``: event names, node ids, ports, outcome names — never keys,
PINs, OPAQUE messages or wrapped keys.

``--provision`` is formation's step, the key ceremony inside the node
(:mod:`hsmvault.hsm.ceremony`, ADR 0012): a JSON-lines conversation on stdin/stdout that
creates the custody keys, attests them, receives the fleet keys sealed to this node,
seals them and the link key, and pins the membership in NVRAM.
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hsmvault.errors import (
    DecodeError,
    InvalidParameter,
    RollbackError,
    Unavailable,
    VaultError,
    VerificationError,
)
from hsmvault.fleet.fleet_keys import unseal_fleet_keys
from hsmvault.fleet.formation import (
    FORMED_INCARNATION,
    LINK_CERT_PURPOSE,
    NODE_CONFIG_FILE,
    FleetLayout,
    NodeLayout,
    link_certificate_message,
    read_peer_addresses,
)
from hsmvault.fleet.journal import FileAnchorStore, JournalConfig, needs_fresh_journal
from hsmvault.fleet.membership import (
    FleetMember,
    FleetMembership,
    SoftwareIdentitySigner,
    node_id_for,
)
from hsmvault.fleet.node_api import KIND_NODE_INFO, KIND_VAULT, NodeInfo, recv_frame, send_frame
from hsmvault.fleet.raft_node import FleetTimings, RaftNode
from hsmvault.fleet.snapshots import SnapshotConfig
from hsmvault.hsm.custody.base import KeyCustody, bind_identity, verify_signature
from hsmvault.hsm.custody.software import SoftwareCustody
from hsmvault.hsm.nvram import DirectoryNvram, NodeIdentity, Nvram, SignatureAlgorithm
from hsmvault.hsm.vault_service import VaultService, VaultServiceConfig
from hsmvault.hsm.vault_state import VaultState
from hsmvault.wire.hsm_api import (
    ErrorResponse,
    Outcome,
    RejoinRequest,
    RejoinResponse,
    decode_request,
    decode_response,
    refusal_for,
)

__all__ = [
    "FLEET_KEYS_FILE",
    "LINK_KEY_FILE",
    "LINK_KEY_PURPOSE",
    "MAX_CONNECTIONS",
    "READY_FILE",
    "REJOIN_PURPOSE",
    "NodeProcessConfig",
    "RaftConsensus",
    "main",
]

_log = logging.getLogger("hsmvault.node")

#: Host-side files (all sealed by the node's custody, or public).
FLEET_KEYS_FILE: Final = "fleet-keys.sealed"
LINK_KEY_FILE: Final = "link-key.sealed"
READY_FILE: Final = "ready.json"
LOG_FILE: Final = "node.log"
#: Custody sealing purpose of the link private key.
LINK_KEY_PURPOSE: Final = b"hsmvault/fleet-link-key/v1"
#: Custody signing purpose of a rejoin ticket (ADR 0005, "Rejoin").
REJOIN_PURPOSE: Final = b"hsmvault/fleet/rejoin/v1"
#: Most API connections served at once.
MAX_CONNECTIONS: Final = 64


@dataclass(frozen=True)
class NodeProcessConfig:
    """Runtime limits of one node process (defaults suit a local fleet).

    * ``commit_timeout`` — seconds one command may wait for its commit before the door
      answers ``UNAVAILABLE`` (the command may still commit later);
    * ``idle_timeout`` — an API connection with no complete frame for this long is closed;
    * ``timings`` — Raft timers;
    * ``snapshot_min_entries`` / ``snapshot_min_time`` — log compaction thresholds (a
      sealed snapshot is written once the log holds more entries, or that many seconds
      passed since the last one);
    * ``membership_timeout`` — seconds a member waits for each step of a rejoin
      (read barrier, removal, addition) before answering ``UNAVAILABLE``;
    * ``rejoin_backoff`` — (first, longest) wait in seconds between two rejoin tickets
      of a joining node; the wait doubles after each refusal.
    """

    commit_timeout: float = 3.0
    idle_timeout: float = 30.0
    timings: FleetTimings = field(default_factory=FleetTimings)
    snapshot_min_entries: int = 2000
    snapshot_min_time: float = 600.0
    membership_timeout: float = 8.0
    rejoin_backoff: tuple[float, float] = (0.2, 3.0)

    def __post_init__(self) -> None:
        if not (self.commit_timeout > 0 and self.idle_timeout > 0):
            raise InvalidParameter("timeouts must be positive")
        if self.snapshot_min_entries < 2 or not self.snapshot_min_time > 0:
            raise InvalidParameter("snapshot thresholds out of range")
        if not self.membership_timeout > 0:
            raise InvalidParameter("membership timeout must be positive")
        first, longest = self.rejoin_backoff
        if not 0 < first <= longest:
            raise InvalidParameter("rejoin backoff must be 0 < first <= longest")


class StartupError(VaultError):
    """The node refuses to start (bad layout, tampered sealed state, wrong membership)."""


# --------------------------------------------------------------------------- consensus


class RaftConsensus:
    """The :class:`~hsmvault.hsm.vault_service.Consensus` a node's service runs over:
    ``submit`` commits through :class:`RaftNode` (``Unavailable`` after
    ``commit_timeout``), ``state`` is this replica's committed :class:`VaultState`."""

    def __init__(self, raft: RaftNode, state: VaultState, commit_timeout: float) -> None:
        self._raft = raft
        self._state = state
        self._timeout = commit_timeout

    def submit(self, command: bytes) -> bytes:
        return self._raft.submit(command, timeout=self._timeout)

    def state(self) -> VaultState:
        return self._state


# --------------------------------------------------------------------------- opening


def _read_node_config(node_dir: Path) -> tuple[int, str, Path]:
    """(index, custody kind, fleet base dir) from ``host/node.json``."""
    path = node_dir / "host" / NODE_CONFIG_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise StartupError("node config missing or not JSON") from None
    expected = {"version", "index", "custody", "fleet_file"}
    if not isinstance(doc, dict) or set(doc) != expected or doc["version"] != 1:
        raise StartupError("node config has unexpected fields or version")
    if type(doc["index"]) is not int or doc["custody"] not in ("software", "softhsm"):
        raise StartupError("node config: bad index or custody kind")
    fleet_file = (path.parent / str(doc["fleet_file"])).resolve()
    return doc["index"], doc["custody"], fleet_file.parent


def _open_custody(kind: str, nvram: Nvram, nvram_dir: Path, *, create: bool) -> KeyCustody:
    if kind == "software":
        return SoftwareCustody.open(nvram, create=create)
    if create and not (nvram_dir / "custody.json").exists():
        _create_softhsm_token(nvram_dir)
    try:
        doc = json.loads((nvram_dir / "custody.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise StartupError("SoftHSM2 custody file missing or not JSON") from None
    os.environ["SOFTHSM2_CONF"] = str(doc["conf_path"])  # before the module loads
    # PKCS#11 is loaded on demand (as hsm.custody does), after SOFTHSM2_CONF is set.
    from hsmvault.hsm.custody.pkcs11 import Pkcs11Config, Pkcs11Custody  # noqa: PLC0415

    custody = Pkcs11Custody.open(
        Pkcs11Config(doc["module_path"], doc["token_label"], doc["user_pin"]), create=create
    )
    try:
        bind_identity(custody, nvram)
    except BaseException:
        custody.close()
        raise
    return custody


def _create_softhsm_token(nvram_dir: Path) -> None:
    """A SoftHSM2 token inside the NVRAM directory, and the file the node opens it with:
    the PIN stays inside the trusted-zone stand-in (mode 0600), never on the host side."""
    from hsmvault.hsm.softhsm import create_softhsm_token  # noqa: PLC0415 - on demand

    token = create_softhsm_token(nvram_dir / "softhsm", "hsmvault-node")
    doc = {
        "module_path": token.module_path,
        "token_label": token.token_label,
        "user_pin": token.user_pin,
        "conf_path": str(token.conf_path),
    }
    _write_private(nvram_dir / "custody.json", json.dumps(doc).encode())


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _verify_link_certificate(member: NodeLayout, fleet_id: bytes) -> None:
    """VerificationError unless ``member``'s identity key certified its link key."""
    try:
        identity = NodeIdentity(
            SignatureAlgorithm(member.identity_algorithm), member.identity_public_key
        )
    except ValueError:
        raise StartupError("fleet file: a member identity key is invalid") from None
    message = link_certificate_message(fleet_id, member.link_public_key)
    verify_signature(identity, LINK_CERT_PURPOSE, message, member.link_certificate)


def _link_signer(custody: KeyCustody, host_dir: Path, fleet_id: bytes) -> SoftwareIdentitySigner:
    sealed = (host_dir / LINK_KEY_FILE).read_bytes()
    seed = custody.unseal(LINK_KEY_PURPOSE, sealed, fleet_id)
    return SoftwareIdentitySigner(Ed25519PrivateKey.from_private_bytes(seed))


# --------------------------------------------------------------------------- provisioning


def _provision(node_dir: Path) -> int:
    """Formation's step: the key ceremony inside this node (JSON lines on stdin/stdout;
    :mod:`hsmvault.hsm.ceremony`, ADR 0012). The custody is created here, so the
    identity key is made inside it; the fleet keys arrive HPKE-sealed to this node."""
    from hsmvault.hsm.ceremony import NodeCeremony, serve  # noqa: PLC0415 - provisioning only

    index, kind, _ = _read_node_config(node_dir)
    with DirectoryNvram(node_dir / "nvram") as nvram:
        if nvram.membership():
            raise StartupError("this NVRAM already belongs to a fleet")
        custody = _open_custody(kind, nvram, node_dir / "nvram", create=True)
        try:
            ceremony = NodeCeremony(
                custody=custody,
                nvram=nvram,
                custody_kind=kind,
                index=index,
                host_dir=node_dir / "host",
                write_private=_write_private,
            )
            serve(ceremony, sys.stdin, sys.stdout)
        finally:
            custody.close()
    _log.info("node-%d provisioned by the key ceremony", index)
    return 0


# --------------------------------------------------------------------------- serving


class NodeProcess:
    """A started node: custody, Raft node, service and API server. :meth:`stop` once."""

    def __init__(self, node_dir: Path, config: NodeProcessConfig) -> None:
        self._config = config
        self._stopping = threading.Event()
        self._conn_slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        index, kind, fleet_dir = _read_node_config(node_dir)
        layout = FleetLayout.load(fleet_dir)
        if not 0 <= index < len(layout.nodes) or layout.custody != kind:
            raise StartupError("node config does not match the fleet file")
        me: NodeLayout = layout.nodes[index]
        if me.node_dir.resolve() != node_dir.resolve():
            raise StartupError("node directory does not match the fleet file")
        self.me = me
        self._nvram = DirectoryNvram(me.nvram_dir)
        self._custody: KeyCustody | None = None
        self._raft: RaftNode | None = None
        try:
            self._custody = _open_custody(kind, self._nvram, me.nvram_dir, create=False)
            if self._nvram.membership() != layout.pinned_member_ids():
                raise StartupError("fleet file members differ from the membership pinned in NVRAM")
            for member in layout.nodes:
                _verify_link_certificate(member, layout.fleet_id)
            signer = _link_signer(self._custody, me.host_dir, layout.fleet_id)
            if node_id_for(signer.public_key()) != me.node_id:
                raise StartupError("sealed link key is not this member's")
            sealed_keys = (me.host_dir / FLEET_KEYS_FILE).read_bytes()
            keys = unseal_fleet_keys(self._custody, sealed_keys, layout.fleet_id)
            if keys.public() != layout.public_keys:
                raise StartupError("sealed fleet keys differ from the published public keys")
            overrides = read_peer_addresses(me.host_dir)
            overrides.pop(me.node_id, None)  # a node binds its own fleet.json address
            self._fleet_id = layout.fleet_id
            self._peers = {n.node_id: n for n in layout.nodes if n.node_id != me.node_id}
            self._canonical = layout.membership()  # fleet.json addresses, for the log
            self._state = VaultState()
            self._snapshot_key = keys.snapshot_key()
            self._raft = self._open_raft(signer, layout.membership(overrides))
            self._ticket: RejoinRequest | None = None
            if self._raft.joining:
                self._ticket = self._sign_ticket(self._raft.incarnation)
            consensus = RaftConsensus(self._raft, self._state, config.commit_timeout)
            self._service = VaultService(
                keys.opaque_server(),
                consensus,
                upload_key=keys.enc_private(),
                fleet_id=keys.fleet_id,
                signing_key=keys.sig_private(),
                config=VaultServiceConfig(),
                rejoin=self._handle_rejoin,
                compact=self._raft.compact,  # ADR 0013: snapshot once decommissioned
            )
            self._server = socket.create_server((me.host, me.api_port), backlog=64)
        except BaseException:
            self.stop()
            raise
        self._rejoin_lock = threading.Lock()
        self._acceptor = threading.Thread(target=self._accept_loop, name="api-accept", daemon=True)
        self._rejoiner = threading.Thread(target=self._rejoin_loop, name="rejoin", daemon=True)

    # -- start-up: resume, or start a new incarnation ------------------------------------

    def _open_raft(self, signer: SoftwareIdentitySigner, membership: FleetMembership) -> RaftNode:
        """Resume this node's Raft state, or, if it cannot be proven (absent, corrupt,
        rolled back), start a new incarnation that asks the fleet to readmit it."""
        anchors = FileAnchorStore(self.me.nvram_dir)
        incarnation = self._nvram.epoch()
        try:
            fresh = needs_fresh_journal(anchors, incarnation)
            return self._raft_node(signer, membership, incarnation, fresh=fresh)
        except (RollbackError, VerificationError) as exc:
            # A failing token can look like tampering (PKCS#11 reports a bad GCM tag and
            # a device fault with the same code). Discarding state is only right when the
            # keys demonstrably work: otherwise stop (CustodyError) and keep everything.
            assert self._custody is not None
            self._custody.self_test()
            anchor = anchors.read_anchor()
            floor = max(incarnation, anchor.incarnation if anchor is not None else 0)
            new_incarnation = self._nvram.advance(floor + 1)
            _operator_error(exc, self.me.index, new_incarnation)
            self._state = VaultState()
            return self._raft_node(signer, membership, new_incarnation, fresh=True)

    def _raft_node(
        self,
        signer: SoftwareIdentitySigner,
        membership: FleetMembership,
        incarnation: int,
        *,
        fresh: bool,
    ) -> RaftNode:
        assert self._custody is not None
        journal = JournalConfig(
            directory=self.me.host_dir,
            sealer=self._custody,
            anchors=FileAnchorStore(self.me.nvram_dir),
            fresh=fresh,
        )
        snapshots = SnapshotConfig(
            key=self._snapshot_key,
            snapshot=self._state.snapshot,
            restore=self._state.restore,
            min_entries=self._config.snapshot_min_entries,
            min_time=self._config.snapshot_min_time,
        )
        return RaftNode(
            signer,
            membership,
            self._state.apply,
            self._config.timings,
            incarnation=incarnation,
            incarnations=dict.fromkeys(membership, FORMED_INCARNATION),
            journal=journal,
            # A later incarnation is a member only once the log (or a snapshot) lists it;
            # RaftNode leaves joining mode at once if its journal already does.
            joining=incarnation > FORMED_INCARNATION,
            snapshots=snapshots,
        )

    def start(self) -> None:
        self._acceptor.start()
        if self._ticket is not None:
            self._rejoiner.start()

    def node_info(self) -> NodeInfo:
        raft = self._raft
        assert raft is not None
        return NodeInfo(
            node_id=bytes.fromhex(self.me.node_id),
            region=self.me.region,
            is_leader=raft.is_leader,
            has_quorum=raft.has_quorum,
            term=raft.term,
            commit_index=raft.commit_index,
            last_applied=raft.last_applied,
            record_count=self._state.record_count,
            tombstone_count=self._state.tombstone_count,
            incarnation=raft.incarnation,
            joining=raft.joining,
        )

    # -- rejoin: the joining side --------------------------------------------------------

    def _sign_ticket(self, incarnation: int) -> RejoinRequest:
        assert self._custody is not None
        unsigned = RejoinRequest(
            self._fleet_id, bytes.fromhex(self.me.node_id), incarnation, bytes(64)
        )
        signature = self._custody.sign(REJOIN_PURPOSE, unsigned.ticket_bytes())
        return RejoinRequest(unsigned.fleet_id, unsigned.node_id, incarnation, signature)

    def _rejoin_loop(self) -> None:
        """Send the ticket to the other members in turn until this incarnation is a member
        (bounded exponential backoff between refusals)."""
        ticket = self._ticket
        assert ticket is not None
        first, longest = self._config.rejoin_backoff
        wait = first
        peers = sorted(self._peers.values(), key=lambda n: n.index)
        turn = 0
        while not self._stopping.is_set():
            raft = self._raft
            if raft is None or not raft.joining:
                break
            peer = peers[turn % len(peers)]
            turn += 1
            outcome = self._send_ticket(peer, ticket)
            if outcome is Outcome.OK:
                _log.info(
                    "node-%d admitted this node's incarnation %d", peer.index, ticket.incarnation
                )
                wait = first
                deadline = time.monotonic() + self._config.membership_timeout
                while raft.joining and time.monotonic() < deadline:
                    if self._stopping.wait(0.05):
                        return
                continue
            _log.info("rejoin ticket to node-%d: %s; retrying", peer.index, outcome.name)
            if self._stopping.wait(wait):
                return
            wait = min(wait * 2, longest)
        raft = self._raft
        if raft is not None and not raft.joining:
            _log.warning(
                "node-%d rejoined the fleet as incarnation %d; catching up from the leader",
                self.me.index,
                raft.incarnation,
            )

    def _send_ticket(self, peer: NodeLayout, ticket: RejoinRequest) -> Outcome:
        try:
            with socket.create_connection(peer.api_address, timeout=2.0) as conn:
                conn.settimeout(3 * self._config.membership_timeout + 2.0)
                send_frame(conn, KIND_VAULT, ticket.to_bytes())
                frame = recv_frame(conn)
        except (OSError, DecodeError):
            return Outcome.UNAVAILABLE
        if frame is None or frame[0] != KIND_VAULT:
            return Outcome.UNAVAILABLE
        try:
            response = decode_response(frame[1])
        except DecodeError:
            return Outcome.UNAVAILABLE
        if not isinstance(response, RejoinResponse | ErrorResponse):
            return Outcome.UNAVAILABLE
        return response.outcome

    # -- rejoin: the member side (VaultService delegates RejoinRequest here) --------------

    def _handle_rejoin(self, request: RejoinRequest) -> Outcome:
        """Check a rejoin ticket and readmit its node under the new incarnation.

        Refused without any membership change: another fleet or a node id that is not a
        peer pinned at formation (BAD_REQUEST); a signature that does not verify under
        that peer's custody identity key (INVALID_LOGIN); an incarnation not higher than
        any this fleet has seen for the node — replayed or old tickets (BAD_REQUEST).
        """
        raft = self._raft
        if raft is None or raft.joining:
            return Outcome.UNAVAILABLE
        peer = self._peers.get(request.node_id.hex())
        if not hmac.compare_digest(request.fleet_id, self._fleet_id) or peer is None:
            _log.warning("rejoin ticket for another fleet or a non-member refused")
            return Outcome.BAD_REQUEST
        try:
            identity = NodeIdentity(
                SignatureAlgorithm(peer.identity_algorithm), peer.identity_public_key
            )
            verify_signature(identity, REJOIN_PURPOSE, request.ticket_bytes(), request.signature)
        except (VerificationError, ValueError):
            _log.warning("rejoin ticket for node-%d with a bad signature refused", peer.index)
            return Outcome.INVALID_LOGIN
        if not self._rejoin_lock.acquire(timeout=self._config.membership_timeout):
            return Outcome.UNAVAILABLE
        try:
            return self._readmit(raft, peer, request.incarnation)
        finally:
            self._rejoin_lock.release()

    def _readmit(self, raft: RaftNode, peer: NodeLayout, incarnation: int) -> Outcome:
        timeout = self._config.membership_timeout
        try:
            # Refuse a stale ticket on this node's view first (it only ever grows, so no
            # log entry is spent on a replay), then again after a read barrier, so the
            # view includes every change committed before this request.
            if self._stale(raft, peer, incarnation):
                return Outcome.BAD_REQUEST
            raft.sync(timeout)
            if self._stale(raft, peer, incarnation):
                return Outcome.BAD_REQUEST
            _log.warning(
                "readmitting node-%d as incarnation %d (it lost or could not prove its state)",
                peer.index,
                incarnation,
            )
            if peer.node_id in raft.members():
                raft.remove_member(peer.node_id, timeout)
            member: FleetMember = self._canonical[peer.node_id]
            raft.add_member(member, incarnation, timeout)
        except (RollbackError, InvalidParameter) as exc:
            _log.warning("rejoin of node-%d refused: %s", peer.index, exc)
            return Outcome.BAD_REQUEST
        except Unavailable as exc:
            _log.warning("rejoin of node-%d not committed yet: %s", peer.index, exc)
            return Outcome.UNAVAILABLE
        _log.warning("node-%d readmitted as incarnation %d", peer.index, incarnation)
        return Outcome.OK

    @staticmethod
    def _stale(raft: RaftNode, peer: NodeLayout, incarnation: int) -> bool:
        seen = raft.highest_incarnation(peer.node_id)
        if seen is not None and incarnation > seen:
            return False
        _log.warning(
            "rejoin ticket for node-%d refused: incarnation %d is not above %s (replayed or stale)",
            peer.index,
            incarnation,
            seen,
        )
        return True

    # -- serving -------------------------------------------------------------------------

    def _handle_vault(self, body: bytes) -> bytes:
        raft = self._raft
        if raft is not None and raft.joining:
            # A new incarnation holds no verified state until the fleet admits it and it
            # has caught up: it answers nothing from its (empty) state.
            try:
                request = decode_request(body)
            except DecodeError:
                return ErrorResponse(Outcome.BAD_REQUEST).to_bytes()
            return refusal_for(request, Outcome.UNAVAILABLE).to_bytes()
        return self._service.handle(body)

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            if not self._conn_slots.acquire(blocking=False):
                conn.close()
                continue
            threading.Thread(target=self._serve, args=(conn,), name="api-conn", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(self._config.idle_timeout)
            while not self._stopping.is_set():
                frame = recv_frame(conn)
                if frame is None:
                    return
                kind, body = frame
                if kind == KIND_VAULT:
                    send_frame(conn, KIND_VAULT, self._handle_vault(body))
                elif body:
                    raise DecodeError("node info request carries a body")
                else:
                    send_frame(conn, KIND_NODE_INFO, self.node_info().to_bytes())
        except (DecodeError, OSError):
            return  # protocol violation, idle timeout or peer gone: close
        finally:
            conn.close()
            self._conn_slots.release()

    def stop(self) -> None:
        """Stop serving and release everything. Idempotent."""
        self._stopping.set()
        server = getattr(self, "_server", None)
        if server is not None:
            with contextlib.suppress(OSError):
                server.close()
        if self._raft is not None:
            self._raft.destroy()
            self._raft = None
        if self._custody is not None:
            self._custody.close()
            self._custody = None
        self._nvram.close()


def _operator_error(exc: Exception, index: int, new_incarnation: int) -> None:
    """The operator's message when a node cannot prove its Raft state (log and stderr)."""
    if isinstance(exc, RollbackError):
        cause = (
            "this node's Raft state is older than its NVRAM anchor, or missing "
            "(restored, rolled back or deleted)"
        )
    else:
        cause = "this node's Raft state does not verify (corrupt, tampered or not this node's)"
    message = (
        f"node-{index}: {cause}: {type(exc).__name__}: {exc}. It refuses that state and "
        f"will rejoin as new incarnation {new_incarnation} once a majority of the fleet "
        "admits it; if a majority of the fleet reports this, the fleet is lost and must "
        "be re-formed"
    )
    _log.error(message)
    print(f"error: {message}", file=sys.stderr, flush=True)


def _setup_logging(host_dir: Path) -> None:
    handler = logging.FileHandler(host_dir / LOG_FILE, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def _run(node_dir: Path, config: NodeProcessConfig) -> int:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    node = NodeProcess(node_dir, config)
    ready = node.me.host_dir / READY_FILE
    try:
        node.start()
        _write_private(
            ready,
            json.dumps(
                {"pid": os.getpid(), "node_id": node.me.node_id, "api_port": node.me.api_port}
            ).encode(),
        )
        _log.info(
            "node-%d %s… serving api on %s:%d (region %s)",
            node.me.index,
            node.me.node_id[:12],
            node.me.host,
            node.me.api_port,
            node.me.region,
        )
        print(f"READY {node.me.node_id}", flush=True)
        while not stop.wait(0.5):
            pass
        _log.info("node-%d stopping (signal)", node.me.index)
    finally:
        with contextlib.suppress(FileNotFoundError):
            ready.unlink()
        node.stop()
    return 0


def main(
    argv: list[str] | None = None, *, config_factory: Callable[[], NodeProcessConfig] | None = None
) -> int:
    """Entry point; returns the exit status (0 clean stop, 2 refused to start)."""
    parser = argparse.ArgumentParser(prog="python -m hsmvault.hsm.node_process")
    parser.add_argument("--node-dir", required=True, type=Path)
    parser.add_argument("--provision", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--debug-log",
        action="append",
        default=[],
        metavar="LOGGER",
        help="log this logger at DEBUG (e.g. hsmvault.fleet.transport); repeatable",
    )
    parser.add_argument(
        "--snapshot-min-entries",
        type=int,
        default=None,
        help="compact the Raft log (sealed snapshot) once it holds more entries than this",
    )
    parser.add_argument(
        "--snapshot-min-time",
        type=float,
        default=None,
        help="... or once this many seconds passed since the last snapshot",
    )
    args = parser.parse_args(argv)
    node_dir: Path = args.node_dir.resolve()
    host_dir = node_dir / "host"
    if not host_dir.is_dir():
        print("error: node directory has no host/ directory", file=sys.stderr)
        return 2
    _setup_logging(host_dir)
    for name in args.debug_log:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        if args.provision:
            return _provision(node_dir)
        config = config_factory() if config_factory is not None else NodeProcessConfig()
        if args.snapshot_min_entries is not None:
            config = replace(config, snapshot_min_entries=args.snapshot_min_entries)
        if args.snapshot_min_time is not None:
            config = replace(config, snapshot_min_time=args.snapshot_min_time)
        return _run(node_dir, config)
    except (VaultError, OSError, KeyError, ValueError) as exc:
        # VaultError messages carry no secrets by contract; others are named by type.
        detail = str(exc) if isinstance(exc, VaultError) else type(exc).__name__
        _log.error("node refused to start: %s: %s", type(exc).__name__, detail)
        print(f"error: {type(exc).__name__}: {detail}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
