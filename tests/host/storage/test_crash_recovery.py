"""The gateway's upload protocol on every BlobStore x MetadataStore pair: a crash
after appending but before commit leaves the previous backup current and readable, and
the interrupted upload resumes where it stopped."""

from __future__ import annotations

import hashlib

from hsmvault.host.storage.base import UploadMeta

from .conftest import BlobOpener, MetaOpener

USER = b"user-1"


def _upload(upload_id: str, content: bytes) -> UploadMeta:
    return UploadMeta(
        user_id=USER,
        backup_id="phone",
        upload_id=upload_id,
        blob_key=f"users/{USER.hex()}/backups/phone/{upload_id}",
        size=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
        label="",
        created_at=1.0,
    )


def test_crash_between_append_and_commit(
    open_blob_store: BlobOpener, open_metadata_store: MetaOpener
) -> None:
    blobs, meta = open_blob_store(), open_metadata_store()
    old = b"previous backup " * 1000
    v1 = _upload("gen-1", old)
    meta.create_upload(v1)
    blobs.append(v1.blob_key, 0, old)
    assert meta.commit_upload(v1, 10.0) is None

    new = b"the new backup " * 2000
    v2 = _upload("gen-2", new)
    assert meta.create_upload(v2) == v2
    half = len(new) // 2
    blobs.append(v2.blob_key, 0, new[:half])
    # Crash: neither store is closed; the restarted gateway opens both again.

    blobs, meta = open_blob_store(), open_metadata_store()
    current = meta.get_backup(USER, "phone")
    assert current is not None
    assert current.blob_key == v1.blob_key
    assert b"".join(blobs.read(current.blob_key)) == old

    # The client retries create_upload (same size and digest) and resumes at the size.
    resumed = meta.create_upload(_upload("gen-2-retry", new))
    assert resumed == v2
    offset = blobs.size(resumed.blob_key)
    assert offset == half
    assert blobs.append(resumed.blob_key, offset, new[offset:]) == len(new)
    replaced = meta.commit_upload(resumed, 20.0)
    assert replaced == v1.blob_key
    blobs.delete(replaced)
    current = meta.get_backup(USER, "phone")
    assert current is not None
    assert b"".join(blobs.read(current.blob_key)) == new
    assert blobs.size(v1.blob_key) is None
