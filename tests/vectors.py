"""Loading the official test vectors from ``../shared/vectors`` (see its README for
provenance). ``HSMVAULT_VECTORS`` may point elsewhere. A missing vector file is an
error, never a skip: a suite that silently ran no vectors would prove nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parent.parent


def vectors_dir() -> Path:
    """The folder holding the vector files; raises if it cannot be found."""
    env = os.environ.get("HSMVAULT_VECTORS")
    candidates = [Path(env)] if env else []
    candidates += [_REPO.parent / "shared" / "vectors", _REPO / "tests" / "data" / "vectors"]
    for c in candidates:
        if (c / "README.md").is_file():
            return c
    raise FileNotFoundError(
        "official test vectors not found; looked in: " + ", ".join(str(c) for c in candidates)
    )


def load_vectors(name: str) -> Any:
    """Parse one vector file, e.g. ``load_vectors("oprf_rfc9497.json")``."""
    with (vectors_dir() / name).open(encoding="utf-8") as f:
        return json.load(f)


def unhex(value: str) -> bytes:
    return bytes.fromhex(value)
