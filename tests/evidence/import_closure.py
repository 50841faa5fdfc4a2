"""What a process of ours loads, and whether the measurement covers it: shared by the
measurement and ceremony tests (every module a node loads must be measured)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hsmvault.evidence.measurement import MEASURED_SOURCES, default_source_root

REPO = Path(__file__).resolve().parents[2]


def loaded_hsmvault_files(*modules: str) -> list[str]:
    """Import ``modules`` in a fresh interpreter; the file of every ``hsmvault`` module it
    then holds, relative to the source root (posix). Fails if the import fails."""
    code = (
        "import sys\n"
        f"import {', '.join(modules)}\n"
        "for name, module in sorted(sys.modules.items()):\n"
        "    if name == 'hsmvault' or name.startswith('hsmvault.'):\n"
        "        print(module.__file__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    root = default_source_root()
    return [Path(line).resolve().relative_to(root).as_posix() for line in done.stdout.split()]


def is_measured(relative: str) -> bool:
    """Whether the source-root-relative file ``relative`` is in MEASURED_SOURCES (listed
    itself, or under a listed directory)."""
    return any(
        relative == entry or (not entry.endswith(".py") and relative.startswith(entry + "/"))
        for entry in MEASURED_SOURCES
    )
