"""RFC 9497 OPRF / VOPRF / POPRF (ristretto255-SHA512) against the official vectors,
plus attacks on proofs and Hypothesis properties.

Vectors: ``oprf_rfc9497.json`` (Appendix A.1: 2 OPRF, 3 VOPRF and 3 POPRF vectors, the
third of each verifiable mode with batch size 2); see the vectors README for provenance.
Every vector test asserts how many vectors it ran.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hsmvault.crypto import oprf
from hsmvault.crypto.oprf import Mode, Proof
from hsmvault.crypto.ristretto255 import ORDER, Element, Scalar, base_mult
from hsmvault.errors import DecodeError, InvalidParameter, VaultError, VerificationError
from tests.vectors import load_vectors, unhex

_SUITE_ID = "ristretto255-SHA512"
_ALL: Any = load_vectors("oprf_rfc9497.json")["suites"]


def _suite(mode: Mode) -> Any:
    (suite,) = [s for s in _ALL if s["identifier"] == _SUITE_ID and s["mode"] == int(mode)]
    return suite


def _split(vector: Any, key: str) -> list[bytes]:
    values = [unhex(x) for x in vector[key].split(",")]
    assert len(values) == int(vector["Batch"])
    return values


def _key_pair(mode: Mode) -> oprf.KeyPair:
    suite = _suite(mode)
    kp = oprf.derive_key_pair(unhex(suite["seed"]), unhex(suite["keyInfo"]), mode)
    assert bytes(kp.sk) == unhex(suite["skSm"])
    if mode != Mode.OPRF:
        assert bytes(kp.pk) == unhex(suite["pkSm"])
    assert kp.pk == base_mult(kp.sk)
    return kp


def _hexes(values: list[Element] | list[bytes]) -> str:
    return ",".join(bytes(v).hex() for v in values)


def _replay_rng(*scalars: Scalar) -> Callable[[int], bytes]:
    """An ``rng`` that yields ``scalar || 0^32`` for each scalar in turn: 64 bytes that
    reduce mod L to exactly that scalar, so the vectors drive the ``rng`` path too."""
    chunks: Iterator[bytes] = iter(bytes(s) + bytes(32) for s in scalars)

    def rng(n: int) -> bytes:
        assert n == 64
        return next(chunks)

    return rng


# --- Appendix A.1.1: OPRF (base mode) ---------------------------------------------------


def test_oprf_base_mode_vectors() -> None:
    kp = _key_pair(Mode.OPRF)
    ran = 0
    for v in _suite(Mode.OPRF)["vectors"]:
        assert int(v["Batch"]) == 1
        input_ = unhex(v["Input"])
        blind_s = Scalar.from_bytes(unhex(v["Blind"]))
        b, blinded = oprf.blind(input_, blind_scalar=blind_s)
        assert b == blind_s
        assert bytes(blinded) == unhex(v["BlindedElement"])
        evaluated = oprf.blind_evaluate(kp.sk, blinded)
        assert bytes(evaluated) == unhex(v["EvaluationElement"])
        assert oprf.finalize(input_, blind_s, evaluated) == unhex(v["Output"])
        assert oprf.evaluate(kp.sk, input_) == unhex(v["Output"])
        ran += 1
    assert ran == 2


# --- Appendix A.1.2: VOPRF --------------------------------------------------------------


def test_voprf_vectors() -> None:
    kp = _key_pair(Mode.VOPRF)
    ran = 0
    batch_sizes = []
    for v in _suite(Mode.VOPRF)["vectors"]:
        inputs = _split(v, "Input")
        blinds = [Scalar.from_bytes(x) for x in _split(v, "Blind")]
        r = Scalar.from_bytes(unhex(v["Proof"]["r"]))
        blinded = [
            oprf.voprf_blind(i, blind_scalar=b)[1] for i, b in zip(inputs, blinds, strict=True)
        ]
        assert _hexes(blinded) == v["BlindedElement"]

        evaluated, proof = oprf.voprf_blind_evaluate_batch(
            kp.sk, kp.pk, blinded, proof_random_scalar=r
        )
        assert _hexes(evaluated) == v["EvaluationElement"]
        assert proof.to_bytes() == unhex(v["Proof"]["proof"])

        # The client side, from the bytes on the wire.
        wire_evaluated = [Element.from_bytes(x) for x in _split(v, "EvaluationElement")]
        wire_proof = Proof.from_bytes(unhex(v["Proof"]["proof"]))
        outputs = oprf.voprf_finalize_batch(
            inputs,
            blinds,
            evaluated_elements=wire_evaluated,
            blinded_elements=blinded,
            pk=Element.from_bytes(unhex(_suite(Mode.VOPRF)["pkSm"])),
            proof=wire_proof,
        )
        assert _hexes(outputs) == v["Output"]
        assert [oprf.voprf_evaluate(kp.sk, i) for i in inputs] == _split(v, "Output")

        if len(inputs) == 1:
            single, single_proof = oprf.voprf_blind_evaluate(
                kp.sk, kp.pk, blinded[0], proof_random_scalar=r
            )
            assert single == evaluated[0]
            assert single_proof == proof
            out = oprf.voprf_finalize(
                inputs[0],
                blinds[0],
                evaluated_element=single,
                blinded_element=blinded[0],
                pk=kp.pk,
                proof=single_proof,
            )
            assert out == outputs[0]
        batch_sizes.append(len(inputs))
        ran += 1
    assert ran == 3
    assert batch_sizes == [1, 1, 2]


def test_voprf_vectors_through_injected_rng() -> None:
    """The same vectors through the ``rng`` path: blinds and proof scalar from a source."""
    kp = _key_pair(Mode.VOPRF)
    ran = 0
    for v in _suite(Mode.VOPRF)["vectors"]:
        inputs = _split(v, "Input")
        blinds = [Scalar.from_bytes(x) for x in _split(v, "Blind")]
        rng = _replay_rng(*blinds, Scalar.from_bytes(unhex(v["Proof"]["r"])))
        drawn = [oprf.voprf_blind(i, rng=rng) for i in inputs]
        assert [b for b, _ in drawn] == blinds
        _, proof = oprf.voprf_blind_evaluate_batch(kp.sk, kp.pk, [be for _, be in drawn], rng=rng)
        assert proof.to_bytes() == unhex(v["Proof"]["proof"])
        ran += 1
    assert ran == 3


# --- Appendix A.1.3: POPRF --------------------------------------------------------------


def test_poprf_vectors() -> None:
    suite = _suite(Mode.POPRF)
    kp = _key_pair(Mode.POPRF)
    ran = 0
    batch_sizes = []
    for v in suite["vectors"]:
        info = unhex(v["Info"])
        inputs = _split(v, "Input")
        blinds = [Scalar.from_bytes(x) for x in _split(v, "Blind")]
        r = Scalar.from_bytes(unhex(v["Proof"]["r"]))
        results = [
            oprf.poprf_blind(i, info, kp.pk, blind_scalar=b)
            for i, b in zip(inputs, blinds, strict=True)
        ]
        blinded = [be for _, be, _ in results]
        tweaked_key = results[0][2]
        assert all(t == tweaked_key for _, _, t in results)
        assert tweaked_key == oprf.poprf_tweaked_key(kp.pk, info)
        assert _hexes(blinded) == v["BlindedElement"]

        evaluated, proof = oprf.poprf_blind_evaluate_batch(
            kp.sk, blinded, info, proof_random_scalar=r
        )
        assert _hexes(evaluated) == v["EvaluationElement"]
        assert proof.to_bytes() == unhex(v["Proof"]["proof"])

        wire_evaluated = [Element.from_bytes(x) for x in _split(v, "EvaluationElement")]
        outputs = oprf.poprf_finalize_batch(
            inputs,
            blinds,
            evaluated_elements=wire_evaluated,
            blinded_elements=blinded,
            proof=Proof.from_bytes(unhex(v["Proof"]["proof"])),
            info=info,
            tweaked_key=tweaked_key,
        )
        assert _hexes(outputs) == v["Output"]
        assert [oprf.poprf_evaluate(kp.sk, i, info) for i in inputs] == _split(v, "Output")

        if len(inputs) == 1:
            single, single_proof = oprf.poprf_blind_evaluate(
                kp.sk, blinded[0], info, proof_random_scalar=r
            )
            assert single == evaluated[0]
            assert single_proof == proof
            out = oprf.poprf_finalize(
                inputs[0],
                blinds[0],
                evaluated_element=single,
                blinded_element=blinded[0],
                proof=single_proof,
                info=info,
                tweaked_key=tweaked_key,
            )
            assert out == outputs[0]
        batch_sizes.append(len(inputs))
        ran += 1
    assert ran == 3
    assert batch_sizes == [1, 1, 2]


def test_all_ristretto255_vectors_counted() -> None:
    counts = {mode: len(_suite(mode)["vectors"]) for mode in Mode}
    assert counts == {Mode.OPRF: 2, Mode.VOPRF: 3, Mode.POPRF: 3}


# --- Proof attacks ---------------------------------------------------------------------


def _voprf_batch_case() -> tuple[oprf.KeyPair, list[Element], list[Element], Proof]:
    kp = _key_pair(Mode.VOPRF)
    v = _suite(Mode.VOPRF)["vectors"][2]
    blinded = [Element.from_bytes(x) for x in _split(v, "BlindedElement")]
    evaluated = [Element.from_bytes(x) for x in _split(v, "EvaluationElement")]
    return kp, blinded, evaluated, Proof.from_bytes(unhex(v["Proof"]["proof"]))


def test_vector_proof_verifies() -> None:
    kp, blinded, evaluated, proof = _voprf_batch_case()
    oprf.verify_proof(Element.generator(), kp.pk, blinded, evaluated, proof, mode=Mode.VOPRF)


def test_tampered_proof_raises_verification_error() -> None:
    kp, blinded, evaluated, proof = _voprf_batch_case()
    tampered = [
        Proof(proof.c + Scalar.from_int(1), proof.s),
        Proof(proof.c, proof.s + Scalar.from_int(1)),
        Proof(proof.s, proof.c),
        Proof(-proof.c, -proof.s),
    ]
    for bad in tampered:
        with pytest.raises(VerificationError):
            oprf.verify_proof(Element.generator(), kp.pk, blinded, evaluated, bad, mode=Mode.VOPRF)
    assert len(tampered) == 4


def test_proof_under_another_public_key_rejected() -> None:
    _, blinded, evaluated, proof = _voprf_batch_case()
    other_pk = oprf.derive_key_pair(bytes(32), b"other", Mode.VOPRF).pk
    with pytest.raises(VerificationError):
        oprf.verify_proof(Element.generator(), other_pk, blinded, evaluated, proof, mode=Mode.VOPRF)


def test_proof_in_the_wrong_mode_rejected() -> None:
    kp, blinded, evaluated, proof = _voprf_batch_case()
    with pytest.raises(VerificationError):
        oprf.verify_proof(Element.generator(), kp.pk, blinded, evaluated, proof, mode=Mode.POPRF)
    with pytest.raises(InvalidParameter):
        oprf.verify_proof(Element.generator(), kp.pk, blinded, evaluated, proof, mode=Mode.OPRF)


def test_reordered_or_truncated_batch_rejected() -> None:
    kp, blinded, evaluated, proof = _voprf_batch_case()
    g = Element.generator()
    with pytest.raises(VerificationError):
        oprf.verify_proof(g, kp.pk, blinded[::-1], evaluated[::-1], proof, mode=Mode.VOPRF)
    with pytest.raises(VerificationError):
        oprf.verify_proof(g, kp.pk, blinded, evaluated[::-1], proof, mode=Mode.VOPRF)
    with pytest.raises(VerificationError):
        oprf.verify_proof(g, kp.pk, blinded[:1], evaluated[:1], proof, mode=Mode.VOPRF)


def test_evaluation_with_another_key_rejected_by_client() -> None:
    """A server that evaluates with key k' but proves for pkS is caught by Finalize."""
    kp = _key_pair(Mode.VOPRF)
    rogue = oprf.derive_key_pair(bytes(32), b"rogue", Mode.VOPRF)
    blind_s, blinded = oprf.voprf_blind(b"pin", blind_scalar=Scalar.from_int(5))
    evaluated, proof = oprf.voprf_blind_evaluate(rogue.sk, rogue.pk, blinded)
    with pytest.raises(VerificationError):
        oprf.voprf_finalize(
            b"pin",
            blind_s,
            evaluated_element=evaluated,
            blinded_element=blinded,
            pk=kp.pk,
            proof=proof,
        )


def test_batch_argument_mistakes_are_invalid_parameters() -> None:
    kp, blinded, evaluated, proof = _voprf_batch_case()
    g = Element.generator()
    with pytest.raises(InvalidParameter):
        oprf.verify_proof(g, kp.pk, blinded, evaluated[:1], proof, mode=Mode.VOPRF)
    with pytest.raises(InvalidParameter):
        oprf.verify_proof(g, kp.pk, [], [], proof, mode=Mode.VOPRF)
    with pytest.raises(InvalidParameter):
        oprf.voprf_blind_evaluate_batch(kp.sk, kp.pk, [])
    with pytest.raises(InvalidParameter):
        oprf.voprf_finalize_batch(
            [b"a"],
            [Scalar.from_int(1), Scalar.from_int(2)],
            evaluated_elements=evaluated,
            blinded_elements=blinded,
            pk=kp.pk,
            proof=proof,
        )


def test_verification_error_message_carries_no_secret() -> None:
    kp, blinded, evaluated, proof = _voprf_batch_case()
    with pytest.raises(VerificationError) as info:
        oprf.verify_proof(
            Element.generator(), kp.pk, blinded, evaluated[::-1], proof, mode=Mode.VOPRF
        )
    message = str(info.value)
    for secret in (bytes(kp.sk).hex(), proof.to_bytes().hex()):
        assert secret not in message
    assert bytes(kp.sk).hex() not in repr(kp)


# --- Proof encoding ---------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 32, 63, 65, 96])
def test_proof_wrong_length_rejected(length: int) -> None:
    with pytest.raises(DecodeError):
        Proof.from_bytes(bytes(length))


@pytest.mark.parametrize("half", [0, 1])
def test_proof_non_canonical_scalar_rejected(half: int) -> None:
    scalars = [bytes(32), bytes(32)]
    scalars[half] = ORDER.to_bytes(32, "little")
    with pytest.raises(DecodeError):
        Proof.from_bytes(b"".join(scalars))


def test_proof_round_trip_and_value_semantics() -> None:
    data = unhex(_suite(Mode.VOPRF)["vectors"][0]["Proof"]["proof"])
    proof = Proof.from_bytes(data)
    assert proof.to_bytes() == data
    assert bytes(proof) == data
    assert Proof.from_bytes(data) == proof
    assert hash(Proof.from_bytes(data)) == hash(proof)
    assert data.hex() in repr(proof)


@given(st.binary(max_size=80))
def test_proof_decoding_raises_only_decode_error(data: bytes) -> None:
    try:
        proof = Proof.from_bytes(data)
    except DecodeError:
        return
    assert proof.to_bytes() == data


@given(st.binary(min_size=64, max_size=64))
def test_proof_decoding_of_64_bytes_matches_range_check(data: bytes) -> None:
    canonical = all(int.from_bytes(h, "little") < ORDER for h in (data[:32], data[32:]))
    if canonical:
        assert Proof.from_bytes(data).to_bytes() == data
    else:
        with pytest.raises(DecodeError):
            Proof.from_bytes(data)


# --- POPRF info binding -----------------------------------------------------------------


def test_poprf_different_info_gives_different_output() -> None:
    kp = _key_pair(Mode.POPRF)
    out_a = oprf.poprf_evaluate(kp.sk, b"input", b"info A")
    out_b = oprf.poprf_evaluate(kp.sk, b"input", b"info B")
    assert out_a != out_b

    def run(info: bytes) -> bytes:
        blind_s, blinded, tweaked = oprf.poprf_blind(
            b"input", info, kp.pk, blind_scalar=Scalar.from_int(3)
        )
        evaluated, proof = oprf.poprf_blind_evaluate(kp.sk, blinded, info)
        return oprf.poprf_finalize(
            b"input",
            blind_s,
            evaluated_element=evaluated,
            blinded_element=blinded,
            proof=proof,
            info=info,
            tweaked_key=tweaked,
        )

    assert run(b"info A") == out_a
    assert run(b"info B") == out_b


def test_poprf_server_using_other_info_rejected_by_client() -> None:
    kp = _key_pair(Mode.POPRF)
    blind_s, blinded, tweaked = oprf.poprf_blind(b"input", b"client info", kp.pk)
    evaluated, proof = oprf.poprf_blind_evaluate(kp.sk, blinded, b"server info")
    with pytest.raises(VerificationError):
        oprf.poprf_finalize(
            b"input",
            blind_s,
            evaluated_element=evaluated,
            blinded_element=blinded,
            proof=proof,
            info=b"client info",
            tweaked_key=tweaked,
        )


def test_poprf_inverse_error_when_tweak_cancels_key() -> None:
    """If skS + m = 0 the RFC raises InverseError (here InvalidParameter)."""
    info = b"cancel"
    m = oprf.hash_to_scalar(b"Info" + oprf.i2osp(len(info), 2) + info, Mode.POPRF)
    sk = -m
    _, blinded = oprf.blind(b"x", Mode.POPRF, blind_scalar=Scalar.from_int(2))
    with pytest.raises(InvalidParameter):
        oprf.poprf_blind_evaluate(sk, blinded, info)
    with pytest.raises(InvalidParameter):
        oprf.poprf_evaluate(sk, b"x", info)
    with pytest.raises(InvalidParameter):  # the client sees tweakedKey = identity
        oprf.poprf_tweaked_key(base_mult(sk), info)


# --- Hypothesis: round trips and tampering ----------------------------------------------

seeds = st.binary(min_size=32, max_size=32)
inputs = st.binary(max_size=100)
infos = st.binary(max_size=100)
blind_scalars = (
    st.binary(min_size=64, max_size=64)
    .map(Scalar.from_uniform_bytes)
    .filter(lambda s: not s.is_zero())
)


@given(seeds, inputs, blind_scalars)
def test_oprf_round_trip(seed: bytes, input_: bytes, b: Scalar) -> None:
    kp = oprf.derive_key_pair(seed, b"k", Mode.OPRF)
    blind_s, blinded = oprf.blind(input_, blind_scalar=b)
    evaluated = oprf.blind_evaluate(kp.sk, blinded)
    assert oprf.finalize(input_, blind_s, evaluated) == oprf.evaluate(kp.sk, input_)


@given(seeds, inputs, blind_scalars)
def test_voprf_round_trip(seed: bytes, input_: bytes, b: Scalar) -> None:
    kp = oprf.derive_key_pair(seed, b"k", Mode.VOPRF)
    blind_s, blinded = oprf.voprf_blind(input_, blind_scalar=b)
    evaluated, proof = oprf.voprf_blind_evaluate(kp.sk, kp.pk, blinded)
    out = oprf.voprf_finalize(
        input_, blind_s, evaluated_element=evaluated, blinded_element=blinded, pk=kp.pk, proof=proof
    )
    assert out == oprf.voprf_evaluate(kp.sk, input_)
    assert out != oprf.evaluate(kp.sk, input_)  # modes are domain-separated


@given(seeds, inputs, infos, blind_scalars)
def test_poprf_round_trip(seed: bytes, input_: bytes, info: bytes, b: Scalar) -> None:
    kp = oprf.derive_key_pair(seed, b"k", Mode.POPRF)
    blind_s, blinded, tweaked = oprf.poprf_blind(input_, info, kp.pk, blind_scalar=b)
    evaluated, proof = oprf.poprf_blind_evaluate(kp.sk, blinded, info)
    out = oprf.poprf_finalize(
        input_,
        blind_s,
        evaluated_element=evaluated,
        blinded_element=blinded,
        proof=proof,
        info=info,
        tweaked_key=tweaked,
    )
    assert out == oprf.poprf_evaluate(kp.sk, input_, info)


def _seeded_rng(seed: bytes) -> Callable[[int], bytes]:
    """A deterministic byte source (SHAKE-256 of seed and counter), so Hypothesis can
    replay and shrink a failing example exactly."""
    counter = itertools.count()

    def rng(n: int) -> bytes:
        return hashlib.shake_256(seed + next(counter).to_bytes(8, "big")).digest(n)

    return rng


@given(st.lists(inputs, min_size=1, max_size=4), infos, seeds, seeds)
def test_batched_round_trips(batch: list[bytes], info: bytes, seed: bytes, rng_seed: bytes) -> None:
    rng = _seeded_rng(rng_seed)
    vkp = oprf.derive_key_pair(seed, b"k", Mode.VOPRF)
    vb = [oprf.voprf_blind(i, rng=rng) for i in batch]
    ev, proof = oprf.voprf_blind_evaluate_batch(vkp.sk, vkp.pk, [be for _, be in vb], rng=rng)
    outs = oprf.voprf_finalize_batch(
        batch,
        [b for b, _ in vb],
        evaluated_elements=ev,
        blinded_elements=[be for _, be in vb],
        pk=vkp.pk,
        proof=proof,
    )
    assert outs == [oprf.voprf_evaluate(vkp.sk, i) for i in batch]

    pkp = oprf.derive_key_pair(seed, b"k", Mode.POPRF)
    pb = [oprf.poprf_blind(i, info, pkp.pk, rng=rng) for i in batch]
    ev, proof = oprf.poprf_blind_evaluate_batch(pkp.sk, [be for _, be, _ in pb], info, rng=rng)
    outs = oprf.poprf_finalize_batch(
        batch,
        [b for b, _, _ in pb],
        evaluated_elements=ev,
        blinded_elements=[be for _, be, _ in pb],
        proof=proof,
        info=info,
        tweaked_key=pb[0][2],
    )
    assert outs == [oprf.poprf_evaluate(pkp.sk, i, info) for i in batch]


def _flip(data: bytes, index: int, delta: int) -> bytes:
    out = bytearray(data)
    out[index % len(out)] ^= delta
    return bytes(out)


_deltas = st.integers(min_value=1, max_value=255)
_indices = st.integers(min_value=0, max_value=63)


def _voprf_client(
    kp: oprf.KeyPair, proof_bytes: bytes, evaluated_bytes: bytes, blind_s: Scalar, blinded: Element
) -> bytes:
    """The client's path from wire bytes to output (decode, then Finalize)."""
    return oprf.voprf_finalize(
        b"input",
        blind_s,
        evaluated_element=Element.from_bytes(evaluated_bytes),
        blinded_element=blinded,
        pk=kp.pk,
        proof=Proof.from_bytes(proof_bytes),
    )


@given(seeds, blind_scalars, blind_scalars, _indices, _deltas, st.booleans())
def test_voprf_any_single_byte_change_rejected(
    seed: bytes, b: Scalar, r: Scalar, index: int, delta: int, in_proof: bool
) -> None:
    kp = oprf.derive_key_pair(seed, b"k", Mode.VOPRF)
    blind_s, blinded = oprf.voprf_blind(b"input", blind_scalar=b)
    evaluated, proof = oprf.voprf_blind_evaluate(kp.sk, kp.pk, blinded, proof_random_scalar=r)
    proof_bytes, evaluated_bytes = proof.to_bytes(), bytes(evaluated)
    assert _voprf_client(kp, proof_bytes, evaluated_bytes, blind_s, blinded) == (
        oprf.voprf_evaluate(kp.sk, b"input")
    )
    if in_proof:
        proof_bytes = _flip(proof_bytes, index, delta)
    else:
        evaluated_bytes = _flip(evaluated_bytes, index, delta)
    with pytest.raises((DecodeError, VerificationError)):
        _voprf_client(kp, proof_bytes, evaluated_bytes, blind_s, blinded)


@given(seeds, infos, blind_scalars, blind_scalars, _indices, _deltas, st.booleans())
def test_poprf_any_single_byte_change_rejected(
    seed: bytes, info: bytes, b: Scalar, r: Scalar, index: int, delta: int, in_proof: bool
) -> None:
    kp = oprf.derive_key_pair(seed, b"k", Mode.POPRF)
    blind_s, blinded, tweaked = oprf.poprf_blind(b"input", info, kp.pk, blind_scalar=b)
    evaluated, proof = oprf.poprf_blind_evaluate(kp.sk, blinded, info, proof_random_scalar=r)
    proof_bytes, evaluated_bytes = proof.to_bytes(), bytes(evaluated)
    if in_proof:
        proof_bytes = _flip(proof_bytes, index, delta)
    else:
        evaluated_bytes = _flip(evaluated_bytes, index, delta)
    with pytest.raises((DecodeError, VerificationError)):
        oprf.poprf_finalize(
            b"input",
            blind_s,
            evaluated_element=Element.from_bytes(evaluated_bytes),
            blinded_element=blinded,
            proof=Proof.from_bytes(proof_bytes),
            info=info,
            tweaked_key=tweaked,
        )


@given(st.binary(max_size=80), st.binary(max_size=40))
def test_garbage_raises_only_our_errors(proof_bytes: bytes, element_bytes: bytes) -> None:
    """Arbitrary wire bytes through the client's decode-and-finalize path raise only
    hsmvault errors (DecodeError or VerificationError), never anything else."""
    kp = _key_pair(Mode.VOPRF)
    blind_s, blinded = oprf.voprf_blind(b"input", blind_scalar=Scalar.from_int(9))
    try:
        _voprf_client(kp, proof_bytes, element_bytes, blind_s, blinded)
    except (DecodeError, VerificationError):
        return
    except VaultError as exc:  # pragma: no cover - a failure report, not a path
        pytest.fail(f"unexpected error type {type(exc).__name__}")
    pytest.fail("garbage was accepted")
