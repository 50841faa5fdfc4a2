"""Fixtures for the gateway tests: a controllable clock, a dev token issuer, a stub
fleet, and the storage pairs every app test runs against (in-memory fakes, plus the
filesystem + SQLite adapters when they are present)."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from hsmvault.host.gateway import DevTokenIssuer, GatewayConfig, RateLimit, create_app
from hsmvault.host.storage.base import BlobStore, MetadataStore

from .fakes import MemoryBlobStore, MemoryMetadataStore, StubFleet

with warnings.catch_warnings():
    # Starlette suggests httpx2 for its TestClient; httpx is what we have.
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

__all__ = ["AppFactory", "FakeClock", "TestClient", "bearer", "client_for", "make_stores"]

ISSUER = "https://auth.test"


class FakeClock:
    """Seconds since the epoch that move only when told to."""

    def __init__(self, start: float | None = None) -> None:
        self.now = float(int(start if start is not None else time.time()))

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _have(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


STORE_KINDS = ["memory"] + (
    ["filesystem+sqlite"]
    if _have("hsmvault.host.storage.filesystem") and _have("hsmvault.host.storage.sqlite")
    else []
)


def make_stores(kind: str, tmp: Path) -> tuple[BlobStore, MetadataStore]:
    if kind == "memory":
        return MemoryBlobStore(), MemoryMetadataStore()
    filesystem = importlib.import_module("hsmvault.host.storage.filesystem")
    sqlite = importlib.import_module("hsmvault.host.storage.sqlite")
    blobs: BlobStore = filesystem.FilesystemBlobStore(tmp / "blobs")
    metadata: MetadataStore = sqlite.SqliteMetadataStore(tmp / "meta.sqlite")
    return blobs, metadata


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def issuer(clock: FakeClock) -> DevTokenIssuer:
    return DevTokenIssuer(issuer=ISSUER, clock=clock)


@pytest.fixture
def config(issuer: DevTokenIssuer) -> GatewayConfig:
    """Generous rate limits: tests of the limits set their own."""
    return GatewayConfig(
        issuer_public_keys=(issuer.public_key_pem(),),
        issuer=ISSUER,
        user_rate=RateLimit(1000.0, 10_000),
        address_rate=RateLimit(1000.0, 10_000),
    )


@pytest.fixture
def stub_fleet() -> StubFleet:
    return StubFleet()


@pytest.fixture(params=STORE_KINDS)
def stores(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[BlobStore, MetadataStore]]:
    blobs, metadata = make_stores(str(request.param), tmp_path)
    yield blobs, metadata
    metadata.close()


@pytest.fixture
def memory() -> tuple[MemoryBlobStore, MemoryMetadataStore]:
    return MemoryBlobStore(), MemoryMetadataStore()


AppFactory = Callable[..., FastAPI]


@pytest.fixture
def make_app(
    config: GatewayConfig,
    stub_fleet: StubFleet,
    memory: tuple[MemoryBlobStore, MemoryMetadataStore],
    clock: FakeClock,
) -> AppFactory:
    """``make_app(**config_overrides, fleets=..., blobs=..., metadata=...)``."""

    def factory(**overrides: Any) -> FastAPI:
        fleets = overrides.pop("fleets", {"default": stub_fleet})
        blobs = overrides.pop("blobs", memory[0])
        metadata = overrides.pop("metadata", memory[1])
        if set(fleets) != set(config.fleets):  # a routing table of the given names
            overrides.setdefault("fleets", {name: f"fleets/{name}" for name in fleets})
            overrides.setdefault("default_fleet", sorted(fleets)[0])
        cfg = dataclasses.replace(config, **overrides) if overrides else config
        return create_app(cfg, fleets=fleets, blobs=blobs, metadata=metadata, clock=clock)

    return factory


def client_for(app: FastAPI, address: str = "testclient") -> TestClient:
    return TestClient(app, client=(address, 50000))


@pytest.fixture
def client(make_app: AppFactory) -> TestClient:
    return client_for(make_app())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def auth(issuer: DevTokenIssuer) -> Callable[[str], dict[str, str]]:
    """``auth("alice")`` → headers with a fresh token for alice."""
    return lambda user: bearer(issuer.mint(user))
