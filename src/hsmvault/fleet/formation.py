"""Fleet formation on one machine: directories, identities, fleet keys, ``fleet.json``.

:func:`form_fleet` lays out ``n`` nodes (odd, 3..9, default 5) under ``base_dir``::

    base_dir/fleet.json            public: fleet id, public keys, members (regions, ports)
    base_dir/node-<i>/nvram/       the node's NVRAM stand-in (trusted zone): NVRAM record,
                                   software custody keys or the SoftHSM2 token + PIN file
    base_dir/node-<i>/host/        host-side, untrusted: node.json, sealed link key,
                                   sealed fleet keys, journals, node.log, ready file

Tests and auditors attack ``host/`` (copy it, put an old copy back) and leave ``nvram/``
alone (ADR 0003). Everything in ``host/`` is either public or sealed by the node's custody.

Provisioning is the **key ceremony** (ADR 0012; coordinator
:mod:`hsmvault.evidence.ceremony`, node side :mod:`hsmvault.hsm.ceremony`), each node in
its own process (``python -m hsmvault.hsm.node_process --node-dir DIR --provision``,
JSON lines on its stdin/stdout), so the node's keys are made where they live (a SoftHSM2
token is bound to the process that loads it):

1. each node creates its custody (with ``custody="softhsm"`` first its SoftHSM2 token
   inside its ``nvram/`` directory) and attests its identity key, its key properties and
   its code measurement to a software vendor CA made for this deployment (EMULATED
   hardware, labelled so everywhere);
2. the member with the lowest identity node id verifies every attestation, generates the
   fleet keys (:mod:`~hsmvault.fleet.fleet_keys`) and seals them to each member's
   attested transport key — this process never sees them;
3. each member verifies the generator, opens and seals its copy, creates its **fleet
   link key** (Ed25519, sealed host-side) and certifies it: its identity key's
   signature (purpose :data:`LINK_CERT_PURPOSE`) over ``fleet id || link public key``;
4. each node pins the membership (every member's fleet node id) in NVRAM (epoch 1),
   states the credentials it destroyed, signs the transcript and exits.

The evidence (transcript, attestations, measurement, manifest) is written to
``base_dir/evidence/`` (:data:`EVIDENCE_DIR`); its digest
(:func:`hsmvault.evidence.folder.evidence_digest`) goes into the fleet-key artifact.

Every node checks every member's link certificate when it starts (the node is the
trusted party; this module imports nothing of ``hsm``, so the host may use it).

**Why a link key.** The fleet transport (:mod:`~hsmvault.fleet.secure_link`) verifies raw
Ed25519 signatures under the key the membership records, while a custody signs only
domain-separated messages (``KeyCustody.sign(purpose, msg)``, possibly with P-256). Until
the transport verifies custody signatures, each node's membership key is this link key,
certified by its custody identity; ``fleet.json`` publishes both and the certificate.

Contracts: :func:`form_fleet` refuses an even or out-of-range ``n``, an empty region list,
a ``base_dir`` that already holds a fleet, and ports that do not fit; it raises
:class:`~hsmvault.errors.VaultError` subclasses only, and cleans up the children it
started. :meth:`FleetLayout.load` parses ``fleet.json`` strictly
(:class:`~hsmvault.errors.DecodeError`). Nothing secret is ever written to ``fleet.json``
or ``node.json``, or logged.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from hsmvault.errors import DecodeError, InvalidParameter, VaultError
from hsmvault.fleet.fleet_keys import FleetPublicKeys
from hsmvault.fleet.membership import FleetMember, FleetMembership, node_id_for

if TYPE_CHECKING:
    from hsmvault.evidence.ceremony import CeremonyOptions

__all__ = [
    "DEFAULT_NODES",
    "DEFAULT_REGIONS",
    "EVIDENCE_DIR",
    "FLEET_FILE",
    "FLEET_FILE_VERSION",
    "FORMED_INCARNATION",
    "LINK_CERT_PURPOSE",
    "LOOPBACK",
    "MAX_NODES",
    "MIN_NODES",
    "NODE_CONFIG_FILE",
    "PEERS_FILE",
    "CustodyKind",
    "FleetLayout",
    "FormationError",
    "NodeLayout",
    "form_fleet",
    "link_certificate_message",
    "read_peer_addresses",
    "write_peer_addresses",
]

MIN_NODES: Final = 3
MAX_NODES: Final = 9
DEFAULT_NODES: Final = 5
DEFAULT_REGIONS: Final = ("eu-west", "us-east", "ap-south")
LOOPBACK: Final = "127.0.0.1"
FLEET_FILE: Final = "fleet.json"
#: The ceremony's evidence folder, in the fleet's base directory.
EVIDENCE_DIR: Final = "evidence"
FLEET_FILE_VERSION: Final = 1
#: Per node, in ``host/``: which member this directory is (public).
NODE_CONFIG_FILE: Final = "node.json"
#: Per node, in ``host/``, optional: addresses to dial peers at instead of fleet.json's
#: (for proxies in tests). Host-side and untrusted, like every address.
PEERS_FILE: Final = "peers.json"
#: The incarnation (NVRAM epoch) every member has when the fleet is formed.
FORMED_INCARNATION: Final = 1
#: Custody signing purpose of a link certificate.
LINK_CERT_PURPOSE: Final = b"hsmvault/fleet-link-key/v1"
#: Region names: those of the fleet-key artifact (ADR 0010) and of attestations.
_REGION: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")

CustodyKind = Literal["software", "softhsm"]
_CUSTODY_KINDS: Final = ("software", "softhsm")


class FormationError(VaultError):
    """Forming the fleet failed (a node could not be provisioned, or the directory
    already holds a fleet). Messages never carry secrets."""


def link_certificate_message(fleet_id: bytes, link_public_key: bytes) -> bytes:
    """What a node's identity key signs (purpose :data:`LINK_CERT_PURPOSE`) to certify
    its fleet link key: ``fleet id (32) || link public key (32)``."""
    if len(fleet_id) != 32 or len(link_public_key) != 32:
        raise InvalidParameter("fleet id and link key are 32 bytes each")
    return fleet_id + link_public_key


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class NodeLayout:
    """One member as formed: where its directories are, its ports, its keys (public)."""

    index: int
    region: str
    node_dir: Path
    node_id: str
    """Fleet node id (hex) = ``node_id_for(link_public_key)``."""
    link_public_key: bytes
    identity_algorithm: int
    """``hsm.nvram.SignatureAlgorithm`` value of the custody identity key."""
    identity_public_key: bytes
    link_certificate: bytes
    raft_port: int
    api_port: int
    host: str = LOOPBACK

    @property
    def nvram_dir(self) -> Path:
        """Trusted-zone stand-in: never touched by host-side attack tests."""
        return self.node_dir / "nvram"

    @property
    def host_dir(self) -> Path:
        """Host-side, untrusted state of this node."""
        return self.node_dir / "host"

    @property
    def api_address(self) -> tuple[str, int]:
        return (self.host, self.api_port)

    def to_dict(self, base_dir: Path) -> dict[str, Any]:
        return {
            "index": self.index,
            "region": self.region,
            "dir": str(self.node_dir.relative_to(base_dir)),
            "node_id": self.node_id,
            "link_public_key": self.link_public_key.hex(),
            "identity_algorithm": self.identity_algorithm,
            "identity_public_key": self.identity_public_key.hex(),
            "link_certificate": self.link_certificate.hex(),
            "host": self.host,
            "raft_port": self.raft_port,
            "api_port": self.api_port,
        }


_MEMBER_FIELDS: Final = frozenset(
    {
        "index",
        "region",
        "dir",
        "node_id",
        "link_public_key",
        "identity_algorithm",
        "identity_public_key",
        "link_certificate",
        "host",
        "raft_port",
        "api_port",
    }
)
_FLEET_FIELDS: Final = frozenset({"version", "fleet_id", "custody", "public_keys", "members"})


def _int(obj: Mapping[str, Any], key: str, lo: int, hi: int) -> int:
    value = obj[key]
    if type(value) is not int or not lo <= value <= hi:
        raise DecodeError(f"fleet file: {key} out of range")
    return value


def _hex(obj: Mapping[str, Any], key: str, lengths: Sequence[int]) -> bytes:
    value = obj[key]
    if not isinstance(value, str) or value != value.lower():
        raise DecodeError(f"fleet file: {key} must be lowercase hex")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise DecodeError(f"fleet file: {key} is not hex") from None
    if len(raw) not in lengths:
        raise DecodeError(f"fleet file: {key} has the wrong length")
    return raw


def _str(obj: Mapping[str, Any], key: str) -> str:
    value = obj[key]
    if not isinstance(value, str) or not 1 <= len(value) <= 64 or not value.isprintable():
        raise DecodeError(f"fleet file: {key} must be a short printable string")
    return value


def _parse_member(obj: object, base_dir: Path) -> NodeLayout:
    if not isinstance(obj, dict) or set(obj) != _MEMBER_FIELDS:
        raise DecodeError("fleet file: a member has unexpected fields")
    algorithm = _int(obj, "identity_algorithm", 1, 255)
    link_public_key = _hex(obj, "link_public_key", (32,))
    node_id = _str(obj, "node_id")
    if node_id != node_id_for(link_public_key):
        raise DecodeError("fleet file: node id does not match the link key")
    rel = _str(obj, "dir")
    if "/" in rel or rel in (".", ".."):
        raise DecodeError("fleet file: a member dir must be a plain name")
    region = _str(obj, "region")
    if not region.isascii():
        raise DecodeError("fleet file: region must be ASCII")
    return NodeLayout(
        index=_int(obj, "index", 0, MAX_NODES - 1),
        region=region,
        node_dir=base_dir / rel,
        node_id=node_id,
        link_public_key=link_public_key,
        identity_algorithm=algorithm,
        identity_public_key=_hex(obj, "identity_public_key", (32, 65)),
        link_certificate=_hex(obj, "link_certificate", (64,)),
        raft_port=_int(obj, "raft_port", 1, 65535),
        api_port=_int(obj, "api_port", 1, 65535),
        host=_str(obj, "host"),
    )


@dataclass(frozen=True)
class FleetLayout:
    """A formed fleet on disk (all public): what :func:`form_fleet` returns and what
    :meth:`load` reads back from ``fleet.json``."""

    base_dir: Path
    fleet_id: bytes
    custody: CustodyKind
    public_keys: FleetPublicKeys
    nodes: tuple[NodeLayout, ...]

    @property
    def fleet_file(self) -> Path:
        return self.base_dir / FLEET_FILE

    @property
    def evidence_dir(self) -> Path:
        """The key ceremony's evidence folder (ADR 0012)."""
        return self.base_dir / EVIDENCE_DIR

    @property
    def api_addresses(self) -> list[tuple[str, int]]:
        """Every node's API address, in index order (what a host client needs)."""
        return [n.api_address for n in self.nodes]

    def membership(self, overrides: Mapping[str, tuple[str, int]] | None = None) -> FleetMembership:
        """The Raft membership: link keys at their Raft addresses (or ``overrides``,
        keyed by node id, for a node dialing through proxies)."""
        overrides = overrides or {}
        members = []
        for n in self.nodes:
            host, port = overrides.get(n.node_id, (n.host, n.raft_port))
            members.append(FleetMember(n.link_public_key, host, port))
        return FleetMembership(self.fleet_id, members)

    def pinned_member_ids(self) -> tuple[bytes, ...]:
        """What each node pins in NVRAM: the raw fleet node ids, in index order."""
        return tuple(bytes.fromhex(n.node_id) for n in self.nodes)

    def to_json(self) -> str:
        doc = {
            "version": FLEET_FILE_VERSION,
            "fleet_id": self.fleet_id.hex(),
            "custody": self.custody,
            "public_keys": self.public_keys.to_dict(),
            "members": [n.to_dict(self.base_dir) for n in self.nodes],
        }
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"

    @classmethod
    def load(cls, base_dir: str | os.PathLike[str]) -> FleetLayout:
        """Read ``base_dir/fleet.json`` strictly (:class:`DecodeError` on any deviation:
        unknown fields or version, bad hex, a fleet-id mismatch, indices not 0..n-1,
        duplicate ports). Link certificates are parsed here; nodes verify them."""
        base = Path(base_dir).resolve()
        try:
            doc = json.loads((base / FLEET_FILE).read_text(encoding="utf-8"))
        except OSError as exc:
            raise DecodeError(f"fleet file unreadable: {type(exc).__name__}") from None
        except ValueError:
            raise DecodeError("fleet file is not JSON") from None
        if not isinstance(doc, dict) or set(doc) != _FLEET_FIELDS:
            raise DecodeError("fleet file: unexpected fields")
        if doc["version"] != FLEET_FILE_VERSION or type(doc["version"]) is not int:
            raise DecodeError("fleet file: unknown version")
        if doc["custody"] not in _CUSTODY_KINDS:
            raise DecodeError("fleet file: unknown custody kind")
        fleet_id = _hex(doc, "fleet_id", (32,))
        public_keys = FleetPublicKeys.from_dict(doc["public_keys"])
        if public_keys.fleet_id != fleet_id:
            raise DecodeError("fleet file: public keys name another fleet")
        raw_members = doc["members"]
        if not isinstance(raw_members, list) or not MIN_NODES <= len(raw_members) <= MAX_NODES:
            raise DecodeError("fleet file: member count out of range")
        nodes = tuple(_parse_member(m, base) for m in raw_members)
        if [n.index for n in nodes] != list(range(len(nodes))):
            raise DecodeError("fleet file: member indices must be 0..n-1 in order")
        ports = [p for n in nodes for p in (n.raft_port, n.api_port)]
        if len(set(ports)) != len(ports):
            raise DecodeError("fleet file: a port is used twice")
        layout = cls(base, fleet_id, doc["custody"], public_keys, nodes)
        try:
            layout.membership()
        except InvalidParameter:
            raise DecodeError("fleet file: invalid membership") from None
        return layout


def write_peer_addresses(node: NodeLayout, addresses: Mapping[str, tuple[str, int]]) -> None:
    """Make ``node`` dial peers at ``addresses`` (node id → (ip, port)) instead of their
    ``fleet.json`` Raft addresses, from its next start (e.g. through a fault proxy)."""
    doc = {node_id: [host, port] for node_id, (host, port) in sorted(addresses.items())}
    path = node.host_dir / PEERS_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_peer_addresses(host_dir: Path) -> dict[str, tuple[str, int]]:
    """The overrides written by :func:`write_peer_addresses` (empty if none);
    :class:`DecodeError` if the file is malformed."""
    path = host_dir / PEERS_FILE
    if not path.exists():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise DecodeError("peers file is not JSON") from None
    if not isinstance(doc, dict):
        raise DecodeError("peers file must be an object")
    out: dict[str, tuple[str, int]] = {}
    for node_id, value in doc.items():
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not isinstance(value[0], str)
            or type(value[1]) is not int
            or not 0 < value[1] < 65536
        ):
            raise DecodeError("peers file: an address must be [ip, port]")
        out[node_id] = (value[0], value[1])
    return out


# --------------------------------------------------------------------------- forming


def _free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that were free a moment ago."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _check_args(nodes: int, regions: Sequence[str], custody: str, base_port: int | None) -> None:
    if isinstance(nodes, bool) or not isinstance(nodes, int):
        raise InvalidParameter("nodes must be an int")
    if not MIN_NODES <= nodes <= MAX_NODES or nodes % 2 == 0:
        raise InvalidParameter(f"a fleet has an odd number of nodes in {MIN_NODES}..{MAX_NODES}")
    if not regions or any(not isinstance(r, str) or not _REGION.fullmatch(r) for r in regions):
        raise InvalidParameter(
            "regions are 1..63 characters of [a-z0-9-], not starting or ending with '-'"
        )
    if custody not in _CUSTODY_KINDS:
        raise InvalidParameter("custody must be 'software' or 'softhsm'")
    if base_port is not None and not 1024 <= base_port <= 65535 - 2 * nodes:
        raise InvalidParameter("base_port out of range")


def _write_node_config(node_dir: Path, index: int, custody: str) -> None:
    host_dir = node_dir / "host"
    host_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    config = {"version": 1, "index": index, "custody": custody, "fleet_file": f"../../{FLEET_FILE}"}
    (host_dir / NODE_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def form_fleet(
    base_dir: str | os.PathLike[str],
    *,
    nodes: int = DEFAULT_NODES,
    regions: Sequence[str] = DEFAULT_REGIONS,
    custody: CustodyKind = "software",
    base_port: int | None = None,
    ceremony: CeremonyOptions | None = None,
) -> FleetLayout:
    """Form a fleet of ``nodes`` members under ``base_dir`` through the key ceremony
    (see the module docstring; ``ceremony`` sets its officers, deployment name, operator
    key and namespace — by default one ephemeral officer, unattended).

    Node ``i`` gets region ``regions[i % len(regions)]``, and Raft/API ports
    ``base_port + 2i`` / ``base_port + 2i + 1`` (or free loopback ports when
    ``base_port`` is None). The nodes are provisioned but not started: start each with
    ``python -m hsmvault.hsm.node_process --node-dir base_dir/node-<i>``. The evidence
    folder is ``base_dir/evidence`` (:attr:`FleetLayout.evidence_dir`).
    """
    # On demand: every node process imports this module, only formation runs a ceremony.
    from hsmvault.evidence.ceremony import JsonLinesChild, run_ceremony  # noqa: PLC0415

    _check_args(nodes, regions, custody, base_port)
    base = Path(base_dir).resolve()
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    if (base / FLEET_FILE).exists() or (base / EVIDENCE_DIR).exists() or any(base.glob("node-*")):
        raise FormationError("base_dir already holds a fleet")
    ports = (
        list(range(base_port, base_port + 2 * nodes))
        if base_port is not None
        else _free_ports(2 * nodes)
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    node_dirs = [base / f"node-{i}" for i in range(nodes)]
    node_regions = [regions[i % len(regions)] for i in range(nodes)]
    for i, node_dir in enumerate(node_dirs):
        (node_dir / "nvram").mkdir(mode=0o700, parents=True)
        _write_node_config(node_dir, i, custody)

    children = [
        JsonLinesChild(
            [
                sys.executable,
                "-m",
                "hsmvault.hsm.node_process",
                "--node-dir",
                str(d),
                "--provision",
            ],
            env,
            f"node-{i}",
        )
        for i, d in enumerate(node_dirs)
    ]
    try:
        outcome = run_ceremony(
            children,
            regions=node_regions,
            custody=custody,
            evidence_dir=base / EVIDENCE_DIR,
            options=ceremony,
            env=env,
        )
        for child in children:
            child.finish()
        layout = FleetLayout(
            base,
            outcome.fleet_id,
            custody,
            outcome.public_keys,
            tuple(
                NodeLayout(
                    index=m.index,
                    region=m.region,
                    node_dir=node_dirs[m.index],
                    node_id=node_id_for(m.link_public_key),
                    link_public_key=m.link_public_key,
                    identity_algorithm=m.identity_algorithm,
                    identity_public_key=m.identity_public_key,
                    link_certificate=m.link_certificate,
                    raft_port=ports[2 * m.index],
                    api_port=ports[2 * m.index + 1],
                )
                for m in outcome.members
            ),
        )
        layout.membership()  # duplicates, ranges
    except VaultError as exc:  # CeremonyError, MeasurementError, DecodeError, ...
        raise FormationError(f"formation failed: {exc}") from None
    finally:
        for child in children:
            child.kill()
    tmp = base / (FLEET_FILE + ".tmp")
    tmp.write_text(layout.to_json(), encoding="utf-8")
    os.replace(tmp, base / FLEET_FILE)
    return layout
