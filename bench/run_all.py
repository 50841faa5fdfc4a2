"""Run every benchmark in turn: ``python -m bench.run_all`` (what ``make bench`` does)."""

from __future__ import annotations

import runpy
import sys

BENCHMARKS = [
    "bench.bench_opaque",
    "bench.bench_backup",
    "bench.bench_bundle",
    "bench.bench_fleet",
    "bench.bench_e2e",
]


def main() -> int:
    worst = 0
    for name in BENCHMARKS:
        print(f"== {name}", flush=True)
        sys.argv = [name]
        try:
            runpy.run_module(name, run_name="__main__")
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else 1
            worst = max(worst, code)
    return worst


if __name__ == "__main__":
    sys.exit(main())
