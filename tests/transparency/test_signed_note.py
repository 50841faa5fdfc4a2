"""Signed notes and checkpoints against ``signed_note.json``.

Go sumdb note vectors (golang.org/x/mod/sumdb/note): keys, byte-exact re-signing, every
``open_cases`` outcome, bad verifier keys and the substring/mutation rule; the Go tlog tree
note and the C2SP examples (checkpoint, cosigned checkpoint: parse only, no key published).
"""

from __future__ import annotations

import base64
import contextlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsmvault.errors import DecodeError, InvalidParameter, VerificationError
from hsmvault.transparency.checkpoint import Checkpoint, parse_checkpoint
from hsmvault.transparency.merkle import hash_leaf
from hsmvault.transparency.signed_note import (
    NoteSignature,
    Signer,
    Verifier,
    format_note,
    key_id,
    open_note,
    parse_note,
    sign_note,
)
from tests.vectors import load_vectors, unhex

_V: Any = load_vectors("signed_note.json")
_GO: Any = _V["go_sumdb_note"]
_KEYS = {k["name"]: k for k in _GO["keys"]}
_VERIFIERS = {name: Verifier.from_vkey(k["verifier_key"]) for name, k in _KEYS.items()}
_SIGNERS = {name: Signer.from_skey(k["signer_key"]) for name, k in _KEYS.items()}


def test_go_keys() -> None:
    assert sorted(_KEYS) == ["EnochRoot", "PeterNeumann"]
    for name, k in _KEYS.items():
        v, s = _VERIFIERS[name], _SIGNERS[name]
        assert k["algorithm"] == 1
        assert v.name == s.name == name
        assert v.public_key == s.public_key == unhex(k["ed25519_public_key"])
        assert key_id(name, v.public_key).hex() == k["key_id"] == v.key_id.hex()
        assert Signer(name, unhex(k["ed25519_seed"])).public_key == v.public_key
        assert v.to_vkey() == k["verifier_key"]
        assert s.to_skey() == k["signer_key"]
        assert s.verifier() == v
        assert k["signer_key"] not in repr(s)


def test_go_sign_byte_for_byte() -> None:
    text = _GO["text"]
    peter, enoch = _SIGNERS["PeterNeumann"], _SIGNERS["EnochRoot"]
    assert sign_note(text, [peter]) == _GO["signed_note"].encode()
    assert sign_note(text, [peter, enoch]) == _GO["signed_note_two_signatures"].encode()
    ran = 0
    for sig in _GO["signatures"]:
        signer = _SIGNERS[sig["name"]]
        raw = signer.sign(text.encode())
        assert raw.hex() == sig["signature"]
        assert base64.b64encode(signer.key_id + raw).decode() == sig["base64"]
        assert signer.key_id.hex() == sig["key_id"]
        assert NoteSignature(sig["name"], signer.key_id, raw).line() == sig["line"]
        ran += 1
    assert ran == 2


def _note_bytes(case: Any) -> bytes:
    if case["note_utf8"] is not None:
        data = str(case["note_utf8"]).encode()
        if case.get("note_hex") is not None:
            assert data == unhex(case["note_hex"])
        return data
    if case.get("note_hex") is not None:
        return unhex(str(case["note_hex"]))
    assert case["note_construction"] == 'text + "\\n" + 101 * peter signature line'
    text, line = str(_GO["text"]), str(_GO["signatures"][0]["line"])
    return (text + "\n" + 101 * line).encode()


def test_go_open_cases() -> None:
    outcomes = {"ok": 0, "error": 0}
    for case in _GO["open_cases"]:
        data = _note_bytes(case)
        verifiers = [_VERIFIERS[n] for n in case["verifiers"]]
        if case["expect"] == "ok":
            opened = open_note(data, verifiers)
            assert opened.text == _GO["text"]
            assert [s.name for s in opened.verified] == case["verified_sigs"], case["desc"]
            assert [s.name for s in opened.unverified] == case["unverified_sigs"], case["desc"]
        else:
            assert case["expect"] == "error"
            want = DecodeError if case["error"] == "malformed note" else VerificationError
            with pytest.raises(want) as info:
                open_note(data, verifiers)
            assert type(info.value) is want, case["desc"]
        outcomes[case["expect"]] += 1
    assert outcomes == {"ok": 3, "error": 10}


def test_bad_verifier_keys() -> None:
    ran = 0
    for bad in _GO["bad_verifier_keys"]:
        with pytest.raises(DecodeError):
            Verifier.from_vkey(bad["key"])
        ran += 1
    assert ran == 2


def _mutants(key: str) -> list[str]:
    raw = key.encode()
    subs = [key[i:j] for i in range(len(key)) for j in range(i + 1, len(key) + 1)]
    subs = [s for s in subs if s != key]
    plus_one = []
    for i in range(len(raw)):
        b = bytearray(raw)
        b[i] = (b[i] + 1) % 256
        plus_one.append(bytes(b).decode("utf-8", errors="replace"))
    return subs + plus_one


@pytest.mark.parametrize("name", ["PeterNeumann", "EnochRoot"])
def test_verifier_and_signer_key_substrings_and_mutations_rejected(name: str) -> None:
    k = _KEYS[name]
    count = 0
    for m in _mutants(k["verifier_key"]):
        with pytest.raises(DecodeError):
            Verifier.from_vkey(m)
        count += 1
    for m in _mutants(k["signer_key"]):
        with pytest.raises(DecodeError):
            Signer.from_skey(m)
        count += 1
    assert count > 2000


def test_c2sp_signed_note_example() -> None:
    ex = _V["c2sp"]["signed_note_example"]
    v = Verifier.from_vkey(ex["verifier_key"])
    assert v.name == ex["name"]
    assert (
        v.key_id.hex() == ex["key_id"] == key_id(ex["name"], unhex(ex["ed25519_public_key"])).hex()
    )
    assert v.to_vkey() == ex["verifier_key"]
    opened = open_note(ex["signed_note"].encode(), [v])
    assert opened.text == ex["text"]
    assert [s.signature.hex() for s in opened.verified] == [ex["signatures"][0]["signature"]]


@pytest.mark.parametrize(
    "section",
    [
        "signed_note_example",
        "signed_note_intro_example",
        "checkpoint_example",
        "cosignature_example",
    ],
)
def test_c2sp_notes_parse_and_reformat(section: str) -> None:
    ex = _V["c2sp"][section]
    data = ex["signed_note"].encode()
    note = parse_note(data)
    assert note.text == ex["text"]
    assert len(note.signatures) == len(ex["signatures"])
    for got, want in zip(note.signatures, ex["signatures"], strict=True):
        assert got.name == want["name"]
        assert got.key_id.hex() == want["key_id"]
        assert got.line() == want["line"]
    assert format_note(note.text, note.signatures) == data
    with pytest.raises(VerificationError):
        open_note(data, [_VERIFIERS["PeterNeumann"]])


def test_c2sp_cosignature_layout() -> None:
    ex = _V["c2sp"]["cosignature_example"]
    cosig = parse_note(ex["signed_note"].encode()).signatures[1]
    want = ex["signatures"][1]
    assert int.from_bytes(cosig.signature[:8], "big") == want["cosignature_timestamp"]
    assert cosig.signature[8:].hex() == want["ed25519_signature"]
    assert f"time {want['cosignature_timestamp']}\n" in ex["ed25519_cosigned_message_example"]


def test_c2sp_checkpoint_example() -> None:
    ex = _V["c2sp"]["checkpoint_example"]
    cp = parse_checkpoint(ex["text"], origin=ex["origin"])
    assert cp == Checkpoint(ex["origin"], ex["tree_size"], unhex(ex["root_hash_hex"]))
    assert cp.encode() == ex["text"]
    assert base64.b64encode(cp.root_hash).decode() == ex["root_hash_base64"]


def test_go_tlog_tree_note() -> None:
    t = _V["go_sumdb_tlog_tree_note"]
    origin = "go.sum database tree"
    cp = parse_checkpoint(t["text"], origin=origin)
    assert cp.tree_size == t["tree_size"]
    assert cp.root_hash == unhex(t["root_hash_hex"]) == hash_leaf(b"hello world")
    assert cp.encode() == t["text"]
    assert Checkpoint(origin, t["tree_size"], cp.root_hash).encode() == t["text"]
    ran = 0
    for bad in t["bad_texts"]:
        with pytest.raises(DecodeError):
            parse_checkpoint(bad, origin=origin)
        ran += 1
    assert ran == 3


@pytest.mark.parametrize(
    "text",
    [
        "o\n12\n",
        "o\n012\nTszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBb0=\n",
        "o\n+12\nTszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBb0=\n",
        "o\n18446744073709551616\nTszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBb0=\n",
        "o\n12\nTszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBb0=",
        "o\n12\nTszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBb0=\n\n",
        "o\n12\nTszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBb1=\n",
        "\n12\nTszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBb0=\n",
        "o\r\n12\nTszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBb0=\n",
        "o\n\u0661\u0662\nTszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBb0=\n",
    ],
)
def test_checkpoint_rejects_malformed(text: str) -> None:
    with pytest.raises(DecodeError):
        parse_checkpoint(text)


def test_checkpoint_extensions_round_trip() -> None:
    cp = Checkpoint("example.com/log", 0, bytes(32), ("ext one", "ext two"))
    assert parse_checkpoint(cp.encode()) == cp
    with pytest.raises(InvalidParameter):
        Checkpoint("example.com/log", -1, bytes(32))
    with pytest.raises(InvalidParameter):
        Checkpoint("example.com/log", 1, bytes(31))


def test_sign_rejects_bad_text_and_names() -> None:
    peter = _SIGNERS["PeterNeumann"]
    for text in ["", "no newline", "tab\tinside\n"]:
        with pytest.raises(InvalidParameter):
            sign_note(text, [peter])
    with pytest.raises(InvalidParameter):
        sign_note("x\n", [])
    for name in ["", "a b", "a+b"]:
        with pytest.raises(InvalidParameter):
            Signer(name, bytes(32))


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300))
def test_parsers_raise_only_decode_error_on_garbage_bytes(data: bytes) -> None:
    for parse in (parse_note, lambda d: open_note(d, _VERIFIERS.values())):
        try:
            parse(data)
        except DecodeError:
            pass
        except VerificationError:
            assert parse is not parse_note


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=200))
def test_text_parsers_raise_only_decode_error_on_garbage(text: str) -> None:
    for parse in (Verifier.from_vkey, Signer.from_skey, parse_checkpoint):
        with contextlib.suppress(DecodeError):
            parse(text)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_signed_note_mutations_never_verify(data: Any) -> None:
    note = bytearray(_GO["signed_note"].encode())
    i = data.draw(st.integers(0, len(note) - 1))
    note[i] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises((DecodeError, VerificationError)):
        open_note(bytes(note), [_VERIFIERS["PeterNeumann"]])
