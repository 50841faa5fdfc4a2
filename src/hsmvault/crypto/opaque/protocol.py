"""OPAQUE-3DH registration and login, ristretto255-SHA512 (RFC 9807 §5, §6).

The RFC functions under their RFC names in snake_case. Differences from the RFC's
pseudocode, all of them about state and randomness:

* The RFC's implicit client/server state is explicit and **single-use**:
  :class:`ClientRegistrationState`, :class:`ClientLoginState` and
  :class:`ServerLoginState` are returned by the first step and consumed by the next; a
  second use raises :class:`~hsmvault.errors.ProtocolStateError`. They cannot be copied
  or pickled and their ``repr`` shows nothing secret. ``finalize_registration_request``
  takes the registration state instead of the RFC's ``(password, blind)`` pair.
* Every random value (blinds, nonces, keyshare seeds) can be given explicitly (test
  vectors); otherwise it is drawn from ``rng`` (``Callable[[int], bytes]``, default
  :func:`secrets.token_bytes`).
* ``context`` and the KSF come from an :class:`~hsmvault.crypto.opaque.config.OpaqueConfig`.
  Identities are optional and default to the public keys (RFC 9807 §4).

Errors. Malformed peer messages fail while parsing (``from_bytes``) with
:class:`~hsmvault.errors.DecodeError`. Every authentication failure — envelope recovery
(wrong password, tampered record or response), a bad server MAC, a bad client MAC — is
one :class:`~hsmvault.errors.InvalidLogin` with one message. Caller mistakes (wrong
lengths of seeds or nonces, over-long identities or passwords) are
:class:`~hsmvault.errors.InvalidParameter`.

Hazmat: most applications want :mod:`hsmvault.crypto.opaque.parties`.
"""

from __future__ import annotations

import hmac
from typing import Any, Generic, NoReturn, TypeVar

from hsmvault.crypto import oprf
from hsmvault.crypto.ksf import Ksf
from hsmvault.crypto.opaque.config import OpaqueConfig
from hsmvault.crypto.opaque.envelope import (
    LOGIN_FAILED,
    RecoverResult,
    create_cleartext_credentials,
    derive_randomized_password,
    masking_key_from,
    recover,
    store,
)
from hsmvault.crypto.opaque.key_schedule import derive_keys, preamble
from hsmvault.crypto.opaque.messages import (
    KE1,
    KE2,
    KE3,
    MASKED_RESPONSE_LEN,
    AuthRequest,
    AuthResponse,
    CredentialRequest,
    CredentialResponse,
    Envelope,
    RegistrationRecord,
    RegistrationRequest,
    RegistrationResponse,
)
from hsmvault.crypto.opaque.suite import (
    NN,
    NPK,
    NSEED,
    derive_dh_key_pair,
    derive_oprf_key,
    diffie_hellman,
    expand,
    hash_,
    mac,
    random_bytes,
)
from hsmvault.crypto.ristretto255 import Element, RandomBytes, Scalar
from hsmvault.errors import InvalidLogin, InvalidParameter, ProtocolStateError

__all__ = [
    "ClientLoginState",
    "ClientRegistrationState",
    "ServerLoginState",
    "create_credential_request",
    "create_credential_response",
    "create_registration_request",
    "create_registration_response",
    "finalize_registration_request",
    "generate_ke1",
    "generate_ke2",
    "generate_ke3",
    "recover_credentials",
    "server_finish",
]

_MAX_PASSWORD_LEN = 0xFFFF  # RFC 9497: the OPRF input is length-prefixed with 2 bytes

_T = TypeVar("_T")


class _SingleUseState(Generic[_T]):
    """Holds protocol secrets until the one step that consumes them."""

    __slots__ = ("_secrets",)

    def __init__(self, secrets: _T) -> None:
        self._secrets: _T | None = secrets

    @property
    def used(self) -> bool:
        """Whether the state was consumed (its secrets are dropped)."""
        return self._secrets is None

    def _take(self) -> _T:
        secrets = self._secrets
        if secrets is None:
            raise ProtocolStateError(f"{type(self).__name__} is single-use and was already used")
        self._secrets = None
        return secrets

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<redacted>, used={self.used})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("single-use protocol state cannot be copied or pickled")

    def __copy__(self) -> NoReturn:
        self.__reduce__()

    def __deepcopy__(self, memo: dict[int, Any]) -> NoReturn:
        self.__reduce__()


class ClientRegistrationState(_SingleUseState[tuple[bytes, Scalar]]):
    """``(password, blind)`` between :func:`create_registration_request` and
    :func:`finalize_registration_request`."""

    __slots__ = ()


class ClientLoginState(_SingleUseState[tuple[bytes, Scalar, Scalar, KE1]]):
    """RFC 9807 §6 ``ClientState``: password, OPRF blind, ``client_secret`` and ``ke1``
    between :func:`generate_ke1` and :func:`generate_ke3`."""

    __slots__ = ()


class ServerLoginState(_SingleUseState[tuple[bytes, bytes, bool]]):
    """RFC 9807 §6.4 ``ServerAkeState``: ``expected_client_mac`` and ``session_key``
    between :func:`generate_ke2` and :func:`server_finish`."""

    __slots__ = ()


def _check_password(password: bytes) -> None:
    if len(password) > _MAX_PASSWORD_LEN:
        raise InvalidParameter("password must be at most 65535 bytes")


def _check_len(value: bytes, length: int, what: str) -> bytes:
    if len(value) != length:
        raise InvalidParameter(f"{what} must be {length} bytes")
    return value


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


# --- Registration (RFC 9807 §5.2) ---------------------------------------------------


def create_registration_request(
    password: bytes, *, blind: Scalar | None = None, rng: RandomBytes | None = None
) -> tuple[RegistrationRequest, ClientRegistrationState]:
    """RFC 9807 §5.2.1 ``CreateRegistrationRequest``: blind the password.

    ``blind`` fixes the OPRF blind (test vectors). Returns the request for the server
    and the state for :func:`finalize_registration_request`.
    """
    _check_password(password)
    blind_, blinded = oprf.blind(password, blind_scalar=blind, rng=rng)
    return RegistrationRequest(blinded), ClientRegistrationState((bytes(password), blind_))


def create_registration_response(
    request: RegistrationRequest,
    *,
    server_public_key: Element,
    credential_identifier: bytes,
    oprf_seed: bytes,
) -> RegistrationResponse:
    """RFC 9807 §5.2.2 ``CreateRegistrationResponse``: evaluate the OPRF under the
    credential's key derived from ``oprf_seed`` (``Nh`` = 64 bytes)."""
    oprf_key = derive_oprf_key(oprf_seed, credential_identifier)
    evaluated = oprf.blind_evaluate(oprf_key, request.blinded_message)
    return RegistrationResponse(evaluated, server_public_key)


def finalize_registration_request(
    state: ClientRegistrationState,
    response: RegistrationResponse,
    *,
    config: OpaqueConfig,
    server_identity: bytes | None = None,
    client_identity: bytes | None = None,
    envelope_nonce: bytes | None = None,
    rng: RandomBytes | None = None,
) -> tuple[RegistrationRecord, bytes]:
    """RFC 9807 §5.2.3 ``FinalizeRegistrationRequest``: returns ``(record, export_key)``.

    Consumes ``state``. The KSF is ``config.ksf``. The client cannot tell whether the
    server evaluated the OPRF honestly; a tampered request or response only shows at
    the first login (as :class:`InvalidLogin`).
    """
    password, blind = state._take()
    oprf_output = oprf.finalize(password, blind, response.evaluated_message)
    randomized_password = derive_randomized_password(oprf_output, config.ksf)
    stored = store(
        randomized_password,
        response.server_public_key,
        server_identity,
        client_identity,
        envelope_nonce=envelope_nonce,
        rng=rng,
    )
    record = RegistrationRecord(stored.client_public_key, stored.masking_key, stored.envelope)
    return record, stored.export_key


# --- Credential retrieval (RFC 9807 §6.3.2) -----------------------------------------


def create_credential_request(
    password: bytes, *, blind: Scalar | None = None, rng: RandomBytes | None = None
) -> tuple[CredentialRequest, Scalar]:
    """RFC 9807 §6.3.2.1 ``CreateCredentialRequest``: returns ``(request, blind)``."""
    _check_password(password)
    blind_, blinded = oprf.blind(password, blind_scalar=blind, rng=rng)
    return CredentialRequest(blinded), blind_


def create_credential_response(
    request: CredentialRequest,
    *,
    server_public_key: Element,
    record: RegistrationRecord,
    credential_identifier: bytes,
    oprf_seed: bytes,
    masking_nonce: bytes | None = None,
    rng: RandomBytes | None = None,
) -> CredentialResponse:
    """RFC 9807 §6.3.2.2 ``CreateCredentialResponse``: evaluate the OPRF and mask
    ``server_public_key || envelope`` under the record's masking key.

    For an unknown user pass a fake record (:mod:`hsmvault.crypto.opaque.fake`): the
    computation is the same, so the response is indistinguishable (RFC 9807 §10.9).
    """
    oprf_key = derive_oprf_key(oprf_seed, credential_identifier)
    evaluated = oprf.blind_evaluate(oprf_key, request.blinded_message)
    nonce = masking_nonce if masking_nonce is not None else random_bytes(rng, NN)
    _check_len(nonce, NN, "masking_nonce")
    pad = expand(record.masking_key, nonce + b"CredentialResponsePad", MASKED_RESPONSE_LEN)
    masked = _xor(pad, bytes(server_public_key) + record.envelope.to_bytes())
    return CredentialResponse(evaluated, nonce, masked)


def recover_credentials(
    password: bytes,
    blind: Scalar,
    response: CredentialResponse,
    server_identity: bytes | None,
    client_identity: bytes | None,
    *,
    ksf: Ksf,
) -> RecoverResult:
    """RFC 9807 §6.3.2.3 ``RecoverCredentials``: finish the OPRF, stretch, unmask and
    open the envelope. Raises :class:`InvalidLogin` when the envelope does not open."""
    oprf_output = oprf.finalize(password, blind, response.evaluated_message)
    randomized_password = derive_randomized_password(oprf_output, ksf)
    masking_key = masking_key_from(randomized_password)
    pad = expand(
        masking_key, response.masking_nonce + b"CredentialResponsePad", MASKED_RESPONSE_LEN
    )
    unmasked = _xor(pad, response.masked_response)
    server_public_key, envelope = unmasked[:NPK], Envelope.from_bytes(unmasked[NPK:])
    return recover(
        randomized_password, server_public_key, envelope, server_identity, client_identity
    )


# --- AKE (RFC 9807 §6.2, 3DH §6.4.3-§6.4.4) -------------------------------------------


def generate_ke1(
    password: bytes,
    *,
    blind: Scalar | None = None,
    client_nonce: bytes | None = None,
    client_keyshare_seed: bytes | None = None,
    rng: RandomBytes | None = None,
) -> tuple[KE1, ClientLoginState]:
    """RFC 9807 §6.2.1 ``GenerateKE1`` (with §6.4.3 ``AuthClientStart``).

    Returns ``KE1`` and the state for :func:`generate_ke3`. Values not given are drawn
    from ``rng`` in this order: blind, client_nonce, client_keyshare_seed.
    """
    request, blind_ = create_credential_request(password, blind=blind, rng=rng)
    nonce = client_nonce if client_nonce is not None else random_bytes(rng, NN)
    seed = client_keyshare_seed if client_keyshare_seed is not None else random_bytes(rng, NSEED)
    _check_len(nonce, NN, "client_nonce")
    _check_len(seed, NSEED, "client_keyshare_seed")
    keyshare = derive_dh_key_pair(seed)
    ke1 = KE1(request, AuthRequest(nonce, keyshare.pk))
    return ke1, ClientLoginState((bytes(password), blind_, keyshare.sk, ke1))


def generate_ke2(
    *,
    server_identity: bytes | None,
    server_private_key: Scalar,
    server_public_key: Element,
    record: RegistrationRecord,
    credential_identifier: bytes,
    oprf_seed: bytes,
    ke1: KE1,
    client_identity: bytes | None,
    config: OpaqueConfig,
    record_is_fake: bool = False,
    masking_nonce: bytes | None = None,
    server_nonce: bytes | None = None,
    server_keyshare_seed: bytes | None = None,
    rng: RandomBytes | None = None,
) -> tuple[KE2, ServerLoginState]:
    """RFC 9807 §6.2.2 ``GenerateKE2`` (with §6.4.4 ``AuthServerRespond``).

    Returns ``KE2`` and the state for :func:`server_finish`. Random values not given
    are drawn from ``rng`` in this order: masking_nonce, server_nonce,
    server_keyshare_seed.

    ``record_is_fake`` marks ``record`` as the fake record of an unknown user (RFC 9807
    §10.9): KE2 is computed exactly as for a real record, but :func:`server_finish` on
    the returned state always raises :class:`InvalidLogin`.
    """
    credential_response = create_credential_response(
        ke1.credential_request,
        server_public_key=server_public_key,
        record=record,
        credential_identifier=credential_identifier,
        oprf_seed=oprf_seed,
        masking_nonce=masking_nonce,
        rng=rng,
    )
    creds = create_cleartext_credentials(
        bytes(server_public_key), bytes(record.client_public_key), server_identity, client_identity
    )
    # AuthServerRespond
    nonce = server_nonce if server_nonce is not None else random_bytes(rng, NN)
    seed = server_keyshare_seed if server_keyshare_seed is not None else random_bytes(rng, NSEED)
    _check_len(nonce, NN, "server_nonce")
    _check_len(seed, NSEED, "server_keyshare_seed")
    keyshare = derive_dh_key_pair(seed)
    transcript = preamble(
        context=config.context,
        client_identity=creds.client_identity,
        ke1=ke1,
        server_identity=creds.server_identity,
        credential_response=credential_response,
        server_nonce=nonce,
        server_public_keyshare=keyshare.pk,
    )
    client_keyshare = ke1.auth_request.client_public_keyshare
    ikm = (
        diffie_hellman(keyshare.sk, client_keyshare)
        + diffie_hellman(server_private_key, client_keyshare)
        + diffie_hellman(keyshare.sk, record.client_public_key)
    )
    keys = derive_keys(ikm, transcript)
    server_mac = mac(keys.km2, hash_(transcript))
    expected_client_mac = mac(keys.km3, hash_(transcript + server_mac))
    ke2 = KE2(credential_response, AuthResponse(nonce, keyshare.pk, server_mac))
    return ke2, ServerLoginState((expected_client_mac, keys.session_key, not record_is_fake))


def generate_ke3(
    state: ClientLoginState,
    ke2: KE2,
    *,
    config: OpaqueConfig,
    client_identity: bytes | None = None,
    server_identity: bytes | None = None,
) -> tuple[KE3, bytes, bytes]:
    """RFC 9807 §6.2.3 ``GenerateKE3`` (with §6.4.3 ``AuthClientFinalize``).

    Consumes ``state`` (even on failure: retry with a new KE1). Returns
    ``(ke3, session_key, export_key)``; use ``export_key`` only after this returns, i.e.
    after the server was authenticated (RFC 9807 §6). Raises :class:`InvalidLogin` for
    a wrong password, a tampered ``ke2`` or a server that does not hold the record.
    """
    password, blind, client_secret, ke1 = state._take()
    recovered = recover_credentials(
        password,
        blind,
        ke2.credential_response,
        server_identity,
        client_identity,
        ksf=config.ksf,
    )
    creds = recovered.cleartext_credentials
    server_keyshare = ke2.auth_response.server_public_keyshare
    ikm = (
        diffie_hellman(client_secret, server_keyshare)
        + diffie_hellman(client_secret, recovered.server_public_key)
        + diffie_hellman(recovered.client_private_key, server_keyshare)
    )
    transcript = preamble(
        context=config.context,
        client_identity=creds.client_identity,
        ke1=ke1,
        server_identity=creds.server_identity,
        credential_response=ke2.credential_response,
        server_nonce=ke2.auth_response.server_nonce,
        server_public_keyshare=server_keyshare,
    )
    keys = derive_keys(ikm, transcript)
    expected_server_mac = mac(keys.km2, hash_(transcript))
    if not hmac.compare_digest(ke2.auth_response.server_mac, expected_server_mac):
        raise InvalidLogin(LOGIN_FAILED)
    client_mac = mac(keys.km3, hash_(transcript + expected_server_mac))
    return KE3(client_mac), keys.session_key, recovered.export_key


def server_finish(state: ServerLoginState, ke3: KE3) -> bytes:
    """RFC 9807 §6.2.4 ``ServerFinish`` (§6.4.4 ``AuthServerFinalize``): check the
    client's MAC in constant time and return the ``session_key``.

    Consumes ``state``. Raises :class:`InvalidLogin` if the MAC is wrong or the state
    belongs to a fake record (unknown user).
    """
    expected_client_mac, session_key, is_real = state._take()
    mac_ok = hmac.compare_digest(ke3.client_mac, expected_client_mac)
    if not (mac_ok and is_real):
        raise InvalidLogin(LOGIN_FAILED)
    return session_key
