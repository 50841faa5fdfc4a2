"""Properties of our OPAQUE-3DH (RFC 9807) under Hypothesis.

The KSF is the unsafe identity (or a tiny Argon2id profile) for speed: the properties
are about the protocol, and the server never runs the KSF.
"""

from __future__ import annotations

import copy
import pickle
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from hsmvault.crypto.ksf import Argon2idKsf, KsfAlgorithm, KsfParams, UnsafeIdentityKsf
from hsmvault.crypto.opaque import (
    KE1,
    KE2,
    KE3,
    AuthRequest,
    AuthResponse,
    ClientLoginState,
    CredentialRequest,
    CredentialResponse,
    Envelope,
    OpaqueClient,
    OpaqueConfig,
    OpaqueServer,
    RegistrationRecord,
    RegistrationRequest,
    RegistrationResponse,
    ServerLoginState,
    create_fake_record,
    create_registration_request,
    create_registration_response,
    finalize_registration_request,
    generate_ke1,
    generate_ke2,
    generate_ke3,
    server_finish,
)
from hsmvault.crypto.ristretto255 import Element, Scalar
from hsmvault.errors import DecodeError, InvalidLogin, ProtocolStateError

CONFIG = OpaqueConfig(context=b"hsmvault tests", ksf=UnsafeIdentityKsf())
TINY_ARGON2 = OpaqueConfig(
    context=b"hsmvault tests",
    ksf=Argon2idKsf(KsfParams(KsfAlgorithm.ARGON2ID, memory_kib=8, iterations=1, parallelism=1)),
)
SERVER = OpaqueServer(Scalar.from_int(0x1234567890ABCDEF), bytes(range(64)), config=CONFIG)
CRED_ID = b"user-1"

MESSAGE_TYPES: list[Any] = [
    Envelope,
    RegistrationRequest,
    RegistrationResponse,
    RegistrationRecord,
    CredentialRequest,
    CredentialResponse,
    AuthRequest,
    AuthResponse,
    KE1,
    KE2,
    KE3,
]

passwords = st.binary(max_size=300)
identities = st.none() | st.binary(min_size=1, max_size=40)


@dataclass
class Flow:
    """Messages and outputs of one honest registration + login, all via bytes."""

    record: RegistrationRecord
    reg_export_key: bytes
    ke1: KE1
    ke2: KE2
    ke3: KE3
    client_session_key: bytes
    server_session_key: bytes
    login_export_key: bytes


def _honest_flow(
    password: bytes,
    *,
    client_identity: bytes | None = None,
    server_identity: bytes | None = None,
    config: OpaqueConfig = CONFIG,
) -> Flow:
    server = OpaqueServer(
        Scalar.from_int(7), bytes(64), config=config, server_identity=server_identity
    )
    client = OpaqueClient(config, client_identity=client_identity, server_identity=server_identity)
    request, reg_state = client.start_registration(password)
    response = server.create_registration_response(
        RegistrationRequest.from_bytes(request.to_bytes()), CRED_ID
    )
    registered = client.finish_registration(
        reg_state, RegistrationResponse.from_bytes(response.to_bytes())
    )
    assert registered.server_public_key == server.public_key
    record = RegistrationRecord.from_bytes(registered.record.to_bytes())

    ke1, client_state = client.start_login(password)
    ke2, server_state = server.start_login(
        KE1.from_bytes(ke1.to_bytes()), CRED_ID, record, client_identity=client_identity
    )
    result = client.finish_login(client_state, KE2.from_bytes(ke2.to_bytes()))
    server_key = server.finish_login(server_state, KE3.from_bytes(result.ke3.to_bytes()))
    return Flow(
        record,
        registered.export_key,
        ke1,
        ke2,
        result.ke3,
        result.session_key,
        server_key,
        result.export_key,
    )


@given(password=passwords, client_identity=identities, server_identity=identities)
@example(password=b"", client_identity=None, server_identity=None)
@example(password=b"\xff" * 65535, client_identity=None, server_identity=None)
def test_any_password_round_trips_with_equal_keys(
    password: bytes, client_identity: bytes | None, server_identity: bytes | None
) -> None:
    flow = _honest_flow(password, client_identity=client_identity, server_identity=server_identity)
    assert flow.client_session_key == flow.server_session_key
    assert len(flow.client_session_key) == 64
    assert flow.reg_export_key == flow.login_export_key
    assert len(flow.reg_export_key) == 64


@given(password=st.binary(max_size=64))
def test_round_trip_with_tiny_argon2id_profile(password: bytes) -> None:
    flow = _honest_flow(password, config=TINY_ARGON2)
    assert flow.client_session_key == flow.server_session_key
    assert flow.reg_export_key == flow.login_export_key


def _flip(data: bytes, position: int, mask: int) -> bytes:
    out = bytearray(data)
    out[position % len(out)] ^= mask
    return bytes(out)


TAMPERABLE = ["registration_request", "registration_response", "record", "KE1", "KE2", "KE3"]


def _tampered_flow(target: str, position: int, mask: int) -> None:
    """One registration and login through the RFC functions, with one byte of the
    serialized ``target`` message changed in transit. Must raise."""

    def wire(name: str, data: bytes) -> bytes:
        return _flip(data, position, mask) if name == target else data

    password = b"correct horse"
    request, reg_state = create_registration_request(password)
    response = create_registration_response(
        RegistrationRequest.from_bytes(wire("registration_request", request.to_bytes())),
        server_public_key=SERVER.public_key,
        credential_identifier=CRED_ID,
        oprf_seed=bytes(range(64)),
    )
    record, _ = finalize_registration_request(
        reg_state,
        RegistrationResponse.from_bytes(wire("registration_response", response.to_bytes())),
        config=CONFIG,
    )
    stored = RegistrationRecord.from_bytes(wire("record", record.to_bytes()))

    ke1, client_state = generate_ke1(password)
    ke2, server_state = SERVER.start_login(
        KE1.from_bytes(wire("KE1", ke1.to_bytes())), CRED_ID, stored
    )
    ke3, _, _ = generate_ke3(
        client_state, KE2.from_bytes(wire("KE2", ke2.to_bytes())), config=CONFIG
    )
    server_finish(server_state, KE3.from_bytes(wire("KE3", ke3.to_bytes())))


@given(
    target=st.sampled_from(TAMPERABLE),
    position=st.integers(min_value=0, max_value=400),
    mask=st.integers(min_value=1, max_value=255),
)
def test_any_single_byte_change_to_any_message_is_rejected(
    target: str, position: int, mask: int
) -> None:
    """Changing any one byte of any serialized message makes the exchange fail with
    DecodeError (at parsing) or InvalidLogin — never a session key.

    For the registration messages (request, response, record) the client cannot detect
    the change during registration (it cannot check the server's OPRF evaluation, and
    the record is only used by the server), so the rejection may only come at the first
    login, as InvalidLogin. KE1 changes surface at the client's GenerateKE3 (the
    transcripts differ), KE2 changes at GenerateKE3, KE3 changes at ServerFinish.
    """
    with pytest.raises((DecodeError, InvalidLogin)):
        _tampered_flow(target, position, mask)


def test_untampered_flow_through_rfc_functions_succeeds() -> None:
    """Control for the tampering property: with no byte changed the same flow works."""
    _tampered_flow("none", 0, 1)


@given(cls=st.sampled_from(MESSAGE_TYPES), data=st.data())
def test_from_bytes_on_arbitrary_bytes_raises_only_decode_error(
    cls: Any, data: st.DataObject
) -> None:
    # Half the time exactly the right length, so the element checks are exercised.
    blob = data.draw(st.binary(max_size=400) | st.binary(min_size=cls.LEN, max_size=cls.LEN))
    try:
        message = cls.from_bytes(blob)
    except DecodeError:
        return
    assert message.to_bytes() == blob


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda c: c.__name__)
def test_from_bytes_rejects_trailing_and_missing_bytes(cls: Any) -> None:
    flow = _honest_flow(b"pw")
    examples: dict[type, Any] = {
        Envelope: flow.record.envelope,
        RegistrationRecord: flow.record,
        KE1: flow.ke1,
        CredentialRequest: flow.ke1.credential_request,
        RegistrationRequest: RegistrationRequest(flow.ke1.credential_request.blinded_message),
        AuthRequest: flow.ke1.auth_request,
        KE2: flow.ke2,
        CredentialResponse: flow.ke2.credential_response,
        AuthResponse: flow.ke2.auth_response,
        RegistrationResponse: RegistrationResponse(
            flow.ke2.credential_response.evaluated_message, Element.generator()
        ),
        KE3: flow.ke3,
    }
    good = examples[cls].to_bytes()
    assert len(good) == cls.LEN
    assert cls.from_bytes(good) == examples[cls]
    for bad in (good + b"\x00", good[:-1], b""):
        with pytest.raises(DecodeError):
            cls.from_bytes(bad)


@pytest.mark.parametrize("cls", [c for c in MESSAGE_TYPES if c not in (Envelope, KE3)])
def test_from_bytes_rejects_identity_and_non_canonical_elements(cls: Any) -> None:
    """Every element-bearing message: the first element field set to the identity or
    to a non-canonical encoding (p, the field prime, little-endian; or a valid encoding
    with bit 255 set, which libsodium 1.0.18 would decode to the same point) is refused."""
    flow = _honest_flow(b"pw")
    first_element_at = {
        RegistrationRequest: 0,
        RegistrationResponse: 0,
        RegistrationRecord: 0,
        CredentialRequest: 0,
        CredentialResponse: 0,
        AuthRequest: 32,
        AuthResponse: 32,
        KE1: 0,
        KE2: 0,
    }[cls]
    base = bytearray(b"\x01" * cls.LEN)
    if cls is KE1:
        base = bytearray(flow.ke1.to_bytes())
    elif cls is KE2:
        base = bytearray(flow.ke2.to_bytes())
    p_le = ((1 << 255) - 19).to_bytes(32, "little")
    generator = Element.generator().encoded
    high_bit = generator[:31] + bytes([generator[31] | 0x80])  # same point on libsodium 1.0.18
    for bad_element in (bytes(32), p_le, high_bit):
        blob = bytearray(base)
        blob[first_element_at : first_element_at + 32] = bad_element
        with pytest.raises(DecodeError):
            cls.from_bytes(bytes(blob))


@given(password=passwords, wrong=passwords)
def test_wrong_password_is_invalid_login(password: bytes, wrong: bytes) -> None:
    if password == wrong:
        wrong = password + b"!"
    client = OpaqueClient(CONFIG)
    request, reg_state = client.start_registration(password)
    registered = client.finish_registration(
        reg_state, SERVER.create_registration_response(request, CRED_ID)
    )
    ke1, client_state = client.start_login(wrong)
    ke2, server_state = SERVER.start_login(ke1, CRED_ID, registered.record)
    with pytest.raises(InvalidLogin) as excinfo:
        client.finish_login(client_state, ke2)
    assert str(excinfo.value) == "OPAQUE login failed"
    with pytest.raises(InvalidLogin):
        SERVER.finish_login(server_state, KE3(bytes(64)))


def test_context_or_identity_mismatch_is_invalid_login() -> None:
    client = OpaqueClient(CONFIG)
    request, reg_state = client.start_registration(b"pw")
    record = client.finish_registration(
        reg_state, SERVER.create_registration_response(request, CRED_ID)
    ).record
    other_context = OpaqueClient(OpaqueConfig(context=b"other app", ksf=UnsafeIdentityKsf()))
    other_identity = OpaqueClient(CONFIG, server_identity=b"someone-else.example")
    for mismatched in (other_context, other_identity):
        ke1, state = mismatched.start_login(b"pw")
        ke2, _ = SERVER.start_login(ke1, CRED_ID, record)
        with pytest.raises(InvalidLogin):
            mismatched.finish_login(state, ke2)


def test_state_reuse_is_protocol_state_error() -> None:
    client = OpaqueClient(CONFIG)
    request, reg_state = client.start_registration(b"pw")
    response = SERVER.create_registration_response(request, CRED_ID)
    record = client.finish_registration(reg_state, response).record
    with pytest.raises(ProtocolStateError):
        client.finish_registration(reg_state, response)

    ke1, client_state = client.start_login(b"pw")
    ke2, server_state = SERVER.start_login(ke1, CRED_ID, record)
    result = client.finish_login(client_state, ke2)
    with pytest.raises(ProtocolStateError):
        client.finish_login(client_state, ke2)
    assert SERVER.finish_login(server_state, result.ke3) == result.session_key
    with pytest.raises(ProtocolStateError):
        SERVER.finish_login(server_state, result.ke3)


def test_failed_attempt_also_consumes_state() -> None:
    """A failed GenerateKE3 / ServerFinish cannot be retried with the same state."""
    client = OpaqueClient(CONFIG)
    request, reg_state = client.start_registration(b"pw")
    record = client.finish_registration(
        reg_state, SERVER.create_registration_response(request, CRED_ID)
    ).record
    ke1, client_state = client.start_login(b"wrong")
    ke2, server_state = SERVER.start_login(ke1, CRED_ID, record)
    with pytest.raises(InvalidLogin):
        client.finish_login(client_state, ke2)
    with pytest.raises(ProtocolStateError):
        client.finish_login(client_state, ke2)
    with pytest.raises(InvalidLogin):
        SERVER.finish_login(server_state, KE3(bytes(64)))
    with pytest.raises(ProtocolStateError):
        SERVER.finish_login(server_state, KE3(bytes(64)))


def test_states_are_redacted_and_cannot_be_copied() -> None:
    password = b"hunter2-very-secret"
    ke1, client_state = generate_ke1(password)
    record = create_fake_record()
    _, server_state = SERVER.start_login(ke1, CRED_ID, record)
    states: list[ClientLoginState | ServerLoginState] = [client_state, server_state]
    for state in states:
        text = repr(state)
        assert "redacted" in text
        assert password.hex() not in text
        assert "hunter2" not in text
        for clone in (copy.copy, copy.deepcopy, pickle.dumps):
            with pytest.raises(TypeError):
                clone(state)
    assert "redacted" in repr(SERVER)
    assert bytes(range(64)).hex() not in repr(SERVER)
    assert record.masking_key.hex() not in repr(record)


@given(password=passwords)
def test_unknown_user_gets_a_fake_response_of_the_same_shape(password: bytes) -> None:
    """RFC 9807 §10.9: for an unknown user the server answers a KE2 of the same length
    and structure; the client fails with InvalidLogin and the server never accepts."""
    client = OpaqueClient(CONFIG)
    request, reg_state = client.start_registration(password)
    record = client.finish_registration(
        reg_state, SERVER.create_registration_response(request, CRED_ID)
    ).record

    ke1, _ = client.start_login(password)
    real_ke2, _ = SERVER.start_login(ke1, CRED_ID, record)
    ke1, client_state = client.start_login(password)
    fake_ke2, server_state = SERVER.start_login(ke1, b"unknown-user", None)

    real_bytes, fake_bytes = real_ke2.to_bytes(), fake_ke2.to_bytes()
    assert len(fake_bytes) == len(real_bytes) == KE2.LEN
    assert KE2.from_bytes(fake_bytes) == fake_ke2
    with pytest.raises(InvalidLogin):
        client.finish_login(client_state, KE2.from_bytes(fake_bytes))
    with pytest.raises(InvalidLogin):
        SERVER.finish_login(server_state, KE3(bytes(64)))


def test_fake_record_state_never_accepts_even_a_correct_mac() -> None:
    """Defense in depth: a state made with ``record_is_fake=True`` is refused by
    ServerFinish even when the client's MAC is right (here the "fake" record is in fact
    a real one whose password the client knows, so the client does finish)."""
    password = b"pw"
    request, reg_state = create_registration_request(password)
    response = SERVER.create_registration_response(request, CRED_ID)
    record, _ = finalize_registration_request(reg_state, response, config=CONFIG)
    ke1, client_state = generate_ke1(password)
    ke2, server_state = generate_ke2(
        server_identity=None,
        server_private_key=Scalar.from_int(0x1234567890ABCDEF),
        server_public_key=SERVER.public_key,
        record=record,
        credential_identifier=CRED_ID,
        oprf_seed=bytes(range(64)),
        ke1=ke1,
        client_identity=None,
        config=CONFIG,
        record_is_fake=True,
    )
    ke3, _, _ = generate_ke3(client_state, ke2, config=CONFIG)  # the client is satisfied
    with pytest.raises(InvalidLogin):
        server_finish(server_state, ke3)


def test_fake_record_has_the_shape_of_a_real_one() -> None:
    fake = create_fake_record()
    assert fake.envelope == Envelope.zero()
    assert len(fake.to_bytes()) == RegistrationRecord.LEN
    assert RegistrationRecord.from_bytes(fake.to_bytes()) == fake
