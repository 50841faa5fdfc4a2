"""The gateway's OpenAPI document, as published in ``docs/api/openapi-v1.json``.

    python -m hsmvault.host.gateway.openapi > docs/api/openapi-v1.json

The document depends only on the routes, so it is built from an app whose fleet and
stores are placeholders that are never called. ``tests/host/test_openapi.py`` fails if
the committed file differs from :func:`openapi_json`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any, NoReturn

from hsmvault.fleet.fleet_keys import FleetPublicKeys
from hsmvault.host.fleet_client import NodeAnswer
from hsmvault.host.storage.base import BackupMeta, UploadMeta

from .app import create_app
from .auth import DevTokenIssuer
from .config import GatewayConfig

__all__ = ["openapi_document", "openapi_json"]


class _Placeholder:
    """Stands in for the fleet and the stores: building the spec never calls them."""

    public_keys: FleetPublicKeys | None = None

    def _never(self, *_args: object, **_kwargs: object) -> NoReturn:
        raise AssertionError("the OpenAPI placeholder was called")

    def call(
        self, request: bytes, *, prefer: int | None = None, failover: bool = True
    ) -> NodeAnswer:
        self._never()

    def append(self, key: str, offset: int, data: bytes) -> int:
        self._never()

    def size(self, key: str) -> int | None:
        self._never()

    def read(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        self._never()

    def delete(self, key: str) -> None:
        self._never()

    def create_upload(self, upload: UploadMeta) -> UploadMeta:
        self._never()

    def get_upload(self, user_id: bytes, backup_id: str, upload_id: str) -> UploadMeta | None:
        self._never()

    def commit_upload(self, upload: UploadMeta, committed_at: float) -> str | None:
        self._never()

    def get_backup(self, user_id: bytes, backup_id: str) -> BackupMeta | None:
        self._never()

    def list_backups(self, user_id: bytes) -> list[BackupMeta]:
        self._never()

    def delete_backup(self, user_id: bytes, backup_id: str) -> BackupMeta | None:
        self._never()

    def close(self) -> None:
        self._never()


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document of the v1 routes."""
    config = GatewayConfig(
        issuer_public_keys=(DevTokenIssuer().public_key_pem(),), issuer="spec-only"
    )
    placeholder = _Placeholder()
    app = create_app(
        config, fleets={"default": placeholder}, blobs=placeholder, metadata=placeholder
    )
    return app.openapi()


def openapi_json() -> str:
    """:func:`openapi_document` as stable, pretty JSON with a final newline."""
    return json.dumps(openapi_document(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main() -> None:
    sys.stdout.write(openapi_json())


if __name__ == "__main__":
    main()
