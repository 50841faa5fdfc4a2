"""Hypothesis against the witness's request parsing, through the real server: whatever
the bytes or JSON shape of a body or query, the answer is a 4xx error body (400 for a
wrong shape), never a 500, and nothing changes in the witness's state."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hsmvault.transparency.signers import SoftwareEd25519Signer
from hsmvault.transparency.witness import WitnessConfig, WitnessServer, init_data_dir

from .conftest import NAME, NS, T0, FakeClock, artifact, ns_path, submission_body

_SETTINGS = settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)

_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[httpx.Client, dict[str, Any]]]:
    """A witness with NS registered and epoch 1 witnessed; a valid epoch-2 body."""
    directory = Path(tmp_path_factory.mktemp("witness-props")) / "data"
    token = init_data_dir(directory, name=NAME, backend="software", now_ms=T0)
    operator = SoftwareEd25519Signer.generate()
    with (
        WitnessServer(WitnessConfig(directory, clock=FakeClock(T0 + 1))) as server,
        httpx.Client(base_url=server.url, timeout=10.0) as http,
    ):
        body = {"name": NS, "root_epoch": 1, "operator_public_key": operator.public_key().hex()}
        assert (
            http.post(
                "/namespaces", json=body, headers={"Authorization": f"Bearer {token}"}
            ).status_code
            == 201
        )
        assert (
            http.post(
                ns_path(NS) + "/audits", json=submission_body(operator, NS, 1, artifact(NS, 1))
            ).status_code
            == 201
        )
        yield http, submission_body(operator, NS, 2, artifact(NS, 2))


def _snapshot(http: httpx.Client) -> tuple[bytes, Any]:
    return http.get("/checkpoint").content, http.get(ns_path(NS)).json()


def _error(response: httpx.Response, statuses: tuple[int, ...]) -> None:
    assert response.status_code in statuses, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error", "detail"}
    assert isinstance(body["error"], str)


@_SETTINGS
@given(raw=st.binary(max_size=300) | st.text(max_size=200).map(str.encode))
def test_arbitrary_bytes_are_400(world: tuple[httpx.Client, dict[str, Any]], raw: bytes) -> None:
    http, _ = world
    before = _snapshot(http)
    _error(http.post(ns_path(NS) + "/audits", content=raw), (400,))
    _error(http.put(ns_path(NS) + "/audits/1/countersignature", content=raw), (400,))
    assert _snapshot(http) == before


@_SETTINGS
@given(value=_json_values)
def test_arbitrary_json_is_400(world: tuple[httpx.Client, dict[str, Any]], value: Any) -> None:
    http, _ = world
    before = _snapshot(http)
    raw = json.dumps(value)  # NaN and Infinity included
    _error(http.post(ns_path(NS) + "/audits", content=raw), (400,))
    _error(http.put(ns_path(NS) + "/audits/1/countersignature", content=raw), (400,))
    assert _snapshot(http) == before


def _wrong_type(field: str) -> st.SearchStrategy[Any]:
    """Values that are never a valid ``field`` of a submission."""
    if field == "epoch":
        return (
            st.none()
            | st.booleans()
            | st.text(max_size=5)
            | st.floats(allow_nan=False, allow_infinity=False)
            | st.integers(max_value=-1)
            | st.integers(min_value=2**64, max_value=2**66)
            | st.lists(st.integers(), max_size=2)
        )
    not_strings = (
        st.none() | st.booleans() | st.integers() | st.lists(st.text(max_size=3), max_size=2)
    )
    if field == "digest":
        return (
            not_strings
            | st.text(max_size=70).filter(lambda t: len(t) != 64)
            | st.from_regex(r"[0-9A-F]{64}", fullmatch=True).filter(lambda t: t != t.lower())
        )
    return not_strings | st.text(alphabet="!*.- \n", min_size=1, max_size=10) | st.just("")


@_SETTINGS
@given(data=st.data())
def test_one_wrong_field_is_400(
    world: tuple[httpx.Client, dict[str, Any]], data: st.DataObject
) -> None:
    http, good = world
    field = data.draw(st.sampled_from(sorted(good)))
    body = dict(good)
    body[field] = data.draw(_wrong_type(field))
    before = _snapshot(http)
    _error(http.post(ns_path(NS) + "/audits", json=body), (400,))
    assert _snapshot(http) == before


@_SETTINGS
@given(data=st.data())
def test_missing_or_extra_keys_are_400(
    world: tuple[httpx.Client, dict[str, Any]], data: st.DataObject
) -> None:
    http, good = world
    body = dict(good)
    if data.draw(st.booleans()):
        del body[data.draw(st.sampled_from(sorted(good)))]
    else:
        body[data.draw(st.text(max_size=8).filter(lambda k: k not in good))] = data.draw(
            _json_values
        )
    _error(http.post(ns_path(NS) + "/audits", content=json.dumps(body)), (400,))


@_SETTINGS
@given(signature=st.binary(min_size=64, max_size=64), epoch=st.integers(0, 2**64 - 1))
def test_well_formed_forgeries_are_refused_without_effect(
    world: tuple[httpx.Client, dict[str, Any]], signature: bytes, epoch: int
) -> None:
    http, good = world
    before = _snapshot(http)
    body = {**good, "epoch": epoch, "submission_signature": base64.b64encode(signature).decode()}
    _error(http.post(ns_path(NS) + "/audits", json=body), (401,))
    counter = {"signature": base64.b64encode(signature).decode()}
    _error(http.put(ns_path(NS) + "/audits/1/countersignature", json=counter), (401,))
    assert _snapshot(http) == before


@_SETTINGS
@given(
    query=st.dictionaries(
        st.sampled_from(["leaf_index", "tree_size", "first", "second", "x"]),
        st.text(max_size=22),
        max_size=3,
    )
)
def test_proof_queries_never_500(
    world: tuple[httpx.Client, dict[str, Any]], query: dict[str, str]
) -> None:
    http, _ = world
    for route in ("/proofs/inclusion", "/proofs/consistency"):
        response = http.get(route, params=query)
        if response.status_code == 200:
            assert set(response.json()) >= {"proof"}
        else:
            _error(response, (400,))


@_SETTINGS
@given(value=_json_values, token=st.sampled_from(["good", "bad", "none"]))
def test_registration_bodies_never_500(
    world: tuple[httpx.Client, dict[str, Any]], value: Any, token: str
) -> None:
    http, _ = world
    headers = {} if token == "none" else {"Authorization": "Bearer x"}
    response = http.post("/namespaces", content=json.dumps(value), headers=headers)
    _error(response, (401, 403))  # authentication comes before parsing
