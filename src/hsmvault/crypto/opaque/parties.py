"""A thin object API over :mod:`hsmvault.crypto.opaque.protocol`: one object per party.

:class:`OpaqueServer` holds the server's long-term material (AKE key pair, ``oprf_seed``,
the fake record for unknown users) so callers pass only per-user values.
:class:`OpaqueClient` holds the configuration and optional identities. Both follow the
``start`` → message + single-use state, ``finish(state, message)`` pattern. All
cryptography happens in :mod:`~hsmvault.crypto.opaque.protocol`; nothing is duplicated.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hsmvault.crypto.opaque import protocol
from hsmvault.crypto.opaque.config import OpaqueConfig
from hsmvault.crypto.opaque.fake import create_fake_record
from hsmvault.crypto.opaque.messages import (
    KE1,
    KE2,
    KE3,
    RegistrationRecord,
    RegistrationRequest,
    RegistrationResponse,
)
from hsmvault.crypto.opaque.protocol import (
    ClientLoginState,
    ClientRegistrationState,
    ServerLoginState,
)
from hsmvault.crypto.opaque.suite import NH, NSEED, derive_dh_key_pair, random_bytes
from hsmvault.crypto.ristretto255 import Element, RandomBytes, Scalar, base_mult
from hsmvault.errors import InvalidParameter

__all__ = ["ClientLoginResult", "ClientRegistrationResult", "OpaqueClient", "OpaqueServer"]


class OpaqueServer:
    """The server side (RFC 9807 §3.1 setup, §5.2.2, §6.2.2, §6.2.4).

    ``private_key`` is the AKE key (``server_private_key``); ``oprf_seed`` (``Nh`` = 64
    bytes) derives every credential's OPRF key and must be kept, like the key, for the
    lifetime of the records. ``fake_record`` answers unknown users (RFC 9807 §10.9); one
    is generated if not given — persist it (:meth:`fake_record`) to keep it stable.
    """

    __slots__ = (
        "_config",
        "_fake_record",
        "_oprf_seed",
        "_private_key",
        "_public_key",
        "_server_identity",
    )

    def __init__(
        self,
        private_key: Scalar,
        oprf_seed: bytes,
        *,
        config: OpaqueConfig | None = None,
        server_identity: bytes | None = None,
        fake_record: RegistrationRecord | None = None,
        rng: RandomBytes | None = None,
    ) -> None:
        if private_key.is_zero():
            raise InvalidParameter("server private key must not be zero")
        if len(oprf_seed) != NH:
            raise InvalidParameter("oprf_seed must be Nh = 64 bytes")
        self._private_key = private_key
        self._public_key = base_mult(private_key)
        self._oprf_seed = bytes(oprf_seed)
        self._config = config if config is not None else OpaqueConfig()
        self._server_identity = server_identity
        self._fake_record = fake_record if fake_record is not None else create_fake_record(rng=rng)

    @classmethod
    def generate(
        cls,
        *,
        config: OpaqueConfig | None = None,
        server_identity: bytes | None = None,
        rng: RandomBytes | None = None,
    ) -> OpaqueServer:
        """A new server: a key pair from ``DeriveDiffieHellmanKeyPair(random(Nseed))``,
        a random ``oprf_seed`` and a fresh fake record."""
        key_pair = derive_dh_key_pair(random_bytes(rng, NSEED))
        return cls(
            key_pair.sk,
            random_bytes(rng, NH),
            config=config,
            server_identity=server_identity,
            rng=rng,
        )

    @property
    def public_key(self) -> Element:
        """``server_public_key``."""
        return self._public_key

    @property
    def fake_record(self) -> RegistrationRecord:
        """The record used for unknown users (store it to keep answers stable)."""
        return self._fake_record

    def create_registration_response(
        self, request: RegistrationRequest, credential_identifier: bytes
    ) -> RegistrationResponse:
        """RFC 9807 §5.2.2 for this server. Store the client's record under
        ``credential_identifier``, which must be unique per client (RFC 9807 §8)."""
        return protocol.create_registration_response(
            request,
            server_public_key=self._public_key,
            credential_identifier=credential_identifier,
            oprf_seed=self._oprf_seed,
        )

    def start_login(
        self,
        ke1: KE1,
        credential_identifier: bytes,
        record: RegistrationRecord | None,
        *,
        client_identity: bytes | None = None,
        rng: RandomBytes | None = None,
    ) -> tuple[KE2, ServerLoginState]:
        """RFC 9807 §6.2.2 ``GenerateKE2``. ``record=None`` means the user is unknown:
        the answer is computed the same way from the fake record (RFC 9807 §10.9) and
        :meth:`finish_login` will refuse it."""
        return protocol.generate_ke2(
            server_identity=self._server_identity,
            server_private_key=self._private_key,
            server_public_key=self._public_key,
            record=record if record is not None else self._fake_record,
            credential_identifier=credential_identifier,
            oprf_seed=self._oprf_seed,
            ke1=ke1,
            client_identity=client_identity,
            config=self._config,
            record_is_fake=record is None,
            rng=rng,
        )

    def finish_login(self, state: ServerLoginState, ke3: KE3) -> bytes:
        """RFC 9807 §6.2.4 ``ServerFinish``: the session key, or :class:`InvalidLogin`."""
        return protocol.server_finish(state, ke3)

    def __repr__(self) -> str:
        return f"OpaqueServer(public_key={self._public_key.encoded.hex()}, <secrets redacted>)"

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("OpaqueServer holds secrets and is not picklable")


@dataclass(frozen=True, slots=True)
class ClientRegistrationResult:
    """What registration gives the client: the ``record`` to upload, the ``export_key``
    (secret), and the ``server_public_key`` the record is bound to (check it against
    the fleet keys you trust before uploading)."""

    record: RegistrationRecord
    export_key: bytes = field(repr=False)
    server_public_key: Element


@dataclass(frozen=True, slots=True)
class ClientLoginResult:
    """What a successful login gives the client: ``ke3`` for the server and the secret
    ``session_key`` and ``export_key`` (same as at registration)."""

    ke3: KE3
    session_key: bytes = field(repr=False)
    export_key: bytes = field(repr=False)


class OpaqueClient:
    """The client side (RFC 9807 §5.2.1, §5.2.3, §6.2.1, §6.2.3) for one account.

    ``client_identity``/``server_identity`` default to the public keys (RFC 9807 §4);
    they must be the same at registration and login, and match the server's.
    """

    __slots__ = ("_client_identity", "_config", "_server_identity")

    def __init__(
        self,
        config: OpaqueConfig | None = None,
        *,
        client_identity: bytes | None = None,
        server_identity: bytes | None = None,
    ) -> None:
        self._config = config if config is not None else OpaqueConfig()
        self._client_identity = client_identity
        self._server_identity = server_identity

    def start_registration(
        self, password: bytes, *, rng: RandomBytes | None = None
    ) -> tuple[RegistrationRequest, ClientRegistrationState]:
        """RFC 9807 §5.2.1 ``CreateRegistrationRequest``."""
        return protocol.create_registration_request(password, rng=rng)

    def finish_registration(
        self,
        state: ClientRegistrationState,
        response: RegistrationResponse,
        *,
        rng: RandomBytes | None = None,
    ) -> ClientRegistrationResult:
        """RFC 9807 §5.2.3 ``FinalizeRegistrationRequest`` (runs the KSF)."""
        record, export_key = protocol.finalize_registration_request(
            state,
            response,
            config=self._config,
            server_identity=self._server_identity,
            client_identity=self._client_identity,
            rng=rng,
        )
        return ClientRegistrationResult(record, export_key, response.server_public_key)

    def start_login(
        self, password: bytes, *, rng: RandomBytes | None = None
    ) -> tuple[KE1, ClientLoginState]:
        """RFC 9807 §6.2.1 ``GenerateKE1``."""
        return protocol.generate_ke1(password, rng=rng)

    def finish_login(self, state: ClientLoginState, ke2: KE2) -> ClientLoginResult:
        """RFC 9807 §6.2.3 ``GenerateKE3`` (runs the KSF). Raises :class:`InvalidLogin`."""
        ke3, session_key, export_key = protocol.generate_ke3(
            state,
            ke2,
            config=self._config,
            client_identity=self._client_identity,
            server_identity=self._server_identity,
        )
        return ClientLoginResult(ke3, session_key, export_key)

    def __repr__(self) -> str:
        return f"OpaqueClient(config={self._config!r}, <identities omitted>)"
