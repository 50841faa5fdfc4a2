"""``VaultClient`` over HTTP against an in-memory gateway (``httpx.MockTransport``).

The fake gateway implements the routes of ADR 0008 with knobs for the failures the SDK
must survive; ``POST /v1/vault`` is relayed to an in-process node, so key protection is
exercised through the same bytes the real gateway relays. End-to-end tests with the real
gateway and fleet live with the CLI.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import tracemalloc
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest

from hsmvault.client.errors import (
    AlreadyEnrolled,
    InvalidLogin,
    NotFound,
    RateLimited,
    RecoveryCodeError,
    Unauthorized,
    Unavailable,
    UploadOffsetMismatch,
)
from hsmvault.client.fleet_trust import PinnedFleetTrust
from hsmvault.client.keystore import DeviceKeystore
from hsmvault.client.recovery_codes import Pin
from hsmvault.client.sdk import Progress, RetryPolicy, VaultClient
from hsmvault.crypto.backup_stream import BackupKey
from hsmvault.errors import (
    InvalidParameter,
    TruncatedBackupError,
    VerificationError,
    WrongKeyError,
)
from hsmvault.fleet.fleet_keys import FleetPublicKeys
from hsmvault.transparency.errors import FleetKeyMismatch
from hsmvault.wire import hsm_api as api
from tests.client.test_vault_protocol import CONFIG, FLEET, OTHER_FLEET, Node

URL = "https://gateway.test"


def token_for(sub: str) -> str:
    def part(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'EdDSA'})}.{part({'sub': sub, 'aud': 'hsmvault'})}.c2ln"


TOKEN = token_for("alice")


class FakeGateway:
    """ADR 0008's routes in memory, with failure knobs."""

    def __init__(self, node: Node | None = None) -> None:
        self.node = node
        self.uploads: dict[str, dict[str, object]] = {}
        self.data: dict[str, bytearray] = {}
        self.backups: dict[str, tuple[bytes, dict[str, object]]] = {}
        self.log: list[tuple[str, str, int | None]] = []  # method, path, Upload-Offset
        self.put_failures: list[str] = []  # per PUT, in order: "lost", "landed-lost", "503"
        self.rewind_at_put: int | None = None  # answer this PUT (1-based) with 409 + rewind
        self.puts = 0
        self.status_for: dict[str, list[httpx.Response]] = {}  # path -> canned answers
        self.truncate_download = False

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        offset = request.headers.get("Upload-Offset")
        self.log.append((request.method, path, int(offset) if offset else None))
        if path not in ("/v1/health", "/v1/fleet"):
            assert request.headers["Authorization"] == f"Bearer {TOKEN}"
        canned = self.status_for.get(path)
        if canned:
            return canned.pop(0)
        parts = path.split("/")[2:]
        match request.method, parts:
            case "GET", ["fleet"]:
                return httpx.Response(200, json=FLEET.public().to_dict())
            case "POST", ["vault"]:
                assert self.node is not None
                return httpx.Response(200, content=self.node.send(request.content))
            case "GET", ["backups"]:
                return httpx.Response(200, json={"backups": [m for _, m in self.backups.values()]})
            case "POST", ["backups", backup_id, "uploads"]:
                return self.start(backup_id, json.loads(request.content))
            case "PUT", ["backups", _, "uploads", upload_id]:
                return self.put(upload_id, int(request.headers["Upload-Offset"]), request.content)
            case "POST", ["backups", backup_id, "uploads", upload_id, "commit"]:
                return self.commit(backup_id, upload_id)
            case "GET", ["backups", backup_id]:
                if backup_id not in self.backups:
                    return httpx.Response(404, json={"error": "not_found", "detail": "no backup"})
                blob = self.backups[backup_id][0]
                return httpx.Response(200, content=blob[:-100] if self.truncate_download else blob)
            case "DELETE", ["backups", backup_id]:
                if self.backups.pop(backup_id, None) is None:
                    return httpx.Response(404, json={"error": "not_found"})
                return httpx.Response(204)
        return httpx.Response(404, json={"error": "no_route"})

    def start(self, backup_id: str, body: dict[str, object]) -> httpx.Response:
        for upload_id, meta in self.uploads.items():
            if (meta["backup_id"], meta["size"], meta["sha256"]) == (
                backup_id,
                body["size"],
                body["sha256"],
            ):
                return httpx.Response(
                    200, json={"upload_id": upload_id, "offset": len(self.data[upload_id])}
                )
        upload_id = f"up-{len(self.uploads)}"
        self.uploads[upload_id] = {"backup_id": backup_id, **body}
        self.data[upload_id] = bytearray()
        return httpx.Response(201, json={"upload_id": upload_id, "offset": 0})

    def put(self, upload_id: str, offset: int, chunk: bytes) -> httpx.Response:
        self.puts += 1
        data = self.data[upload_id]
        failure = self.put_failures.pop(0) if self.put_failures else None
        if failure == "lost":  # the request never arrived
            raise httpx.ConnectError("connection reset")
        if failure == "503":
            return httpx.Response(503, headers={"Retry-After": "2"}, json={"error": "busy"})
        if self.puts == self.rewind_at_put:  # the gateway lost its tail (e.g. a crash)
            del data[len(data) // 2 :]
            return httpx.Response(409, json={"error": "offset_mismatch", "offset": len(data)})
        if offset != len(data):
            return httpx.Response(409, json={"error": "offset_mismatch", "offset": len(data)})
        assert len(chunk) <= 8 * 1024 * 1024
        data += chunk
        if failure == "landed-lost":  # stored, but the answer was lost
            raise httpx.ReadError("connection reset")
        return httpx.Response(200, json={"offset": len(data)})

    def commit(self, backup_id: str, upload_id: str) -> httpx.Response:
        meta = self.uploads.pop(upload_id)
        data = bytes(self.data.pop(upload_id))
        assert len(data) == meta["size"]
        assert hashlib.sha256(data).hexdigest() == meta["sha256"]
        info = {
            "backup_id": backup_id,
            "size": len(data),
            "sha256": meta["sha256"],
            "created_at": "2026-11-27T12:00:00Z",
            "label": meta["label"],
        }
        self.backups[backup_id] = (data, info)
        return httpx.Response(200, json=info)


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def client_for(
    gateway: FakeGateway, *, pinned: bool = True, attempts: int = 5, **kw: object
) -> tuple[VaultClient, Sleeps]:
    sleeps = Sleeps()
    client = VaultClient(
        URL,
        lambda: TOKEN,
        fleet_keys=FLEET.public() if pinned else None,
        unsafe_trust_gateway_fleet_keys=not pinned,
        http=httpx.Client(transport=httpx.MockTransport(gateway)),
        protocol=CONFIG,
        retry=RetryPolicy(attempts=attempts),
        sleep=sleeps,
        **kw,  # type: ignore[arg-type]
    )
    return client, sleeps


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "chats").mkdir(parents=True)
    (src / "chats" / "log.txt").write_text("hello\n" * 10_000)
    (src / "media.bin").write_bytes(os.urandom(400_000))
    return src


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def puts(gateway: FakeGateway) -> list[int | None]:
    return [offset for method, _, offset in gateway.log if method == "PUT"]


# ------------------------------------------------------------------ backups


def test_backup_round_trip_in_chunks_with_progress(tree: Path, tmp_path: Path) -> None:
    gateway = FakeGateway()
    events: list[Progress] = []
    client, _ = client_for(gateway, upload_chunk=100_000, progress=events.append)
    bk = BackupKey.generate()
    info = client.create_backup(tree, "chats", backup_key=bk, label="phone")
    assert info.label == "phone"
    assert info.created_at == datetime(2026, 11, 27, 12, tzinfo=UTC).timestamp()
    assert len(puts(gateway)) == -(-info.size // 100_000)
    assert [b.backup_id for b in client.list_backups()] == ["chats"]
    result = client.restore_backup("chats", tmp_path / "restored", backup_key=bk)
    assert files_of(tmp_path / "restored") == files_of(tree)
    assert result.ciphertext_bytes == info.size
    phases = {e.phase for e in events}
    assert phases == {"archive", "upload", "download", "restore"}
    assert [e for e in events if e.phase == "upload"][-1] == Progress(
        "upload", info.size, info.size
    )


def test_a_chunk_whose_answer_was_lost_resumes_at_the_servers_offset(tree: Path) -> None:
    gateway = FakeGateway()
    gateway.put_failures = ["ok", "landed-lost"]  # the 2nd chunk lands, its answer is lost
    client, sleeps = client_for(gateway, upload_chunk=100_000)
    info = client.create_backup(tree, "b1", backup_key=BackupKey.generate())
    offsets = puts(gateway)
    assert offsets[:3] == [0, 100_000, 200_000]  # no byte sent twice: resumed at 200,000
    assert len(set(offsets)) == len(offsets)
    assert sleeps == [0.5]
    assert gateway.backups["b1"][1]["sha256"] == info.sha256


def test_a_lost_chunk_is_sent_again(tree: Path) -> None:
    gateway = FakeGateway()
    gateway.put_failures = ["lost"]
    client, _ = client_for(gateway, upload_chunk=100_000)
    client.create_backup(tree, "b1", backup_key=BackupKey.generate())
    assert puts(gateway)[:2] == [0, 0]


def test_503_on_a_chunk_waits_for_retry_after_then_resumes(tree: Path) -> None:
    gateway = FakeGateway()
    gateway.put_failures = ["ok", "503"]
    client, sleeps = client_for(gateway, upload_chunk=100_000)
    client.create_backup(tree, "b1", backup_key=BackupKey.generate())
    assert sleeps == [2.0]
    assert puts(gateway)[:3] == [0, 100_000, 100_000]


def test_409_offset_mismatch_rewinds_to_the_servers_offset(tree: Path) -> None:
    gateway = FakeGateway()
    gateway.rewind_at_put = 3  # holds 200,000; loses its tail to 100,000, says so with 409
    client, sleeps = client_for(gateway, upload_chunk=100_000)
    bk = BackupKey.generate()
    client.create_backup(tree, "b1", backup_key=bk)
    assert puts(gateway)[:4] == [0, 100_000, 200_000, 100_000]
    assert sleeps == []  # a 409 is an answer, not an outage


def test_an_interrupted_upload_resumes_on_the_next_call(tree: Path, tmp_path: Path) -> None:
    gateway = FakeGateway()
    gateway.put_failures = ["ok", "ok", "lost", "lost"]
    client, _ = client_for(gateway, upload_chunk=100_000, attempts=2)
    bk = BackupKey.generate()
    with pytest.raises(Unavailable):
        client.create_backup(tree / "media.bin", "b1", backup_key=bk)
    assert gateway.backups == {}
    # Same plaintext, but a fresh encryption: a new upload (the old one is abandoned).
    client.create_backup(tree / "media.bin", "b1", backup_key=bk)
    client.restore_backup("b1", tmp_path / "out", backup_key=bk)
    assert (tmp_path / "out" / "media.bin").read_bytes() == (tree / "media.bin").read_bytes()


def test_restore_with_the_wrong_key_publishes_nothing(tree: Path, tmp_path: Path) -> None:
    gateway = FakeGateway()
    client, _ = client_for(gateway)
    client.create_backup(tree, "b1", backup_key=BackupKey.generate())
    with pytest.raises(WrongKeyError):
        client.restore_backup("b1", tmp_path / "out", backup_key=BackupKey.generate())
    assert not (tmp_path / "out").exists()


def test_truncated_download_publishes_nothing(tree: Path, tmp_path: Path) -> None:
    gateway = FakeGateway()
    client, _ = client_for(gateway)
    bk = BackupKey.generate()
    client.create_backup(tree, "b1", backup_key=bk)
    gateway.truncate_download = True
    with pytest.raises(TruncatedBackupError):
        client.restore_backup("b1", tmp_path / "out", backup_key=bk)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_missing_backup_and_delete(tree: Path, tmp_path: Path) -> None:
    gateway = FakeGateway()
    client, _ = client_for(gateway)
    with pytest.raises(NotFound):
        client.restore_backup("nope", tmp_path / "out", backup_key=BackupKey.generate())
    client.create_backup(tree, "b1", backup_key=BackupKey.generate())
    client.delete_backup("b1")
    assert client.list_backups() == []
    with pytest.raises(NotFound):
        client.delete_backup("b1")


# ------------------------------------------------------------------ status codes


def test_429_is_rate_limited_with_retry_after() -> None:
    gateway = FakeGateway()
    gateway.status_for["/v1/backups"] = [
        httpx.Response(429, headers={"Retry-After": "7"}, json={"error": "rate_limited"})
    ]
    client, _ = client_for(gateway, attempts=1)
    with pytest.raises(RateLimited) as exc:
        client.list_backups()
    assert exc.value.retry_after == 7.0


def test_429_with_an_http_date_and_a_retry_that_succeeds() -> None:
    gateway = FakeGateway()
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=20), usegmt=True)
    gateway.status_for["/v1/backups"] = [httpx.Response(429, headers={"Retry-After": when})]
    client, sleeps = client_for(gateway)
    assert client.list_backups() == []
    assert len(sleeps) == 1
    assert 15 < sleeps[0] <= 20


def test_retry_after_beyond_the_policy_is_raised_not_waited_for() -> None:
    gateway = FakeGateway()
    gateway.status_for["/v1/backups"] = [httpx.Response(429, headers={"Retry-After": "3600"})]
    client, sleeps = client_for(gateway)
    with pytest.raises(RateLimited):
        client.list_backups()
    assert sleeps == []


def test_503_is_unavailable_and_vault_calls_are_not_retried() -> None:
    gateway = FakeGateway(Node())
    gateway.status_for["/v1/vault"] = [
        httpx.Response(503, headers={"Retry-After": "5"}, json={"error": "fleet_unavailable"})
    ]
    client, sleeps = client_for(gateway)
    with pytest.raises(Unavailable) as exc:
        client.recover("482916")
    assert exc.value.retry_after == 5.0
    assert sleeps == []


def test_network_failure_is_unavailable_without_the_raw_exception() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    client = VaultClient(URL, lambda: TOKEN, http=httpx.Client(transport=httpx.MockTransport(down)))
    with pytest.raises(Unavailable) as exc:
        client.attempts_remaining()
    assert exc.value.__cause__ is None
    assert exc.value.__suppress_context__


def test_401_is_unauthorized_and_the_token_never_shows() -> None:
    gateway = FakeGateway()
    gateway.status_for["/v1/backups"] = [
        httpx.Response(401, json={"error": "invalid_token", "detail": "expired"})
    ]
    client, _ = client_for(gateway)
    with pytest.raises(Unauthorized) as exc:
        client.list_backups()
    assert exc.value.status == 401
    assert exc.value.code == "invalid_token"
    assert TOKEN not in str(exc.value)
    assert TOKEN not in repr(client)


def test_409_without_an_offset_is_an_error_after_retries(tree: Path) -> None:
    gateway = FakeGateway()
    gateway.status_for["/v1/backups/b1/uploads/up-0"] = [
        httpx.Response(409, json={"error": "offset_mismatch"}) for _ in range(10)
    ]
    client, _ = client_for(gateway, attempts=3)
    with pytest.raises(UploadOffsetMismatch):
        client.create_backup(tree, "b1", backup_key=BackupKey.generate())


# ------------------------------------------------------------------ key protection


def test_unpinned_fleet_keys_are_refused_unless_explicitly_unsafe() -> None:
    node = Node()
    client = VaultClient(
        URL, lambda: TOKEN, http=httpx.Client(transport=httpx.MockTransport(FakeGateway(node)))
    )
    with pytest.raises(VerificationError):
        client.protect_with_pin("482916", BackupKey.generate())
    assert node.fleet.state().record(b"alice") is None  # nothing reached the fleet


def test_key_protection_through_the_gateway() -> None:
    node = Node()
    gateway = FakeGateway(node)
    client, _ = client_for(gateway, pinned=False)
    bk = BackupKey.generate()
    code = client.protect_with_recovery_code(bk)
    assert node.fleet.state().record(b"alice") is not None  # the user id is the token's sub
    assert client.recover(code.display().lower()) == bk
    with pytest.raises(AlreadyEnrolled):
        client.protect_with_pin("482916", bk)
    client.protect_with_pin("482916", bk, replace=True)
    with pytest.raises(InvalidLogin) as exc:
        client.recover("111111")
    assert exc.value.attempts_remaining == 9
    assert client.attempts_remaining() == 9
    assert client.change_secret("482916", Pin("135790")) == bk
    assert client.recover(Pin("135790")) == bk
    client.disable_escrow("135790")
    assert node.fleet.state().record(b"alice") is None
    fleet_fetches = [p for m, p, _ in gateway.log if p == "/v1/fleet"]
    assert fleet_fetches == ["/v1/fleet"]  # fetched once, then kept


def test_a_mistyped_recovery_code_costs_no_guess() -> None:
    node = Node()
    client, _ = client_for(FakeGateway(node))
    bk = BackupKey.generate()
    code = client.protect_with_recovery_code(bk)
    text = code.secret_bytes().decode()
    typo = text[:5] + ("0" if text[5] != "0" else "1") + text[6:]
    with pytest.raises(RecoveryCodeError):
        client.recover(typo)
    assert client.attempts_remaining() == 10


class RecordingTrust:
    """Pinned trust that records what it was asked."""

    def __init__(self) -> None:
        self.asked: list[bytes] = []

    def session_keys(
        self, fleet_id: bytes, request: bytes, bundle: bytes, fleet_signature: bytes
    ) -> FleetPublicKeys:
        self.asked.append(request)
        return PinnedFleetTrust(FLEET.public()).session_keys(
            fleet_id, request, bundle, fleet_signature
        )


def test_key_protection_with_a_fleet_trust_checks_every_session() -> None:
    node = Node()
    trust = RecordingTrust()
    client = VaultClient(
        URL,
        lambda: TOKEN,
        fleet_trust=trust,
        http=httpx.Client(transport=httpx.MockTransport(FakeGateway(node))),
        protocol=CONFIG,
    )
    bk = BackupKey.generate()
    client.protect_with_pin("482916", bk)
    assert client.recover("482916") == bk
    assert client.change_secret("482916", Pin("135790")) == bk
    client.disable_escrow("135790")
    starts = [api.decode_request(r) for r in trust.asked]
    assert [type(r).__name__ for r in starts] == [
        "RegistrationStartRequest",  # enrol
        "LoginStartRequest",  # recover
        "LoginStartRequest",  # change secret: login ...
        "RegistrationStartRequest",  # ... and the new registration
        "LoginStartRequest",  # disable escrow
    ]
    assert "RecordingTrust" in repr(client)
    with pytest.raises(VerificationError):
        client.fleet_keys()  # only per-session keys with a fleet trust


def test_a_fleet_that_fails_the_trust_check_gets_nothing_more() -> None:
    node = Node(keys=OTHER_FLEET)  # a genuine fleet, but not the pinned one
    gateway = FakeGateway(node)
    client, _ = client_for(gateway)
    with pytest.raises(FleetKeyMismatch):
        client.protect_with_pin("482916", BackupKey.generate())
    assert [type(r) for r in node.sent] == [api.RegistrationStartRequest]
    assert node.fleet.state().record(b"alice") is None


def test_fleet_keys_and_fleet_trust_are_exclusive() -> None:
    with pytest.raises(InvalidParameter):
        VaultClient(
            URL,
            lambda: TOKEN,
            fleet_keys=FLEET.public(),
            fleet_trust=PinnedFleetTrust(FLEET.public()),
        )


def test_protect_with_password_applies_the_policy() -> None:
    client, _ = client_for(FakeGateway(Node()))
    with pytest.raises(ValueError, match="at least 8"):
        client.protect_with_password("short", BackupKey.generate())
    bk = BackupKey.generate()
    client.protect_with_password("a long enough passphrase", bk)
    assert client.recover("a long enough passphrase") == bk


# ------------------------------------------------------------------ device keystore


def test_device_keystore_round_trip_and_file_modes(tmp_path: Path) -> None:
    store = DeviceKeystore(tmp_path / "ks")
    assert store.load() is None
    bk = BackupKey.generate()
    store.store(bk)
    assert DeviceKeystore(tmp_path / "ks").load() == bk
    assert stat.S_IMODE((tmp_path / "ks").stat().st_mode) == 0o700
    for name in ("device.key", "backup-key.wrapped"):
        assert stat.S_IMODE((tmp_path / "ks" / name).stat().st_mode) == 0o600
    assert bk.expose_secret() not in (tmp_path / "ks" / "backup-key.wrapped").read_bytes()
    store.clear()
    assert store.load() is None


def test_device_keystore_refuses_tampering_and_loose_modes(tmp_path: Path) -> None:
    store = DeviceKeystore(tmp_path / "ks")
    store.store(BackupKey.generate())
    wrapped = tmp_path / "ks" / "backup-key.wrapped"
    data = bytearray(wrapped.read_bytes())
    data[-1] ^= 1
    wrapped.write_bytes(bytes(data))
    with pytest.raises(VerificationError):
        store.load()
    store.store(BackupKey.generate())
    (tmp_path / "ks" / "device.key").chmod(0o644)
    with pytest.raises(VerificationError, match="group or others"):
        store.load()


def test_device_key_can_live_elsewhere(tmp_path: Path) -> None:
    elsewhere = tmp_path / "token" / "device.key"
    store = DeviceKeystore(tmp_path / "ks", device_key_path=elsewhere)
    bk = BackupKey.generate()
    store.store(bk)
    assert elsewhere.exists()
    assert not (tmp_path / "ks" / "device.key").exists()
    elsewhere.unlink()
    with pytest.raises(VerificationError, match="missing"):
        store.load()


class StreamingGateway(httpx.BaseTransport):
    """Consumes upload bodies piece by piece, keeping only a digest (so memory measured
    is the SDK's)."""

    def __init__(self) -> None:
        self.size = 0
        self.digest = hashlib.sha256()
        self.announced: dict[str, object] = {}

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.endswith("/uploads"):
            self.announced = json.loads(request.read())
            return httpx.Response(200, json={"upload_id": "u", "offset": self.size})
        if request.method == "PUT":
            assert "Transfer-Encoding" not in request.headers  # a plain Content-Length body
            assert isinstance(request.stream, httpx.SyncByteStream)
            for piece in request.stream:
                self.size += len(piece)
                self.digest.update(piece)
            return httpx.Response(200, json={"offset": self.size})
        assert self.digest.hexdigest() == self.announced["sha256"]
        info = {"backup_id": "big", "size": self.size, "sha256": self.digest.hexdigest()}
        return httpx.Response(200, json=info | {"label": "", "created_at": 0})


def test_create_backup_memory_does_not_grow_with_the_backup(tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    with src.open("wb") as f:
        for _ in range(32):
            f.write(os.urandom(1 << 20))
    transport = StreamingGateway()
    client = VaultClient(
        URL,
        lambda: TOKEN,
        fleet_keys=FLEET.public(),
        http=httpx.Client(transport=transport),
    )
    tracemalloc.start()
    try:
        info = client.create_backup(src, "big", backup_key=BackupKey.generate())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.size > 32 << 20
    assert peak < 8 << 20  # chunk buffers only (measured: ~3 MiB for 32 or 200 MiB)
