"""The witness: an independent service that signs each fleet-key artifact digest once,
in epoch order, and logs every signature in an append-only Merkle log (ADR 0010).

Run as an outside party would run it — its own process and data directory::

    python -m hsmvault.transparency.witness init  --data-dir D [--name N] [--key software|softhsm]
    python -m hsmvault.transparency.witness serve --data-dir D --port P

or in-process (tests, ``hsmvault up``)::

    init_data_dir(D, name=..., backend="software", now_ms=...)
    with WitnessServer(WitnessConfig(D)) as server:
        ...server.url...

Modules: :mod:`.core` (rules, re-verification on start), :mod:`.store` (append-only
records), :mod:`.datadir` (settings, keys, admin token, lock), :mod:`.app` (HTTP API),
:mod:`.server` (running it), :mod:`.cli` (command line). Store and checkpoint formats:
``docs/formats/witness-log.md``.
"""

from __future__ import annotations

from .app import create_app
from .core import MAX_ARTIFACT_LEN, Witness, default_clock
from .datadir import (
    Pkcs11Backend,
    add_signing_key,
    init_data_dir,
    load_settings,
    read_admin_token,
)
from .errors import WitnessRefusal, WitnessStateError
from .model import AuditEntry, NamespaceState, WitnessKey, check_namespace, key_id
from .server import WitnessConfig, WitnessProcess, WitnessServer, run_witness

__all__ = [
    "MAX_ARTIFACT_LEN",
    "AuditEntry",
    "NamespaceState",
    "Pkcs11Backend",
    "Witness",
    "WitnessConfig",
    "WitnessKey",
    "WitnessProcess",
    "WitnessRefusal",
    "WitnessServer",
    "WitnessStateError",
    "add_signing_key",
    "check_namespace",
    "create_app",
    "default_clock",
    "init_data_dir",
    "key_id",
    "load_settings",
    "read_admin_token",
    "run_witness",
]
