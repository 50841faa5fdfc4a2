"""Validation-bundle costs (ADR 0010): the client's check per session, the witness per epoch.

Run: ``.venv/bin/python -m bench.bench_bundle [--json] [--epochs N] [--verifies M]``

* **Client**: ``BundleVerifier.verify`` of a real bundle (witness signature, operator
  counter-signature, fleet-session signature, inclusion proof against a signed
  checkpoint: four Ed25519 verifications, plus strict JSON parsing and Merkle hashing)
  against one raw Ed25519 verification (``cryptography``) in the same run. Four
  verifications are inherent, so the ratio against ~4 shows the parsing overhead.
* **Witness**: ``Witness.submit`` + ``countersign`` per epoch on a software-key witness in
  a temporary directory (every append is fsynced) against one raw Ed25519 signature.

The bundles come from a real in-process witness (``transparency.witness.Witness``), not
from a test kit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hsmvault.client.bundle_verifier import BundleVerifier, PinnedWitnessKey, TrustPolicy
from hsmvault.client.trust_store import MemoryTrustStore
from hsmvault.fleet.fleet_keys import FleetSecretKeys
from hsmvault.transparency.artifact import FleetEntry, FleetKeyArtifact
from hsmvault.transparency.bundle import InclusionEvidence, bundle_from_audit
from hsmvault.transparency.operator_messages import countersignature_message, submission_message
from hsmvault.transparency.signed_note import Verifier
from hsmvault.transparency.witness import Witness, init_data_dir
from hsmvault.wire.fleet_session import fleet_session_message

NAMESPACE = "bench/bundles"


def _per_op(fn: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def run(epochs: int, verifies: int) -> dict[str, float]:
    operator = Ed25519PrivateKey.generate()
    operator_pub = operator.public_key().public_bytes_raw()
    fleet = FleetSecretKeys.generate()
    keys = fleet.public()
    now = int(time.time())
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "witness"
        init_data_dir(data, name="bench.witness", backend="software", now_ms=now * 1000 - 1)
        witness = Witness.open(data)
        try:
            witness.register_namespace(NAMESPACE, 1, operator_pub)
            previous: bytes | None = None
            start = time.perf_counter()
            for epoch in range(1, epochs + 1):
                artifact = FleetKeyArtifact(
                    namespace=NAMESPACE,
                    epoch=epoch,
                    issued_at=now + epoch,
                    previous_digest=previous,
                    fleets=(
                        FleetEntry(
                            fleet_id=keys.fleet_id,
                            status="active",
                            ake_public_key=keys.ake_public_key,
                            enc_public_key=keys.enc_public_key,
                            sig_public_key=keys.sig_public_key,
                            not_before=now - 60,
                            not_after=now + 86_400,
                        ),
                    ),
                ).to_bytes()
                digest = hashlib.sha256(artifact).digest()
                sub = operator.sign(submission_message(NAMESPACE, epoch, digest))
                entry = witness.submit(NAMESPACE, epoch, digest, artifact, sub)
                witness.countersign(
                    NAMESPACE, epoch, operator.sign(countersignature_message(entry.signature))
                )
                previous = digest
            witness_s = (time.perf_counter() - start) / epochs
            size = witness.tree_size
            bundle = bundle_from_audit(
                entry,
                operator.sign(countersignature_message(entry.signature)),
                InclusionEvidence(
                    leaf_index=entry.leaf_index,
                    tree_size=size,
                    proof=tuple(witness.inclusion_proof(entry.leaf_index, size)),
                    checkpoint=witness.checkpoint(),
                ),
            ).to_bytes()
            info = witness.info()
            log_key: Verifier = witness.log_verifier
        finally:
            witness.close()

    witness_keys = tuple(
        PinnedWitnessKey(bytes.fromhex(k["public_key"]), int(k["not_before"])) for k in info["keys"]
    )
    policy = TrustPolicy(
        namespace=NAMESPACE,
        witness_keys=witness_keys,
        operator_public_keys=(operator_pub,),
        log_key=log_key,
        require_inclusion=True,
    )
    request = secrets.token_bytes(96)
    session_sig = fleet.sig_private().sign(fleet_session_message(keys.fleet_id, request, bundle))

    def verify() -> object:
        verifier = BundleVerifier(policy, MemoryTrustStore())
        return verifier.verify(
            bundle, fleet_id=keys.fleet_id, request=request, fleet_signature=session_sig
        )

    verify()  # fail loudly before timing
    probe = Ed25519PrivateKey.generate()
    probe_pub = probe.public_key()
    message = b"x" * 200
    signature = probe.sign(message)
    raw_verify_s = _per_op(lambda: probe_pub.verify(signature, message), verifies * 4)
    verify_s = _per_op(verify, verifies)
    raw_sign_s = _per_op(lambda: probe.sign(message), verifies * 4)
    return {
        "bundle_bytes": float(len(bundle)),
        "log_size": float(size),
        "client_verify_us": verify_s * 1e6,
        "raw_ed25519_verify_us": raw_verify_s * 1e6,
        "client_verify_ratio": verify_s / raw_verify_s,
        "witness_epoch_ms": witness_s * 1e3,
        "raw_ed25519_sign_us": raw_sign_s * 1e6,
        "witness_epoch_ratio": witness_s / raw_sign_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--epochs", type=int, default=200, help="epochs the witness signs")
    parser.add_argument("--verifies", type=int, default=500, help="client verifications")
    args = parser.parse_args(argv)
    result = run(args.epochs, args.verifies)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
        return 0
    print(f"bundle: {result['bundle_bytes']:.0f} bytes, log size {result['log_size']:.0f}")
    print(
        f"client verify (8 checks, inclusion required): {result['client_verify_us']:.0f} µs"
        f" vs raw Ed25519 verify {result['raw_ed25519_verify_us']:.1f} µs"
        f" → ratio {result['client_verify_ratio']:.1f} (4 verifications inherent)"
    )
    print(
        f"witness submit+countersign per epoch: {result['witness_epoch_ms']:.2f} ms"
        f" vs raw Ed25519 sign {result['raw_ed25519_sign_us']:.1f} µs"
        f" → ratio {result['witness_epoch_ratio']:.0f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
