"""``hsmvault demo`` runs the real code path end to end and checks itself."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from hsmvault.cli.demo import DemoOptions, format_64_digit_key, run_demo
from hsmvault.cli.main import main
from hsmvault.crypto.backup_stream import BackupKey


def test_demo_succeeds_and_reports_each_check(tmp_path: Path) -> None:
    out = io.StringIO()
    code = run_demo(DemoOptions(size_mib=1, workdir=tmp_path), Console(file=out, width=200))
    text = out.getvalue()
    assert code == 0
    assert "refused (InvalidLogin)" in text
    assert "identical" in text
    assert "ChunkAuthenticationError" in text
    assert list(tmp_path.iterdir()) == []  # temporary files are gone


def test_64_digit_key_has_64_hex_digits() -> None:
    key = BackupKey(bytes(range(32)))
    shown = format_64_digit_key(key)
    assert shown.replace(" ", "") == bytes(range(32)).hex()
    assert len(shown.replace(" ", "")) == 64


def test_cli_rejects_out_of_range_size() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--size-mib", "0"])
    assert exc.value.code == 2


def test_cli_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert "hsmvault" in capsys.readouterr().out
