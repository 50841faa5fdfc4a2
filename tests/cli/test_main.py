"""``hsmvault`` command line: parsing, --help everywhere, --json shapes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jwt
import pytest

from hsmvault.cli.dev_tokens import AUDIENCE, DEV_ISSUER, DevTokenIssuer
from hsmvault.cli.local_deployment import DataLayout, collect_status
from hsmvault.cli.main import build_parser, main, parse_node
from hsmvault.cli.output import EXIT_LOCKED_OUT, EXIT_UNAVAILABLE, EXIT_WRONG_SECRET, Output
from hsmvault.errors import InvalidLogin, LockedOut, Unavailable


def _all_command_paths(parser: argparse.ArgumentParser, prefix: list[str]) -> list[list[str]]:
    paths = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths += _all_command_paths(sub, [*prefix, name])
    return paths


def test_help_works_for_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    paths = _all_command_paths(build_parser(), [])
    assert ["backup", "create"] in paths
    assert ["node", "stop"] in paths
    assert ["secret", "recover"] in paths
    assert ["audit", "log"] in paths
    assert ["fleet", "publish-keys"] in paths
    assert ["witness", "serve"] in paths
    assert len(paths) >= 20
    for path in paths:
        with pytest.raises(SystemExit) as exc:
            main([*path, "--help"])
        assert exc.value.code == 0, path
        assert "usage: hsmvault" in capsys.readouterr().out


def test_data_commands_accept_json_after_their_name() -> None:
    parser = build_parser()
    for argv in (
        ["status", "--json"],
        ["up", "--json"],
        ["backup", "list", "--json"],
        ["backup", "create", "x", "--json", "--id", "a"],
        ["node", "stop", "2", "--json"],
        ["secret", "status", "--json"],
        ["token", "--json"],
        ["config", "--json"],
        ["audit", "--json"],
        ["audit", "log", "--json"],
        ["fleet", "publish-keys", "--json"],
    ):
        assert parser.parse_args(argv).json is True, argv


def test_data_dir_is_accepted_before_or_after_the_command(tmp_path: Path) -> None:
    parser = build_parser()
    assert parser.parse_args(["--data-dir", str(tmp_path), "status"]).data_dir == tmp_path
    assert parser.parse_args(["status", "--data-dir", str(tmp_path)]).data_dir == tmp_path


def test_secret_kinds_are_mutually_exclusive_and_required() -> None:
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["secret", "set"])
    with pytest.raises(SystemExit):
        parser.parse_args(["secret", "set", "--pin", "--password"])
    with pytest.raises(SystemExit):
        parser.parse_args(["secret", "change", "--64-digit-key"])
    assert parser.parse_args(["secret", "recover", "--64-digit-key"]).digit_key is True


@pytest.mark.parametrize(("text", "index"), [("2", 2), ("node-4", 4), ("0", 0)])
def test_node_names(text: str, index: int) -> None:
    assert parse_node(text, 5) == index


@pytest.mark.parametrize("text", ["node-", "two", "-1", "5", "node-x"])
def test_bad_node_names(text: str) -> None:
    with pytest.raises(ValueError, match="node"):
        parse_node(text, 5)


def test_config_json_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--json", "--data-dir", str(tmp_path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["data_dir"] == str(tmp_path)
    assert doc["nodes"] == 5
    assert doc["regions"] == ["eu-west", "us-east", "ap-south"]


def test_config_toml_round_trips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--toml", "--data-dir", str(tmp_path)]) == 0
    (tmp_path / "hsmvault.toml").write_text(capsys.readouterr().out)
    assert main(["config", "--json", "--data-dir", str(tmp_path)]) == 0


def test_bad_config_exits_2_with_json_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "hsmvault.toml").write_text("[fleet]\nnodes = 2\n")
    assert main(["status", "--json", "--data-dir", str(tmp_path)]) == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["error"] == "config_error"
    assert "odd" in doc["detail"]


def test_status_without_a_fleet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--json", "--data-dir", str(tmp_path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == collect_status(DataLayout(tmp_path))
    assert doc["running"] is False
    assert doc["formed"] is False


def test_node_stop_without_a_deployment_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["node", "stop", "1", "--json", "--data-dir", str(tmp_path)]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["error"] == "deployment_error"
    assert "hsmvault up" in doc["detail"]


def test_token_needs_the_dev_issuer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "--json", "--data-dir", str(tmp_path)]) == 1
    assert "hsmvault up" in json.loads(capsys.readouterr().out)["detail"]


def test_token_json_shape_and_claims(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    issuer = DevTokenIssuer.load_or_create(tmp_path)
    assert (tmp_path / "dev-issuer" / "DEV-ONLY-issuer-key.pem").stat().st_mode & 0o077 == 0
    assert main(["token", "--json", "--user", "bob", "--data-dir", str(tmp_path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {"token", "user", "lifetime_s", "issuer"}
    claims = jwt.decode(doc["token"], issuer.public_key, algorithms=["EdDSA"], audience=AUDIENCE)
    assert claims["sub"] == "bob"
    assert claims["iss"] == DEV_ISSUER
    assert claims["exp"] - claims["iat"] == 300
    # the same key next time: tokens survive a restart of the deployment
    assert DevTokenIssuer.load_or_create(tmp_path).public_key_pem() == issuer.public_key_pem()


@pytest.mark.parametrize(
    ("exc", "code", "status"),
    [
        (InvalidLogin("wrong"), "invalid_login", EXIT_WRONG_SECRET),
        (LockedOut("gone"), "locked_out", EXIT_LOCKED_OUT),
        (Unavailable("later"), "unavailable", EXIT_UNAVAILABLE),
    ],
)
def test_json_errors_and_exit_statuses(
    exc: Exception, code: str, status: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert Output(json_mode=True).error(exc) == status
    doc = json.loads(capsys.readouterr().out)
    assert doc["error"] == code


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    assert "backup" in capsys.readouterr().out
