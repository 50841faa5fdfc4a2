"""The node's one door, end to end with a real OPAQUE client and an in-process fleet.

Each test is named after the property it defends. A tiny Argon2id cost keeps the client
fast; the node never runs the KSF.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from hsmvault.crypto.backup_stream import BackupKey
from hsmvault.crypto.fleet_seal import PURPOSE_REGISTRATION_UPLOAD, seal_to_fleet
from hsmvault.crypto.key_wrap import PURPOSE_OPAQUE_EXPORT_KEY, unwrap_backup_key, wrap_backup_key
from hsmvault.crypto.ksf import Argon2idKsf, KsfAlgorithm, KsfParams, UnsafeIdentityKsf
from hsmvault.crypto.opaque import KE2, OpaqueClient, OpaqueConfig, OpaqueServer
from hsmvault.crypto.opaque.messages import RegistrationRecord, RegistrationResponse
from hsmvault.crypto.session_box import (
    LABEL_CHANGE_SECRET,
    LABEL_DELETE,
    LABEL_WRAPPED_KEY,
    open_from_session,
    session_authenticator,
)
from hsmvault.errors import InvalidLogin, InvalidParameter
from hsmvault.hsm.vault_service import VaultService, VaultServiceConfig
from hsmvault.hsm.vault_state import (
    BUNDLE_PART_LEN,
    BeginAttempt,
    BundlePart,
    NoOp,
    RecordFailure,
    decode_command,
    encode_command,
)
from hsmvault.wire import hsm_api as api
from hsmvault.wire.fleet_session import fleet_session_message
from tests.hsm.sim import InstantConsensus

KSF_PARAMS = KsfParams(KsfAlgorithm.ARGON2ID, memory_kib=8, iterations=1, parallelism=1)
CONFIG = OpaqueConfig(ksf=Argon2idKsf(KSF_PARAMS))
SERVER = OpaqueServer.generate(config=CONFIG)
PIN = b"1234"
WRONG_PIN = b"9999"
ALICE = b"alice"
FLEET_KEY = X25519PrivateKey.generate()  # the fleet's enc key pair
FLEET_PUB = FLEET_KEY.public_key().public_bytes_raw()
OTHER_FLEET_PUB = X25519PrivateKey.generate().public_key().public_bytes_raw()
FLEET_ID = b"\xf1" * 32
SIG_KEY = Ed25519PrivateKey.generate()  # the fleet's sig key pair
SIG_PUB = SIG_KEY.public_key()


def seal_upload(
    user: bytes,
    nonce: bytes,
    record: bytes,
    wrapped: bytes,
    ksf: bytes = KSF_PARAMS.to_bytes(),
    *,
    fleet_pub: bytes = FLEET_PUB,
) -> bytes:
    """What an honest client sends: the upload sealed to the fleet for (user, nonce)."""
    upload = api.RegistrationUpload(record, ksf, wrapped).to_bytes()
    return seal_to_fleet(
        fleet_pub,
        upload,
        purpose=PURPOSE_REGISTRATION_UPLOAD,
        context=api.upload_context(user, nonce),
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Login:
    """What the client holds after a login attempt."""

    start: api.LoginStartResponse
    finish: api.LoginFinishResponse | None = None
    session_key: bytes | None = None
    backup_key: BackupKey | None = None


class Harness:
    """A node (service + simulated fleet) and an honest client talking bytes to it."""

    def __init__(self, *, replicas: int = 3, **config: object) -> None:
        self.clock = Clock()
        self.fleet = InstantConsensus(replicas)
        defaults: dict[str, object] = {"unknown_user_ksf_params": KSF_PARAMS}
        self.service = VaultService(
            SERVER,
            self.fleet,
            upload_key=FLEET_KEY,
            fleet_id=FLEET_ID,
            signing_key=SIG_KEY,
            config=VaultServiceConfig(**(defaults | config)),  # type: ignore[arg-type]
            clock=self.clock,
        )
        self.client = OpaqueClient(CONFIG)

    def call(self, request: api.Request) -> api.Response:
        return api.decode_response(self.service.handle(request.to_bytes()))

    def register(
        self, user: bytes = ALICE, pin: bytes = PIN, *, limit: int = 10, replace: bool = False
    ) -> tuple[api.RegisterResponse, BackupKey]:
        nonce, record, wrapped, bk = self.enrol(user, pin)
        sealed = seal_upload(user, nonce, record, wrapped)
        response = self.call(api.RegisterRequest(user, nonce, sealed, limit, replace))
        assert isinstance(response, api.RegisterResponse)
        return response, bk

    def enrol(self, user: bytes, pin: bytes) -> tuple[bytes, bytes, bytes, BackupKey]:
        """Registration start + client finalisation: (nonce, record, wrapped key, BK)."""
        request, state = self.client.start_registration(pin)
        start = self.call(api.RegistrationStartRequest(user, request.to_bytes()))
        assert isinstance(start, api.RegistrationStartResponse)
        assert start.outcome is api.Outcome.OK
        result = self.client.finish_registration(
            state, RegistrationResponse.from_bytes(start.registration_response)
        )
        bk = BackupKey.generate()
        wrapped = wrap_backup_key(
            result.export_key, bk, purpose=PURPOSE_OPAQUE_EXPORT_KEY, context=user
        )
        return start.credential_nonce, result.record.to_bytes(), wrapped, bk

    def login_start(
        self, user: bytes = ALICE, pin: bytes = PIN
    ) -> tuple[api.LoginStartResponse, object]:
        ke1, state = self.client.start_login(pin)
        response = self.call(api.LoginStartRequest(user, ke1.to_bytes()))
        assert isinstance(response, api.LoginStartResponse)
        return response, state

    def login(self, user: bytes = ALICE, pin: bytes = PIN) -> Login:
        """A full honest login. With a wrong PIN the client cannot build KE3 (the
        envelope does not open), so it sends a random one, as an attacker would."""
        ke1, state = self.client.start_login(pin)
        start = self.call(api.LoginStartRequest(user, ke1.to_bytes()))
        assert isinstance(start, api.LoginStartResponse)
        login = Login(start)
        if start.outcome is not api.Outcome.OK:
            return login
        try:
            result = self.client.finish_login(state, KE2.from_bytes(start.ke2))
        except InvalidLogin:
            ke3 = bytes(64)
        else:
            ke3, login.session_key = result.ke3.to_bytes(), result.session_key
        finish = self.call(api.LoginFinishRequest(start.session_id, ke3))
        assert isinstance(finish, api.LoginFinishResponse)
        login.finish = finish
        if finish.outcome is api.Outcome.OK:
            assert login.session_key is not None
            wrapped = open_from_session(
                login.session_key, finish.sealed_wrapped_key, label=LABEL_WRAPPED_KEY
            )
            login.backup_key = unwrap_backup_key(
                result.export_key, wrapped, purpose=PURPOSE_OPAQUE_EXPORT_KEY, context=user
            )
        return login

    def remaining(self, user: bytes = ALICE) -> api.AttemptsRemainingResponse:
        response = self.call(api.AttemptsRemainingRequest(user))
        assert isinstance(response, api.AttemptsRemainingResponse)
        return response

    def guesses_used(self, user: bytes = ALICE) -> int:
        record = self.fleet.state().record(user)
        assert record is not None
        return record.guesses_used

    def change_secret(
        self,
        login: Login,
        new_pin: bytes,
        *,
        key: bytes | None = None,
        seal: Callable[[bytes, bytes, bytes], bytes] | None = None,
    ) -> tuple[api.Response, BackupKey]:
        """Change the PIN in ``login``'s session; ``seal(nonce, record, wrapped)``
        replaces the honest client's sealing."""
        request, bk = self.change_secret_request(login, new_pin, key=key, seal=seal)
        return self.call(request), bk

    def change_secret_request(
        self,
        login: Login,
        new_pin: bytes,
        *,
        key: bytes | None = None,
        seal: Callable[[bytes, bytes, bytes], bytes] | None = None,
    ) -> tuple[api.ChangeSecretRequest, BackupKey]:
        nonce, record, wrapped, bk = self.enrol(ALICE, new_pin)
        if seal is None:
            sealed = seal_upload(ALICE, nonce, record, wrapped)
        else:
            sealed = seal(nonce, record, wrapped)
        unsigned = api.ChangeSecretRequest(login.start.session_id, nonce, sealed, bytes(64))
        session_key = key if key is not None else login.session_key
        assert session_key is not None
        tag = session_authenticator(
            session_key, unsigned.authenticated_bytes(), label=LABEL_CHANGE_SECRET
        )
        return api.ChangeSecretRequest(login.start.session_id, nonce, sealed, tag), bk

    def delete(self, login: Login, *, key: bytes | None = None) -> api.Response:
        unsigned = api.DeleteRequest(login.start.session_id, bytes(64))
        session_key = key if key is not None else login.session_key
        assert session_key is not None
        tag = session_authenticator(session_key, unsigned.authenticated_bytes(), label=LABEL_DELETE)
        return self.call(api.DeleteRequest(login.start.session_id, tag))


@pytest.fixture
def node() -> Harness:
    return Harness()


@pytest.fixture
def enrolled() -> tuple[Harness, BackupKey]:
    harness = Harness()
    response, bk = harness.register()
    assert response.outcome is api.Outcome.OK
    return harness, bk


# ------------------------------------------------------------------ property 1


def test_right_pin_releases_the_wrapped_backup_key(enrolled: tuple[Harness, BackupKey]) -> None:
    node, bk = enrolled
    login = node.login()
    assert login.start.attempts_remaining == 9
    assert login.finish is not None
    assert login.finish.outcome is api.Outcome.OK
    assert login.backup_key == bk
    assert node.guesses_used() == 0  # a correct KE3 resets the counter


def test_wrong_pin_costs_one_attempt_and_releases_nothing(
    enrolled: tuple[Harness, BackupKey],
) -> None:
    node, _ = enrolled
    login = node.login(pin=WRONG_PIN)
    assert login.finish is not None
    assert login.finish.outcome is api.Outcome.INVALID_LOGIN
    assert login.finish.sealed_wrapped_key == b""
    assert node.remaining().attempts_remaining == 9
    assert node.login(pin=WRONG_PIN).start.attempts_remaining == 8
    assert node.login().backup_key is not None
    assert node.remaining().attempts_remaining == 10


def test_guess_increment_is_committed_before_ke2_leaves(
    enrolled: tuple[Harness, BackupKey],
) -> None:
    node, _ = enrolled
    log_before = len(node.fleet.log)
    start, _ = node.login_start()
    assert start.outcome is api.Outcome.OK
    assert [decode_command(c) for c in node.fleet.log[log_before:]] == [BeginAttempt(ALICE)]
    assert all(r.record(ALICE).guesses_used == 1 for r in node.fleet.replicas)  # type: ignore[union-attr]


def test_no_ke2_leaves_when_the_increment_cannot_commit(
    enrolled: tuple[Harness, BackupKey],
) -> None:
    node, _ = enrolled
    snapshots = node.fleet.snapshots()
    node.fleet.available = False
    start, _ = node.login_start()
    assert start.outcome is api.Outcome.UNAVAILABLE
    assert start.ke2 == b""
    assert start.session_id == b""
    assert node.service.open_sessions == 0
    assert node.fleet.snapshots() == snapshots


def test_wrong_ke3_keeps_the_increment(enrolled: tuple[Harness, BackupKey]) -> None:
    node, _ = enrolled
    start, _ = node.login_start()
    finish = node.call(api.LoginFinishRequest(start.session_id, b"\x01" * 64))
    assert finish.outcome is api.Outcome.INVALID_LOGIN
    assert isinstance(decode_command(node.fleet.log[-1]), RecordFailure)
    assert node.guesses_used() == 1


def test_wrong_ke3_during_an_outage_still_keeps_the_increment(
    enrolled: tuple[Harness, BackupKey],
) -> None:
    node, _ = enrolled
    start, _ = node.login_start()
    node.fleet.available = False
    finish = node.call(api.LoginFinishRequest(start.session_id, b"\x01" * 64))
    assert finish.outcome is api.Outcome.UNAVAILABLE
    assert node.guesses_used() == 1


# ------------------------------------------------------------------ limit


def test_limit_reached_locks_out_and_erases_the_record_in_every_replica(node: Harness) -> None:
    _, _bk = node.register(limit=3)
    for expected in (2, 1, 0):
        login = node.login(pin=WRONG_PIN)
        assert login.start.attempts_remaining == expected
    # The third failure reached the limit: the material is gone in every replica.
    for replica in node.fleet.replicas:
        assert replica.record(ALICE) is None
        assert replica.is_locked_out(ALICE)
    assert len(set(node.fleet.snapshots())) == 1
    assert node.login().start.outcome is api.Outcome.LOCKED_OUT  # even with the right PIN
    assert node.remaining().outcome is api.Outcome.LOCKED_OUT
    assert node.register()[0].outcome is api.Outcome.LOCKED_OUT  # no silent re-enrolment


def test_unfinished_attempts_count_and_the_next_start_erases(node: Harness) -> None:
    node.register(limit=2)
    node.login_start()
    node.login_start()  # both attempts used, never finished
    assert node.login().start.outcome is api.Outcome.LOCKED_OUT
    assert node.fleet.state().record(ALICE) is None


def test_last_allowed_attempt_with_the_right_pin_succeeds(node: Harness) -> None:
    _, bk = node.register(limit=3)
    node.login(pin=WRONG_PIN)
    node.login(pin=WRONG_PIN)
    login = node.login()
    assert login.start.attempts_remaining == 0
    assert login.backup_key == bk
    assert node.remaining().attempts_remaining == 3


def test_explicit_reenrolment_after_lockout_gives_a_new_record(node: Harness) -> None:
    node.register(limit=1)
    node.login(pin=WRONG_PIN)
    response, bk = node.register(pin=b"new", replace=True)
    assert response.outcome is api.Outcome.OK
    assert node.login(pin=b"new").backup_key == bk


# ------------------------------------------------------------------ unknown users


def test_unknown_user_gets_a_response_of_identical_shape(
    enrolled: tuple[Harness, BackupKey],
) -> None:
    node, _ = enrolled
    log_before = len(node.fleet.log)
    real, _ = node.login_start(ALICE, WRONG_PIN)
    fake, fake_state = node.login_start(b"mallory", WRONG_PIN)
    real_bytes, fake_bytes = real.to_bytes(), fake.to_bytes()
    assert len(real_bytes) == len(fake_bytes)
    assert fake.outcome is api.Outcome.OK
    assert fake.attempts_remaining == real.attempts_remaining == 9
    assert fake.ksf_params == real.ksf_params
    assert len(fake.ke2) == len(real.ke2) == KE2.LEN
    assert len(node.fleet.log) == log_before + 2  # one committed command each
    # The client cannot log in against the fake record, and finishing costs one round.
    with pytest.raises(InvalidLogin):
        node.client.finish_login(fake_state, KE2.from_bytes(fake.ke2))  # type: ignore[arg-type]
    finish = node.call(api.LoginFinishRequest(fake.session_id, bytes(64)))
    assert finish.outcome is api.Outcome.INVALID_LOGIN
    assert decode_command(node.fleet.log[-1]) == NoOp()
    assert node.remaining(b"mallory").attempts_remaining == 10


def test_unknown_user_answers_are_stable_per_user(node: Harness) -> None:
    ke1, _ = node.client.start_login(PIN)
    first = node.call(api.LoginStartRequest(b"ghost", ke1.to_bytes()))
    second = node.call(api.LoginStartRequest(b"ghost", ke1.to_bytes()))
    assert isinstance(first, api.LoginStartResponse)
    assert isinstance(second, api.LoginStartResponse)
    # the OPRF evaluation (first 32 bytes of KE2) is keyed per user id, like a real one
    assert first.ke2[:32] == second.ke2[:32]
    assert first.session_id != second.session_id


# ------------------------------------------------------------------ sessions


def test_login_session_is_single_use(enrolled: tuple[Harness, BackupKey]) -> None:
    node, _ = enrolled
    login = node.login()
    assert login.finish is not None
    replay = node.call(api.LoginFinishRequest(login.start.session_id, bytes(64)))
    assert replay.outcome is api.Outcome.NO_SESSION


def test_login_session_expires(enrolled: tuple[Harness, BackupKey]) -> None:
    node, _ = enrolled
    start, state = node.login_start()
    result = node.client.finish_login(state, KE2.from_bytes(start.ke2))  # type: ignore[arg-type]
    node.clock.now += 121
    finish = node.call(api.LoginFinishRequest(start.session_id, result.ke3.to_bytes()))
    assert finish.outcome is api.Outcome.NO_SESSION
    assert node.guesses_used() == 1  # the attempt still counts


def test_sessions_are_bounded_and_a_full_table_counts_no_guess() -> None:
    node = Harness(max_sessions=2)
    node.register()
    node.login_start()
    node.login_start()
    third, _ = node.login_start()
    assert third.outcome is api.Outcome.UNAVAILABLE
    assert node.guesses_used() == 2
    node.clock.now += 121  # expired sessions free their slots
    assert node.login_start()[0].outcome is api.Outcome.OK


# ------------------------------------------------------------------ change / delete


def test_change_secret_in_a_fresh_successful_session(enrolled: tuple[Harness, BackupKey]) -> None:
    node, _ = enrolled
    login = node.login()
    response, new_bk = node.change_secret(login, b"5678")
    assert response.outcome is api.Outcome.OK
    assert node.login().finish.outcome is api.Outcome.INVALID_LOGIN  # type: ignore[union-attr]
    assert node.login(pin=b"5678").backup_key == new_bk
    # the session was consumed
    again, _ = node.change_secret(login, b"0000")
    assert again.outcome is api.Outcome.NO_SESSION


def test_change_secret_refused_without_a_successful_session(
    enrolled: tuple[Harness, BackupKey],
) -> None:
    node, _ = enrolled
    key = bytes(64)
    pending = Login(node.login_start()[0])
    assert node.change_secret(pending, b"x", key=key)[0].outcome is api.Outcome.NO_SESSION
    failed = node.login(pin=WRONG_PIN)
    assert node.change_secret(failed, b"x", key=key)[0].outcome is api.Outcome.NO_SESSION
    stale = node.login()
    node.clock.now += 301
    assert node.change_secret(stale, b"x")[0].outcome is api.Outcome.NO_SESSION
    assert node.delete(stale).outcome is api.Outcome.NO_SESSION
    assert node.login().backup_key is not None  # PIN unchanged


def test_stolen_session_id_without_the_session_key_changes_nothing(
    enrolled: tuple[Harness, BackupKey],
) -> None:
    node, _ = enrolled
    login = node.login()
    snapshots = node.fleet.snapshots()
    forged_key = b"\x42" * 64
    assert (
        node.change_secret(login, b"evil", key=forged_key)[0].outcome is api.Outcome.INVALID_LOGIN
    )
    assert node.delete(login, key=forged_key).outcome is api.Outcome.INVALID_LOGIN
    assert node.fleet.snapshots() == snapshots
    assert node.delete(login).outcome is api.Outcome.OK  # the real holder still can


def test_delete_in_a_fresh_session_removes_the_record_everywhere(
    enrolled: tuple[Harness, BackupKey],
) -> None:
    node, _ = enrolled
    login = node.login()
    assert node.delete(login).outcome is api.Outcome.OK
    assert all(r.record(ALICE) is None for r in node.fleet.replicas)
    assert all(not r.is_locked_out(ALICE) for r in node.fleet.replicas)
    after = node.login()
    assert after.start.outcome is api.Outcome.OK  # now answered like an unknown user
    assert after.finish is not None
    assert after.finish.outcome is api.Outcome.INVALID_LOGIN


def test_session_from_a_replaced_record_cannot_change_the_new_one(node: Harness) -> None:
    node.register()
    login = node.login()
    node.register(pin=b"other", replace=True)  # re-enrolled elsewhere meanwhile
    assert node.change_secret(login, b"evil")[0].outcome is api.Outcome.NO_SESSION
    assert node.login(pin=b"other").backup_key is not None


# ------------------------------------------------------------------ registration


def test_register_twice_is_refused_unless_replace(enrolled: tuple[Harness, BackupKey]) -> None:
    node, _ = enrolled
    assert node.register(pin=b"2")[0].outcome is api.Outcome.ALREADY_REGISTERED
    response, bk = node.register(pin=b"2", replace=True)
    assert response.outcome is api.Outcome.OK
    assert node.login(pin=b"2").backup_key == bk


def test_registration_start_never_reuses_an_oprf_key(node: Harness) -> None:
    request, _ = node.client.start_registration(PIN)
    message = api.RegistrationStartRequest(ALICE, request.to_bytes())
    first, second = node.call(message), node.call(message)
    assert isinstance(first, api.RegistrationStartResponse)
    assert isinstance(second, api.RegistrationStartResponse)
    assert first.credential_nonce != second.credential_nonce
    assert first.registration_response[:32] != second.registration_response[:32]
    assert node.fleet.log == []  # stateless


def test_identity_ksf_is_refused_unless_unsafely_allowed(node: Harness) -> None:
    nonce, record, wrapped, _ = node.enrol(ALICE, PIN)
    identity = UnsafeIdentityKsf().params.to_bytes()
    request = api.RegisterRequest(
        ALICE, nonce, seal_upload(ALICE, nonce, record, wrapped, identity)
    )
    assert node.call(request).outcome is api.Outcome.BAD_REQUEST
    permissive = Harness(unsafe_allow_identity_ksf=True)
    assert permissive.call(request).outcome is api.Outcome.OK


def test_status_reports_counts(enrolled: tuple[Harness, BackupKey]) -> None:
    node, _ = enrolled
    node.login_start()
    status = node.call(api.StatusRequest())
    assert status == api.StatusResponse(api.Outcome.OK, 1, 0, 1)


# ------------------------------------------------------------------ sealed uploads


def _flip(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


#: Seals an honest node must not accept for (user, nonce): ``f(user, nonce, record,
#: wrapped) -> sealed_upload``.
_BAD_SEALS: dict[str, Callable[[bytes, bytes, bytes, bytes], bytes]] = {
    "other-user": lambda u, n, r, w: seal_upload(b"mallory", n, r, w),
    "other-nonce": lambda u, n, r, w: seal_upload(u, _flip(n, 0), r, w),
    "other-fleet": lambda u, n, r, w: seal_upload(u, n, r, w, fleet_pub=OTHER_FLEET_PUB),
    "other-purpose": lambda u, n, r, w: seal_to_fleet(
        FLEET_PUB,
        api.RegistrationUpload(r, KSF_PARAMS.to_bytes(), w).to_bytes(),
        purpose=b"another-purpose",
        context=api.upload_context(u, n),
    ),
    "flipped-version": lambda u, n, r, w: _flip(seal_upload(u, n, r, w), 0),
    "flipped-enc": lambda u, n, r, w: _flip(seal_upload(u, n, r, w), 7),
    "flipped-ciphertext": lambda u, n, r, w: _flip(seal_upload(u, n, r, w), 100),
    "flipped-tag": lambda u, n, r, w: _flip(seal_upload(u, n, r, w), -1),
    "opens-but-not-an-upload": lambda u, n, r, w: seal_to_fleet(
        FLEET_PUB,
        api.RegistrationUpload(r, KSF_PARAMS.to_bytes(), w).to_bytes() + b"\x00",
        purpose=PURPOSE_REGISTRATION_UPLOAD,
        context=api.upload_context(u, n),
    ),
}


@pytest.mark.parametrize("bad", sorted(_BAD_SEALS))
def test_register_refuses_an_upload_not_sealed_to_this_fleet_for_this_user_and_nonce(
    enrolled: tuple[Harness, BackupKey], bad: str
) -> None:
    node, bk = enrolled
    nonce, record, wrapped, _ = node.enrol(b"bob", PIN)
    snapshots, log = node.fleet.snapshots(), list(node.fleet.log)
    for user, replace in ((b"bob", False), (ALICE, True)):  # new id, and overwrite
        sealed = _BAD_SEALS[bad](user, nonce, record, wrapped)
        response = node.call(api.RegisterRequest(user, nonce, sealed, replace=replace))
        assert response.outcome is api.Outcome.BAD_REQUEST
        assert node.fleet.snapshots() == snapshots
        assert node.fleet.log == log
    assert node.login().backup_key == bk  # Alice's record untouched
    honest = api.RegisterRequest(b"bob", nonce, seal_upload(b"bob", nonce, record, wrapped))
    assert node.call(honest).outcome is api.Outcome.OK


@pytest.mark.parametrize("bad", sorted(_BAD_SEALS))
def test_change_secret_refuses_an_upload_not_sealed_for_the_session_user_and_nonce(
    enrolled: tuple[Harness, BackupKey], bad: str
) -> None:
    node, bk = enrolled
    login = node.login()
    snapshots, log = node.fleet.snapshots(), list(node.fleet.log)
    sessions = node.service.open_sessions
    response, _ = node.change_secret(
        login, b"5678", seal=lambda n, r, w: _BAD_SEALS[bad](ALICE, n, r, w)
    )
    assert response.outcome is api.Outcome.BAD_REQUEST
    assert node.fleet.snapshots() == snapshots
    assert node.fleet.log == log
    assert node.service.open_sessions == sessions  # the session was not consumed
    response, new_bk = node.change_secret(login, b"5678")  # and still works
    assert response.outcome is api.Outcome.OK
    assert node.login(pin=b"5678").backup_key == new_bk != bk


def test_change_secret_opens_under_the_sessions_user_not_another(
    enrolled: tuple[Harness, BackupKey],
) -> None:
    node, _ = enrolled
    node.register(b"bob", PIN)
    bob = node.login(b"bob")
    # A well-formed upload for Alice, authenticated in Bob's session: refused.
    response, _ = node.change_secret(bob, b"x", seal=lambda n, r, w: seal_upload(ALICE, n, r, w))
    assert response.outcome is api.Outcome.BAD_REQUEST
    assert node.login().backup_key is not None  # Alice's PIN unchanged


def test_a_byte_flipped_by_the_host_in_the_sealed_upload_changes_nothing(
    enrolled: tuple[Harness, BackupKey],
) -> None:
    node, _ = enrolled
    login = node.login()
    nonce, record, wrapped, _ = node.enrol(b"bob", PIN)
    register = api.RegisterRequest(b"bob", nonce, seal_upload(b"bob", nonce, record, wrapped))
    change, _ = node.change_secret_request(login, b"5678")
    snapshots, log = node.fleet.snapshots(), list(node.fleet.log)
    sessions = node.service.open_sessions
    for request, sealed in ((register, register.sealed_upload), (change, change.sealed_upload)):
        encoded = request.to_bytes()
        start = encoded.index(sealed)
        for offset in (0, 1, 40, len(sealed) // 2, len(sealed) - 1):
            response = api.decode_response(node.service.handle(_flip(encoded, start + offset)))
            assert response.outcome is api.Outcome.BAD_REQUEST, (type(request), offset)
            assert node.fleet.snapshots() == snapshots
            assert node.fleet.log == log
            assert node.service.open_sessions == sessions
    assert node.call(register).outcome is api.Outcome.OK
    assert node.call(change).outcome is api.Outcome.OK


def test_the_host_sees_no_record_masking_key_ksf_params_or_wrapped_key(
    enrolled: tuple[Harness, BackupKey],
) -> None:
    node, _ = enrolled
    login = node.login()
    nonce, record, wrapped, _ = node.enrol(b"bob", PIN)
    register = api.RegisterRequest(b"bob", nonce, seal_upload(b"bob", nonce, record, wrapped))
    change, _ = node.change_secret_request(login, b"5678")
    log_before = len(node.fleet.log)
    assert node.call(register).outcome is api.Outcome.OK
    assert node.call(change).outcome is api.Outcome.OK
    committed = node.fleet.log[log_before:]
    # What the node stored is what the clients put in their uploads...
    bob = node.fleet.state().record(b"bob")
    alice = node.fleet.state().record(ALICE)
    assert bob is not None
    assert alice is not None
    assert (bob.registration_record, bob.wrapped_key) == (record, wrapped)
    # ...and none of it crossed the host in the clear.
    for request, stored in ((register, bob), (change, alice)):
        host_view = request.to_bytes()
        masking_key = RegistrationRecord.from_bytes(stored.registration_record).masking_key
        for secret in (stored.registration_record, masking_key, stored.wrapped_key):
            assert secret not in host_view
        assert stored.ksf_params not in host_view
        assert "sealed_upload=<" in repr(request)
    assert len(committed) == 2


# ------------------------------------------------------------------ malformed input


def _malformed_requests(node: Harness) -> list[tuple[str, bytes]]:
    """Malformed or forged bytes for every entry point."""
    nonce, record, wrapped, _ = node.enrol(b"bob", PIN)
    sealed = seal_upload(b"bob", nonce, record, wrapped)
    authenticated = node.login()  # an authenticated session: BAD_REQUEST must keep it
    start, _ = node.login_start()
    ke1, _ = node.client.start_login(PIN)
    bad_point = b"\xff" * 32
    valid: list[api.Request] = [
        api.RegistrationStartRequest(ALICE, ke1.to_bytes()[:32]),
        api.RegisterRequest(b"bob", nonce, sealed),
        api.LoginStartRequest(ALICE, ke1.to_bytes()),
        api.LoginFinishRequest(start.session_id, bytes(64)),
        api.AttemptsRemainingRequest(ALICE),
        api.ChangeSecretRequest(start.session_id, nonce, sealed, bytes(64)),
        api.DeleteRequest(start.session_id, bytes(64)),
        api.StatusRequest(),
    ]
    cases: list[tuple[str, bytes]] = [("empty", b""), ("garbage", b"\x07\x07\x07")]
    for request in valid:
        name = type(request).__name__
        encoded = request.to_bytes()
        cases += [
            (f"{name}-truncated", encoded[:-1]),
            (f"{name}-trailing", encoded + b"\x00"),
            (f"{name}-version", b"\x09" + encoded[1:]),
        ]
    cases += [
        ("regstart-bad-point", api.RegistrationStartRequest(ALICE, bad_point).to_bytes()),
        ("regstart-short", api.RegistrationStartRequest(ALICE, b"\x00" * 31).to_bytes()),
        (
            "register-bad-record",
            api.RegisterRequest(
                b"bob", nonce, seal_upload(b"bob", nonce, b"r" * 192, wrapped)
            ).to_bytes(),
        ),
        (
            "register-bad-ksf",
            api.RegisterRequest(
                b"bob", nonce, seal_upload(b"bob", nonce, record, wrapped, b"\x01" * 14)
            ).to_bytes(),
        ),
        (
            "register-other-user",
            api.RegisterRequest(b"carol", nonce, sealed).to_bytes(),
        ),
        ("login-bad-ke1", api.LoginStartRequest(ALICE, bad_point * 3).to_bytes()),
        ("login-short-ke1", api.LoginStartRequest(ALICE, ke1.to_bytes()[:-1]).to_bytes()),
        ("finish-short-ke3", api.LoginFinishRequest(start.session_id, bytes(63)).to_bytes()),
    ]
    bad_record = node.change_secret_request(
        authenticated, b"new", seal=lambda n, _r, w: seal_upload(ALICE, n, b"r", w)
    )[0]
    cases.append(("change-bad-record", bad_record.to_bytes()))
    return cases


def test_malformed_requests_at_every_entry_point_change_nothing(
    enrolled: tuple[Harness, BackupKey],
) -> None:
    node, _ = enrolled
    cases = _malformed_requests(node)
    snapshots, log, sessions = (
        node.fleet.snapshots(),
        list(node.fleet.log),
        node.service.open_sessions,
    )
    for name, data in cases:
        response = api.decode_response(node.service.handle(data))
        assert response.outcome is api.Outcome.BAD_REQUEST, name
        assert node.fleet.snapshots() == snapshots, name
        assert node.fleet.log == log, name
        assert node.service.open_sessions == sessions, name
    assert len(cases) >= 30
    # the pending session survived every malformed finish: it still works
    assert node.login().backup_key is not None


@given(st.binary(max_size=600))
def test_handle_never_raises_and_always_answers_a_response(data: bytes) -> None:
    node = _SHARED
    before = node.fleet.snapshots()
    response = api.decode_response(node.service.handle(data))
    if response.outcome is api.Outcome.BAD_REQUEST:
        assert node.fleet.snapshots() == before


_SHARED = Harness(replicas=1)


def test_internal_failure_is_unavailable_not_an_exception(
    enrolled: tuple[Harness, BackupKey], monkeypatch: pytest.MonkeyPatch
) -> None:
    node, _ = enrolled

    def broken(command: bytes) -> bytes:
        return b"not a result"

    monkeypatch.setattr(node.fleet, "submit", broken)
    start, _ = node.login_start()
    assert start.outcome is api.Outcome.UNAVAILABLE
    assert start.ke2 == b""


# ------------------------------------------------------------------ secrets


def test_nothing_secret_in_repr_or_logs(
    enrolled: tuple[Harness, BackupKey], caplog: pytest.LogCaptureFixture
) -> None:
    node, _ = enrolled
    caplog.set_level("DEBUG")
    login = node.login()
    assert login.session_key is not None
    texts = [repr(node.service), repr(login.start), repr(login.finish), caplog.text]
    texts += [repr(s) for s in node.service._sessions.values()]
    for text in texts:
        assert login.session_key.hex() not in text
        assert login.start.session_id.hex() not in text
        assert "sealed_wrapped_key=b" not in text
    with pytest.raises(TypeError):
        pickle.dumps(node.service)


def test_rejoin_request_is_delegated_to_the_node_process_handler() -> None:
    ticket = api.RejoinRequest(bytes(32), bytes(32), 2, bytes(64))
    harness = Harness()
    refused = harness.call(ticket)  # no handler: not a door this service opens
    assert refused == api.RejoinResponse.refused(api.Outcome.BAD_REQUEST)
    seen: list[api.RejoinRequest] = []
    for outcome in (api.Outcome.OK, api.Outcome.INVALID_LOGIN, api.Outcome.UNAVAILABLE):

        def handler(request: api.RejoinRequest, answer: api.Outcome = outcome) -> api.Outcome:
            seen.append(request)
            return answer

        service = VaultService(
            SERVER,
            harness.fleet,
            upload_key=FLEET_KEY,
            fleet_id=FLEET_ID,
            signing_key=SIG_KEY,
            rejoin=handler,
        )
        response = api.decode_response(service.handle(ticket.to_bytes()))
        assert isinstance(response, api.RejoinResponse)
        assert response.outcome is outcome
    assert seen == [ticket] * 3


# ------------------------------------------------------------------ bundles (ADR 0010)


def _verify_session(request: bytes, response: api.Response, bundle: bytes) -> None:
    """The start response carries the fleet id, ``bundle`` and a signature by the fleet's
    sig key over exactly ``request`` and that bundle."""
    assert isinstance(response, api.RegistrationStartResponse | api.LoginStartResponse)
    assert response.outcome is api.Outcome.OK
    assert response.fleet_id == FLEET_ID
    assert response.bundle == bundle
    message = fleet_session_message(FLEET_ID, request, bundle)
    SIG_PUB.verify(response.fleet_signature, message)


def _starts(harness: Harness) -> list[tuple[bytes, api.Response]]:
    """A registration start, a login start of a real user and one of an unknown user."""
    request, _ = harness.client.start_registration(PIN)
    reg = api.RegistrationStartRequest(ALICE, request.to_bytes()).to_bytes()
    ke1, _ = harness.client.start_login(PIN)
    known = api.LoginStartRequest(ALICE, ke1.to_bytes()).to_bytes()
    unknown = api.LoginStartRequest(b"nobody", ke1.to_bytes()).to_bytes()
    return [
        (raw, api.decode_response(harness.service.handle(raw))) for raw in (reg, known, unknown)
    ]


def test_start_responses_are_signed_by_the_fleet_with_or_without_a_bundle() -> None:
    harness = Harness()
    harness.register()
    for raw, response in _starts(harness):
        _verify_session(raw, response, b"")  # nothing installed: empty bundle, still signed
    bundle = b'{"version":1,"artifact":"..."}' * 3
    installed = harness.call(api.InstallBundleRequest(7, bundle))
    assert installed == api.InstallBundleResponse(api.Outcome.OK, 7)
    for raw, response in _starts(harness):
        _verify_session(raw, response, bundle)
        assert isinstance(response, api.RegistrationStartResponse | api.LoginStartResponse)
        with pytest.raises(InvalidSignature):  # bound to this request ...
            SIG_PUB.verify(
                response.fleet_signature, fleet_session_message(FLEET_ID, raw + b"x", bundle)
            )
        with pytest.raises(InvalidSignature):  # ... and to this bundle
            SIG_PUB.verify(
                response.fleet_signature, fleet_session_message(FLEET_ID, raw, bundle + b" ")
            )


def test_unknown_users_get_the_same_signed_shape() -> None:
    harness = Harness()
    harness.register()
    harness.call(api.InstallBundleRequest(1, b"bundle"))
    (_, known), (_, unknown) = _starts(harness)[1:]
    assert isinstance(known, api.LoginStartResponse)
    assert isinstance(unknown, api.LoginStartResponse)
    assert len(known.to_bytes()) == len(unknown.to_bytes())
    assert (known.fleet_id, known.bundle) == (unknown.fleet_id, unknown.bundle)


def test_install_bundle_epochs_only_move_forward() -> None:
    harness = Harness()
    assert harness.call(api.InstallBundleRequest(5, b"five")) == api.InstallBundleResponse(
        api.Outcome.OK, 5
    )
    # the same epoch and bytes again: idempotent, nothing committed
    log_length = len(harness.fleet.log)
    assert harness.call(api.InstallBundleRequest(5, b"five")).outcome is api.Outcome.OK
    assert len(harness.fleet.log) == log_length + 1  # one part, answered "already current"
    refused = harness.call(api.InstallBundleRequest(5, b"FIVE"))
    assert refused == api.InstallBundleResponse.refused(api.Outcome.EPOCH_CONFLICT)
    refused = harness.call(api.InstallBundleRequest(4, b"four"))
    assert refused == api.InstallBundleResponse.refused(api.Outcome.STALE_EPOCH)
    installed = harness.fleet.state().bundle()
    assert installed is not None
    assert (installed.epoch, installed.bundle) == (5, b"five")
    assert harness.call(api.InstallBundleRequest(6, b"six")).outcome is api.Outcome.OK
    assert harness.call(api.InstallBundleRequest(5, b"five")).outcome is api.Outcome.STALE_EPOCH
    snapshots = harness.fleet.snapshots()
    assert all(snapshot == snapshots[0] for snapshot in snapshots)  # every replica agrees


def test_a_64_kib_bundle_is_committed_in_parts_and_served_whole() -> None:
    harness = Harness()
    bundle = bytes(range(256)) * (api.MAX_BUNDLE_LEN // 256)
    assert harness.call(api.InstallBundleRequest(9, bundle)).outcome is api.Outcome.OK
    parts = [decode_command(c) for c in harness.fleet.log]
    assert all(isinstance(p, BundlePart) for p in parts)
    assert len(parts) == -(-len(bundle) // BUNDLE_PART_LEN)
    assert max(len(c) for c in harness.fleet.log) < 16 * 1024  # fits a replicated command
    raw, response = _starts(harness)[0]
    _verify_session(raw, response, bundle)


def test_install_bundle_without_quorum_is_unavailable_and_changes_nothing() -> None:
    harness = Harness()
    harness.fleet.available = False
    refused = harness.call(api.InstallBundleRequest(1, b"bundle"))
    assert refused == api.InstallBundleResponse.refused(api.Outcome.UNAVAILABLE)
    assert harness.fleet.state().bundle() is None


def test_an_interleaved_install_is_unavailable_and_a_retry_succeeds() -> None:
    harness = Harness()
    big = b"a" * (2 * BUNDLE_PART_LEN)
    other = b"b" * (2 * BUNDLE_PART_LEN)
    fleet = harness.fleet
    submit = fleet.submit
    injected = False

    def interleave(command: bytes) -> bytes:
        nonlocal injected
        result = submit(command)
        if not injected:  # another installer's first part lands right after ours
            injected = True
            digest = hashlib.sha256(other).digest()
            submit(encode_command(BundlePart(3, digest, len(other), 0, other[:BUNDLE_PART_LEN])))
        return result

    fleet.submit = interleave  # type: ignore[method-assign]
    refused = harness.call(api.InstallBundleRequest(3, big))
    assert refused == api.InstallBundleResponse.refused(api.Outcome.UNAVAILABLE)
    assert fleet.state().bundle() is None
    assert harness.call(api.InstallBundleRequest(3, big)).outcome is api.Outcome.OK
    installed = fleet.state().bundle()
    assert installed is not None
    assert installed.bundle == big


def test_the_service_needs_a_fleet_id_and_an_ed25519_signing_key() -> None:
    fleet = InstantConsensus()
    with pytest.raises(InvalidParameter):
        VaultService(SERVER, fleet, upload_key=FLEET_KEY, fleet_id=bytes(31), signing_key=SIG_KEY)
    with pytest.raises(InvalidParameter):
        VaultService(
            SERVER,
            fleet,
            upload_key=FLEET_KEY,
            fleet_id=FLEET_ID,
            signing_key=FLEET_KEY,  # type: ignore[arg-type]
        )
