"""The device's side of the vault protocol against an in-process node and fleet.

``send`` is ``VaultService.handle``: the same bytes the gateway relays. A tiny Argon2id
keeps the client fast; the client's KSF floor is lowered to match, explicitly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from hsmvault.client import vault_protocol as vp
from hsmvault.client.errors import (
    AlreadyEnrolled,
    InvalidLogin,
    KsfParametersRefused,
    RequestRefused,
    Unavailable,
)
from hsmvault.client.fleet_trust import PinnedFleetTrust
from hsmvault.client.recovery_codes import Password, Pin, RecoveryCode, VaultSecret
from hsmvault.crypto.backup_stream import BackupKey
from hsmvault.crypto.ksf import KsfAlgorithm, KsfParams
from hsmvault.crypto.opaque import OpaqueClient
from hsmvault.errors import DecodeError, InvalidParameter, LockedOut, VerificationError
from hsmvault.fleet.fleet_keys import FleetPublicKeys, FleetSecretKeys
from hsmvault.hsm.vault_service import VaultService, VaultServiceConfig
from hsmvault.transparency.errors import FleetKeyMismatch
from hsmvault.wire import hsm_api as api
from hsmvault.wire.fleet_session import fleet_session_message
from tests.hsm.sim import InstantConsensus

TINY = KsfParams(KsfAlgorithm.ARGON2ID, memory_kib=8, iterations=1, parallelism=1)
CONFIG = vp.VaultProtocolConfig(enrolment_ksf=TINY, ksf_policy=vp.KsfPolicy(floor=TINY))
ALICE = b"alice"
FLEET = FleetSecretKeys.generate()
OTHER_FLEET = FleetSecretKeys.generate()
TRUST = PinnedFleetTrust(FLEET.public())


class Node:
    """One node of an in-process fleet of ``keys``, and the transport to it.
    ``opaque_keys`` (default ``keys``) serve OPAQUE: another fleet's for a node that is
    not what it claims."""

    def __init__(
        self,
        *,
        replicas: int = 3,
        keys: FleetSecretKeys = FLEET,
        opaque_keys: FleetSecretKeys | None = None,
        **config: object,
    ) -> None:
        self.fleet = InstantConsensus(replicas)
        defaults: dict[str, object] = {"unknown_user_ksf_params": TINY}
        self.service = VaultService(
            (opaque_keys or keys).opaque_server(),
            self.fleet,
            upload_key=keys.enc_private(),
            fleet_id=keys.fleet_id,
            signing_key=keys.sig_private(),
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
        return vp.recover(self.send, user, secret, TRUST, config=CONFIG)


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
    vp.delete_escrow(node.send, ALICE, Pin("482916"), TRUST, config=CONFIG)
    assert node.fleet.state().record(ALICE) is None
    with pytest.raises(InvalidLogin) as exc:  # now an unknown user: indistinguishable
        node.recover(Pin("482916"))
    assert exc.value.attempts_remaining == api.DEFAULT_GUESS_LIMIT - 1


def test_disable_escrow_needs_the_secret(node: Node) -> None:
    node.enroll(Pin("482916"), BackupKey.generate())
    with pytest.raises(InvalidLogin):
        vp.delete_escrow(node.send, ALICE, Pin("000000"), TRUST, config=CONFIG)
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
        vp.recover(node.send, ALICE, Pin("482916"), TRUST)  # default policy: m >= 19 MiB, t >= 2


def test_a_relay_that_inflates_ksf_parameters_is_refused(node: Node) -> None:
    node.enroll(Pin("482916"), BackupKey.generate())
    huge = KsfParams(KsfAlgorithm.ARGON2ID, memory_kib=4 * 1024 * 1024, iterations=3, parallelism=1)

    def tamper(request: bytes) -> bytes:
        response = api.decode_response(node.send(request))
        if isinstance(response, api.LoginStartResponse) and response.outcome is api.Outcome.OK:
            # the fleet signature covers the request and bundle, not the KSF parameters
            response = dataclasses.replace(response, ksf_params=huge.to_bytes())
        return response.to_bytes()

    with pytest.raises(KsfParametersRefused, match="ceiling"):
        vp.recover(tamper, ALICE, Pin("482916"), TRUST, config=CONFIG)


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
    assert vp.recover(node.send, ALICE, b"1234", TRUST, config=unsafe) == bk
    with pytest.raises(KsfParametersRefused):
        vp.recover(node.send, ALICE, b"1234", TRUST, config=CONFIG)


def test_enrolment_refuses_a_node_with_another_fleets_ake_key() -> None:
    # the node signs as FLEET (so the trust check passes) but answers OPAQUE with
    # OTHER_FLEET's AKE key: the comparison with the trusted key refuses it
    impostor = Node(opaque_keys=OTHER_FLEET)
    with pytest.raises(VerificationError, match="AKE"):
        vp.enroll(impostor.send, ALICE, b"1234", BackupKey.generate(), TRUST, config=CONFIG)
    assert [type(r) for r in impostor.sent] == [api.RegistrationStartRequest]  # no upload
    assert impostor.fleet.state().record(ALICE) is None


def test_enrolment_compares_with_the_key_the_trust_returned(node: Node) -> None:
    public = FLEET.public()
    other_ake = FleetPublicKeys(
        public.fleet_id,
        OTHER_FLEET.public().ake_public_key,
        public.enc_public_key,
        public.sig_public_key,
    )
    with pytest.raises(VerificationError, match="AKE"):
        vp.enroll(node.send, ALICE, b"1234", BackupKey.generate(), other_ake, config=CONFIG)
    assert node.fleet.state().record(ALICE) is None


def test_an_upload_sealed_to_another_enc_key_is_refused_by_the_node(node: Node) -> None:
    public = FLEET.public()
    wrong_enc = FleetPublicKeys(
        public.fleet_id,
        public.ake_public_key,
        OTHER_FLEET.public().enc_public_key,
        public.sig_public_key,
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


# ------------------------------------------------------------------ fleet trust (ADR 0010)


class Relay:
    """A hostile relay in front of ``node``: ``rewrite`` may change start responses."""

    def __init__(self, node: Node, rewrite: Callable[[bytes, api.Response], api.Response]) -> None:
        self.node = node
        self.rewrite = rewrite
        self.sent: list[api.Request] = []

    def send(self, request: bytes) -> bytes:
        self.sent.append(api.decode_request(request))
        response = api.decode_response(self.node.send(request))
        starts = api.RegistrationStartResponse | api.LoginStartResponse
        if isinstance(response, starts) and response.outcome is api.Outcome.OK:
            response = self.rewrite(request, response)
        return response.to_bytes()


def _tamper_signature(_: bytes, response: api.Response) -> api.Response:
    assert isinstance(response, api.RegistrationStartResponse | api.LoginStartResponse)
    signature = bytearray(response.fleet_signature)
    signature[0] ^= 1
    return dataclasses.replace(response, fleet_signature=bytes(signature))


def _other_fleet_id(_: bytes, response: api.Response) -> api.Response:
    assert isinstance(response, api.RegistrationStartResponse | api.LoginStartResponse)
    return dataclasses.replace(response, fleet_id=OTHER_FLEET.fleet_id)


def _swap_bundle(_: bytes, response: api.Response) -> api.Response:
    assert isinstance(response, api.RegistrationStartResponse | api.LoginStartResponse)
    return dataclasses.replace(response, bundle=b"another bundle")


class Replayer:
    """Answers every start with a signed answer recorded for an earlier request."""

    def __init__(self) -> None:
        self.recorded: dict[type, api.Response] = {}

    def record(self, request: bytes, response: api.Response) -> api.Response:
        self.recorded[type(response)] = response
        return response

    def replay(self, _: bytes, response: api.Response) -> api.Response:
        old = self.recorded[type(response)]
        assert old != response
        return old


REWRITES = {
    "tampered signature": _tamper_signature,
    "another fleet id": _other_fleet_id,
    "swapped bundle": _swap_bundle,
}


@pytest.mark.parametrize("name", sorted(REWRITES))
def test_a_start_that_fails_the_trust_check_stops_enrolment(name: str) -> None:
    relay = Relay(Node(), REWRITES[name])
    with pytest.raises(FleetKeyMismatch):
        vp.enroll(relay.send, ALICE, b"1234", BackupKey.generate(), TRUST, config=CONFIG)
    assert [type(r) for r in relay.sent] == [api.RegistrationStartRequest]  # nothing further
    assert relay.node.fleet.state().record(ALICE) is None


@pytest.mark.parametrize("name", sorted(REWRITES))
def test_a_start_that_fails_the_trust_check_stops_a_login(name: str) -> None:
    node = Node()
    node.enroll(Pin("482916"), BackupKey.generate())
    relay = Relay(node, REWRITES[name])
    with pytest.raises(FleetKeyMismatch):
        vp.recover(relay.send, ALICE, Pin("482916"), TRUST, config=CONFIG)
    assert [type(r) for r in relay.sent] == [api.LoginStartRequest]  # not even a closing KE3
    with pytest.raises(FleetKeyMismatch):
        vp.delete_escrow(relay.send, ALICE, Pin("482916"), TRUST, config=CONFIG)
    assert node.fleet.state().record(ALICE) is not None


def test_a_signed_answer_replayed_for_another_request_is_refused() -> None:
    node = Node()
    replayer = Replayer()
    recording = Relay(node, replayer.record)
    vp.enroll(recording.send, ALICE, b"1234", BackupKey.generate(), TRUST, config=CONFIG)
    vp.recover(recording.send, ALICE, b"1234", TRUST, config=CONFIG)
    replaying = Relay(node, replayer.replay)
    with pytest.raises(FleetKeyMismatch):
        vp.enroll(replaying.send, b"bob", b"1234", BackupKey.generate(), TRUST, config=CONFIG)
    with pytest.raises(FleetKeyMismatch):
        vp.recover(replaying.send, ALICE, b"1234", TRUST, config=CONFIG)
    assert [type(r) for r in replaying.sent] == [
        api.RegistrationStartRequest,
        api.LoginStartRequest,
    ]


class TwoFleets:
    """Trusts FLEET and OTHER_FLEET (each pinned)."""

    def session_keys(
        self, fleet_id: bytes, request: bytes, bundle: bytes, fleet_signature: bytes
    ) -> FleetPublicKeys:
        keys = OTHER_FLEET if fleet_id == OTHER_FLEET.fleet_id else FLEET
        return PinnedFleetTrust(keys.public()).session_keys(
            fleet_id, request, bundle, fleet_signature
        )


def test_change_secret_refuses_a_registration_answered_by_another_fleet() -> None:
    node, other = Node(), Node(keys=OTHER_FLEET)
    node.enroll(Pin("482916"), BackupKey.generate())
    sent: list[api.Request] = []

    def split(request: bytes) -> bytes:  # registrations go to the other (trusted) fleet
        sent.append(api.decode_request(request))
        if isinstance(sent[-1], api.RegistrationStartRequest):
            return other.send(request)
        return node.send(request)

    with pytest.raises(FleetKeyMismatch, match="another fleet"):
        vp.change_secret(split, ALICE, Pin("482916"), Pin("999999"), TwoFleets(), config=CONFIG)
    assert [type(r) for r in sent] == [
        api.LoginStartRequest,
        api.LoginFinishRequest,
        api.RegistrationStartRequest,
    ]


def test_trust_returning_keys_of_another_fleet_than_the_answering_one_is_refused(
    node: Node,
) -> None:
    class Liar:
        def session_keys(
            self, fleet_id: bytes, request: bytes, bundle: bytes, fleet_signature: bytes
        ) -> FleetPublicKeys:
            return OTHER_FLEET.public()

    with pytest.raises(FleetKeyMismatch):
        vp.enroll(node.send, ALICE, b"1234", BackupKey.generate(), Liar(), config=CONFIG)
    assert len(node.sent) == 1


def test_a_fleet_signature_verifies_under_the_fleets_sig_key(node: Node) -> None:
    request = api.RegistrationStartRequest(
        ALICE, OpaqueClient().start_registration(b"1234")[0].to_bytes()
    ).to_bytes()
    response = api.decode_response(node.send(request))
    assert isinstance(response, api.RegistrationStartResponse)
    assert response.fleet_id == FLEET.fleet_id
    assert response.bundle == b""
    Ed25519PublicKey.from_public_bytes(FLEET.public().sig_public_key).verify(
        response.fleet_signature, fleet_session_message(FLEET.fleet_id, request, b"")
    )
    assert (
        TRUST.session_keys(response.fleet_id, request, response.bundle, response.fleet_signature)
        == FLEET.public()
    )


def test_flows_refuse_a_trust_of_the_wrong_type(node: Node) -> None:
    with pytest.raises(InvalidParameter):
        vp.recover(node.send, ALICE, b"1234", object(), config=CONFIG)  # type: ignore[arg-type]
    assert node.sent == []
