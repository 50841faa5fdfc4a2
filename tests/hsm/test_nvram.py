"""NVRAM: typed fields, a monotonic epoch, atomic writes, strict parsing of its record,
and a directory that can only live under a path containing ``nvram``."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hsmvault.errors import DecodeError, InvalidParameter
from hsmvault.hsm.nvram import (
    EPOCH_MAX,
    MAX_NODE_ID_LEN,
    DirectoryNvram,
    MemoryNvram,
    NodeIdentity,
    NvramError,
    NvramState,
    RollbackError,
    SignatureAlgorithm,
    SoftwareKeyMaterial,
)

# RFC 8032 §7.1 test 1 public key: a valid Ed25519 point.
ED25519_PK = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
IDENTITY = NodeIdentity(SignatureAlgorithm.ED25519, ED25519_PK)
MEMBERS = (b"a" * 32, b"b" * 32, b"c" * 32)


@pytest.fixture
def nvram_dir(tmp_path: Path) -> Path:
    return tmp_path / "node-0-nvram"


def _populate(nv: DirectoryNvram | MemoryNvram) -> None:
    nv.set_identity(IDENTITY)
    nv.set_membership(MEMBERS, epoch=3)
    nv.set_software_key_material(SoftwareKeyMaterial(bytes(range(32)), bytes(range(32, 64))))


# -- the directory -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["host-state", "node-0", "NVRAM-upper-case"])
def test_path_lacking_the_marker_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidParameter, match="nvram"):
        DirectoryNvram(tmp_path / name)
    assert not (tmp_path / name).exists()


def test_marker_present_only_before_resolving_is_refused(tmp_path: Path) -> None:
    (tmp_path / "nvram").mkdir()
    with pytest.raises(InvalidParameter):
        DirectoryNvram(tmp_path / "nvram" / ".." / "host")


def test_directory_is_created_private(nvram_dir: Path) -> None:
    with DirectoryNvram(nvram_dir) as nv:
        nv.advance()
    assert stat.S_IMODE(nvram_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((nvram_dir / "state.nvram").stat().st_mode) == 0o600


def test_path_that_is_a_file_refused(tmp_path: Path) -> None:
    (tmp_path / "nvram").write_bytes(b"")
    with pytest.raises(NvramError):
        DirectoryNvram(tmp_path / "nvram")


def test_fresh_nvram_is_empty(nvram_dir: Path) -> None:
    with DirectoryNvram(nvram_dir) as nv:
        assert nv.epoch() == 0
        assert nv.identity() is None
        assert nv.membership() == ()
        assert nv.software_key_material() is None


def test_fields_persist_across_reopen(nvram_dir: Path) -> None:
    with DirectoryNvram(nvram_dir) as nv:
        _populate(nv)
    with DirectoryNvram(nvram_dir) as nv:
        assert nv.identity() == IDENTITY
        stored = nv.identity()
        assert stored is not None
        assert stored.node_id == IDENTITY.node_id
        assert nv.membership() == MEMBERS
        assert nv.epoch() == 3
        assert nv.software_key_material() == SoftwareKeyMaterial(
            bytes(range(32)), bytes(range(32, 64))
        )


def test_second_opener_refused_until_first_closes(nvram_dir: Path) -> None:
    first = DirectoryNvram(nvram_dir)
    with pytest.raises(NvramError, match="in use"):
        DirectoryNvram(nvram_dir)
    first.close()
    DirectoryNvram(nvram_dir).close()


def test_closed_nvram_refuses_use(nvram_dir: Path) -> None:
    nv = DirectoryNvram(nvram_dir)
    nv.close()
    nv.close()  # idempotent
    with pytest.raises(NvramError):
        nv.epoch()
    with pytest.raises(NvramError):
        nv.advance()


# -- atomic writes -----------------------------------------------------------------------


def test_write_is_fsynced_before_rename_and_directory_after(
    nvram_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nv = DirectoryNvram(nvram_dir)
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync-dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync-file")
        real_fsync(fd)

    def replace(src: str, dst: str | Path) -> None:
        assert Path(src).parent == nvram_dir.resolve()  # same directory: rename is atomic
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    nv.advance()
    assert events == ["fsync-file", "rename", "fsync-dir"]
    nv.close()


def test_failed_write_leaves_old_record_on_disk_and_in_memory(
    nvram_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nv = DirectoryNvram(nvram_dir)
    nv.set_membership(MEMBERS, epoch=5)
    before = (nvram_dir / "state.nvram").read_bytes()

    def crash(src: str, dst: str | Path) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        nv.set_membership(MEMBERS[:1], epoch=6)
    assert nv.epoch() == 5
    assert nv.membership() == MEMBERS
    assert (nvram_dir / "state.nvram").read_bytes() == before
    assert sorted(p.name for p in nvram_dir.iterdir()) == ["lock", "state.nvram"]
    nv.close()


def test_crash_before_rename_keeps_the_old_record(nvram_dir: Path) -> None:
    with DirectoryNvram(nvram_dir) as nv:
        nv.advance(7)
    # A crash after writing the temporary file but before the rename leaves it behind.
    (nvram_dir / ".state-crashed").write_bytes(b"half a record")
    with DirectoryNvram(nvram_dir) as nv:
        assert nv.epoch() == 7
    assert not (nvram_dir / ".state-crashed").exists()


# -- the epoch ---------------------------------------------------------------------------


def test_advance_counts_up_and_jumps_forward() -> None:
    nv = MemoryNvram()
    assert nv.advance() == 1
    assert nv.advance() == 2
    assert nv.advance(10) == 10
    assert nv.epoch() == 10


def test_advance_to_the_current_epoch_is_a_no_op() -> None:
    nv = MemoryNvram()
    nv.advance(4)
    stored = nv.stored()
    assert nv.advance(4) == 4
    assert nv.stored() == stored


def test_epoch_never_goes_backwards(nvram_dir: Path) -> None:
    with DirectoryNvram(nvram_dir) as nv:
        nv.advance(9)
        with pytest.raises(RollbackError):
            nv.advance(8)
        with pytest.raises(RollbackError):
            nv.advance(0)
        assert nv.epoch() == 9
    with DirectoryNvram(nvram_dir) as nv:
        assert nv.epoch() == 9


def test_membership_change_with_a_lower_epoch_refused_and_changes_nothing() -> None:
    nv = MemoryNvram()
    nv.set_membership(MEMBERS, epoch=4)
    with pytest.raises(RollbackError):
        nv.set_membership(MEMBERS[:2], epoch=3)
    assert nv.membership() == MEMBERS
    assert nv.epoch() == 4


@pytest.mark.parametrize("bad", [EPOCH_MAX + 1, True, 1.0, "5"])
def test_epoch_outside_u64_or_not_an_int_refused(bad: object) -> None:
    nv = MemoryNvram()
    with pytest.raises(InvalidParameter):
        nv.advance(bad)  # type: ignore[arg-type]
    assert nv.epoch() == 0


def test_epoch_stops_at_its_maximum() -> None:
    nv = MemoryNvram()
    assert nv.advance(EPOCH_MAX) == EPOCH_MAX
    with pytest.raises(InvalidParameter):
        nv.advance()


@given(st.lists(st.one_of(st.none(), st.integers(0, 2**20)), max_size=30))
def test_epoch_is_monotonic_under_any_sequence_of_advances(steps: list[int | None]) -> None:
    nv = MemoryNvram()
    highest = 0
    for step in steps:
        try:
            got = nv.advance(step)
        except RollbackError:
            assert step is not None
            assert step < highest
            continue
        assert got >= highest
        highest = got
        assert nv.epoch() == highest
    assert NvramState.from_bytes(nv.stored() or NvramState().to_bytes()).epoch == highest


# -- other fields ------------------------------------------------------------------------


def test_identity_is_write_once() -> None:
    nv = MemoryNvram()
    nv.set_identity(IDENTITY)
    nv.set_identity(NodeIdentity(SignatureAlgorithm.ED25519, ED25519_PK))  # same: fine
    other = NodeIdentity(
        SignatureAlgorithm.ED25519,
        bytes.fromhex("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c"),
    )
    with pytest.raises(InvalidParameter):
        nv.set_identity(other)
    assert nv.identity() == IDENTITY


def test_software_keys_are_write_once() -> None:
    nv = MemoryNvram()
    keys = SoftwareKeyMaterial.generate()
    nv.set_software_key_material(keys)
    with pytest.raises(InvalidParameter):
        nv.set_software_key_material(SoftwareKeyMaterial.generate())
    assert nv.software_key_material() == keys


@pytest.mark.parametrize(
    "members",
    [
        [b"a", b"a"],
        [b""],
        [b"x" * (MAX_NODE_ID_LEN + 1)],
        ["not-bytes"],
    ],
)
def test_invalid_membership_refused(members: list[bytes]) -> None:
    nv = MemoryNvram()
    with pytest.raises(InvalidParameter):
        nv.set_membership(members)
    assert nv.membership() == ()


def test_invalid_identity_refused() -> None:
    with pytest.raises(InvalidParameter):
        NodeIdentity(SignatureAlgorithm.ED25519, b"\x00" * 31)
    with pytest.raises(InvalidParameter):
        NodeIdentity(SignatureAlgorithm.ECDSA_P256_SHA256, b"\x04" + b"\x00" * 64)  # off curve


def test_software_keys_never_shown() -> None:
    keys = SoftwareKeyMaterial(b"\x11" * 32, b"\x22" * 32)
    nv = MemoryNvram()
    nv.set_software_key_material(keys)
    for text in (repr(keys), str(keys), repr(nv.state)):
        assert "1111" not in text
        assert "2222" not in text
        assert "\\x11" not in text


# -- the record format -------------------------------------------------------------------


def _record(nvram_dir: Path) -> bytes:
    with DirectoryNvram(nvram_dir) as nv:
        _populate(nv)
    return (nvram_dir / "state.nvram").read_bytes()


def test_every_corrupted_byte_is_a_decode_error(nvram_dir: Path) -> None:
    record = _record(nvram_dir)
    for index in range(len(record)):
        corrupted = bytearray(record)
        corrupted[index] ^= 0x01
        (nvram_dir / "state.nvram").write_bytes(bytes(corrupted))
        with pytest.raises(DecodeError):
            DirectoryNvram(nvram_dir)


@pytest.mark.parametrize("how", ["empty", "truncated", "trailing", "other-file"])
def test_damaged_nvram_file_is_a_decode_error(nvram_dir: Path, how: str) -> None:
    record = _record(nvram_dir)
    damaged = {
        "empty": b"",
        "truncated": record[:-1],
        "trailing": record + b"\x00",
        "other-file": b'{"epoch": 99}',
    }[how]
    (nvram_dir / "state.nvram").write_bytes(damaged)
    with pytest.raises(DecodeError):
        DirectoryNvram(nvram_dir)
    # The failed open released its lock: once repaired, the NVRAM opens.
    (nvram_dir / "state.nvram").write_bytes(record)
    DirectoryNvram(nvram_dir).close()


def test_well_checksummed_but_malformed_record_is_a_decode_error() -> None:
    body = b"HVNV\x01" + (5).to_bytes(8, "big") + b"\x02"  # identity flag 2: invalid
    with pytest.raises(DecodeError, match="flag"):
        NvramState.from_bytes(body + hashlib.sha256(body).digest())


_identities = st.sampled_from(
    [
        None,
        IDENTITY,
        NodeIdentity(
            SignatureAlgorithm.ECDSA_P256_SHA256,
            bytes.fromhex(
                "046b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296"
                "4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5"
            ),
        ),
    ]
)


@given(
    epoch=st.integers(0, EPOCH_MAX),
    identity=_identities,
    members=st.lists(st.binary(min_size=1, max_size=MAX_NODE_ID_LEN), unique=True, max_size=8),
    keys=st.one_of(st.none(), st.binary(min_size=64, max_size=64)),
)
def test_record_round_trips(
    epoch: int, identity: NodeIdentity | None, members: list[bytes], keys: bytes | None
) -> None:
    material = None if keys is None else SoftwareKeyMaterial.from_bytes(keys)
    state = NvramState(epoch, identity, tuple(members), material)
    assert NvramState.from_bytes(state.to_bytes()) == state


@given(st.binary(max_size=200))
def test_garbage_record_is_a_decode_error(garbage: bytes) -> None:
    with pytest.raises(DecodeError):
        NvramState.from_bytes(garbage)


@given(st.binary(max_size=200))
def test_checksummed_garbage_is_a_decode_error_or_canonical(tail: bytes) -> None:
    body = b"HVNV\x01" + tail
    record = body + hashlib.sha256(body).digest()
    try:
        state = NvramState.from_bytes(record)
    except DecodeError:
        return
    assert state.to_bytes() == record
