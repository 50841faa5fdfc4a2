"""Fixtures for the key-custody and NVRAM tests: SoftHSM2 tokens and custodies.

SoftHSM2 scans its tokens once, when a process initializes the PKCS#11 module, so each
test process (each xdist worker) makes a pool of fresh tokens *before* anything loads the
module, and tests take unused tokens from it. SoftHSM2 missing is a test failure, never a
skip: ``make test`` installs it.

The token store lives in a directory whose name contains ``nvram``: it is the HSMs'
inside, not host-side state.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pkcs11
import pytest
from pkcs11.types import Session

from hsmvault.hsm.custody.base import KeyCustody
from hsmvault.hsm.custody.pkcs11 import Pkcs11Custody
from hsmvault.hsm.custody.software import SoftwareCustody
from hsmvault.hsm.nvram import MemoryNvram, SignatureAlgorithm
from hsmvault.hsm.softhsm import SoftHsmToken, create_softhsm_token

#: Tokens per test process: the session-wide custodies take 4, every other use one each.
POOL_SIZE = 40

BACKENDS = ("software", "pkcs11-ed25519", "pkcs11-p256")


@dataclass
class TokenPool:
    """Fresh, never-opened SoftHSM2 tokens, handed out once each."""

    tokens: list[SoftHsmToken]
    taken: int = field(default=0)

    def take(self) -> SoftHsmToken:
        if self.taken >= len(self.tokens):
            raise RuntimeError(f"SoftHSM2 token pool exhausted: raise POOL_SIZE ({POOL_SIZE})")
        token = self.tokens[self.taken]
        self.taken += 1
        return token


@pytest.fixture(scope="session")
def token_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenPool]:
    directory = tmp_path_factory.mktemp("softhsm-nvram")
    tokens = [create_softhsm_token(directory, f"node-{i:02d}") for i in range(POOL_SIZE)]
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(tokens[0].conf_path)
    try:
        yield TokenPool(tokens)
    finally:
        if previous is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = previous


@pytest.fixture
def token(token_pool: TokenPool) -> SoftHsmToken:
    """A fresh SoftHSM2 token with no keys in it."""
    return token_pool.take()


@contextmanager
def raw_session(token: SoftHsmToken) -> Iterator[Session]:
    """A logged-in read/write PKCS#11 session on ``token``, bypassing our code (for
    attacking the token directly). The token must not be open through a custody."""
    lib = pkcs11.lib(token.module_path)
    with lib.get_token(token_label=token.token_label).open(
        rw=True, user_pin=token.user_pin
    ) as session:
        yield session


def make_custody(backend: str, token_pool: TokenPool) -> KeyCustody:
    if backend == "software":
        return SoftwareCustody.open(MemoryNvram(), create=True)
    algorithm = {
        "pkcs11-ed25519": SignatureAlgorithm.ED25519,
        "pkcs11-p256": SignatureAlgorithm.ECDSA_P256_SHA256,
    }[backend]
    return Pkcs11Custody.open(token_pool.take().pkcs11_config(algorithm), create=True)


@pytest.fixture(scope="session")
def custodies(token_pool: TokenPool) -> Iterator[dict[str, tuple[KeyCustody, KeyCustody]]]:
    """Per backend, two nodes' custodies (``node``, ``other``), open for the session."""
    made: dict[str, tuple[KeyCustody, KeyCustody]] = {}
    for backend in BACKENDS:
        made[backend] = (make_custody(backend, token_pool), make_custody(backend, token_pool))
    yield made
    for node, other in made.values():
        node.close()
        other.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture
def node(custodies: dict[str, tuple[KeyCustody, KeyCustody]], backend: str) -> KeyCustody:
    """This node's custody, for each backend in turn."""
    return custodies[backend][0]


@pytest.fixture
def other_node(custodies: dict[str, tuple[KeyCustody, KeyCustody]], backend: str) -> KeyCustody:
    """Another node's custody, same backend."""
    return custodies[backend][1]
