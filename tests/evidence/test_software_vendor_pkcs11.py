"""Key properties read from a real PKCS#11 token (SoftHSM2) and a software-vendor
attestation signed inside it, for both identity algorithms. Each case runs in a fresh
process (``pkcs11_probe``) because SoftHSM2 scans its tokens once per process. SoftHSM2
missing is a failure, not a skip (``make test`` installs it)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from hsmvault.evidence.attestation import Expectations
from hsmvault.evidence.attestation.software_vendor import SoftwareVendorVerifier
from tests.evidence.sv_helpers import MEASUREMENT, NONCE, T0

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", params=["ED25519", "ECDSA_P256_SHA256"])
def probe(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    workdir = tmp_path_factory.mktemp("pkcs11-probe")
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    done = subprocess.run(
        [sys.executable, "-m", "tests.evidence.pkcs11_probe", str(workdir), request.param],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_token_generated_key_is_reported_local_and_non_extractable(probe: Any) -> None:
    generated = probe["generated"]
    assert generated["source"] == "pkcs11-attributes"
    assert generated["local"] is True
    assert generated["extractable"] is False
    assert generated["never_extractable"] is True
    assert generated["sensitive"] is True
    assert generated["always_sensitive"] is True
    assert generated["generated_inside"] is True
    assert generated["non_extractable"] is True


def test_imported_key_is_reported_as_not_generated_inside(probe: Any) -> None:
    imported = probe["imported"]
    assert imported["local"] is False
    assert imported["generated_inside"] is False
    # Sensitive and non-extractable now, but it existed outside the token before.
    assert imported["never_extractable"] is False
    assert imported["always_sensitive"] is False
    assert imported["non_extractable"] is False


def test_extractable_key_is_reported_as_extractable(probe: Any) -> None:
    loose = probe["extractable"]
    assert loose["local"] is True
    assert loose["extractable"] is True
    assert loose["non_extractable"] is False


def test_public_key_object_is_not_accepted(probe: Any) -> None:
    assert probe["public_key_object_refused"] is True


def test_attestation_signed_in_the_token_verifies(probe: Any) -> None:
    root = x509.load_der_x509_certificate(base64.b64decode(probe["root"]))
    result = SoftwareVendorVerifier().verify(
        probe["document"].encode("ascii"),
        trust_anchors=[root],
        at_time=T0 + timedelta(minutes=1),
        expected=Expectations(
            unsafe_allow_emulated=True,
            measurement=MEASUREMENT,
            nonce=NONCE,
            public_key=bytes.fromhex(probe["public_key"]),
        ),
    )
    assert result.emulated is True
    assert result.key_properties.generated_inside is True
    assert result.key_properties.non_extractable is True
    assert "softhsm2 custody" in result.device_identity
    algorithm = json.loads(probe["document"])["statement"]["identity_key"]["algorithm"]
    assert (
        algorithm
        == {"ED25519": "ed25519", "ECDSA_P256_SHA256": "ecdsa-p256-sha256"}[probe["algorithm"]]
    )
