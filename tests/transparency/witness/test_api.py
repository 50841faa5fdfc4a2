"""The witness HTTP API through a real uvicorn server on 127.0.0.1: the rules of ADR 0010
(epoch order, root epoch, unique digests, digest = SHA-256(artifact), operator-signed
submissions and counter-signatures, admin-only registration), the answers' shapes, and
the Merkle log behind them (inclusion and consistency proofs, signed checkpoints)."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from hsmvault.errors import InvalidParameter, VerificationError
from hsmvault.transparency import merkle
from hsmvault.transparency.checkpoint import parse_checkpoint
from hsmvault.transparency.log_entry import decode_log_leaf
from hsmvault.transparency.operator_messages import countersignature_message, submission_message
from hsmvault.transparency.plexi import decode_signature_message
from hsmvault.transparency.signed_note import Verifier, open_note
from hsmvault.transparency.signers import SoftwareEd25519Signer
from hsmvault.transparency.witness import WitnessConfig
from hsmvault.transparency.witness_client import (
    AuditEntry,
    WitnessClient,
    WitnessHttpRefused,
    verify_checkpoint,
)

from .conftest import NAME, NS, T0, FakeClock, WitnessDir, artifact, ns_path, submission_body


def _submit(
    client: WitnessClient, operator: SoftwareEd25519Signer, ns: str, epoch: int, data: bytes
) -> AuditEntry:
    digest = hashlib.sha256(data).digest()
    return client.submit(ns, epoch, data, operator.sign(submission_message(ns, epoch, digest)))


def _refused(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}
    assert body["error"] == code


def _admin(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ----------------------------------------------------------------------------- /info


def test_info_lists_the_key_and_the_log_key(client: WitnessClient, witness_dir: WitnessDir) -> None:
    info = client.info()
    assert info.name == NAME
    assert len(info.keys) == 1
    key = info.keys[0]
    assert key.not_before == T0
    assert key.key_id == hashlib.sha256(key.public_key).digest()
    assert info.log_key.name == NAME
    assert info.log_key.public_key != key.public_key  # one key never signs two formats


def test_info_wire_shape(http: httpx.Client) -> None:
    body = http.get("/info").json()
    assert set(body) == {"name", "keys", "log_key"}
    assert set(body["keys"][0]) == {"key_id", "public_key", "not_before"}
    Verifier.from_vkey(body["log_key"])


# ----------------------------------------------------------------------------- registration


def test_registration_needs_the_admin_token(
    http: httpx.Client, witness_dir: WitnessDir, operator: SoftwareEd25519Signer
) -> None:
    body = {"name": NS, "root_epoch": 1, "operator_public_key": operator.public_key().hex()}
    _refused(http.post("/namespaces", json=body), 401, "unauthorized")
    assert http.post("/namespaces", json=body).headers["www-authenticate"] == "Bearer"
    _refused(
        http.post("/namespaces", json=body, headers={"Authorization": "Basic x"}),
        401,
        "unauthorized",
    )
    wrong = "A" * len(witness_dir.admin_token)
    _refused(http.post("/namespaces", json=body, headers=_admin(wrong)), 403, "forbidden")
    _refused(
        http.post("/namespaces", json=body, headers=_admin(witness_dir.admin_token[:-1])),
        403,
        "forbidden",
    )
    assert http.get("/namespaces").json() == {"namespaces": []}
    created = http.post("/namespaces", json=body, headers=_admin(witness_dir.admin_token))
    assert created.status_code == 201
    assert created.json() == {
        "name": NS,
        "root_epoch": 1,
        "last_verified_epoch": None,
        "operator_public_key": operator.public_key().hex(),
        "status": "online",
    }


def test_registration_is_idempotent_but_never_changes(
    client: WitnessClient, witness_dir: WitnessDir, operator: SoftwareEd25519Signer
) -> None:
    token = witness_dir.admin_token
    first = client.register_namespace(token, NS, 3, operator.public_key())
    assert client.register_namespace(token, NS, 3, operator.public_key()) == first
    other = SoftwareEd25519Signer.generate().public_key()
    for root, key in ((4, operator.public_key()), (3, other)):
        with pytest.raises(WitnessHttpRefused) as refused:
            client.register_namespace(token, NS, root, key)
        assert (refused.value.status, refused.value.code) == (409, "already_registered")
    assert client.namespace(NS) == first


@pytest.mark.parametrize(
    "name",
    [
        "",
        "a b",
        "/lead",
        "trail/",
        "a//b",
        "a/./b",
        "a/../b",
        "x/audits",
        "last-verified-epoch",
        "x/countersignature/y",
        "é",
        "a" * 256,
    ],
)
def test_registration_refuses_bad_namespace_names(
    http: httpx.Client, witness_dir: WitnessDir, operator: SoftwareEd25519Signer, name: str
) -> None:
    body = {"name": name, "root_epoch": 1, "operator_public_key": operator.public_key().hex()}
    _refused(
        http.post("/namespaces", json=body, headers=_admin(witness_dir.admin_token)),
        400,
        "malformed",
    )


def test_registration_refuses_bad_operator_keys(
    http: httpx.Client, witness_dir: WitnessDir
) -> None:
    for key in ("00" * 31, "AA" * 32, "zz" * 32, 5):
        body = {"name": NS, "root_epoch": 1, "operator_public_key": key}
        _refused(
            http.post("/namespaces", json=body, headers=_admin(witness_dir.admin_token)),
            400,
            "malformed",
        )


# ----------------------------------------------------------------------------- submissions


def test_submission_round_trip(
    client: WitnessClient, registered: str, operator: SoftwareEd25519Signer, clock: FakeClock
) -> None:
    assert client.last_verified_epoch(NS) is None
    data = artifact(NS, 1)
    entry = _submit(client, operator, NS, 1, data)
    assert (entry.namespace, entry.epoch, entry.leaf_index) == (NS, 1, 0)
    assert entry.timestamp == clock.now
    assert entry.digest == hashlib.sha256(data).digest()
    assert entry.artifact == data
    assert entry.ciphersuite == 1
    assert entry.operator_countersignature is None
    info = client.info()
    assert entry.key_id == info.keys[0].key_id
    # The witness signed exactly the Plexi SignatureMessage of the entry.
    Ed25519PublicKey.from_public_bytes(info.keys[0].public_key).verify(
        entry.signature, entry.message().encode()
    )
    message, signature = decode_log_leaf(entry.leaf())
    assert decode_signature_message(message) == entry.message()
    assert signature == entry.signature
    assert client.audit(NS, 1) == entry
    assert client.last_verified_epoch(NS) == 1
    assert client.namespace(NS).last_verified_epoch == 1


def test_epochs_must_follow_the_root_then_last_plus_one(
    client: WitnessClient,
    witness_dir: WitnessDir,
    operator: SoftwareEd25519Signer,
    http: httpx.Client,
) -> None:
    client.register_namespace(witness_dir.admin_token, NS, 7, operator.public_key())
    for wrong in (0, 1, 6, 8, 2**64 - 1):  # the first epoch must be the root epoch
        response = http.post(
            ns_path(NS) + "/audits", json=submission_body(operator, NS, wrong, artifact(NS, wrong))
        )
        _refused(response, 409, "out_of_order_epoch")
    _submit(client, operator, NS, 7, artifact(NS, 7))
    for wrong in (6, 7, 9, 100):
        response = http.post(
            ns_path(NS) + "/audits",
            json=submission_body(operator, NS, wrong, artifact(NS, wrong, "x")),
        )
        _refused(response, 409, "out_of_order_epoch")
    _submit(client, operator, NS, 8, artifact(NS, 8))
    assert client.last_verified_epoch(NS) == 8
    assert [client.audit(NS, e).leaf_index for e in (7, 8)] == [0, 1]


def test_a_digest_is_signed_once_in_any_namespace(
    client: WitnessClient,
    witness_dir: WitnessDir,
    registered: str,
    operator: SoftwareEd25519Signer,
    http: httpx.Client,
) -> None:
    data = artifact(NS, 1)
    _submit(client, operator, NS, 1, data)
    # Same namespace, next epoch, same bytes.
    _refused(
        http.post(ns_path(NS) + "/audits", json=submission_body(operator, NS, 2, data)),
        409,
        "duplicate_digest",
    )
    # Another namespace (same operator) at its root epoch.
    client.register_namespace(witness_dir.admin_token, "other/ns", 1, operator.public_key())
    _refused(
        http.post(
            ns_path("other/ns") + "/audits", json=submission_body(operator, "other/ns", 1, data)
        ),
        409,
        "duplicate_digest",
    )
    # Another namespace with another operator.
    second = SoftwareEd25519Signer.generate()
    client.register_namespace(witness_dir.admin_token, "third", 1, second.public_key())
    _refused(
        http.post(ns_path("third") + "/audits", json=submission_body(second, "third", 1, data)),
        409,
        "duplicate_digest",
    )
    assert client.last_verified_epoch("other/ns") is None
    assert client.last_verified_epoch(NS) == 1


def test_digest_must_be_the_sha256_of_the_artifact(
    http: httpx.Client, registered: str, operator: SoftwareEd25519Signer, client: WitnessClient
) -> None:
    data = artifact(NS, 1)
    body = submission_body(operator, NS, 1, data)
    body["artifact"] = base64.b64encode(data + b" ").decode()  # signature still covers the digest
    _refused(http.post(ns_path(NS) + "/audits", json=body), 400, "digest_mismatch")
    assert client.last_verified_epoch(NS) is None


def test_submissions_must_be_signed_by_the_operator(
    http: httpx.Client, registered: str, operator: SoftwareEd25519Signer, client: WitnessClient
) -> None:
    data = artifact(NS, 1)
    digest = hashlib.sha256(data).digest()
    good = submission_body(operator, NS, 1, data)
    forgeries: list[dict[str, Any]] = []
    stranger = SoftwareEd25519Signer.generate()
    forgeries.append(submission_body(stranger, NS, 1, data))  # another key
    for ns, epoch in (("other", 1), (NS, 2)):  # signed for another namespace or epoch
        wrong = dict(good)
        wrong["submission_signature"] = base64.b64encode(
            operator.sign(submission_message(ns, epoch, digest))
        ).decode()
        forgeries.append(wrong)
    zeros = dict(good)
    zeros["submission_signature"] = base64.b64encode(bytes(64)).decode()
    forgeries.append(zeros)
    flipped = bytearray(base64.b64decode(good["submission_signature"]))
    flipped[0] ^= 1
    forgeries.append({**good, "submission_signature": base64.b64encode(bytes(flipped)).decode()})
    for body in forgeries:
        _refused(http.post(ns_path(NS) + "/audits", json=body), 401, "bad_submission_signature")
    assert client.last_verified_epoch(NS) is None
    assert http.post(ns_path(NS) + "/audits", json=good).status_code == 201


def test_unknown_namespace_and_epoch_are_404(
    http: httpx.Client, registered: str, operator: SoftwareEd25519Signer
) -> None:
    _refused(http.get(ns_path("nope")), 404, "not_found")
    _refused(http.get(ns_path("nope") + "/last-verified-epoch"), 404, "not_found")
    _refused(
        http.post(ns_path("nope") + "/audits", json=submission_body(operator, "nope", 1, b"x")),
        404,
        "not_found",
    )
    _refused(http.get(ns_path(NS) + "/audits/1"), 404, "not_found")
    _refused(http.get("/no/such/route"), 404, "not_found")


def test_namespace_paths_accept_raw_or_encoded_slashes(
    http: httpx.Client, registered: str, client: WitnessClient, operator: SoftwareEd25519Signer
) -> None:
    _submit(client, operator, NS, 1, artifact(NS, 1))
    assert http.get("/namespaces/hsmvault/local").json()["name"] == NS
    assert http.get("/namespaces/hsmvault%2Flocal/audits/1").json()["epoch"] == 1
    assert http.get("/namespaces/hsmvault/local/last-verified-epoch").json() == {"epoch": 1}


# ----------------------------------------------------------------------------- counter-signatures


def test_countersignature_is_verified_and_stored_once(
    client: WitnessClient, registered: str, operator: SoftwareEd25519Signer, http: httpx.Client
) -> None:
    entry = _submit(client, operator, NS, 1, artifact(NS, 1))
    path = ns_path(NS) + "/audits/1/countersignature"
    stranger = SoftwareEd25519Signer.generate()
    forged = [
        stranger.sign(countersignature_message(entry.signature)),
        operator.sign(entry.signature),  # no domain separation
        operator.sign(countersignature_message(bytes(64))),
        bytes(64),
    ]
    for signature in forged:
        _refused(
            http.put(path, json={"signature": base64.b64encode(signature).decode()}),
            401,
            "bad_countersignature",
        )
    assert client.audit(NS, 1).operator_countersignature is None
    good = operator.sign(countersignature_message(entry.signature))
    stored = client.put_countersignature(NS, 1, good)
    assert stored.operator_countersignature == good
    assert client.put_countersignature(NS, 1, good) == stored  # same bytes: a no-op
    for signature in forged:
        _refused(
            http.put(path, json={"signature": base64.b64encode(signature).decode()}),
            401,
            "bad_countersignature",
        )
    assert client.audit(NS, 1).operator_countersignature == good
    _refused(
        http.put(
            ns_path(NS) + "/audits/2/countersignature",
            json={"signature": base64.b64encode(good).decode()},
        ),
        404,
        "not_found",
    )
    # The counter-signature is stored, not logged: the tree did not grow.
    assert (
        parse_checkpoint(open_note(client.checkpoint(), [client.info().log_key]).text).tree_size
        == 1
    )


# ----------------------------------------------------------------------------- log and proofs


def test_every_entry_is_provably_in_every_checkpoint(
    client: WitnessClient,
    witness_dir: WitnessDir,
    operator: SoftwareEd25519Signer,
    clock: FakeClock,
) -> None:
    client.register_namespace(witness_dir.admin_token, NS, 1, operator.public_key())
    client.register_namespace(witness_dir.admin_token, "b", 10, operator.public_key())
    log_key = client.info().log_key
    empty = verify_checkpoint(client.checkpoint(), log_key)
    assert (empty.origin, empty.tree_size, empty.root_hash) == (NAME, 0, merkle.empty_root())
    checkpoints = []
    entries: list[AuditEntry] = []
    for i in range(9):
        ns, epoch = (NS, 1 + i // 2) if i % 2 == 0 else ("b", 10 + i // 2)
        clock.advance(5)
        entries.append(_submit(client, operator, ns, epoch, artifact(ns, epoch)))
        note = client.checkpoint()
        opened = open_note(note, [log_key])  # signed by the /info log key
        checkpoint = parse_checkpoint(opened.text, origin=NAME)
        assert checkpoint.tree_size == i + 1
        checkpoints.append(checkpoint)
    assert [e.leaf_index for e in entries] == list(range(9))
    assert [e.timestamp for e in entries] == sorted(e.timestamp for e in entries)
    for checkpoint in checkpoints:
        n = checkpoint.tree_size
        for entry in entries[:n]:
            proof = client.inclusion_proof(entry.leaf_index, n)
            merkle.verify_inclusion(
                entry.leaf_index, n, entry.leaf_hash(), proof.proof, checkpoint.root_hash
            )
    for older in checkpoints:
        for newer in checkpoints:
            if older.tree_size <= newer.tree_size:
                consistency = client.consistency_proof(older.tree_size, newer.tree_size)
                merkle.verify_consistency(
                    older.tree_size,
                    newer.tree_size,
                    consistency.proof,
                    older.root_hash,
                    newer.root_hash,
                )
    # A proof does not verify for another leaf or against another root.
    last = checkpoints[-1]
    proof = client.inclusion_proof(3, last.tree_size)
    with pytest.raises(VerificationError):
        merkle.verify_inclusion(
            3, last.tree_size, entries[4].leaf_hash(), proof.proof, last.root_hash
        )
    with pytest.raises(VerificationError):
        merkle.verify_inclusion(
            3, last.tree_size, entries[3].leaf_hash(), proof.proof, checkpoints[-2].root_hash
        )
    # The log recomputed from the entries is the checkpoint's tree.
    assert merkle.tree_hash([e.leaf() for e in entries]) == last.root_hash


def test_proof_parameters_are_checked(
    http: httpx.Client, client: WitnessClient, registered: str, operator: SoftwareEd25519Signer
) -> None:
    for epoch in (1, 2, 3):
        _submit(client, operator, NS, epoch, artifact(NS, epoch))
    bad_inclusion = [
        "leaf_index=3&tree_size=3",
        "leaf_index=0&tree_size=4",
        "leaf_index=0&tree_size=0",
        "leaf_index=-1&tree_size=2",
        "leaf_index=01&tree_size=2",
        "leaf_index=1",
        "tree_size=2",
        "leaf_index=1&tree_size=2&x=1",
        "leaf_index=1&leaf_index=1&tree_size=2",
        "leaf_index=+1&tree_size=2",
        "leaf_index=1.0&tree_size=2",
        "leaf_index=18446744073709551616&tree_size=2",
        "",
    ]
    for query in bad_inclusion:
        _refused(http.get("/proofs/inclusion?" + query), 400, "malformed")
    for query in (
        "first=0&second=2",
        "first=3&second=2",
        "first=1&second=4",
        "first=1",
        "first=a&second=2",
    ):
        _refused(http.get("/proofs/consistency?" + query), 400, "malformed")
    assert http.get("/proofs/inclusion?leaf_index=0&tree_size=1").json() == {
        "leaf_index": 0,
        "tree_size": 1,
        "proof": [],
    }
    assert http.get("/proofs/consistency?first=2&second=2").json() == {
        "first": 2,
        "second": 2,
        "proof": [],
    }
    _refused(http.get(ns_path(NS) + "/audits/01"), 400, "malformed")
    _refused(http.get(ns_path(NS) + "/audits/x"), 400, "malformed")


def test_checkpoint_is_plain_text_and_not_cached(http: httpx.Client) -> None:
    response = http.get("/checkpoint")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.headers["cache-control"] == "no-store"
    assert response.text.startswith(NAME + "\n0\n")


def test_bodies_over_the_limit_are_413(http: httpx.Client, registered: str) -> None:
    response = http.post(ns_path(NS) + "/audits", content=b"{" + b" " * 200_000 + b"}")
    _refused(response, 413, "too_large")


def test_the_witness_binds_to_loopback_unless_told_otherwise(witness_dir: WitnessDir) -> None:
    for host in ("0.0.0.0", "192.0.2.1", "example.com"):
        with pytest.raises(InvalidParameter, match="loopback"):
            WitnessConfig(witness_dir.path, host=host)
    WitnessConfig(witness_dir.path, host="::1")
    WitnessConfig(witness_dir.path, host="0.0.0.0", allow_remote=True)
