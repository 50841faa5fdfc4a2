"""A :class:`~hsmvault.host.storage.base.BlobStore` on the S3 protocol (boto3 client).

S3 objects cannot be appended to, and multipart uploads need parts of at least 5 MiB
(except the last), while the gateway accepts chunks of any size up to 8 MiB. So a blob
here is a sequence of **numbered part objects**, one per successful ``append``::

    <prefix><key>/~0000000000      first chunk (may be empty: an empty blob)
    <prefix><key>/~0000000001      second chunk
    ...

The ``~`` can never start a key segment (see :mod:`.validation`), so the parts of key
``a`` and the parts of key ``a/b`` never mix under one listing prefix. The blob's size is
the sum of its parts' sizes and ``read`` streams the parts in order, each in
``chunk_size`` pieces (``StreamingBody.iter_chunks``), so memory stays bounded by one
chunk on reads and by the caller's ``data`` on appends; nothing buffers a whole blob.

Atomic appends: ``append`` lists the parts, checks ``offset`` against their total size,
then writes part ``n`` (the next number) with ``If-None-Match: *`` (S3 conditional
writes). Two appenders that both saw ``n`` parts race on the same object name and
exactly one wins; the loser gets :class:`InvalidParameter` like any wrong offset.
Within one process a per-key lock serializes appends as well (this also covers S3
emulators whose conditional writes are not atomic).

Limits (documented, accepted):

* Each ``append``/``size``/``read`` lists the parts: one LIST request per 1,000 parts.
  With the gateway's chunks of 1 to 8 MiB that is one request up to ~1 to 8 GB a blob;
  many tiny chunks make appends slower (cost grows with the number of parts).
* ``read`` makes one GET per part.
* Needs a store with conditional writes (``If-None-Match`` on ``PutObject``): AWS S3
  since 2024, MinIO, recent Ceph RGW, moto. Without them, concurrent appends from
  *different processes* to the same key are not detected (one process is still safe).
* A ``delete`` racing an ``append`` to the same key may leave a stray part behind; the
  gateway never does that (it deletes only replaced or abandoned generations).
* No compaction: a committed blob stays as its parts (a server-side compose with
  ``UploadPartCopy`` would need ≥5 MiB parts, which small appends do not guarantee).
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from botocore.exceptions import ClientError  # type: ignore[import-untyped]

from hsmvault.errors import InvalidParameter
from hsmvault.host.storage.validation import check_blob_key, check_chunk_size, is_valid_blob_key

__all__ = ["S3BlobStore", "S3Client"]

_PART_MARK = "~"
_SEQ_DIGITS = 10
_DELETE_BATCH = 1000
_LOCK_STRIPES = 64
_PRECONDITION_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "412"})
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


class S3Client(Protocol):
    """The subset of a boto3 S3 client this store uses (boto3 ships no types)."""

    def put_object(self, **kwargs: Any) -> Mapping[str, Any]: ...

    def get_object(self, **kwargs: Any) -> Mapping[str, Any]: ...

    def list_objects_v2(self, **kwargs: Any) -> Mapping[str, Any]: ...

    def delete_objects(self, **kwargs: Any) -> Mapping[str, Any]: ...


@dataclass(frozen=True, slots=True)
class _Part:
    seq: int
    name: str
    size: int


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping):
        error = response.get("Error")
        if isinstance(error, Mapping):
            return str(error.get("Code", ""))
    return ""


class S3BlobStore:
    """Blobs as numbered part objects in ``bucket`` under ``prefix`` (``""`` or a
    grammar-valid key followed by ``/``). ``client`` is a boto3 S3 client (thread-safe)."""

    def __init__(self, bucket: str, client: S3Client, *, prefix: str = "") -> None:
        if not isinstance(bucket, str) or not 3 <= len(bucket) <= 63:
            raise InvalidParameter("bucket name must be 3..63 characters")
        if prefix and not (prefix.endswith("/") and is_valid_blob_key(prefix[:-1])):
            raise InvalidParameter("prefix must be empty or a valid key followed by '/'")
        self._bucket = bucket
        self._client = client
        self._prefix = prefix
        self._locks = [threading.Lock() for _ in range(_LOCK_STRIPES)]

    # -- BlobStore -------------------------------------------------------------------

    def append(self, key: str, offset: int, data: bytes) -> int:
        base = self._base(key)
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise InvalidParameter("offset must be a non-negative integer")
        with self._locks[zlib.crc32(key.encode()) % _LOCK_STRIPES]:
            parts = self._list_parts(base)
            current = sum(p.size for p in parts)
            if offset != current:
                raise InvalidParameter(f"append offset {offset} != current size {current}")
            if parts and not data:
                return current  # nothing to store; an empty first part marks existence
            seq = parts[-1].seq + 1 if parts else 0
            try:
                self._client.put_object(
                    Bucket=self._bucket,
                    Key=self._part_name(base, seq),
                    Body=data,
                    IfNoneMatch="*",
                    ContentType="application/octet-stream",
                )
            except ClientError as exc:
                if _error_code(exc) in _PRECONDITION_CODES:
                    raise InvalidParameter("concurrent append at the same offset") from None
                raise
            return current + len(data)

    def size(self, key: str) -> int | None:
        parts = self._list_parts(self._base(key))
        return sum(p.size for p in parts) if parts else None

    def read(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """List now (a missing key raises :class:`KeyError` here, not on iteration), then
        stream the parts in order."""
        check_chunk_size(chunk_size)
        parts = self._list_parts(self._base(key))
        if not parts:
            raise KeyError(key)
        return self._stream(key, parts, chunk_size)

    def delete(self, key: str) -> None:
        parts = self._list_parts(self._base(key))
        for start in range(0, len(parts), _DELETE_BATCH):
            batch = parts[start : start + _DELETE_BATCH]
            self._client.delete_objects(
                Bucket=self._bucket,
                Delete={"Objects": [{"Key": p.name} for p in batch], "Quiet": True},
            )

    # -- helpers ---------------------------------------------------------------------

    def _base(self, key: str) -> str:
        return f"{self._prefix}{check_blob_key(key)}/{_PART_MARK}"

    @staticmethod
    def _part_name(base: str, seq: int) -> str:
        return f"{base}{seq:0{_SEQ_DIGITS}d}"

    def _list_parts(self, base: str) -> list[_Part]:
        parts: list[_Part] = []
        kwargs: dict[str, Any] = {"Bucket": self._bucket, "Prefix": base}
        while True:
            page = self._client.list_objects_v2(**kwargs)
            for obj in page.get("Contents", ()):
                name = str(obj["Key"])
                suffix = name[len(base) :]
                if len(suffix) == _SEQ_DIGITS and suffix.isdigit() and suffix.isascii():
                    parts.append(_Part(int(suffix), name, int(obj["Size"])))
            if not page.get("IsTruncated"):
                break
            kwargs["ContinuationToken"] = page["NextContinuationToken"]
        parts.sort(key=lambda p: p.seq)
        return parts

    def _stream(self, key: str, parts: list[_Part], chunk_size: int) -> Iterator[bytes]:
        for part in parts:
            if part.size == 0:
                continue
            try:
                response = self._client.get_object(Bucket=self._bucket, Key=part.name)
            except ClientError as exc:
                if _error_code(exc) in _MISSING_CODES:
                    raise KeyError(key) from None  # deleted while being read
                raise
            body = response["Body"]
            try:
                yield from body.iter_chunks(chunk_size)
            finally:
                body.close()
