"""Oblivious pseudorandom functions over ristretto255-SHA512 (RFC 9497).

All three modes of RFC 9497 §3.3 are here:

* base mode (``Mode.OPRF``, §3.3.1), which OPAQUE uses: :func:`blind`,
  :func:`blind_evaluate`, :func:`finalize`, :func:`evaluate`;
* verifiable mode (``Mode.VOPRF``, §3.3.2): the server proves with a DLEQ proof (§2.2)
  that it evaluated with the key behind its public key ``pkS``: :func:`voprf_blind`,
  :func:`voprf_blind_evaluate`, :func:`voprf_finalize`, :func:`voprf_evaluate`;
* partially-oblivious mode (``Mode.POPRF``, §3.3.3): a public ``info`` tweaks the key,
  and the proof is made under the tweaked key: :func:`poprf_blind`,
  :func:`poprf_blind_evaluate`, :func:`poprf_finalize`, :func:`poprf_evaluate`.

VOPRF and POPRF also have ``*_batch`` variants that cover several blinded elements with
one proof (§2.2, ``ComputeComposites``). Proofs are :class:`Proof` values.

The functions keep the RFC's names in snake_case and take every random value as an
argument (or an injectable ``rng``) so that the RFC 9497 Appendix A vectors drive them
byte for byte. All group arithmetic goes through :class:`Scalar` / :class:`Element`
(libsodium); nothing here does arithmetic on Python integers.

Errors: malformed elements, scalars and proofs raise :class:`~hsmvault.errors.DecodeError`;
RFC ``InvalidInputError`` / ``DeriveKeyPairError`` / ``InverseError`` (and caller mistakes
such as batches of mismatched length) raise :class:`~hsmvault.errors.InvalidParameter`;
RFC ``VerifyError`` raises :class:`~hsmvault.errors.VerificationError`. Verification never
returns a bool.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from hsmvault.crypto.hash_to_curve import hash_to_ristretto255, hash_to_scalar_bytes
from hsmvault.crypto.ristretto255 import (
    SCALAR_LEN,
    Element,
    RandomBytes,
    Scalar,
    base_mult,
)
from hsmvault.errors import DecodeError, InvalidParameter, VerificationError

SUITE_ID = b"ristretto255-SHA512"
#: Sizes for ristretto255-SHA512 (RFC 9497 §4.1): Ne = Ns = 32, Nh = 64.
NE = 32
NS = 32
NH = 64


class Mode(enum.IntEnum):
    """RFC 9497 §3.1 protocol modes."""

    OPRF = 0x00
    VOPRF = 0x01
    POPRF = 0x02


def i2osp(value: int, length: int) -> bytes:
    """RFC 8017 I2OSP: ``value`` as ``length`` big-endian bytes."""
    if value < 0 or value >= 1 << (8 * length):
        raise InvalidParameter("integer too large for its length prefix")
    return value.to_bytes(length, "big")


def context_string(mode: Mode) -> bytes:
    """RFC 9497 §3.1 ``contextString`` for this suite."""
    return b"OPRFV1-" + i2osp(mode, 1) + b"-" + SUITE_ID


def hash_to_group(data: bytes, mode: Mode) -> Element:
    """RFC 9497 §4.1 ``HashToGroup``: DST ``"HashToGroup-" || contextString``."""
    return hash_to_ristretto255(data, b"HashToGroup-" + context_string(mode))


def hash_to_scalar(data: bytes, mode: Mode, dst: bytes | None = None) -> Scalar:
    """RFC 9497 ``HashToScalar``; the DST defaults to ``"HashToScalar-" || contextString``."""
    if dst is None:
        dst = b"HashToScalar-" + context_string(mode)
    return Scalar.from_uniform_bytes(hash_to_scalar_bytes(data, dst))


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A server OPRF key pair. ``sk`` is secret (its ``repr`` is redacted)."""

    sk: Scalar
    pk: Element


def derive_key_pair(seed: bytes, info: bytes, mode: Mode = Mode.OPRF) -> KeyPair:
    """RFC 9497 §3.2.1 ``DeriveKeyPair``: a deterministic key pair from a 32-byte seed."""
    if len(seed) != NS:
        raise InvalidParameter("DeriveKeyPair seed must be 32 bytes")
    derive_input = seed + i2osp(len(info), 2) + info
    dst = b"DeriveKeyPair" + context_string(mode)
    for counter in range(256):
        sk = hash_to_scalar(derive_input + i2osp(counter, 1), mode, dst)
        if not sk.is_zero():
            return KeyPair(sk, base_mult(sk))
    raise InvalidParameter("DeriveKeyPairError")  # probability ~2^-2040


def generate_key_pair(rng: RandomBytes | None = None) -> KeyPair:
    """A fresh random key pair (RFC 9497 §3.2 ``GenerateKeyPair``)."""
    sk = Scalar.random(rng)
    return KeyPair(sk, base_mult(sk))


def blind(
    input_: bytes,
    mode: Mode = Mode.OPRF,
    *,
    blind_scalar: Scalar | None = None,
    rng: RandomBytes | None = None,
) -> tuple[Scalar, Element]:
    """RFC 9497 §3.3.1 ``Blind``: returns ``(blind, blindedElement)``.

    ``blind_scalar`` fixes the blind (test vectors); otherwise it is drawn from ``rng``.
    """
    b = blind_scalar if blind_scalar is not None else Scalar.random(rng)
    input_element = hash_to_group(input_, mode)
    if input_element.is_identity():
        raise InvalidParameter("InvalidInputError")
    return b, input_element * b


def blind_evaluate(sk: Scalar, blinded_element: Element) -> Element:
    """RFC 9497 §3.3.1 ``BlindEvaluate`` (base mode): ``skS * blindedElement``."""
    return blinded_element * sk


def finalize(input_: bytes, blind_scalar: Scalar, evaluated_element: Element) -> bytes:
    """RFC 9497 §3.3.1 ``Finalize`` (base mode): the 64-byte PRF output."""
    n = evaluated_element * blind_scalar.invert()
    return finalize_hash(input_, bytes(n))


def finalize_hash(input_: bytes, unblinded_element: bytes, info: bytes | None = None) -> bytes:
    """The hash at the end of ``Finalize`` / ``Evaluate`` (RFC 9497 §3.3); ``info`` only
    for POPRF."""
    parts = [i2osp(len(input_), 2), input_]
    if info is not None:
        parts += [i2osp(len(info), 2), info]
    parts += [i2osp(len(unblinded_element), 2), unblinded_element, b"Finalize"]
    return hashlib.sha512(b"".join(parts)).digest()


def evaluate(sk: Scalar, input_: bytes) -> bytes:
    """RFC 9497 §3.3.1 ``Evaluate`` (base mode): the PRF output computed with the key."""
    input_element = hash_to_group(input_, Mode.OPRF)
    if input_element.is_identity():
        raise InvalidParameter("InvalidInputError")
    return finalize_hash(input_, bytes(input_element * sk))


# ---------------------------------------------------------------------------------------
# Discrete logarithm equivalence proofs (RFC 9497 §2.2)
# ---------------------------------------------------------------------------------------

#: A serialized proof is ``c || s``: two scalars (RFC 9497 §2.2.1).
PROOF_LEN = 2 * NS


@dataclass(frozen=True, slots=True, eq=False)
class Proof:
    """A DLEQ proof ``(c, s)`` (RFC 9497 §2.2). Public data: its ``repr`` shows it.

    :meth:`from_bytes` is strict: exactly 64 bytes, both scalars canonical (below the
    group order, RFC 9497 §4.1 ``DeserializeScalar``); anything else raises
    :class:`DecodeError`.
    """

    c: Scalar
    s: Scalar

    @classmethod
    def from_bytes(cls, data: bytes) -> Proof:
        """Parse ``c || s``; raises :class:`DecodeError` on a wrong length or a
        non-canonical scalar."""
        data = bytes(data)
        if len(data) != PROOF_LEN:
            raise DecodeError("proof must be 64 bytes")
        return cls(Scalar.from_bytes(data[:SCALAR_LEN]), Scalar.from_bytes(data[SCALAR_LEN:]))

    def to_bytes(self) -> bytes:
        """The 64-byte serialization ``SerializeScalar(c) || SerializeScalar(s)``."""
        return bytes(self.c) + bytes(self.s)

    def __bytes__(self) -> bytes:
        return self.to_bytes()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Proof):
            return NotImplemented
        return hmac.compare_digest(self.to_bytes(), other.to_bytes())

    def __hash__(self) -> int:
        return hash(self.to_bytes())

    def __repr__(self) -> str:
        return f"Proof({self.to_bytes().hex()})"


def _require_verifiable(mode: Mode) -> None:
    if mode not in (Mode.VOPRF, Mode.POPRF):
        raise InvalidParameter("proofs exist only in the VOPRF and POPRF modes")


def _framed(*parts: bytes) -> bytes:
    """``I2OSP(len(p), 2) || p`` for each part, concatenated."""
    return b"".join(i2osp(len(p), 2) + p for p in parts)


def _check_batch(c: Sequence[Element], d: Sequence[Element]) -> None:
    if len(c) == 0:
        raise InvalidParameter("a proof needs at least one element pair")
    if len(c) != len(d):
        raise InvalidParameter("C and D must have the same length")
    if len(c) >= 1 << 16:
        raise InvalidParameter("batch too large for the composite index")


def _composite_weights(
    b: Element, c: Sequence[Element], d: Sequence[Element], mode: Mode
) -> list[Scalar]:
    """The per-pair scalars ``d_i`` shared by both ``ComputeComposites`` variants."""
    seed_dst = b"Seed-" + context_string(mode)
    seed = hashlib.sha512(_framed(bytes(b), seed_dst)).digest()
    weights = []
    for i, (ci, di) in enumerate(zip(c, d, strict=True)):
        transcript = (
            i2osp(len(seed), 2) + seed + i2osp(i, 2) + _framed(bytes(ci), bytes(di)) + b"Composite"
        )
        weights.append(hash_to_scalar(transcript, mode))
    return weights


def compute_composites(
    b: Element, c: Sequence[Element], d: Sequence[Element], mode: Mode
) -> tuple[Element, Element]:
    """RFC 9497 §2.2.1 ``ComputeComposites(B, C, D)``: ``(M, Z)`` with
    ``M = sum(d_i * C[i])`` and ``Z = sum(d_i * D[i])``. Used by the verifier.

    ``mode`` selects the ``contextString`` (VOPRF or POPRF). Raises
    :class:`InvalidParameter` for an empty batch or lists of different lengths.
    """
    _require_verifiable(mode)
    _check_batch(c, d)
    m = Element.identity()
    z = Element.identity()
    for weight, ci, di in zip(_composite_weights(b, c, d, mode), c, d, strict=True):
        m = ci * weight + m
        z = di * weight + z
    return m, z


def compute_composites_fast(
    k: Scalar, b: Element, c: Sequence[Element], d: Sequence[Element], mode: Mode
) -> tuple[Element, Element]:
    """RFC 9497 §2.2.1 ``ComputeCompositesFast(k, B, C, D)``: the prover's shortcut,
    ``M`` as in :func:`compute_composites` and ``Z = k * M`` (valid because
    ``D[i] = k * C[i]`` for an honest prover). ``k`` is secret."""
    _require_verifiable(mode)
    _check_batch(c, d)
    m = Element.identity()
    for weight, ci in zip(_composite_weights(b, c, d, mode), c, strict=True):
        m = ci * weight + m
    return m, m * k


def _challenge(
    b: Element, m: Element, z: Element, t2: Element, t3: Element, *, mode: Mode
) -> Scalar:
    transcript = _framed(bytes(b), bytes(m), bytes(z), bytes(t2), bytes(t3)) + b"Challenge"
    return hash_to_scalar(transcript, mode)


def generate_proof(
    k: Scalar,
    a: Element,
    b: Element,
    c: Sequence[Element],
    d: Sequence[Element],
    *,
    mode: Mode,
    r: Scalar | None = None,
    rng: RandomBytes | None = None,
) -> Proof:
    """RFC 9497 §2.2.1 ``GenerateProof(k, A, B, C, D)``: prove that ``B = k*A`` and
    ``D[i] = k*C[i]`` for every ``i``, with one proof for the whole batch.

    ``r`` is the RFC's ``ProofRandomScalar`` (fixed by test vectors); otherwise it is
    drawn from ``rng`` (``secrets`` by default). Reusing an ``r`` with the same ``k`` on
    a different statement reveals ``k``: pass it only for known-answer tests.
    """
    _require_verifiable(mode)
    m, z = compute_composites_fast(k, b, c, d, mode)
    r_scalar = r if r is not None else Scalar.random(rng)
    t2 = a * r_scalar
    t3 = m * r_scalar
    challenge = _challenge(b, m, z, t2, t3, mode=mode)
    return Proof(challenge, r_scalar - challenge * k)


def verify_proof(
    a: Element,
    b: Element,
    c: Sequence[Element],
    d: Sequence[Element],
    proof: Proof,
    *,
    mode: Mode,
) -> None:
    """RFC 9497 §2.2.2 ``VerifyProof(A, B, C, D, proof)``.

    Returns ``None`` when the proof shows that one scalar ``k`` has ``B = k*A`` and
    ``D[i] = k*C[i]`` for all ``i``; otherwise raises :class:`VerificationError` (the
    RFC's ``VerifyError``). There is no boolean result to forget to check.
    """
    _require_verifiable(mode)
    m, z = compute_composites(b, c, d, mode)
    t2 = a * proof.s + b * proof.c
    t3 = m * proof.s + z * proof.c
    expected_c = _challenge(b, m, z, t2, t3, mode=mode)
    if not hmac.compare_digest(bytes(expected_c), bytes(proof.c)):
        raise VerificationError("OPRF proof did not verify")


# ---------------------------------------------------------------------------------------
# Shared client-side unblinding
# ---------------------------------------------------------------------------------------


def _check_same_length(*seqs: Sequence[object]) -> None:
    n = len(seqs[0])
    if n == 0:
        raise InvalidParameter("a batch needs at least one element")
    if any(len(x) != n for x in seqs):
        raise InvalidParameter("batch arguments must have the same length")


def _unblind(blind_scalar: Scalar, evaluated_element: Element) -> bytes:
    """``SerializeElement(ScalarInverse(blind) * evaluatedElement)`` (RFC 9497 §3.3)."""
    return bytes(evaluated_element * blind_scalar.invert())


# ---------------------------------------------------------------------------------------
# VOPRF mode (RFC 9497 §3.3.2)
# ---------------------------------------------------------------------------------------


def voprf_blind(
    input_: bytes, *, blind_scalar: Scalar | None = None, rng: RandomBytes | None = None
) -> tuple[Scalar, Element]:
    """RFC 9497 §3.3.2 ``Blind`` (same as §3.3.1 with the VOPRF ``contextString``):
    returns ``(blind, blindedElement)``. ``blind`` is secret; keep it for
    :func:`voprf_finalize`. Raises :class:`InvalidParameter` (``InvalidInputError``)
    if the input hashes to the identity."""
    return blind(input_, Mode.VOPRF, blind_scalar=blind_scalar, rng=rng)


def voprf_blind_evaluate_batch(
    sk: Scalar,
    pk: Element,
    blinded_elements: Sequence[Element],
    *,
    proof_random_scalar: Scalar | None = None,
    rng: RandomBytes | None = None,
) -> tuple[list[Element], Proof]:
    """RFC 9497 §3.3.2 ``BlindEvaluate`` over a batch: ``evaluatedElements[i] =
    skS * blindedElements[i]`` and one proof
    ``GenerateProof(skS, G, pkS, blindedElements, evaluatedElements)``.

    ``pk`` must be ``skS * G`` (the caller's key pair). ``proof_random_scalar`` fixes
    the proof's ``r`` for test vectors only.
    """
    if len(blinded_elements) == 0:
        raise InvalidParameter("a batch needs at least one element")
    evaluated = [be * sk for be in blinded_elements]
    proof = generate_proof(
        sk,
        Element.generator(),
        pk,
        blinded_elements,
        evaluated,
        mode=Mode.VOPRF,
        r=proof_random_scalar,
        rng=rng,
    )
    return evaluated, proof


def voprf_blind_evaluate(
    sk: Scalar,
    pk: Element,
    blinded_element: Element,
    *,
    proof_random_scalar: Scalar | None = None,
    rng: RandomBytes | None = None,
) -> tuple[Element, Proof]:
    """RFC 9497 §3.3.2 ``BlindEvaluate`` for one element: ``(evaluatedElement, proof)``."""
    evaluated, proof = voprf_blind_evaluate_batch(
        sk, pk, [blinded_element], proof_random_scalar=proof_random_scalar, rng=rng
    )
    return evaluated[0], proof


def voprf_finalize_batch(
    inputs: Sequence[bytes],
    blinds: Sequence[Scalar],
    *,
    evaluated_elements: Sequence[Element],
    blinded_elements: Sequence[Element],
    pk: Element,
    proof: Proof,
) -> list[bytes]:
    """RFC 9497 §3.3.2 ``Finalize`` over a batch: first
    ``VerifyProof(G, pkS, blindedElements, evaluatedElements, proof)`` (raises
    :class:`VerificationError` on failure, before anything is unblinded), then the
    64-byte output for each input, in order."""
    _check_same_length(inputs, blinds, evaluated_elements, blinded_elements)
    verify_proof(
        Element.generator(), pk, blinded_elements, evaluated_elements, proof, mode=Mode.VOPRF
    )
    return [
        finalize_hash(inp, _unblind(bl, ev))
        for inp, bl, ev in zip(inputs, blinds, evaluated_elements, strict=True)
    ]


def voprf_finalize(
    input_: bytes,
    blind_scalar: Scalar,
    *,
    evaluated_element: Element,
    blinded_element: Element,
    pk: Element,
    proof: Proof,
) -> bytes:
    """RFC 9497 §3.3.2 ``Finalize`` for one element: verifies the proof (raising
    :class:`VerificationError`), then returns the 64-byte PRF output."""
    return voprf_finalize_batch(
        [input_],
        [blind_scalar],
        evaluated_elements=[evaluated_element],
        blinded_elements=[blinded_element],
        pk=pk,
        proof=proof,
    )[0]


def voprf_evaluate(sk: Scalar, input_: bytes) -> bytes:
    """RFC 9497 §3.3.2 ``Evaluate``: the VOPRF output computed directly with the key."""
    input_element = hash_to_group(input_, Mode.VOPRF)
    if input_element.is_identity():
        raise InvalidParameter("InvalidInputError")
    return finalize_hash(input_, bytes(input_element * sk))


# ---------------------------------------------------------------------------------------
# POPRF mode (RFC 9497 §3.3.3)
# ---------------------------------------------------------------------------------------


def _info_scalar(info: bytes) -> Scalar:
    """``m = HashToScalar("Info" || I2OSP(len(info), 2) || info)`` (RFC 9497 §3.3.3)."""
    return hash_to_scalar(b"Info" + i2osp(len(info), 2) + info, Mode.POPRF)


def _tweaked_secret(sk: Scalar, info: bytes) -> Scalar:
    """``t = skS + m``; raises :class:`InvalidParameter` (``InverseError``) if zero."""
    t = sk + _info_scalar(info)
    if t.is_zero():
        raise InvalidParameter("InverseError")
    return t


def poprf_tweaked_key(pk: Element, info: bytes) -> Element:
    """The client's ``tweakedKey = G.ScalarMultGen(m) + pkS`` (RFC 9497 §3.3.3 ``Blind``).

    Raises :class:`InvalidParameter` (``InvalidInputError``) if it is the identity.
    """
    tweaked = base_mult(_info_scalar(info)) + pk
    if tweaked.is_identity():
        raise InvalidParameter("InvalidInputError")
    return tweaked


def poprf_blind(
    input_: bytes,
    info: bytes,
    pk: Element,
    *,
    blind_scalar: Scalar | None = None,
    rng: RandomBytes | None = None,
) -> tuple[Scalar, Element, Element]:
    """RFC 9497 §3.3.3 ``Blind(input, info, pkS)``: ``(blind, blindedElement,
    tweakedKey)``. ``blind`` is secret; keep it and ``tweakedKey`` for
    :func:`poprf_finalize`. Raises :class:`InvalidParameter` (``InvalidInputError``)
    if the tweaked key or the hashed input is the identity."""
    tweaked = poprf_tweaked_key(pk, info)
    b, blinded = blind(input_, Mode.POPRF, blind_scalar=blind_scalar, rng=rng)
    return b, blinded, tweaked


def poprf_blind_evaluate_batch(
    sk: Scalar,
    blinded_elements: Sequence[Element],
    info: bytes,
    *,
    proof_random_scalar: Scalar | None = None,
    rng: RandomBytes | None = None,
) -> tuple[list[Element], Proof]:
    """RFC 9497 §3.3.3 ``BlindEvaluate`` over a batch: with ``t = skS + m``,
    ``evaluatedElements[i] = t^-1 * blindedElements[i]`` and one proof
    ``GenerateProof(t, G, t*G, evaluatedElements, blindedElements)`` (note the order:
    the evaluated elements are the proof's ``C``).

    Raises :class:`InvalidParameter` (``InverseError``) if ``t`` is zero.
    """
    if len(blinded_elements) == 0:
        raise InvalidParameter("a batch needs at least one element")
    t = _tweaked_secret(sk, info)
    t_inv = t.invert()
    evaluated = [be * t_inv for be in blinded_elements]
    proof = generate_proof(
        t,
        Element.generator(),
        base_mult(t),
        evaluated,
        blinded_elements,
        mode=Mode.POPRF,
        r=proof_random_scalar,
        rng=rng,
    )
    return evaluated, proof


def poprf_blind_evaluate(
    sk: Scalar,
    blinded_element: Element,
    info: bytes,
    *,
    proof_random_scalar: Scalar | None = None,
    rng: RandomBytes | None = None,
) -> tuple[Element, Proof]:
    """RFC 9497 §3.3.3 ``BlindEvaluate`` for one element: ``(evaluatedElement, proof)``."""
    evaluated, proof = poprf_blind_evaluate_batch(
        sk, [blinded_element], info, proof_random_scalar=proof_random_scalar, rng=rng
    )
    return evaluated[0], proof


def poprf_finalize_batch(
    inputs: Sequence[bytes],
    blinds: Sequence[Scalar],
    *,
    evaluated_elements: Sequence[Element],
    blinded_elements: Sequence[Element],
    proof: Proof,
    info: bytes,
    tweaked_key: Element,
) -> list[bytes]:
    """RFC 9497 §3.3.3 ``Finalize`` over a batch: first
    ``VerifyProof(G, tweakedKey, evaluatedElements, blindedElements, proof)`` (raises
    :class:`VerificationError`, before anything is unblinded), then the 64-byte output
    ``Hash(len||input || len||info || len||unblindedElement || "Finalize")`` per input.

    ``tweaked_key`` is the one :func:`poprf_blind` returned for the same ``info``.
    """
    _check_same_length(inputs, blinds, evaluated_elements, blinded_elements)
    verify_proof(
        Element.generator(),
        tweaked_key,
        evaluated_elements,
        blinded_elements,
        proof,
        mode=Mode.POPRF,
    )
    return [
        finalize_hash(inp, _unblind(bl, ev), info)
        for inp, bl, ev in zip(inputs, blinds, evaluated_elements, strict=True)
    ]


def poprf_finalize(
    input_: bytes,
    blind_scalar: Scalar,
    *,
    evaluated_element: Element,
    blinded_element: Element,
    proof: Proof,
    info: bytes,
    tweaked_key: Element,
) -> bytes:
    """RFC 9497 §3.3.3 ``Finalize`` for one element: verifies the proof (raising
    :class:`VerificationError`), then returns the 64-byte PRF output."""
    return poprf_finalize_batch(
        [input_],
        [blind_scalar],
        evaluated_elements=[evaluated_element],
        blinded_elements=[blinded_element],
        proof=proof,
        info=info,
        tweaked_key=tweaked_key,
    )[0]


def poprf_evaluate(sk: Scalar, input_: bytes, info: bytes) -> bytes:
    """RFC 9497 §3.3.3 ``Evaluate(skS, input, info)``: the POPRF output computed
    directly with the key. Raises :class:`InvalidParameter` (``InvalidInputError`` /
    ``InverseError``)."""
    input_element = hash_to_group(input_, Mode.POPRF)
    if input_element.is_identity():
        raise InvalidParameter("InvalidInputError")
    t = _tweaked_secret(sk, info)
    return finalize_hash(input_, bytes(input_element * t.invert()), info)
