"""How the CLI, acting as a device, decides which fleet to trust (ADR 0010).

Every vault session goes through :class:`~hsmvault.client.bundle_verifier.BundleFleetTrust`:
the fleet's validation bundle must be signed by a pinned witness key, counter-signed by a
pinned operator key, for the namespace, not older than an epoch this device accepted,
fresh, logged (inclusion proof under the pinned log key, consistent with the last
checkpoint this device saw), and must list the fleet that signed the session.

The pins live in the device directory, ``trust.json`` (public data; the format is
:class:`DevicePins`), and the device's memory of accepted epochs and checkpoints in
``trust-store.json`` (:class:`~hsmvault.client.trust_store.FileTrustStore`). The pins are
made **at first use** from the local deployment that runs on the data directory: the
witness keys and log key from its witness's ``/info``, the operator public key from
``<data dir>/operator/operator.json``. That moment is announced ("pinned at first use");
afterwards the pins are never fetched again — a witness or operator key change shows up
as a refused bundle, and re-pinning means deleting ``trust.json`` on purpose.

The witness URL in the pins is only where proofs are fetched from (consistency proofs
are verified against pinned checkpoints); the running deployment's current URL is
preferred when there is one.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from hsmvault.cli.local_deployment import DataLayout, read_state
from hsmvault.cli.operator_key import read_operator_public_key
from hsmvault.client.bundle_verifier import (
    BundleFleetTrust,
    BundleVerifier,
    PinnedWitnessKey,
    TrustPolicy,
)
from hsmvault.client.trust_store import FileTrustStore
from hsmvault.errors import DecodeError, InvalidParameter, VaultError, VerificationError
from hsmvault.fleet.fleet_keys import FleetPublicKeys
from hsmvault.transparency.artifact import check_namespace
from hsmvault.transparency.signed_note import Verifier
from hsmvault.transparency.witness_client import WitnessClient, WitnessInfo

__all__ = [
    "PINS_FILE",
    "TRUST_STORE_FILE",
    "DevicePins",
    "DeviceTrust",
    "NoTrustAnchor",
    "load_pins",
    "pin_from_deployment",
    "save_pins",
]

PINS_FILE: Final = "trust.json"
TRUST_STORE_FILE: Final = "trust-store.json"
_MAX_PINS_LEN: Final = 1 << 16


class NoTrustAnchor(VerificationError):
    """The device has no pinned witness/operator keys and none can be pinned now."""


@dataclass(frozen=True)
class DevicePins:
    """What a device pins (``trust.json``)::

    {"version": 1, "namespace": "...", "witness_name": "...",
     "witness_keys": [{"public_key": "<64 hex>", "not_before_ms": n}, ...],
     "log_key": "<note verifier key>", "operator_public_keys": ["<64 hex>", ...],
     "witness_url": "http://...", "pinned_at": <s>, "source": "..."}
    """

    namespace: str
    witness_name: str
    witness_keys: tuple[PinnedWitnessKey, ...]
    log_key: Verifier
    operator_public_keys: tuple[bytes, ...]
    witness_url: str
    pinned_at: int
    source: str

    def policy(self) -> TrustPolicy:
        """The client's trust policy: these pins, inclusion evidence required."""
        return TrustPolicy(
            namespace=self.namespace,
            witness_keys=self.witness_keys,
            operator_public_keys=self.operator_public_keys,
            log_key=self.log_key,
            require_inclusion=True,
        )

    def witness_info(self) -> WitnessInfo:
        """The pinned witness keys in the witness client's shape (for the auditor)."""
        from hsmvault.transparency.bundle import witness_key_id  # noqa: PLC0415
        from hsmvault.transparency.witness_client import WitnessKeyInfo  # noqa: PLC0415

        keys = tuple(
            WitnessKeyInfo(witness_key_id(k.public_key), k.public_key, k.not_before_ms)
            for k in self.witness_keys
        )
        return WitnessInfo(self.witness_name, keys, self.log_key)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 1,
            "namespace": self.namespace,
            "witness_name": self.witness_name,
            "witness_keys": [
                {"public_key": k.public_key.hex(), "not_before_ms": k.not_before_ms}
                for k in self.witness_keys
            ],
            "log_key": self.log_key.to_vkey(),
            "operator_public_keys": [k.hex() for k in self.operator_public_keys],
            "witness_url": self.witness_url,
            "pinned_at": self.pinned_at,
            "source": self.source,
        }

    @classmethod
    def from_json(cls, doc: object) -> DevicePins:
        """Strict parse; DecodeError on anything unexpected."""
        keys = {
            "version",
            "namespace",
            "witness_name",
            "witness_keys",
            "log_key",
            "operator_public_keys",
            "witness_url",
            "pinned_at",
            "source",
        }
        if not isinstance(doc, dict) or set(doc) != keys or doc["version"] != 1:
            raise DecodeError("trust.json: unexpected fields or version")
        try:
            witness_keys = tuple(
                PinnedWitnessKey(_hex32(k["public_key"]), _int(k["not_before_ms"]))
                for k in _list(doc["witness_keys"])
                if isinstance(k, dict) and set(k) == {"public_key", "not_before_ms"}
            )
            if len(witness_keys) != len(_list(doc["witness_keys"])):
                raise DecodeError("trust.json: malformed witness key")
            pins = cls(
                namespace=check_namespace(doc["namespace"]),
                witness_name=_str(doc["witness_name"]),
                witness_keys=witness_keys,
                log_key=Verifier.from_vkey(_str(doc["log_key"])),
                operator_public_keys=tuple(_hex32(k) for k in _list(doc["operator_public_keys"])),
                witness_url=_str(doc["witness_url"]),
                pinned_at=_int(doc["pinned_at"]),
                source=_str(doc["source"]),
            )
            pins.policy()  # every rule of a trust policy holds
        except (InvalidParameter, KeyError, TypeError) as exc:
            raise DecodeError(f"trust.json is malformed ({type(exc).__name__})") from None
        if pins.log_key.name != pins.witness_name:
            raise DecodeError("trust.json: the log key is not named after the witness")
        return pins


def _hex32(value: object) -> bytes:
    if not isinstance(value, str) or len(value) != 64 or value != value.lower():
        raise DecodeError("trust.json: a key is not 64 lowercase hex digits")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise DecodeError("trust.json: a key is not hex") from None


def _int(value: object) -> int:
    if type(value) is not int or value < 0:
        raise DecodeError("trust.json: expected a non-negative integer")
    return value


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise DecodeError("trust.json: expected a string")
    return value


def _list(value: object) -> list[Any]:
    if not isinstance(value, list):
        raise DecodeError("trust.json: expected a list")
    return value


def load_pins(device_dir: Path) -> DevicePins | None:
    """The device's pins, or ``None`` if it has none yet (DecodeError if malformed:
    a damaged pin file is never replaced silently)."""
    path = device_dir / PINS_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    if len(raw) > _MAX_PINS_LEN:
        raise DecodeError(f"{path} is too large")
    try:
        doc = json.loads(raw)
    except ValueError:
        raise DecodeError(f"{path} is not JSON") from None
    return DevicePins.from_json(doc)


def save_pins(device_dir: Path, pins: DevicePins) -> None:
    """Write ``trust.json`` (refuses to overwrite existing pins)."""
    device_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = device_dir / PINS_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(pins.to_json(), indent=2, sort_keys=True) + "\n", encoding="ascii")
    try:
        os.link(tmp, path)  # never replaces pins already there
    except FileExistsError:
        raise InvalidParameter(f"{path} exists: pins are never replaced silently") from None
    finally:
        tmp.unlink()


def pin_from_deployment(data: DataLayout, device_dir: Path) -> DevicePins:
    """Pin the running local deployment's witness keys (``/info``) and operator key
    (``operator.json``) into ``device_dir`` (first use). Raises :class:`NoTrustAnchor`
    if no deployment runs on ``data`` or it has no operator key."""
    state = read_state(data)
    url = (state or {}).get("witness_url")
    namespace = (state or {}).get("namespace")
    if not url or not namespace:
        raise NoTrustAnchor(
            f"this device ({device_dir}) has no pinned witness and operator keys, and no"
            f" deployment runs on {data.root} to pin them from: start `hsmvault up`, or"
            f" copy a trusted {PINS_FILE} into the device directory"
        )
    operator = read_operator_public_key(data.root)
    if operator is None:
        raise NoTrustAnchor(f"{data.root} has no operator key yet (run `hsmvault up`)")
    with WitnessClient(str(url)) as client:
        info = client.info()
    pins = DevicePins(
        namespace=str(namespace),
        witness_name=info.name,
        witness_keys=tuple(PinnedWitnessKey(k.public_key, k.not_before) for k in info.keys),
        log_key=info.log_key,
        operator_public_keys=(operator[0],),
        witness_url=str(url),
        pinned_at=int(time.time()),
        source=f"the local deployment on {data.root}",
    )
    save_pins(device_dir, pins)
    return pins


class DeviceTrust:
    """A :class:`~hsmvault.client.fleet_trust.FleetTrust` for the CLI's device: on the
    first session it loads the device's pins (or pins from the local deployment,
    calling ``announce`` with a sentence saying so), then checks every session with a
    :class:`BundleFleetTrust` over the device's ``trust-store.json``."""

    def __init__(
        self,
        device_dir: Path,
        data: DataLayout,
        announce: Callable[[str], None] = lambda _text: None,
    ) -> None:
        self._device_dir = device_dir
        self._data = data
        self._announce = announce
        self._trust: BundleFleetTrust | None = None
        self._pins: DevicePins | None = None
        self.pinned_now = False

    @property
    def pins(self) -> DevicePins | None:
        """The pins in use (``None`` before the first session), else on disk."""
        if self._pins is None:
            self._pins = load_pins(self._device_dir)
        return self._pins

    def describe(self) -> str:
        pins = self.pins
        if pins is None:
            return "nothing pinned yet (pinned from the local deployment at first use)"
        return (
            f"validation bundles, witness {pins.witness_name!r} and operator keys pinned in"
            f" {self._device_dir / PINS_FILE} (pinned at first use from {pins.source})"
        )

    def _witness_url(self) -> str:
        state = read_state(self._data)
        current = (state or {}).get("witness_url")
        pins = self._pins
        return str(current) if current else (pins.witness_url if pins else "")

    def _consistency(self, first: int, second: int) -> Sequence[bytes]:
        url = self._witness_url()
        if not url:
            raise VaultError("no witness to fetch a consistency proof from")
        with WitnessClient(url) as client:
            return client.consistency_proof(first, second).proof

    def _resolve(self) -> BundleFleetTrust:
        if self._trust is not None:
            return self._trust
        pins = load_pins(self._device_dir)
        if pins is None:
            pins = pin_from_deployment(self._data, self._device_dir)
            self.pinned_now = True
            self._announce(
                f"pinned at first use: witness {pins.witness_name!r} ({len(pins.witness_keys)}"
                f" signing key(s) and its log key) and the operator key, from {pins.source},"
                f" into {self._device_dir / PINS_FILE}; they are never refetched"
            )
        self._pins = pins
        self._device_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        verifier = BundleVerifier(
            pins.policy(),
            FileTrustStore(self._device_dir / TRUST_STORE_FILE),
            consistency_fetcher=self._consistency,
        )
        self._trust = BundleFleetTrust(verifier)
        return self._trust

    def prepare(self) -> None:
        """Load or make the pins now, before anything is sent to the fleet (a login's
        first message already counts a guess). Raises :class:`NoTrustAnchor`."""
        self._resolve()

    def session_keys(
        self, fleet_id: bytes, request: bytes, bundle: bytes, fleet_signature: bytes
    ) -> FleetPublicKeys:
        """See ``FleetTrust.session_keys`` (ADR 0010's checks, in order)."""
        return self._resolve().session_keys(fleet_id, request, bundle, fleet_signature)
