"""Fleet keys: strict encodings, custody sealing, the public JSON, and the fleet box."""

from __future__ import annotations

import json
import pickle

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from hsmvault.crypto.fleet_seal import (
    PURPOSE_REGISTRATION_UPLOAD,
    open_from_client,
    seal_to_fleet,
)
from hsmvault.errors import DecodeError, VerificationError
from hsmvault.fleet.fleet_keys import (
    SECRET_KEYS_LEN,
    FleetPublicKeys,
    FleetSecretKeys,
    seal_fleet_keys,
    unseal_fleet_keys,
)
from hsmvault.hsm.custody.software import SoftwareCustody
from hsmvault.hsm.nvram import MemoryNvram


@pytest.fixture(scope="module")
def keys() -> FleetSecretKeys:
    return FleetSecretKeys.generate()


def test_secret_keys_round_trip_and_reject_any_other_length(keys: FleetSecretKeys) -> None:
    encoded = keys.to_bytes()
    assert len(encoded) == SECRET_KEYS_LEN
    assert FleetSecretKeys.from_bytes(encoded) == keys
    version_1 = encoded[:4] + b"\x01" + encoded[5:-32]  # the pre-``sig`` layout
    for bad in (
        encoded[:-1],
        encoded + b"\x00",
        b"XXXX" + encoded[4:],
        encoded[:4] + b"\x03" + encoded[5:],
        version_1,
        encoded[:4] + b"\x01" + encoded[5:],
    ):
        with pytest.raises(DecodeError):
            FleetSecretKeys.from_bytes(bad)


def test_sig_key_signs_what_the_public_sig_key_verifies(keys: FleetSecretKeys) -> None:
    public = keys.public()
    assert len(public.sig_public_key) == 32
    assert public.sig_public_key == keys.sig_private().public_key().public_bytes_raw()
    signature = keys.sig_private().sign(b"message")
    Ed25519PublicKey.from_public_bytes(public.sig_public_key).verify(signature, b"message")
    with pytest.raises(InvalidSignature):
        Ed25519PublicKey.from_public_bytes(public.sig_public_key).verify(signature, b"other")
    assert keys.sig_private_key not in repr(keys).encode()
    assert keys.sig_private_key.hex() not in repr(keys)
    other = FleetSecretKeys.generate(keys.fleet_id)
    assert other.public().sig_public_key != public.sig_public_key  # fresh per fleet
    assert FleetSecretKeys.from_bytes(keys.to_bytes()).public() == public


def test_secret_keys_never_show_or_pickle(keys: FleetSecretKeys) -> None:
    text = repr(keys)
    assert keys.ake_private_key.hex() not in text
    assert keys.oprf_seed.hex()[:16] not in text
    assert "redacted" in text
    with pytest.raises(TypeError):
        pickle.dumps(keys)


def test_public_keys_json_is_strict(keys: FleetSecretKeys) -> None:
    public = keys.public()
    assert FleetPublicKeys.from_json(public.to_json()) == public
    assert public.ake_public_key == bytes(keys.opaque_server().public_key)
    doc = public.to_dict()
    for mutation in (
        {**doc, "extra": 1},
        {**doc, "version": 1},
        {**doc, "version": True},
        {**doc, "sig_public_key": doc["sig_public_key"][:-2]},
        {**doc, "sig_public_key": doc["sig_public_key"].upper()},
        {**doc, "sig_public_key": None},
        {k: v for k, v in doc.items() if k != "sig_public_key"},
        {**doc, "fleet_id": doc["fleet_id"].upper()},
        {**doc, "enc_public_key": doc["enc_public_key"][:-2]},
        {k: v for k, v in doc.items() if k != "ake_public_key"},
    ):
        with pytest.raises(DecodeError):
            FleetPublicKeys.from_json(json.dumps(mutation))
    with pytest.raises(DecodeError):
        FleetPublicKeys.from_json("not json")


def test_sealed_fleet_keys_open_only_on_their_node_and_fleet(keys: FleetSecretKeys) -> None:
    mine = SoftwareCustody.open(MemoryNvram(), create=True)
    other = SoftwareCustody.open(MemoryNvram(), create=True)
    sealed = seal_fleet_keys(mine, keys)
    assert keys.oprf_seed not in sealed
    assert unseal_fleet_keys(mine, sealed, keys.fleet_id) == keys
    with pytest.raises(VerificationError):
        unseal_fleet_keys(other, sealed, keys.fleet_id)
    with pytest.raises(VerificationError):
        unseal_fleet_keys(mine, sealed, bytes(32))
    tampered = bytearray(sealed)
    tampered[-1] ^= 1
    with pytest.raises(VerificationError):
        unseal_fleet_keys(mine, bytes(tampered), keys.fleet_id)


def test_uploads_sealed_to_the_public_enc_key_open_with_enc_private(
    keys: FleetSecretKeys,
) -> None:
    purpose = PURPOSE_REGISTRATION_UPLOAD
    box = seal_to_fleet(keys.public().enc_public_key, b"upload", purpose=purpose, context=b"a")
    assert open_from_client(keys.enc_private(), box, purpose=purpose, context=b"a") == b"upload"
    with pytest.raises(VerificationError):
        open_from_client(keys.enc_private(), box, purpose=purpose, context=b"b")
    other = FleetSecretKeys.generate().enc_private()
    with pytest.raises(VerificationError):
        open_from_client(other, box, purpose=purpose, context=b"a")


def test_snapshot_key_is_a_separate_deterministic_fleet_key() -> None:
    keys = FleetSecretKeys.generate()
    key = keys.snapshot_key()
    assert len(key) == 32
    assert key == FleetSecretKeys.from_bytes(keys.to_bytes()).snapshot_key()  # every member
    assert key not in keys.to_bytes()
    assert key != FleetSecretKeys.generate(keys.fleet_id).snapshot_key()
    assert key != FleetSecretKeys.generate().snapshot_key()
