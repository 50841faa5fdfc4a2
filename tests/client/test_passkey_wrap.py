"""The passkey wrap format (ADR 0011, docs/formats/passkey-wrap.md) against its
checked-in test vector ``data/passkey_wrap_vector.json``.

Every intermediate value is recomputed here from the vector's inputs with
``cryptography`` and ``hashlib`` directly (HKDF, AES-GCM, HMAC), not through the code
under test, and compared with the file; then the SDK's wrap (``client.passkeys.wrap``,
over ``crypto.key_wrap``) and the software authenticator's PRF must produce the same
bytes. The browser page and any other implementation check against the same file.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given
from hypothesis import strategies as st

from hsmvault.client.passkeys.software_authenticator import webauthn_prf
from hsmvault.client.passkeys.wrap import unwrap_with_prf, wrap_context, wrap_with_prf
from hsmvault.crypto.backup_stream import BackupKey
from hsmvault.errors import DecodeError, InvalidParameter, VerificationError

VECTOR_FILE = Path(__file__).parent / "data" / "passkey_wrap_vector.json"
INPUTS = ("cred_random", "prf_input", "backup_key", "rp_id", "credential_id", "wrap_salt", "nonce")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def compute(inputs: dict[str, str]) -> dict[str, str]:
    """Every value of one vector from its inputs (hex, except ``rp_id``)."""
    cred_random = bytes.fromhex(inputs["cred_random"])
    prf_input = bytes.fromhex(inputs["prf_input"])
    bk = bytes.fromhex(inputs["backup_key"])
    rp_id = inputs["rp_id"]
    credential_id = bytes.fromhex(inputs["credential_id"])
    wrap_salt = bytes.fromhex(inputs["wrap_salt"])
    nonce = bytes.fromhex(inputs["nonce"])
    # WebAuthn L3 §10.1.4 -> CTAP2 hmac-secret
    hmac_secret_salt = hashlib.sha256(b"WebAuthn PRF\x00" + prf_input).digest()
    prf_output = hmac.new(cred_random, hmac_secret_salt, hashlib.sha256).digest()
    # ADR 0011 / crypto.key_wrap v1
    purpose = b"passkey-prf"
    context = rp_id.encode() + b"\x00" + credential_id
    info = b"hsmvault/key-wrap/v1\x00" + purpose
    kek = HKDF(algorithm=hashes.SHA256(), length=32, salt=wrap_salt, info=info).derive(prf_output)
    aad = b"\x01" + wrap_salt + bytes([len(purpose)]) + purpose + context
    sealed = AESGCM(kek).encrypt(nonce, bk, aad)
    wrapped = b"\x01" + wrap_salt + nonce + sealed
    return {
        **inputs,
        "hmac_secret_salt": hmac_secret_salt.hex(),
        "prf_output": prf_output.hex(),
        "context": context.hex(),
        "hkdf_info": info.hex(),
        "kek": kek.hex(),
        "aad": aad.hex(),
        "wrapped_key": wrapped.hex(),
        "wrapped_key_b64url": _b64url(wrapped),
    }


def _vectors() -> list[dict[str, str]]:
    document: dict[str, Any] = json.loads(VECTOR_FILE.read_text())
    vectors: list[dict[str, str]] = document["vectors"]
    return vectors


def test_vector_file_is_consistent_with_the_format() -> None:
    vectors = _vectors()
    assert len(vectors) >= 2
    for vector in vectors:
        assert compute({k: vector[k] for k in INPUTS}) == vector
        assert len(bytes.fromhex(vector["wrapped_key"])) == 93


@pytest.mark.parametrize("index", [0, 1])
def test_sdk_wrap_and_software_prf_reproduce_the_vector(index: int) -> None:
    v = _vectors()[index]
    prf_output = webauthn_prf(bytes.fromhex(v["cred_random"]), bytes.fromhex(v["prf_input"]))
    assert prf_output.hex() == v["prf_output"]
    draws = [bytes.fromhex(v["wrap_salt"]), bytes.fromhex(v["nonce"])]

    def rng(n: int) -> bytes:
        out = draws.pop(0)
        assert len(out) == n
        return out

    credential_id = bytes.fromhex(v["credential_id"])
    assert wrap_context(v["rp_id"], credential_id).hex() == v["context"]
    bk = BackupKey(bytes.fromhex(v["backup_key"]))
    wrapped = wrap_with_prf(prf_output, bk, rp_id=v["rp_id"], credential_id=credential_id, rng=rng)
    assert wrapped.hex() == v["wrapped_key"]
    opened = unwrap_with_prf(prf_output, wrapped, rp_id=v["rp_id"], credential_id=credential_id)
    assert opened.expose_secret().hex() == v["backup_key"]


def test_the_wrap_is_bound_to_prf_rp_and_credential() -> None:
    v = _vectors()[0]
    prf = bytes.fromhex(v["prf_output"])
    cid = bytes.fromhex(v["credential_id"])
    wrapped = bytes.fromhex(v["wrapped_key"])
    wrong_cases: list[tuple[bytes, str, bytes]] = [
        (bytes(32), v["rp_id"], cid),  # another PRF output
        (prf, "example.org", cid),  # another RP id
        (prf, v["rp_id"], cid[:-1] + bytes([cid[-1] ^ 1])),  # another credential
    ]
    for secret, rp_id, credential_id in wrong_cases:
        with pytest.raises(VerificationError):
            unwrap_with_prf(secret, wrapped, rp_id=rp_id, credential_id=credential_id)
    with pytest.raises(DecodeError):
        unwrap_with_prf(prf, wrapped[:-1], rp_id=v["rp_id"], credential_id=cid)
    with pytest.raises(InvalidParameter):
        unwrap_with_prf(prf[:31], wrapped, rp_id=v["rp_id"], credential_id=cid)
    with pytest.raises(InvalidParameter):
        wrap_context("bad\x00rp", cid)
    with pytest.raises(InvalidParameter):
        wrap_context("localhost", b"")


@given(
    prf=st.binary(min_size=32, max_size=32),
    key=st.binary(min_size=32, max_size=32),
    cid=st.binary(min_size=1, max_size=64),
    position=st.integers(min_value=0, max_value=92),
)
def test_any_changed_byte_is_refused(prf: bytes, key: bytes, cid: bytes, position: int) -> None:
    wrapped = bytearray(wrap_with_prf(prf, BackupKey(key), rp_id="localhost", credential_id=cid))
    opened = unwrap_with_prf(prf, bytes(wrapped), rp_id="localhost", credential_id=cid)
    assert opened.expose_secret() == key
    wrapped[position] ^= 0x01
    with pytest.raises((VerificationError, DecodeError)):
        unwrap_with_prf(prf, bytes(wrapped), rp_id="localhost", credential_id=cid)
