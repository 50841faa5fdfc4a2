"""The witness's own data directory: its settings, keys, admin token and lock.

Layout (``docs/formats/witness-log.md``)::

    witness.json     settings: name, log key, signing keys (public key, not_before, where
                     the private key is); canonical JSON, rewritten atomically
    admin-token      the namespace-registration bearer token (0600)
    keys/*.seed      software keys (0600, :class:`SoftwareEd25519Signer` format)
    softhsm/         ``--key softhsm`` only: the SoftHSM2 token store and its user PIN
                     (``user-pin``, 0600) — a demo: the PIN sits next to the token
    log/             the record store (:mod:`.store`)
    checkpoint       the latest signed checkpoint note
    lock             ``flock``-ed by the process that owns the directory

Key backends: ``software`` (seed files), ``softhsm`` (a SoftHSM2 token created inside
the directory; both keys in it) and ``pkcs11`` (an existing token of any PKCS#11 module;
its PIN comes from :class:`WitnessConfig`'s ``pkcs11_pin`` or ``$HSMVAULT_WITNESS_PIN``,
never from a file the directory does not own).
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import re
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Final, Literal, Protocol

from hsmvault.errors import CustodyError, DecodeError, InvalidParameter
from hsmvault.hsm.softhsm import CONF_FILE_NAME, create_softhsm_token, find_softhsm_module
from hsmvault.transparency.signers import (
    Ed25519Signer,
    Pkcs11Ed25519Signer,
    Pkcs11SignerConfig,
    SoftwareEd25519Signer,
)

from .codec import (
    U64_MAX,
    canonical_json,
    fields,
    loads_strict,
    read_hex,
    read_str,
    read_u64,
)
from .errors import WitnessStateError
from .model import WitnessKey, check_witness_name
from .store import init_store

__all__ = [
    "ADMIN_TOKEN_FILE",
    "CHECKPOINT_FILE",
    "LOG_DIR",
    "PIN_ENV",
    "SETTINGS_FILE",
    "ClosableSigner",
    "DirectoryLock",
    "KeyEntry",
    "Pkcs11Backend",
    "Pkcs11KeySpec",
    "SoftwareKeySpec",
    "WitnessSettings",
    "add_signing_key",
    "init_data_dir",
    "load_settings",
    "open_signer",
    "read_admin_token",
]

SETTINGS_FILE: Final = "witness.json"
ADMIN_TOKEN_FILE: Final = "admin-token"  # noqa: S105 - a file name
CHECKPOINT_FILE: Final = "checkpoint"
LOCK_FILE: Final = "lock"
LOG_DIR: Final = "log"
KEYS_DIR: Final = "keys"
SOFTHSM_DIR: Final = "softhsm"
SOFTHSM_TOKEN_LABEL: Final = "hsmvault-witness"  # noqa: S105 - a label
PIN_ENV: Final = "HSMVAULT_WITNESS_PIN"
LOG_KEY_LABEL: Final = "hsmvault-witness-log"
_SIGNING_KEY_LABEL: Final = "hsmvault-witness-signing-{n}"
_TOKEN_RE: Final = re.compile(r"[A-Za-z0-9_-]{43}\n")
_REL_RE: Final = re.compile(r"[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*")
_SOFTHSM_CONF_ENV: Final = "SOFTHSM2_CONF"
_MAX_SETTINGS: Final = 1 << 20
_MAX_KEYS: Final = 64

KeyBackend = Literal["software", "softhsm"]


class ClosableSigner(Ed25519Signer, Protocol):
    def close(self) -> None: ...


@dataclass(frozen=True)
class SoftwareKeySpec:
    """A software key: its seed file, relative to the data directory."""

    seed_file: str

    def to_json(self) -> dict[str, Any]:
        return {"backend": "software", "seed_file": self.seed_file}


@dataclass(frozen=True)
class Pkcs11KeySpec:
    """A key in a PKCS#11 token. ``pin_file`` and ``softhsm_conf`` (relative to the data
    directory) are set only for the ``softhsm`` backend, whose token lives inside it."""

    module: str
    token_label: str
    key_label: str
    pin_file: str | None = None
    softhsm_conf: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "backend": "pkcs11",
            "module": self.module,
            "token_label": self.token_label,
            "key_label": self.key_label,
            "pin_file": self.pin_file,
            "softhsm_conf": self.softhsm_conf,
        }


KeySpec = SoftwareKeySpec | Pkcs11KeySpec


@dataclass(frozen=True)
class Pkcs11Backend:
    """An existing PKCS#11 token to create the witness keys in (``init``/``add-key``)."""

    module: str
    token_label: str
    user_pin: str = field(repr=False, compare=False)


@dataclass(frozen=True)
class KeyEntry:
    public_key: bytes
    not_before: int
    spec: KeySpec

    @property
    def published(self) -> WitnessKey:
        return WitnessKey(self.public_key, self.not_before)


@dataclass(frozen=True)
class WitnessSettings:
    """``witness.json``: the witness's name, creation time, log key and signing keys
    (ordered by strictly increasing ``not_before``)."""

    name: str
    created_at: int
    log_key: KeyEntry
    signing_keys: tuple[KeyEntry, ...]

    def to_json(self) -> dict[str, Any]:
        def entry(e: KeyEntry, with_not_before: bool) -> dict[str, Any]:
            out: dict[str, Any] = {"public_key": e.public_key.hex(), "key": e.spec.to_json()}
            if with_not_before:
                out["not_before"] = e.not_before
            return out

        return {
            "version": 1,
            "name": self.name,
            "created_at": self.created_at,
            "log_key": entry(self.log_key, False),
            "signing_keys": [entry(e, True) for e in self.signing_keys],
        }


# --------------------------------------------------------------------------- files


def _check_private_file(fd: int, what: str) -> None:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise WitnessStateError(f"{what} is not a regular file")
    if info.st_uid != os.geteuid():
        raise WitnessStateError(f"{what} is not owned by this user")
    if info.st_mode & 0o077:
        raise WitnessStateError(f"{what} is accessible to group or others (want 0600)")


def _read_private(path: Path, what: str, limit: int = 4096) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise WitnessStateError(f"{what} is missing") from None
    except OSError as exc:
        raise WitnessStateError(f"cannot open {what} ({type(exc).__name__})") from None
    try:
        _check_private_file(fd, what)
        return os.read(fd, limit + 1)
    finally:
        os.close(fd)


def write_private_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` (0600): write a temporary file, fsync, rename, fsync
    the directory."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_admin_token(data_dir: Path) -> str:
    """The admin bearer token (strict: 0600, owned by us, 43 base64url characters)."""
    raw = _read_private(data_dir / ADMIN_TOKEN_FILE, "admin token file")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise WitnessStateError("admin token file is malformed") from None
    if not _TOKEN_RE.fullmatch(text):
        raise WitnessStateError("admin token file is malformed")
    return text[:-1]


def _read_pin_file(path: Path) -> str:
    raw = _read_private(path, "PIN file")
    if not raw.endswith(b"\n") or len(raw) > 257:
        raise WitnessStateError("PIN file is malformed")
    try:
        pin = raw[:-1].decode("ascii")
    except UnicodeDecodeError:
        raise WitnessStateError("PIN file is malformed") from None
    if not (4 <= len(pin) <= 255 and pin.isprintable()):
        raise WitnessStateError("PIN file is malformed")
    return pin


# --------------------------------------------------------------------------- settings


def _rel(value: object, what: str) -> str:
    text = read_str(value, what)
    if not _REL_RE.fullmatch(text) or ".." in PurePosixPath(text).parts:
        raise DecodeError(f"{what} must be a relative path inside the data directory")
    return text


def _parse_spec(value: object) -> KeySpec:
    if isinstance(value, dict) and value.get("backend") == "software":
        obj = fields(value, ("backend", "seed_file"), "software key")
        return SoftwareKeySpec(_rel(obj["seed_file"], "seed_file"))
    keys = ("backend", "module", "token_label", "key_label", "pin_file", "softhsm_conf")
    obj = fields(value, keys, "key")
    if obj["backend"] != "pkcs11":
        raise DecodeError("key backend must be software or pkcs11")
    pin_file = obj["pin_file"]
    conf = obj["softhsm_conf"]
    spec = Pkcs11KeySpec(
        module=read_str(obj["module"], "module"),
        token_label=read_str(obj["token_label"], "token_label"),
        key_label=read_str(obj["key_label"], "key_label"),
        pin_file=None if pin_file is None else _rel(pin_file, "pin_file"),
        softhsm_conf=None if conf is None else _rel(conf, "softhsm_conf"),
    )
    if not spec.module or not spec.token_label or not spec.key_label:
        raise DecodeError("PKCS#11 module, token label and key label must not be empty")
    return spec


def _parse_entry(value: object, with_not_before: bool) -> KeyEntry:
    keys = ("public_key", "key", "not_before") if with_not_before else ("public_key", "key")
    obj = fields(value, keys, "key entry")
    not_before = read_u64(obj["not_before"], "not_before") if with_not_before else 0
    entry = KeyEntry(
        read_hex(obj["public_key"], 32, "public_key"), not_before, _parse_spec(obj["key"])
    )
    try:
        entry.published  # noqa: B018 - validates the public key
    except InvalidParameter:
        raise DecodeError("public_key is not an Ed25519 key") from None
    return entry


def load_settings(data_dir: Path) -> WitnessSettings:
    """Read ``witness.json`` strictly; WitnessStateError if absent or malformed."""
    path = data_dir / SETTINGS_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise WitnessStateError(
            f"{data_dir} is not a witness data directory (no {SETTINGS_FILE}; run init)"
        ) from None
    try:
        if not raw.endswith(b"\n"):
            raise DecodeError("no final newline")
        obj = fields(
            loads_strict(raw[:-1], max_len=_MAX_SETTINGS),
            ("version", "name", "created_at", "log_key", "signing_keys"),
            "settings",
        )
        if obj["version"] != 1:
            raise DecodeError("unknown settings version")
        if canonical_json(obj) != raw[:-1]:
            raise DecodeError("settings are not canonical JSON")
        try:
            name = check_witness_name(obj["name"])
        except InvalidParameter as exc:
            raise DecodeError(str(exc)) from None
        keys = obj["signing_keys"]
        if not isinstance(keys, list) or not 0 < len(keys) <= _MAX_KEYS:
            raise DecodeError(f"signing_keys must list 1..{_MAX_KEYS} keys")
        signing = tuple(_parse_entry(k, True) for k in keys)
        if any(a.not_before >= b.not_before for a, b in itertools.pairwise(signing)):
            raise DecodeError("signing keys must have strictly increasing not_before")
        return WitnessSettings(
            name=name,
            created_at=read_u64(obj["created_at"], "created_at"),
            log_key=_parse_entry(obj["log_key"], False),
            signing_keys=signing,
        )
    except DecodeError as exc:
        raise WitnessStateError(f"{path} is malformed: {exc}") from None


def _save_settings(data_dir: Path, settings: WitnessSettings) -> None:
    write_private_atomic(data_dir / SETTINGS_FILE, canonical_json(settings.to_json()) + b"\n")


# --------------------------------------------------------------------------- keys


def _activate_softhsm(conf: Path) -> None:
    current = os.environ.get(_SOFTHSM_CONF_ENV)
    if current is not None and current != str(conf):
        raise CustodyError(
            "another SoftHSM2 configuration is active in this process; run the witness in"
            " its own process"
        )
    os.environ[_SOFTHSM_CONF_ENV] = str(conf)


def open_signer(
    data_dir: Path, spec: KeySpec, *, pin: str | None = None, create: bool = False
) -> ClosableSigner:
    """Open (with ``create``: make) the key ``spec`` describes. CustodyError or
    WitnessStateError if it cannot be opened."""
    if isinstance(spec, SoftwareKeySpec):
        try:
            return _SoftwareCloser(
                SoftwareEd25519Signer.open(data_dir / spec.seed_file, create=create)
            )
        except DecodeError as exc:
            raise WitnessStateError(f"seed file {spec.seed_file}: {exc}") from None
    if spec.softhsm_conf is not None:
        _activate_softhsm(data_dir / spec.softhsm_conf)
    if spec.pin_file is not None:
        pin = _read_pin_file(data_dir / spec.pin_file)
    elif pin is None:
        pin = os.environ.get(PIN_ENV)
    if not pin:
        raise CustodyError(f"no PIN for the PKCS#11 token (set ${PIN_ENV})")
    config = Pkcs11SignerConfig(spec.module, spec.token_label, pin, spec.key_label)
    return Pkcs11Ed25519Signer.open(config, create=create)


class _SoftwareCloser:
    """A software signer with a no-op ``close`` (the common interface)."""

    __slots__ = ("_signer",)

    def __init__(self, signer: SoftwareEd25519Signer) -> None:
        self._signer = signer

    def public_key(self) -> bytes:
        return self._signer.public_key()

    def sign(self, message: bytes) -> bytes:
        return self._signer.sign(message)

    def close(self) -> None:
        return None

    def __repr__(self) -> str:
        return repr(self._signer)


def _spec_for(
    data_dir: Path, backend: KeyBackend | Pkcs11Backend, label: str, seed_name: str
) -> KeySpec:
    if backend == "software":
        return SoftwareKeySpec(f"{KEYS_DIR}/{seed_name}.seed")
    if backend == "softhsm":
        return Pkcs11KeySpec(
            module=find_softhsm_module(),
            token_label=SOFTHSM_TOKEN_LABEL,
            key_label=label,
            pin_file=f"{SOFTHSM_DIR}/user-pin",
            softhsm_conf=f"{SOFTHSM_DIR}/{CONF_FILE_NAME}",
        )
    if isinstance(backend, Pkcs11Backend):
        return Pkcs11KeySpec(backend.module, backend.token_label, label)
    raise InvalidParameter("key backend must be software, softhsm or a Pkcs11Backend")


def _make_key(data_dir: Path, spec: KeySpec, not_before: int, pin: str | None) -> KeyEntry:
    signer = open_signer(data_dir, spec, pin=pin, create=True)
    try:
        return KeyEntry(signer.public_key(), not_before, spec)
    finally:
        signer.close()


def _backend_pin(backend: KeyBackend | Pkcs11Backend) -> str | None:
    return backend.user_pin if isinstance(backend, Pkcs11Backend) else None


def init_data_dir(
    data_dir: Path,
    *,
    name: str,
    backend: KeyBackend | Pkcs11Backend,
    now_ms: int,
) -> str:
    """Create a witness data directory (absent or empty): keys, admin token, empty store.
    The first signing key is valid from ``now_ms``. Returns the admin token. The initial
    (empty) checkpoint is written when the witness first opens the directory."""
    check_witness_name(name)
    if not 0 <= now_ms <= U64_MAX:
        raise InvalidParameter("now_ms must fit in 64 bits")
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if any(data_dir.iterdir()):
        raise InvalidParameter(f"{data_dir} is not empty; a witness is initialised only once")
    with DirectoryLock(data_dir):
        (data_dir / KEYS_DIR).mkdir(mode=0o700)
        if backend == "softhsm":
            token = create_softhsm_token(data_dir / SOFTHSM_DIR, SOFTHSM_TOKEN_LABEL)
            write_private_atomic(
                data_dir / SOFTHSM_DIR / "user-pin", token.user_pin.encode("ascii") + b"\n"
            )
        pin = _backend_pin(backend)
        log_key = _make_key(data_dir, _spec_for(data_dir, backend, LOG_KEY_LABEL, "log"), 0, pin)
        first = _spec_for(data_dir, backend, _SIGNING_KEY_LABEL.format(n=1), "signing-1")
        signing = _make_key(data_dir, first, now_ms, pin)
        token_text = secrets.token_urlsafe(32)
        write_private_atomic(data_dir / ADMIN_TOKEN_FILE, token_text.encode("ascii") + b"\n")
        init_store(data_dir / LOG_DIR)
        settings = WitnessSettings(name, now_ms, log_key, (signing,))
        _save_settings(data_dir, settings)
    return token_text


def add_signing_key(
    data_dir: Path,
    *,
    not_before: int,
    now_ms: int,
    backend: KeyBackend | Pkcs11Backend | None = None,
    pin: str | None = None,
) -> WitnessKey:
    """Add a signing key used for signatures from ``not_before`` (ms) on. It must be at
    least ``now_ms`` and after every existing key's ``not_before``. The witness must not
    be running (the directory lock is taken); restart it to use the key. ``backend``
    defaults to the current newest key's (same token for PKCS#11)."""
    with DirectoryLock(data_dir):
        settings = load_settings(data_dir)
        if not now_ms <= not_before <= U64_MAX:
            raise InvalidParameter("not_before must be now or later")
        if not_before <= settings.signing_keys[-1].not_before:
            raise InvalidParameter("not_before must be after every existing key's not_before")
        if len(settings.signing_keys) >= _MAX_KEYS:
            raise InvalidParameter("too many signing keys")
        n = len(settings.signing_keys) + 1
        label = _SIGNING_KEY_LABEL.format(n=n)
        newest = settings.signing_keys[-1].spec
        if backend is None:
            if isinstance(newest, SoftwareKeySpec):
                spec: KeySpec = SoftwareKeySpec(f"{KEYS_DIR}/signing-{n}.seed")
            else:
                spec = Pkcs11KeySpec(
                    newest.module, newest.token_label, label, newest.pin_file, newest.softhsm_conf
                )
        else:
            spec = _spec_for(data_dir, backend, label, f"signing-{n}")
            pin = _backend_pin(backend) or pin
        entry = _make_key(data_dir, spec, not_before, pin)
        if any(e.public_key == entry.public_key for e in settings.signing_keys):
            raise CustodyError("the new signing key equals an existing one")
        updated = WitnessSettings(
            settings.name,
            settings.created_at,
            settings.log_key,
            (*settings.signing_keys, entry),
        )
        _save_settings(data_dir, updated)
        return entry.published


# --------------------------------------------------------------------------- lock


class DirectoryLock:
    """An exclusive ``flock`` on ``<data dir>/lock``: one witness process per directory."""

    def __init__(self, data_dir: Path) -> None:
        self._path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise WitnessStateError("another witness process holds this data directory") from None
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> DirectoryLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
