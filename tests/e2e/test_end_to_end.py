"""End to end through real processes and real HTTP.

``hsmvault up`` runs in a subprocess on a temporary data directory (5 node processes,
witness stub, gateway); every step below is a separate ``hsmvault`` process, as a user
would type it. A "fresh client" is a new, empty device keystore directory: it has to get
the backup key back from the fleet (or from the 64-digit key) before it can restore.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import CliResult, UpProcess, tree_digest

pytestmark = pytest.mark.timeout(300)

PIN = "482916"
EXIT_WRONG_SECRET = 3
EXIT_LOCKED_OUT = 4


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpProcess]:
    root = tmp_path_factory.mktemp("e2e")
    deployment = UpProcess([sys.executable, "-m", "hsmvault.cli.main"], root / "data")
    deployment.start()
    try:
        yield deployment
    finally:
        deployment.stop()


def _ok(result: CliResult) -> CliResult:
    assert result.code == 0, (result.stdout, result.stderr)
    return result


def _sample_tree(root: Path) -> Path:
    (root / "chats" / "2026").mkdir(parents=True)
    (root / "chats" / "2026" / "november.txt").write_text("[12:01] Ada: hi\n" * 5000)
    (root / "media").mkdir()
    (root / "media" / "photo.jpg").write_bytes(os.urandom(2 * 1024 * 1024 + 17))
    (root / "empty.txt").write_bytes(b"")
    (root / "empty-dir").mkdir()
    (root / "ünïcode name.md").write_text("ok")
    return root


def test_up_reports_a_healthy_fleet_in_three_regions(up: UpProcess) -> None:
    ready = up.ready
    assert ready["health"] == "ok"
    assert ready["nodes_total"] == 5
    assert len(ready["regions"]) == 3
    assert ready["leader"] is not None
    assert ready["gateway"]["url"].startswith("http://127.0.0.1:")
    assert ready["witness"]["stub"] is True
    status = _ok(up.cli("status", "--json")).json()
    assert status["running"] is True
    assert {n["region"] for n in status["nodes"]} == set(ready["regions"])
    assert all(n["api"].startswith("127.0.0.1:") for n in status["nodes"])


def test_directory_backup_restores_byte_identical_on_a_fresh_client(
    up: UpProcess, tmp_path: Path
) -> None:
    source = _sample_tree(tmp_path / "source")
    phone = tmp_path / "phone"
    _ok(
        up.cli(
            "secret",
            "set",
            "--pin",
            "--secret-stdin",
            "--user",
            "ada",
            stdin=PIN + "\n",
            device=phone,
        )
    )
    made = _ok(
        up.cli(
            "backup",
            "create",
            str(source),
            "--id",
            "chats",
            "--json",
            "--user",
            "ada",
            device=phone,
        )
    ).json()
    assert made["backup_id"] == "chats"
    listed = _ok(up.cli("backup", "list", "--json", "--user", "ada", device=phone)).json()
    assert [b["backup_id"] for b in listed["backups"]] == ["chats"]

    fresh = tmp_path / "fresh-phone"
    restore = up.cli(
        "backup", "restore", "chats", str(tmp_path / "x"), "--user", "ada", device=fresh
    )
    assert restore.code == 1
    assert "no backup key" in restore.stderr
    wrong = up.cli(
        "secret",
        "recover",
        "--pin",
        "--secret-stdin",
        "--json",
        "--user",
        "ada",
        stdin="000000\n",
        device=fresh,
    )
    assert wrong.code == EXIT_WRONG_SECRET
    assert wrong.json()["error"] == "invalid_login"
    assert wrong.json()["attempts_remaining"] == 9
    _ok(
        up.cli(
            "secret",
            "recover",
            "--pin",
            "--secret-stdin",
            "--user",
            "ada",
            stdin=PIN + "\n",
            device=fresh,
        )
    )
    dest = tmp_path / "restored"
    done = _ok(
        up.cli("backup", "restore", "chats", str(dest), "--json", "--user", "ada", device=fresh)
    ).json()
    assert done["files"] == 4
    assert tree_digest(dest) == tree_digest(source)


def test_password_mode(up: UpProcess, tmp_path: Path) -> None:
    password = "correct horse battery staple"
    _ok(
        up.cli(
            "secret",
            "set",
            "--password",
            "--secret-stdin",
            "--user",
            "pat",
            stdin=password + "\n",
            device=tmp_path / "a",
        )
    )
    bad = up.cli(
        "secret",
        "recover",
        "--password",
        "--secret-stdin",
        "--user",
        "pat",
        stdin="Tr0ub4dor&3\n",
        device=tmp_path / "b",
    )
    assert bad.code == EXIT_WRONG_SECRET
    _ok(
        up.cli(
            "secret",
            "recover",
            "--password",
            "--secret-stdin",
            "--user",
            "pat",
            stdin=password + "\n",
            device=tmp_path / "b",
        )
    )
    assert (tmp_path / "a" / "backup-key.wrapped").exists()
    assert (tmp_path / "b" / "backup-key.wrapped").exists()


def test_recovery_code_mode(up: UpProcess, tmp_path: Path) -> None:
    source = tmp_path / "notes.txt"
    source.write_text("recovery codes work\n")
    made = _ok(
        up.cli("secret", "set", "--recovery-code", "--json", "--user", "rc", device=tmp_path / "a")
    ).json()
    code = made["recovery_code"]
    assert len(code.replace("-", "").replace(" ", "")) >= 25
    _ok(
        up.cli(
            "backup", "create", str(source), "--id", "notes", "--user", "rc", device=tmp_path / "a"
        )
    )
    _ok(
        up.cli(
            "secret",
            "recover",
            "--recovery-code",
            "--secret-stdin",
            "--user",
            "rc",
            stdin=code + "\n",
            device=tmp_path / "b",
        )
    )
    _ok(
        up.cli(
            "backup",
            "restore",
            "notes",
            str(tmp_path / "out"),
            "--user",
            "rc",
            device=tmp_path / "b",
        )
    )
    assert tree_digest(tmp_path / "out") == {"notes.txt": b"recovery codes work\n"}


def test_64_digit_key_recovers_without_any_server(up: UpProcess, tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "wallet.dat").write_bytes(os.urandom(4096))
    shown = _ok(
        up.cli("secret", "set", "--64-digit-key", "--json", "--user", "kim", device=tmp_path / "a")
    ).json()
    digits = shown["key"]
    assert len(digits.replace(" ", "")) == 64
    _ok(
        up.cli(
            "backup",
            "create",
            str(source),
            "--id",
            "wallet",
            "--user",
            "kim",
            device=tmp_path / "a",
        )
    )
    # the key comes back from the digits alone: the gateway named here does not exist
    _ok(
        up.cli(
            "secret",
            "recover",
            "--64-digit-key",
            "--secret-stdin",
            "--user",
            "kim",
            "--gateway-url",
            "http://127.0.0.1:9",
            stdin=digits + "\n",
            device=tmp_path / "b",
        )
    )
    _ok(
        up.cli(
            "backup",
            "restore",
            "wallet",
            str(tmp_path / "out"),
            "--user",
            "kim",
            device=tmp_path / "b",
        )
    )
    assert tree_digest(tmp_path / "out") == tree_digest(source)


def test_change_secret_then_only_the_new_pin_works(up: UpProcess, tmp_path: Path) -> None:
    _ok(
        up.cli(
            "secret",
            "set",
            "--pin",
            "--secret-stdin",
            "--user",
            "cy",
            stdin="111222\n",
            device=tmp_path / "a",
        )
    )
    _ok(
        up.cli(
            "secret",
            "change",
            "--pin",
            "--secret-stdin",
            "--user",
            "cy",
            stdin="111222\n333444\n",
            device=tmp_path / "a",
        )
    )
    old = up.cli(
        "secret",
        "recover",
        "--pin",
        "--secret-stdin",
        "--user",
        "cy",
        stdin="111222\n",
        device=tmp_path / "b",
    )
    assert old.code == EXIT_WRONG_SECRET
    _ok(
        up.cli(
            "secret",
            "recover",
            "--pin",
            "--secret-stdin",
            "--user",
            "cy",
            stdin="333444\n",
            device=tmp_path / "b",
        )
    )
    assert (tmp_path / "b" / "backup-key.wrapped").exists()


def test_delete_removes_the_backup(up: UpProcess, tmp_path: Path) -> None:
    source = tmp_path / "f.txt"
    source.write_text("to be deleted")
    device = tmp_path / "a"
    _ok(up.cli("secret", "set", "--64-digit-key", "--user", "del", device=device))
    _ok(up.cli("backup", "create", str(source), "--id", "gone", "--user", "del", device=device))
    assert _ok(
        up.cli("backup", "delete", "gone", "--json", "--user", "del", device=device)
    ).json() == {
        "backup_id": "gone",
        "deleted": True,
    }
    listed = _ok(up.cli("backup", "list", "--json", "--user", "del", device=device)).json()
    assert listed == {"backups": []}
    missing = up.cli(
        "backup", "restore", "gone", str(tmp_path / "out"), "--user", "del", device=device
    )
    assert missing.code != 0
    assert not (tmp_path / "out").exists()


def test_lockout_after_the_guess_limit(up: UpProcess, tmp_path: Path) -> None:
    _ok(
        up.cli(
            "secret",
            "set",
            "--pin",
            "--secret-stdin",
            "--guess-limit",
            "3",
            "--user",
            "eve-target",
            stdin="975310\n",
            device=tmp_path / "a",
        )
    )
    attacker = tmp_path / "attacker"
    codes = []
    for guess in ("000001", "000002", "000003"):
        result = up.cli(
            "secret",
            "recover",
            "--pin",
            "--secret-stdin",
            "--json",
            "--user",
            "eve-target",
            stdin=guess + "\n",
            device=attacker,
        )
        codes.append((result.code, result.json()))
    assert [c for c, _ in codes] == [EXIT_WRONG_SECRET, EXIT_WRONG_SECRET, EXIT_LOCKED_OUT]
    assert [d.get("attempts_remaining") for _, d in codes[:2]] == [2, 1]
    assert codes[2][1]["error"] == "locked_out"
    right = up.cli(
        "secret",
        "recover",
        "--pin",
        "--secret-stdin",
        "--user",
        "eve-target",
        stdin="975310\n",
        device=attacker,
    )
    assert right.code == EXIT_LOCKED_OUT
    assert not (attacker / "backup-key.wrapped").exists()


def test_fleet_serves_with_two_nodes_down(up: UpProcess, tmp_path: Path) -> None:
    _ok(
        up.cli(
            "secret",
            "set",
            "--pin",
            "--secret-stdin",
            "--user",
            "two",
            stdin=PIN + "\n",
            device=tmp_path / "a",
        )
    )
    leader = _ok(up.cli("status", "--json")).json()["leader"]
    down = [leader, (leader + 1) % 5]
    try:
        for index in down:
            stopped = _ok(up.cli("node", "stop", str(index), "--json")).json()
            assert stopped["status"]["nodes"][index]["state"] == "stopped"
        result = up.cli(
            "secret",
            "recover",
            "--pin",
            "--secret-stdin",
            "--user",
            "two",
            stdin=PIN + "\n",
            device=tmp_path / "b",
        )
        for _ in range(20):  # a new leader is being elected: the CLI says "unavailable"
            if result.code != 5:
                break
            result = up.cli(
                "secret",
                "recover",
                "--pin",
                "--secret-stdin",
                "--user",
                "two",
                stdin=PIN + "\n",
                device=tmp_path / "b",
            )
        _ok(result)
        status = _ok(up.cli("status", "--json")).json()
        assert status["nodes_up"] == 3
        assert status["health"] == "degraded"
    finally:
        for index in down:
            _ok(up.cli("node", "start", str(index), "--json"))
    assert _ok(up.cli("status", "--json")).json()["nodes_up"] == 5


def test_restart_keeps_every_backup_and_secret(up: UpProcess, tmp_path: Path) -> None:
    source = _sample_tree(tmp_path / "source")
    device = tmp_path / "a"
    _ok(
        up.cli(
            "secret",
            "set",
            "--pin",
            "--secret-stdin",
            "--user",
            "rst",
            stdin=PIN + "\n",
            device=device,
        )
    )
    _ok(up.cli("backup", "create", str(source), "--id", "keep", "--user", "rst", device=device))
    fleet_id = up.ready["fleet_id"]
    up.stop()
    assert up.cli("status", "--json").json()["running"] is False
    again = up.start()
    assert again["fleet_id"] == fleet_id
    _ok(
        up.cli(
            "secret",
            "recover",
            "--pin",
            "--secret-stdin",
            "--user",
            "rst",
            stdin=PIN + "\n",
            device=tmp_path / "b",
        )
    )
    _ok(
        up.cli(
            "backup",
            "restore",
            "keep",
            str(tmp_path / "out"),
            "--user",
            "rst",
            device=tmp_path / "b",
        )
    )
    assert tree_digest(tmp_path / "out") == tree_digest(source)
