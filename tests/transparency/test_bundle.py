"""The validation bundle: canonical encoding, strict parsing, the signed messages."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hsmvault.errors import DecodeError, InvalidParameter
from hsmvault.transparency import merkle
from hsmvault.transparency.artifact import canonical_json
from hsmvault.transparency.bundle import (
    MAX_BUNDLE_LEN,
    MAX_PROOF_LEN,
    InclusionEvidence,
    ValidationBundle,
    witness_key_id,
)
from hsmvault.transparency.checkpoint import parse_checkpoint
from hsmvault.transparency.errors import BundleFormatError
from hsmvault.transparency.log_entry import decode_log_leaf
from hsmvault.transparency.operator_messages import COUNTERSIGNATURE_CONTEXT
from hsmvault.transparency.plexi import decode_signature_message
from hsmvault.transparency.signed_note import parse_note, sign_note
from tests.transparency.bundle_kit import (
    NAMESPACE,
    T0,
    TestFleet,
    TestOperator,
    TestWitness,
    artifact,
    publish,
)

_A = TestFleet("a")


def _bundle(inclusion: bool = True) -> tuple[ValidationBundle, TestWitness, TestOperator]:
    witness, operator = TestWitness(), TestOperator()
    for epoch in range(3):  # a few earlier leaves so the proof is not empty
        witness.sign("other/ns", epoch, hashlib.sha256(bytes([epoch])).digest(), T0 * 1000)
    art = artifact(5, (_A.entry(),))
    return publish(art, witness, operator, inclusion=inclusion), witness, operator


def test_round_trip_with_and_without_inclusion() -> None:
    for inclusion in (True, False):
        bundle, _, _ = _bundle(inclusion)
        data = bundle.to_bytes()
        again = ValidationBundle.from_bytes(data)
        assert again == bundle
        assert again.to_bytes() == data
        obj = json.loads(data)
        assert set(obj) == {"version", "artifact", "witness", "operator", "inclusion"}
        assert (obj["inclusion"] is None) is (not inclusion)
        assert base64.b64decode(obj["artifact"]) == bundle.artifact
        assert obj["witness"]["digest"] == hashlib.sha256(bundle.artifact).hexdigest()


def test_signed_messages() -> None:
    bundle, witness, operator = _bundle()
    message = bundle.signature_message()
    assert message.namespace == NAMESPACE
    assert message.epoch == 5
    assert message.timestamp == T0 * 1000
    assert message.digest == bundle.artifact_digest()
    encoded = message.encode()
    assert decode_signature_message(encoded) == message
    witness.keys["k1"].public_key().verify(bundle.witness.signature, encoded)
    counter = bundle.countersignature_message()
    assert counter == COUNTERSIGNATURE_CONTEXT + bundle.witness.signature
    operator.key.public_key().verify(bundle.operator_signature, counter)
    leaf = bundle.log_leaf()
    assert decode_log_leaf(leaf) == (encoded, bundle.witness.signature)
    evidence = bundle.inclusion
    assert evidence is not None
    assert evidence.leaf_index == 3
    assert evidence.tree_size == 4
    body = evidence.checkpoint_body()
    merkle.verify_inclusion(
        evidence.leaf_index,
        evidence.tree_size,
        merkle.hash_leaf(leaf),
        evidence.proof,
        body.root_hash,
    )
    assert bundle.parse_artifact().epoch == 5


def test_witness_key_id() -> None:
    key = TestWitness().public_key()
    assert witness_key_id(key) == hashlib.sha256(key).digest()
    for bad in (key[:31], key + b"\0", bytearray(key)):
        with pytest.raises(InvalidParameter):
            witness_key_id(bad)  # type: ignore[arg-type]


# --- strict parsing ----------------------------------------------------------------


def _refused(edit: Callable[[dict[str, Any]], None]) -> None:
    bundle, _, _ = _bundle()
    obj = copy.deepcopy(bundle.to_dict())
    edit(obj)
    with pytest.raises(BundleFormatError):
        ValidationBundle.from_bytes(canonical_json(obj))


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


_SIG = _b64(bytes(64))


@pytest.mark.parametrize(
    "edit",
    [
        lambda o: o.update(version=2),
        lambda o: o.update(version=True),
        lambda o: o.pop("inclusion"),
        lambda o: o.update(extra=None),
        lambda o: o.update(artifact=""),
        lambda o: o.update(artifact=_b64(b"x" * (32 * 1024 + 1))),
        lambda o: o.update(artifact=o["artifact"] + "="),  # extra padding
        lambda o: o["witness"].update(signature=o["witness"]["signature"].rstrip("=")),
        lambda o: o.update(artifact=o["artifact"] + "\n"),
        lambda o: o.update(artifact="-_" + o["artifact"][2:]),  # urlsafe alphabet
        lambda o: o.update(artifact=7),
        lambda o: o["witness"].update(ciphersuite=2),
        lambda o: o["witness"].update(ciphersuite=True),
        lambda o: o["witness"].update(namespace="a b"),
        lambda o: o["witness"].update(namespace=None),
        lambda o: o["witness"].update(timestamp=-1),
        lambda o: o["witness"].update(timestamp=1 << 64),
        lambda o: o["witness"].update(timestamp=False),
        lambda o: o["witness"].update(epoch="5"),
        lambda o: o["witness"].update(digest=o["witness"]["digest"].upper()),
        lambda o: o["witness"].update(digest=o["witness"]["digest"][:-2]),
        lambda o: o["witness"].update(key_id=_b64(bytes(32))),
        lambda o: o["witness"].update(signature=_b64(bytes(63))),
        lambda o: o["witness"].update(signature=_b64(bytes(65))),
        lambda o: o["witness"].update(signature=o["witness"]["signature"].replace("=", "A")),
        lambda o: o["witness"].pop("key_id"),
        lambda o: o["witness"].update(extra=1),
        lambda o: o.update(witness=[]),
        lambda o: o.update(operator={"signature": _SIG, "key": "x"}),
        lambda o: o.update(operator={}),
        lambda o: o.update(operator={"signature": _b64(bytes(32))}),
        lambda o: o.update(operator=_SIG),
        lambda o: o.update(inclusion=[]),
        lambda o: o["inclusion"].update(leaf_index=o["inclusion"]["tree_size"]),
        lambda o: o["inclusion"].update(tree_size=0, leaf_index=0),
        lambda o: o["inclusion"].update(leaf_index=-1),
        lambda o: o["inclusion"].update(proof=[_b64(bytes(32))] * (MAX_PROOF_LEN + 1)),
        lambda o: o["inclusion"].update(proof=[_b64(bytes(31))]),
        lambda o: o["inclusion"].update(proof=_b64(bytes(32))),
        lambda o: o["inclusion"].update(proof=[1]),
        lambda o: o["inclusion"].update(checkpoint=""),
        lambda o: o["inclusion"].update(checkpoint=_b64(b"not a note")),
        lambda o: o["inclusion"].update(checkpoint=_b64(b"x" * 4097)),
        lambda o: o["inclusion"].update(
            checkpoint=_b64(b"origin\nnot-a-size\nAAAA\n\n\xe2\x80\x94 k AAAAAAAA\n")
        ),
        lambda o: o["inclusion"].pop("proof"),
    ],
)
def test_bad_field_refused(edit: Callable[[dict[str, Any]], None]) -> None:
    _refused(edit)


def test_bad_base64_padding_bits_refused() -> None:
    bundle, _, _ = _bundle()
    sig = bundle.to_dict()["witness"]["signature"]
    assert sig.endswith("==")
    # 64 bytes -> 88 chars ending "x==": a non-zero low bit in x decodes to the same bytes.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = alphabet[alphabet.index(sig[-3]) ^ 1]
    _refused(lambda o: o["witness"].update(signature=sig[:-3] + last + "=="))


def test_non_canonical_bytes_refused() -> None:
    bundle, _, _ = _bundle()
    data = bundle.to_bytes()
    for bad in (
        data + b" ",
        data.replace(b":", b": ", 1),
        b"",
        b"{}",
        data.replace(b'"version":1', b'"version":1.0'),
        b"x" * (MAX_BUNDLE_LEN + 1),
    ):
        with pytest.raises(BundleFormatError):
            ValidationBundle.from_bytes(bad)
    with pytest.raises(BundleFormatError):
        ValidationBundle.from_bytes(data.decode())  # type: ignore[arg-type]


def test_construction_checks() -> None:
    bundle, _, _ = _bundle()
    ws = bundle.witness
    ev = bundle.inclusion
    assert ev is not None
    for make in (
        lambda: replace(ws, ciphersuite=2),
        lambda: replace(ws, digest=b"x"),
        lambda: replace(ws, key_id=b"x" * 31),
        lambda: replace(ws, signature=bytes(63)),
        lambda: replace(ws, namespace=""),
        lambda: replace(ws, timestamp=-1),
        lambda: replace(ev, leaf_index=ev.tree_size),
        lambda: replace(ev, proof=(b"x",)),
        lambda: replace(ev, proof=(bytes(32),) * (MAX_PROOF_LEN + 1)),
        lambda: replace(ev, checkpoint=b"garbage"),
        lambda: replace(bundle, artifact=b""),
        lambda: replace(bundle, operator_signature=bytes(10)),
        lambda: replace(bundle, witness=None),  # type: ignore[arg-type]
    ):
        with pytest.raises(InvalidParameter):
            make()


def test_oversized_bundle_cannot_be_encoded() -> None:
    bundle, _, _ = _bundle()
    big = replace(bundle, artifact=b"x" * (32 * 1024))
    big_ev = replace(
        big,
        inclusion=InclusionEvidence(
            leaf_index=0,
            tree_size=1,
            proof=(bytes(32),) * MAX_PROOF_LEN,
            checkpoint=_note_of_size(4000),
        ),
    )
    assert len(big_ev.to_bytes()) <= MAX_BUNDLE_LEN  # the caps fit the bundle limit
    assert ValidationBundle.from_bytes(big_ev.to_bytes()) == big_ev


def _note_of_size(size: int) -> bytes:
    witness = TestWitness()
    witness.log.append(b"leaf")
    note = witness.log.checkpoint_note()
    body = parse_note(note).text
    cp = parse_checkpoint(body)
    pad = size - len(note) - 1
    ext_body = body + "x" * pad + "\n"
    out = sign_note(ext_body, [witness.log_signer])
    assert parse_checkpoint(parse_note(out).text).root_hash == cp.root_hash
    return out


# --- fuzzing ---------------------------------------------------------------------------


@given(st.binary(max_size=800))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    with pytest.raises(BundleFormatError):
        ValidationBundle.from_bytes(data)


_VALID = _bundle()[0]
_VALID_BYTES = _VALID.to_bytes()


@given(st.data())
def test_fuzz_single_byte_mutation(data: st.DataObject) -> None:
    pos = data.draw(st.integers(0, len(_VALID_BYTES) - 1))
    value = data.draw(st.integers(0, 255).filter(lambda b: b != _VALID_BYTES[pos]))
    mutated = _VALID_BYTES[:pos] + bytes([value]) + _VALID_BYTES[pos + 1 :]
    try:
        parsed = ValidationBundle.from_bytes(mutated)
    except BundleFormatError:
        return
    assert parsed.to_bytes() == mutated
    assert parsed != _VALID


@given(
    leaf_index=st.integers(-2, 70),
    tree_size=st.integers(-2, 70),
    proof=st.lists(st.binary(max_size=40).map(_b64) | st.integers() | st.none(), max_size=70),
    checkpoint=st.binary(max_size=300).map(_b64) | st.text(max_size=40),
)
def test_fuzz_inclusion_evidence(
    leaf_index: int, tree_size: int, proof: list[object], checkpoint: str
) -> None:
    obj = {
        "leaf_index": leaf_index,
        "tree_size": tree_size,
        "proof": proof,
        "checkpoint": checkpoint,
    }
    try:
        ev = InclusionEvidence.from_dict(obj)
    except BundleFormatError:
        return
    assert 0 <= ev.leaf_index < ev.tree_size
    assert all(len(p) == 32 for p in ev.proof)


@given(st.binary(max_size=300))
def test_fuzz_checkpoint_note_parsing(data: bytes) -> None:
    try:
        note = parse_note(data)
        parse_checkpoint(note.text)
    except DecodeError:
        return


@given(st.data())
def test_fuzz_checkpoint_note_mutation(data: st.DataObject) -> None:
    evidence = _VALID.inclusion
    assert evidence is not None
    note = evidence.checkpoint
    pos = data.draw(st.integers(0, len(note) - 1))
    value = data.draw(st.integers(0, 255).filter(lambda b: b != note[pos]))
    mutated = note[:pos] + bytes([value]) + note[pos + 1 :]
    try:
        replace(evidence, checkpoint=mutated)
    except InvalidParameter:
        return
