"""End to end through real processes and real HTTP.

``hsmvault up`` runs in a subprocess on a temporary data directory (5 node processes,
the witness in its own process, gateway); every step below is a separate ``hsmvault``
process, as a user would type it. A "fresh client" is a new, empty device directory: it
pins the witness and operator keys at first use, verifies the fleet's validation bundle
in every vault session, and has to get the backup key back from the fleet (or from the
64-digit key) before it can restore. The freeze (stale bundle) and rollback checks run
against the same deployment: the rollback through the CLI with a device that has seen a
higher epoch, the freeze through the SDK with a clock 31 days ahead.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hsmvault.cli.dev_tokens import DevTokenIssuer
from hsmvault.cli.device_trust import DevicePins, pin_from_deployment
from hsmvault.cli.local_deployment import DataLayout
from hsmvault.client.bundle_verifier import BundleFleetTrust, BundleVerifier
from hsmvault.client.passkeys import SoftwareAuthenticator
from hsmvault.client.sdk import VaultClient
from hsmvault.client.trust_store import FileTrustStore, MemoryTrustStore, NamespaceTrust
from hsmvault.crypto.backup_stream import BackupKey
from hsmvault.fleet.fleet_keys import FleetPublicKeys
from hsmvault.transparency.errors import StaleBundle
from hsmvault.transparency.witness_client import WitnessClient

from .harness import UpProcess, ok, serving, tree_digest

pytestmark = pytest.mark.timeout(300)

PIN = "482916"
EXIT_WRONG_SECRET = 3
EXIT_LOCKED_OUT = 4


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpProcess]:
    root = tmp_path_factory.mktemp("e2e")
    yield from serving(UpProcess([sys.executable, "-m", "hsmvault.cli.main"], root / "data"))


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
    witness = ready["witness"]
    assert witness["url"].startswith("http://127.0.0.1:")
    assert witness["namespace"] == "hsmvault/local"
    assert witness["epoch"] == 1  # published before the gateway served
    assert witness["operator_custody"] == "software"
    assert (up.data_dir / "operator" / "operator.seed").stat().st_mode & 0o077 == 0
    assert any("published epoch 1" in e.get("message", "") for e in up.events)
    status = ok(up.cli("status", "--json")).json()
    assert status["witness"]["epoch"] == 1
    assert status["witness"]["operator_public_key"] == witness["operator_public_key"]
    assert status["running"] is True
    assert {n["region"] for n in status["nodes"]} == set(ready["regions"])
    assert all(n["api"].startswith("127.0.0.1:") for n in status["nodes"])


def test_directory_backup_restores_byte_identical_on_a_fresh_client(
    up: UpProcess, tmp_path: Path
) -> None:
    source = _sample_tree(tmp_path / "source")
    phone = tmp_path / "phone"
    ok(up.secret("set", "--pin", user="ada", stdin=PIN + "\n", device=phone))
    made = ok(
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
    listed = ok(up.cli("backup", "list", "--json", "--user", "ada", device=phone)).json()
    assert [b["backup_id"] for b in listed["backups"]] == ["chats"]

    fresh = tmp_path / "fresh-phone"
    restore = up.cli(
        "backup", "restore", "chats", str(tmp_path / "x"), "--user", "ada", device=fresh
    )
    assert restore.code == 1
    assert "no backup key" in restore.stderr
    wrong = up.secret("recover", "--pin", "--json", user="ada", stdin="000000\n", device=fresh)
    assert wrong.code == EXIT_WRONG_SECRET
    assert wrong.json()["error"] == "invalid_login"
    assert wrong.json()["attempts_remaining"] == 9
    ok(up.secret("recover", "--pin", user="ada", stdin=PIN + "\n", device=fresh))
    dest = tmp_path / "restored"
    done = ok(
        up.cli("backup", "restore", "chats", str(dest), "--json", "--user", "ada", device=fresh)
    ).json()
    assert done["files"] == 4
    assert tree_digest(dest) == tree_digest(source)


def test_password_mode(up: UpProcess, tmp_path: Path) -> None:
    password = "correct horse battery staple"
    ok(up.secret("set", "--password", user="pat", stdin=password + "\n", device=tmp_path / "a"))
    bad = up.secret(
        "recover", "--password", user="pat", stdin="Tr0ub4dor&3\n", device=tmp_path / "b"
    )
    assert bad.code == EXIT_WRONG_SECRET
    ok(up.secret("recover", "--password", user="pat", stdin=password + "\n", device=tmp_path / "b"))
    assert (tmp_path / "a" / "backup-key.wrapped").exists()
    assert (tmp_path / "b" / "backup-key.wrapped").exists()


def test_recovery_code_mode(up: UpProcess, tmp_path: Path) -> None:
    source = tmp_path / "notes.txt"
    source.write_text("recovery codes work\n")
    made = ok(
        up.cli("secret", "set", "--recovery-code", "--json", "--user", "rc", device=tmp_path / "a")
    ).json()
    code = made["recovery_code"]
    assert len(code.replace("-", "").replace(" ", "")) >= 25
    ok(
        up.cli(
            "backup", "create", str(source), "--id", "notes", "--user", "rc", device=tmp_path / "a"
        )
    )
    ok(up.secret("recover", "--recovery-code", user="rc", stdin=code + "\n", device=tmp_path / "b"))
    ok(
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
    shown = ok(
        up.cli("secret", "set", "--64-digit-key", "--json", "--user", "kim", device=tmp_path / "a")
    ).json()
    digits = shown["key"]
    assert len(digits.replace(" ", "")) == 64
    ok(
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
    ok(
        up.secret(
            "recover",
            "--64-digit-key",
            "--gateway-url",
            "http://127.0.0.1:9",
            user="kim",
            stdin=digits + "\n",
            device=tmp_path / "b",
        )
    )
    ok(
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
    ok(up.secret("set", "--pin", user="cy", stdin="111222\n", device=tmp_path / "a"))
    ok(up.secret("change", "--pin", user="cy", stdin="111222\n333444\n", device=tmp_path / "a"))
    old = up.secret("recover", "--pin", user="cy", stdin="111222\n", device=tmp_path / "b")
    assert old.code == EXIT_WRONG_SECRET
    ok(up.secret("recover", "--pin", user="cy", stdin="333444\n", device=tmp_path / "b"))
    assert (tmp_path / "b" / "backup-key.wrapped").exists()


def test_delete_removes_the_backup(up: UpProcess, tmp_path: Path) -> None:
    source = tmp_path / "f.txt"
    source.write_text("to be deleted")
    device = tmp_path / "a"
    ok(up.cli("secret", "set", "--64-digit-key", "--user", "del", device=device))
    ok(up.cli("backup", "create", str(source), "--id", "gone", "--user", "del", device=device))
    assert ok(
        up.cli("backup", "delete", "gone", "--json", "--user", "del", device=device)
    ).json() == {
        "backup_id": "gone",
        "deleted": True,
    }
    listed = ok(up.cli("backup", "list", "--json", "--user", "del", device=device)).json()
    assert listed == {"backups": []}
    missing = up.cli(
        "backup", "restore", "gone", str(tmp_path / "out"), "--user", "del", device=device
    )
    assert missing.code != 0
    assert not (tmp_path / "out").exists()


def test_lockout_after_the_guess_limit(up: UpProcess, tmp_path: Path) -> None:
    ok(
        up.secret(
            "set",
            "--pin",
            "--guess-limit",
            "3",
            user="eve-target",
            stdin="975310\n",
            device=tmp_path / "a",
        )
    )
    attacker = tmp_path / "attacker"
    codes = []
    for guess in ("000001", "000002", "000003"):
        result = up.secret(
            "recover", "--pin", "--json", user="eve-target", stdin=guess + "\n", device=attacker
        )
        codes.append((result.code, result.json()))
    assert [c for c, _ in codes] == [EXIT_WRONG_SECRET, EXIT_WRONG_SECRET, EXIT_LOCKED_OUT]
    assert [d.get("attempts_remaining") for _, d in codes[:2]] == [2, 1]
    assert codes[2][1]["error"] == "locked_out"
    right = up.secret("recover", "--pin", user="eve-target", stdin="975310\n", device=attacker)
    assert right.code == EXIT_LOCKED_OUT
    assert not (attacker / "backup-key.wrapped").exists()


def test_fleet_serves_with_two_nodes_down(up: UpProcess, tmp_path: Path) -> None:
    ok(up.secret("set", "--pin", user="two", stdin=PIN + "\n", device=tmp_path / "a"))
    leader = ok(up.cli("status", "--json")).json()["leader"]
    down = [leader, (leader + 1) % 5]
    try:
        for index in down:
            stopped = ok(up.cli("node", "stop", str(index), "--json")).json()
            assert stopped["status"]["nodes"][index]["state"] == "stopped"
        result = up.secret("recover", "--pin", user="two", stdin=PIN + "\n", device=tmp_path / "b")
        for _ in range(20):  # a new leader is being elected: the CLI says "unavailable"
            if result.code != 5:
                break
            result = up.secret(
                "recover", "--pin", user="two", stdin=PIN + "\n", device=tmp_path / "b"
            )
        ok(result)
        status = ok(up.cli("status", "--json")).json()
        assert status["nodes_up"] == 3
        assert status["health"] == "degraded"
    finally:
        for index in down:
            ok(up.cli("node", "start", str(index), "--json"))
    assert ok(up.cli("status", "--json")).json()["nodes_up"] == 5


def _pins(up: UpProcess, device: Path) -> DevicePins:
    return pin_from_deployment(DataLayout(up.data_dir), device)


def test_a_published_epoch_is_audited_and_devices_follow_it(up: UpProcess, tmp_path: Path) -> None:
    device = tmp_path / "phone"
    first = up.secret("set", "--pin", user="pub", stdin=PIN + "\n", device=device)
    ok(first)
    assert "pinned at first use" in first.stdout + first.stderr
    pins = json.loads((device / "trust.json").read_text())
    assert pins["namespace"] == "hsmvault/local"
    assert pins["operator_public_keys"] == [up.ready["witness"]["operator_public_key"]]
    before = ok(up.cli("status", "--json")).json()["witness"]["epoch"]
    audit = ok(up.cli("audit", "log", "--json", device=device)).json()
    assert [e["epoch"] for e in audit["epochs"]] == list(range(1, before + 1))
    assert audit["epochs"][0]["fleets"][0]["fleet_id"] == up.ready["fleet_id"]

    published = ok(up.cli("fleet", "publish-keys", "--json")).json()
    assert published["epoch"] == before + 1
    assert published["installed"] == [{"fleet_id": up.ready["fleet_id"], "epoch": before + 1}]
    # the device that accepted the old epoch accepts the new one (the log grew consistently)
    again = up.secret("recover", "--pin", user="pub", stdin=PIN + "\n", device=device)
    ok(again)
    assert "pinned at first use" not in again.stdout + again.stderr  # never refetched
    store = FileTrustStore(device / "trust-store.json").get("hsmvault/local")
    assert store is not None
    assert store.highest_epoch == before + 1
    audit = ok(up.cli("audit", "log", "--json", device=device)).json()
    assert audit["consistency"]["status"] == "consistent"
    # a re-publication: at most a new issued_at, the same fleet keys
    assert {c["kind"] for c in audit["epochs"][-1]["changes"]} <= {"reissued"}


def test_a_device_that_saw_a_higher_epoch_refuses_the_fleet(up: UpProcess, tmp_path: Path) -> None:
    device = tmp_path / "rolled"
    current = ok(up.cli("status", "--json")).json()["witness"]["epoch"]
    _pins(up, device)
    FileTrustStore(device / "trust-store.json").put("hsmvault/local", NamespaceTrust(current + 5))
    refused = up.secret("set", "--pin", "--json", user="roll", stdin=PIN + "\n", device=device)
    assert refused.code == 1
    assert refused.json()["error"] == "epoch_rollback"
    assert not (device / "backup-key.wrapped").exists()
    # the store is untouched by the refusal
    state = FileTrustStore(device / "trust-store.json").get("hsmvault/local")
    assert state is not None
    assert state.highest_epoch == current + 5
    # a device without that memory is served
    ok(up.secret("set", "--pin", user="roll", stdin=PIN + "\n", device=tmp_path / "fresh"))


class _CountingTrust:
    def __init__(self, inner: BundleFleetTrust) -> None:
        self.inner = inner
        self.sessions = 0

    def session_keys(
        self, fleet_id: bytes, request: bytes, bundle: bytes, fleet_signature: bytes
    ) -> FleetPublicKeys:
        self.sessions += 1
        assert bundle  # the fleet served its bundle in this session
        return self.inner.session_keys(fleet_id, request, bundle, fleet_signature)


def test_the_sdk_verifies_the_bundle_every_session_and_refuses_a_frozen_one(
    up: UpProcess, tmp_path: Path
) -> None:
    state = up.state()
    pins = _pins(up, tmp_path / "sdk-device")
    issuer = DevTokenIssuer.load_or_create(up.data_dir)

    def consistency(first: int, second: int) -> tuple[bytes, ...]:
        with WitnessClient(str(state["witness_url"])) as client:
            return client.consistency_proof(first, second).proof

    def client_at(clock_offset: float, trust_user: str) -> tuple[VaultClient, _CountingTrust]:
        verifier = BundleVerifier(
            pins.policy(),
            MemoryTrustStore(),
            clock=lambda: time.time() + clock_offset,
            consistency_fetcher=consistency,
        )
        counting = _CountingTrust(BundleFleetTrust(verifier))
        client = VaultClient(
            str(state["gateway_url"]),
            lambda: issuer.mint(trust_user, 300),
            fleet_trust=counting,
            user_id=trust_user,
        )
        return client, counting

    key = BackupKey.generate()
    client, counting = client_at(0.0, "sdk-user")
    with client:
        client.protect_with_pin(PIN, key)
        assert client.recover(PIN) == key
    assert counting.sessions == 2  # one RegistrationStart, one LoginStart

    frozen, counting = client_at(31 * 24 * 3600.0, "sdk-frozen")
    with frozen, pytest.raises(StaleBundle):
        frozen.protect_with_pin(PIN, BackupKey.generate())
    assert counting.sessions == 1


def test_passkeys_through_the_deployment_gateway(up: UpProcess) -> None:
    """`hsmvault up` serves the passkey page with its test sign-in; a passkey made for
    the page's origin protects and recovers a backup key through that gateway."""
    port = str(up.state()["gateway_url"]).rsplit(":", 1)[-1]
    origin = f"http://localhost:{port}"
    page = httpx.get(f"{origin}/passkeys", timeout=10)
    assert page.status_code == 200
    assert "passkeys.js" in page.text
    login = httpx.post(f"{origin}/v1/passkeys/test-login", json={"username": "pk-user"}, timeout=10)
    assert login.status_code == 200
    token = login.json()["token"]

    key = BackupKey.generate()
    device = SoftwareAuthenticator(origin)
    with VaultClient(origin, lambda: token, user_id="pk-user") as client:
        credential = client.protect_with_passkey(device, key)
        assert client.recover_with_passkey(device) == key
        assert [p.credential_id for p in client.list_passkeys()] == [credential]


def test_restart_keeps_every_backup_and_secret(up: UpProcess, tmp_path: Path) -> None:
    source = _sample_tree(tmp_path / "source")
    device = tmp_path / "a"
    ok(up.secret("set", "--pin", user="rst", stdin=PIN + "\n", device=device))
    ok(up.cli("backup", "create", str(source), "--id", "keep", "--user", "rst", device=device))
    fleet_id = up.ready["fleet_id"]
    epoch = ok(up.cli("status", "--json")).json()["witness"]["epoch"]
    up.stop()
    stopped = up.cli("status", "--json").json()
    assert stopped["running"] is False
    assert stopped["witness"]["operator_public_key"] == up.ready["witness"]["operator_public_key"]
    logged = len(up.events)
    again = up.start()
    assert again["fleet_id"] == fleet_id
    # the installed bundle is fresh: nothing is re-published at this start
    assert again["witness"]["epoch"] == epoch
    assert not any("publishing" in e.get("message", "") for e in up.events[logged:])
    ok(up.secret("recover", "--pin", user="rst", stdin=PIN + "\n", device=tmp_path / "b"))
    ok(
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
