"""The software backend (embedded default): keys persisted through the NVRAM, identity
bound to it. (The shared sealing and signing attacks are in test_sealing.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from hsmvault.errors import ProtocolStateError
from hsmvault.hsm.custody.base import CustodyError, bind_identity
from hsmvault.hsm.custody.software import SoftwareCustody
from hsmvault.hsm.nvram import DirectoryNvram, MemoryNvram, SoftwareKeyMaterial

PURPOSE = b"vault-state"


def test_keys_persist_through_directory_nvram(tmp_path: Path) -> None:
    directory = tmp_path / "node-0-nvram"
    with DirectoryNvram(directory) as nv, SoftwareCustody.open(nv, create=True) as first:
        identity = first.identity
        sealed = first.seal(PURPOSE, b"state", b"ad")
        assert nv.identity() == identity
    with DirectoryNvram(directory) as nv, SoftwareCustody.open(nv) as second:
        assert second.identity == identity
        assert second.unseal(PURPOSE, sealed, b"ad") == b"state"


def test_unprovisioned_nvram_refused_without_create() -> None:
    nv = MemoryNvram()
    with pytest.raises(CustodyError, match="not provisioned"):
        SoftwareCustody.open(nv)
    assert nv.software_key_material() is None


def test_nvram_of_another_node_refused() -> None:
    nv = MemoryNvram()
    with SoftwareCustody.open(MemoryNvram(), create=True) as other:
        nv.set_identity(other.identity)
    with pytest.raises(CustodyError, match="identity"):
        SoftwareCustody.open(nv, create=True)


def test_bind_identity_records_then_checks() -> None:
    nv = MemoryNvram()
    with SoftwareCustody(SoftwareKeyMaterial.generate()) as custody:
        bind_identity(custody, nv)
        assert nv.identity() == custody.identity
        bind_identity(custody, nv)
        with (
            SoftwareCustody(SoftwareKeyMaterial.generate()) as stranger,
            pytest.raises(CustodyError),
        ):
            bind_identity(stranger, nv)


def test_closed_custody_refuses_every_operation() -> None:
    custody = SoftwareCustody.open(MemoryNvram(), create=True)
    sealed = custody.seal(PURPOSE, b"x")
    custody.close()
    with pytest.raises(ProtocolStateError):
        custody.unseal(PURPOSE, sealed)
    with pytest.raises(ProtocolStateError):
        custody.seal(PURPOSE, b"x")
    with pytest.raises(ProtocolStateError):
        custody.sign(b"raft-vote", b"m")


def test_key_material_not_in_repr() -> None:
    keys = SoftwareKeyMaterial(b"\x33" * 32, b"\x44" * 32)
    nv = MemoryNvram()
    nv.set_software_key_material(keys)
    with SoftwareCustody.open(nv) as custody:
        text = repr(custody) + repr(nv.state)
    assert "3333" not in text
    assert "4444" not in text
