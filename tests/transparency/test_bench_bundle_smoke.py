"""The bundle benchmark still runs end to end (no timing asserted: figures live in bench/)."""

from __future__ import annotations

from bench.bench_bundle import run


def test_bench_bundle_runs_on_a_real_witness() -> None:
    result = run(epochs=3, verifies=2)
    assert result["log_size"] == 3
    assert result["bundle_bytes"] > 0
    assert result["client_verify_us"] > 0
    assert result["witness_epoch_ms"] > 0
