"""Interoperability with an independent OPAQUE implementation: ``opaque_snake``, a
binding of facebook's opaque-ke 4.x.

Its suite: OPRF ristretto255-SHA512, 3DH over ristretto255 with SHA-512, KSF = the Rust
``argon2`` crate's ``Argon2::default()`` (our ``OPAQUE_KE_ARGON2_DEFAULT_PARAMS``), empty
context, default identities; its ``user_id`` string (UTF-8) is the
``credential_identifier``. Its messages' ``to_bytes()`` are the RFC 9807 encodings:
RegistrationRequest, RegistrationResponse, RegistrationUpload (= RegistrationRecord),
CredentialRequest (= KE1), CredentialResponse (= KE2), CredentialFinalization (= KE3).
"""

from __future__ import annotations

import opaque_snake
import pytest

from hsmvault.crypto.ksf import (
    OPAQUE_KE_ARGON2_DEFAULT_PARAMS,
    Argon2idKsf,
    KsfAlgorithm,
    KsfParams,
)
from hsmvault.crypto.opaque import (
    KE1,
    KE2,
    KE3,
    OpaqueClient,
    OpaqueConfig,
    OpaqueServer,
    RegistrationRecord,
    RegistrationRequest,
    RegistrationResponse,
)
from hsmvault.errors import InvalidLogin

pytestmark = pytest.mark.interop

CONFIG = OpaqueConfig(context=b"", ksf=Argon2idKsf(OPAQUE_KE_ARGON2_DEFAULT_PARAMS))
PASSWORD = "correct horse battery staple \N{SNOWMAN}"
WRONG_PASSWORD = "correct horse battery stable \N{SNOWMAN}"
USER = "alice@example.com"


def _register_with_their_server(
    server: opaque_snake.OpaqueServer, client: OpaqueClient, password: str
) -> tuple[opaque_snake.PasswordFile, bytes]:
    request, state = client.start_registration(password.encode())
    response = server.create_registration_response(
        opaque_snake.RegistrationRequest.from_bytes(request.to_bytes()), USER
    )
    result = client.finish_registration(state, RegistrationResponse.from_bytes(response.to_bytes()))
    upload = opaque_snake.RegistrationUpload.from_bytes(result.record.to_bytes())
    password_file = server.finish_registration(upload)
    assert password_file.to_bytes() == result.record.to_bytes()
    assert len(result.export_key) == 64
    return password_file, result.export_key


def _their_registration_with_our_server(
    server: OpaqueServer, password: str
) -> tuple[RegistrationRecord, bytes]:
    client = opaque_snake.OpaqueClient()
    request, state = client.start_registration(password)
    response = server.create_registration_response(
        RegistrationRequest.from_bytes(request.to_bytes()), USER.encode()
    )
    result = client.finish_registration(
        opaque_snake.RegistrationResponse.from_bytes(response.to_bytes()), state, password
    )
    assert result.server_s_pk == bytes(server.public_key)
    return RegistrationRecord.from_bytes(result.upload.to_bytes()), result.export_key


def test_our_client_registers_and_logs_in_against_opaque_ke_server() -> None:
    server = opaque_snake.OpaqueServer()
    client = OpaqueClient(CONFIG)
    password_file, export_key = _register_with_their_server(server, client, PASSWORD)

    ke1, client_state = client.start_login(PASSWORD.encode())
    ke2_theirs, server_state = server.create_credential_response(
        opaque_snake.CredentialRequest.from_bytes(ke1.to_bytes()), USER, password_file
    )
    result = client.finish_login(client_state, KE2.from_bytes(ke2_theirs.to_bytes()))
    keys = server.finish_login(
        opaque_snake.CredentialFinalization.from_bytes(result.ke3.to_bytes()), server_state
    )
    assert keys.session_key == result.session_key
    assert len(result.session_key) == 64
    assert result.export_key == export_key


def test_opaque_ke_client_registers_and_logs_in_against_our_server() -> None:
    server = OpaqueServer.generate(config=CONFIG)
    record, export_key = _their_registration_with_our_server(server, PASSWORD)

    client = opaque_snake.OpaqueClient()
    ke1, client_state = client.start_login(PASSWORD)
    ke2, server_state = server.start_login(KE1.from_bytes(ke1.to_bytes()), USER.encode(), record)
    result = client.finish_login(
        opaque_snake.CredentialResponse.from_bytes(ke2.to_bytes()), client_state, PASSWORD
    )
    session_key = server.finish_login(server_state, KE3.from_bytes(result.finalization.to_bytes()))
    assert session_key == result.session_keys.session_key
    assert result.session_keys.export_key == export_key


def test_record_made_by_opaque_ke_client_opens_with_our_client() -> None:
    """Same server, the other client: this pins down the KSF profile (Argon2id m=19456
    KiB, t=2, p=1, 16-byte zero salt, 64-byte output), the default identities, the
    empty context and UTF-8 passwords. Argon2id with other costs must fail."""
    server = OpaqueServer.generate(config=CONFIG)
    record, export_key = _their_registration_with_our_server(server, PASSWORD)

    ke1, client_state = OpaqueClient(CONFIG).start_login(PASSWORD.encode())
    ke2, server_state = server.start_login(ke1, USER.encode(), record)
    result = OpaqueClient(CONFIG).finish_login(client_state, ke2)
    assert result.export_key == export_key
    assert server.finish_login(server_state, result.ke3) == result.session_key

    other_costs = KsfParams(KsfAlgorithm.ARGON2ID, memory_kib=19456, iterations=3, parallelism=1)
    other_client = OpaqueClient(OpaqueConfig(context=b"", ksf=Argon2idKsf(other_costs)))
    ke1, client_state = other_client.start_login(PASSWORD.encode())
    ke2, _ = server.start_login(ke1, USER.encode(), record)
    with pytest.raises(InvalidLogin):
        other_client.finish_login(client_state, ke2)


def test_wrong_password_our_client_vs_opaque_ke_server() -> None:
    server = opaque_snake.OpaqueServer()
    client = OpaqueClient(CONFIG)
    password_file, _ = _register_with_their_server(server, client, PASSWORD)

    ke1, client_state = client.start_login(WRONG_PASSWORD.encode())
    ke2, server_state = server.create_credential_response(
        opaque_snake.CredentialRequest.from_bytes(ke1.to_bytes()), USER, password_file
    )
    with pytest.raises(InvalidLogin):
        client.finish_login(client_state, KE2.from_bytes(ke2.to_bytes()))
    # The client has no KE3 to send; whatever it sends instead is refused.
    with pytest.raises(opaque_snake.AuthenticationError):
        server.finish_login(opaque_snake.CredentialFinalization.from_bytes(bytes(64)), server_state)


def test_wrong_password_opaque_ke_client_vs_our_server() -> None:
    server = OpaqueServer.generate(config=CONFIG)
    record, _ = _their_registration_with_our_server(server, PASSWORD)

    client = opaque_snake.OpaqueClient()
    ke1, client_state = client.start_login(WRONG_PASSWORD)
    ke2, server_state = server.start_login(KE1.from_bytes(ke1.to_bytes()), USER.encode(), record)
    with pytest.raises(opaque_snake.AuthenticationError):
        client.finish_login(
            opaque_snake.CredentialResponse.from_bytes(ke2.to_bytes()), client_state, WRONG_PASSWORD
        )
    with pytest.raises(InvalidLogin):
        server.finish_login(server_state, KE3(bytes(64)))


def test_unknown_user_on_our_server_fails_opaque_ke_client_like_a_wrong_password() -> None:
    """RFC 9807 §10.9: opaque-ke parses our fake KE2 as a normal response and fails
    only at authentication."""
    server = OpaqueServer.generate(config=CONFIG)
    client = opaque_snake.OpaqueClient()
    ke1, client_state = client.start_login(PASSWORD)
    ke2, server_state = server.start_login(KE1.from_bytes(ke1.to_bytes()), b"nobody", None)
    response = opaque_snake.CredentialResponse.from_bytes(ke2.to_bytes())
    with pytest.raises(opaque_snake.AuthenticationError):
        client.finish_login(response, client_state, PASSWORD)
    with pytest.raises(InvalidLogin):
        server.finish_login(server_state, KE3(bytes(64)))
