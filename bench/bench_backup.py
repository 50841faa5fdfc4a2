"""Throughput and memory of the backup stream format against raw AES-GCM.

Run::

    .venv/bin/python -m bench.bench_backup [--size-gib 1] [--chunk-size 1048576]
                                           [--repeat 5] [--tmpdir DIR] [--json]

What is measured (each direction in its own fresh child process):

* **ours**: :func:`encrypt_stream` from a synthetic source (``readinto`` copies from a
  pattern buffer, so no input is ever held whole) into a sink that discards the bytes;
  :func:`decrypt_stream` from a ciphertext file (written beforehand, outside the timing,
  to ``--tmpdir``, by default ``/dev/shm`` when it exists) into a discarding sink.
* **raw**: in the same child process, ``cryptography``'s ``AESGCM.encrypt`` /
  ``AESGCM.decrypt`` over the same chunk buffers (same chunk size, same number of chunks,
  same associated-data length), with no framing and no I/O; also ``encrypt_into`` /
  ``decrypt_into`` (no output allocation), the primitive's ceiling.
* **read**: the same input reads as ours, without cryptography. ``ceiling`` =
  ``1 / (1/raw_into + 1/read)`` is what a zero-overhead implementation doing the same
  reads could reach.
* **timing**: ours and every baseline alternate ``--repeat`` times and the best run of
  each is kept, so drift on a shared machine hits all alike. Ratios are given by
  wall-clock time and by process CPU time (``time.process_time``: user + system time of
  the child, which ignores time the child spent descheduled by other load).
* **memory**: peak RSS growth of the child during the first run of our operation:
  ``ru_maxrss`` (``resource.getrusage``) after it minus the child's current RSS
  (``/proc/self/statm``) just before it, after imports and after the harness's own
  buffers exist. That is an upper bound on the memory our operation added.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cryptography
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hsmvault.crypto.backup_stream import (
    DEFAULT_CHUNK_SIZE,
    FRAME_LEN,
    HEADER_LEN,
    TAG_LEN,
    BackupKey,
    decrypt_stream,
    encrypt_stream,
)

MiB = 1024 * 1024
GiB = 1024 * MiB
BENCH_KEY = BackupKey(bytes(range(32)))
MEMORY_METHOD = (
    "peak RSS growth of a fresh child process: ru_maxrss after the operation minus "
    "current RSS (/proc/self/statm) just before it (an upper bound)"
)
SERIES = ("ours", "raw", "raw_into", "read")


class SyntheticSource(io.RawIOBase):
    """``size`` bytes of a repeating random pattern, served by ``readinto``; O(chunk) memory."""

    def __init__(self, size: int, period: int) -> None:
        self._size = self._left = size
        self._period = period
        self._offset = 0
        self._pattern = memoryview(bytearray(os.urandom(2 * period)))

    def rewind(self) -> None:
        """Serve the same ``size`` bytes again (reuses the pattern buffer)."""
        self._left = self._size
        self._offset = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = min(len(view), self._left, self._period)
        view[:n] = self._pattern[self._offset : self._offset + n]
        self._offset = (self._offset + n) % self._period
        self._left -= n
        return n


class NullSink(io.RawIOBase):
    """Counts and discards."""

    def __init__(self) -> None:
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, buffer: Any) -> int:
        n = memoryview(buffer).nbytes
        self.count += n
        return n


def _rss_now_kib() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


def _peak_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def _chunk_lengths(size: int, chunk_size: int) -> list[tuple[int, int]]:
    """(length, how many) of the chunks a file of ``size`` bytes has."""
    full, rest = divmod(size, chunk_size)
    if rest == 0 and full > 0:
        return [(chunk_size, full)]
    return [(chunk_size, full), (rest, 1)]


def _raw(mode: str, size: int, chunk_size: int, into: bool) -> Callable[[], None]:
    """Prepare buffers; return the loop that runs the bare primitive over ``size`` bytes."""
    aead = AESGCM(bytes(32))
    ad = bytes(HEADER_LEN + FRAME_LEN)
    pattern = memoryview(bytearray(os.urandom(chunk_size)))
    out = memoryview(bytearray(chunk_size + TAG_LEN))
    plan = []
    for length, count in _chunk_lengths(size, chunk_size):
        sealed = memoryview(aead.encrypt(bytes(12), pattern[:length], ad))
        plan.append((length, count, sealed))

    def encrypt() -> None:
        nonce = bytearray(12)
        index = 0
        for length, count, _ in plan:
            data, dest = pattern[:length], out[: length + TAG_LEN]
            for _ in range(count):
                struct.pack_into(">IB", nonce, 7, index, 0)
                if into:
                    aead.encrypt_into(nonce, data, ad, dest)
                else:
                    aead.encrypt(nonce, data, ad)
                index += 1

    def decrypt() -> None:
        nonce = bytes(12)
        for length, count, sealed in plan:
            dest = out[:length]
            for _ in range(count):
                if into:
                    aead.decrypt_into(nonce, sealed, ad, dest)
                else:
                    aead.decrypt(nonce, sealed, ad)

    return encrypt if mode == "encrypt" else decrypt


def _measure(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def _child(mode: str, size: int, chunk_size: int, path: str | None, repeat: int) -> dict[str, Any]:
    """Runs in a fresh interpreter: the memory probe, then the interleaved timings."""
    source = SyntheticSource(size, chunk_size)
    read_buf = memoryview(bytearray(FRAME_LEN + chunk_size + TAG_LEN))
    outputs: list[int] = []

    def ours() -> None:
        sink = NullSink()
        if mode == "encrypt":
            source.rewind()
            encrypt_stream(BENCH_KEY, source, sink, chunk_size=chunk_size)  # type: ignore[arg-type]
        else:
            assert path is not None
            with open(path, "rb") as src:
                decrypt_stream(BENCH_KEY, src, sink)  # type: ignore[arg-type]
        outputs.append(sink.count)

    def read() -> None:
        if mode == "encrypt":
            source.rewind()
            while source.readinto(read_buf[:chunk_size]):
                pass
        else:
            assert path is not None
            with open(path, "rb") as src:
                while src.readinto(read_buf):
                    pass

    rss_before = _rss_now_kib()
    first = _measure(ours)
    rss_growth_kib = _peak_rss_kib() - rss_before
    runs: dict[str, Callable[[], None]] = {
        "ours": ours,
        "raw": _raw(mode, size, chunk_size, into=False),
        "raw_into": _raw(mode, size, chunk_size, into=True),
        "read": read,
    }
    wall: dict[str, list[float]] = {name: [] for name in SERIES}
    cpu: dict[str, list[float]] = {name: [] for name in SERIES}
    wall["ours"].append(first[0])
    cpu["ours"].append(first[1])
    for i in range(repeat):
        for name, fn in runs.items():
            if name == "ours" and i == 0:
                continue
            w, c = _measure(fn)
            wall[name].append(w)
            cpu[name].append(c)
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "rss_growth_kib": rss_growth_kib,
        "output_bytes": outputs[0],
    }


def _run_child(mode: str, size: int, chunk_size: int, path: str | None, repeat: int) -> Any:
    cmd = [sys.executable, "-m", "bench.bench_backup", "--child", mode]
    cmd += ["--size-bytes", str(size), "--chunk-size", str(chunk_size), "--repeat", str(repeat)]
    if path is not None:
        cmd += ["--path", path]
    repo = Path(__file__).resolve().parent.parent
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=repo)
    return json.loads(done.stdout)


def _summarise(size: int, child: dict[str, Any]) -> dict[str, Any]:
    mib = size / MiB
    summary: dict[str, Any] = {}
    for clock in ("wall", "cpu"):
        best = {name: min(child[f"{clock}_s"][name]) for name in SERIES}
        rate = {name: mib / best[name] for name in SERIES}
        ceiling = mib / (best["raw_into"] + best["read"])
        summary[clock] = {
            **{f"{name}_mib_s": round(rate[name], 1) for name in SERIES},
            "ceiling_mib_s": round(ceiling, 1),
            "ratio_vs_raw": round(rate["ours"] / rate["raw"], 3),
            "ratio_vs_raw_into": round(rate["ours"] / rate["raw_into"], 3),
            "ratio_vs_ceiling": round(rate["ours"] / ceiling, 3),
        }
    summary["peak_rss_growth_mib"] = round(child["rss_growth_kib"] / 1024, 1)
    summary["output_bytes"] = child["output_bytes"]
    summary["all_wall_s"] = {k: [round(x, 4) for x in v] for k, v in child["wall_s"].items()}
    return summary


def _default_tmpdir() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


def _print_table(report: dict[str, Any]) -> None:
    size, cs = report["plaintext_bytes"], report["chunk_size"]
    print(
        f"backup stream v1: {size / GiB:g} GiB plaintext, chunk {cs // 1024} KiB, best of "
        f"{report['repeat']}, cryptography {report['cryptography']}, Python {report['python']}"
    )
    print("\nthroughput, MiB/s of plaintext (wall clock)")
    print(f"{'':9}{'ours':>8}{'raw':>8}{'raw_into':>10}{'read':>8}{'ceiling':>9}")
    for name in ("encrypt", "decrypt"):
        w = report[name]["wall"]
        print(
            f"{name:9}{w['ours_mib_s']:>8.0f}{w['raw_mib_s']:>8.0f}{w['raw_into_mib_s']:>10.0f}"
            f"{w['read_mib_s']:>8.0f}{w['ceiling_mib_s']:>9.0f}"
        )
    print("\nratios (goal: ours/raw >= 0.8) and memory (goal: <= 64 MiB)")
    print(f"{'':9}{'ours/raw':>9}{'ours/raw':>9}{'ours/into':>10}{'ours/ceil':>10}{'peak RSS':>10}")
    print(f"{'':9}{'wall':>9}{'CPU':>9}{'wall':>10}{'wall':>10}{'+MiB':>10}")
    for name in ("encrypt", "decrypt"):
        r = report[name]
        w, c = r["wall"], r["cpu"]
        print(
            f"{name:9}{w['ratio_vs_raw']:>9.3f}{c['ratio_vs_raw']:>9.3f}"
            f"{w['ratio_vs_raw_into']:>10.3f}{w['ratio_vs_ceiling']:>10.3f}"
            f"{r['peak_rss_growth_mib']:>10.1f}"
        )
    print(
        "\nours:     encrypt_stream from a synthetic readinto source; decrypt_stream from the "
        f"ciphertext file in {report['ciphertext_file_dir']}; both into a discarding sink"
    )
    print("raw:      AESGCM.encrypt/decrypt over same-size chunk buffers, same process, no I/O")
    print("raw_into: AESGCM.encrypt_into/decrypt_into over the same buffers")
    print("read:     ours' input reads alone; ceiling = 1/(1/raw_into + 1/read)")
    print("CPU:      ratio of process CPU times (user+sys), insensitive to other load")
    print(f"memory:   {MEMORY_METHOD}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark the backup stream format.")
    parser.add_argument("--size-gib", type=float, default=1.0, help="plaintext size (GiB)")
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    parser.add_argument("--repeat", type=int, default=5, help="best of N interleaved runs")
    parser.add_argument("--tmpdir", default=None, help="where the ciphertext file goes")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--child", choices=["encrypt", "decrypt"], help=argparse.SUPPRESS)
    parser.add_argument("--size-bytes", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        result = _child(args.child, args.size_bytes, args.chunk_size, args.path, args.repeat)
        print(json.dumps(result))
        return 0

    size = int(args.size_gib * GiB)
    chunk_size = args.chunk_size
    enc_child = _run_child("encrypt", size, chunk_size, None, args.repeat)

    tmpdir = args.tmpdir or _default_tmpdir()
    fd, path = tempfile.mkstemp(prefix="hsmvault-bench-", suffix=".hvb", dir=tmpdir)
    try:
        with os.fdopen(fd, "wb") as f:
            source = SyntheticSource(size, chunk_size)
            encrypt_stream(BENCH_KEY, source, f, chunk_size=chunk_size)  # type: ignore[arg-type]
        dec_child = _run_child("decrypt", size, chunk_size, path, args.repeat)
    finally:
        os.unlink(path)

    report: dict[str, Any] = {
        "plaintext_bytes": size,
        "chunk_size": chunk_size,
        "repeat": args.repeat,
        "encrypt": _summarise(size, enc_child),
        "decrypt": _summarise(size, dec_child),
        "goals": {"ratio_vs_raw": 0.8, "peak_rss_growth_mib": 64},
        "memory_method": MEMORY_METHOD,
        "ciphertext_file_dir": tmpdir,
        "python": platform.python_version(),
        "cryptography": cryptography.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_table(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
