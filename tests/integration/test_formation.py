"""Formation: layout on disk, what the host side holds, and what a node refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hsmvault.errors import DecodeError, InvalidParameter
from hsmvault.fleet.fleet_keys import FleetSecretKeys, unseal_fleet_keys
from hsmvault.fleet.formation import FleetLayout, FormationError, form_fleet
from hsmvault.fleet.membership import node_id_for
from hsmvault.hsm.custody.software import SoftwareCustody
from hsmvault.hsm.node_process import FLEET_KEYS_FILE
from hsmvault.hsm.nvram import DirectoryNvram
from hsmvault.wire.hsm_api import Outcome

from .conftest import LocalFleet, start_local_fleet
from .vault_client import WRAPPED_KEY, login, register

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("n", [1, 2, 4, 11])
def test_fleet_size_must_be_odd_and_3_to_9(tmp_path: Path, n: int) -> None:
    with pytest.raises(InvalidParameter):
        form_fleet(tmp_path, nodes=n)


@pytest.fixture(scope="module")
def formed(tmp_path_factory: pytest.TempPathFactory) -> FleetLayout:
    return form_fleet(tmp_path_factory.mktemp("formed"), nodes=3, regions=("eu-west", "us-east"))


def test_layout_keeps_nvram_apart_from_host_state(formed: FleetLayout) -> None:
    assert FleetLayout.load(formed.base_dir) == formed
    assert [n.region for n in formed.nodes] == ["eu-west", "us-east", "eu-west"]
    for node in formed.nodes:
        assert "nvram" in str(node.nvram_dir)
        assert "nvram" not in str(node.host_dir)
        assert (node.host_dir / FLEET_KEYS_FILE).exists()
        assert node.node_id == node_id_for(node.link_public_key)
    with pytest.raises(FormationError):
        form_fleet(formed.base_dir, nodes=3)


def test_host_side_holds_no_fleet_secret_in_the_clear(formed: FleetLayout) -> None:
    node = formed.nodes[0]
    with DirectoryNvram(node.nvram_dir) as nvram, SoftwareCustody.open(nvram) as custody:
        sealed = (node.host_dir / FLEET_KEYS_FILE).read_bytes()
        keys: FleetSecretKeys = unseal_fleet_keys(custody, sealed, formed.fleet_id)
    assert keys.public() == formed.public_keys
    public = (formed.base_dir / "fleet.json").read_bytes()
    host_bytes = b"".join(p.read_bytes() for p in node.host_dir.rglob("*") if p.is_file())
    for secret in (keys.ake_private_key, keys.oprf_seed, keys.enc_private_key):
        assert secret not in host_bytes
        assert secret not in public
        assert secret.hex().encode() not in host_bytes + public


def test_fleet_file_is_parsed_strictly(formed: FleetLayout, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    doc = json.loads((formed.base_dir / "fleet.json").read_text())
    doc["members"][1]["node_id"] = "00" * 32
    (copy / "fleet.json").write_text(json.dumps(doc))
    with pytest.raises(DecodeError):
        FleetLayout.load(copy)


def test_node_refuses_a_fleet_file_with_a_swapped_member_key(tmp_path: Path) -> None:
    fleet = start_local_fleet(tmp_path / "f", nodes=3)
    try:
        fleet.kill(2)
        fleet_file = fleet.layout.base_dir / "fleet.json"
        original = fleet_file.read_text()
        doc = json.loads(original)
        # The host swaps member 1's link key for one it controls (keeping the file valid).
        intruder = bytes(range(32))
        doc["members"][1]["link_public_key"] = intruder.hex()
        doc["members"][1]["node_id"] = node_id_for(intruder)
        fleet_file.write_text(json.dumps(doc))
        with pytest.raises(pytest.fail.Exception, match="did not start"):
            fleet.start(2)
        log = (fleet.layout.nodes[2].host_dir / "stdout.log").read_text()
        assert "pinned in NVRAM" in log
        fleet_file.write_text(original)
        fleet.start(2)
        fleet.leader()
    finally:
        fleet.stop_all()
        fleet.mesh.close()


def test_softhsm_fleet_serves_logins(tmp_path: Path) -> None:
    fleet = _start(tmp_path, custody="softhsm")
    try:
        assert fleet.layout.custody == "softhsm"
        for node in fleet.layout.nodes:
            assert (node.nvram_dir / "softhsm" / "softhsm2.conf").exists()
        assert register(fleet.client, b"token-user", b"pw") is Outcome.OK
        assert login(fleet.client, b"token-user", b"pw") == (Outcome.OK, WRAPPED_KEY)
    finally:
        fleet.stop_all()
        fleet.mesh.close()


def _start(tmp_path: Path, custody: str) -> LocalFleet:
    return start_local_fleet(tmp_path / "fleet", nodes=3, custody=custody)
