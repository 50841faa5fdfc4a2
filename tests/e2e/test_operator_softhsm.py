"""``[operator] custody = "softhsm"``: the local deployment's operator key is generated
inside a SoftHSM2 token and counter-signs every witness signature from there.

``hsmvault up`` (3 nodes, to keep it light) runs in a subprocess with
``HSMVAULT_OPERATOR_CUSTODY=softhsm``; the published bundle's counter-signature is
checked independently of the client code, the CLI device verifies bundles under the
token's key, ``audit`` passes, a restart re-opens the same token key without publishing
again, and opening the key under another custody is refused.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from hsmvault.host.fleet_client import FleetClient
from hsmvault.host.publisher import read_installed_bundle
from hsmvault.transparency.bundle import ValidationBundle

from .harness import UpProcess, ok, serving

pytestmark = pytest.mark.timeout(300)

PIN = "731902"


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpProcess]:
    root = tmp_path_factory.mktemp("e2e-softhsm")
    yield from serving(
        UpProcess(
            [sys.executable, "-m", "hsmvault.cli.main"],
            root / "data",
            extra_env={"HSMVAULT_OPERATOR_CUSTODY": "softhsm", "HSMVAULT_NODES": "3"},
        )
    )


def test_the_operator_key_lives_in_a_softhsm2_token(up: UpProcess, tmp_path: Path) -> None:
    witness = up.ready["witness"]
    assert witness["operator_custody"] == "softhsm"
    assert witness["epoch"] == 1
    operator_dir = up.data_dir / "operator"
    assert not (operator_dir / "operator.seed").exists()
    assert (operator_dir / "softhsm" / "softhsm2.conf").is_file()
    assert (operator_dir / "softhsm" / "user-pin").stat().st_mode & 0o077 == 0
    meta = json.loads((operator_dir / "operator.json").read_text())
    assert meta["custody"] == "softhsm"
    assert meta["public_key"] == witness["operator_public_key"]

    # the bundle the fleet serves is counter-signed by that key (checked here directly)
    fleet = FleetClient.from_fleet_dir(up.data_dir / "fleet")
    bundle = ValidationBundle.from_bytes(read_installed_bundle(fleet))
    Ed25519PublicKey.from_public_bytes(bytes.fromhex(meta["public_key"])).verify(
        bundle.operator_signature, bundle.countersignature_message()
    )

    device = tmp_path / "phone"
    ok(up.secret("set", "--pin", stdin=PIN + "\n", device=device))
    ok(up.secret("recover", "--pin", stdin=PIN + "\n", device=tmp_path / "new-phone"))
    audit = ok(up.cli("audit", "log", "--json", device=device)).json()
    assert audit["operator_public_keys"] == [meta["public_key"]]
    published = ok(up.cli("fleet", "publish-keys", "--json")).json()
    assert published["epoch"] == 2  # signed by the token again


def test_restart_reopens_the_token_and_another_custody_is_refused(
    up: UpProcess, tmp_path: Path
) -> None:
    key = up.ready["witness"]["operator_public_key"]
    epoch = ok(up.cli("status", "--json")).json()["witness"]["epoch"]
    up.stop()
    wrong = UpProcess(
        list(up.hsmvault),
        up.data_dir,
        extra_env={"HSMVAULT_OPERATOR_CUSTODY": "software", "HSMVAULT_NODES": "3"},
    )
    with pytest.raises(AssertionError, match="custody 'softhsm'"):
        wrong.start()
    assert not (up.data_dir / "operator" / "operator.seed").exists()
    again = up.start()
    assert again["witness"]["operator_public_key"] == key
    assert again["witness"]["operator_custody"] == "softhsm"
    assert again["witness"]["epoch"] == epoch  # fresh: nothing re-published
    ok(up.secret("recover", "--pin", stdin=PIN + "\n", device=tmp_path / "third-phone"))
