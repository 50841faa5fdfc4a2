"""The SoftHSM2 helper: it finds SoftHSM2 (whose absence fails these tests: ``make test``
installs it), makes tokens, and keeps PINs out of command lines, reprs and logs.

These tests only run ``softhsm2-util``; they never load the PKCS#11 module into this
process (that would freeze its token list, see conftest.py)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from hsmvault.errors import InvalidParameter
from hsmvault.hsm.custody.base import CustodyError
from hsmvault.hsm.softhsm import create_softhsm_token, find_softhsm_module, find_softhsm_util


def _labels(conf: Path) -> list[str]:
    shown = subprocess.run(
        [find_softhsm_util(), "--show-slots"],
        env={**os.environ, "SOFTHSM2_CONF": str(conf)},
        capture_output=True,
        text=True,
        check=True,
    )
    return [
        line.split(":", 1)[1].strip()
        for line in shown.stdout.splitlines()
        if line.strip().startswith("Label:") and line.split(":", 1)[1].strip()
    ]


def test_softhsm2_is_installed() -> None:
    assert shutil.which("softhsm2-util") is not None, "apt-get install softhsm2"
    assert os.path.isfile(find_softhsm_module())
    assert find_softhsm_module().endswith("libsofthsm2.so")


def test_module_path_can_be_overridden(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SOFTHSM2_MODULE", str(tmp_path / "missing.so"))
    with pytest.raises(CustodyError):
        find_softhsm_module()
    module = tmp_path / "libsofthsm2.so"
    module.write_bytes(b"")
    monkeypatch.setenv("SOFTHSM2_MODULE", str(module))
    assert find_softhsm_module() == str(module)


def test_missing_softhsm_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with pytest.raises(CustodyError, match="apt-get install softhsm2"):
        find_softhsm_util()


def test_creates_tokens_in_its_own_configuration(tmp_path: Path) -> None:
    directory = tmp_path / "hsm-nvram"
    first = create_softhsm_token(directory, "node-a")
    second = create_softhsm_token(directory, "node-b", user_pin="chosen-pin-1234")
    assert first.conf_path == second.conf_path == directory.resolve() / "softhsm2.conf"
    assert f"directories.tokendir = {directory.resolve() / 'tokens'}" in (
        first.conf_path.read_text()
    )
    assert second.user_pin == "chosen-pin-1234"
    assert len(first.user_pin) == 32
    assert first.environ() == {"SOFTHSM2_CONF": str(first.conf_path)}
    assert sorted(_labels(first.conf_path)) == ["node-a", "node-b"]


def test_duplicate_or_bad_label_refused(tmp_path: Path) -> None:
    create_softhsm_token(tmp_path / "hsm", "node-a")
    with pytest.raises(InvalidParameter, match="exists"):
        create_softhsm_token(tmp_path / "hsm", "node-a")
    for label in ("", "x" * 33, "has space", "-leading-dash"):
        with pytest.raises(InvalidParameter):
            create_softhsm_token(tmp_path / "hsm", label)
    with pytest.raises(InvalidParameter):
        create_softhsm_token(tmp_path / "hsm", "node-b", user_pin="123")


def test_pins_never_on_a_command_line_in_a_repr_or_a_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    argvs: list[list[str]] = []
    real_popen, real_run = subprocess.Popen, subprocess.run

    def popen(args: list[str], *rest: Any, **kwargs: Any) -> Any:
        argvs.append(list(args))
        return real_popen(args, *rest, **kwargs)

    def run(args: list[str], *rest: Any, **kwargs: Any) -> Any:
        argvs.append(list(args))
        return real_run(args, *rest, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", popen)
    monkeypatch.setattr(subprocess, "run", run)
    made = create_softhsm_token(tmp_path / "hsm", "node-a", user_pin="pin-that-must-hide")
    assert any("--init-token" in argv for argv in argvs)
    for argv in argvs:
        assert not any("pin-that-must-hide" in arg for arg in argv)
        assert "--pin" not in argv
        assert "--so-pin" not in argv
    assert "pin-that-must-hide" not in repr(made)
    assert "pin-that-must-hide" not in caplog.text
    assert "node-a" in caplog.text


def test_activate_sets_the_configuration_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SOFTHSM2_CONF", raising=False)
    made = create_softhsm_token(tmp_path / "a", "node-a")
    made.activate()
    assert os.environ["SOFTHSM2_CONF"] == str(made.conf_path)
    made.activate()  # same configuration: fine
    other = create_softhsm_token(tmp_path / "b", "node-b")
    with pytest.raises(CustodyError, match="another"):
        other.activate()
