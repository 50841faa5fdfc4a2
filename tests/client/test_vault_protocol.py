"""The device's side of the vault protocol against an in-process node and fleet.

``send`` is ``VaultService.handle``: the same bytes the gateway relays. A tiny Argon2id
keeps the client fast; the client's KSF floor is lowered to match, explicitly.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from hsmvault.client import vault_protocol as vp
from hsmvault.client.errors import (
    AlreadyEnrolled,
    InvalidLogin,
    KsfParametersRefused,
    RequestRefused,
    Unavailable,
)
from hsmvault.client.recovery_codes import Password, Pin, RecoveryCode, VaultSecret
from hsmvault.crypto.backup_stream import BackupKey
from hsmvault.crypto.ksf import KsfAlgorithm, KsfParams
from hsmvault.errors import DecodeError, InvalidParameter, LockedOut, VerificationError
from hsmvault.fleet.fleet_keys import FleetPublicKeys, FleetSecretKeys
from hsmvault.hsm.vault_service import VaultService, VaultServiceConfig
from hsmvault.wire import hsm_api as api
from tests.hsm.sim import InstantConsensus

TINY = KsfParams(KsfAlgorithm.ARGON2ID, memory_kib=8, iterations=1, parallelism=1)
CONFIG = vp.VaultProtocolConfig(enrolment_ksf=TINY, ksf_policy=vp.KsfPolicy(floor=TINY))
ALICE = b"alice"
FLEET = FleetSecretKeys.generate()
OTHER_FLEET = FleetSecretKeys.generate()


class Node:
    """One node of an in-process fleet, and the transport to it."""

    def __init__(self, *, replicas: int = 3, **config: object) -> None:
        self.fleet = InstantConsensus(replicas)
        defaults: dict[str, object] = {"unknown_user_ksf_params": TINY}
        self.service = VaultService(
            FLEET.opaque_server(),
            self.fleet,
            upload_key=FLEET.enc_private(),
            config=VaultServiceConfig(**(defaults | config)),  # type: ignore[arg-type]
        )
        self.sent: list[api.Request] = []

    def send(self, request: bytes) -> bytes:
        self.sent.append(api.decode_request(request))
        return self.service.handle(request)

    def enroll(
        self, secret: VaultSecret | bytes, bk: BackupKey, *, user: bytes = ALICE, **kw: object
    ) -> None:
        vp.enroll(self.send, user, secret, bk, FLEET.public(), config=CONFIG, **kw)  # type: ignore[arg-type]

    def recover(self, secret: VaultSecret | bytes, *, user: bytes = ALICE) -> BackupKey:
        return vp.recover(self.send, user, secret, config=CONFIG)


@pytest.fixture
def node() -> Node:
    return Node()


SECRETS: dict[str, Callable[[], VaultSecret]] = {
    "pin": lambda: Pin("482916"),
    "password": lambda: Password("correct horse battery staple"),
    "recovery code": RecoveryCode.generate,
}


@pytest.mark.parametrize("kind", sorted(SECRETS))
def test_each_protection_mode_escrows_and_recovers_the_backup_key(node: Node, kind: str) -> None:
    secret, bk = SECRETS[kind](), BackupKey.generate()
    node.enroll(secret, bk)
    assert node.recover(secret) == bk
    assert vp.attempts_remaining(node.send, ALICE) == api.DEFAULT_GUESS_LIMIT


def test_nothing_sent_carries_the_secret_or_the_key_in_the_clear(node: Node) -> None:
    secret, bk = Pin("482916"), BackupKey.generate()
    node.enroll(secret, bk)
    node.recover(secret)
    for request in node.sent:
        wire = request.to_bytes()
        assert b"482916" not in wire
        assert bk.expose_secret() not in wire


def test_wrong_secret_reports_attempts_left_and_a_right_one_resets(node: Node) -> None:
    bk = BackupKey.generate()
    node.enroll(Pin("482916"), bk)
    with pytest.raises(InvalidLogin) as first:
        node.recover(Pin("111111"))
    assert first.value.attempts_remaining == 9
    with pytest.raises(InvalidLogin) as second:
        node.recover(Pin("222222"))
    assert second.value.attempts_remaining == 8
    assert vp.attempts_remaining(node.send, ALICE) == 8
    assert node.recover(Pin("482916")) == bk
    assert vp.attempts_remaining(node.send, ALICE) == 10


def test_a_failed_login_closes_its_session_at_the_node(node: Node) -> None:
    node.enroll(Pin("482916"), BackupKey.generate())
    with pytest.raises(InvalidLogin):
        node.recover(Pin("111111"))
    assert isinstance(node.sent[-1], api.LoginFinishRequest)  # the dummy KE3
    assert node.service.open_sessions == 0


def test_the_limit_locks_out_for_good(node: Node) -> None:
    bk = BackupKey.generate()
    node.enroll(Pin("482916"), bk, guess_limit=3)
    for left in (2, 1):
        with pytest.raises(InvalidLogin) as exc:
            node.recover(Pin("000000"))
        assert exc.value.attempts_remaining == left
    with pytest.raises(LockedOut):  # the last wrong guess erases the record at once
        node.recover(Pin("000000"))
    assert node.fleet.state().record(ALICE) is None
    with pytest.raises(LockedOut):
        node.recover(Pin("482916"))  # even the right PIN
    with pytest.raises(LockedOut):
        vp.attempts_remaining(node.send, ALICE)
    with pytest.raises(LockedOut):  # no silent re-enrolment
        node.enroll(Pin("482916"), bk)
    node.enroll(Pin("135790"), bk, replace=True)  # the explicit one
    assert node.recover(Pin("135790")) == bk


def test_change_secret_keeps_the_key_and_retires_the_old_secret(node: Node) -> None:
    bk = BackupKey.generate()
    node.enroll(Pin("482916"), bk, guess_limit=5)
    code = RecoveryCode.generate()
    assert (
        vp.change_secret(node.send, ALICE, Pin("482916"), code, FLEET.public(), config=CONFIG) == bk
    )
    assert node.recover(code) == bk
    with pytest.raises(InvalidLogin):
        node.recover(Pin("482916"))
    record = node.fleet.state().record(ALICE)
    assert record is not None
    assert record.guess_limit == 5


def test_change_secret_with_a_wrong_old_secret_changes_nothing(node: Node) -> None:
    bk = BackupKey.generate()
    node.enroll(Pin("482916"), bk)
    with pytest.raises(InvalidLogin):
        vp.change_secret(
            node.send, ALICE, Pin("000000"), Pin("999999"), FLEET.public(), config=CONFIG
        )
    assert node.recover(Pin("482916")) == bk


def test_disable_escrow_deletes_the_record(node: Node) -> None:
    node.enroll(Pin("482916"), BackupKey.generate())
    vp.delete_escrow(node.send, ALICE, Pin("482916"), config=CONFIG)
    assert node.fleet.state().record(ALICE) is None
    with pytest.raises(InvalidLogin) as exc:  # now an unknown user: indistinguishable
        node.recover(Pin("482916"))
    assert exc.value.attempts_remaining == api.DEFAULT_GUESS_LIMIT - 1


def test_disable_escrow_needs_the_secret(node: Node) -> None:
    node.enroll(Pin("482916"), BackupKey.generate())
    with pytest.raises(InvalidLogin):
        vp.delete_escrow(node.send, ALICE, Pin("000000"), config=CONFIG)
    assert node.fleet.state().record(ALICE) is not None


def test_enrolling_twice_needs_replace(node: Node) -> None:
    node.enroll(Pin("482916"), BackupKey.generate())
    with pytest.raises(AlreadyEnrolled):
        node.enroll(Pin("482916"), BackupKey.generate())


def test_unavailable_fleet_is_reported(node: Node) -> None:
    node.enroll(Pin("482916"), BackupKey.generate())
    node.fleet.available = False
    with pytest.raises(Unavailable):
        node.recover(Pin("482916"))
    with pytest.raises(Unavailable):
        node.enroll(Pin("482916"), BackupKey.generate(), replace=True)


def test_ksf_parameters_below_the_floor_are_refused_at_login(node: Node) -> None:
    node.enroll(Pin("482916"), BackupKey.generate())
    with pytest.raises(KsfParametersRefused, match="floor"):
        vp.recover(node.send, ALICE, Pin("482916"))  # default policy: m >= 19 MiB, t >= 2


def test_a_relay_that_inflates_ksf_parameters_is_refused(node: Node) -> None:
    node.enroll(Pin("482916"), BackupKey.generate())
    huge = KsfParams(KsfAlgorithm.ARGON2ID, memory_kib=4 * 1024 * 1024, iterations=3, parallelism=1)

    def tamper(request: bytes) -> bytes:
        response = api.decode_response(node.send(request))
        if isinstance(response, api.LoginStartResponse) and response.outcome is api.Outcome.OK:
            response = api.LoginStartResponse(
                api.Outcome.OK,
                response.session_id,
                response.ke2,
                huge.to_bytes(),
                response.attempts_remaining,
            )
        return response.to_bytes()

    with pytest.raises(KsfParametersRefused, match="ceiling"):
        vp.recover(tamper, ALICE, Pin("482916"), config=CONFIG)


def test_identity_ksf_only_with_the_unsafe_flag() -> None:
    identity = KsfParams(KsfAlgorithm.UNSAFE_IDENTITY)
    with pytest.raises(KsfParametersRefused, match="identity"):
        vp.VaultProtocolConfig(enrolment_ksf=identity, ksf_policy=vp.KsfPolicy(floor=TINY))
    node = Node(unsafe_allow_identity_ksf=True)
    with pytest.raises(KsfParametersRefused):
        vp.enroll(
            node.send,
            ALICE,
            b"1234",
            BackupKey.generate(),
            FLEET.public(),
            ksf=identity,
            config=CONFIG,
        )
    assert node.sent == []  # refused before anything was sent
    unsafe = vp.VaultProtocolConfig(
        enrolment_ksf=identity, ksf_policy=vp.KsfPolicy(floor=TINY, unsafe_allow_identity=True)
    )
    bk = BackupKey.generate()
    vp.enroll(node.send, ALICE, b"1234", bk, FLEET.public(), config=unsafe)
    assert vp.recover(node.send, ALICE, b"1234", config=unsafe) == bk
    with pytest.raises(KsfParametersRefused):
        vp.recover(node.send, ALICE, b"1234", config=CONFIG)


def test_enrolment_refuses_a_node_with_another_fleets_key(node: Node) -> None:
    with pytest.raises(VerificationError, match="AKE"):
        vp.enroll(
            node.send, ALICE, b"1234", BackupKey.generate(), OTHER_FLEET.public(), config=CONFIG
        )
    assert node.fleet.state().record(ALICE) is None


def test_an_upload_sealed_to_another_enc_key_is_refused_by_the_node(node: Node) -> None:
    public = FLEET.public()
    wrong_enc = FleetPublicKeys(
        public.fleet_id, public.ake_public_key, OTHER_FLEET.public().enc_public_key
    )
    with pytest.raises(RequestRefused):
        vp.enroll(node.send, ALICE, b"1234", BackupKey.generate(), wrong_enc, config=CONFIG)


def test_garbage_answers_are_decode_errors(node: Node) -> None:
    with pytest.raises(DecodeError):
        vp.attempts_remaining(lambda _: b"\x02\xff", ALICE)
    with pytest.raises(DecodeError):  # a well-formed answer of the wrong type
        vp.attempts_remaining(lambda _: api.DeleteResponse(api.Outcome.OK).to_bytes(), ALICE)


def test_arguments_are_checked_before_anything_is_sent(node: Node) -> None:
    with pytest.raises(InvalidParameter):
        node.enroll(b"1234", BackupKey.generate(), guess_limit=0)
    with pytest.raises(InvalidParameter):
        node.enroll(b"1234", BackupKey.generate(), user=b"")
    with pytest.raises(InvalidParameter):
        node.enroll(b"", BackupKey.generate())
    assert node.sent == []
