"""RFC 6962 / RFC 9162 Merkle hashing and proofs against ``merkle_rfc6962.json``.

The vectors are transparency-dev/merkle's (see the vectors README): hasher vectors, leaf and
node hashes, roots for sizes 0..8, the proof tables and every inclusion/consistency probe.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsmvault.errors import InvalidParameter, VerificationError
from hsmvault.transparency.merkle import (
    consistency_proof,
    empty_root,
    hash_leaf,
    hash_node,
    inclusion_proof,
    tree_hash,
    tree_hash_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)
from tests.vectors import load_vectors, unhex

_V: Any = load_vectors("merkle_rfc6962.json")
_LEAVES = [unhex(x) for x in _V["leaf_inputs"]]
_LEAF_HASHES = [hash_leaf(x) for x in _LEAVES]
_ROOTS = {r["tree_size"]: unhex(r["root"]) for r in _V["roots"]}


def test_hasher_vectors() -> None:
    ran = 0
    for v in _V["hasher_vectors"]:
        fn = v["function"]
        if fn == "EmptyRoot()":
            got = empty_root()
        elif fn == "HashLeaf(leaf)":
            got = hash_leaf(unhex(v["input_hex"]))
        else:
            assert fn == "HashChildren(left, right)"
            got = hash_node(unhex(v["left_hex"]), unhex(v["right_hex"]))
        assert got == unhex(v["want"]), v["desc"]
        ran += 1
    assert ran == 4


def test_roots_sizes_0_to_8() -> None:
    assert len(_LEAVES) == 8
    assert sorted(_ROOTS) == list(range(9))
    for size, root in _ROOTS.items():
        assert tree_hash(_LEAVES[:size]) == root, size
        assert tree_hash_from_leaf_hashes(_LEAF_HASHES[:size]) == root, size


def test_node_hashes() -> None:
    ran = 0
    for level, row in enumerate(_V["node_hashes"]):
        width = 1 << level
        for index, want in enumerate(row):
            got = tree_hash(_LEAVES[index * width : (index + 1) * width])
            assert got == unhex(want), (level, index)
            ran += 1
    assert ran == 15


def test_inclusion_proof_table() -> None:
    ran = 0
    for v in _V["inclusion_proofs"]:
        index, size = v["leaf_index"], v["tree_size"]
        want = [unhex(p) for p in v["proof"]]
        assert inclusion_proof(_LEAF_HASHES[:size], index) == want, (index, size)
        verify_inclusion(index, size, _LEAF_HASHES[index], want, _ROOTS[size])
        ran += 1
    assert ran == 5


def test_consistency_proof_table() -> None:
    ran = 0
    for v in _V["consistency_proofs"]:
        size1, size2 = v["size1"], v["size2"]
        want = [unhex(p) for p in v["proof"]]
        assert consistency_proof(_LEAF_HASHES[:size2], size1) == want, (size1, size2)
        verify_consistency(size1, size2, want, _ROOTS[size1], _ROOTS[size2])
        ran += 1
    assert ran == 5


def _proof(v: Any) -> list[bytes]:
    return [unhex(p) for p in (v["proof"] or [])]


def test_inclusion_probes() -> None:
    outcomes = {True: 0, False: 0}
    for v in _V["probes"]["inclusion"]:
        args = (v["leafIdx"], v["treeSize"], unhex(v["leafHash"]), _proof(v), unhex(v["root"]))
        if v["wantErr"]:
            with pytest.raises(VerificationError):
                verify_inclusion(*args)
        else:
            verify_inclusion(*args)
        outcomes[v["wantErr"]] += 1
    assert outcomes == {True: 92, False: 6}


def test_consistency_probes() -> None:
    outcomes = {True: 0, False: 0}
    for v in _V["probes"]["consistency"]:
        args = (v["size1"], v["size2"], _proof(v), unhex(v["root1"]), unhex(v["root2"]))
        if v["wantErr"]:
            with pytest.raises(VerificationError):
                verify_consistency(*args)
        else:
            verify_consistency(*args)
        outcomes[v["wantErr"]] += 1
    assert outcomes == {True: 92, False: 6}


def test_generation_rejects_bad_arguments() -> None:
    with pytest.raises(InvalidParameter):
        inclusion_proof(_LEAF_HASHES[:3], 3)
    with pytest.raises(InvalidParameter):
        inclusion_proof([], 0)
    with pytest.raises(InvalidParameter):
        consistency_proof(_LEAF_HASHES[:3], 0)
    with pytest.raises(InvalidParameter):
        consistency_proof(_LEAF_HASHES[:3], 4)
    with pytest.raises(InvalidParameter):
        tree_hash_from_leaf_hashes([b"short"])


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


_trees = st.lists(st.binary(max_size=8), min_size=1, max_size=40)


@settings(max_examples=150, deadline=None)
@given(leaves=_trees, data=st.data())
def test_random_inclusion_proofs_verify_and_bit_flips_fail(leaves: list[bytes], data: Any) -> None:
    hashes = [hash_leaf(x) for x in leaves]
    n = len(hashes)
    index = data.draw(st.integers(0, n - 1))
    proof = inclusion_proof(hashes, index)
    root = tree_hash_from_leaf_hashes(hashes)
    verify_inclusion(index, n, hashes[index], proof, root)
    bit = data.draw(st.integers(0, 255))
    with pytest.raises(VerificationError):
        verify_inclusion(index, n, hashes[index], proof, _flip(root, bit))
    with pytest.raises(VerificationError):
        verify_inclusion(index, n, _flip(hashes[index], bit), proof, root)
    if proof:
        k = data.draw(st.integers(0, len(proof) - 1))
        bad = [*proof[:k], _flip(proof[k], bit), *proof[k + 1 :]]
        with pytest.raises(VerificationError):
            verify_inclusion(index, n, hashes[index], bad, root)


@settings(max_examples=150, deadline=None)
@given(leaves=_trees, data=st.data())
def test_random_consistency_proofs_verify_and_bit_flips_fail(
    leaves: list[bytes], data: Any
) -> None:
    hashes = [hash_leaf(x) for x in leaves]
    n = len(hashes)
    size1 = data.draw(st.integers(1, n))
    proof = consistency_proof(hashes, size1)
    root1 = tree_hash_from_leaf_hashes(hashes[:size1])
    root2 = tree_hash_from_leaf_hashes(hashes)
    verify_consistency(size1, n, proof, root1, root2)
    bit = data.draw(st.integers(0, 255))
    with pytest.raises(VerificationError):
        verify_consistency(size1, n, proof, _flip(root1, bit), root2)
    with pytest.raises(VerificationError):
        verify_consistency(size1, n, proof, root1, _flip(root2, bit))
    if proof:
        k = data.draw(st.integers(0, len(proof) - 1))
        bad = [*proof[:k], _flip(proof[k], bit), *proof[k + 1 :]]
        with pytest.raises(VerificationError):
            verify_consistency(size1, n, bad, root1, root2)


@settings(max_examples=100, deadline=None)
@given(leaves=_trees, data=st.data())
def test_inclusion_proof_for_another_index_or_size_fails(leaves: list[bytes], data: Any) -> None:
    hashes = [hash_leaf(x) for x in leaves]
    n = len(hashes)
    index = data.draw(st.integers(0, n - 1))
    proof = inclusion_proof(hashes, index)
    root = tree_hash_from_leaf_hashes(hashes)
    other = data.draw(st.integers(0, n + 2).filter(lambda i: i != index))
    if hashes[other % n] != hashes[index]:
        with pytest.raises(VerificationError):
            verify_inclusion(other, n, hashes[index], proof, root)
    with pytest.raises(VerificationError):
        verify_inclusion(index, n + 1 + n, hashes[index], proof, root)
