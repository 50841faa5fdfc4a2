"""``hsmvault`` configuration: defaults, TOML file, HSMVAULT_* overrides, refusals."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hsmvault.cli.config import (
    SETTINGS,
    ConfigError,
    DeploymentConfig,
    default_data_dir,
    load_config,
    render_toml,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def test_defaults_are_a_complete_local_deployment(tmp_path: Path) -> None:
    config = load_config(env={"HSMVAULT_HOME": str(tmp_path)})
    assert config.data_dir == tmp_path
    assert config.nodes == 5
    assert len(set(config.regions)) == 3
    assert (config.gateway_host, config.gateway_port) == ("127.0.0.1", 8420)
    assert config.custody == "software"
    assert config.guess_limit == 10
    assert config.effective_gateway_url == "http://127.0.0.1:8420"


def test_default_data_dir_follows_home_then_xdg() -> None:
    assert default_data_dir({"HSMVAULT_HOME": "/x/y"}) == Path("/x/y")
    assert default_data_dir({"XDG_DATA_HOME": "/d"}) == Path("/d/hsmvault")
    assert default_data_dir({}).parts[-3:] == (".local", "share", "hsmvault")


def test_toml_in_the_data_dir_is_read(tmp_path: Path) -> None:
    (tmp_path / "hsmvault.toml").write_text(
        '[fleet]\nnodes = 3\nregions = ["a", "b"]\ncustody = "softhsm"\n'
        '[gateway]\nport = 9420\n[client]\nuser = "alice"\nguess_limit = 5\n'
    )
    config = load_config(env={"HSMVAULT_HOME": str(tmp_path)})
    assert (config.nodes, config.regions, config.custody) == (3, ("a", "b"), "softhsm")
    assert config.gateway_port == 9420
    assert (config.user, config.guess_limit) == ("alice", 5)


def test_environment_overrides_the_file_and_flags_override_both(tmp_path: Path) -> None:
    (tmp_path / "hsmvault.toml").write_text("[gateway]\nport = 9420\n[fleet]\nnodes = 3\n")
    env = {
        "HSMVAULT_HOME": str(tmp_path),
        "HSMVAULT_GATEWAY_PORT": "9520",
        "HSMVAULT_REGIONS": "x, y ,z",
        "HSMVAULT_RESTART_CRASHED": "no",
    }
    config = load_config(env=env, overrides={"nodes": 7})
    assert config.gateway_port == 9520
    assert config.regions == ("x", "y", "z")
    assert config.restart_crashed is False
    assert config.nodes == 7


def test_explicit_config_file_and_data_dir_flag(tmp_path: Path) -> None:
    cfg = tmp_path / "elsewhere.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "from-file"}"\n[witness]\nport = 9999\n')
    config = load_config(config_file=cfg, env={})
    assert config.data_dir == tmp_path / "from-file"
    assert config.witness_port == 9999
    flagged = load_config(config_file=cfg, data_dir=tmp_path / "flag", env={})
    assert flagged.data_dir == tmp_path / "flag"


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[fleet]\nnodse = 3\n", "unknown key"),
        ('[gateway]\nport = "80"\n', "expected int"),
        ("[fleet]\nnodes = 4\n", "odd"),
        ('[gateway]\nhost = "0.0.0.0"\n', "loopback"),
        ("[client]\nguess_limit = 0\n", "guess_limit"),
        ("[fleet]\nregions = []\n", "regions"),
        ('[fleet]\ncustody = "tpm"\n', "custody"),
        ("[client]\ntoken_lifetime_s = 3600\n", "token_lifetime_s"),
        ("nodes = [\n", "not valid TOML"),
        ("[nope]\nx = 1\n", "unknown key"),
    ],
)
def test_bad_configuration_is_refused_with_the_key_named(
    tmp_path: Path, toml: str, message: str
) -> None:
    (tmp_path / "hsmvault.toml").write_text(toml)
    with pytest.raises(ConfigError, match=message):
        load_config(env={"HSMVAULT_HOME": str(tmp_path)})


def test_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="HSMVAULT_NODES"):
        load_config(env={"HSMVAULT_HOME": str(tmp_path), "HSMVAULT_NODES": "five"})


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(config_file=tmp_path / "absent.toml", env={})


def test_rendered_toml_reads_back_to_the_same_config(tmp_path: Path) -> None:
    config = DeploymentConfig(data_dir=tmp_path, nodes=7, regions=("a",), user="bob")
    path = tmp_path / "out.toml"
    path.write_text(render_toml(config))
    assert load_config(config_file=path, env={}) == config


def test_every_setting_is_documented_in_operations_md() -> None:
    text = DOCS.read_text()
    for setting in SETTINGS:
        assert setting.env in text, setting.env
        key = f"`[{setting.section}] {setting.key}`" if setting.section else f"`{setting.key}`"
        assert key in text, key
    documented = set(re.findall(r"`(HSMVAULT_[A-Z_]+)`", text))
    known = {s.env for s in SETTINGS} | {"HSMVAULT_CONFIG", "HSMVAULT_TOKEN"}
    assert documented <= known, documented - known
