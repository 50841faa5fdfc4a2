"""/v1/passkeys (ADR 0011): the gateway's WebAuthn relying party, driven through the
real app with the SDK's software authenticator. Most tests run against each storage
pair (in-memory fake; filesystem + SQLite)."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hsmvault.client.passkeys import AuthenticatorRefused, GetResult, SoftwareAuthenticator
from hsmvault.client.passkeys.wrap import unwrap_with_prf, wrap_with_prf
from hsmvault.crypto.backup_stream import BackupKey
from hsmvault.errors import InvalidParameter, VerificationError
from hsmvault.host.gateway import GatewayConfig, create_app
from hsmvault.host.gateway.openapi import _Placeholder
from hsmvault.host.gateway.passkeys import user_handle
from hsmvault.host.storage.base import BlobStore, MetadataStore

from .conftest import AppFactory, FakeClock, TestClient, client_for

Auth = Callable[[str], dict[str, str]]
Stores = tuple[BlobStore, MetadataStore]
ORIGIN = "http://localhost:8420"
RP_ID = "localhost"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Api:
    """Raw calls to /v1/passkeys as one user."""

    client: TestClient
    auth: Auth
    user: str = "alice"

    def call(self, method: str, path: str, body: object = None) -> httpx.Response:
        response: httpx.Response = self.client.request(
            method, f"/v1/passkeys{path}", json=body, headers=self.auth(self.user)
        )
        return response

    def ok(self, method: str, path: str, body: object = None) -> dict[str, Any]:
        r = self.call(method, path, body)
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out

    def as_user(self, user: str) -> Api:
        return Api(self.client, self.auth, user)

    def authenticate(self, got: GetResult) -> httpx.Response:
        """POST /authentication with the authenticator's answer ``got`` (raw response)."""
        return self.call("POST", "/authentication", {"credential": got.response_json})


def refused(r: httpx.Response, status: int, code: str, words: str = "") -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "detail"}, body  # never a wrapped key or salt
    assert body["error"] == code, body
    assert words in body["detail"], body


def register(
    api: Api, authenticator: SoftwareAuthenticator, bk: BackupKey | None
) -> tuple[bytes, bytes]:
    """A new credential (protecting ``bk`` if given): its id and PRF salt."""
    options = api.ok("POST", "/registration/options", {})
    salt = unb64(options["prfSalt"])
    created = authenticator.create(options["publicKey"], salt)
    cid = unb64(created.response_json["rawId"])
    wrapped = None
    if bk is not None:
        assert created.prf_output is not None
        wrapped = b64(wrap_with_prf(created.prf_output, bk, rp_id=RP_ID, credential_id=cid))
    body = {"credential": created.response_json, "wrappedKey": wrapped}
    assert api.ok("POST", "/registration", body) == {"credentialId": b64(cid)}
    return cid, salt


def assert_with(
    api: Api, authenticator: SoftwareAuthenticator, credential_id: bytes | None = None
) -> tuple[dict[bytes, bytes], GetResult]:
    """Authentication options, then the authenticator's answer (not yet sent)."""
    options = api.ok(
        "POST",
        "/authentication/options",
        {"credentialId": None if credential_id is None else b64(credential_id)},
    )
    salts = {unb64(k): unb64(v) for k, v in options["prfSalts"].items()}
    return salts, authenticator.get(options["publicKey"], salts)


def recover(api: Api, authenticator: SoftwareAuthenticator, cid: bytes | None = None) -> bytes:
    salts, got = assert_with(api, authenticator, cid)
    released = api.ok("POST", "/authentication", {"credential": got.response_json})
    assert released["credentialId"] == b64(got.credential_id)
    assert unb64(released["prfSalt"]) == salts[got.credential_id]
    assert got.prf_output is not None
    assert released["wrappedKey"] is not None
    bk = unwrap_with_prf(
        got.prf_output,
        unb64(released["wrappedKey"]),
        rp_id=RP_ID,
        credential_id=got.credential_id,
    )
    return bk.expose_secret()


@pytest.fixture
def app(make_app: AppFactory, stores: Stores) -> FastAPI:
    return make_app(blobs=stores[0], metadata=stores[1], passkey_origins=(ORIGIN,))


@pytest.fixture
def api(app: FastAPI, auth: Auth) -> Api:
    return Api(client_for(app), auth)


@pytest.fixture
def device() -> SoftwareAuthenticator:
    return SoftwareAuthenticator(ORIGIN)


@pytest.fixture
def bk() -> BackupKey:
    return BackupKey(bytes(range(32)))


# --------------------------------------------------------------------------- happy paths


def test_register_protect_and_recover(
    api: Api, device: SoftwareAuthenticator, bk: BackupKey
) -> None:
    options = api.ok("POST", "/registration/options", {})
    public_key = options["publicKey"]
    assert public_key["rp"] == {"id": RP_ID, "name": "hsmvault"}
    assert unb64(public_key["user"]["id"]) == user_handle(b"alice")
    assert public_key["user"]["name"] == "alice"
    assert len(unb64(public_key["challenge"])) == 32
    assert [p["alg"] for p in public_key["pubKeyCredParams"]] == [-7, -257]
    assert public_key["authenticatorSelection"]["userVerification"] == "required"
    assert public_key["attestation"] == "none"
    assert public_key["timeout"] == 300_000
    assert "extensions" not in public_key
    assert len(unb64(options["prfSalt"])) == 32

    cid, salt = register(api, device, bk)
    [listed] = api.ok("GET", "")["passkeys"]
    assert listed["credentialId"] == b64(cid)
    assert listed["hasWrappedKey"] is True
    assert listed["lastUsedAt"] is None

    salts, got = assert_with(api, device)
    assert salts == {cid: salt}
    released = api.ok("POST", "/authentication", {"credential": got.response_json})
    assert set(released) == {"credentialId", "prfSalt", "wrappedKey"}
    assert unb64(released["prfSalt"]) == salt
    assert got.prf_output == device.prf(cid, salt)
    opened = unwrap_with_prf(
        got.prf_output, unb64(released["wrappedKey"]), rp_id=RP_ID, credential_id=cid
    )
    assert opened.expose_secret() == bk.expose_secret()
    [listed] = api.ok("GET", "")["passkeys"]
    assert listed["lastUsedAt"] is not None


def test_registration_options_exclude_the_users_credentials(
    api: Api, device: SoftwareAuthenticator
) -> None:
    cid, _ = register(api, device, None)
    options = api.ok("POST", "/registration/options")  # an empty body is {}
    assert [unb64(d["id"]) for d in options["publicKey"]["excludeCredentials"]] == [cid]
    with pytest.raises(AuthenticatorRefused, match="InvalidStateError"):
        device.create(options["publicKey"], None)
    other = api.as_user("bob").ok("POST", "/registration/options", {})
    assert other["publicKey"].get("excludeCredentials", []) == []


def test_several_passkeys_each_recover(api: Api, bk: BackupKey) -> None:
    devices = [SoftwareAuthenticator(ORIGIN) for _ in range(3)]
    ids = [register(api, d, bk)[0] for d in devices]
    listed = api.ok("GET", "")["passkeys"]
    assert sorted(p["credentialId"] for p in listed) == sorted(b64(c) for c in ids)
    salts = {
        unb64(k): v for k, v in api.ok("POST", "/authentication/options", {})["prfSalts"].items()
    }
    assert set(salts) == set(ids)
    assert len(set(salts.values())) == 3  # a salt per credential
    for device, cid in zip(devices, ids, strict=True):
        assert recover(api, device) == bk.expose_secret()  # any of the user's
        assert recover(api, device, cid) == bk.expose_secret()  # that one


def test_a_wrap_can_be_stored_after_registration(
    api: Api, device: SoftwareAuthenticator, bk: BackupKey
) -> None:
    cid, salt = register(api, device, None)  # e.g. no PRF result at create time
    salts, got = assert_with(api, device, cid)
    assert salts == {cid: salt}
    released = api.ok("POST", "/authentication", {"credential": got.response_json})
    assert released["wrappedKey"] is None
    _, got = assert_with(api, device, cid)
    assert got.prf_output is not None
    wrapped = wrap_with_prf(got.prf_output, bk, rp_id=RP_ID, credential_id=cid)
    stored = api.ok(
        "PUT",
        f"/{b64(cid)}/wrapped-key",
        {"credential": got.response_json, "wrappedKey": b64(wrapped)},
    )
    assert stored == {"credentialId": b64(cid), "prfSalt": b64(salt)}
    assert api.ok("GET", "")["passkeys"][0]["hasWrappedKey"] is True
    assert recover(api, device) == bk.expose_secret()


# --------------------------------------------------------------------------- other credentials


def test_a_different_credential_does_not_recover(api: Api, bk: BackupKey) -> None:
    protecting, bare = SoftwareAuthenticator(ORIGIN), SoftwareAuthenticator(ORIGIN)
    cid_a, _ = register(api, protecting, bk)
    cid_b, _ = register(api, bare, None)
    # the credential without a wrap gets none
    _, got = assert_with(api, bare)
    assert got.credential_id == cid_b
    released = api.ok("POST", "/authentication", {"credential": got.response_json})
    assert released["wrappedKey"] is None
    # B's PRF output does not open A's wrap, even bound to A's id
    _, got_a = assert_with(api, protecting)
    wrap_a = unb64(
        api.ok("POST", "/authentication", {"credential": got_a.response_json})["wrappedKey"]
    )
    assert got.prf_output is not None
    for cid in (cid_a, cid_b):
        with pytest.raises(VerificationError):
            unwrap_with_prf(got.prf_output, wrap_a, rp_id=RP_ID, credential_id=cid)


def test_users_are_isolated(api: Api, device: SoftwareAuthenticator) -> None:
    cid, _ = register(api, device, None)
    bob = api.as_user("bob")
    refused(bob.call("POST", "/authentication/options", {}), 404, "not_found")
    refused(
        bob.call("POST", "/authentication/options", {"credentialId": b64(cid)}), 404, "not_found"
    )
    refused(bob.call("POST", f"/{b64(cid)}/salt-rotation", {}), 404, "not_found")
    refused(bob.call("DELETE", f"/{b64(cid)}"), 404, "not_found")
    assert bob.ok("GET", "") == {"passkeys": []}
    # alice's challenge is not bob's, and alice's credential is not bob's
    _, got = assert_with(api, device)
    refused(bob.authenticate(got), 403, "passkey_refused", "not issued")
    assert len(api.ok("GET", "")["passkeys"]) == 1


def test_a_credential_id_is_registered_only_once(api: Api) -> None:
    def same_ids(n: int) -> bytes:
        return b"\x07" * n  # every draw equal: same credential id, same credRandom

    register(api, SoftwareAuthenticator(ORIGIN, random_bytes=same_ids), None)
    bob = api.as_user("bob")
    options = bob.ok("POST", "/registration/options", {})
    twin = SoftwareAuthenticator(ORIGIN, random_bytes=same_ids)
    created = twin.create(options["publicKey"], None)
    r = bob.call("POST", "/registration", {"credential": created.response_json})
    refused(r, 409, "credential_exists")
    assert bob.ok("GET", "") == {"passkeys": []}


# --------------------------------------------------------------------------- tampering


@pytest.mark.parametrize(
    ("fault", "words"),
    [
        ({"corrupt_signature": True}, "signature"),
        ({"user_verified": False}, "user verification"),
        ({"user_present": False}, "user presence"),
        ({"rp_id": "evil.example"}, "rpIdHash"),
        ({"origin": "http://localhost:9999"}, "origin"),
        ({"origin": "https://evil.example"}, "origin"),
        ({"cross_origin": True}, "cross-origin"),
        ({"ceremony_type": "webauthn.create"}, "type"),
    ],
)
def test_tampered_assertions_are_refused(
    api: Api, device: SoftwareAuthenticator, bk: BackupKey, fault: dict[str, Any], words: str
) -> None:
    cid, _ = register(api, device, bk)
    for field, value in fault.items():
        setattr(device.faults, field, value)
    _, got = assert_with(api, device)
    refused(api.authenticate(got), 403, "passkey_refused", words)
    # the same faults on the wrapped-key route
    _, got = assert_with(api, device)
    body = {"credential": got.response_json, "wrappedKey": b64(b"\x01" + bytes(92))}
    refused(api.call("PUT", f"/{b64(cid)}/wrapped-key", body), 403, "passkey_refused", words)


@pytest.mark.parametrize(
    ("fault", "words"),
    [
        ({"user_verified": False}, "user verification"),
        ({"rp_id": "evil.example"}, "rpIdHash"),
        ({"origin": "http://127.0.0.1:8420"}, "origin"),
        ({"ceremony_type": "webauthn.get"}, "type"),
        ({"cross_origin": True}, "cross-origin"),
    ],
)
def test_tampered_registrations_are_refused(
    api: Api, device: SoftwareAuthenticator, fault: dict[str, Any], words: str
) -> None:
    for field, value in fault.items():
        setattr(device.faults, field, value)
    options = api.ok("POST", "/registration/options", {})
    created = device.create(options["publicKey"], None)
    r = api.call("POST", "/registration", {"credential": created.response_json})
    refused(r, 403, "passkey_refused", words)
    assert api.ok("GET", "") == {"passkeys": []}


def _with_auth_data(
    response_json: dict[str, Any], edit: Callable[[bytearray], None]
) -> dict[str, Any]:
    changed: dict[str, Any] = json.loads(json.dumps(response_json))
    data = bytearray(unb64(changed["response"]["authenticatorData"]))
    edit(data)
    changed["response"]["authenticatorData"] = b64(bytes(data))
    return changed


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda d: d.__setitem__(32, d[32] & ~0x04), "user verification"),  # UV bit cleared
        (lambda d: d.__setitem__(0, d[0] ^ 0x01), "rpIdHash"),  # rpIdHash changed
        (lambda d: d.__setitem__(36, d[36] ^ 0x01), "signature"),  # counter changed
    ],
)
def test_edited_authenticator_data_is_refused(
    api: Api,
    device: SoftwareAuthenticator,
    bk: BackupKey,
    edit: Callable[[bytearray], None],
    words: str,
) -> None:
    register(api, device, bk)
    _, got = assert_with(api, device)
    changed = _with_auth_data(got.response_json, edit)
    refused(
        api.call("POST", "/authentication", {"credential": changed}), 403, "passkey_refused", words
    )


def test_wrong_rp_id_configuration_is_refused_by_the_authenticator(
    make_app: AppFactory, auth: Auth, device: SoftwareAuthenticator
) -> None:
    """A gateway for another RP id: a browser (and the software authenticator) refuses
    to use it from this origin; an answer made for localhost is refused by it."""
    other = Api(
        client_for(make_app(passkey_rp_id="example.com", passkey_origins=("https://example.com",))),
        auth,
    )
    options = other.ok("POST", "/registration/options", {})
    assert options["publicKey"]["rp"]["id"] == "example.com"
    with pytest.raises(AuthenticatorRefused, match="SecurityError"):
        device.create(options["publicKey"], None)
    options["publicKey"]["rp"]["id"] = RP_ID
    created = device.create(options["publicKey"], None)
    r = other.call("POST", "/registration", {"credential": created.response_json})
    refused(r, 403, "passkey_refused", "origin")


def test_default_origin_is_localhost_on_the_serving_port(
    make_app: AppFactory, auth: Auth, bk: BackupKey
) -> None:
    app = make_app()  # no passkey_origins: http://localhost:<port>
    client = TestClient(app, base_url="http://localhost:8421")
    api = Api(client, auth)
    register(api, SoftwareAuthenticator("http://localhost:8421"), bk)
    options = api.ok("POST", "/registration/options", {})
    created = SoftwareAuthenticator("http://localhost:8420").create(options["publicKey"], None)
    refused(
        api.call("POST", "/registration", {"credential": created.response_json}),
        403,
        "passkey_refused",
        "origin",
    )


# --------------------------------------------------------------------------- challenges


def test_replayed_challenges_are_409(
    api: Api, device: SoftwareAuthenticator, bk: BackupKey
) -> None:
    options = api.ok("POST", "/registration/options", {})
    created = device.create(options["publicKey"], None)
    body = {"credential": created.response_json}
    assert api.call("POST", "/registration", body).status_code == 200
    refused(api.call("POST", "/registration", body), 409, "challenge_replayed")
    _, got = assert_with(api, device)
    assert api.authenticate(got).status_code == 200
    refused(api.authenticate(got), 409, "challenge_replayed")


def test_a_refused_answer_still_consumes_its_challenge(
    api: Api, device: SoftwareAuthenticator
) -> None:
    register(api, device, None)
    device.faults.corrupt_signature = True
    _, got = assert_with(api, device)
    refused(api.authenticate(got), 403, "passkey_refused")
    refused(api.authenticate(got), 409, "challenge_replayed")


def test_expired_challenges_are_409(
    api: Api, device: SoftwareAuthenticator, clock: FakeClock
) -> None:
    options = api.ok("POST", "/registration/options", {})
    clock.advance(301)
    created = device.create(options["publicKey"], None)
    refused(
        api.call("POST", "/registration", {"credential": created.response_json}),
        409,
        "challenge_expired",
    )
    register(api, device, None)
    _, got = assert_with(api, device)
    clock.advance(299)  # still in time
    assert api.authenticate(got).status_code == 200
    _, got = assert_with(api, device)
    clock.advance(300.5)
    refused(api.authenticate(got), 409, "challenge_expired")


def test_challenges_are_bound_to_their_ceremony(api: Api, device: SoftwareAuthenticator) -> None:
    cid, _ = register(api, device, None)
    # an assertion signed over a registration challenge
    reg_challenge = unb64(api.ok("POST", "/registration/options", {})["publicKey"]["challenge"])
    device.faults.challenge = reg_challenge
    _, got = assert_with(api, device)
    refused(api.authenticate(got), 403, "passkey_refused", "another ceremony")
    # a salt-rotation challenge is not for /authentication (it releases nothing)
    rotation = api.ok("POST", f"/{b64(cid)}/salt-rotation", {})
    device.faults.challenge = None
    got = device.get(rotation["publicKey"], {})
    refused(api.authenticate(got), 403, "passkey_refused", "another ceremony")
    # a challenge never issued
    device.faults.challenge = b"\x00" * 32
    _, got = assert_with(api, device)
    refused(api.authenticate(got), 403, "passkey_refused", "not issued")


def test_a_challenge_for_one_credential_is_not_for_another(api: Api, bk: BackupKey) -> None:
    first, second = SoftwareAuthenticator(ORIGIN), SoftwareAuthenticator(ORIGIN)
    cid_1, _ = register(api, first, bk)
    register(api, second, bk)
    options = api.ok("POST", "/authentication/options", {"credentialId": b64(cid_1)})
    options["publicKey"]["allowCredentials"] = []  # the second answers anyway
    got = second.get(options["publicKey"], {})
    refused(api.authenticate(got), 403, "passkey_refused", "another credential")


# --------------------------------------------------------------------------- sign counts


def test_sign_count_regression_is_refused(
    api: Api, device: SoftwareAuthenticator, bk: BackupKey
) -> None:
    cid, _ = register(api, device, bk)
    cloned = device.clone()
    assert recover(api, device) == bk.expose_secret()  # count 1
    _, got = assert_with(api, cloned)  # the clone also says 1
    refused(api.authenticate(got), 403, "passkey_refused", "sign count")
    device.set_sign_count(cid, 0)  # rewound: the next assertion says 1 again
    _, got = assert_with(api, device)
    refused(api.authenticate(got), 403, "passkey_refused", "sign count")
    device.set_sign_count(cid, 41)
    assert recover(api, device) == bk.expose_secret()  # 42 > 1: accepted


def test_authenticators_without_a_counter_are_accepted(
    api: Api, device: SoftwareAuthenticator, bk: BackupKey
) -> None:
    cid, _ = register(api, device, bk)  # registered with count 0
    for _ in range(2):
        device.set_sign_count(cid, -1)  # the next assertion says 0
        assert recover(api, device) == bk.expose_secret()


# --------------------------------------------------------------------------- removal


def test_removal_is_immediate_and_others_still_work(api: Api, bk: BackupKey) -> None:
    kept, removed = SoftwareAuthenticator(ORIGIN), SoftwareAuthenticator(ORIGIN)
    cid_kept, _ = register(api, kept, bk)
    cid_removed, _ = register(api, removed, bk)
    _, early = assert_with(api, removed)  # an answer made before the removal
    r = api.call("DELETE", f"/{b64(cid_removed)}")
    assert r.status_code == 204
    assert r.content == b""
    assert [p["credentialId"] for p in api.ok("GET", "")["passkeys"]] == [b64(cid_kept)]
    refused(api.authenticate(early), 404, "not_found")
    refused(
        api.call("POST", "/authentication/options", {"credentialId": b64(cid_removed)}),
        404,
        "not_found",
    )
    options = api.ok("POST", "/authentication/options", {})
    with pytest.raises(AuthenticatorRefused):
        removed.get(options["publicKey"], {})  # no longer allowed
    refused(api.call("DELETE", f"/{b64(cid_removed)}"), 404, "not_found")
    assert recover(api, kept) == bk.expose_secret()


# --------------------------------------------------------------------------- salt rotation


def test_salt_rotation_commits_salt_and_wrap_together(
    api: Api, device: SoftwareAuthenticator, bk: BackupKey
) -> None:
    cid, old_salt = register(api, device, bk)
    stale_options = api.ok("POST", "/authentication/options", {})  # issued before rotation
    old_prf = device.prf(cid, old_salt)
    rotation = api.ok("POST", f"/{b64(cid)}/salt-rotation", {})
    new_salt = unb64(rotation["prfSalt"])
    assert new_salt != old_salt
    assert [unb64(d["id"]) for d in rotation["publicKey"]["allowCredentials"]] == [cid]
    # nothing changes until the new wrap comes with an assertion over that challenge
    assert assert_with(api, device)[0] == {cid: old_salt}
    got = device.get(rotation["publicKey"], {cid: new_salt})
    assert got.prf_output is not None
    assert got.prf_output != old_prf
    wrapped = wrap_with_prf(got.prf_output, bk, rp_id=RP_ID, credential_id=cid)
    body = {"credential": got.response_json, "wrappedKey": b64(wrapped)}
    stored = api.ok("PUT", f"/{b64(cid)}/wrapped-key", body)
    assert stored == {"credentialId": b64(cid), "prfSalt": b64(new_salt)}
    # an answer to the earlier options (made with the old salt) is now refused
    stale = device.get(stale_options["publicKey"], {cid: old_salt})
    refused(api.authenticate(stale), 409, "salt_changed")
    salts, got = assert_with(api, device)
    assert salts == {cid: new_salt}
    released = api.ok("POST", "/authentication", {"credential": got.response_json})
    new_wrap = unb64(released["wrappedKey"])
    with pytest.raises(VerificationError):  # the old PRF output opens nothing now
        unwrap_with_prf(old_prf, new_wrap, rp_id=RP_ID, credential_id=cid)
    assert recover(api, device) == bk.expose_secret()


def test_salt_rotation_needs_that_credentials_fresh_assertion(api: Api, bk: BackupKey) -> None:
    first, second = SoftwareAuthenticator(ORIGIN), SoftwareAuthenticator(ORIGIN)
    cid_1, salt_1 = register(api, first, bk)
    cid_2, _ = register(api, second, bk)
    rotation = api.ok("POST", f"/{b64(cid_1)}/salt-rotation", {})
    got = first.get(rotation["publicKey"], {cid_1: unb64(rotation["prfSalt"])})
    assert got.prf_output is not None
    wrapped = b64(wrap_with_prf(got.prf_output, bk, rp_id=RP_ID, credential_id=cid_1))
    # sent to the other credential's path
    r = api.call(
        "PUT",
        f"/{b64(cid_2)}/wrapped-key",
        {"credential": got.response_json, "wrappedKey": wrapped},
    )
    refused(r, 403, "passkey_refused", "another credential")
    # replayed to the right path: the challenge is spent
    r = api.call(
        "PUT",
        f"/{b64(cid_1)}/wrapped-key",
        {"credential": got.response_json, "wrappedKey": wrapped},
    )
    refused(r, 409, "challenge_replayed")
    assert assert_with(api, first, cid_1)[0] == {cid_1: salt_1}  # unchanged
    assert recover(api, first) == bk.expose_secret()


# --------------------------------------------------------------------------- malformed input


def _valid_assertion(api: Api, device: SoftwareAuthenticator) -> dict[str, Any]:
    return assert_with(api, device)[1].response_json


def _valid_registration(api: Api, device: SoftwareAuthenticator) -> dict[str, Any]:
    options = api.ok("POST", "/registration/options", {})
    return device.create(options["publicKey"], None).response_json


def _set(doc: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    changed: dict[str, Any] = json.loads(json.dumps(doc))
    target = changed
    *parents, last = path.split(".")
    for key in parents:
        target = target[key]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return changed


_DELETE = object()
_GARBAGE_CBOR = b64(b"\xff\x00\x9f\x9f\x9f")


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("response.attestationObject", _GARBAGE_CBOR),
        ("response.attestationObject", "AAAA"),
        ("response.attestationObject", 12),
        ("response.clientDataJSON", b64(b"{not json")),
        ("response.clientDataJSON", b64(b'{"type": "webauthn.create"}')),
        ("response.clientDataJSON", "!!!"),
        ("response", _DELETE),
        ("response", "text"),
        ("rawId", b64(b"other")),
        ("type", "password"),
        ("unexpected", 1),
        ("response.unexpected", "x"),
        (
            "clientExtensionResults",
            {"prf": {"enabled": True, "results": {"first": b64(bytes(32))}}},
        ),
    ],
)
def test_malformed_registrations_are_400(
    api: Api, device: SoftwareAuthenticator, path: str, value: object
) -> None:
    credential = _set(_valid_registration(api, device), path, value)
    refused(api.call("POST", "/registration", {"credential": credential}), 400, "bad_request")
    assert api.ok("GET", "") == {"passkeys": []}


def test_truncated_attestation_object_is_refused(api: Api, device: SoftwareAuthenticator) -> None:
    credential = _valid_registration(api, device)
    whole = unb64(credential["response"]["attestationObject"])
    for cut in (1, len(whole) // 2, len(whole) - 1):
        truncated = _set(credential, "response.attestationObject", b64(whole[:cut]))
        # refused while parsing, before the challenge is looked at
        refused(api.call("POST", "/registration", {"credential": truncated}), 400, "bad_request")
    assert api.ok("GET", "") == {"passkeys": []}
    # so the untouched answer still registers
    assert api.call("POST", "/registration", {"credential": credential}).status_code == 200


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("response.authenticatorData", b64(b"short")),
        ("response.authenticatorData", _GARBAGE_CBOR),
        ("response.signature", 7),
        ("response.signature", _DELETE),
        ("response.clientDataJSON", b64(b"[]")),
        ("response.userHandle", 5),
        ("id", b64(b"\x01" * 16)),
        ("clientExtensionResults", "no"),
        ("clientExtensionResults", {"prf": {"results": {"first": b64(bytes(32))}}}),
    ],
)
def test_malformed_assertions_are_400(
    api: Api, device: SoftwareAuthenticator, bk: BackupKey, path: str, value: object
) -> None:
    register(api, device, bk)
    credential = _set(_valid_assertion(api, device), path, value)
    r = api.call("POST", "/authentication", {"credential": credential})
    refused(r, 400, "bad_request")
    assert b64(bytes(32)) not in r.text  # a leaked PRF result is not echoed


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/registration/options", {"extra": 1}),
        ("POST", "/registration/options", [1]),
        ("POST", "/registration", {"wrappedKey": None}),
        ("POST", "/registration", {"credential": {}, "wrappedKey": "@@"}),
        ("POST", "/registration", {"credential": "x"}),
        ("POST", "/authentication/options", {"credentialId": "short"}),
        ("POST", "/authentication/options", {"credentialId": "a" * 2000}),
        ("POST", "/authentication/options", {"credentialId": 5}),
        ("POST", "/authentication", {"credential": {}, "more": 1}),
        ("POST", "/AAAAAAAAAAAAAAAAAAAAAAAA==/salt-rotation", {}),
        ("PUT", "/AAAAAAAAAAAAAAAAAAAAAA/wrapped-key", {"credential": {}}),
        ("DELETE", "/not*base64url*at*all*x", None),
    ],
)
def test_malformed_requests_are_400(api: Api, method: str, path: str, body: object) -> None:
    refused(api.call(method, path, body), 400, "bad_request")


def test_non_json_and_oversized_bodies(api: Api, auth: Auth) -> None:
    r = api.client.post("/v1/passkeys/authentication", content=b"{nope", headers=auth("alice"))
    refused(r, 400, "bad_request", "not JSON")
    r = api.client.post("/v1/passkeys/authentication", content=b"[" * 70_000, headers=auth("alice"))
    refused(r, 413, "too_large")


@pytest.mark.parametrize(
    "wrapped",
    ["AA", b64(b"\x01" * 92), b64(b"\x02" + bytes(92)), b64(b"\x01" + bytes(93)), "a=b", ""],
)
def test_wrapped_keys_must_be_version_1_wraps(
    api: Api, device: SoftwareAuthenticator, wrapped: str
) -> None:
    credential = _valid_registration(api, device)
    r = api.call("POST", "/registration", {"credential": credential, "wrappedKey": wrapped})
    refused(r, 400, "bad_request")


def test_requests_need_a_token(api: Api) -> None:
    for method, path in [
        ("GET", ""),
        ("POST", "/registration/options"),
        ("DELETE", "/" + "A" * 22),
    ]:
        r = api.client.request(method, f"/v1/passkeys{path}")
        refused(r, 401, "unauthorized")


def test_a_store_without_passkeys_answers_503(config: GatewayConfig, auth: Auth) -> None:
    placeholder = _Placeholder()
    app = create_app(
        config, fleets={"default": placeholder}, blobs=placeholder, metadata=placeholder
    )
    refused(client_for(app).get("/v1/passkeys", headers=auth("alice")), 503, "unavailable")


# --------------------------------------------------------------------------- fuzzing


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
_b64_blobs = st.binary(max_size=300).map(b64)
_assertion_fields = st.sampled_from(
    [
        "id", "rawId", "type", "response", "clientExtensionResults", "authenticatorAttachment",
        "response.clientDataJSON", "response.authenticatorData", "response.signature",
        "response.userHandle",
    ]
)  # fmt: skip


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    fields=st.lists(
        st.tuples(_assertion_fields, _json_values | _b64_blobs), min_size=1, max_size=3
    ),
    registration=st.booleans(),
)
def test_fuzzed_answers_never_cause_a_server_error(
    make_app: AppFactory,
    auth: Auth,
    fields: list[tuple[str, object]],
    registration: bool,
) -> None:
    api = Api(client_for(make_app(passkey_origins=(ORIGIN,))), auth)
    device = SoftwareAuthenticator(ORIGIN)
    if registration:
        credential = _valid_registration(api, device)
        route = "/registration"
    else:
        register(api, device, None)
        credential = _valid_assertion(api, device)
        route = "/authentication"
    for path, value in fields:
        if path.startswith("response.") and not isinstance(credential.get("response"), dict):
            continue
        target = path
        if registration and path == "response.authenticatorData":
            target = "response.attestationObject"
        credential = _set(credential, target, value)
    r = api.call("POST", route, {"credential": credential})
    assert r.status_code in (200, 400, 403, 404, 409), r.text
    assert set(r.json()) <= {"error", "detail", "credentialId", "prfSalt", "wrappedKey"}


# --------------------------------------------------------------------------- configuration


def test_passkey_config_defaults_and_toml(config: GatewayConfig) -> None:
    assert (config.passkey_rp_id, config.passkey_origins) == ("localhost", ())
    table = {
        "issuer": "i",
        "issuer_public_keys": list(config.issuer_public_keys),
        "passkey_rp_id": "example.com",
        "passkey_origins": ["https://example.com", "https://app.example.com:8443"],
    }
    loaded = GatewayConfig.from_toml(table)
    assert loaded.passkey_rp_id == "example.com"
    assert loaded.passkey_origins == ("https://example.com", "https://app.example.com:8443")


@pytest.mark.parametrize(
    ("rp_id", "origins"),
    [
        ("127.0.0.1", ()),  # an IP address is not an RP id
        ("::1", ()),
        ("", ()),
        ("Example.com", ()),
        ("localhost:8420", ()),
        ("localhost", ("http://127.0.0.1:8420",)),  # origin not valid for the RP id
        ("example.com", ("http://example.com",)),  # http only on localhost
        ("example.com", ("https://example.org",)),
        ("localhost", ("http://localhost:8420/",)),  # a path
        ("localhost", ("http://localhost:99999",)),
        ("localhost", ("http://user@localhost:8420",)),
        ("localhost", "http://localhost:8420"),  # a string, not a list
    ],
)
def test_bad_passkey_config_is_refused(
    config: GatewayConfig, rp_id: str, origins: tuple[str, ...]
) -> None:
    with pytest.raises(InvalidParameter):
        dataclasses.replace(config, passkey_rp_id=rp_id, passkey_origins=origins)


# --------------------------------------------------------------------------- algorithms


def test_rs256_credentials_work(api: Api, bk: BackupKey) -> None:
    device = SoftwareAuthenticator(ORIGIN, algorithm=-257)
    register(api, device, bk)
    assert recover(api, device) == bk.expose_secret()


def test_other_algorithms_are_refused(api: Api) -> None:
    device = SoftwareAuthenticator(ORIGIN, algorithm=-8)  # EdDSA: not offered
    options = api.ok("POST", "/registration/options", {})
    created = device.create(options["publicKey"], None)
    r = api.call("POST", "/registration", {"credential": created.response_json})
    refused(r, 403, "passkey_refused", "algorithm")
    assert api.ok("GET", "") == {"passkeys": []}
