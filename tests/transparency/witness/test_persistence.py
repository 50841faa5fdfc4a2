"""The witness's own data directory: it survives restarts with its log, checkpoint and
entries intact, and refuses to start when the store or checkpoint was damaged or
edited (truncation, edited records — even with the hash chain recomputed —, a swapped
key, a missing or foreign checkpoint), or when another process holds the directory."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hsmvault.transparency import merkle
from hsmvault.transparency.checkpoint import Checkpoint
from hsmvault.transparency.operator_messages import countersignature_message, submission_message
from hsmvault.transparency.signed_note import Signer, sign_note
from hsmvault.transparency.signers import SoftwareEd25519Signer
from hsmvault.transparency.witness import Witness, WitnessConfig, WitnessServer, WitnessStateError
from hsmvault.transparency.witness.datadir import DirectoryLock
from hsmvault.transparency.witness.store import discard_uncommitted_tail
from hsmvault.transparency.witness_client import WitnessClient, verify_checkpoint

from .conftest import NAME, NS, FakeClock, WitnessDir, artifact

RECORDS = Path("log/records.jsonl")
HEAD = Path("log/head.json")


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _populate(
    directory: WitnessDir, operator: SoftwareEd25519Signer, clock: FakeClock, epochs: int = 4
) -> None:
    """Register NS (root 1) and witness ``epochs`` epochs, counter-signing each."""
    witness = Witness.open(directory.path, clock=clock)
    try:
        witness.register_namespace(NS, 1, operator.public_key())
        for epoch in range(1, epochs + 1):
            clock.advance(10)
            data = artifact(NS, epoch)
            digest = hashlib.sha256(data).digest()
            entry = witness.submit(
                NS, epoch, digest, data, operator.sign(submission_message(NS, epoch, digest))
            )
            witness.countersign(NS, epoch, operator.sign(countersignature_message(entry.signature)))
    finally:
        witness.close()


def _rewrite(directory: Path, mutate: Callable[[list[dict[str, Any]]], None]) -> None:
    """Edit the records like a careful attacker: re-chain every line and rewrite the head."""
    lines = (directory / RECORDS).read_bytes().splitlines()
    records = [json.loads(line) for line in lines]
    mutate(records)
    prev = bytes(32)
    out = b""
    for seq, record in enumerate(records):
        record["seq"], record["prev"] = seq, prev.hex()
        line = _canonical(record)
        prev = hashlib.sha256(line).digest()
        out += line + b"\n"
    (directory / RECORDS).write_bytes(out)
    head = {"bytes": len(out), "last": prev.hex(), "records": len(records), "version": 1}
    (directory / HEAD).write_bytes(_canonical(head) + b"\n")


def _refuses(directory: Path, clock: FakeClock, match: str) -> None:
    with pytest.raises(WitnessStateError, match=match):
        Witness.open(directory, clock=clock)
    with DirectoryLock(directory):  # the failed start released the directory again
        pass


@pytest.fixture
def populated(witness_dir: WitnessDir, operator: SoftwareEd25519Signer, clock: FakeClock) -> Path:
    _populate(witness_dir, operator, clock)
    return witness_dir.path


# ----------------------------------------------------------------------------- restarts


def test_restart_keeps_log_checkpoint_and_entries(
    witness_dir: WitnessDir, operator: SoftwareEd25519Signer, clock: FakeClock
) -> None:
    config = WitnessConfig(witness_dir.path, clock=clock)
    with WitnessServer(config) as server, WitnessClient(server.url) as client:
        client.register_namespace(witness_dir.admin_token, NS, 1, operator.public_key())
        entries = []
        for epoch in (1, 2, 3):
            clock.advance(10)
            data = artifact(NS, epoch)
            digest = hashlib.sha256(data).digest()
            entry = client.submit(
                NS, epoch, data, operator.sign(submission_message(NS, epoch, digest))
            )
            entries.append(
                client.put_countersignature(
                    NS, epoch, operator.sign(countersignature_message(entry.signature))
                )
            )
        info_before = client.info()
        note_before = client.checkpoint()
    with WitnessServer(config) as server, WitnessClient(server.url) as client:
        assert client.info() == info_before
        assert client.checkpoint() == note_before  # the same signed checkpoint is served
        assert [client.audit(NS, e) for e in (1, 2, 3)] == entries
        assert client.last_verified_epoch(NS) == 3
        old = verify_checkpoint(note_before, info_before.log_key)
        for entry in entries:
            proof = client.inclusion_proof(entry.leaf_index, old.tree_size)
            merkle.verify_inclusion(
                entry.leaf_index, old.tree_size, entry.leaf_hash(), proof.proof, old.root_hash
            )
        # The log continues where it stopped, and extends the old checkpoint.
        data = artifact(NS, 4)
        digest = hashlib.sha256(data).digest()
        assert (
            client.submit(NS, 4, data, operator.sign(submission_message(NS, 4, digest))).leaf_index
            == 3
        )
        new = verify_checkpoint(client.checkpoint(), info_before.log_key)
        assert new.tree_size == 4
        consistency = client.consistency_proof(old.tree_size, new.tree_size)
        merkle.verify_consistency(
            old.tree_size, new.tree_size, consistency.proof, old.root_hash, new.root_hash
        )


def test_one_process_per_data_directory(witness_dir: WitnessDir, clock: FakeClock) -> None:
    first = Witness.open(witness_dir.path, clock=clock)
    try:
        with pytest.raises(WitnessStateError, match="another witness process"):
            Witness.open(witness_dir.path, clock=clock)
    finally:
        first.close()
    Witness.open(witness_dir.path, clock=clock).close()


def test_a_fresh_directory_opens_with_an_empty_signed_checkpoint(
    witness_dir: WitnessDir, clock: FakeClock
) -> None:
    witness = Witness.open(witness_dir.path, clock=clock)
    try:
        checkpoint = verify_checkpoint(witness.checkpoint(), witness.log_verifier)
        assert (checkpoint.origin, checkpoint.tree_size) == (NAME, 0)
    finally:
        witness.close()


# ----------------------------------------------------------------------------- truncation


@pytest.mark.parametrize("cut", [1, 37])
def test_refuses_a_torn_store(populated: Path, clock: FakeClock, cut: int) -> None:
    data = (populated / RECORDS).read_bytes()
    (populated / RECORDS).write_bytes(data[:-cut])
    _refuses(populated, clock, "truncated")


def test_refuses_a_store_missing_its_last_records(populated: Path, clock: FakeClock) -> None:
    lines = (populated / RECORDS).read_bytes().splitlines(keepends=True)
    (populated / RECORDS).write_bytes(b"".join(lines[:-3]))
    _refuses(populated, clock, "truncated")
    (populated / RECORDS).write_bytes(b"")
    _refuses(populated, clock, "truncated")


def test_refuses_truncation_even_with_a_rewritten_head(populated: Path, clock: FakeClock) -> None:
    # Drop the last signature (and its counter-signature) and recompute chain and head:
    # the signed checkpoint still covers 4 entries.
    _rewrite(populated, lambda records: records.__delitem__(slice(-2, None)))
    _refuses(populated, clock, "covers 4 entries but the store holds 3")


def test_refuses_a_missing_head_or_records_file(populated: Path, clock: FakeClock) -> None:
    head = (populated / HEAD).read_bytes()
    (populated / HEAD).unlink()
    _refuses(populated, clock, "head")
    (populated / HEAD).write_bytes(head)
    (populated / RECORDS).rename(populated / "moved")
    _refuses(populated, clock, "missing")


# ----------------------------------------------------------------------------- edits


def test_refuses_an_edited_record(populated: Path, clock: FakeClock) -> None:
    text = (populated / RECORDS).read_bytes()
    lines = text.splitlines(keepends=True)
    record = json.loads(lines[3])
    assert record["type"] == "signature"
    record["body"]["timestamp"] += 1
    lines[3] = _canonical(record) + b"\n"
    (populated / RECORDS).write_bytes(b"".join(lines))
    _refuses(populated, clock, "record 4 is corrupt: record does not chain")


def test_refuses_a_non_canonical_record(populated: Path, clock: FakeClock) -> None:
    lines = (populated / RECORDS).read_bytes().splitlines(keepends=True)
    record = json.loads(lines[0])
    reordered = json.dumps(dict(reversed(record.items())), separators=(",", ":")).encode()
    assert len(reordered) + 1 == len(lines[0])
    assert reordered + b"\n" != lines[0]
    lines[0] = reordered + b"\n"  # same length, same meaning, not canonical
    (populated / RECORDS).write_bytes(b"".join(lines))
    _refuses(populated, clock, "record 0 is corrupt: record is not canonical JSON")


def _edit_signature_field(
    field: str, value: Callable[[Any], Any]
) -> Callable[[list[dict[str, Any]]], None]:
    def mutate(records: list[dict[str, Any]]) -> None:
        signature = next(r for r in records if r["type"] == "signature" and r["body"]["epoch"] == 2)
        signature["body"][field] = value(signature["body"][field])

    return mutate


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("timestamp", lambda t: t + 1, "witness signature does not verify"),
        ("artifact", lambda a: "eA==", "digest is not the SHA-256 of the artifact"),
        ("digest", lambda d: "00" * 32, "not signed by the namespace's operator"),
        ("signature", lambda s: "A" * 86 + "==", "witness signature does not verify"),
        ("key_id", lambda k: "00" * 32, "key the settings do not list"),
        ("leaf_index", lambda i: i + 1, "leaf index"),
        ("epoch", lambda e: 5, "not signed by the namespace's operator"),
    ],
)
def test_refuses_an_edit_even_with_the_chain_recomputed(
    populated: Path, clock: FakeClock, field: str, value: Callable[[Any], Any], match: str
) -> None:
    _rewrite(populated, _edit_signature_field(field, value))
    _refuses(populated, clock, match)


def test_refuses_a_swapped_operator_key_or_countersignature(
    populated: Path, clock: FakeClock
) -> None:
    stranger = SoftwareEd25519Signer.generate().public_key().hex()

    def swap_key(records: list[dict[str, Any]]) -> None:
        records[0]["body"]["operator_public_key"] = stranger

    _rewrite(populated, swap_key)
    _refuses(populated, clock, "not signed by the namespace's operator")


def test_refuses_an_edited_countersignature(populated: Path, clock: FakeClock) -> None:
    def edit(records: list[dict[str, Any]]) -> None:
        counter = next(r for r in records if r["type"] == "countersignature")
        counter["body"]["signature"] = "A" * 86 + "=="

    _rewrite(populated, edit)
    _refuses(populated, clock, "counter-signature does not verify")


def test_refuses_reordered_or_duplicated_records(populated: Path, clock: FakeClock) -> None:
    original = (populated / RECORDS).read_bytes()
    _rewrite(populated, lambda records: records.insert(3, dict(records[1])))
    _refuses(populated, clock, "record 3 .* the next epoch of this namespace is 2")
    (populated / RECORDS).write_bytes(original)

    def swap(records: list[dict[str, Any]]) -> None:
        records[1], records[3] = records[3], records[1]

    _rewrite(populated, swap)
    _refuses(populated, clock, "record 1 .* the next epoch of this namespace is 1")


# ----------------------------------------------------------------------------- checkpoint and keys


def test_refuses_a_missing_or_foreign_checkpoint(populated: Path, clock: FakeClock) -> None:
    note = (populated / "checkpoint").read_bytes()
    (populated / "checkpoint").unlink()
    _refuses(populated, clock, "checkpoint file is missing")
    foreign = Signer(NAME, bytes(range(32)))
    text = Checkpoint(NAME, 4, merkle.tree_hash([b"x"] * 4)).encode()
    (populated / "checkpoint").write_bytes(sign_note(text, [foreign]))
    _refuses(populated, clock, "checkpoint is invalid")
    (populated / "checkpoint").write_bytes(note.replace(b"\n4\n", b"\n3\n"))
    _refuses(populated, clock, "checkpoint is invalid")
    (populated / "checkpoint").write_bytes(note)
    Witness.open(populated, clock=clock).close()


def test_an_older_valid_checkpoint_is_extended_not_trusted_blindly(
    witness_dir: WitnessDir, operator: SoftwareEd25519Signer, clock: FakeClock
) -> None:
    _populate(witness_dir, operator, clock, epochs=2)
    old_note = (witness_dir.path / "checkpoint").read_bytes()
    witness = Witness.open(witness_dir.path, clock=clock)
    try:
        data = artifact(NS, 3)
        digest = hashlib.sha256(data).digest()
        witness.submit(NS, 3, digest, data, operator.sign(submission_message(NS, 3, digest)))
        verifier = witness.log_verifier
    finally:
        witness.close()
    # A crash between the store commit and the checkpoint write leaves an older one.
    (witness_dir.path / "checkpoint").write_bytes(old_note)
    witness = Witness.open(witness_dir.path, clock=clock)
    try:
        assert verify_checkpoint(witness.checkpoint(), verifier).tree_size == 3
    finally:
        witness.close()


def test_refuses_a_swapped_signing_or_log_key(populated: Path, clock: FakeClock) -> None:
    for seed in ("keys/signing-1.seed", "keys/log.seed"):
        original = (populated / seed).read_bytes()
        (populated / seed).unlink()
        SoftwareEd25519Signer.open(populated / seed)  # a new key under the same name
        _refuses(populated, clock, "does not match the public key")
        (populated / seed).unlink()
        (populated / seed).write_bytes(original)
        (populated / seed).chmod(0o600)
    Witness.open(populated, clock=clock).close()


def test_refuses_a_group_readable_seed_or_admin_token(populated: Path, clock: FakeClock) -> None:
    (populated / "admin-token").chmod(0o640)
    _refuses(populated, clock, "group or others")
    (populated / "admin-token").chmod(0o600)
    (populated / "keys/log.seed").chmod(0o644)
    with pytest.raises(Exception, match="group or others"):
        Witness.open(populated, clock=clock)


def test_refuses_edited_settings(populated: Path, clock: FakeClock) -> None:
    settings = (populated / "witness.json").read_bytes()
    (populated / "witness.json").write_bytes(settings.replace(b'"name":"', b'"name": "', 1))
    _refuses(populated, clock, "witness.json is malformed")
    (populated / "witness.json").write_bytes(settings.replace(NAME.encode(), b"another/name", 1))
    _refuses(populated, clock, "checkpoint is invalid")  # the origin is the name


# ----------------------------------------------------------------------------- interrupted appends


@pytest.mark.parametrize("tail", [b'{"body":{"name"', b"garbage\n"])
def test_an_interrupted_append_is_refused_then_repaired(
    populated: Path, clock: FakeClock, tail: bytes
) -> None:
    committed = (populated / RECORDS).read_bytes()
    with (populated / RECORDS).open("ab") as f:
        f.write(tail)
    _refuses(populated, clock, "interrupted append")
    assert discard_uncommitted_tail(populated / "log") == len(tail)
    assert (populated / RECORDS).read_bytes() == committed
    witness = Witness.open(populated, clock=clock)
    try:
        assert witness.last_verified_epoch(NS) == 4
    finally:
        witness.close()


def test_repair_does_not_hide_damage_to_committed_records(
    populated: Path, clock: FakeClock
) -> None:
    data = (populated / RECORDS).read_bytes()
    (populated / RECORDS).write_bytes(data.replace(b'"epoch":2', b'"epoch":7', 1) + b"tail")
    with pytest.raises(WitnessStateError):
        discard_uncommitted_tail(populated / "log")
    assert (populated / RECORDS).read_bytes().endswith(b"tail")


def test_refuses_a_counter_signature_stored_twice(populated: Path, clock: FakeClock) -> None:
    def duplicate(records: list[dict[str, Any]]) -> None:
        counter = next(r for r in records if r["type"] == "countersignature")
        records.append(dict(counter))

    _rewrite(populated, duplicate)
    _refuses(populated, clock, "counter-signature stored twice")


def test_refuses_a_namespace_registered_twice_or_unknown_records(
    populated: Path, clock: FakeClock
) -> None:
    original = (populated / RECORDS).read_bytes()
    _rewrite(populated, lambda records: records.append(dict(records[0])))
    _refuses(populated, clock, "namespace registered twice")
    (populated / RECORDS).write_bytes(original)

    def unknown(records: list[dict[str, Any]]) -> None:
        records.append({"body": {}, "type": "rollback"})

    _rewrite(populated, unknown)
    _refuses(populated, clock, "unknown record type")
