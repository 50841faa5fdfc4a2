"""Secure links between fleet members: one test per attack on the handshake and the
record layer."""

from __future__ import annotations

import os
import struct

import pytest

from hsmvault.errors import InvalidParameter, ProtocolStateError, VerificationError
from hsmvault.fleet.membership import (
    FleetMember,
    FleetMembership,
    SoftwareIdentitySigner,
    node_id_for,
)
from hsmvault.fleet.secure_link import (
    MAX_FRAME_CIPHERTEXT,
    MSG1_LEN,
    MSG2_LEN,
    HandshakeInitiator,
    HandshakeResponder,
    SecureLink,
)


def _membership(signers: list[SoftwareIdentitySigner], fleet_id: bytes) -> FleetMembership:
    return FleetMembership(
        fleet_id,
        [FleetMember(s.public_key(), "127.0.0.1", 7000 + i) for i, s in enumerate(signers)],
    )


@pytest.fixture
def alice() -> SoftwareIdentitySigner:
    return SoftwareIdentitySigner.generate()


@pytest.fixture
def bob() -> SoftwareIdentitySigner:
    return SoftwareIdentitySigner.generate()


@pytest.fixture
def fleet(alice: SoftwareIdentitySigner, bob: SoftwareIdentitySigner) -> FleetMembership:
    return _membership([alice, bob, SoftwareIdentitySigner.generate()], os.urandom(32))


def handshake(
    initiator: SoftwareIdentitySigner,
    responder: SoftwareIdentitySigner,
    fleet: FleetMembership,
) -> tuple[SecureLink, SecureLink]:
    i = HandshakeInitiator(initiator, fleet, node_id_for(responder.public_key()))
    r = HandshakeResponder(responder, fleet)
    msg2 = r.respond(i.start())
    msg3, link_i = i.finish(msg2)
    return link_i, r.finish(msg3)


class _ImpostorSigner:
    """Claims a member's public key but signs with another key."""

    def __init__(self, claimed: SoftwareIdentitySigner) -> None:
        self._claimed = claimed
        self._real = SoftwareIdentitySigner.generate()

    def public_key(self) -> bytes:
        return self._claimed.public_key()

    def sign(self, message: bytes) -> bytes:
        return self._real.sign(message)


def test_handshake_establishes_a_link_both_ways(
    alice: SoftwareIdentitySigner, bob: SoftwareIdentitySigner, fleet: FleetMembership
) -> None:
    a, b = handshake(alice, bob, fleet)
    assert a.peer_id == node_id_for(bob.public_key())
    assert b.peer_id == node_id_for(alice.public_key())
    for n in range(3):
        assert b.receive(a.seal(b"ping %d" % n)) == [b"ping %d" % n]
        assert a.receive(b.seal(b"pong %d" % n)) == [b"pong %d" % n]


def test_stream_may_arrive_in_any_fragmentation(
    alice: SoftwareIdentitySigner, bob: SoftwareIdentitySigner, fleet: FleetMembership
) -> None:
    a, b = handshake(alice, bob, fleet)
    stream = a.seal(b"one") + a.seal(b"") + a.seal(b"three" * 100)
    out: list[bytes] = []
    for i in range(len(stream)):
        out += b.receive(stream[i : i + 1])
    assert out == [b"one", b"", b"three" * 100]


def test_initiator_with_unknown_identity_is_refused(
    bob: SoftwareIdentitySigner, fleet: FleetMembership
) -> None:
    outsider = SoftwareIdentitySigner.generate()
    # The outsider builds a well-formed msg1 from its own view of a fleet that lists it.
    own_view = _membership([outsider, bob], fleet.fleet_id)
    msg1 = HandshakeInitiator(outsider, own_view, node_id_for(bob.public_key())).start()
    with pytest.raises(VerificationError, match="not a fleet member"):
        HandshakeResponder(bob, fleet).respond(msg1)


def test_responder_with_unknown_identity_is_refused(
    alice: SoftwareIdentitySigner, bob: SoftwareIdentitySigner, fleet: FleetMembership
) -> None:
    """Someone answering on bob's address without bob's key cannot finish the handshake."""
    impostor = _ImpostorSigner(bob)
    i = HandshakeInitiator(alice, fleet, node_id_for(bob.public_key()))
    msg2 = HandshakeResponder(impostor, fleet).respond(i.start())
    with pytest.raises(VerificationError, match="signature"):
        i.finish(msg2)


def test_forged_initiator_signature_is_refused(
    alice: SoftwareIdentitySigner, bob: SoftwareIdentitySigner, fleet: FleetMembership
) -> None:
    """An attacker claiming alice's (member) id without alice's key is refused at msg3."""
    i = HandshakeInitiator(_ImpostorSigner(alice), fleet, node_id_for(bob.public_key()))
    r = HandshakeResponder(bob, fleet)
    msg3, _ = i.finish(r.respond(i.start()))
    with pytest.raises(VerificationError, match="signature"):
        r.finish(msg3)


def test_tampered_responder_signature_is_refused(
    alice: SoftwareIdentitySigner, bob: SoftwareIdentitySigner, fleet: FleetMembership
) -> None:
    i = HandshakeInitiator(alice, fleet, node_id_for(bob.public_key()))
    msg2 = bytearray(HandshakeResponder(bob, fleet).respond(i.start()))
    msg2[-1] ^= 1
    with pytest.raises(VerificationError):
        i.finish(bytes(msg2))


def test_swapped_ephemeral_key_is_refused(
    alice: SoftwareIdentitySigner, bob: SoftwareIdentitySigner, fleet: FleetMembership
) -> None:
    """A man in the middle replacing bob's ephemeral key breaks bob's signature."""
    i = HandshakeInitiator(alice, fleet, node_id_for(bob.public_key()))
    msg2 = HandshakeResponder(bob, fleet).respond(i.start())
    with pytest.raises(VerificationError):
        i.finish(os.urandom(32) + msg2[32:])


def test_signature_from_another_session_is_refused(
    alice: SoftwareIdentitySigner, bob: SoftwareIdentitySigner, fleet: FleetMembership
) -> None:
    """msg3 replayed from an earlier handshake does not verify in a new one."""
    bob_id = node_id_for(bob.public_key())
    old = HandshakeInitiator(alice, fleet, bob_id)
    old_msg3, _ = old.finish(HandshakeResponder(bob, fleet).respond(old.start()))
    new = HandshakeInitiator(alice, fleet, bob_id)
    r = HandshakeResponder(bob, fleet)
    r.respond(new.start())
    with pytest.raises(VerificationError):
        r.finish(old_msg3)


@pytest.mark.parametrize(
    ("offset", "why"),
    [(1, "another fleet"), (1 + 32 + 32, "addressed to another node"), (0, "malformed")],
)
def test_msg1_for_another_fleet_or_node_is_refused(
    alice: SoftwareIdentitySigner,
    bob: SoftwareIdentitySigner,
    fleet: FleetMembership,
    offset: int,
    why: str,
) -> None:
    msg1 = bytearray(HandshakeInitiator(alice, fleet, node_id_for(bob.public_key())).start())
    msg1[offset] ^= 0x80
    with pytest.raises(VerificationError, match=why):
        HandshakeResponder(bob, fleet).respond(bytes(msg1))


def test_handshake_messages_with_wrong_length_are_refused(
    alice: SoftwareIdentitySigner, bob: SoftwareIdentitySigner, fleet: FleetMembership
) -> None:
    i = HandshakeInitiator(alice, fleet, node_id_for(bob.public_key()))
    msg1 = i.start()
    assert len(msg1) == MSG1_LEN
    with pytest.raises(VerificationError):
        HandshakeResponder(bob, fleet).respond(msg1 + b"\x00")
    r = HandshakeResponder(bob, fleet)
    msg2 = r.respond(msg1)
    assert len(msg2) == MSG2_LEN
    with pytest.raises(VerificationError):
        i.finish(msg2[:-1])
    with pytest.raises(VerificationError):
        r.finish(b"\x00" * 63)


def test_handshake_states_are_single_use(
    alice: SoftwareIdentitySigner, bob: SoftwareIdentitySigner, fleet: FleetMembership
) -> None:
    i = HandshakeInitiator(alice, fleet, node_id_for(bob.public_key()))
    r = HandshakeResponder(bob, fleet)
    msg1 = i.start()
    with pytest.raises(ProtocolStateError):
        i.start()
    msg2 = r.respond(msg1)
    with pytest.raises(ProtocolStateError):
        r.respond(msg1)
    msg3, _ = i.finish(msg2)
    with pytest.raises(ProtocolStateError):
        i.finish(msg2)
    r.finish(msg3)
    with pytest.raises(ProtocolStateError):
        r.finish(msg3)


def test_non_member_cannot_even_start(bob: SoftwareIdentitySigner, fleet: FleetMembership) -> None:
    with pytest.raises(InvalidParameter):
        HandshakeInitiator(SoftwareIdentitySigner.generate(), fleet, node_id_for(bob.public_key()))


# --- record layer ----------------------------------------------------------------------


@pytest.fixture
def links(
    alice: SoftwareIdentitySigner, bob: SoftwareIdentitySigner, fleet: FleetMembership
) -> tuple[SecureLink, SecureLink]:
    return handshake(alice, bob, fleet)


def _assert_dead(link: SecureLink, good_frame: bytes) -> None:
    assert link.dead
    with pytest.raises(VerificationError):
        link.receive(good_frame)


def test_tampered_frame_kills_the_link(links: tuple[SecureLink, SecureLink]) -> None:
    a, b = links
    frame = bytearray(a.seal(b"commit 7"))
    frame[-3] ^= 1
    with pytest.raises(VerificationError, match="authentication"):
        b.receive(bytes(frame))
    _assert_dead(b, a.seal(b"next"))


def test_tampered_header_kills_the_link(links: tuple[SecureLink, SecureLink]) -> None:
    a, b = links
    frame = a.seal(b"commit 7")
    with pytest.raises(VerificationError):
        b.receive(frame[:3] + bytes([frame[3] ^ 1]) + frame[4:] + b"\x00")


def test_replayed_frame_kills_the_link(links: tuple[SecureLink, SecureLink]) -> None:
    a, b = links
    frame = a.seal(b"increment guess counter")
    assert b.receive(frame) == [b"increment guess counter"]
    with pytest.raises(VerificationError, match="out of order"):
        b.receive(frame)
    _assert_dead(b, a.seal(b"next"))


def test_reordered_frames_kill_the_link(links: tuple[SecureLink, SecureLink]) -> None:
    a, b = links
    first, second = a.seal(b"1"), a.seal(b"2")
    with pytest.raises(VerificationError, match="out of order"):
        b.receive(second + first)
    assert b.dead


def test_dropped_frame_kills_the_link(links: tuple[SecureLink, SecureLink]) -> None:
    a, b = links
    a.seal(b"lost on the way")
    with pytest.raises(VerificationError, match="out of order"):
        b.receive(a.seal(b"after the gap"))
    assert b.dead


def test_reflected_frame_is_refused(links: tuple[SecureLink, SecureLink]) -> None:
    """Each direction has its own key: a node's own frame sent back to it fails."""
    a, _ = links
    with pytest.raises(VerificationError):
        a.receive(a.seal(b"echo"))


def test_frame_from_another_link_is_refused(
    alice: SoftwareIdentitySigner, bob: SoftwareIdentitySigner, fleet: FleetMembership
) -> None:
    old_a, _ = handshake(alice, bob, fleet)
    _, new_b = handshake(alice, bob, fleet)
    with pytest.raises(VerificationError):
        new_b.receive(old_a.seal(b"from an old session"))


def test_oversize_length_is_refused_before_buffering(links: tuple[SecureLink, SecureLink]) -> None:
    _, b = links
    header = struct.pack(">IQ", MAX_FRAME_CIPHERTEXT + 1, 0)
    with pytest.raises(VerificationError, match="length"):
        b.receive(header)  # no body sent: refused on the header alone
    assert b.dead


def test_too_short_length_is_refused(links: tuple[SecureLink, SecureLink]) -> None:
    _, b = links
    with pytest.raises(VerificationError, match="length"):
        b.receive(struct.pack(">IQ", 15, 0))


def test_oversize_plaintext_is_refused_on_seal(links: tuple[SecureLink, SecureLink]) -> None:
    a, _ = links
    with pytest.raises(InvalidParameter):
        a.seal(bytes(MAX_FRAME_CIPHERTEXT))


def test_reprs_show_no_secrets(
    alice: SoftwareIdentitySigner, links: tuple[SecureLink, SecureLink]
) -> None:
    a, _ = links
    assert "redacted" in repr(a)
    assert "redacted" in repr(alice)
    assert "_key" not in repr(alice)
