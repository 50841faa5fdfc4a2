"""Fixtures for the witness tests: an initialised data directory (software keys), a
controllable millisecond clock, an operator key, and the witness served by a real
uvicorn server on 127.0.0.1 with a typed client and a raw httpx client."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from hsmvault.transparency.operator_messages import submission_message
from hsmvault.transparency.signers import SoftwareEd25519Signer
from hsmvault.transparency.witness import WitnessConfig, WitnessServer, init_data_dir
from hsmvault.transparency.witness_client import WitnessClient

T0 = 1_795_000_000_000  # ms
NAME = "witness.test/hsmvault"
NS = "hsmvault/local"


class FakeClock:
    """Milliseconds, moved by the test only."""

    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += ms


@dataclass
class WitnessDir:
    path: Path
    admin_token: str


def artifact(namespace: str, epoch: int, salt: str = "") -> bytes:
    """Opaque artifact bytes (the witness does not parse them)."""
    return f'{{"epoch":{epoch},"namespace":"{namespace}","salt":"{salt}"}}'.encode()


def submission_body(
    operator: SoftwareEd25519Signer, namespace: str, epoch: int, data: bytes
) -> dict[str, Any]:
    digest = hashlib.sha256(data).digest()
    return {
        "epoch": epoch,
        "digest": digest.hex(),
        "artifact": base64.b64encode(data).decode(),
        "submission_signature": base64.b64encode(
            operator.sign(submission_message(namespace, epoch, digest))
        ).decode(),
    }


def ns_path(namespace: str) -> str:
    return "/namespaces/" + namespace.replace("/", "%2F")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0 + 1_000)


@pytest.fixture
def witness_dir(tmp_path: Path) -> WitnessDir:
    path = tmp_path / "witness-data"
    token = init_data_dir(path, name=NAME, backend="software", now_ms=T0)
    return WitnessDir(path, token)


@pytest.fixture
def operator() -> SoftwareEd25519Signer:
    return SoftwareEd25519Signer.generate()


@pytest.fixture
def server(witness_dir: WitnessDir, clock: FakeClock) -> Iterator[WitnessServer]:
    with WitnessServer(WitnessConfig(witness_dir.path, clock=clock)) as running:
        yield running


@pytest.fixture
def client(server: WitnessServer) -> Iterator[WitnessClient]:
    with WitnessClient(server.url) as typed:
        yield typed


@pytest.fixture
def http(server: WitnessServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10.0) as raw:
        yield raw


@pytest.fixture
def registered(
    client: WitnessClient, witness_dir: WitnessDir, operator: SoftwareEd25519Signer
) -> str:
    """``NS`` registered with root epoch 1 and the operator key."""
    client.register_namespace(witness_dir.admin_token, NS, 1, operator.public_key())
    return NS
