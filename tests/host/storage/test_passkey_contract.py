"""The PasskeyStore contract (base.py, ADR 0011), run against every adapter: SQLite,
PostgreSQL (a real server started by the fixture) and the gateway tests' in-memory fake."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from hsmvault.errors import InvalidParameter
from hsmvault.host.storage.base import (
    MetadataStore,
    PasskeyChallenge,
    PasskeyRecord,
    PasskeyStore,
)
from hsmvault.host.storage.sql_common import decode_offered_salts, encode_offered_salts

from ..passkey_fakes import MemoryPasskeyStore
from .conftest import META_BACKENDS, MetaOpener, contract_stores

ALICE = b"alice@example.org"
BOB = "bób\x00binary".encode()
SALT_A = bytes(range(32))
SALT_B = bytes(range(32, 64))


def record(
    credential_id: bytes = b"\x01" * 16,
    user: bytes = ALICE,
    *,
    sign_count: int = 0,
    salt: bytes = SALT_A,
    wrapped: bytes | None = b"\x01" + b"w" * 92,
    created_at: float = 100.5,
) -> PasskeyRecord:
    return PasskeyRecord(
        user_id=user,
        credential_id=credential_id,
        public_key=b"\xa5" + b"cose-key" * 10,
        sign_count=sign_count,
        prf_salt=salt,
        wrapped_key=wrapped,
        created_at=created_at,
        last_used_at=None,
    )


def challenge(
    value: bytes = b"c" * 32,
    user: bytes = ALICE,
    ceremony: str = "authentication",
    *,
    expires_at: float = 1000.0,
    **fields: Any,
) -> PasskeyChallenge:
    return PasskeyChallenge(value, user, ceremony, expires_at, **fields)


@pytest.fixture(params=["memory", *META_BACKENDS])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PasskeyStore]:
    for opened in contract_stores(request, tmp_path, MemoryPasskeyStore):
        assert isinstance(opened, PasskeyStore)
        yield opened


def test_the_sql_metadata_stores_are_passkey_stores(metadata_store: MetadataStore) -> None:
    assert isinstance(metadata_store, PasskeyStore)
    assert metadata_store.schema_version() >= 2  # type: ignore[attr-defined]


def test_add_get_list(store: PasskeyStore) -> None:
    first = record(b"\x02" * 16, created_at=5.0)
    second = record(b"\x01" * 16, created_at=5.0, wrapped=None)
    third = record(b"\x00" * 40, created_at=1.0)
    for r in (first, second, third):
        store.add_passkey(r)
    store.add_passkey(record(b"\x03" * 16, BOB))
    assert store.get_passkey(ALICE, first.credential_id) == first
    assert store.get_passkey(ALICE, second.credential_id) == second  # no wrapped key
    assert store.get_passkey(BOB, first.credential_id) is None  # another user's view
    assert store.get_passkey(ALICE, b"\x09" * 16) is None
    # by creation time, then credential id bytewise
    assert store.list_passkeys(ALICE) == [third, second, first]
    assert [r.credential_id for r in store.list_passkeys(BOB)] == [b"\x03" * 16]
    assert store.list_passkeys(b"nobody") == []


def test_a_credential_id_is_registered_once_for_everyone(store: PasskeyStore) -> None:
    store.add_passkey(record())
    with pytest.raises(InvalidParameter):
        store.add_passkey(record(sign_count=7))
    with pytest.raises(InvalidParameter):
        store.add_passkey(record(user=BOB))
    assert store.get_passkey(ALICE, record().credential_id) == record()
    assert store.list_passkeys(BOB) == []


@pytest.mark.parametrize(
    "bad",
    [
        {"user_id": b""},
        {"credential_id": b""},
        {"credential_id": b"x" * 1024},
        {"public_key": b""},
        {"sign_count": -1},
        {"sign_count": 1 << 32},
        {"prf_salt": b"short"},
        {"wrapped_key": b""},
    ],
)
def test_invalid_passkey_fields_are_refused(store: PasskeyStore, bad: dict[str, object]) -> None:
    with pytest.raises(InvalidParameter):
        store.add_passkey(replace(record(), **bad))  # type: ignore[arg-type]
    assert store.list_passkeys(ALICE) == []


def test_update_is_a_compare_and_set(store: PasskeyStore) -> None:
    store.add_passkey(record(sign_count=3))
    cid = record().credential_id
    used = store.update_passkey(
        ALICE, cid, expected_sign_count=3, expected_prf_salt=SALT_A, sign_count=4, last_used_at=9.5
    )
    assert used == replace(record(), sign_count=4, last_used_at=9.5)
    assert store.get_passkey(ALICE, cid) == used
    # stale expectations change nothing
    assert (
        store.update_passkey(
            ALICE,
            cid,
            expected_sign_count=3,
            expected_prf_salt=SALT_A,
            sign_count=5,
            last_used_at=1,
        )
        is None
    )
    assert (
        store.update_passkey(
            ALICE,
            cid,
            expected_sign_count=4,
            expected_prf_salt=SALT_B,
            sign_count=5,
            last_used_at=1,
        )
        is None
    )
    assert (
        store.update_passkey(
            BOB, cid, expected_sign_count=4, expected_prf_salt=SALT_A, sign_count=5, last_used_at=1
        )
        is None
    )
    assert store.get_passkey(ALICE, cid) == used


def test_update_sets_wrapped_key_and_salt_together(store: PasskeyStore) -> None:
    store.add_passkey(record(wrapped=None))
    cid = record().credential_id
    wrap_1, wrap_2 = b"\x01" + b"1" * 92, b"\x01" + b"2" * 92
    first = store.update_passkey(
        ALICE,
        cid,
        expected_sign_count=0,
        expected_prf_salt=SALT_A,
        sign_count=0,
        last_used_at=2.0,
        wrapped_key=wrap_1,
    )
    assert first is not None
    assert (first.prf_salt, first.wrapped_key) == (SALT_A, wrap_1)
    rotated = store.update_passkey(
        ALICE,
        cid,
        expected_sign_count=0,
        expected_prf_salt=SALT_A,
        sign_count=0,
        last_used_at=3.0,
        prf_salt=SALT_B,
        wrapped_key=wrap_2,
    )
    assert rotated is not None
    assert (rotated.prf_salt, rotated.wrapped_key) == (SALT_B, wrap_2)
    assert store.get_passkey(ALICE, cid) == rotated
    with pytest.raises(InvalidParameter):  # a new salt alone would orphan the wrap
        store.update_passkey(
            ALICE,
            cid,
            expected_sign_count=0,
            expected_prf_salt=SALT_B,
            sign_count=0,
            last_used_at=4.0,
            prf_salt=SALT_A,
        )
    assert store.get_passkey(ALICE, cid) == rotated


def test_racing_updates_exactly_one_wins(store: PasskeyStore) -> None:
    store.add_passkey(record(sign_count=10))
    cid = record().credential_id
    n = 8
    barrier = threading.Barrier(n)

    def run(i: int) -> PasskeyRecord | None:
        barrier.wait()
        return store.update_passkey(
            ALICE,
            cid,
            expected_sign_count=10,
            expected_prf_salt=SALT_A,
            sign_count=11 + i,
            last_used_at=float(i),
        )

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(run, range(n)))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    assert store.get_passkey(ALICE, cid) == winners[0]


def test_delete_is_immediate_and_per_user(store: PasskeyStore) -> None:
    store.add_passkey(record(b"\x01" * 16))
    store.add_passkey(record(b"\x02" * 16))
    assert store.delete_passkey(BOB, b"\x01" * 16) is False
    assert store.delete_passkey(ALICE, b"\x01" * 16) is True
    assert store.delete_passkey(ALICE, b"\x01" * 16) is False
    assert store.get_passkey(ALICE, b"\x01" * 16) is None
    assert [r.credential_id for r in store.list_passkeys(ALICE)] == [b"\x02" * 16]
    # the id can be registered again
    store.add_passkey(record(b"\x01" * 16, created_at=500.0))


def test_challenges_round_trip_and_are_consumed_once(store: PasskeyStore) -> None:
    offered = ((b"\x01" * 16, SALT_A), (b"\x02" * 70, SALT_B))
    issued = challenge(credential_id=b"\x01" * 16, new_prf_salt=SALT_B, offered_salts=offered)
    store.put_challenge(issued, purge_before=0.0)
    assert store.consume_challenge(BOB, issued.challenge) is None  # bound to its user
    assert store.consume_challenge(ALICE, issued.challenge) == issued
    replayed = store.consume_challenge(ALICE, issued.challenge)
    assert replayed == replace(issued, consumed=True)
    assert store.consume_challenge(ALICE, b"x" * 32) is None
    plain = challenge(b"r" * 32, ceremony="registration", new_prf_salt=SALT_A)
    store.put_challenge(plain, purge_before=0.0)
    assert store.consume_challenge(ALICE, plain.challenge) == plain
    with pytest.raises(InvalidParameter):
        store.put_challenge(plain, purge_before=0.0)  # unique


def test_racing_consumers_exactly_one_sees_a_fresh_challenge(store: PasskeyStore) -> None:
    store.put_challenge(challenge(), purge_before=0.0)
    n = 8
    barrier = threading.Barrier(n)

    def run(_: int) -> PasskeyChallenge | None:
        barrier.wait()
        return store.consume_challenge(ALICE, challenge().challenge)

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(run, range(n)))
    assert all(r is not None for r in results)
    assert sorted(r.consumed for r in results if r is not None) == [False] + [True] * (n - 1)


def test_expired_challenges_are_purged_on_put(store: PasskeyStore) -> None:
    store.put_challenge(challenge(b"o" * 32, expires_at=10.0), purge_before=0.0)
    store.put_challenge(challenge(b"n" * 32, expires_at=50.0), purge_before=0.0)
    store.put_challenge(challenge(b"z" * 32, expires_at=90.0), purge_before=20.0)
    assert store.consume_challenge(ALICE, b"o" * 32) is None
    assert store.consume_challenge(ALICE, b"n" * 32) is not None
    assert store.consume_challenge(ALICE, b"z" * 32) is not None


@pytest.mark.parametrize(
    "bad",
    [
        {"challenge": b"short"},
        {"user_id": b""},
        {"ceremony": "login"},
        {"credential_id": b""},
        {"new_prf_salt": b"x"},
        {"offered_salts": ((b"id", b"short"),)},
        {"consumed": True},
    ],
)
def test_invalid_challenges_are_refused(store: PasskeyStore, bad: dict[str, object]) -> None:
    with pytest.raises(InvalidParameter):
        store.put_challenge(replace(challenge(), **bad), purge_before=0.0)  # type: ignore[arg-type]
    assert store.consume_challenge(ALICE, challenge().challenge) is None


def test_passkeys_survive_a_restart(open_metadata_store: MetaOpener) -> None:
    before = open_metadata_store()
    assert isinstance(before, PasskeyStore)
    before.add_passkey(record())
    before.put_challenge(challenge(), purge_before=0.0)
    after = open_metadata_store()  # "crash": a new process opens the same database
    assert isinstance(after, PasskeyStore)
    assert after.get_passkey(ALICE, record().credential_id) == record()
    assert after.consume_challenge(ALICE, challenge().challenge) == challenge()


def test_offered_salts_encoding_round_trips_and_refuses_garbage() -> None:
    pairs = ((b"\x01", SALT_A), (b"\xff" * 1023, SALT_B))
    assert decode_offered_salts(encode_offered_salts(pairs)) == pairs
    assert decode_offered_salts(b"") == ()
    encoded = encode_offered_salts(pairs)
    for bad in (encoded[:-1], encoded + b"\x00", b"\x00\x00" + SALT_A):
        with pytest.raises(InvalidParameter):
            decode_offered_salts(bad)
