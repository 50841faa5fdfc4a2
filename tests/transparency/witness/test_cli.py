"""The witness as an outside party runs it: its own process and data directory, driven by
``python -m hsmvault.transparency.witness``. Software keys and a SoftHSM2 token (keys
generated in the token, used by the serving process only)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hsmvault.errors import Unavailable
from hsmvault.transparency import merkle
from hsmvault.transparency.operator_messages import countersignature_message, submission_message
from hsmvault.transparency.signers import SoftwareEd25519Signer
from hsmvault.transparency.witness import WitnessProcess
from hsmvault.transparency.witness_client import WitnessClient, verify_checkpoint

from .conftest import NS, artifact


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    done = subprocess.run(
        [sys.executable, "-m", "hsmvault.transparency.witness", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done


def _json(done: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(done.stdout)


def _witness_epochs(client: WitnessClient, operator: SoftwareEd25519Signer, epochs: range) -> None:
    for epoch in epochs:
        data = artifact(NS, epoch)
        digest = hashlib.sha256(data).digest()
        entry = client.submit(NS, epoch, data, operator.sign(submission_message(NS, epoch, digest)))
        client.put_countersignature(
            NS, epoch, operator.sign(countersignature_message(entry.signature))
        )


def test_software_witness_lifecycle(tmp_path: Path) -> None:
    data = tmp_path / "witness"
    info = _json(_cli("init", "--data-dir", str(data), "--name", "example.org/w"))
    assert info["name"] == "example.org/w"
    assert info["key_backend"] == "software"
    assert (data / "admin-token").stat().st_mode & 0o777 == 0o600
    assert _json(_cli("info", "--data-dir", str(data))) == info
    again = _cli("init", "--data-dir", str(data), check=False)
    assert again.returncode == 1
    assert "not empty" in again.stderr
    operator = SoftwareEd25519Signer.generate()
    with WitnessProcess(data) as process, WitnessClient(process.url) as client:
        served = client.info()
        assert served.log_key.to_vkey() == info["log_key"]
        assert [k.public_key.hex() for k in served.keys] == [k["public_key"] for k in info["keys"]]
        registered = _json(
            _cli(
                "register-namespace",
                "--data-dir",
                str(data),
                "--url",
                process.url,
                "--namespace",
                NS,
                "--root-epoch",
                "1",
                "--operator-key",
                operator.public_key().hex(),
            )
        )
        assert registered["name"] == NS
        assert registered["last_verified_epoch"] is None
        _witness_epochs(client, operator, range(1, 3))
        # The directory belongs to the running process.
        busy = _cli("add-key", "--data-dir", str(data), "--not-before", str(2**62), check=False)
        assert busy.returncode == 1
        assert "another witness process" in busy.stderr
    # Offline administration while it is stopped.
    offline = _json(
        _cli(
            "register-namespace",
            "--data-dir",
            str(data),
            "--namespace",
            "second",
            "--root-epoch",
            "0",
            "--operator-key",
            operator.public_key().hex(),
        )
    )
    assert offline["root_epoch"] == 0
    new_key = _json(_cli("add-key", "--data-dir", str(data), "--not-before", str(2**62)))
    renamed = _cli("serve", "--data-dir", str(data), "--name", "other", "--port", "0", check=False)
    assert renamed.returncode == 1
    assert "--name differs" in renamed.stderr
    with WitnessProcess(data) as process, WitnessClient(process.url) as client:
        assert [k.not_before for k in client.info().keys][-1] == new_key["not_before"] == 2**62
        assert client.last_verified_epoch(NS) == 2
        assert client.namespace("second").root_epoch == 0


def test_interrupted_append_stops_the_start_until_repaired(tmp_path: Path) -> None:
    data = tmp_path / "witness"
    _cli("init", "--data-dir", str(data))
    with (data / "log/records.jsonl").open("ab") as f:
        f.write(b'{"body":')
    refused = _cli("serve", "--data-dir", str(data), "--port", "0", check=False)
    assert refused.returncode == 1
    assert "interrupted append" in refused.stderr
    assert "repair" in refused.stderr
    assert _json(_cli("repair", "--data-dir", str(data))) == {"dropped_bytes": 8}
    with WitnessProcess(data) as process, WitnessClient(process.url) as client:
        assert client.namespaces() == ()


def test_softhsm_witness_in_its_own_process(tmp_path: Path) -> None:
    """``serve --key softhsm`` on an empty directory: a SoftHSM2 token is created inside
    it, both keys are generated in the token, and the witness survives a restart."""
    data = tmp_path / "witness"
    operator = SoftwareEd25519Signer.generate()
    args = ("--key", "softhsm", "--name", "hsm.example/w")
    with WitnessProcess(data, extra_args=args) as process, WitnessClient(process.url) as client:
        info = client.info()
        token = (data / "admin-token").read_text().strip()
        client.register_namespace(token, NS, 1, operator.public_key())
        _witness_epochs(client, operator, range(1, 4))
        first = verify_checkpoint(client.checkpoint(), info.log_key)
        assert first.tree_size == 3
    settings = json.loads((data / "witness.json").read_text())
    keys = [settings["log_key"]["key"], settings["signing_keys"][0]["key"]]
    assert [(k["backend"], k["token_label"]) for k in keys] == [("pkcs11", "hsmvault-witness")] * 2
    assert not list((data / "keys").iterdir())  # no seed anywhere on disk
    assert (data / "softhsm" / "user-pin").stat().st_mode & 0o777 == 0o600
    assert _json(_cli("info", "--data-dir", str(data)))["key_backend"] == "softhsm"
    with WitnessProcess(data) as process, WitnessClient(process.url) as client:
        assert client.info() == info
        _witness_epochs(client, operator, range(4, 5))
        second = verify_checkpoint(client.checkpoint(), info.log_key)
        proof = client.consistency_proof(first.tree_size, second.tree_size)
        merkle.verify_consistency(3, 4, proof.proof, first.root_hash, second.root_hash)
        for epoch in range(1, 5):
            entry = client.audit(NS, epoch)
            inclusion = client.inclusion_proof(entry.leaf_index, 4)
            merkle.verify_inclusion(
                entry.leaf_index, 4, entry.leaf_hash(), inclusion.proof, second.root_hash
            )
    # Swapping the PIN file for a wrong PIN stops the start: the keys are in the token.
    (data / "softhsm" / "user-pin").write_text("0000-wrong\n")
    with pytest.raises(Unavailable, match="did not start"):
        WitnessProcess(data, timeout=60)
