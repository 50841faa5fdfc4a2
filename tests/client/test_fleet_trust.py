"""Pinned fleet trust (ADR 0010, pinned mode): only the fleet check of step 7."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hsmvault.client.fleet_trust import FleetTrust, PinnedFleetTrust, verify_fleet_signature
from hsmvault.errors import VerificationError
from hsmvault.fleet.fleet_keys import FleetSecretKeys
from hsmvault.transparency.errors import BundleError, FleetKeyMismatch
from hsmvault.wire.fleet_session import fleet_session_message

FLEET = FleetSecretKeys.generate()
OTHER = FleetSecretKeys.generate()
TRUST = PinnedFleetTrust(FLEET.public())
REQUEST = b"\x03\x03 a login start with fresh client randomness"
BUNDLE = b'{"version":1}'


def _signed(keys: FleetSecretKeys, request: bytes, bundle: bytes) -> bytes:
    return keys.sig_private().sign(fleet_session_message(keys.fleet_id, request, bundle))


def test_the_pinned_fleet_signing_this_request_is_trusted() -> None:
    signature = _signed(FLEET, REQUEST, BUNDLE)
    assert TRUST.session_keys(FLEET.fleet_id, REQUEST, BUNDLE, signature) == FLEET.public()
    # the bundle is not parsed in pinned mode: none, or any bytes, as long as signed
    empty = _signed(FLEET, REQUEST, b"")
    assert TRUST.session_keys(FLEET.fleet_id, REQUEST, b"", empty) == FLEET.public()
    trust: FleetTrust = TRUST  # satisfies the protocol
    assert trust.session_keys(FLEET.fleet_id, REQUEST, BUNDLE, signature).fleet_id == (
        FLEET.fleet_id
    )


def test_fleet_key_mismatch_is_a_bundle_error() -> None:
    assert issubclass(FleetKeyMismatch, BundleError)
    assert issubclass(FleetKeyMismatch, VerificationError)


@pytest.mark.parametrize(
    ("fleet_id", "request_bytes", "bundle", "signature"),
    [
        pytest.param(OTHER.fleet_id, REQUEST, BUNDLE, _signed(OTHER, REQUEST, BUNDLE), id="other"),
        pytest.param(FLEET.fleet_id, REQUEST + b"!", BUNDLE, None, id="replayed-for-another"),
        pytest.param(FLEET.fleet_id, REQUEST, BUNDLE + b" ", None, id="swapped-bundle"),
        pytest.param(FLEET.fleet_id, REQUEST, BUNDLE, b"\x00" * 64, id="zero-signature"),
        pytest.param(FLEET.fleet_id, REQUEST, BUNDLE, b"\x00" * 63, id="short-signature"),
        pytest.param(
            FLEET.fleet_id, REQUEST, BUNDLE, _signed(OTHER, REQUEST, BUNDLE), id="other-key"
        ),
        pytest.param(FLEET.fleet_id[:31], REQUEST, BUNDLE, None, id="short-fleet-id"),
    ],
)
def test_anything_else_is_a_fleet_key_mismatch(
    fleet_id: bytes, request_bytes: bytes, bundle: bytes, signature: bytes | None
) -> None:
    if signature is None:  # a genuine signature, made for REQUEST and BUNDLE
        signature = _signed(FLEET, REQUEST, BUNDLE)
    with pytest.raises(FleetKeyMismatch):
        TRUST.session_keys(fleet_id, request_bytes, bundle, signature)


@given(st.integers(0, 63), st.integers(1, 255))
def test_any_flipped_signature_bit_is_refused(index: int, flip: int) -> None:
    signature = bytearray(_signed(FLEET, REQUEST, BUNDLE))
    signature[index] ^= flip
    with pytest.raises(FleetKeyMismatch):
        verify_fleet_signature(FLEET.public(), REQUEST, BUNDLE, bytes(signature))


def test_pinned_trust_needs_public_keys_and_shows_only_the_fleet_id() -> None:
    with pytest.raises(TypeError):
        PinnedFleetTrust(FLEET)  # type: ignore[arg-type]
    assert FLEET.fleet_id.hex()[:16] in repr(TRUST)
    assert TRUST.keys == FLEET.public()
