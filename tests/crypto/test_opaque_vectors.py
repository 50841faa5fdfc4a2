"""RFC 9807 Appendix C test vectors, ristretto255-SHA512, KSF = Identity.

Real vectors C.1.1 (no identities) and C.1.2 (identities "alice"/"bob") are run end to
end through the protocol functions, checking every output and the intermediates the RFC
prints; fake vector C.2.1 checks the KE2 for an unknown user. Provenance of the vector
file: ``../shared/vectors/README.md``.
"""

from __future__ import annotations

from typing import Any

import pytest

from hsmvault.crypto import oprf
from hsmvault.crypto.ksf import UnsafeIdentityKsf
from hsmvault.crypto.opaque import (
    KE1,
    KE2,
    KE3,
    OpaqueConfig,
    RegistrationRecord,
    RegistrationRequest,
    RegistrationResponse,
    create_fake_record,
    create_registration_request,
    create_registration_response,
    finalize_registration_request,
    generate_ke1,
    generate_ke2,
    generate_ke3,
    server_finish,
)
from hsmvault.crypto.opaque.envelope import (
    derive_envelope_keys,
    derive_randomized_password,
)
from hsmvault.crypto.opaque.key_schedule import derive_keys, preamble
from hsmvault.crypto.opaque.suite import derive_dh_key_pair, derive_oprf_key, diffie_hellman
from hsmvault.crypto.ristretto255 import Element, Scalar
from tests.vectors import load_vectors, unhex

_FILE = load_vectors("opaque_rfc9807.json")
REAL = [v for v in _FILE["real"] if v["rfc_section"] in ("C.1.1", "C.1.2")]
FAKE = [v for v in _FILE["fake"] if v["rfc_section"] == "C.2.1"]


def _opt(inputs: dict[str, str], key: str) -> bytes | None:
    return unhex(inputs[key]) if key in inputs else None


def _check_config(vector: dict[str, Any]) -> OpaqueConfig:
    cfg = vector["config"]
    assert (cfg["OPRF"], cfg["Group"], cfg["KSF"]) == (
        "ristretto255-SHA512",
        "ristretto255",
        "Identity",
    )
    assert (cfg["Hash"], cfg["KDF"], cfg["MAC"]) == ("SHA512", "HKDF-SHA512", "HMAC-SHA512")
    assert [cfg[k] for k in ("Nh", "Npk", "Nsk", "Nm", "Nx", "Nok")] == [
        "64",
        "32",
        "32",
        "64",
        "64",
        "32",
    ]
    return OpaqueConfig(context=unhex(cfg["Context"]), ksf=UnsafeIdentityKsf())


def _run_real(vector: dict[str, Any]) -> None:
    config = _check_config(vector)
    inp, mid, out = vector["inputs"], vector["intermediates"], vector["outputs"]
    password = unhex(inp["password"])
    credential_identifier = unhex(inp["credential_identifier"])
    oprf_seed = unhex(inp["oprf_seed"])
    client_identity = _opt(inp, "client_identity")
    server_identity = _opt(inp, "server_identity")
    server_sk = Scalar.from_bytes(unhex(inp["server_private_key"]))
    server_pk = Element.from_bytes(unhex(inp["server_public_key"]))

    # Registration (RFC 9807 §5.2)
    request, reg_state = create_registration_request(
        password, blind=Scalar.from_bytes(unhex(inp["blind_registration"]))
    )
    assert request.to_bytes() == unhex(out["registration_request"])
    assert derive_oprf_key(oprf_seed, credential_identifier) == Scalar.from_bytes(
        unhex(mid["oprf_key"])
    )
    response = create_registration_response(
        RegistrationRequest.from_bytes(request.to_bytes()),
        server_public_key=server_pk,
        credential_identifier=credential_identifier,
        oprf_seed=oprf_seed,
    )
    assert response.to_bytes() == unhex(out["registration_response"])
    record, export_key = finalize_registration_request(
        reg_state,
        RegistrationResponse.from_bytes(response.to_bytes()),
        config=config,
        server_identity=server_identity,
        client_identity=client_identity,
        envelope_nonce=unhex(inp["envelope_nonce"]),
    )
    assert record.to_bytes() == unhex(out["registration_upload"])
    assert bytes(record.client_public_key) == unhex(mid["client_public_key"])
    assert record.envelope.to_bytes() == unhex(mid["envelope"])
    assert export_key == unhex(out["export_key"])

    # Intermediates of the envelope (RFC 9807 §4.1.2, §5.2.3)
    oprf_output = oprf.finalize(
        password,
        Scalar.from_bytes(unhex(inp["blind_registration"])),
        response.evaluated_message,
    )
    randomized_password = derive_randomized_password(oprf_output, UnsafeIdentityKsf())
    assert randomized_password == unhex(mid["randomized_password"])
    keys = derive_envelope_keys(randomized_password, unhex(inp["envelope_nonce"]))
    assert keys.auth_key == unhex(mid["auth_key"])
    assert keys.export_key == unhex(out["export_key"])

    # Login (RFC 9807 §6.2)
    ke1, client_state = generate_ke1(
        password,
        blind=Scalar.from_bytes(unhex(inp["blind_login"])),
        client_nonce=unhex(inp["client_nonce"]),
        client_keyshare_seed=unhex(inp["client_keyshare_seed"]),
    )
    assert ke1.to_bytes() == unhex(out["KE1"])
    ke2, server_state = generate_ke2(
        server_identity=server_identity,
        server_private_key=server_sk,
        server_public_key=server_pk,
        record=RegistrationRecord.from_bytes(record.to_bytes()),
        credential_identifier=credential_identifier,
        oprf_seed=oprf_seed,
        ke1=KE1.from_bytes(ke1.to_bytes()),
        client_identity=client_identity,
        config=config,
        masking_nonce=unhex(inp["masking_nonce"]),
        server_nonce=unhex(inp["server_nonce"]),
        server_keyshare_seed=unhex(inp["server_keyshare_seed"]),
    )
    assert ke2.to_bytes() == unhex(out["KE2"])
    ke3, session_key, login_export_key = generate_ke3(
        client_state,
        KE2.from_bytes(ke2.to_bytes()),
        config=config,
        client_identity=client_identity,
        server_identity=server_identity,
    )
    assert ke3.to_bytes() == unhex(out["KE3"])
    assert session_key == unhex(out["session_key"])
    assert login_export_key == unhex(out["export_key"])
    assert server_finish(server_state, KE3.from_bytes(ke3.to_bytes())) == unhex(out["session_key"])

    # Key schedule intermediates (RFC 9807 §6.4.2), recomputed from the server's view.
    server_keyshare = derive_dh_key_pair(unhex(inp["server_keyshare_seed"]))
    client_keyshare_pk = ke1.auth_request.client_public_keyshare
    ikm = (
        diffie_hellman(server_keyshare.sk, client_keyshare_pk)
        + diffie_hellman(server_sk, client_keyshare_pk)
        + diffie_hellman(server_keyshare.sk, record.client_public_key)
    )
    transcript = preamble(
        context=config.context,
        client_identity=client_identity
        if client_identity is not None
        else bytes(record.client_public_key),
        ke1=ke1,
        server_identity=server_identity if server_identity is not None else bytes(server_pk),
        credential_response=ke2.credential_response,
        server_nonce=unhex(inp["server_nonce"]),
        server_public_keyshare=server_keyshare.pk,
    )
    derived = derive_keys(ikm, transcript)
    assert derived.handshake_secret == unhex(mid["handshake_secret"])
    assert derived.km2 == unhex(mid["server_mac_key"])
    assert derived.km3 == unhex(mid["client_mac_key"])
    assert derived.session_key == unhex(out["session_key"])


def _run_fake(vector: dict[str, Any]) -> None:
    config = _check_config(vector)
    inp = vector["inputs"]
    client_pk = Element.from_bytes(unhex(inp["client_public_key"]))
    # The vector's client key pair is consistent (the private key is otherwise unused).
    assert Element.generator() * Scalar.from_bytes(unhex(inp["client_private_key"])) == client_pk
    record = create_fake_record(client_public_key=client_pk, masking_key=unhex(inp["masking_key"]))
    ke2, server_state = generate_ke2(
        server_identity=unhex(inp["server_identity"]),
        server_private_key=Scalar.from_bytes(unhex(inp["server_private_key"])),
        server_public_key=Element.from_bytes(unhex(inp["server_public_key"])),
        record=record,
        credential_identifier=unhex(inp["credential_identifier"]),
        oprf_seed=unhex(inp["oprf_seed"]),
        ke1=KE1.from_bytes(unhex(inp["KE1"])),
        client_identity=unhex(inp["client_identity"]),
        config=config,
        record_is_fake=True,
        masking_nonce=unhex(inp["masking_nonce"]),
        server_nonce=unhex(inp["server_nonce"]),
        server_keyshare_seed=unhex(inp["server_keyshare_seed"]),
    )
    assert ke2.to_bytes() == unhex(vector["outputs"]["KE2"])
    assert not server_state.used


@pytest.mark.parametrize("vector", REAL, ids=[v["rfc_section"] for v in REAL])
def test_rfc9807_real_vector(vector: dict[str, Any]) -> None:
    _run_real(vector)


@pytest.mark.parametrize("vector", FAKE, ids=[v["rfc_section"] for v in FAKE])
def test_rfc9807_fake_vector(vector: dict[str, Any]) -> None:
    _run_fake(vector)


def test_rfc9807_ristretto255_vectors_all_run() -> None:
    """Runs every selected vector in one test (robust to test order and xdist) and
    asserts that exactly three ran: C.1.1, C.1.2 and C.2.1."""
    ran = []
    for vector in REAL:
        _run_real(vector)
        ran.append(vector["rfc_section"])
    for vector in FAKE:
        _run_fake(vector)
        ran.append(vector["rfc_section"])
    assert ran == ["C.1.1", "C.1.2", "C.2.1"]
    assert len(ran) == 3
