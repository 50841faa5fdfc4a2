"""Fixtures of the storage contract suite: every BlobStore and every MetadataStore,
each backed by the real thing (a directory, a ``moto_server`` process, a SQLite file, a
PostgreSQL server). Each store fixture yields an *opener*: calling it again opens a
second, independent store on the same backing data (to simulate a restart)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from hsmvault.host.storage.base import BlobStore, MetadataStore
from hsmvault.host.storage.filesystem import FilesystemBlobStore
from hsmvault.host.storage.postgres import PostgresMetadataStore
from hsmvault.host.storage.s3 import S3BlobStore
from hsmvault.host.storage.sqlite import SqliteMetadataStore

from .servers import MotoServer, PostgresServer, run_moto_server, run_postgres

BlobOpener = Callable[[], BlobStore]
MetaOpener = Callable[[], MetadataStore]

BLOB_BACKENDS = ["filesystem", "s3"]
META_BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    with run_moto_server() as server:
        yield server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    with run_postgres() as server:
        yield server


@pytest.fixture(scope="session")
def s3_client(moto_server: MotoServer) -> object:
    return moto_server.client()


def _new_bucket(client: object) -> str:
    bucket = f"t-{uuid.uuid4().hex}"
    client.create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    return bucket


def make_blob_opener(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> BlobOpener:
    if backend == "filesystem":
        root = tmp_path / "blobs"
        return lambda: FilesystemBlobStore(root)
    if backend == "s3":
        client = request.getfixturevalue("s3_client")
        bucket = _new_bucket(client)
        return lambda: S3BlobStore(bucket, client, prefix="vault/")
    raise AssertionError(backend)


def _new_schema(server: PostgresServer) -> str:
    """A DSN whose ``search_path`` is a fresh schema (much faster than a database per
    test, and it shows the store works outside ``public``)."""
    name = f"t_{uuid.uuid4().hex}"
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{name}"'.encode())
    return f"{server.dsn()} options='-csearch_path={name}'"


def contract_stores(
    request: pytest.FixtureRequest, tmp_path: Path, memory: Callable[[], object]
) -> Iterator[object]:
    """The store of a contract suite parametrized over ``"memory"`` and
    :data:`META_BACKENDS`: ``memory()`` (the gateway tests' fake), or a fresh SQLite or
    PostgreSQL metadata store, closed when the fixture is torn down. Yields exactly once;
    the fixture checks the store against its Protocol."""
    if request.param == "memory":
        yield memory()
        return
    opened: MetadataStore
    if request.param == "sqlite":
        opened = SqliteMetadataStore(tmp_path / "meta.sqlite3")
    else:
        assert request.param == "postgres"
        opened = PostgresMetadataStore(_new_schema(request.getfixturevalue("postgres_server")))
    yield opened
    opened.close()


@pytest.fixture(params=BLOB_BACKENDS)
def open_blob_store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobOpener:
    """Opens a BlobStore of the parametrized backend on this test's fresh backing."""
    return make_blob_opener(str(request.param), request, tmp_path)


@pytest.fixture
def blob_store(open_blob_store: BlobOpener) -> BlobStore:
    return open_blob_store()


@pytest.fixture(params=META_BACKENDS)
def open_metadata_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetaOpener]:
    """Opens a MetadataStore of the parametrized backend on this test's fresh database;
    every store opened is closed at teardown."""
    opened: list[MetadataStore] = []
    if request.param == "sqlite":
        path = tmp_path / "meta" / "vault.sqlite3"

        def make() -> MetadataStore:
            return SqliteMetadataStore(path)

    else:
        dsn = _new_schema(request.getfixturevalue("postgres_server"))

        def make() -> MetadataStore:
            return PostgresMetadataStore(dsn)

    def opener() -> MetadataStore:
        store = make()
        opened.append(store)
        return store

    yield opener
    for store in opened:
        store.close()


@pytest.fixture
def metadata_store(open_metadata_store: MetaOpener) -> MetadataStore:
    return open_metadata_store()
