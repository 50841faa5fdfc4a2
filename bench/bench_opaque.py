"""OPAQUE-3DH login cost against raw libsodium ristretto255 scalar multiplication.

Run: ``.venv/bin/python -m bench.bench_opaque [--json] [--server-ops N] [--client-ops M]``

Server side (what an HSM does per login): parse KE1, ``generate_ke2``, encode KE2, parse
KE3, ``server_finish``. The KSF does not matter there (only the client runs it). A
server login needs 5 scalar multiplications inherently (RFC 9807 §6.3.2.2, §6.4.4):
1 OPRF ``BlindEvaluate``, 1 fixed-base for the ephemeral keyshare, 3 for the 3DH
shares. Our code does one more fixed-base multiplication (RFC 9497 ``DeriveKeyPair``
also computes the OPRF public key, which OPAQUE discards). The baseline is
``pysodium.crypto_scalarmult_ristretto255`` (variable base) measured in the same run;
the ratio ``server login / scalarmult`` compared with ~5 shows the Python overhead.

Client side: ``generate_ke1`` + ``generate_ke3`` with the default Argon2id parameters
(RFC 9106 §4 second option), dominated by the KSF.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import pysodium

from hsmvault.crypto.ksf import DEFAULT_KSF_PARAMS, Argon2idKsf, UnsafeIdentityKsf
from hsmvault.crypto.opaque import (
    KE1,
    KE3,
    OpaqueConfig,
    create_registration_request,
    create_registration_response,
    finalize_registration_request,
    generate_ke1,
    generate_ke2,
    generate_ke3,
    server_finish,
)
from hsmvault.crypto.opaque.suite import derive_dh_key_pair
from hsmvault.crypto.ristretto255 import Scalar

INHERENT_SCALARMULTS = 5  # 1 OPRF evaluation + 1 keyshare (fixed base) + 3 DH


@dataclass(frozen=True)
class Rate:
    """One measured operation: the median over interleaved rounds (the machine is
    shared, so load drifts; medians of side-by-side rounds keep the ratios honest)."""

    name: str
    ops: int
    us_per_op_rounds: tuple[float, ...]

    @property
    def us_per_op(self) -> float:
        return statistics.median(self.us_per_op_rounds)

    @property
    def ops_per_s(self) -> float:
        return 1e6 / self.us_per_op

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "ops": self.ops,
            "us_per_op_median": self.us_per_op,
            "ops_per_s_median": self.ops_per_s,
            "us_per_op_rounds": list(self.us_per_op_rounds),
        }


@dataclass(frozen=True)
class _Sample:
    name: str
    ops: int
    seconds: float

    @property
    def us_per_op(self) -> float:
        return self.seconds / self.ops * 1e6


def _combine(samples: list[_Sample]) -> Rate:
    return Rate(samples[0].name, sum(s.ops for s in samples), tuple(s.us_per_op for s in samples))


def _time_loop(name: str, ops: int, fn: Callable[[], object]) -> _Sample:
    start = time.perf_counter()
    for _ in range(ops):
        fn()
    return _Sample(name, ops, time.perf_counter() - start)


def bench_scalarmult(ops: int) -> tuple[_Sample, _Sample]:
    """Raw libsodium: variable-base and fixed-base ristretto255 multiplication."""
    scalar = bytes(Scalar.random())
    point = pysodium.crypto_scalarmult_ristretto255_base(bytes(Scalar.random()))
    var = _time_loop(
        "libsodium scalarmult (variable base)",
        ops,
        lambda: pysodium.crypto_scalarmult_ristretto255(scalar, point),
    )
    base = _time_loop(
        "libsodium scalarmult_base (fixed base)",
        ops,
        lambda: pysodium.crypto_scalarmult_ristretto255_base(scalar),
    )
    return var, base


def bench_server_login(ops: int) -> _Sample:
    """Server login per operation, timed only around the server's work."""
    config = OpaqueConfig(ksf=UnsafeIdentityKsf())
    server_keys = derive_dh_key_pair(secrets.token_bytes(32))
    oprf_seed = secrets.token_bytes(64)
    cred_id = b"bench-user"
    request, reg_state = create_registration_request(b"password")
    response = create_registration_response(
        request,
        server_public_key=server_keys.pk,
        credential_identifier=cred_id,
        oprf_seed=oprf_seed,
    )
    record, _ = finalize_registration_request(reg_state, response, config=config)

    spent = 0.0
    for _ in range(ops):
        ke1, client_state = generate_ke1(b"password")  # client side: not timed
        ke1_bytes = ke1.to_bytes()
        start = time.perf_counter()
        ke2, server_state = generate_ke2(
            server_identity=None,
            server_private_key=server_keys.sk,
            server_public_key=server_keys.pk,
            record=record,
            credential_identifier=cred_id,
            oprf_seed=oprf_seed,
            ke1=KE1.from_bytes(ke1_bytes),
            client_identity=None,
            config=config,
        )
        ke2_bytes = ke2.to_bytes()
        spent += time.perf_counter() - start
        ke3, session_key, _ = generate_ke3(client_state, ke2, config=config)  # not timed
        ke3_bytes = ke3.to_bytes()
        start = time.perf_counter()
        server_key = server_finish(server_state, KE3.from_bytes(ke3_bytes))
        spent += time.perf_counter() - start
        if server_key != session_key or len(ke2_bytes) != 320:
            raise AssertionError("benchmark login did not agree")
    return _Sample("server login (parse KE1, KE2, parse KE3, ServerFinish)", ops, spent)


def bench_client_login(ops: int) -> tuple[_Sample, _Sample]:
    """Client login (GenerateKE1 + GenerateKE3) with the default Argon2id KSF, and the
    KSF alone."""
    ksf = Argon2idKsf(DEFAULT_KSF_PARAMS)
    config = OpaqueConfig(ksf=ksf)
    server_keys = derive_dh_key_pair(secrets.token_bytes(32))
    oprf_seed = secrets.token_bytes(64)
    request, reg_state = create_registration_request(b"password")
    response = create_registration_response(
        request, server_public_key=server_keys.pk, credential_identifier=b"u", oprf_seed=oprf_seed
    )
    record, _ = finalize_registration_request(reg_state, response, config=config)

    spent = 0.0
    for _ in range(ops):
        start = time.perf_counter()
        ke1, client_state = generate_ke1(b"password")
        spent += time.perf_counter() - start
        ke2, _ = generate_ke2(  # server side: not timed
            server_identity=None,
            server_private_key=server_keys.sk,
            server_public_key=server_keys.pk,
            record=record,
            credential_identifier=b"u",
            oprf_seed=oprf_seed,
            ke1=ke1,
            client_identity=None,
            config=config,
        )
        start = time.perf_counter()
        generate_ke3(client_state, ke2, config=config)
        spent += time.perf_counter() - start
    client = _Sample(
        f"client login, Argon2id m={DEFAULT_KSF_PARAMS.memory_kib} KiB "
        f"t={DEFAULT_KSF_PARAMS.iterations} p={DEFAULT_KSF_PARAMS.parallelism}",
        ops,
        spent,
    )
    stretch = _time_loop(
        "Argon2id stretch alone (default params)", ops, lambda: ksf.stretch(bytes(64))
    )
    return client, stretch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--server-ops", type=int, default=400, help="server logins per round")
    parser.add_argument("--scalarmult-ops", type=int, default=4000, help="baseline ops per round")
    parser.add_argument("--client-ops", type=int, default=2, help="client logins per round")
    args = parser.parse_args(argv)

    rounds: list[tuple[_Sample, ...]] = []
    for _ in range(args.rounds):
        var_s, base_s = bench_scalarmult(args.scalarmult_ops)
        server_s = bench_server_login(args.server_ops)
        client_s, stretch_s = bench_client_login(args.client_ops)
        rounds.append((var_s, base_s, server_s, client_s, stretch_s))
    var, base, server, client, stretch = (_combine(list(col)) for col in zip(*rounds, strict=True))
    ratio_rounds = [r[2].us_per_op / r[0].us_per_op for r in rounds]
    libsodium_floor_us = 4 * var.us_per_op + 2 * base.us_per_op
    summary = {
        "server_login_over_scalarmult": statistics.median(ratio_rounds),
        "server_login_over_scalarmult_rounds": ratio_rounds,
        "inherent_scalarmults_per_server_login": INHERENT_SCALARMULTS,
        "scalarmults_per_server_login_in_our_code": "4 variable-base + 2 fixed-base",
        "libsodium_floor_us": libsodium_floor_us,
        "python_overhead_us": server.us_per_op - libsodium_floor_us,
        "client_login_over_server_login": client.us_per_op / server.us_per_op,
    }
    rates = [var, base, server, client, stretch]
    if args.json:
        print(json.dumps({"rates": [r.as_dict() for r in rates], "summary": summary}, indent=2))
        return 0
    for r in rates:
        spread = f"{min(r.us_per_op_rounds):,.1f}..{max(r.us_per_op_rounds):,.1f}"
        print(
            f"{r.name:56} {r.ops_per_s:10,.1f} ops/s {r.us_per_op:12,.1f} µs/op"
            f"  (median of {len(r.us_per_op_rounds)} rounds, range {spread}, n={r.ops})"
        )
    print(
        f"server login / variable-base scalarmult = "
        f"{summary['server_login_over_scalarmult']:.1f}x "
        f"(inherently {INHERENT_SCALARMULTS} scalar multiplications; our code does 4 "
        f"variable-base + 2 fixed-base = {libsodium_floor_us:.1f} µs in libsodium, "
        f"so ~{summary['python_overhead_us']:.1f} µs/login is Python, hashing and parsing)"
    )
    print(
        f"client login / server login = {summary['client_login_over_server_login']:.0f}x "
        "(the client pays the KSF)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
