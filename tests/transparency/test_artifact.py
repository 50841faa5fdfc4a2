"""The fleet-key artifact: canonical encoding, strict parsing, digest, diff (ADR 0010)."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hsmvault.errors import InvalidParameter
from hsmvault.transparency.artifact import (
    MAX_ARTIFACT_LEN,
    ArtifactChange,
    FleetEntry,
    FleetKeyArtifact,
    canonical_json,
    diff_artifacts,
    parse_canonical_json,
)
from hsmvault.transparency.errors import BundleFormatError
from tests.transparency.bundle_kit import NAMESPACE, T0, YEAR, TestFleet, artifact

_A, _B, _C = TestFleet("a"), TestFleet("b"), TestFleet("c")
_DOC = Path(__file__).resolve().parents[2] / "docs" / "formats" / "fleet-keys.md"


def _sample() -> FleetKeyArtifact:
    return artifact(
        7,
        (_A.entry(regions=("us-east", "eu-west")), _B.entry(status="retiring")),
        previous_digest=hashlib.sha256(b"epoch 6").digest(),
        decommissioned=(_C.fleet_id,),
    )


def test_round_trip_and_digest() -> None:
    art = _sample()
    data = art.to_bytes()
    again = FleetKeyArtifact.from_bytes(data)
    assert again == art
    assert again.to_bytes() == data
    assert art.digest() == hashlib.sha256(data).digest()
    assert data == canonical_json(json.loads(data))
    obj = json.loads(data)
    assert obj["version"] == 1
    assert [f["fleet_id"] for f in obj["fleets"]] == sorted([_A.fleet_id.hex(), _B.fleet_id.hex()])
    assert set(obj) == {
        "version",
        "namespace",
        "epoch",
        "issued_at",
        "previous_digest",
        "fleets",
        "decommissioned",
    }


def test_root_epoch_and_null_evidence_round_trip() -> None:
    art = artifact(0, (_A.entry(evidence_digest=None),))
    data = art.to_bytes()
    assert b'"previous_digest":null' in data
    assert b'"evidence_digest":null' in data
    assert FleetKeyArtifact.from_bytes(data) == art
    with_evidence = artifact(0, (_A.entry(evidence_digest=bytes(range(32))),))
    assert FleetKeyArtifact.from_bytes(with_evidence.to_bytes()) == with_evidence


def test_construction_normalises_order() -> None:
    one = artifact(1, (_A.entry(regions=("b", "a")), _B.entry()), decommissioned=(_C.fleet_id,))
    two = artifact(1, (_B.entry(), _A.entry(regions=("a", "b"))), decommissioned=(_C.fleet_id,))
    assert one.to_bytes() == two.to_bytes()
    assert [f.fleet_id for f in one.fleets] == sorted([_A.fleet_id, _B.fleet_id])
    assert one.entry_for(_A.fleet_id) is not None
    entry = one.entry_for(_A.fleet_id)
    assert entry is not None
    assert entry.regions == ("a", "b")


def test_entry_for_and_decommissioned() -> None:
    art = _sample()
    a = art.entry_for(_A.fleet_id)
    assert a is not None
    assert a.sig_public_key == _A.sig_public_key
    assert art.entry_for(_C.fleet_id) is None
    assert art.is_decommissioned(_C.fleet_id)
    assert not art.is_decommissioned(_A.fleet_id)
    assert art.entry_for(bytes(32)) is None


def test_valid_at_is_inclusive() -> None:
    entry = _A.entry(not_before=100, not_after=200)
    assert entry.valid_at(100)
    assert entry.valid_at(200)
    assert not entry.valid_at(99.999)
    assert not entry.valid_at(200.001)


# --- strict parsing ------------------------------------------------------------------


def _refused(edit: Callable[[dict[str, Any]], None]) -> None:
    obj = copy.deepcopy(_sample().to_dict())
    edit(obj)
    with pytest.raises(BundleFormatError):
        FleetKeyArtifact.from_bytes(canonical_json(obj))


def _fleet0(obj: dict[str, Any]) -> dict[str, Any]:
    fleet: dict[str, Any] = obj["fleets"][0]
    return fleet


def _set(path: str, value: object) -> Callable[[dict[str, Any]], None]:
    def edit(obj: dict[str, Any]) -> None:
        *head, last = path.split(".")
        target: Any = obj
        for part in head:
            target = target[int(part)] if part.isdigit() else target[part]
        target[last] = value

    return edit


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("version", 2),
        ("version", True),
        ("version", "1"),
        ("epoch", True),
        ("epoch", -1),
        ("epoch", 1 << 64),
        ("epoch", "7"),
        ("epoch", None),
        ("issued_at", False),
        ("issued_at", 1 << 63),
        ("namespace", ""),
        ("namespace", "has space"),
        ("namespace", "caf\u00e9"),
        ("namespace", "x" * 256),
        ("namespace", 7),
        ("previous_digest", "AB" * 32),
        ("previous_digest", "ab" * 31),
        ("previous_digest", "zz" * 32),
        ("previous_digest", ""),
        ("fleets", {}),
        ("fleets", None),
        ("decommissioned", "ab" * 32),
        ("decommissioned", ["AB" * 32]),
        ("fleets.0.fleet_id", "AB" * 32),
        ("fleets.0.fleet_id", "ab" * 33),
        ("fleets.0.status", "revoked"),
        ("fleets.0.status", "Active"),
        ("fleets.0.status", None),
        ("fleets.0.keys", []),
        ("fleets.0.keys.ake", "00" * 32),  # identity
        ("fleets.0.keys.ake", "ff" * 32),  # not canonical
        ("fleets.0.keys.enc", "ab" * 16),
        ("fleets.0.keys.sig", 5),
        ("fleets.0.not_before", True),
        ("fleets.0.not_after", -5),
        ("fleets.0.not_after", T0 - YEAR),  # == not_before
        ("fleets.0.not_after", T0 - YEAR - 1),  # < not_before
        ("fleets.0.regions", "eu-west"),
        ("fleets.0.regions", ["EU"]),
        ("fleets.0.regions", ["-eu"]),
        ("fleets.0.regions", [""]),
        ("fleets.0.regions", ["eu", "eu"]),
        ("fleets.0.regions", ["b", "a"]),  # not sorted: not canonical
        ("fleets.0.regions", [1]),
        ("fleets.0.regions", ["r" + str(i).zfill(2) for i in range(33)]),
        ("fleets.0.evidence_digest", "AB" * 32),
        ("fleets.0.evidence_digest", 0),
    ],
)
def test_bad_field_refused(path: str, value: object) -> None:
    _refused(_set(path, value))


def test_ake_with_high_bit_set_refused() -> None:
    bad = bytearray(_A.ake_public_key)
    bad[31] |= 0x80
    _refused(_set("fleets.0.keys.ake", bytes(bad).hex()))


@pytest.mark.parametrize(
    "edit",
    [
        lambda o: o.pop("epoch"),
        lambda o: o.update(extra=1),
        lambda o: _fleet0(o).pop("regions"),
        lambda o: _fleet0(o).update(comment="x"),
        lambda o: _fleet0(o)["keys"].pop("sig"),
        lambda o: _fleet0(o)["keys"].update(mac="00" * 32),
        lambda o: o["fleets"].append(copy.deepcopy(o["fleets"][0])),  # duplicate fleet id
        lambda o: o["fleets"].reverse(),  # unsorted
        lambda o: o["decommissioned"].append(o["decommissioned"][0]),
        lambda o: o["decommissioned"].append(o["fleets"][0]["fleet_id"]),  # listed and gone
        lambda o: o.update(fleets=[], decommissioned=[]),  # names no fleet
        lambda o: o.update(fleets=[o["fleets"][0]] * 65),
    ],
)
def test_bad_structure_refused(edit: Callable[[dict[str, Any]], None]) -> None:
    _refused(edit)


def test_empty_fleets_allowed_when_decommissioning() -> None:
    art = artifact(9, (), decommissioned=(_A.fleet_id, _B.fleet_id))
    assert FleetKeyArtifact.from_bytes(art.to_bytes()) == art
    with pytest.raises(InvalidParameter):
        artifact(9, ())


def test_unsorted_decommissioned_refused() -> None:
    art = artifact(9, (_A.entry(),), decommissioned=(_B.fleet_id, _C.fleet_id))
    obj = art.to_dict()
    obj["decommissioned"].reverse()
    with pytest.raises(BundleFormatError):
        FleetKeyArtifact.from_bytes(canonical_json(obj))


@pytest.mark.parametrize(
    "mangle",
    [
        lambda d: d + b"\n",
        lambda d: b" " + d,
        lambda d: d.replace(b'{"decommissioned"', b'{ "decommissioned"', 1),
        lambda d: d.replace(b'"epoch":7', b'"epoch":7.0', 1),
        lambda d: d.replace(b'"epoch":7', b'"epoch":7e0', 1),
        lambda d: d.replace(b'"epoch":7', b'"epoch":07', 1),
        lambda d: d.replace(b'"epoch":7', b'"epoch":NaN', 1),
        lambda d: d.replace(b'"epoch":7', b'"epoch":' + b"9" * 30, 1),
        lambda d: d.replace(b'"namespace":"hsmvault', b'"namespace":"\\u0068svault', 1),
        lambda d: d.replace(b'"epoch":7', b'"epoch":7,"epoch":7', 1),  # duplicate key
        lambda d: d.replace(b'"decommissioned":', b'"zz":1,"decommissioned":', 1),
        lambda d: d[:-1],
        lambda d: d.replace(b"hsmvault", "hsmv\u00e4ult".encode(), 1),  # not ASCII
        lambda d: b'{"epoch":7,' + d[1:].replace(b',"epoch":7', b"", 1),  # key order
        lambda d: b"[" * 5000 + b"]" * 5000,
        lambda d: b"",
        lambda d: b"null",
        lambda d: d + b" " * (MAX_ARTIFACT_LEN - len(d) + 1),
    ],
)
def test_non_canonical_bytes_refused(mangle: Callable[[bytes], bytes]) -> None:
    data = _sample().to_bytes()
    assert b'"epoch":7' in data
    bad = mangle(data)
    assert bad != data
    with pytest.raises(BundleFormatError):
        FleetKeyArtifact.from_bytes(bad)


def test_non_bytes_refused() -> None:
    with pytest.raises(BundleFormatError):
        FleetKeyArtifact.from_bytes(_sample().to_bytes().decode())  # type: ignore[arg-type]


def test_parse_canonical_json_accepts_only_canonical() -> None:
    assert parse_canonical_json(b'{"a":[1,"x",null]}', max_len=100, what="t") == {
        "a": [1, "x", None]
    }
    for bad in (b'{"a": 1}', b'{"b":1,"a":2}', b"1.5", b"true ", b'"\\u0041"', b'"\\u00E9"'):
        with pytest.raises(BundleFormatError):
            parse_canonical_json(bad, max_len=100, what="t")
    with pytest.raises(BundleFormatError):
        parse_canonical_json(b'{"a":1}', max_len=6, what="t")


def test_construction_checks() -> None:
    e = _A.entry()
    bad_entries: list[Callable[[], object]] = [
        lambda: FleetEntry(**{**e.__dict__, "fleet_id": b"x" * 31}),
        lambda: FleetEntry(**{**e.__dict__, "status": "gone"}),
        lambda: FleetEntry(**{**e.__dict__, "ake_public_key": bytes(32)}),
        lambda: FleetEntry(**{**e.__dict__, "enc_public_key": bytearray(32)}),
        lambda: FleetEntry(**{**e.__dict__, "not_before": 5, "not_after": 5}),
        lambda: FleetEntry(**{**e.__dict__, "not_before": True}),
        lambda: FleetEntry(**{**e.__dict__, "regions": ("a", "a")}),
        lambda: FleetEntry(**{**e.__dict__, "evidence_digest": b"1"}),
        lambda: artifact(1, (e, e)),
        lambda: artifact(1, (e,), decommissioned=(e.fleet_id,)),
        lambda: artifact(1, (e,), namespace="a b"),
        lambda: artifact(-1, (e,)),
        lambda: artifact(1, (e,), previous_digest=b"short"),
        lambda: FleetKeyArtifact(NAMESPACE, 1, T0, None, (e,), (), version=2),
    ]
    for make in bad_entries:
        with pytest.raises(InvalidParameter):
            make()


# --- diff ----------------------------------------------------------------------------


def test_diff_of_a_rotation_and_decommissioning() -> None:
    e1 = artifact(1, (_A.entry(),))
    e2 = artifact(2, (_A.entry(status="retiring"), _B.entry()), previous_digest=e1.digest())
    changes = diff_artifacts(e1, e2)
    kinds = [(c.kind, c.fleet_id) for c in changes]
    assert ("epoch_changed", None) in kinds
    assert ("status_changed", _A.fleet_id) in kinds
    assert ("fleet_added", _B.fleet_id) in kinds
    assert not any(k == "chain_broken" for k, _ in kinds)
    assert all(isinstance(c, ArtifactChange) and str(c) for c in changes)
    status = next(c for c in changes if c.kind == "status_changed")
    assert "active -> retiring" in str(status)

    e3 = artifact(
        3,
        (_B.entry(),),
        previous_digest=e2.digest(),
        decommissioned=(_A.fleet_id,),
        issued_at=T0 + 10,
    )
    kinds3 = [(c.kind, c.fleet_id) for c in diff_artifacts(e2, e3)]
    assert kinds3 == [
        ("epoch_changed", None),
        ("reissued", None),
        ("fleet_removed", _A.fleet_id),
        ("decommissioned", _A.fleet_id),
    ]
    back = [(c.kind, c.fleet_id) for c in diff_artifacts(e3, e2)]
    assert ("undecommissioned", _A.fleet_id) in back
    assert ("fleet_added", _A.fleet_id) in back


def test_diff_details() -> None:
    old = artifact(4, (_A.entry(),))
    new_a = FleetEntry(
        fleet_id=_A.fleet_id,
        status="active",
        ake_public_key=_B.ake_public_key,
        enc_public_key=_A.enc_public_key,
        sig_public_key=_B.sig_public_key,
        not_before=T0,
        not_after=T0 + 5,
        regions=("us-east",),
        evidence_digest=bytes(32),
    )
    new = artifact(5, (new_a,), previous_digest=bytes(32))
    by_kind = {c.kind: c for c in diff_artifacts(old, new)}
    assert set(by_kind) == {
        "epoch_changed",
        "chain_broken",
        "keys_changed",
        "window_changed",
        "regions_changed",
        "evidence_changed",
    }
    assert by_kind["keys_changed"].detail == "new ake, sig key"
    assert f"[{T0}, {T0 + 5}]" in by_kind["window_changed"].detail
    assert diff_artifacts(old, old) == []
    renamed = artifact(4, (_A.entry(),), namespace="other")
    assert [c.kind for c in diff_artifacts(old, renamed)] == ["namespace_changed"]


# --- the worked example of docs/formats/fleet-keys.md -----------------------------------


def test_documented_example_parses_and_digest_matches() -> None:
    text = _DOC.read_text(encoding="utf-8")
    example = re.search(r"<!-- example-artifact -->\n```\n(.+?)\n```", text, re.DOTALL)
    digest = re.search(r"<!-- example-digest -->\n```\n([0-9a-f]{64})\n```", text)
    pretty = re.search(r"<!-- example-pretty -->\n```json\n(.+?)\n```", text, re.DOTALL)
    assert example is not None
    assert digest is not None
    assert pretty is not None
    data = example.group(1).encode("ascii")
    art = FleetKeyArtifact.from_bytes(data)
    assert art.digest().hex() == digest.group(1)
    assert canonical_json(json.loads(pretty.group(1))) == data


# --- property tests --------------------------------------------------------------------

_fleets = st.sampled_from([_A, _B, _C])
_region = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)


@st.composite
def _artifacts(draw: st.DrawFn) -> FleetKeyArtifact:
    chosen = draw(st.lists(_fleets, min_size=1, max_size=3, unique_by=lambda f: f.label))
    entries = []
    for f in chosen:
        nb = draw(st.integers(0, (1 << 63) - 2))
        na = draw(st.integers(nb + 1, (1 << 63) - 1))
        entries.append(
            f.entry(
                status=draw(st.sampled_from(["active", "retiring"])),
                not_before=nb,
                not_after=na,
                regions=tuple(draw(st.lists(_region, max_size=3, unique=True))),
                evidence_digest=draw(st.none() | st.binary(min_size=32, max_size=32)),
            )
        )
    return artifact(
        draw(st.integers(0, (1 << 64) - 1)),
        tuple(entries),
        namespace=draw(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1)),
        issued_at=draw(st.integers(0, (1 << 63) - 1)),
        previous_digest=draw(st.none() | st.binary(min_size=32, max_size=32)),
        decommissioned=tuple(
            draw(st.lists(st.binary(min_size=32, max_size=32), max_size=2, unique=True))
        ),
    )


@given(_artifacts())
def test_property_round_trip(art: FleetKeyArtifact) -> None:
    data = art.to_bytes()
    assert FleetKeyArtifact.from_bytes(data) == art
    assert hashlib.sha256(data).digest() == art.digest()


@given(st.binary(max_size=600))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    with pytest.raises(BundleFormatError):
        FleetKeyArtifact.from_bytes(data)


@given(st.data())
def test_fuzz_single_byte_mutation(data: st.DataObject) -> None:
    original = _sample().to_bytes()
    pos = data.draw(st.integers(0, len(original) - 1))
    value = data.draw(st.integers(0, 255).filter(lambda b: b != original[pos]))
    mutated = original[:pos] + bytes([value]) + original[pos + 1 :]
    try:
        parsed = FleetKeyArtifact.from_bytes(mutated)
    except BundleFormatError:
        return
    # Only a mutation into another *valid canonical* artifact may parse (a hex digit).
    assert parsed.to_bytes() == mutated
    assert parsed.digest() != _sample().digest()
