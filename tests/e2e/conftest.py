"""End-to-end tests: ``hsmvault up`` and the CLI as separate OS processes over real
HTTP (tests/e2e). Every process a test starts is stopped in its teardown."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: real processes and real HTTP (tests/e2e)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e/" in str(item.path):
            item.add_marker(pytest.mark.e2e)
