"""The fleet-key artifact: a namespace's fleet directory at one epoch (ADR 0010).

Specification: ``docs/formats/fleet-keys.md``. One canonical byte encoding::

    json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)

Contracts:

* **Construction** (:class:`FleetEntry`, :class:`FleetKeyArtifact`) checks every field and
  raises :class:`~hsmvault.errors.InvalidParameter` on a bad one. It *normalises* the
  order of the sets it holds (``regions``, ``fleets`` by fleet id, ``decommissioned``), so
  one directory has exactly one encoding.
* **Parsing** (:meth:`FleetKeyArtifact.from_bytes`) is strict and raises only
  :class:`~hsmvault.transparency.errors.BundleFormatError`: the bytes must be exactly the
  canonical encoding of a valid artifact (re-serialising must give the input back), so
  whitespace, key order, escapes, ``-0``, floats, booleans for integers, uppercase hex,
  duplicate or unknown or missing keys, unsorted sets and oversized input are all refused.
* :meth:`FleetKeyArtifact.digest` is ``SHA-256(canonical bytes)``; for a parsed artifact it
  is the SHA-256 of the input bytes.

Decisions beyond the ADR (documented in the format page):

* ``fleets`` may be empty only when ``decommissioned`` is not (a namespace winding down
  publishes the decommissioning of its last fleet); an artifact naming no fleet at all is
  refused. A fleet id may not be both listed and decommissioned.
* Namespaces are 1 to 255 printable ASCII characters without spaces (``0x21..0x7E``);
  regions are 1 to 63 characters of ``[a-z0-9-]`` not starting or ending with ``-``.
* ``not_before < not_after`` (strictly). ``enc`` (X25519) and ``sig`` (Ed25519) keys are
  checked for length only; ``ake`` must be a canonical, non-identity ristretto255 element.

Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol, TypeVar

from hsmvault.crypto.ristretto255 import Element
from hsmvault.errors import DecodeError, InvalidParameter
from hsmvault.transparency.errors import BundleFormatError
from hsmvault.wire import canonical_json as cj
from hsmvault.wire.canonical_json import canonical_json

__all__ = [
    "ARTIFACT_VERSION",
    "MAX_ARTIFACT_LEN",
    "MAX_DECOMMISSIONED",
    "MAX_FLEETS",
    "MAX_REGIONS",
    "STATUS_ACTIVE",
    "STATUS_RETIRING",
    "ArtifactChange",
    "ChangeKind",
    "FleetEntry",
    "FleetKeyArtifact",
    "FleetKeys",
    "canonical_json",
    "changed_key_roles",
    "check_namespace",
    "diff_artifacts",
    "parse_canonical_json",
]

ARTIFACT_VERSION: Final = 1
#: Largest accepted artifact encoding (a bundle carries it base64-encoded in 64 KiB).
MAX_ARTIFACT_LEN: Final = 32 * 1024
MAX_FLEETS: Final = 64
MAX_DECOMMISSIONED: Final = 256
MAX_REGIONS: Final = 32
STATUS_ACTIVE: Final = "active"
STATUS_RETIRING: Final = "retiring"
_STATUSES: Final = frozenset({STATUS_ACTIVE, STATUS_RETIRING})

_ID_LEN: Final = 32
_KEY_LEN: Final = 32
_U64: Final = (1 << 64) - 1
_MAX_TIME: Final = (1 << 63) - 1
_MAX_NAMESPACE_LEN: Final = 255
_REGION_RE: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_T = TypeVar("_T")


# --- canonical JSON (shared: hsmvault.wire.canonical_json) ---------------------------


def parse_canonical_json(data: object, *, max_len: int, what: str) -> Any:
    """Parse ``data`` (bytes) as canonical JSON; the JSON value, else BundleFormatError.

    The rules of :func:`hsmvault.wire.canonical_json.parse_canonical_json` (non-bytes,
    empty or oversized, non-ASCII, invalid JSON, floats, NaN/Infinity, integers over 20
    digits, duplicate keys, excessive nesting and non-canonical encodings are refused).
    Schema checks are the caller's.
    """
    return cj.parse_canonical_json(data, max_len=max_len, what=what, error=BundleFormatError)


# --- strict field readers (raise BundleFormatError) -----------------------------------


def _fields(value: object, keys: frozenset[str], what: str) -> dict[str, Any]:
    return cj.fields(value, keys, what, error=BundleFormatError)


def _read_int(value: object, lo: int, hi: int, what: str) -> int:
    return cj.read_int(value, what, lo, hi, error=BundleFormatError)


def _read_str(value: object, what: str) -> str:
    return cj.read_str(value, what, error=BundleFormatError)


def _read_hex(value: object, length: int, what: str) -> bytes:
    return cj.read_hex(value, what, length, error=BundleFormatError)


def _read_optional_hex(value: object, length: int, what: str) -> bytes | None:
    return None if value is None else _read_hex(value, length, what)


def _read_list(value: object, max_items: int, what: str) -> list[Any]:
    if not isinstance(value, list) or len(value) > max_items:
        raise BundleFormatError(f"{what} must be a list of at most {max_items} items")
    return value


def _build(make: Callable[[], _T], what: str) -> _T:
    """Run a constructor on parsed values, mapping its refusals to BundleFormatError."""
    try:
        return make()
    except (InvalidParameter, DecodeError):
        raise BundleFormatError(f"{what} is invalid") from None


# --- value checks for construction (raise InvalidParameter) ---------------------------


def check_namespace(namespace: object) -> str:
    """A namespace is 1-255 printable ASCII characters without spaces; InvalidParameter."""
    if (
        not isinstance(namespace, str)
        or not 0 < len(namespace) <= _MAX_NAMESPACE_LEN
        or not all(0x21 <= ord(c) <= 0x7E for c in namespace)
    ):
        raise InvalidParameter("namespace must be 1-255 printable ASCII characters, no spaces")
    return namespace


def _check_bytes(value: object, length: int, what: str) -> None:
    if type(value) is not bytes or len(value) != length:
        raise InvalidParameter(f"{what} must be {length} bytes")


def _check_int(value: object, hi: int, what: str) -> None:
    if type(value) is not int or not 0 <= value <= hi:
        raise InvalidParameter(f"{what} must be an integer in 0..{hi}")


# --- the artifact ---------------------------------------------------------------------

_ENTRY_KEYS: Final = frozenset(
    {"fleet_id", "status", "keys", "not_before", "not_after", "regions", "evidence_digest"}
)
_KEYS_KEYS: Final = frozenset({"ake", "enc", "sig"})
_ARTIFACT_KEYS: Final = frozenset(
    {"version", "namespace", "epoch", "issued_at", "previous_digest", "fleets", "decommissioned"}
)


@dataclass(frozen=True)
class FleetEntry:
    """One fleet a client may talk to, with its public keys and validity window.

    ``ake_public_key`` is the OPAQUE server key (ristretto255), ``enc_public_key`` the
    X25519 key uploads are sealed to, ``sig_public_key`` the Ed25519 key the fleet signs
    session answers with. ``not_before``/``not_after`` are seconds since the Unix epoch
    (UTC), inclusive bounds, ``not_before < not_after``. ``regions`` is normalised to
    sorted order; ``evidence_digest`` is SHA-256 of the deployment evidence or ``None``.
    """

    fleet_id: bytes
    status: str
    ake_public_key: bytes
    enc_public_key: bytes
    sig_public_key: bytes
    not_before: int
    not_after: int
    regions: tuple[str, ...] = ()
    evidence_digest: bytes | None = None

    def __post_init__(self) -> None:
        _check_bytes(self.fleet_id, _ID_LEN, "fleet_id")
        if not isinstance(self.status, str) or self.status not in _STATUSES:
            raise InvalidParameter("status must be 'active' or 'retiring'")
        for value, role in (
            (self.ake_public_key, "ake"),
            (self.enc_public_key, "enc"),
            (self.sig_public_key, "sig"),
        ):
            _check_bytes(value, _KEY_LEN, f"{role} public key")
        try:
            Element.from_bytes(self.ake_public_key)
        except DecodeError:
            raise InvalidParameter("ake public key is not a ristretto255 element") from None
        _check_int(self.not_before, _MAX_TIME, "not_before")
        _check_int(self.not_after, _MAX_TIME, "not_after")
        if self.not_before >= self.not_after:
            raise InvalidParameter("not_before must be before not_after")
        if not isinstance(self.regions, tuple | list) or len(self.regions) > MAX_REGIONS:
            raise InvalidParameter(f"regions must be a tuple of at most {MAX_REGIONS}")
        for region in self.regions:
            if not isinstance(region, str) or not _REGION_RE.fullmatch(region):
                raise InvalidParameter("region names are 1-63 of [a-z0-9-]")
        if len(set(self.regions)) != len(self.regions):
            raise InvalidParameter("duplicate region")
        object.__setattr__(self, "regions", tuple(sorted(self.regions)))
        if self.evidence_digest is not None:
            _check_bytes(self.evidence_digest, 32, "evidence_digest")

    def to_dict(self) -> dict[str, Any]:
        """The JSON object form (lowercase hex)."""
        return {
            "fleet_id": self.fleet_id.hex(),
            "status": self.status,
            "keys": {
                "ake": self.ake_public_key.hex(),
                "enc": self.enc_public_key.hex(),
                "sig": self.sig_public_key.hex(),
            },
            "not_before": self.not_before,
            "not_after": self.not_after,
            "regions": list(self.regions),
            "evidence_digest": (
                None if self.evidence_digest is None else self.evidence_digest.hex()
            ),
        }

    @classmethod
    def from_dict(cls, value: object) -> FleetEntry:
        """Parse the object form strictly; BundleFormatError on anything else."""
        obj = _fields(value, _ENTRY_KEYS, "fleet entry")
        keys = _fields(obj["keys"], _KEYS_KEYS, "fleet keys")
        regions = _read_list(obj["regions"], MAX_REGIONS, "regions")
        fleet_id = _read_hex(obj["fleet_id"], _ID_LEN, "fleet_id")
        status = _read_str(obj["status"], "status")
        ake = _read_hex(keys["ake"], _KEY_LEN, "ake key")
        enc = _read_hex(keys["enc"], _KEY_LEN, "enc key")
        sig = _read_hex(keys["sig"], _KEY_LEN, "sig key")
        not_before = _read_int(obj["not_before"], 0, _MAX_TIME, "not_before")
        not_after = _read_int(obj["not_after"], 0, _MAX_TIME, "not_after")
        region_names = tuple(_read_str(r, "region") for r in regions)
        evidence = _read_optional_hex(obj["evidence_digest"], 32, "evidence_digest")
        return _build(
            lambda: cls(
                fleet_id=fleet_id,
                status=status,
                ake_public_key=ake,
                enc_public_key=enc,
                sig_public_key=sig,
                not_before=not_before,
                not_after=not_after,
                regions=region_names,
                evidence_digest=evidence,
            ),
            "fleet entry",
        )

    def valid_at(self, now: float) -> bool:
        """Whether ``now`` (seconds) lies in ``[not_before, not_after]``."""
        return self.not_before <= now <= self.not_after


@dataclass(frozen=True)
class FleetKeyArtifact:
    """A namespace's fleet directory at one epoch (see the module docstring).

    ``fleets`` is normalised to ascending fleet id, ``decommissioned`` to ascending order.
    ``previous_digest`` is SHA-256 of the previous epoch's artifact, ``None`` at the
    namespace's root epoch. ``issued_at`` is seconds since the Unix epoch (UTC).
    """

    namespace: str
    epoch: int
    issued_at: int
    previous_digest: bytes | None
    fleets: tuple[FleetEntry, ...]
    decommissioned: tuple[bytes, ...] = ()
    version: int = ARTIFACT_VERSION

    def __post_init__(self) -> None:
        if type(self.version) is not int or self.version != ARTIFACT_VERSION:
            raise InvalidParameter("unknown artifact version")
        check_namespace(self.namespace)
        _check_int(self.epoch, _U64, "epoch")
        _check_int(self.issued_at, _MAX_TIME, "issued_at")
        if self.previous_digest is not None:
            _check_bytes(self.previous_digest, 32, "previous_digest")
        if not isinstance(self.fleets, tuple | list) or len(self.fleets) > MAX_FLEETS:
            raise InvalidParameter(f"fleets must be a tuple of at most {MAX_FLEETS}")
        if not all(isinstance(f, FleetEntry) for f in self.fleets):
            raise InvalidParameter("fleets must be FleetEntry values")
        if not isinstance(self.decommissioned, tuple | list) or (
            len(self.decommissioned) > MAX_DECOMMISSIONED
        ):
            raise InvalidParameter(f"at most {MAX_DECOMMISSIONED} decommissioned fleets")
        for fid in self.decommissioned:
            _check_bytes(fid, _ID_LEN, "decommissioned fleet id")
        ids = [f.fleet_id for f in self.fleets]
        if len(set(ids)) != len(ids):
            raise InvalidParameter("duplicate fleet id")
        if len(set(self.decommissioned)) != len(self.decommissioned):
            raise InvalidParameter("duplicate decommissioned fleet id")
        if set(ids) & set(self.decommissioned):
            raise InvalidParameter("a fleet cannot be listed and decommissioned")
        if not ids and not self.decommissioned:
            raise InvalidParameter("an artifact names at least one fleet")
        object.__setattr__(self, "fleets", tuple(sorted(self.fleets, key=lambda f: f.fleet_id)))
        object.__setattr__(self, "decommissioned", tuple(sorted(self.decommissioned)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "namespace": self.namespace,
            "epoch": self.epoch,
            "issued_at": self.issued_at,
            "previous_digest": (
                None if self.previous_digest is None else self.previous_digest.hex()
            ),
            "fleets": [f.to_dict() for f in self.fleets],
            "decommissioned": [fid.hex() for fid in self.decommissioned],
        }

    def to_bytes(self) -> bytes:
        """The canonical encoding (what the witness's digest covers)."""
        return canonical_json(self.to_dict())

    def digest(self) -> bytes:
        """``SHA-256(self.to_bytes())``."""
        return hashlib.sha256(self.to_bytes()).digest()

    @classmethod
    def from_bytes(cls, data: bytes) -> FleetKeyArtifact:
        """Parse a canonical encoding strictly; raises only BundleFormatError."""
        obj = _fields(
            parse_canonical_json(data, max_len=MAX_ARTIFACT_LEN, what="artifact"),
            _ARTIFACT_KEYS,
            "artifact",
        )
        _read_int(obj["version"], ARTIFACT_VERSION, ARTIFACT_VERSION, "version")
        fleets = _read_list(obj["fleets"], MAX_FLEETS, "fleets")
        decommissioned = _read_list(obj["decommissioned"], MAX_DECOMMISSIONED, "decommissioned")
        namespace = _read_str(obj["namespace"], "namespace")
        epoch = _read_int(obj["epoch"], 0, _U64, "epoch")
        issued_at = _read_int(obj["issued_at"], 0, _MAX_TIME, "issued_at")
        previous = _read_optional_hex(obj["previous_digest"], 32, "previous_digest")
        entries = tuple(FleetEntry.from_dict(f) for f in fleets)
        gone = tuple(_read_hex(fid, _ID_LEN, "decommissioned") for fid in decommissioned)
        artifact = _build(
            lambda: cls(
                namespace=namespace,
                epoch=epoch,
                issued_at=issued_at,
                previous_digest=previous,
                fleets=entries,
                decommissioned=gone,
            ),
            "artifact",
        )
        if artifact.to_bytes() != bytes(data):
            raise BundleFormatError("artifact is not in canonical order")
        return artifact

    def entry_for(self, fleet_id: bytes) -> FleetEntry | None:
        """The entry of ``fleet_id`` in ``fleets``, or ``None`` (absent or decommissioned)."""
        for entry in self.fleets:
            if entry.fleet_id == fleet_id:
                return entry
        return None

    def is_decommissioned(self, fleet_id: bytes) -> bool:
        return fleet_id in self.decommissioned


# --- differences between two artifacts (for `hsmvault audit log`) ---------------------

ChangeKind = Literal[
    "namespace_changed",
    "epoch_changed",
    "reissued",
    "chain_broken",
    "fleet_added",
    "fleet_removed",
    "status_changed",
    "keys_changed",
    "window_changed",
    "regions_changed",
    "evidence_changed",
    "decommissioned",
    "undecommissioned",
]


@dataclass(frozen=True)
class ArtifactChange:
    """One difference between two artifacts. ``fleet_id`` is set for per-fleet changes;
    ``detail`` is a short human-readable sentence (public data only)."""

    kind: ChangeKind
    detail: str
    fleet_id: bytes | None = None

    def __str__(self) -> str:
        where = f"fleet {self.fleet_id.hex()[:16]}: " if self.fleet_id is not None else ""
        return f"{self.kind}: {where}{self.detail}"


class FleetKeys(Protocol):
    """Anything carrying a fleet's three public keys (a :class:`FleetEntry`, or
    :class:`hsmvault.fleet.fleet_keys.FleetPublicKeys`)."""

    @property
    def ake_public_key(self) -> bytes: ...

    @property
    def enc_public_key(self) -> bytes: ...

    @property
    def sig_public_key(self) -> bytes: ...


def changed_key_roles(a: FleetKeys, b: FleetKeys) -> list[str]:
    """The roles (``"ake"``, ``"enc"``, ``"sig"``, in that order) whose public key
    differs between ``a`` and ``b``; ``[]`` when all three are equal."""
    return [
        role
        for role, x, y in (
            ("ake", a.ake_public_key, b.ake_public_key),
            ("enc", a.enc_public_key, b.enc_public_key),
            ("sig", a.sig_public_key, b.sig_public_key),
        )
        if x != y
    ]


def _fmt_window(entry: FleetEntry) -> str:
    return f"[{entry.not_before}, {entry.not_after}]"


def _entry_changes(old: FleetEntry, new: FleetEntry) -> list[ArtifactChange]:
    fid = new.fleet_id
    out: list[ArtifactChange] = []
    if old.status != new.status:
        out.append(ArtifactChange("status_changed", f"{old.status} -> {new.status}", fid))
    roles = changed_key_roles(old, new)
    if roles:
        out.append(ArtifactChange("keys_changed", "new " + ", ".join(roles) + " key", fid))
    if (old.not_before, old.not_after) != (new.not_before, new.not_after):
        detail = f"validity {_fmt_window(old)} -> {_fmt_window(new)}"
        out.append(ArtifactChange("window_changed", detail, fid))
    if old.regions != new.regions:
        detail = f"regions {list(old.regions)} -> {list(new.regions)}"
        out.append(ArtifactChange("regions_changed", detail, fid))
    if old.evidence_digest != new.evidence_digest:

        def show(d: bytes | None) -> str:
            return "none" if d is None else d.hex()[:16]

        detail = f"evidence {show(old.evidence_digest)} -> {show(new.evidence_digest)}"
        out.append(ArtifactChange("evidence_changed", detail, fid))
    return out


def diff_artifacts(old: FleetKeyArtifact, new: FleetKeyArtifact) -> list[ArtifactChange]:
    """What changed from ``old`` to ``new``, in a stable order: header changes first
    (namespace, epoch, re-issue, a broken ``previous_digest`` link between consecutive
    epochs), then per fleet in ascending fleet id (added, removed, status, keys, window,
    regions, evidence), then decommissioning changes. Identical artifacts give ``[]``."""
    out: list[ArtifactChange] = []
    if old.namespace != new.namespace:
        detail = f"{old.namespace!r} -> {new.namespace!r}"
        out.append(ArtifactChange("namespace_changed", detail))
    if old.epoch != new.epoch:
        out.append(ArtifactChange("epoch_changed", f"epoch {old.epoch} -> {new.epoch}"))
    if old.issued_at != new.issued_at:
        detail = f"issued_at {old.issued_at} -> {new.issued_at}"
        out.append(ArtifactChange("reissued", detail))
    if new.epoch == old.epoch + 1 and new.previous_digest != old.digest():
        detail = f"epoch {new.epoch} does not name epoch {old.epoch}'s digest as previous"
        out.append(ArtifactChange("chain_broken", detail))
    old_by_id = {f.fleet_id: f for f in old.fleets}
    new_by_id = {f.fleet_id: f for f in new.fleets}
    for fid in sorted(old_by_id.keys() | new_by_id.keys()):
        before, after = old_by_id.get(fid), new_by_id.get(fid)
        if before is None and after is not None:
            detail = f"added as {after.status}, valid {_fmt_window(after)}"
            out.append(ArtifactChange("fleet_added", detail, fid))
        elif after is None and before is not None:
            out.append(ArtifactChange("fleet_removed", "no longer listed", fid))
        elif before is not None and after is not None:
            out.extend(_entry_changes(before, after))
    for fid in sorted(set(new.decommissioned) - set(old.decommissioned)):
        out.append(ArtifactChange("decommissioned", "decommissioned", fid))
    for fid in sorted(set(old.decommissioned) - set(new.decommissioned)):
        out.append(ArtifactChange("undecommissioned", "no longer listed as decommissioned", fid))
    return out
