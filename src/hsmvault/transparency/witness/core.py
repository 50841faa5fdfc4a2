"""The witness itself: its rules, its durable log and its signatures (ADR 0010).

Rules (each refusal is a :class:`WitnessRefusal` with the HTTP status of ADR 0010):

* a namespace is registered once (by the witness admin) with its root epoch and the
  operator's Ed25519 public key; registering it again identically is a no-op, otherwise
  409 ``already_registered``;
* a submission ``(ns, epoch, digest, artifact)`` must carry the operator's signature over
  :func:`~hsmvault.transparency.operator_messages.submission_message` (else 401), have
  ``SHA-256(artifact) == digest`` (else 400), be for exactly the namespace's next epoch —
  the root epoch first, then last + 1 (else 409 ``out_of_order_epoch``) — and have a digest
  never signed before in any namespace (else 409 ``duplicate_digest``);
* the witness then signs the Plexi ``SignatureMessage`` (ciphersuite 0x0001, timestamp in
  ms, never earlier than the previous signature's) with the signing key of greatest
  ``not_before <= timestamp``, appends the entry to its store, its leaf
  ``encode_log_leaf(message, signature)`` to the Merkle log, and signs a new checkpoint;
* an operator counter-signature over
  :func:`~hsmvault.transparency.operator_messages.countersignature_message` is verified
  with the namespace's operator key (else 401) and stored once: the same bytes again are
  a no-op, different ones 409 ``already_countersigned``;
* nothing is ever re-signed or removed.

Opening re-verifies everything (:meth:`Witness.open`): the store's framing and head, every
record against the same rules, every witness signature under the key its ``key_id``
names (with ``not_before <= timestamp``), every submission and counter-signature under
the operator key; it recomputes the Merkle tree and checks the stored checkpoint is
signed by the log key, for this origin, and a prefix of the log. Any inconsistency is a
:class:`WitnessStateError` and the witness does not start.

Thread-safe: one lock serialises every operation (signing and fsync included); a store
failure makes every later write fail (restart to re-verify).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from hsmvault.errors import DecodeError, InvalidParameter, VaultError, VerificationError
from hsmvault.transparency import merkle
from hsmvault.transparency.checkpoint import Checkpoint, parse_checkpoint
from hsmvault.transparency.operator_messages import (
    countersignature_message,
    submission_message,
)
from hsmvault.transparency.plexi import CIPHERSUITE_PROTOBUF_ED25519, SignatureMessage
from hsmvault.transparency.signed_note import (
    NoteSignature,
    Verifier,
    format_note,
    open_note,
)

from . import errors as codes
from .codec import (
    U64_MAX,
    b64,
    fields,
    read_b64,
    read_hex,
    read_str,
    read_u64,
)
from .datadir import (
    CHECKPOINT_FILE,
    LOG_DIR,
    ClosableSigner,
    DirectoryLock,
    KeyEntry,
    WitnessSettings,
    load_settings,
    open_signer,
    read_admin_token,
    write_private_atomic,
)
from .errors import WitnessRefusal, WitnessStateError
from .model import AuditEntry, NamespaceState, WitnessKey, check_namespace, check_operator_key
from .store import Record, RecordStore

__all__ = ["MAX_ARTIFACT_LEN", "Witness", "default_clock"]

_log = logging.getLogger(__name__)

#: Largest artifact the witness stores (bytes); the artifact format allows 32 KiB.
MAX_ARTIFACT_LEN: Final = 64 * 1024
_MAX_NAMESPACES: Final = 10_000
_MAX_CHECKPOINT: Final = 64 * 1024
_NAMESPACE_KEYS: Final = ("name", "root_epoch", "operator_public_key", "registered_at")
_SIGNATURE_KEYS: Final = (
    "namespace",
    "epoch",
    "timestamp",
    "ciphersuite",
    "digest",
    "key_id",
    "signature",
    "artifact",
    "submission_signature",
    "leaf_index",
)
_COUNTER_KEYS: Final = ("namespace", "epoch", "signature")


def default_clock() -> int:
    """Milliseconds since the Unix epoch (UTC)."""
    return time.time_ns() // 1_000_000


def _verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    if len(signature) != 64:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def _refuse(status: int, code: str, detail: str) -> WitnessRefusal:
    return WitnessRefusal(status, code, detail)


class Witness:
    """An open witness over its data directory. Use :meth:`open`; :meth:`close` it."""

    def __init__(  # noqa: PLR0917 - internal constructor, called once by open()
        self,
        data_dir: Path,
        settings: WitnessSettings,
        lock: DirectoryLock,
        log_signer: ClosableSigner,
        signers: dict[bytes, ClosableSigner],
        admin_token: str,
        clock: Callable[[], int],
    ) -> None:
        """Internal: use :meth:`open`."""
        self._dir = data_dir
        self._settings = settings
        self._dir_lock = lock
        self._log_signer = log_signer
        self._signers = signers
        self._admin_token = admin_token.encode("ascii")
        self._clock = clock
        self._log_verifier = Verifier.from_public_key(settings.name, settings.log_key.public_key)
        self._keys = {e.published.key_id: e for e in settings.signing_keys}
        self._store: RecordStore | None = None
        self._namespaces: dict[str, NamespaceState] = {}
        self._entries: list[AuditEntry] = []
        self._by_epoch: dict[tuple[str, int], int] = {}
        self._digests: dict[bytes, int] = {}
        self._leaf_hashes: list[bytes] = []
        self._last_timestamp = 0
        self._checkpoint = b""
        self._closed = False
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        data_dir: str | Path,
        *,
        pkcs11_pin: str | None = None,
        clock: Callable[[], int] = default_clock,
    ) -> Witness:
        """Lock the data directory, open the keys, re-verify the whole store and
        checkpoint (module docstring). WitnessStateError or CustodyError on failure."""
        directory = Path(data_dir)
        lock = DirectoryLock(directory)
        lock.acquire()
        opened: list[ClosableSigner] = []
        witness: Witness | None = None
        try:
            settings = load_settings(directory)
            admin_token = read_admin_token(directory)
            log_signer = open_signer(directory, settings.log_key.spec, pin=pkcs11_pin)
            opened.append(log_signer)
            cls._check_public(log_signer, settings.log_key, "log key")
            signers: dict[bytes, ClosableSigner] = {}
            for entry in cls._usable_keys(settings, clock()):
                signer = open_signer(directory, entry.spec, pin=pkcs11_pin)
                opened.append(signer)
                cls._check_public(signer, entry, "signing key")
                signers[entry.published.key_id] = signer
            witness = cls(directory, settings, lock, log_signer, signers, admin_token, clock)
            witness._load()
        except BaseException:
            if witness is not None:
                witness.close()  # closes the store and keys, releases the lock
            else:
                for signer in opened:
                    with suppress(Exception):
                        signer.close()
                lock.release()
            raise
        return witness

    @staticmethod
    def _usable_keys(settings: WitnessSettings, now: int) -> list[KeyEntry]:
        """The current key and every later one (older keys need not be reachable)."""
        keys = list(settings.signing_keys)
        current = 0
        for i, entry in enumerate(keys):
            if entry.not_before <= now:
                current = i
        return keys[current:]

    @staticmethod
    def _check_public(signer: ClosableSigner, entry: KeyEntry, what: str) -> None:
        if not hmac.compare_digest(signer.public_key(), entry.public_key):
            raise WitnessStateError(f"the {what} does not match the public key in the settings")

    def _load(self) -> None:
        store, records = RecordStore.open(self._dir / LOG_DIR)
        self._store = store
        for record in records:
            try:
                self._replay(record)
            except (WitnessRefusal, DecodeError, InvalidParameter, VerificationError) as exc:
                raise WitnessStateError(
                    f"store record {record.seq} ({record.type}) fails verification: {exc}"
                ) from None
        self._load_checkpoint()
        _log.info(
            "witness %s opened: %d namespaces, %d log entries re-verified",
            self._settings.name,
            len(self._namespaces),
            len(self._entries),
        )

    def _replay(self, record: Record) -> None:
        body = record.body
        if record.type == "namespace":
            obj = fields(body, _NAMESPACE_KEYS, "namespace record")
            name = read_str(obj["name"], "name")
            root = read_u64(obj["root_epoch"], "root_epoch")
            key = read_hex(obj["operator_public_key"], 32, "operator_public_key")
            self._check_registration(name, root, key)
            if name in self._namespaces:
                raise DecodeError("namespace registered twice")
            self._apply_registration(
                NamespaceState(name, root, key, read_u64(obj["registered_at"], "registered_at"))
            )
        elif record.type == "signature":
            entry = self._parse_signature_record(body)
            state = self._namespace(entry.namespace)
            self._check_submission(
                state, entry.epoch, entry.digest, entry.artifact, entry.submission_signature
            )
            self._check_witness_signature(entry)
            self._apply_entry(entry)
        elif record.type == "countersignature":
            obj = fields(body, _COUNTER_KEYS, "countersignature record")
            ns = read_str(obj["namespace"], "namespace")
            epoch = read_u64(obj["epoch"], "epoch")
            signature = read_b64(obj["signature"], "signature", length=64)
            entry = self._entry(ns, epoch)
            self._check_countersignature(entry, signature)
            if entry.operator_countersignature is not None:
                raise DecodeError("counter-signature stored twice")
            self._apply_countersignature(entry, signature)
        else:
            raise DecodeError("unknown record type")

    def _parse_signature_record(self, body: dict[str, Any]) -> AuditEntry:
        obj = fields(body, _SIGNATURE_KEYS, "signature record")
        return AuditEntry(
            namespace=read_str(obj["namespace"], "namespace"),
            epoch=read_u64(obj["epoch"], "epoch"),
            timestamp=read_u64(obj["timestamp"], "timestamp"),
            ciphersuite=read_u64(obj["ciphersuite"], "ciphersuite"),
            digest=read_hex(obj["digest"], 32, "digest"),
            key_id=read_hex(obj["key_id"], 32, "key_id"),
            signature=read_b64(obj["signature"], "signature", length=64),
            artifact=read_b64(obj["artifact"], "artifact", max_len=MAX_ARTIFACT_LEN),
            submission_signature=read_b64(
                obj["submission_signature"], "submission_signature", length=64
            ),
            leaf_index=read_u64(obj["leaf_index"], "leaf_index"),
        )

    def _check_witness_signature(self, entry: AuditEntry) -> None:
        if entry.ciphersuite != CIPHERSUITE_PROTOBUF_ED25519:
            raise VerificationError("unknown ciphersuite")
        if entry.leaf_index != len(self._entries):
            raise VerificationError("leaf index out of sequence")
        if entry.timestamp < self._last_timestamp:
            raise VerificationError("timestamp earlier than the previous signature's")
        key = self._keys.get(entry.key_id)
        if key is None:
            raise VerificationError("signed by a key the settings do not list")
        if key.not_before > entry.timestamp:
            raise VerificationError("signed before its key's not_before")
        if not _verify(key.public_key, entry.signature, entry.message().encode()):
            raise VerificationError("witness signature does not verify")

    def _load_checkpoint(self) -> None:
        path = self._dir / CHECKPOINT_FILE
        size = len(self._leaf_hashes)
        try:
            note = path.read_bytes()
        except FileNotFoundError:
            if size:
                raise WitnessStateError("the checkpoint file is missing") from None
            self._publish_checkpoint()
            return
        try:
            if len(note) > _MAX_CHECKPOINT:
                raise DecodeError("checkpoint note too large")
            opened = open_note(note, [self._log_verifier])
            checkpoint = parse_checkpoint(opened.text, origin=self._settings.name)
            if checkpoint.extensions:
                raise DecodeError("unexpected checkpoint extension lines")
        except (DecodeError, VerificationError) as exc:
            raise WitnessStateError(f"the stored checkpoint is invalid: {exc}") from None
        if checkpoint.tree_size > size:
            raise WitnessStateError(
                f"the stored checkpoint covers {checkpoint.tree_size} entries but the store"
                f" holds {size}: the store was truncated"
            )
        prefix_root = merkle.tree_hash_from_leaf_hashes(self._leaf_hashes[: checkpoint.tree_size])
        if not hmac.compare_digest(prefix_root, checkpoint.root_hash):
            raise WitnessStateError(
                "the stored checkpoint does not match the log: entries were edited"
            )
        if checkpoint.tree_size == size:
            self._checkpoint = note
        else:
            self._publish_checkpoint()

    # ------------------------------------------------------------------ rules

    def _namespace(self, name: str) -> NamespaceState:
        state = self._namespaces.get(name)
        if state is None:
            raise _refuse(404, codes.NOT_FOUND, "no such namespace")
        return state

    def _entry(self, namespace: str, epoch: int) -> AuditEntry:
        self._namespace(namespace)
        index = self._by_epoch.get((namespace, epoch))
        if index is None:
            raise _refuse(404, codes.NOT_FOUND, "no signature for this epoch")
        return self._entries[index]

    @staticmethod
    def _check_registration(name: str, root_epoch: int, operator_public_key: bytes) -> None:
        try:
            check_namespace(name)
            check_operator_key(operator_public_key)
        except InvalidParameter as exc:
            raise _refuse(400, codes.MALFORMED, str(exc)) from None
        if not 0 <= root_epoch <= U64_MAX:
            raise _refuse(400, codes.MALFORMED, "root_epoch must fit in 64 bits")

    def _check_submission(
        self,
        state: NamespaceState,
        epoch: int,
        digest: bytes,
        artifact: bytes,
        submission_signature: bytes,
    ) -> None:
        message = submission_message(state.name, epoch, digest)
        if not _verify(state.operator_public_key, submission_signature, message):
            raise _refuse(
                401,
                codes.BAD_SUBMISSION_SIGNATURE,
                "the submission is not signed by the namespace's operator key",
            )
        if not hmac.compare_digest(hashlib.sha256(artifact).digest(), digest):
            raise _refuse(400, codes.DIGEST_MISMATCH, "digest is not the SHA-256 of the artifact")
        expected = state.root_epoch if state.last_epoch is None else state.last_epoch + 1
        if epoch != expected:
            raise _refuse(
                409, codes.OUT_OF_ORDER_EPOCH, f"the next epoch of this namespace is {expected}"
            )
        if digest in self._digests:
            raise _refuse(409, codes.DUPLICATE_DIGEST, "this digest has already been signed")

    def _check_countersignature(self, entry: AuditEntry, signature: bytes) -> None:
        state = self._namespace(entry.namespace)
        message = countersignature_message(entry.signature)
        if not _verify(state.operator_public_key, signature, message):
            raise _refuse(
                401,
                codes.BAD_COUNTERSIGNATURE,
                "the counter-signature does not verify under the namespace's operator key",
            )

    # ------------------------------------------------------------------ state changes

    def _apply_registration(self, state: NamespaceState) -> None:
        self._namespaces[state.name] = state

    def _apply_entry(self, entry: AuditEntry) -> None:
        state = self._namespaces[entry.namespace]
        self._by_epoch[(entry.namespace, entry.epoch)] = len(self._entries)
        self._digests[entry.digest] = len(self._entries)
        self._entries.append(entry)
        self._leaf_hashes.append(merkle.hash_leaf(entry.leaf()))
        self._last_timestamp = entry.timestamp
        state.last_epoch = entry.epoch

    def _apply_countersignature(self, entry: AuditEntry, signature: bytes) -> None:
        updated = dataclasses.replace(entry, operator_countersignature=signature)
        self._entries[entry.leaf_index] = updated

    def _live_store(self) -> RecordStore:
        if self._store is None:
            raise _refuse(503, codes.UNAVAILABLE, "the witness is closed")
        return self._store

    @contextmanager
    def _writing(self) -> Iterator[RecordStore]:
        store = self._live_store()
        try:
            yield store
        except WitnessStateError as exc:
            _log.error("witness store failure: %s", exc)
            raise _refuse(503, codes.UNAVAILABLE, "the witness cannot write its log") from None

    def _publish_checkpoint(self) -> None:
        name = self._settings.name
        root = merkle.tree_hash_from_leaf_hashes(self._leaf_hashes)
        text = Checkpoint(name, len(self._leaf_hashes), root).encode()
        signature = self._log_signer.sign(text.encode("utf-8"))
        note = format_note(text, [NoteSignature(name, self._log_verifier.key_id, signature)])
        write_private_atomic(self._dir / CHECKPOINT_FILE, note)
        self._checkpoint = note

    def _current_signer(self, timestamp: int) -> tuple[bytes, ClosableSigner]:
        for entry in reversed(self._settings.signing_keys):
            if entry.not_before <= timestamp:
                kid = entry.published.key_id
                signer = self._signers.get(kid)
                if signer is not None:
                    return kid, signer
                break
        raise _refuse(503, codes.UNAVAILABLE, "no signing key is valid now")

    # ------------------------------------------------------------------ API

    @property
    def name(self) -> str:
        return self._settings.name

    @property
    def log_verifier(self) -> Verifier:
        return self._log_verifier

    def check_admin_token(self, presented: str) -> bool:
        """Constant-time comparison with the admin token."""
        return hmac.compare_digest(presented.encode("utf-8"), self._admin_token)

    def info(self) -> dict[str, Any]:
        keys: list[WitnessKey] = [e.published for e in self._settings.signing_keys]
        return {
            "name": self.name,
            "keys": [k.to_json() for k in keys],
            "log_key": self._log_verifier.to_vkey(),
        }

    def namespaces(self) -> list[NamespaceState]:
        with self._lock:
            return [dataclasses.replace(s) for s in self._namespaces.values()]

    def namespace(self, name: str) -> NamespaceState:
        with self._lock:
            return dataclasses.replace(self._namespace(name))

    def register_namespace(
        self, name: str, root_epoch: int, operator_public_key: bytes
    ) -> tuple[NamespaceState, bool]:
        """Register a namespace (the caller checked the admin token). Returns the state
        and whether it was new (an identical re-registration is a no-op)."""
        with self._lock:
            self._check_registration(name, root_epoch, operator_public_key)
            existing = self._namespaces.get(name)
            if existing is not None:
                if existing.root_epoch == root_epoch and hmac.compare_digest(
                    existing.operator_public_key, operator_public_key
                ):
                    return dataclasses.replace(existing), False
                raise _refuse(409, codes.ALREADY_REGISTERED, "namespace is registered differently")
            if len(self._namespaces) >= _MAX_NAMESPACES:
                raise _refuse(409, codes.ALREADY_REGISTERED, "too many namespaces")
            state = NamespaceState(name, root_epoch, operator_public_key, self._clock())
            with self._writing() as store:
                store.append(
                    "namespace",
                    {
                        "name": name,
                        "root_epoch": root_epoch,
                        "operator_public_key": operator_public_key.hex(),
                        "registered_at": state.registered_at,
                    },
                )
            self._apply_registration(state)
            _log.info("registered namespace %r (root epoch %d)", name, root_epoch)
            return dataclasses.replace(state), True

    def submit(
        self,
        namespace: str,
        epoch: int,
        digest: bytes,
        artifact: bytes,
        submission_signature: bytes,
    ) -> AuditEntry:
        """Witness one epoch (module docstring); the new entry."""
        with self._lock:
            if not 0 < len(artifact) <= MAX_ARTIFACT_LEN:
                raise _refuse(
                    400, codes.MALFORMED, f"artifact must be 1 to {MAX_ARTIFACT_LEN} bytes"
                )
            state = self._namespace(namespace)
            self._check_submission(state, epoch, digest, artifact, submission_signature)
            timestamp = max(self._clock(), self._last_timestamp)
            kid, signer = self._current_signer(timestamp)
            message = SignatureMessage(
                CIPHERSUITE_PROTOBUF_ED25519, namespace, timestamp, epoch, digest
            )
            try:
                signature = signer.sign(message.encode())
            except VaultError as exc:
                _log.error("witness signing failed: %s", exc)
                raise _refuse(503, codes.UNAVAILABLE, "the signing key is unavailable") from None
            entry = AuditEntry(
                namespace=namespace,
                epoch=epoch,
                timestamp=timestamp,
                ciphersuite=CIPHERSUITE_PROTOBUF_ED25519,
                digest=digest,
                key_id=kid,
                signature=signature,
                artifact=artifact,
                submission_signature=submission_signature,
                leaf_index=len(self._entries),
            )
            self._check_witness_signature(entry)  # never log a signature that fails
            with self._writing() as store:
                store.append(
                    "signature",
                    {
                        "namespace": namespace,
                        "epoch": epoch,
                        "timestamp": timestamp,
                        "ciphersuite": entry.ciphersuite,
                        "digest": digest.hex(),
                        "key_id": kid.hex(),
                        "signature": b64(signature),
                        "artifact": b64(artifact),
                        "submission_signature": b64(submission_signature),
                        "leaf_index": entry.leaf_index,
                    },
                )
            self._apply_entry(entry)
            try:
                self._publish_checkpoint()
            except (OSError, VaultError) as exc:  # the entry is durable; the next append retries
                _log.error("witness checkpoint update failed: %s", type(exc).__name__)
            _log.info("signed %r epoch %d (leaf %d)", namespace, epoch, entry.leaf_index)
            return entry

    def countersign(self, namespace: str, epoch: int, signature: bytes) -> AuditEntry:
        """Store the operator's counter-signature of one entry (once)."""
        with self._lock:
            entry = self._entry(namespace, epoch)
            self._check_countersignature(entry, signature)
            if entry.operator_countersignature is not None:
                if hmac.compare_digest(entry.operator_countersignature, signature):
                    return entry
                raise _refuse(
                    409, codes.ALREADY_COUNTERSIGNED, "a counter-signature is already set"
                )
            with self._writing() as store:
                store.append(
                    "countersignature",
                    {"namespace": namespace, "epoch": epoch, "signature": b64(signature)},
                )
            self._apply_countersignature(entry, signature)
            return self._entries[entry.leaf_index]

    def audit(self, namespace: str, epoch: int) -> AuditEntry:
        with self._lock:
            return self._entry(namespace, epoch)

    def last_verified_epoch(self, namespace: str) -> int | None:
        with self._lock:
            return self._namespace(namespace).last_epoch

    def checkpoint(self) -> bytes:
        with self._lock:
            return self._checkpoint

    @property
    def tree_size(self) -> int:
        with self._lock:
            return len(self._leaf_hashes)

    def inclusion_proof(self, leaf_index: int, tree_size: int) -> list[bytes]:
        with self._lock:
            if not 0 <= leaf_index < tree_size <= len(self._leaf_hashes):
                raise _refuse(
                    400, codes.MALFORMED, "need 0 <= leaf_index < tree_size <= the log's size"
                )
            return merkle.inclusion_proof(self._leaf_hashes[:tree_size], leaf_index)

    def consistency_proof(self, first: int, second: int) -> list[bytes]:
        with self._lock:
            if not 0 < first <= second <= len(self._leaf_hashes):
                raise _refuse(400, codes.MALFORMED, "need 0 < first <= second <= the log's size")
            return merkle.consistency_proof(self._leaf_hashes[:second], first)

    def close(self) -> None:
        """Close the store and keys and release the directory (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            store, self._store = self._store, None
            if store is not None:
                store.close()
            for signer in [*self._signers.values(), self._log_signer]:
                with suppress(Exception):
                    signer.close()
            self._signers = {}
            self._dir_lock.release()
