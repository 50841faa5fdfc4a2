"""The witness client treats every answer as untrusted: valid answers captured from a
real witness are mutated one way at a time and served through ``httpx.MockTransport``;
each mutation must raise :class:`MalformedWitnessAnswer` (or the documented refusal /
unavailability), never pass or crash differently."""

from __future__ import annotations

import hashlib
import json
import socket
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from hsmvault.errors import Unavailable, VerificationError
from hsmvault.transparency.errors import WitnessRefused
from hsmvault.transparency.operator_messages import countersignature_message, submission_message
from hsmvault.transparency.signed_note import Signer
from hsmvault.transparency.signers import SoftwareEd25519Signer
from hsmvault.transparency.witness import WitnessConfig, WitnessServer, init_data_dir
from hsmvault.transparency.witness_client import (
    MalformedWitnessAnswer,
    WitnessClient,
    WitnessHttpRefused,
    verify_checkpoint,
)

from .conftest import NAME, NS, T0, FakeClock, artifact, ns_path

Answers = dict[str, Any]


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> Answers:
    """Valid answers of a real witness (2 entries, one counter-signed), by request path."""
    directory = tmp_path_factory.mktemp("witness-client") / "data"
    token = init_data_dir(directory, name=NAME, backend="software", now_ms=T0)
    operator = SoftwareEd25519Signer.generate()
    config = WitnessConfig(directory, clock=FakeClock(T0 + 1))
    with WitnessServer(config) as server, WitnessClient(server.url) as client:
        client.register_namespace(token, NS, 1, operator.public_key())
        for epoch in (1, 2):
            data = artifact(NS, epoch)
            digest = hashlib.sha256(data).digest()
            entry = client.submit(
                NS, epoch, data, operator.sign(submission_message(NS, epoch, digest))
            )
        client.put_countersignature(NS, 2, operator.sign(countersignature_message(entry.signature)))
        paths = [
            "/info",
            "/namespaces",
            ns_path(NS),
            ns_path(NS) + "/audits/2",
            ns_path(NS) + "/last-verified-epoch",
            "/proofs/inclusion?leaf_index=0&tree_size=2",
            "/proofs/consistency?first=1&second=2",
        ]
        with httpx.Client(base_url=server.url) as http:
            out: Answers = {p: http.get(p).json() for p in paths}
            out["/checkpoint"] = http.get("/checkpoint").content
    return out


def _client(
    answers: Answers,
    path: str,
    mutate: Callable[[Any], Any] | None = None,
    *,
    raw: bytes | None = None,
    status: int = 200,
    content_type: str = "application/json",
) -> WitnessClient:
    def handler(request: httpx.Request) -> httpx.Response:
        key = request.url.raw_path.decode()
        if key != path:
            value = answers[key]
            body = value if isinstance(value, bytes) else json.dumps(value).encode()
            kind = "text/plain" if isinstance(value, bytes) else "application/json"
            return httpx.Response(200, content=body, headers={"content-type": kind})
        if raw is not None:
            body = raw
        else:
            value = answers[path]
            if mutate is not None:
                value = mutate(json.loads(json.dumps(value)))
            body = json.dumps(value).encode()
        return httpx.Response(status, content=body, headers={"content-type": content_type})

    return WitnessClient("http://witness.invalid", transport=httpx.MockTransport(handler))


def _set(key: str, value: Any) -> Callable[[Any], Any]:
    def mutate(obj: Any) -> Any:
        obj[key] = value
        return obj

    return mutate


def test_valid_answers_parse(answers: Answers) -> None:
    client = _client(answers, "")
    info = client.info()
    assert client.namespace(NS).last_verified_epoch == 2
    assert client.namespaces()[0].name == NS
    entry = client.audit(NS, 2)
    assert entry.operator_countersignature is not None
    assert client.last_verified_epoch(NS) == 2
    assert client.inclusion_proof(0, 2).proof
    assert client.consistency_proof(1, 2).proof
    assert verify_checkpoint(client.checkpoint(), info.log_key).tree_size == 2


@pytest.mark.parametrize(
    "mutate",
    [
        _set("extra", 1),
        _set("name", 5),
        _set("keys", []),
        _set("log_key", "not a vkey"),
        lambda o: {**o, "log_key": Signer("other", bytes(32)).verifier().to_vkey()},
        lambda o: {**o, "keys": [{**o["keys"][0], "key_id": "00" * 32}]},
        lambda o: {**o, "keys": [{**o["keys"][0], "not_before": True}]},
        lambda o: {**o, "keys": [{**o["keys"][0], "not_before": -1}]},
        lambda o: {
            **o,
            "keys": [{**o["keys"][0], "public_key": o["keys"][0]["public_key"].upper()}],
        },
        lambda o: {**o, "keys": [o["keys"][0], o["keys"][0]]},
    ],
)
def test_info_is_parsed_strictly(answers: Answers, mutate: Callable[[Any], Any]) -> None:
    with pytest.raises(MalformedWitnessAnswer):
        _client(answers, "/info", mutate).info()


@pytest.mark.parametrize(
    "mutate",
    [
        _set("epoch", 1),  # not what was asked
        _set("namespace", "other"),
        _set("signature", "AAAA"),
        _set("operator_countersignature", ""),
        _set("digest", "00" * 31),
        _set("leaf_index", 1.0),
        _set("ciphersuite", 2**32),
        lambda o: {k: v for k, v in o.items() if k != "artifact"},
        lambda o: {**o, "signature": o["signature"].rstrip("=")},
    ],
)
def test_audit_entries_are_parsed_strictly(answers: Answers, mutate: Callable[[Any], Any]) -> None:
    with pytest.raises(MalformedWitnessAnswer):
        _client(answers, ns_path(NS) + "/audits/2", mutate).audit(NS, 2)


@pytest.mark.parametrize(
    ("path", "call"),
    [
        (ns_path(NS), lambda c: c.namespace(NS)),
        ("/proofs/inclusion?leaf_index=0&tree_size=2", lambda c: c.inclusion_proof(0, 2)),
        ("/proofs/consistency?first=1&second=2", lambda c: c.consistency_proof(1, 2)),
        (ns_path(NS) + "/last-verified-epoch", lambda c: c.last_verified_epoch(NS)),
    ],
)
@pytest.mark.parametrize(
    "mutation",
    ["extra key", "wrong echo", "duplicate key", "float"],
)
def test_other_answers_are_parsed_strictly(
    answers: Answers, path: str, call: Callable[[WitnessClient], Any], mutation: str
) -> None:
    value = answers[path]
    first_key = next(iter(value))
    if mutation == "extra key":
        raw = json.dumps({**value, "zzz": 0}).encode()
    elif mutation == "wrong echo":
        echo = {"name": "other", "leaf_index": 1, "first": 2, "epoch": "1"}
        raw = json.dumps({**value, **{k: v for k, v in echo.items() if k in value}}).encode()
    elif mutation == "duplicate key":
        raw = b"{" + json.dumps(first_key).encode() + b":0," + json.dumps(value).encode()[1:]
    else:
        int_key = next(k for k, v in value.items() if type(v) is int)
        raw = json.dumps({**value, int_key: float(value[int_key])}).encode()
    with pytest.raises(MalformedWitnessAnswer):
        call(_client(answers, path, raw=raw))


def test_proof_elements_must_be_32_bytes(answers: Answers) -> None:
    path = "/proofs/inclusion?leaf_index=0&tree_size=2"
    short = lambda o: {**o, "proof": ["AAAA"]}  # noqa: E731
    with pytest.raises(MalformedWitnessAnswer):
        _client(answers, path, short).inclusion_proof(0, 2)
    many = lambda o: {**o, "proof": o["proof"] * 65}  # noqa: E731
    with pytest.raises(MalformedWitnessAnswer):
        _client(answers, path, many).inclusion_proof(0, 2)


def test_refusals_carry_the_witness_error_code(answers: Answers) -> None:
    body = json.dumps({"error": "out_of_order_epoch", "detail": "next is 3"}).encode()
    with pytest.raises(WitnessHttpRefused) as refused:
        _client(answers, ns_path(NS) + "/audits/2", raw=body, status=409).audit(NS, 2)
    assert (refused.value.status, refused.value.code, refused.value.detail) == (
        409,
        "out_of_order_epoch",
        "next is 3",
    )
    assert isinstance(refused.value, WitnessRefused)
    with pytest.raises(WitnessHttpRefused) as garbled:
        _client(
            answers, ns_path(NS) + "/audits/2", raw=b"<html>", status=403, content_type="text/html"
        ).audit(NS, 2)
    assert (garbled.value.status, garbled.value.code) == (403, "unparsable_error")


@pytest.mark.parametrize(
    ("status", "raw", "content_type", "error"),
    [
        (500, b"{}", "application/json", Unavailable),
        (503, b"", "text/plain", Unavailable),
        (302, b"", "text/plain", MalformedWitnessAnswer),
        (204, b"", "application/json", MalformedWitnessAnswer),
        (200, b'{"name":"x"}', "text/html", MalformedWitnessAnswer),
        (200, b"[" * 100_000, "application/json", MalformedWitnessAnswer),
        (200, b" " * (1 << 20) + b"{}", "application/json", MalformedWitnessAnswer),
    ],
)
def test_transport_level_answers(
    answers: Answers, status: int, raw: bytes, content_type: str, error: type[Exception]
) -> None:
    with pytest.raises(error):
        _client(answers, "/info", raw=raw, status=status, content_type=content_type).info()


def test_unreachable_witness_is_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with (
        WitnessClient(f"http://127.0.0.1:{port}", timeout=2.0) as client,
        pytest.raises(Unavailable),
    ):
        client.info()


def test_checkpoint_answers_are_checked(answers: Answers) -> None:
    note: bytes = answers["/checkpoint"]
    with pytest.raises(MalformedWitnessAnswer):
        _client(answers, "/checkpoint", raw=note, content_type="application/json").checkpoint()
    with pytest.raises(MalformedWitnessAnswer):
        _client(answers, "/checkpoint", raw=b"not a note\n", content_type="text/plain").checkpoint()
    client = _client(answers, "")
    stranger = Signer("witness.test/hsmvault", bytes(32)).verifier()
    with pytest.raises(VerificationError):
        verify_checkpoint(client.checkpoint(), stranger)


def test_submit_checks_the_answer_is_about_the_submission(answers: Answers) -> None:
    operator = SoftwareEd25519Signer.generate()
    entry = answers[ns_path(NS) + "/audits/2"]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(201, json=entry)

    client = WitnessClient("http://witness.invalid", transport=httpx.MockTransport(handler))
    other = artifact(NS, 3)
    digest = hashlib.sha256(other).digest()
    with pytest.raises(MalformedWitnessAnswer, match="not what was submitted"):
        client.submit(NS, 3, other, operator.sign(submission_message(NS, 3, digest)))
