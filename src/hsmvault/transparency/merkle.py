"""RFC 6962 / RFC 9162 Merkle tree hashing with SHA-256 (pure: no I/O).

* leaf hash ``H(0x00 || data)``, node hash ``H(0x01 || left || right)``, empty tree ``H("")``;
* inclusion proofs: generation (RFC 9162 §2.1.3.1) and verification (§2.1.3.2);
* consistency proofs: generation (§2.1.4.1) and verification (§2.1.4.2).

Proof *generation* works on the list of leaf hashes (what an append-only log stores) and
raises :class:`InvalidParameter` on out-of-range arguments. Proof *verification* treats every
input as coming from outside and raises :class:`VerificationError` on any failure; it never
returns a bool. Edge cases follow the transparency-dev rules that the vectors encode:

* a leaf hash and every proof element must be exactly 32 bytes;
* consistency with ``size1 == 0`` is rejected (it proves nothing);
* ``size1 == size2`` requires an empty proof and equal roots.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from hsmvault.errors import InvalidParameter, VerificationError

__all__ = [
    "HASH_SIZE",
    "consistency_proof",
    "empty_root",
    "hash_leaf",
    "hash_node",
    "inclusion_proof",
    "root_from_inclusion_proof",
    "tree_hash",
    "tree_hash_from_leaf_hashes",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


def empty_root() -> bytes:
    """MTH({}) = SHA-256 of the empty string."""
    return hashlib.sha256(b"").digest()


def hash_leaf(data: bytes) -> bytes:
    """MTH({d}) = SHA-256(0x00 || d)."""
    return hashlib.sha256(_LEAF_PREFIX + bytes(data)).digest()


def hash_node(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    return hashlib.sha256(_NODE_PREFIX + bytes(left) + bytes(right)).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def _check_leaf_hashes(leaf_hashes: Sequence[bytes]) -> None:
    for h in leaf_hashes:
        if len(h) != HASH_SIZE:
            raise InvalidParameter("leaf hashes must be 32 bytes")


def _mth(leaf_hashes: Sequence[bytes], lo: int, hi: int) -> bytes:
    n = hi - lo
    if n == 0:
        return empty_root()
    if n == 1:
        return bytes(leaf_hashes[lo])
    k = _split(n)
    return hash_node(_mth(leaf_hashes, lo, lo + k), _mth(leaf_hashes, lo + k, hi))


def tree_hash_from_leaf_hashes(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH of a tree given its leaf hashes (each 32 bytes)."""
    _check_leaf_hashes(leaf_hashes)
    return _mth(leaf_hashes, 0, len(leaf_hashes))


def tree_hash(leaves: Sequence[bytes]) -> bytes:
    """MTH(D[n]) of a list of leaf *data* entries (RFC 9162 §2.1.1)."""
    return _mth([hash_leaf(d) for d in leaves], 0, len(leaves))


def _path(m: int, leaf_hashes: Sequence[bytes], lo: int, hi: int) -> list[bytes]:
    n = hi - lo
    if n == 1:
        return []
    k = _split(n)
    if m < k:
        return [*_path(m, leaf_hashes, lo, lo + k), _mth(leaf_hashes, lo + k, hi)]
    return [*_path(m - k, leaf_hashes, lo + k, hi), _mth(leaf_hashes, lo, lo + k)]


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """PATH(index, D[n]) (RFC 9162 §2.1.3.1), leaf-to-root order."""
    _check_leaf_hashes(leaf_hashes)
    if not 0 <= index < len(leaf_hashes):
        raise InvalidParameter("leaf index out of range")
    return _path(index, leaf_hashes, 0, len(leaf_hashes))


def _subproof(m: int, leaf_hashes: Sequence[bytes], lo: int, hi: int, b: bool) -> list[bytes]:
    n = hi - lo
    if m == n:
        return [] if b else [_mth(leaf_hashes, lo, hi)]
    k = _split(n)
    if m <= k:
        return [*_subproof(m, leaf_hashes, lo, lo + k, b), _mth(leaf_hashes, lo + k, hi)]
    return [*_subproof(m - k, leaf_hashes, lo + k, hi, False), _mth(leaf_hashes, lo, lo + k)]


def consistency_proof(leaf_hashes: Sequence[bytes], size1: int) -> list[bytes]:
    """PROOF(size1, D[n]) (RFC 9162 §2.1.4.1) from the first ``size1`` leaves to all ``n``.

    ``0 < size1 <= n``; for ``size1 == n`` the proof is empty.
    """
    _check_leaf_hashes(leaf_hashes)
    n = len(leaf_hashes)
    if not 0 < size1 <= n:
        raise InvalidParameter("consistency proof needs 0 < size1 <= tree size")
    return _subproof(size1, leaf_hashes, 0, n, True)


def _check_proof(proof: Sequence[bytes]) -> None:
    for p in proof:
        if len(p) != HASH_SIZE:
            raise VerificationError("proof element has the wrong length")


def _equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(bytes(a), bytes(b))


def root_from_inclusion_proof(
    leaf_index: int, tree_size: int, leaf_hash: bytes, proof: Sequence[bytes]
) -> bytes:
    """The root an inclusion proof commits to (steps 1-4 of RFC 9162 §2.1.3.2).

    Raises :class:`VerificationError` if the proof cannot belong to any tree of that size.
    """
    if tree_size < 0 or not 0 <= leaf_index < tree_size:
        raise VerificationError("leaf index out of range for tree size")
    if len(leaf_hash) != HASH_SIZE:
        raise VerificationError("leaf hash has the wrong length")
    _check_proof(proof)
    fn = leaf_index
    sn = tree_size - 1
    r = bytes(leaf_hash)
    for p in proof:
        if sn == 0:
            raise VerificationError("inclusion proof too long")
        if fn & 1 or fn == sn:
            r = hash_node(p, r)
            while fn != 0 and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = hash_node(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise VerificationError("inclusion proof too short")
    return r


def verify_inclusion(
    leaf_index: int, tree_size: int, leaf_hash: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """RFC 9162 §2.1.3.2; raises :class:`VerificationError` unless the proof is valid."""
    computed = root_from_inclusion_proof(leaf_index, tree_size, leaf_hash, proof)
    if not _equal(computed, root):
        raise VerificationError("inclusion proof does not match the root")


def _consistency_roots(size1: int, size2: int, path: Sequence[bytes]) -> tuple[bytes, bytes]:
    """Steps 3-6 of RFC 9162 §2.1.4.2 on the (possibly prefixed) path: (fr, sr)."""
    fn = size1 - 1
    sn = size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise VerificationError("consistency proof too long")
        if fn & 1 or fn == sn:
            fr = hash_node(c, fr)
            sr = hash_node(c, sr)
            while fn != 0 and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            sr = hash_node(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise VerificationError("consistency proof too short")
    return fr, sr


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """RFC 9162 §2.1.4.2; raises :class:`VerificationError` unless the proof is valid."""
    if size1 < 0 or size2 < size1:
        raise VerificationError("size2 is smaller than size1")
    if size1 == 0:
        raise VerificationError("consistency from an empty tree proves nothing")
    if size1 == size2:
        if proof:
            raise VerificationError("equal sizes need an empty proof")
        if not _equal(root1, root2):
            raise VerificationError("equal sizes but different roots")
        return
    if not proof:
        raise VerificationError("empty consistency proof")
    _check_proof(proof)
    path = [bytes(p) for p in proof]
    if size1 & (size1 - 1) == 0:
        # size1 is a power of two: the old root is itself a node of the new tree.
        if len(root1) != HASH_SIZE:
            raise VerificationError("first root has the wrong length")
        path.insert(0, bytes(root1))
    fr, sr = _consistency_roots(size1, size2, path)
    if not (_equal(fr, root1) & _equal(sr, root2)):
        raise VerificationError("consistency proof does not match the roots")
