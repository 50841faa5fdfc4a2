"""The SDK's passkey flows (``VaultClient.*passkey*``, ``client.passkeys``) against the
real gateway app: in process through Starlette's TestClient (an ``httpx.Client``), and
once through a real uvicorn server on loopback. Authenticators are the SDK's software
authenticator, or wrappers of it that behave like other platforms."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from hsmvault.client.errors import NotFound, Unauthorized
from hsmvault.client.http import GatewayHttp
from hsmvault.client.passkeys import (
    CreateResult,
    GetResult,
    NoWrappedKey,
    PasskeyApi,
    PasskeyConflict,
    PasskeyRefused,
    PrfUnavailable,
    SoftwareAuthenticator,
)
from hsmvault.client.passkeys.flows import b64url
from hsmvault.client.sdk import VaultClient
from hsmvault.crypto.backup_stream import BackupKey
from hsmvault.errors import DecodeError, InvalidParameter, VerificationError
from hsmvault.host.gateway import (
    DevTokenIssuer,
    GatewayConfig,
    GatewayServer,
    RateLimit,
    create_app,
)
from hsmvault.host.storage.base import MetadataStore
from hsmvault.host.storage.sqlite import SqliteMetadataStore
from tests.host.conftest import FakeClock
from tests.host.fakes import MemoryBlobStore, MemoryMetadataStore, StubFleet

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

ISSUER = "https://auth.test"
ORIGIN = "http://localhost:8420"
URL = "http://testserver"


class Gateway:
    """A gateway app with passkeys for ``ORIGIN``, and SDK clients for its users."""

    def __init__(self, metadata: MetadataStore) -> None:
        self.clock = FakeClock()
        self.issuer = DevTokenIssuer(issuer=ISSUER, clock=self.clock)
        config = GatewayConfig(
            issuer_public_keys=(self.issuer.public_key_pem(),),
            issuer=ISSUER,
            user_rate=RateLimit(1000.0, 10_000),
            address_rate=RateLimit(1000.0, 10_000),
            passkey_origins=(ORIGIN,),
        )
        self.app = create_app(
            config,
            fleets={"default": StubFleet()},
            blobs=MemoryBlobStore(),
            metadata=metadata,
            clock=self.clock,
        )
        self.http = TestClient(self.app)

    def client(self, user: str = "alice") -> VaultClient:
        return VaultClient(URL, lambda: self.issuer.mint(user), http=self.http)


@pytest.fixture(params=["memory", "sqlite"])
def gateway(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Gateway]:
    metadata: MetadataStore
    if request.param == "memory":
        metadata = MemoryMetadataStore()
    else:
        metadata = SqliteMetadataStore(tmp_path / "meta.sqlite3")
    yield Gateway(metadata)
    metadata.close()


@pytest.fixture
def vault(gateway: Gateway) -> VaultClient:
    return gateway.client()


@pytest.fixture
def bk() -> BackupKey:
    return BackupKey.generate()


class NoPrfAtCreate:
    """An authenticator that evaluates the PRF only at assertion (CTAP2.1
    ``hmac-secret`` without ``hmac-secret-mc``, as Chromium's with ``hasPrf: false``)."""

    def __init__(self, inner: SoftwareAuthenticator) -> None:
        self.inner = inner
        self.creates = self.gets = 0

    def create(self, options: Mapping[str, Any], prf_input: bytes | None) -> CreateResult:
        self.creates += 1
        return CreateResult(self.inner.create(options, prf_input).response_json, None)

    def get(self, options: Mapping[str, Any], prf_inputs: Mapping[bytes, bytes]) -> GetResult:
        self.gets += 1
        return self.inner.get(options, prf_inputs)


class NoPrf(NoPrfAtCreate):
    """An authenticator without the PRF extension at all."""

    def get(self, options: Mapping[str, Any], prf_inputs: Mapping[bytes, bytes]) -> GetResult:
        got = self.inner.get(options, prf_inputs)
        return GetResult(got.response_json, got.credential_id, None)


class Slow(NoPrfAtCreate):
    """The user takes ``seconds`` to answer each assertion."""

    def __init__(self, inner: SoftwareAuthenticator, clock: FakeClock, seconds: float) -> None:
        super().__init__(inner)
        self.clock, self.seconds = clock, seconds

    def create(self, options: Mapping[str, Any], prf_input: bytes | None) -> CreateResult:
        return self.inner.create(options, prf_input)

    def get(self, options: Mapping[str, Any], prf_inputs: Mapping[bytes, bytes]) -> GetResult:
        self.clock.advance(self.seconds)
        return self.inner.get(options, prf_inputs)


# --------------------------------------------------------------------------- flows


def test_protect_recover_list_remove(vault: VaultClient, bk: BackupKey) -> None:
    device = SoftwareAuthenticator(ORIGIN)
    cid = vault.protect_with_passkey(device, bk)
    assert device.credential_ids == [cid]
    [info] = vault.list_passkeys()
    assert (info.credential_id, info.has_wrapped_key, info.last_used_at) == (cid, True, None)
    assert vault.recover_with_passkey(device).expose_secret() == bk.expose_secret()
    assert vault.recover_with_passkey(device, cid).expose_secret() == bk.expose_secret()
    assert vault.list_passkeys()[0].last_used_at is not None
    vault.remove_passkey(cid)
    assert vault.list_passkeys() == []
    with pytest.raises(NotFound):
        vault.recover_with_passkey(device)
    with pytest.raises(NotFound):
        vault.remove_passkey(cid)


def test_several_passkeys_each_recover_and_removal_spares_the_others(
    vault: VaultClient, bk: BackupKey
) -> None:
    devices = [SoftwareAuthenticator(ORIGIN) for _ in range(3)]
    ids = [vault.protect_with_passkey(d, bk) for d in devices]
    assert {p.credential_id for p in vault.list_passkeys()} == set(ids)
    for device in devices:
        assert vault.recover_with_passkey(device).expose_secret() == bk.expose_secret()
    vault.remove_passkey(ids[1])
    with pytest.raises(Exception, match="NotAllowedError"):
        vault.recover_with_passkey(devices[1])  # its credential is no longer offered
    for device in (devices[0], devices[2]):
        assert vault.recover_with_passkey(device).expose_secret() == bk.expose_secret()


def test_salt_rotation_keeps_recovery_working(vault: VaultClient, bk: BackupKey) -> None:
    device = SoftwareAuthenticator(ORIGIN)
    cid = vault.protect_with_passkey(device, bk)
    http = vault._http
    old_salt = PasskeyApi(http).authentication_options(cid)[1][cid]
    vault.rotate_passkey_salt(device, cid, bk)
    new_salt = PasskeyApi(http).authentication_options(cid)[1][cid]
    assert new_salt != old_salt
    assert vault.recover_with_passkey(device).expose_secret() == bk.expose_secret()
    # A rotation may also change the protected key (e.g. after a new backup key).
    other = BackupKey.generate()
    vault.rotate_passkey_salt(device, cid, other)
    assert vault.recover_with_passkey(device).expose_secret() == other.expose_secret()


def test_no_prf_at_creation_stores_the_wrap_after_one_assertion(
    vault: VaultClient, bk: BackupKey
) -> None:
    device = NoPrfAtCreate(SoftwareAuthenticator(ORIGIN))
    cid = vault.protect_with_passkey(device, bk)
    assert (device.creates, device.gets) == (1, 1)
    assert vault.list_passkeys()[0].has_wrapped_key
    assert vault.recover_with_passkey(device, cid).expose_secret() == bk.expose_secret()


def test_an_authenticator_without_prf_leaves_nothing_behind(
    vault: VaultClient, bk: BackupKey
) -> None:
    with pytest.raises(PrfUnavailable):
        vault.protect_with_passkey(NoPrf(SoftwareAuthenticator(ORIGIN)), bk)
    assert vault.list_passkeys() == []


def test_a_passkey_without_a_wrap_or_prf_does_not_recover(
    gateway: Gateway, vault: VaultClient, bk: BackupKey
) -> None:
    device = SoftwareAuthenticator(ORIGIN)
    vault.protect_with_passkey(device, bk)
    # a credential registered (by another client) without a wrapped key
    bare = SoftwareAuthenticator(ORIGIN)
    api = PasskeyApi(vault._http)
    options, _salt = api.registration_options()
    api.register(bare.create(options, None).response_json, None)
    with pytest.raises(NoWrappedKey):
        vault.recover_with_passkey(bare)
    with pytest.raises(PrfUnavailable):
        vault.recover_with_passkey(NoPrf(device))

    # a PRF output from another credential does not open the wrap
    class Swapped(NoPrfAtCreate):
        def get(self, options: Mapping[str, Any], prf_inputs: Mapping[bytes, bytes]) -> GetResult:
            got = self.inner.get(options, prf_inputs)
            return GetResult(got.response_json, got.credential_id, bytes(32))

    with pytest.raises(VerificationError):
        vault.recover_with_passkey(Swapped(device))


def test_gateway_refusals_become_passkey_errors(
    gateway: Gateway, vault: VaultClient, bk: BackupKey
) -> None:
    device = SoftwareAuthenticator(ORIGIN)
    vault.protect_with_passkey(device, bk)
    device.faults.user_verified = False
    with pytest.raises(PasskeyRefused, match="user verification") as refused:
        vault.recover_with_passkey(device)
    assert (refused.value.status, refused.value.code) == (403, "passkey_refused")
    device.faults.user_verified = True
    with pytest.raises(PasskeyConflict) as late:
        vault.recover_with_passkey(Slow(device, gateway.clock, 301))
    assert late.value.code == "challenge_expired"
    assert vault.recover_with_passkey(Slow(device, gateway.clock, 60)).expose_secret() == (
        bk.expose_secret()
    )
    with pytest.raises(PasskeyRefused, match="origin"):
        gateway.client().protect_with_passkey(SoftwareAuthenticator("http://localhost:1"), bk)


def test_users_cannot_use_each_others_passkeys(gateway: Gateway, bk: BackupKey) -> None:
    alice, bob = gateway.client("alice"), gateway.client("bob")
    device = SoftwareAuthenticator(ORIGIN)
    cid = alice.protect_with_passkey(device, bk)
    assert bob.list_passkeys() == []
    with pytest.raises(NotFound):
        bob.recover_with_passkey(device)
    with pytest.raises(NotFound):
        bob.remove_passkey(cid)
    assert alice.recover_with_passkey(device).expose_secret() == bk.expose_secret()


def test_bad_arguments_are_refused_before_any_request(vault: VaultClient) -> None:
    device = SoftwareAuthenticator(ORIGIN)
    with pytest.raises(InvalidParameter):
        vault.protect_with_passkey(device, b"\x00" * 32)  # type: ignore[arg-type]
    with pytest.raises(InvalidParameter):
        vault.remove_passkey(b"")
    assert device.credential_ids == []


def test_a_bad_token_is_unauthorized(gateway: Gateway) -> None:
    client = VaultClient(URL, lambda: "not-a-token", http=gateway.http)
    with pytest.raises(Unauthorized):
        client.list_passkeys()


# --------------------------------------------------------------------------- answers


def _mock_api(answer: httpx.Response) -> PasskeyApi:
    transport = httpx.MockTransport(lambda _request: answer)
    http = GatewayHttp(URL, lambda: "t.o.k", client=httpx.Client(transport=transport))
    return PasskeyApi(http)


@pytest.mark.parametrize(
    ("call", "body"),
    [
        ("registration_options", {"publicKey": {}, "prfSalt": b64url(bytes(31))}),
        ("registration_options", {"publicKey": [], "prfSalt": b64url(bytes(32))}),
        ("registration_options", {"prfSalt": "@@"}),
        ("authentication_options", {"publicKey": {}, "prfSalts": {"AA": b64url(bytes(8))}}),
        ("authentication_options", {"publicKey": {}, "prfSalts": []}),
        ("list_passkeys", {"passkeys": [{"credentialId": "AA", "createdAt": "now"}]}),
        (
            "list_passkeys",
            {"passkeys": [{"credentialId": "AA", "createdAt": 1, "hasWrappedKey": 1}]},
        ),
        ("list_passkeys", {"passkeys": {}}),
        ("list_passkeys", []),
    ],
)
def test_malformed_gateway_answers_are_decode_errors(call: str, body: object) -> None:
    api = _mock_api(httpx.Response(200, json=body))
    with pytest.raises(DecodeError):
        getattr(api, call)()


def test_released_wraps_are_checked() -> None:
    body = {"credentialId": "AAAA", "prfSalt": b64url(bytes(32)), "wrappedKey": b64url(bytes(92))}
    with pytest.raises(DecodeError):
        _mock_api(httpx.Response(200, json=body)).authenticate({})
    with pytest.raises(DecodeError):
        _mock_api(httpx.Response(200, content=b"{not json")).authenticate({})


# --------------------------------------------------------------------------- real server


def test_over_a_real_server_with_the_default_origin(tmp_path: Path, bk: BackupKey) -> None:
    """uvicorn on 127.0.0.1; no ``passkey_origins``: the origin is
    ``http://localhost:<the port it serves on>``."""
    issuer = DevTokenIssuer(issuer=ISSUER)
    config = GatewayConfig(issuer_public_keys=(issuer.public_key_pem(),), issuer=ISSUER)
    metadata = SqliteMetadataStore(tmp_path / "meta.sqlite3")
    app = create_app(
        config, fleets={"default": StubFleet()}, blobs=MemoryBlobStore(), metadata=metadata
    )
    try:
        with (
            GatewayServer(app) as server,
            VaultClient(server.url, lambda: issuer.mint("carol")) as vault,
        ):
            device = SoftwareAuthenticator(f"http://localhost:{server.port}")
            cid = vault.protect_with_passkey(device, bk)
            assert vault.recover_with_passkey(device).expose_secret() == bk.expose_secret()
            vault.rotate_passkey_salt(device, cid, bk)
            assert vault.recover_with_passkey(device).expose_secret() == bk.expose_secret()
            with pytest.raises(PasskeyRefused, match="origin"):
                vault.protect_with_passkey(SoftwareAuthenticator("http://localhost:1"), bk)
    finally:
        metadata.close()
