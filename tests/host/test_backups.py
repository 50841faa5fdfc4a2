"""/v1/backups: resumable, idempotent uploads; commit verifies size and SHA-256 and
switches atomically; list, get, delete. Every test runs against each storage pair
(in-memory fakes; filesystem + SQLite adapters when present)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest
from fastapi import FastAPI

from hsmvault.host.storage.base import BlobStore, MetadataStore

from .conftest import AppFactory, TestClient, client_for

Auth = Callable[[str], dict[str, str]]
Stores = tuple[BlobStore, MetadataStore]
OCTET = {"Content-Type": "application/octet-stream"}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def app(make_app: AppFactory, stores: Stores) -> FastAPI:
    return make_app(blobs=stores[0], metadata=stores[1], max_upload_chunk=1024)


@pytest.fixture
def client(app: FastAPI) -> TestClient:
    return client_for(app)


def _start(
    client: TestClient, auth: Auth, data: bytes, backup_id: str = "phone", label: str = "l"
) -> dict[str, object]:
    r = client.post(
        f"/v1/backups/{backup_id}/uploads",
        json={"size": len(data), "sha256": _sha(data), "label": label},
        headers=auth("alice"),
    )
    assert r.status_code == 200, r.text
    body: dict[str, object] = r.json()
    return body


def _put(
    client: TestClient, auth: Auth, upload_id: object, offset: int, chunk: bytes,
    backup_id: str = "phone", user: str = "alice",
) -> tuple[int, dict[str, object]]:  # fmt: skip
    r = client.put(
        f"/v1/backups/{backup_id}/uploads/{upload_id}",
        content=chunk,
        headers={**auth(user), **OCTET, "Upload-Offset": str(offset)},
    )
    return r.status_code, r.json()


def _commit(
    client: TestClient, auth: Auth, upload_id: object, backup_id: str = "phone", user: str = "alice"
) -> tuple[int, dict[str, object]]:
    r = client.post(f"/v1/backups/{backup_id}/uploads/{upload_id}/commit", headers=auth(user))
    return r.status_code, r.json()


def _upload(client: TestClient, auth: Auth, data: bytes, backup_id: str = "phone") -> None:
    up = _start(client, auth, data, backup_id)
    offset = int(str(up["offset"]))
    while offset < len(data):
        status, body = _put(client, auth, up["upload_id"], offset, data[offset : offset + 1000],
                            backup_id)  # fmt: skip
        assert status == 200, body
        offset = int(str(body["offset"]))
    status, body = _commit(client, auth, up["upload_id"], backup_id)
    assert status == 200, body


def _download(client: TestClient, auth: Auth, backup_id: str = "phone") -> bytes:
    r = client.get(f"/v1/backups/{backup_id}", headers=auth("alice"))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    content: bytes = r.content
    return content


def test_upload_in_chunks_then_list_get_delete(client: TestClient, auth: Auth) -> None:
    data = bytes(range(256)) * 10
    up = _start(client, auth, data, label="my phone")
    assert up["offset"] == 0
    offset = 0
    while offset < len(data):
        status, body = _put(client, auth, up["upload_id"], offset, data[offset : offset + 1000])
        assert status == 200
        offset = int(str(body["offset"]))
    status, backup = _commit(client, auth, up["upload_id"])
    assert status == 200
    assert backup["backup_id"] == "phone"
    assert backup["size"] == len(data)
    assert backup["sha256"] == _sha(data)
    assert backup["label"] == "my phone"
    listed = client.get("/v1/backups", headers=auth("alice")).json()
    assert listed == {"backups": [backup]}
    assert _download(client, auth) == data
    assert client.get("/v1/backups", headers=auth("bob")).json() == {"backups": []}
    assert client.get("/v1/backups/phone", headers=auth("bob")).status_code == 404
    assert client.delete("/v1/backups/phone", headers=auth("bob")).status_code == 404
    assert client.delete("/v1/backups/phone", headers=auth("alice")).status_code == 204
    assert client.get("/v1/backups/phone", headers=auth("alice")).status_code == 404
    assert client.get("/v1/backups", headers=auth("alice")).json() == {"backups": []}
    assert client.delete("/v1/backups/phone", headers=auth("alice")).status_code == 404


def test_same_size_and_sha_resumes_the_same_upload_at_its_offset(
    client: TestClient, auth: Auth
) -> None:
    data = b"x" * 1500 + b"y" * 500
    first = _start(client, auth, data)
    assert _put(client, auth, first["upload_id"], 0, data[:700]) == (200, {"offset": 700})
    again = _start(client, auth, data)
    assert again == {"upload_id": first["upload_id"], "offset": 700}
    other = _start(client, auth, data[:-1] + b"z")  # another digest: another upload
    assert other["upload_id"] != first["upload_id"]
    assert other["offset"] == 0
    assert _put(client, auth, first["upload_id"], 700, data[700:1700])[0] == 200
    assert _put(client, auth, first["upload_id"], 1700, data[1700:])[0] == 200
    assert _commit(client, auth, first["upload_id"])[0] == 200
    assert _download(client, auth) == data


def test_wrong_offset_is_409_with_the_current_offset(client: TestClient, auth: Auth) -> None:
    data = b"a" * 2000
    up = _start(client, auth, data)
    assert _put(client, auth, up["upload_id"], 0, data[:500])[0] == 200
    for wrong in (0, 400, 501, 1999):
        status, body = _put(client, auth, up["upload_id"], wrong, data[wrong : wrong + 10])
        assert status == 409
        assert body["offset"] == 500
        assert body["error"] == "offset_mismatch"
    r = client.put(
        f"/v1/backups/phone/uploads/{up['upload_id']}",
        content=b"b",
        headers={**auth("alice"), **OCTET, "Upload-Offset": "0"},
    )
    assert r.headers["Upload-Offset"] == "500"


def test_chunk_past_the_declared_size_is_400(client: TestClient, auth: Auth) -> None:
    up = _start(client, auth, b"a" * 10)
    assert _put(client, auth, up["upload_id"], 0, b"a" * 11)[0] == 400


def test_chunk_over_the_limit_is_413(client: TestClient, auth: Auth) -> None:
    up = _start(client, auth, b"a" * 5000)
    assert _put(client, auth, up["upload_id"], 0, b"a" * 1025)[0] == 413  # max 1024 here


def test_commit_of_an_incomplete_upload_is_409(client: TestClient, auth: Auth) -> None:
    up = _start(client, auth, b"a" * 100)
    assert _put(client, auth, up["upload_id"], 0, b"a" * 40)[0] == 200
    status, body = _commit(client, auth, up["upload_id"])
    assert status == 409
    assert body["offset"] == 40


def test_commit_with_a_wrong_digest_is_400_and_the_previous_backup_stays(
    client: TestClient, auth: Auth
) -> None:
    old = b"the previous backup" * 20
    _upload(client, auth, old)
    new = b"n" * 300
    up = _start(client, auth, new)
    tampered = b"m" + new[1:]
    assert _put(client, auth, up["upload_id"], 0, tampered)[0] == 200
    status, body = _commit(client, auth, up["upload_id"])
    assert status == 400
    assert body["error"] == "digest_mismatch"
    assert _download(client, auth) == old
    listed = client.get("/v1/backups", headers=auth("alice")).json()["backups"]
    assert [(b["size"], b["sha256"]) for b in listed] == [(len(old), _sha(old))]
    # the upload restarts from 0 and can then succeed
    assert _start(client, auth, new) == {"upload_id": up["upload_id"], "offset": 0}
    assert _put(client, auth, up["upload_id"], 0, new)[0] == 200
    assert _commit(client, auth, up["upload_id"])[0] == 200
    assert _download(client, auth) == new


def test_commit_replaces_the_previous_backup_and_deletes_its_blob(
    client: TestClient, auth: Auth, stores: Stores
) -> None:
    blobs, metadata = stores
    _upload(client, auth, b"first" * 100)
    first = client.get("/v1/backups", headers=auth("alice")).json()["backups"][0]
    [old_meta] = metadata.list_backups(b"alice")
    _upload(client, auth, b"second" * 100)
    [new_meta] = metadata.list_backups(b"alice")
    assert new_meta.blob_key != old_meta.blob_key
    assert blobs.size(old_meta.blob_key) is None
    assert _download(client, auth) == b"second" * 100
    assert first["sha256"] == _sha(b"first" * 100)


def test_repeated_commit_returns_the_same_backup(client: TestClient, auth: Auth) -> None:
    data = b"d" * 50
    up = _start(client, auth, data)
    assert _put(client, auth, up["upload_id"], 0, data)[0] == 200
    first = _commit(client, auth, up["upload_id"])
    assert first[0] == 200
    assert _commit(client, auth, up["upload_id"]) == first
    assert _commit(client, auth, "0" * 32)[0] == 404


def test_crash_before_commit_leaves_the_previous_backup_and_the_upload_resumes(
    make_app: AppFactory, stores: Stores, auth: Auth
) -> None:
    """A gateway restart mid-upload (a new app over the same stores)."""
    client = client_for(make_app(blobs=stores[0], metadata=stores[1]))
    old, new = b"old" * 100, b"new" * 100
    _upload(client, auth, old)
    up = _start(client, auth, new)
    assert _put(client, auth, up["upload_id"], 0, new[:120])[0] == 200
    del client  # "crash"
    client = client_for(make_app(blobs=stores[0], metadata=stores[1]))
    assert _download(client, auth) == old
    assert _start(client, auth, new) == {"upload_id": up["upload_id"], "offset": 120}
    assert _put(client, auth, up["upload_id"], 120, new[120:])[0] == 200
    assert _commit(client, auth, up["upload_id"])[0] == 200
    assert _download(client, auth) == new


def test_uploads_are_private_to_their_user(client: TestClient, auth: Auth) -> None:
    up = _start(client, auth, b"a" * 10)
    assert _put(client, auth, up["upload_id"], 0, b"a" * 10, user="bob")[0] == 404
    assert _commit(client, auth, up["upload_id"], user="bob")[0] == 404
    assert _put(client, auth, up["upload_id"], 0, b"a" * 10, backup_id="other")[0] == 404


@pytest.mark.parametrize(
    ("backup_id", "json_body"),
    [
        ("bad.id", {"size": 1, "sha256": "0" * 64}),
        ("x" * 65, {"size": 1, "sha256": "0" * 64}),
        ("ok", {"size": 0, "sha256": "0" * 64}),
        ("ok", {"size": 1, "sha256": "z" * 64}),
        ("ok", {"size": 1, "sha256": "0" * 64, "label": "a\x00b"}),
        ("ok", {"size": 1, "sha256": "0" * 64, "extra": 1}),
        ("ok", {"size": 1}),
    ],
)
def test_invalid_upload_requests_are_422(
    client: TestClient, auth: Auth, backup_id: str, json_body: dict[str, object]
) -> None:
    r = client.post(f"/v1/backups/{backup_id}/uploads", json=json_body, headers=auth("alice"))
    assert r.status_code == 422
    assert set(r.json()) == {"error", "detail"}


def test_backup_over_the_size_limit_is_413(make_app: AppFactory, auth: Auth) -> None:
    client = client_for(make_app(max_backup_size=100))
    r = client.post(
        "/v1/backups/b/uploads", json={"size": 101, "sha256": "0" * 64}, headers=auth("alice")
    )
    assert r.status_code == 413


def test_uppercase_digest_is_accepted(client: TestClient, auth: Auth) -> None:
    data = b"upper"
    r = client.post(
        "/v1/backups/u/uploads",
        json={"size": len(data), "sha256": _sha(data).upper()},
        headers=auth("alice"),
    )
    assert r.status_code == 200
    upload_id = r.json()["upload_id"]
    assert _put(client, auth, upload_id, 0, data, backup_id="u")[0] == 200
    status, body = _commit(client, auth, upload_id, backup_id="u")
    assert status == 200
    assert body["sha256"] == _sha(data)
