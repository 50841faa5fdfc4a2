"""The software vendor of an emulated deployment, as its own process (ADR 0012).

``python -m hsmvault.evidence.vendor_process`` holds one deployment's
:class:`~hsmvault.evidence.attestation.software_vendor.SoftwareVendorCA` key in its
memory only, and talks JSON lines on stdin/stdout with the ceremony coordinator:

* ``{"step": "root", "deployment": NAME, "now": SECONDS}`` →
  ``{"root": "<base64 DER>"}`` — a fresh root (EMULATED HARDWARE);
* ``{"step": "certify", "entry": SIGNED_IDENTITY_STATEMENT, "now": SECONDS}`` →
  ``{"certificate": "<base64 DER>"}`` — after checking that the node's identity statement
  is signed by the key it names (the vendor certifies only a key that signed for
  itself), a device certificate for that key, region and custody;
* ``{"step": "destroy"}`` → ``{"public_key_sha256": HEX, "destroyed_at": SECONDS}`` —
  the process forgets the key and exits, so no later device can be certified into this
  deployment (destruction cannot be proven in software; the evidence says so).

It is a separate process so that the coordinator — imported by the host side through
``fleet.formation`` — never holds the vendor key nor imports key-custody code, and so that
the key's lifetime is the process's. Any error: exit status 2 and one line on stderr.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import time
from datetime import UTC, datetime
from typing import IO, Any

from cryptography.hazmat.primitives import serialization

from hsmvault.errors import InvalidParameter, VaultError, VerificationError
from hsmvault.evidence.attestation._x509 import der
from hsmvault.evidence.attestation.software_vendor import CustodyKind, SoftwareVendorCA
from hsmvault.evidence.ceremony_format import (
    TRANSCRIPT_PURPOSE,
    Entry,
    node_author,
)
from hsmvault.hsm.custody.base import verify_signature
from hsmvault.hsm.nvram import NodeIdentity, SignatureAlgorithm

__all__ = ["main", "run_vendor"]


class VendorRefused(VaultError):
    """The vendor refuses a request (bad order, a statement that does not verify)."""


#: Kept small on purpose (this process starts during every formation): the vendor reads
#: only what it certifies from the identity statement (``hsm.ceremony`` has the full rule).
_ALGORITHMS = {
    "ed25519": SignatureAlgorithm.ED25519,
    "ecdsa-p256-sha256": SignatureAlgorithm.ECDSA_P256_SHA256,
}
_CUSTODY = {"software": CustodyKind.SOFTWARE, "softhsm": CustodyKind.SOFTHSM2}


def _certifiable(entry: Entry) -> tuple[NodeIdentity, str, CustodyKind]:
    """(identity, region, custody) of an identity statement signed by the key it names."""
    statement = entry.statement
    body = statement.body
    key = body["identity_key"]
    if statement.kind != "identity" or not isinstance(key, dict):
        raise VendorRefused("not an identity statement")
    algorithm = _ALGORITHMS.get(key.get("algorithm"))  # type: ignore[arg-type]
    custody = _CUSTODY.get(body["custody"])
    region = body["region"]
    if algorithm is None or custody is None or not isinstance(region, str):
        raise VendorRefused("unknown key algorithm or custody")
    try:
        identity = NodeIdentity(algorithm, bytes.fromhex(str(key.get("public_key"))))
    except (InvalidParameter, ValueError):
        raise VendorRefused("invalid identity key") from None
    if statement.author != node_author(identity.node_id):
        raise VendorRefused("the statement's author is not its key")
    try:
        verify_signature(identity, TRANSCRIPT_PURPOSE, statement.signed_bytes(), entry.signature)
    except VerificationError:
        raise VendorRefused("the identity statement is not signed by its key") from None
    return identity, region, custody


def _time(value: object) -> datetime:
    if type(value) is not int or value < 0:
        raise VendorRefused("a time is a non-negative integer")
    return datetime.fromtimestamp(value, UTC)


def _handle(ca: SoftwareVendorCA | None, request: dict[str, Any]) -> tuple[SoftwareVendorCA, Any]:
    step = request.get("step")
    if step == "root":
        if ca is not None:
            raise VendorRefused("the root exists already")
        ca = SoftwareVendorCA.generate(str(request["deployment"]), now=_time(request["now"]))
        return ca, {"root": base64.b64encode(ca.root_der()).decode("ascii")}
    if ca is None:
        raise VendorRefused("no root yet")
    if step == "certify":
        raw = request["entry"]
        if not isinstance(raw, dict):
            raise VendorRefused("the identity statement is missing")
        identity, region, custody = _certifiable(
            Entry.from_json({"seq": 0, "prev": "0" * 64, **raw})
        )
        cert = ca.issue_device_certificate(
            identity, region=region, custody=custody, now=_time(request["now"])
        )
        return ca, {"certificate": base64.b64encode(der(cert)).decode("ascii")}
    if step == "destroy":
        public = ca.root_certificate.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return ca, {
            "public_key_sha256": hashlib.sha256(public).hexdigest(),
            "destroyed_at": int(time.time()),
        }
    raise VendorRefused(f"unknown step {step!r}")


def run_vendor(stdin: IO[str], stdout: IO[str]) -> int:
    """Serve requests until ``destroy`` (then the key is dropped) or end of input."""
    ca: SoftwareVendorCA | None = None
    for line in stdin:
        request = json.loads(line)
        if not isinstance(request, dict):
            raise VendorRefused("a request is a JSON object")
        ca, answer = _handle(ca, request)
        stdout.write(json.dumps(answer) + "\n")
        stdout.flush()
        if request.get("step") == "destroy":
            del ca
            return 0
    return 0


def main() -> int:
    try:
        return run_vendor(sys.stdin, sys.stdout)
    except (VaultError, KeyError, ValueError) as exc:
        detail = str(exc) if isinstance(exc, VaultError) else type(exc).__name__
        print(f"error: software vendor: {detail}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
