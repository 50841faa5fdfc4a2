"""A typed HTTP client of the witness API (ADR 0010), for the operator tooling, the
auditor and clients fetching checkpoints and proofs.

The witness is another party, so every answer is parsed strictly, as at any trust
boundary: the JSON must have exactly the documented keys and types (no floats, no
duplicate keys, booleans are not integers), hex must be lowercase and of the right
length, base64 canonical and padded, key ids must be the SHA-256 of their key, and an
answer must be about what was asked (the namespace, epoch, proof sizes and — for a
submission — the digest and artifact sent). A violation raises
:class:`MalformedWitnessAnswer`. A 4xx answer raises :class:`WitnessHttpRefused` (a
:class:`~hsmvault.transparency.errors.WitnessRefused`) carrying the witness's error code;
a 5xx answer or a transport failure raises :class:`~hsmvault.errors.Unavailable`.

The client checks shapes, not trust: verifying signatures against *pinned* keys is the
caller's job (the bundle verifier), though :func:`verify_checkpoint` is provided for the
checkpoint note. Redirects are not followed. This module imports nothing from the
witness implementation (so the client zone may use it).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from hsmvault.closing import ClosingContext
from hsmvault.errors import DecodeError, InvalidParameter, Unavailable
from hsmvault.transparency import log_entry, merkle
from hsmvault.transparency.checkpoint import Checkpoint, parse_checkpoint
from hsmvault.transparency.errors import BundleFormatError, WitnessRefused
from hsmvault.transparency.plexi import SignatureMessage
from hsmvault.transparency.signed_note import Verifier, open_note, parse_note
from hsmvault.wire.canonical_json import loads_strict

__all__ = [
    "AuditEntry",
    "ConsistencyProof",
    "InclusionProof",
    "MalformedWitnessAnswer",
    "NamespaceInfo",
    "WitnessClient",
    "WitnessHttpRefused",
    "WitnessInfo",
    "WitnessKeyInfo",
    "verify_checkpoint",
]

_U64: Final = (1 << 64) - 1
_U32: Final = (1 << 32) - 1
_MAX_ANSWER: Final = 1 << 20
_MAX_ARTIFACT: Final = 1 << 19
_MAX_PROOF: Final = 64
_MAX_KEYS: Final = 64
_MAX_NAMESPACES: Final = 10_000
_HEX: Final = re.compile(r"[0-9a-f]*")
_STATUSES: Final = frozenset({"online"})


class MalformedWitnessAnswer(BundleFormatError):
    """The witness answered something that is not a valid answer to the request."""


class WitnessHttpRefused(WitnessRefused):
    """The witness refused the request (4xx): ``status``, ``code`` (its ``error``
    field) and ``detail``."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"witness refused ({status} {code}): {detail}")
        self.status = status
        self.code = code
        self.detail = detail


# --------------------------------------------------------------------------- parsing


def _bad(what: str) -> MalformedWitnessAnswer:
    return MalformedWitnessAnswer(f"malformed witness answer: {what}")


def _loads(data: bytes) -> Any:
    """Strict JSON (:func:`hsmvault.wire.canonical_json.loads_strict`); refusals raise
    :class:`MalformedWitnessAnswer`."""
    return loads_strict(data, max_len=_MAX_ANSWER, what="answer", error=_bad)


def _fields(value: object, keys: Iterable[str], what: str) -> dict[str, Any]:
    wanted = frozenset(keys)
    if not isinstance(value, dict) or set(value) != wanted:
        raise _bad(f"{what} must be an object with exactly the keys {sorted(wanted)}")
    return value


def _int(value: object, what: str, hi: int = _U64) -> int:
    if type(value) is not int or not 0 <= value <= hi:
        raise _bad(f"{what} must be an integer in 0..{hi}")
    return value


def _optional_int(value: object, what: str) -> int | None:
    return None if value is None else _int(value, what)


def _str(value: object, what: str) -> str:
    if type(value) is not str:
        raise _bad(f"{what} must be a string")
    return value


def _hex(value: object, length: int, what: str) -> bytes:
    text = _str(value, what)
    if len(text) != 2 * length or not _HEX.fullmatch(text):
        raise _bad(f"{what} must be {2 * length} lowercase hex digits")
    return bytes.fromhex(text)


def _b64(value: object, what: str, *, length: int | None = None, max_len: int = _U32) -> bytes:
    text = _str(value, what)
    try:
        if not text.isascii():
            raise ValueError
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _bad(f"{what} must be base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise _bad(f"{what} must be canonical base64")
    if length is not None and len(raw) != length:
        raise _bad(f"{what} must be {length} bytes")
    if not 0 < len(raw) <= max_len:
        raise _bad(f"{what} has a bad length")
    return raw


def _ed25519(raw: bytes, what: str) -> bytes:
    try:
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise _bad(f"{what} is not an Ed25519 public key") from None
    return raw


def _list(value: object, max_items: int, what: str) -> list[Any]:
    if not isinstance(value, list) or len(value) > max_items:
        raise _bad(f"{what} must be a list of at most {max_items} items")
    return value


def _proof(value: object) -> tuple[bytes, ...]:
    items = _list(value, _MAX_PROOF, "proof")
    return tuple(_b64(p, "proof element", length=merkle.HASH_SIZE) for p in items)


# --------------------------------------------------------------------------- answers


@dataclass(frozen=True)
class WitnessKeyInfo:
    """One witness signing key: ``key_id`` = SHA-256(public key); ``not_before`` in ms."""

    key_id: bytes
    public_key: bytes
    not_before: int

    @classmethod
    def from_json(cls, value: object) -> WitnessKeyInfo:
        obj = _fields(value, ("key_id", "public_key", "not_before"), "key")
        public_key = _ed25519(_hex(obj["public_key"], 32, "public_key"), "public_key")
        key_id = _hex(obj["key_id"], 32, "key_id")
        if key_id != hashlib.sha256(public_key).digest():
            raise _bad("key_id is not the SHA-256 of the public key")
        return cls(key_id, public_key, _int(obj["not_before"], "not_before"))


@dataclass(frozen=True)
class WitnessInfo:
    """``GET /info``: the witness name, its signing keys, and its log key (a note
    verifier whose name is the witness name, the checkpoint origin)."""

    name: str
    keys: tuple[WitnessKeyInfo, ...]
    log_key: Verifier

    @classmethod
    def from_json(cls, value: object) -> WitnessInfo:
        obj = _fields(value, ("name", "keys", "log_key"), "info")
        name = _str(obj["name"], "name")
        keys = tuple(WitnessKeyInfo.from_json(k) for k in _list(obj["keys"], _MAX_KEYS, "keys"))
        if not keys or len({k.key_id for k in keys}) != len(keys):
            raise _bad("keys must be a non-empty list of distinct keys")
        try:
            log_key = Verifier.from_vkey(_str(obj["log_key"], "log_key"))
        except DecodeError:
            raise _bad("log_key is not a note verifier key") from None
        if log_key.name != name:
            raise _bad("the log key is not named after the witness")
        return cls(name, keys, log_key)


@dataclass(frozen=True)
class NamespaceInfo:
    """``GET /namespaces/{ns}``."""

    name: str
    root_epoch: int
    last_verified_epoch: int | None
    operator_public_key: bytes
    status: str

    @classmethod
    def from_json(cls, value: object) -> NamespaceInfo:
        keys = ("name", "root_epoch", "last_verified_epoch", "operator_public_key", "status")
        obj = _fields(value, keys, "namespace")
        status = _str(obj["status"], "status")
        if status not in _STATUSES:
            raise _bad("unknown namespace status")
        last = _optional_int(obj["last_verified_epoch"], "last_verified_epoch")
        root = _int(obj["root_epoch"], "root_epoch")
        if last is not None and last < root:
            raise _bad("last verified epoch is before the root epoch")
        return cls(
            name=_str(obj["name"], "name"),
            root_epoch=root,
            last_verified_epoch=last,
            operator_public_key=_ed25519(
                _hex(obj["operator_public_key"], 32, "operator_public_key"), "operator key"
            ),
            status=status,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "root_epoch": self.root_epoch,
            "last_verified_epoch": self.last_verified_epoch,
            "operator_public_key": self.operator_public_key.hex(),
            "status": self.status,
        }


@dataclass(frozen=True)
class AuditEntry:
    """One witness signature as the witness serves it (``AuditEntry`` of ADR 0010)."""

    namespace: str
    epoch: int
    timestamp: int
    digest: bytes
    ciphersuite: int
    key_id: bytes
    signature: bytes
    artifact: bytes
    operator_countersignature: bytes | None
    leaf_index: int

    @classmethod
    def from_json(cls, value: object) -> AuditEntry:
        keys = (
            "namespace",
            "epoch",
            "timestamp",
            "digest",
            "ciphersuite",
            "key_id",
            "signature",
            "artifact",
            "operator_countersignature",
            "leaf_index",
        )
        obj = _fields(value, keys, "audit entry")
        counter = obj["operator_countersignature"]
        entry = cls(
            namespace=_str(obj["namespace"], "namespace"),
            epoch=_int(obj["epoch"], "epoch"),
            timestamp=_int(obj["timestamp"], "timestamp"),
            digest=_hex(obj["digest"], 32, "digest"),
            ciphersuite=_int(obj["ciphersuite"], "ciphersuite", _U32),
            key_id=_hex(obj["key_id"], 32, "key_id"),
            signature=_b64(obj["signature"], "signature", length=64),
            artifact=_b64(obj["artifact"], "artifact", max_len=_MAX_ARTIFACT),
            operator_countersignature=None
            if counter is None
            else _b64(counter, "operator_countersignature", length=64),
            leaf_index=_int(obj["leaf_index"], "leaf_index"),
        )
        try:
            entry.message()
        except InvalidParameter:
            raise _bad("the signed fields do not form a Plexi SignatureMessage") from None
        return entry

    def message(self) -> SignatureMessage:
        """The Plexi ``SignatureMessage`` the witness signed."""
        return SignatureMessage(
            self.ciphersuite, self.namespace, self.timestamp, self.epoch, self.digest
        )

    def leaf(self) -> bytes:
        """The Merkle log leaf of this signature (``log_entry.encode_log_leaf``)."""
        return log_entry.encode_log_leaf(self.message().encode(), self.signature)

    def leaf_hash(self) -> bytes:
        return merkle.hash_leaf(self.leaf())


@dataclass(frozen=True)
class InclusionProof:
    leaf_index: int
    tree_size: int
    proof: tuple[bytes, ...]


@dataclass(frozen=True)
class ConsistencyProof:
    first: int
    second: int
    proof: tuple[bytes, ...]


def verify_checkpoint(note: bytes, log_key: Verifier) -> Checkpoint:
    """Open a checkpoint note signed by ``log_key`` whose origin is the key's name.
    Raises VerificationError (bad or missing signature) or DecodeError (malformed)."""
    opened = open_note(note, [log_key])
    return parse_checkpoint(opened.text, origin=log_key.name)


# --------------------------------------------------------------------------- client


def _ns(namespace: str) -> str:
    if not isinstance(namespace, str) or not 0 < len(namespace) <= 255:
        raise InvalidParameter("namespace must be 1..255 characters")
    return quote(namespace, safe="")


def _check_u64(value: int, what: str) -> int:
    if type(value) is not int or not 0 <= value <= _U64:
        raise InvalidParameter(f"{what} must be an integer in 0..2^64-1")
    return value


class WitnessClient(ClosingContext):
    """``WitnessClient("http://127.0.0.1:8440")``; use as a context manager or
    :meth:`close` it."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """``transport`` replaces the network (tests: ``httpx.MockTransport``)."""
        if not base_url.startswith(("http://", "https://")):
            raise InvalidParameter("base_url must be an http(s) URL")
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            timeout=timeout,
            follow_redirects=False,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    # ------------------------------------------------------------------ transport

    def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: dict[str, int] | None = None,
        headers: dict[str, str] | None = None,
        want: str = "application/json",
    ) -> tuple[int, bytes]:
        content = None if json_body is None else json.dumps(json_body).encode("ascii")
        send_headers = dict(headers or {})
        if content is not None:
            send_headers["Content-Type"] = "application/json"
        try:
            with self._http.stream(
                method, path, content=content, params=params, headers=send_headers
            ) as response:
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > _MAX_ANSWER:
                        raise _bad("answer too large")
                status = response.status_code
                media = response.headers.get("content-type", "").split(";")[0].strip().lower()
        except httpx.HTTPError as exc:
            raise Unavailable(f"witness unreachable ({type(exc).__name__})") from None
        if 400 <= status < 500:
            raise self._refusal(status, bytes(body), media)
        if status >= 500:
            raise Unavailable(f"witness error (HTTP {status})")
        if status not in (200, 201):
            raise _bad(f"unexpected HTTP status {status}")
        if media != want:
            raise _bad(f"unexpected content type {media!r}")
        return status, bytes(body)

    @staticmethod
    def _refusal(status: int, body: bytes, media: str) -> WitnessHttpRefused:
        try:
            if media != "application/json":
                raise _bad("error body is not JSON")
            obj = _fields(_loads(body), ("error", "detail"), "error")
            code, detail = _str(obj["error"], "error"), _str(obj["detail"], "detail")
        except MalformedWitnessAnswer:
            return WitnessHttpRefused(status, "unparsable_error", "the error body did not parse")
        return WitnessHttpRefused(status, code[:64], detail[:512])

    def _get_json(self, path: str, params: dict[str, int] | None = None) -> Any:
        _, body = self._request("GET", path, params=params)
        return _loads(body)

    # ------------------------------------------------------------------ API

    def info(self) -> WitnessInfo:
        return WitnessInfo.from_json(self._get_json("/info"))

    def namespaces(self) -> tuple[NamespaceInfo, ...]:
        obj = _fields(self._get_json("/namespaces"), ("namespaces",), "namespaces")
        items = _list(obj["namespaces"], _MAX_NAMESPACES, "namespaces")
        out = tuple(NamespaceInfo.from_json(n) for n in items)
        if len({n.name for n in out}) != len(out):
            raise _bad("a namespace is listed twice")
        return out

    def namespace(self, namespace: str) -> NamespaceInfo:
        info = NamespaceInfo.from_json(self._get_json(f"/namespaces/{_ns(namespace)}"))
        if info.name != namespace:
            raise _bad("answer is about another namespace")
        return info

    def register_namespace(
        self, admin_token: str, name: str, root_epoch: int, operator_public_key: bytes
    ) -> NamespaceInfo:
        """Register (admin only). Idempotent for identical values."""
        body = {
            "name": name,
            "root_epoch": _check_u64(root_epoch, "root_epoch"),
            "operator_public_key": bytes(operator_public_key).hex(),
        }
        _, raw = self._request(
            "POST",
            "/namespaces",
            json_body=body,
            headers={"Authorization": f"Bearer {admin_token}"},
        )
        info = NamespaceInfo.from_json(_loads(raw))
        if (info.name, info.root_epoch, info.operator_public_key) != (
            name,
            root_epoch,
            bytes(operator_public_key),
        ):
            raise _bad("registration answer does not match the request")
        return info

    def submit(
        self, namespace: str, epoch: int, artifact: bytes, submission_signature: bytes
    ) -> AuditEntry:
        """Ask the witness to sign ``SHA-256(artifact)`` as ``epoch`` of ``namespace``;
        ``submission_signature`` is the operator's over ``submission_message``."""
        digest = hashlib.sha256(artifact).digest()
        body = {
            "epoch": _check_u64(epoch, "epoch"),
            "digest": digest.hex(),
            "artifact": base64.b64encode(artifact).decode("ascii"),
            "submission_signature": base64.b64encode(submission_signature).decode("ascii"),
        }
        _, raw = self._request("POST", f"/namespaces/{_ns(namespace)}/audits", json_body=body)
        entry = AuditEntry.from_json(_loads(raw))
        if (entry.namespace, entry.epoch, entry.digest, entry.artifact) != (
            namespace,
            epoch,
            digest,
            bytes(artifact),
        ):
            raise _bad("the signed entry is not what was submitted")
        return entry

    def put_countersignature(self, namespace: str, epoch: int, signature: bytes) -> AuditEntry:
        """Store the operator counter-signature of ``epoch`` (once)."""
        path = f"/namespaces/{_ns(namespace)}/audits/{_check_u64(epoch, 'epoch')}/countersignature"
        body = {"signature": base64.b64encode(signature).decode("ascii")}
        _, raw = self._request("PUT", path, json_body=body)
        entry = AuditEntry.from_json(_loads(raw))
        if (entry.namespace, entry.epoch, entry.operator_countersignature) != (
            namespace,
            epoch,
            bytes(signature),
        ):
            raise _bad("the answer does not carry the counter-signature sent")
        return entry

    def audit(self, namespace: str, epoch: int) -> AuditEntry:
        path = f"/namespaces/{_ns(namespace)}/audits/{_check_u64(epoch, 'epoch')}"
        entry = AuditEntry.from_json(self._get_json(path))
        if (entry.namespace, entry.epoch) != (namespace, epoch):
            raise _bad("answer is about another namespace or epoch")
        return entry

    def last_verified_epoch(self, namespace: str) -> int | None:
        obj = _fields(
            self._get_json(f"/namespaces/{_ns(namespace)}/last-verified-epoch"),
            ("epoch",),
            "last verified epoch",
        )
        return _optional_int(obj["epoch"], "epoch")

    def checkpoint(self) -> bytes:
        """The latest signed checkpoint note (shape-checked; see :func:`verify_checkpoint`)."""
        _, raw = self._request("GET", "/checkpoint", want="text/plain")
        try:
            note = parse_note(raw)
            parse_checkpoint(note.text)
        except DecodeError:
            raise _bad("checkpoint is not a signed checkpoint note") from None
        return raw

    def inclusion_proof(self, leaf_index: int, tree_size: int) -> InclusionProof:
        params = {
            "leaf_index": _check_u64(leaf_index, "leaf_index"),
            "tree_size": _check_u64(tree_size, "tree_size"),
        }
        obj = _fields(
            self._get_json("/proofs/inclusion", params),
            ("leaf_index", "tree_size", "proof"),
            "inclusion proof",
        )
        proof = InclusionProof(
            _int(obj["leaf_index"], "leaf_index"),
            _int(obj["tree_size"], "tree_size"),
            _proof(obj["proof"]),
        )
        if (proof.leaf_index, proof.tree_size) != (leaf_index, tree_size):
            raise _bad("the proof is for another leaf or tree size")
        return proof

    def consistency_proof(self, first: int, second: int) -> ConsistencyProof:
        params = {"first": _check_u64(first, "first"), "second": _check_u64(second, "second")}
        obj = _fields(
            self._get_json("/proofs/consistency", params),
            ("first", "second", "proof"),
            "consistency proof",
        )
        proof = ConsistencyProof(
            _int(obj["first"], "first"), _int(obj["second"], "second"), _proof(obj["proof"])
        )
        if (proof.first, proof.second) != (first, second):
            raise _bad("the proof is for other tree sizes")
        return proof
