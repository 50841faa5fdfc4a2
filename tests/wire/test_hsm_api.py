"""The HSM API's wire messages: canonical round trips and strict parsing.

Every decoder must raise ``DecodeError`` — and nothing else — on garbage, on any
truncation of a valid message, and on a valid message with bytes appended.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hsmvault.errors import DecodeError, InvalidParameter
from hsmvault.wire import hsm_api as api
from hsmvault.wire.encoding import Reader, Writer

user_ids = st.binary(min_size=1, max_size=api.MAX_USER_ID_LEN)
opaque = st.binary(min_size=1, max_size=api.MAX_OPAQUE_MESSAGE_LEN)
ksf = st.binary(min_size=1, max_size=api.MAX_KSF_PARAMS_LEN)
wrapped = st.binary(min_size=1, max_size=api.MAX_WRAPPED_KEY_LEN)
sealed_uploads = st.binary(min_size=api.MIN_SEALED_UPLOAD_LEN, max_size=api.MAX_SEALED_UPLOAD_LEN)
uploads = st.builds(api.RegistrationUpload, opaque, ksf, wrapped)
session_ids = st.binary(min_size=api.SESSION_ID_LEN, max_size=api.SESSION_ID_LEN)
nonces = st.binary(min_size=api.CREDENTIAL_NONCE_LEN, max_size=api.CREDENTIAL_NONCE_LEN)
tags = st.binary(min_size=api.AUTHENTICATOR_LEN, max_size=api.AUTHENTICATOR_LEN)
limits = st.integers(api.MIN_GUESS_LIMIT, api.MAX_GUESS_LIMIT)
remaining = st.integers(0, api.MAX_GUESS_LIMIT)
counts = st.integers(0, 2**32 - 1)
refusals = st.sampled_from([o for o in api.Outcome if o is not api.Outcome.OK])
fleet_ids = st.binary(min_size=api.FLEET_ID_LEN, max_size=api.FLEET_ID_LEN)
fleet_signatures = st.binary(min_size=api.FLEET_SIGNATURE_LEN, max_size=api.FLEET_SIGNATURE_LEN)
bundles = st.binary(max_size=300)  # modest: the 64 KiB bound has its own test
epochs = st.integers(0, api.MAX_EPOCH)

requests: st.SearchStrategy[api.Request] = st.one_of(
    st.builds(api.RegistrationStartRequest, user_ids, opaque),
    st.builds(api.RegisterRequest, user_ids, nonces, sealed_uploads, limits, st.booleans()),
    st.builds(api.LoginStartRequest, user_ids, opaque),
    st.builds(api.LoginFinishRequest, session_ids, opaque),
    st.builds(api.AttemptsRemainingRequest, user_ids),
    st.builds(api.ChangeSecretRequest, session_ids, nonces, sealed_uploads, tags),
    st.builds(api.DeleteRequest, session_ids, tags),
    st.just(api.StatusRequest()),
    st.builds(
        api.RejoinRequest,
        st.binary(min_size=32, max_size=32),
        st.binary(min_size=32, max_size=32),
        st.integers(1, 2**64 - 1),
        st.binary(min_size=api.SIGNATURE_LEN, max_size=api.SIGNATURE_LEN),
    ),
    st.builds(api.InstallBundleRequest, epochs, bundles.filter(bool)),
    st.builds(api.DecommissionRequest, fleet_ids),
)

_ok = st.just(api.Outcome.OK)
_ok_responses: st.SearchStrategy[api.Response] = st.one_of(
    st.builds(
        api.RegistrationStartResponse, _ok, nonces, opaque, fleet_ids, bundles, fleet_signatures
    ),
    st.builds(api.RegisterResponse, _ok),
    st.builds(
        api.LoginStartResponse,
        _ok,
        session_ids,
        opaque,
        ksf,
        remaining,
        fleet_ids,
        bundles,
        fleet_signatures,
    ),
    st.builds(
        api.LoginFinishResponse,
        _ok,
        st.binary(min_size=1, max_size=api.MAX_SEALED_KEY_LEN),
    ),
    st.builds(api.AttemptsRemainingResponse, _ok, remaining),
    st.builds(api.ChangeSecretResponse, _ok),
    st.builds(api.DeleteResponse, _ok),
    st.builds(api.StatusResponse, _ok, counts, counts, counts, st.booleans()),
    st.builds(api.RejoinResponse, _ok),
    st.builds(api.InstallBundleResponse, _ok, epochs),
    st.builds(api.DecommissionResponse, _ok, counts),
)
_RESPONSE_TYPES: list[type[api.Response]] = [
    api.RegistrationStartResponse,
    api.RegisterResponse,
    api.LoginStartResponse,
    api.LoginFinishResponse,
    api.AttemptsRemainingResponse,
    api.ChangeSecretResponse,
    api.DeleteResponse,
    api.StatusResponse,
    api.RejoinResponse,
    api.InstallBundleResponse,
    api.DecommissionResponse,
    api.ErrorResponse,
]
_refused_responses: st.SearchStrategy[api.Response] = st.builds(
    lambda cls, outcome: cls.refused(outcome), st.sampled_from(_RESPONSE_TYPES), refusals
)
responses = st.one_of(_ok_responses, _refused_responses)
_PARSERS: list[Callable[[bytes], object]] = [
    api.RegistrationUpload.from_bytes,
    *(cls.from_bytes for cls in api.RESPONSE_FOR),
    *(cls.from_bytes for cls in _RESPONSE_TYPES),
]


def _decode_any(data: bytes) -> None:
    """Run every decoder on ``data``; each may only succeed or raise DecodeError."""
    for decoder in (api.decode_request, api.decode_response):
        with contextlib.suppress(DecodeError):
            decoder(data)
    for parse in _PARSERS:
        with contextlib.suppress(DecodeError):
            parse(data)


# ------------------------------------------------------------------ round trips


@given(requests)
def test_every_request_round_trips(request: api.Request) -> None:
    data = request.to_bytes()
    assert api.decode_request(data) == request
    assert type(request).from_bytes(data) == request
    assert data[0] == api.API_VERSION


@given(responses)
def test_every_response_round_trips(response: api.Response) -> None:
    data = response.to_bytes()
    assert api.decode_response(data) == response
    assert type(response).from_bytes(data) == response


def test_every_request_type_has_one_response_type() -> None:
    assert set(_RESPONSE_TYPES) == {*api.RESPONSE_FOR.values(), api.ErrorResponse}
    assert len(api.RESPONSE_FOR) == 11
    assert len({cls.TAG for cls in api.RESPONSE_FOR}) == 11
    assert len(set(api.RESPONSE_FOR.values())) == 11
    assert len({cls.TAG for cls in _RESPONSE_TYPES}) == 12
    assert isinstance(api.refusal_for(None, api.Outcome.BAD_REQUEST), api.ErrorResponse)
    refused = api.refusal_for(api.StatusRequest(), api.Outcome.UNAVAILABLE)
    assert isinstance(refused, api.StatusResponse)
    assert refused.outcome is api.Outcome.UNAVAILABLE


def test_rejoin_request_encoding_is_strict_and_golden() -> None:
    fleet_id, node_id, signature = b"\x11" * 32, b"\x22" * 32, b"\x33" * 64
    request = api.RejoinRequest(fleet_id, node_id, 7, signature)
    data = request.to_bytes()
    assert data.hex() == "0409" + "11" * 32 + "22" * 32 + "0000000000000007" + "33" * 64
    assert api.RejoinResponse(api.Outcome.OK).to_bytes() == b"\x04\x89\x00"
    assert api.RejoinResponse.refused(api.Outcome.INVALID_LOGIN).to_bytes() == b"\x04\x89\x01"
    assert request.ticket_bytes() == (
        api.REJOIN_TICKET_LABEL + fleet_id + node_id + (7).to_bytes(8, "big")
    )
    assert api.rejoin_ticket_bytes(fleet_id, node_id, 7) == request.ticket_bytes()
    # incarnation 0 is never a rejoin (formation is 1); short ids or signatures do not parse
    with pytest.raises(DecodeError):
        api.RejoinRequest(fleet_id, node_id, 0, signature)
    with pytest.raises(DecodeError):
        api.decode_request(data[:2] + data[3:])
    with pytest.raises(DecodeError):
        api.decode_request(data[:-1])
    with pytest.raises(DecodeError):
        api.decode_request(data + b"\x00")
    with pytest.raises(DecodeError):
        api.decode_request(data[:66] + bytes(8) + data[74:])  # incarnation 0 on the wire
    with pytest.raises(DecodeError):
        api.RejoinRequest(fleet_id, node_id[:31], 7, signature)
    with pytest.raises(InvalidParameter):
        api.rejoin_ticket_bytes(fleet_id, node_id, 2**64)


def test_golden_encodings_do_not_drift() -> None:
    request = api.LoginFinishRequest(bytes(range(16)), b"\xaa" * 64)
    assert api.API_VERSION == 4
    assert request.to_bytes().hex() == "0404" + bytes(range(16)).hex() + "0040" + "aa" * 64
    response = api.AttemptsRemainingResponse(api.Outcome.OK, 7)
    assert response.to_bytes() == bytes([4, 0x85, 0, 7])
    assert api.LoginStartResponse.refused(api.Outcome.LOCKED_OUT).to_bytes() == b"\x04\x83\x02"
    upload = api.RegistrationUpload(b"\x01\x02", b"\x03", b"\x04\x05\x06")
    assert upload.to_bytes().hex() == "01" + "00020102" + "0103" + "0003040506"
    register = api.RegisterRequest(b"u", bytes(32), b"\x5a" * api.MIN_SEALED_UPLOAD_LEN, 3, True)
    assert register.to_bytes().hex() == (
        "0402" + "0175" + "00" * 32 + "003a" + "5a" * 58 + "03" + "01"
    )
    install = api.InstallBundleRequest(7, b"\xbb\xcc")
    assert install.to_bytes().hex() == "040a" + "0000000000000007" + "00000002" + "bbcc"
    installed = api.InstallBundleResponse(api.Outcome.OK, 7)
    assert installed.to_bytes().hex() == "048a00" + "0000000000000007"
    assert api.InstallBundleResponse.refused(api.Outcome.STALE_EPOCH).to_bytes() == b"\x04\x8a\x07"
    assert api.InstallBundleResponse.refused(api.Outcome.EPOCH_CONFLICT).to_bytes() == (
        b"\x04\x8a\x08"
    )
    start = api.RegistrationStartResponse(
        api.Outcome.OK, b"\x01" * 32, b"\x02", b"\x03" * 32, b"", b"\x04" * 64
    )
    assert start.to_bytes().hex() == (
        "048100" + "01" * 32 + "000102" + "03" * 32 + "00000000" + "04" * 64
    )
    login = api.LoginStartResponse(
        api.Outcome.OK, b"\x05" * 16, b"\x06", b"\x07", 9, b"\x03" * 32, b"B", b"\x04" * 64
    )
    assert login.to_bytes().hex() == (
        "048300" + "05" * 16 + "000106" + "0107" + "09" + "03" * 32 + "0000000142" + "04" * 64
    )


def test_decommission_messages_are_golden_and_strict() -> None:
    request = api.DecommissionRequest(b"\x11" * 32)
    assert request.to_bytes().hex() == "040b" + "11" * 32
    assert api.DecommissionResponse(api.Outcome.OK, 3).to_bytes().hex() == "048b00" + "00000003"
    refused = api.DecommissionResponse.refused(api.Outcome.BAD_REQUEST)
    assert refused.to_bytes() == b"\x04\x8b\x04"
    assert int(api.Outcome.DECOMMISSIONED) == 9
    gone = api.LoginStartResponse.refused(api.Outcome.DECOMMISSIONED)
    assert gone.to_bytes() == b"\x04\x83\x09"
    status = api.StatusResponse(api.Outcome.OK, 0, 0, 0, True)
    assert status.to_bytes().hex() == "048800" + "00000000" * 3 + "01"
    assert api.StatusResponse(api.Outcome.OK, 1, 2, 3).decommissioned is False
    for bad in (bytes(31), bytes(33), b""):
        with pytest.raises(DecodeError):
            api.DecommissionRequest(bad)
    with pytest.raises(DecodeError):
        api.decode_request(request.to_bytes()[:-1])
    with pytest.raises(DecodeError, match="trailing"):
        api.decode_request(request.to_bytes() + b"\x00")
    with pytest.raises(DecodeError, match="boolean"):  # the flag is 0 or 1
        api.decode_response(status.to_bytes()[:-1] + b"\x02")
    with pytest.raises(DecodeError, match="no payload"):
        api.StatusResponse(api.Outcome.DECOMMISSIONED, decommissioned=True)
    assert isinstance(api.refusal_for(request, api.Outcome.UNAVAILABLE), api.DecommissionResponse)


# ------------------------------------------------------------------ strict parsing


@given(st.binary(max_size=400))
def test_garbage_raises_only_decode_error(data: bytes) -> None:
    _decode_any(data)


@given(st.one_of(requests, responses), st.data())
def test_any_truncation_is_refused(
    message: api.Request | api.Response, data: st.DataObject
) -> None:
    encoded = message.to_bytes()
    cut = data.draw(st.integers(0, len(encoded) - 1))
    for decode in (api.decode_request, api.decode_response):
        with pytest.raises(DecodeError):
            decode(encoded[:cut])


@given(st.one_of(requests, responses), st.binary(min_size=1, max_size=8))
def test_trailing_bytes_are_refused(message: api.Request | api.Response, extra: bytes) -> None:
    encoded = message.to_bytes() + extra
    with pytest.raises(DecodeError):
        type(message).from_bytes(encoded)
    decode = api.decode_response if type(message) in _RESPONSE_TYPES else api.decode_request
    with pytest.raises(DecodeError):
        decode(encoded)


@given(st.one_of(requests, responses), st.data())
def test_any_single_byte_change_parses_or_raises_decode_error(
    message: api.Request | api.Response, data: st.DataObject
) -> None:
    encoded = bytearray(message.to_bytes())
    index = data.draw(st.integers(0, len(encoded) - 1))
    encoded[index] ^= data.draw(st.integers(1, 255))
    _decode_any(bytes(encoded))


@given(requests, st.integers(0, 255).filter(lambda v: v != api.API_VERSION))
def test_unknown_version_is_refused(request: api.Request, version: int) -> None:
    with pytest.raises(DecodeError, match="version"):
        api.decode_request(bytes([version]) + request.to_bytes()[1:])


def test_unknown_tags_and_outcomes_are_refused() -> None:
    with pytest.raises(DecodeError, match="unknown request type"):
        api.decode_request(b"\x04\x7f")
    with pytest.raises(DecodeError, match="unknown response type"):
        api.decode_response(b"\x04\x01\x00")
    with pytest.raises(DecodeError, match="unknown outcome"):
        api.decode_response(b"\x04\x82\x63")
    with pytest.raises(DecodeError, match="version"):  # the previous version is refused
        api.decode_response(b"\x03\x85\x00\x07")
    with pytest.raises(DecodeError, match="not a LoginStartRequest"):
        api.LoginStartRequest.from_bytes(api.StatusRequest().to_bytes())


_SEAL = b"s" * api.MIN_SEALED_UPLOAD_LEN


def test_field_bounds_are_enforced_on_both_sides() -> None:
    good = api.RegisterRequest(b"u", bytes(32), _SEAL)
    assert good.guess_limit == api.DEFAULT_GUESS_LIMIT
    for bad_limit in (0, 256, -1):
        with pytest.raises(DecodeError, match=r"1\.\.255"):
            api.RegisterRequest(b"u", bytes(32), _SEAL, guess_limit=bad_limit)
    encoded = bytearray(good.to_bytes())
    encoded[-2] = 0  # guess_limit byte
    with pytest.raises(DecodeError):
        api.decode_request(bytes(encoded))
    encoded[-2], encoded[-1] = 10, 2  # replace must be 0 or 1
    with pytest.raises(DecodeError, match="boolean"):
        api.decode_request(bytes(encoded))
    with pytest.raises(DecodeError):
        api.AttemptsRemainingRequest(b"")  # empty user id
    with pytest.raises(DecodeError):
        api.AttemptsRemainingRequest(b"x" * 256)
    for bad_seal in (_SEAL[:-1], b"s" * (api.MAX_SEALED_UPLOAD_LEN + 1)):
        with pytest.raises(DecodeError):
            api.RegisterRequest(b"u", bytes(32), bad_seal)
        with pytest.raises(DecodeError):
            api.ChangeSecretRequest(bytes(16), bytes(32), bad_seal, bytes(64))
    with pytest.raises(DecodeError):
        api.LoginFinishRequest(bytes(15), b"k")
    # an over-long length prefix is refused before reading the body
    with pytest.raises(DecodeError):
        api.decode_request(b"\x04\x05\x00")


def test_refusals_carry_no_payload() -> None:
    with pytest.raises(DecodeError, match="no payload"):
        api.LoginStartResponse(api.Outcome.LOCKED_OUT, session_id=bytes(16))
    with pytest.raises(DecodeError):
        api.LoginStartResponse(api.Outcome.OK)  # OK needs its payload
    with pytest.raises(DecodeError):
        api.ErrorResponse(api.Outcome.OK)
    # a refusal with payload bytes appended is refused
    with pytest.raises(DecodeError, match="trailing"):
        api.decode_response(b"\x04\x83\x02" + bytes(16))


def test_repr_shows_lengths_not_bytes() -> None:
    secret = b"wrapped-backup-key-material"
    text = repr(api.RegisterRequest(b"alice", bytes(32), secret * 3))
    assert "wrapped-backup" not in text
    assert "sealed_upload=<81 bytes>" in text
    assert "guess_limit=10" in text
    text = repr(api.RegistrationUpload(b"r" * 192, b"k", secret))
    assert "wrapped-backup" not in text
    assert "wrapped_key=<27 bytes>" in text
    assert "registration_record=<192 bytes>" in text
    assert "OK" in repr(api.LoginFinishResponse(api.Outcome.OK, secret))
    assert "wrapped-backup" not in repr(api.LoginFinishResponse(api.Outcome.OK, secret))


# ------------------------------------------------------------------ bundles and fleet ids


def test_bundle_fields_are_bounded_to_64_kib() -> None:
    biggest = b"b" * api.MAX_BUNDLE_LEN
    assert api.MAX_BUNDLE_LEN == 64 * 1024
    request = api.InstallBundleRequest(api.MAX_EPOCH, biggest)
    assert api.decode_request(request.to_bytes()) == request
    start = api.RegistrationStartResponse(
        api.Outcome.OK, bytes(32), b"r", bytes(32), biggest, bytes(64)
    )
    assert api.decode_response(start.to_bytes()) == start
    with pytest.raises(DecodeError):
        api.InstallBundleRequest(1, biggest + b"b")
    with pytest.raises(DecodeError):
        api.InstallBundleRequest(1, b"")  # nothing to install
    with pytest.raises(DecodeError):
        api.InstallBundleRequest(-1, b"x")
    with pytest.raises(DecodeError):
        api.InstallBundleRequest(api.MAX_EPOCH + 1, b"x")
    with pytest.raises(DecodeError):
        api.InstallBundleRequest(True, b"x")
    with pytest.raises(DecodeError):
        api.RegistrationStartResponse(
            api.Outcome.OK, bytes(32), b"r", bytes(32), biggest + b"b", bytes(64)
        )
    # the length prefix is checked before the body is read
    oversize = (
        bytes([api.API_VERSION, api.InstallBundleRequest.TAG])
        + (1).to_bytes(8, "big")
        + (api.MAX_BUNDLE_LEN + 1).to_bytes(4, "big")
    )
    with pytest.raises(DecodeError):
        api.decode_request(oversize)


def test_start_responses_need_a_fleet_id_and_signature_of_the_right_length() -> None:
    for fleet_id, signature in ((bytes(31), bytes(64)), (bytes(32), bytes(63)), (b"", b"")):
        with pytest.raises(DecodeError):
            api.RegistrationStartResponse(api.Outcome.OK, bytes(32), b"r", fleet_id, b"", signature)
        with pytest.raises(DecodeError):
            api.LoginStartResponse(
                api.Outcome.OK, bytes(16), b"k", b"p", 1, fleet_id, b"", signature
            )
    with pytest.raises(DecodeError, match="no payload"):  # a refusal carries none of them
        api.LoginStartResponse(api.Outcome.UNAVAILABLE, fleet_id=bytes(32))
    text = repr(
        api.LoginStartResponse(
            api.Outcome.OK, bytes(16), b"k", b"p", 1, bytes(32), b"bundle-bytes", bytes(64)
        )
    )
    assert "bundle=<12 bytes>" in text
    assert "bundle-bytes" not in text


# ------------------------------------------------------------------ registration upload


@given(uploads)
def test_registration_upload_round_trips(upload: api.RegistrationUpload) -> None:
    data = upload.to_bytes()
    assert data[0] == api.UPLOAD_VERSION
    assert api.RegistrationUpload.from_bytes(data) == upload
    assert api.MIN_UPLOAD_LEN <= len(data) <= api.MAX_UPLOAD_LEN


def test_registration_upload_length_bounds() -> None:
    smallest = api.RegistrationUpload(b"r", b"k", b"w")
    assert len(smallest.to_bytes()) == api.MIN_UPLOAD_LEN
    biggest = api.RegistrationUpload(
        b"r" * api.MAX_OPAQUE_MESSAGE_LEN,
        b"k" * api.MAX_KSF_PARAMS_LEN,
        b"w" * api.MAX_WRAPPED_KEY_LEN,
    )
    assert len(biggest.to_bytes()) == api.MAX_UPLOAD_LEN
    assert api.MAX_SEALED_UPLOAD_LEN == api.MAX_UPLOAD_LEN + api.FLEET_SEAL_OVERHEAD
    assert api.MIN_SEALED_UPLOAD_LEN == api.MIN_UPLOAD_LEN + api.FLEET_SEAL_OVERHEAD
    for fields in (
        (b"", b"k", b"w"),
        (b"r", b"", b"w"),
        (b"r", b"k", b""),
        (b"r" * (api.MAX_OPAQUE_MESSAGE_LEN + 1), b"k", b"w"),
        (b"r", b"k" * (api.MAX_KSF_PARAMS_LEN + 1), b"w"),
        (b"r", b"k", b"w" * (api.MAX_WRAPPED_KEY_LEN + 1)),
        (b"r", "k", b"w"),
    ):
        with pytest.raises(DecodeError, match="RegistrationUpload"):
            api.RegistrationUpload(*fields)


@given(uploads, st.data())
def test_registration_upload_parsing_is_strict(
    upload: api.RegistrationUpload, data: st.DataObject
) -> None:
    encoded = upload.to_bytes()
    cut = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(DecodeError):
        api.RegistrationUpload.from_bytes(encoded[:cut])
    with pytest.raises(DecodeError, match="trailing"):
        api.RegistrationUpload.from_bytes(encoded + data.draw(st.binary(min_size=1, max_size=8)))
    version = data.draw(st.integers(0, 255).filter(lambda v: v != api.UPLOAD_VERSION))
    with pytest.raises(DecodeError, match="version"):
        api.RegistrationUpload.from_bytes(bytes([version]) + encoded[1:])
    flipped = bytearray(encoded)
    flipped[data.draw(st.integers(0, len(encoded) - 1))] ^= data.draw(st.integers(1, 255))
    with contextlib.suppress(DecodeError):
        api.RegistrationUpload.from_bytes(bytes(flipped))


@given(user_ids, nonces, user_ids, nonces)
def test_upload_context_is_unambiguous(
    user_a: bytes, nonce_a: bytes, user_b: bytes, nonce_b: bytes
) -> None:
    same = (user_a, nonce_a) == (user_b, nonce_b)
    assert (api.upload_context(user_a, nonce_a) == api.upload_context(user_b, nonce_b)) is same


def test_upload_context_shape_and_bounds() -> None:
    context = api.upload_context(b"ab", bytes(32))
    assert context.endswith(b"\x02ab\x20" + bytes(32))
    # a user id that ends like a nonce cannot be confused with a shorter one
    assert api.upload_context(b"a" + bytes(1), bytes(32)) != api.upload_context(b"a", bytes(32))
    for user, nonce in (
        (b"", bytes(32)),
        (b"x" * (api.MAX_USER_ID_LEN + 1), bytes(32)),
        (b"u", bytes(31)),
        (b"u", bytes(33)),
    ):
        with pytest.raises(InvalidParameter):
            api.upload_context(user, nonce)


def test_change_secret_authenticated_bytes_cover_the_sealed_upload() -> None:
    request = api.ChangeSecretRequest(bytes(16), bytes(32), _SEAL, b"\xee" * 64)
    covered = request.authenticated_bytes()
    assert _SEAL in covered
    assert covered == request.to_bytes()[: -api.AUTHENTICATOR_LEN]
    other = api.ChangeSecretRequest(bytes(16), bytes(32), b"t" + _SEAL[1:], b"\xee" * 64)
    assert other.authenticated_bytes() != covered


# ------------------------------------------------------------------ primitives


@given(
    st.integers(0, 255),
    st.integers(0, 2**16 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**64 - 1),
    st.booleans(),
    st.binary(max_size=300),
)
def test_codec_primitives_round_trip(
    a: int, b: int, c: int, d: int, flag: bool, blob: bytes
) -> None:
    w = Writer().u8(a).u16(b).u32(c).u64(d).boolean(flag)
    w.var_bytes(blob, prefix=2, max_len=300).fixed(b"xyz", 3)
    r = Reader(w.getvalue())
    assert (r.u8(), r.u16(), r.u32(), r.u64(), r.boolean()) == (a, b, c, d, flag)
    assert r.var_bytes(prefix=2, max_len=300) == blob
    assert r.fixed(3) == b"xyz"
    r.finish()


def test_codec_primitives_are_strict() -> None:
    with pytest.raises(DecodeError, match="truncated"):
        Reader(b"\x00").u16()
    with pytest.raises(DecodeError, match="trailing"):
        Reader(b"\x00").finish()
    with pytest.raises(DecodeError, match="length"):
        Reader(b"\x05abcde").var_bytes(prefix=1, max_len=4)
    with pytest.raises(DecodeError, match="length"):
        Reader(b"\x00").var_bytes(prefix=1, max_len=4, min_len=1)
    with pytest.raises(DecodeError, match="truncated"):
        Reader(b"\x04abc").var_bytes(prefix=1, max_len=4)
