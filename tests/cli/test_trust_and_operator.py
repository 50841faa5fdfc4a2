"""The CLI's device pins (``trust.json``), the local operator key (``operator/``), and the
new command groups (``fleet``, ``audit``, ``witness``) — without a running fleet."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from hsmvault.cli.config import ConfigError, load_config
from hsmvault.cli.device_trust import (
    DevicePins,
    DeviceTrust,
    NoTrustAnchor,
    load_pins,
    pin_from_deployment,
    save_pins,
)
from hsmvault.cli.local_deployment import DataLayout
from hsmvault.cli.main import build_parser, main
from hsmvault.cli.operator_key import (
    OperatorKeyError,
    open_operator_key,
    read_operator_public_key,
)
from hsmvault.client.bundle_verifier import PinnedWitnessKey
from hsmvault.errors import DecodeError, InvalidParameter
from hsmvault.transparency.signed_note import Verifier
from hsmvault.transparency.signers import SoftwareEd25519Signer


def _pins(namespace: str = "hsmvault/local") -> DevicePins:
    witness = SoftwareEd25519Signer.generate().public_key()
    log = SoftwareEd25519Signer.generate().public_key()
    return DevicePins(
        namespace=namespace,
        witness_name="localhost/w",
        witness_keys=(PinnedWitnessKey(witness, 5),),
        log_key=Verifier.from_public_key("localhost/w", log),
        operator_public_keys=(SoftwareEd25519Signer.generate().public_key(),),
        witness_url="http://127.0.0.1:1",
        pinned_at=int(time.time()),
        source="a test",
    )


def test_pins_round_trip_and_are_never_replaced(tmp_path: Path) -> None:
    pins = _pins()
    assert load_pins(tmp_path) is None
    save_pins(tmp_path, pins)
    assert load_pins(tmp_path) == pins
    with pytest.raises(InvalidParameter, match="never replaced"):
        save_pins(tmp_path, _pins())
    assert load_pins(tmp_path) == pins
    assert [p.name for p in tmp_path.iterdir()] == ["trust.json"]  # no temporary left
    policy = pins.policy()
    assert policy.require_inclusion is True
    assert policy.log_key == pins.log_key
    info = pins.witness_info()
    assert [k.public_key for k in info.keys] == [pins.witness_keys[0].public_key]


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d.update(extra=1),
        lambda d: d.update(version=2),
        lambda d: d.update(operator_public_keys=["AB" * 32]),
        lambda d: d.update(operator_public_keys=[]),
        lambda d: d.update(witness_keys=[]),
        lambda d: d.update(witness_keys=[{"public_key": "00" * 32}]),
        lambda d: d.update(witness_name="another/witness"),
        lambda d: d.update(namespace="has space"),
        lambda d: d.update(pinned_at=-1),
        lambda d: d.update(log_key="not a key"),
    ],
)
def test_malformed_pins_are_refused_not_replaced(tmp_path: Path, edit: object) -> None:
    doc = _pins().to_json()
    assert callable(edit)
    edit(doc)
    (tmp_path / "trust.json").write_text(json.dumps(doc))
    with pytest.raises(DecodeError):
        load_pins(tmp_path)


def test_without_pins_or_a_deployment_nothing_is_trusted(tmp_path: Path) -> None:
    data = DataLayout(tmp_path / "data")
    with pytest.raises(NoTrustAnchor, match="no deployment runs"):
        pin_from_deployment(data, tmp_path / "device")
    trust = DeviceTrust(tmp_path / "device", data)
    assert "nothing pinned yet" in trust.describe()
    with pytest.raises(NoTrustAnchor):
        trust.prepare()
    with pytest.raises(NoTrustAnchor):
        trust.session_keys(bytes(32), b"request", b"", bytes(64))
    assert not (tmp_path / "device" / "trust.json").exists()


def test_software_operator_key_is_made_once_and_kept(tmp_path: Path) -> None:
    assert read_operator_public_key(tmp_path) is None
    first = open_operator_key(tmp_path, "software")
    seed = tmp_path / "operator" / "operator.seed"
    assert seed.stat().st_mode & 0o777 == 0o600
    assert read_operator_public_key(tmp_path) == (first.public_key, "software")
    again = open_operator_key(tmp_path, "software")
    assert again.public_key == first.public_key
    with pytest.raises(OperatorKeyError, match="custody 'software'"):
        open_operator_key(tmp_path, "softhsm")
    # operator.json names another key than the seed holds: refused
    meta = tmp_path / "operator" / "operator.json"
    doc = json.loads(meta.read_text())
    doc["public_key"] = SoftwareEd25519Signer.generate().public_key().hex()
    meta.write_text(json.dumps(doc))
    with pytest.raises(OperatorKeyError, match="not the one recorded"):
        open_operator_key(tmp_path, "software")
    seed.unlink()
    with pytest.raises(OperatorKeyError, match="missing"):
        open_operator_key(tmp_path, "software")
    meta.write_text("{}")
    with pytest.raises(DecodeError):
        read_operator_public_key(tmp_path)


def test_operator_custody_setting(tmp_path: Path) -> None:
    env = {"HSMVAULT_HOME": str(tmp_path), "HSMVAULT_OPERATOR_CUSTODY": "softhsm"}
    assert load_config(env=env).operator_custody == "softhsm"
    (tmp_path / "hsmvault.toml").write_text('[operator]\ncustody = "tpm"\n')
    with pytest.raises(ConfigError, match=r"operator\.custody"):
        load_config(env={"HSMVAULT_HOME": str(tmp_path)})


def test_new_command_groups_parse() -> None:
    parser = build_parser()
    assert callable(parser.parse_args(["audit"]).handler)  # log audit (+ issue 6 evidence)
    assert parser.parse_args(["audit", "log"]).handler.__name__ == "_cmd_audit_log"
    args = parser.parse_args(
        ["audit", "log", "--json", "--witness", "http://x", "--witness-key", "ab@5"]
    )
    assert args.json is True
    assert args.witness == "http://x"
    assert args.witness_key == ["ab@5"]
    assert parser.parse_args(["audit", "--namespace", "a/b"]).namespace == "a/b"
    publish = parser.parse_args(["fleet", "publish-keys", "--json"])
    assert publish.handler.__name__ == "_cmd_fleet_publish_keys"
    with pytest.raises(SystemExit):
        parser.parse_args(["fleet"])
    assert parser.parse_args(["witness", "info", "--data-dir", "/x"]).witness_command == "info"


def test_fleet_publish_keys_needs_a_running_deployment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["fleet", "publish-keys", "--json", "--data-dir", str(tmp_path)]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["error"] == "deployment_error"
    assert "hsmvault up" in doc["detail"]


def test_witness_commands_run_through_hsmvault(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wdir = tmp_path / "w"
    assert main(["witness", "init", "--data-dir", str(wdir), "--name", "w.test/one"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert made["name"] == "w.test/one"
    assert main(["witness", "info", "--data-dir", str(wdir)]) == 0
    assert json.loads(capsys.readouterr().out)["keys"] == made["keys"]
    # a second init is refused with exit status 1 and a message
    assert main(["witness", "init", "--data-dir", str(wdir)]) == 1
    assert "not empty" in capsys.readouterr().err
