"""Recovery codes, PINs, passwords and the 64-digit key: what a user types."""

from __future__ import annotations

import pickle
import secrets

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hsmvault.client.errors import RecoveryCodeError, WeakSecret
from hsmvault.client.recovery_codes import (
    ALPHABET,
    Password,
    Pin,
    RecoveryCode,
    SecretPolicy,
    format_64_digit_key,
    login_secret_from_text,
    parse_64_digit_key,
)
from hsmvault.crypto.backup_stream import BackupKey
from hsmvault.errors import InvalidParameter

seeds = st.binary(min_size=17, max_size=17)


def code_from(seed: bytes) -> RecoveryCode:
    return RecoveryCode.generate(rng=lambda n: seed[:n])


def canonical(code: RecoveryCode) -> str:
    return code.secret_bytes().decode("ascii")


def test_code_has_at_least_128_bits_and_a_typable_shape() -> None:
    code = RecoveryCode.generate()
    shown = code.display()
    groups = shown.split("-")
    assert [len(g) for g in groups] == [5] * 6
    assert set(shown.replace("-", "")) <= set(ALPHABET)
    assert 26 * 5 >= 128  # 26 random symbols of 5 bits; the last 4 are the checksum
    assert len({canonical(RecoveryCode.generate()) for _ in range(200)}) == 200


@given(seeds)
def test_code_round_trips_through_display(seed: bytes) -> None:
    code = code_from(seed)
    assert RecoveryCode.parse(code.display()) == code


@given(seeds, st.data())
def test_parsing_normalises_case_spaces_dashes_and_lookalikes(
    seed: bytes, data: st.DataObject
) -> None:
    code = code_from(seed)
    text = canonical(code)
    typed = []
    for ch in text:
        variants = [ch, ch.lower()]
        if ch == "0":
            variants += ["O", "o"]
        if ch == "1":
            variants += ["I", "i", "L", "l"]
        typed.append(data.draw(st.sampled_from(variants)))
        typed.append(data.draw(st.sampled_from(["", "", " ", "-", "  "])))
    assert RecoveryCode.parse("".join(typed)) == code


@given(seeds, st.data())
def test_any_single_mistyped_character_is_caught(seed: bytes, data: st.DataObject) -> None:
    text = canonical(code_from(seed))
    pos = data.draw(st.integers(0, len(text) - 1))
    wrong = data.draw(st.sampled_from([c for c in ALPHABET if c != text[pos]]))
    with pytest.raises(RecoveryCodeError, match="checksum"):
        RecoveryCode.parse(text[:pos] + wrong + text[pos + 1 :])


@given(seeds, st.data())
def test_any_swap_of_two_different_characters_is_caught(seed: bytes, data: st.DataObject) -> None:
    text = canonical(code_from(seed))
    i = data.draw(st.integers(0, len(text) - 2))
    j = data.draw(st.integers(i + 1, len(text) - 1))
    if text[i] == text[j]:
        return
    swapped = list(text)
    swapped[i], swapped[j] = swapped[j], swapped[i]
    with pytest.raises(RecoveryCodeError, match="checksum"):
        RecoveryCode.parse("".join(swapped))


@given(seeds, st.data())
def test_up_to_four_changed_characters_are_always_caught(seed: bytes, data: st.DataObject) -> None:
    text = list(canonical(code_from(seed)))
    positions = data.draw(st.sets(st.integers(0, len(text) - 1), min_size=1, max_size=4))
    for pos in positions:
        text[pos] = data.draw(st.sampled_from([c for c in ALPHABET if c != text[pos]]))
    with pytest.raises(RecoveryCodeError):
        RecoveryCode.parse("".join(text))


@given(seeds)
def test_a_dropped_or_added_character_is_caught(seed: bytes) -> None:
    text = canonical(code_from(seed))
    with pytest.raises(RecoveryCodeError, match="30 characters"):
        RecoveryCode.parse(text[:-1])
    with pytest.raises(RecoveryCodeError, match="30 characters"):
        RecoveryCode.parse(text + "0")


@pytest.mark.parametrize("bad", ["U" * 30, "!" * 30, ""])
def test_characters_outside_the_alphabet_are_refused(bad: str) -> None:
    with pytest.raises(RecoveryCodeError):
        RecoveryCode.parse(bad)


def test_secrets_never_show_in_repr_and_are_not_picklable() -> None:
    code = RecoveryCode.generate()
    pin = Pin("482916")
    password = Password("correct horse battery")
    for secret, text in [(code, canonical(code)), (pin, "482916"), (password, "horse")]:
        assert text not in repr(secret)
        assert text not in str(secret)
        with pytest.raises(TypeError):
            pickle.dumps(secret)
        with pytest.raises(TypeError):
            hash(secret)


def test_pin_policy() -> None:
    assert Pin(" 48 29 16 ").secret_bytes() == b"482916"
    assert Pin("\uff14\uff18\uff12\uff19\uff11\uff16").secret_bytes() == b"482916"  # full-width
    with pytest.raises(WeakSecret, match="6 to 16"):
        Pin("1234")
    with pytest.raises(WeakSecret, match="digits only"):
        Pin("12345a")
    assert Pin("1234", policy=SecretPolicy(min_pin_digits=4)).secret_bytes() == b"1234"


def test_password_policy_normalises_and_refuses_code_shapes() -> None:
    composed, decomposed = "caf\u00e9 au lait", "cafe\u0301 au lait"
    assert Password(composed) == Password(decomposed)
    with pytest.raises(WeakSecret, match="at least 8"):
        Password("short")
    with pytest.raises(WeakSecret, match="recovery code"):
        Password(RecoveryCode.generate().display())
    with pytest.raises(InvalidParameter):
        SecretPolicy(min_pin_digits=5, max_pin_digits=4)


def test_login_text_is_routed_to_the_right_secret() -> None:
    code = RecoveryCode.generate()
    assert login_secret_from_text(code.display().lower()) == code
    assert login_secret_from_text("482 916").secret_bytes() == b"482916"
    assert login_secret_from_text("caf\u00e9 secret").secret_bytes() == "café secret".encode()
    typo = "0" if canonical(code)[3] != "0" else "1"
    with pytest.raises(RecoveryCodeError):  # a typo is caught before any guess is spent
        login_secret_from_text(canonical(code)[:3] + typo + canonical(code)[4:])


@given(st.binary(min_size=32, max_size=32))
def test_64_digit_key_round_trips(raw: bytes) -> None:
    key = BackupKey(raw)
    shown = format_64_digit_key(key)
    assert len(shown.replace(" ", "")) == 64
    assert parse_64_digit_key(shown) == key
    assert parse_64_digit_key(shown.upper().replace(" ", "\n")) == key
    assert parse_64_digit_key("-".join(shown.split())) == key


@pytest.mark.parametrize(
    "bad", ["00" * 31, "00" * 33, "zz" * 32, "0x" + "00" * 31], ids=["short", "long", "hex", "0x"]
)
def test_64_digit_key_refuses_malformed_input_without_echoing_it(bad: str) -> None:
    with pytest.raises(InvalidParameter) as exc:
        parse_64_digit_key(bad)
    assert bad not in str(exc.value)


def test_generate_uses_the_rng_it_is_given() -> None:
    seed = secrets.token_bytes(17)
    assert code_from(seed) == code_from(seed)
