"""The local deployment's operator key: it signs witness submissions and counter-signs
every witness signature (ADR 0010), in ``<data dir>/operator/``::

    operator/operator.json    {"version": 1, "custody": "software" | "softhsm",
                               "public_key": "<64 hex>"}  (public; written once)
    operator/operator.seed    custody "software": the Ed25519 seed (0600,
                              transparency.signers seed-file format)
    operator/softhsm/         custody "softhsm": a SoftHSM2 token holding the key
                              (generated inside the token, non-extractable) and
                              ``user-pin`` (0600) — a demo: the PIN sits beside the token

The custody is chosen when the key is made (``[operator] custody``) and recorded in
``operator.json``; opening the key later under another custody is refused rather than
silently making a second key (the witness knows only the first). With ``softhsm`` the
opening process points its ``SOFTHSM2_CONF`` at the operator's token (SoftHSM2 reads it
once per process), so that process must not use another SoftHSM2 configuration.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from hsmvault.errors import CustodyError, DecodeError, VaultError
from hsmvault.transparency.signers import (
    Ed25519Signer,
    Pkcs11Ed25519Signer,
    Pkcs11SignerConfig,
    SoftwareEd25519Signer,
)

__all__ = [
    "OPERATOR_DIR",
    "OperatorKey",
    "OperatorKeyError",
    "open_operator_key",
    "read_operator_public_key",
]

OPERATOR_DIR: Final = "operator"
_META: Final = "operator.json"
_SEED: Final = "operator.seed"
_SOFTHSM: Final = "softhsm"
_PIN_FILE: Final = "user-pin"
_TOKEN_LABEL: Final = "hsmvault-operator"  # noqa: S105 - a label
_KEY_LABEL: Final = "hsmvault-operator"

Custody = Literal["software", "softhsm"]


class OperatorKeyError(VaultError):
    """The operator key cannot be opened as configured (message names the problem)."""


@dataclass
class OperatorKey:
    """An open operator key: its signer, custody and directory. :meth:`close` it."""

    signer: Ed25519Signer
    custody: Custody
    directory: Path

    @property
    def public_key(self) -> bytes:
        return self.signer.public_key()

    def close(self) -> None:
        close = getattr(self.signer, "close", None)
        if callable(close):
            close()


def _meta_path(data_dir: Path) -> Path:
    return data_dir / OPERATOR_DIR / _META


def read_operator_public_key(data_dir: Path) -> tuple[bytes, str] | None:
    """``(public key, custody)`` from ``operator.json``, or ``None`` if there is no
    operator key yet. Raises :class:`DecodeError` if the file is malformed."""
    try:
        doc = json.loads(_meta_path(data_dir).read_text(encoding="ascii"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        raise DecodeError("operator.json is unreadable or not JSON") from None
    if (
        not isinstance(doc, dict)
        or set(doc) != {"version", "custody", "public_key"}
        or doc["version"] != 1
        or doc["custody"] not in ("software", "softhsm")
        or not isinstance(doc["public_key"], str)
        or len(doc["public_key"]) != 64
        or any(c not in "0123456789abcdef" for c in doc["public_key"])
    ):
        raise DecodeError("operator.json is malformed")
    return bytes.fromhex(doc["public_key"]), str(doc["custody"])


def _write_meta(data_dir: Path, custody: Custody, public_key: bytes) -> None:
    path = _meta_path(data_dir)
    tmp = path.with_name(path.name + ".tmp")
    doc = {"version": 1, "custody": custody, "public_key": public_key.hex()}
    tmp.write_text(json.dumps(doc, sort_keys=True) + "\n", encoding="ascii")
    os.replace(tmp, path)


def _read_pin(path: Path) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        info = os.fstat(fd)
        if info.st_uid != os.geteuid() or info.st_mode & 0o077:
            raise OperatorKeyError(f"{path} must be owned by this user with mode 0600")
        raw = os.read(fd, 512)
    finally:
        os.close(fd)
    return raw.decode("ascii").strip()


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_softhsm(directory: Path, create: bool) -> Pkcs11Ed25519Signer:
    # Imported here: only the softhsm custody needs the SoftHSM2 helper.
    from hsmvault.hsm.softhsm import (  # noqa: PLC0415
        CONF_FILE_NAME,
        create_softhsm_token,
        find_softhsm_module,
    )

    token_dir = directory / _SOFTHSM
    pin_file = token_dir / _PIN_FILE
    conf = token_dir / CONF_FILE_NAME
    if not pin_file.exists():
        if not create:
            raise OperatorKeyError(f"{pin_file} is missing: the operator token is incomplete")
        if token_dir.exists() and any(token_dir.iterdir()):
            raise OperatorKeyError(
                f"{token_dir} holds a half-made token (creation was interrupted): remove it"
            )
        token = create_softhsm_token(token_dir, _TOKEN_LABEL)
        _write_private(pin_file, token.user_pin.encode("ascii") + b"\n")
    current = os.environ.get("SOFTHSM2_CONF")
    if current is not None and current != str(conf.resolve()):
        raise OperatorKeyError(
            "another SoftHSM2 configuration (SOFTHSM2_CONF) is active in this process;"
            " the operator token needs its own"
        )
    os.environ["SOFTHSM2_CONF"] = str(conf.resolve())
    config = Pkcs11SignerConfig(
        module_path=find_softhsm_module(),
        token_label=_TOKEN_LABEL,
        user_pin=_read_pin(pin_file),
        key_label=_KEY_LABEL,
    )
    return Pkcs11Ed25519Signer.open(config, create=create)


def open_operator_key(data_dir: Path, custody: Custody) -> OperatorKey:
    """Open (making it on first use) the operator key of ``data_dir`` under ``custody``.

    Raises :class:`OperatorKeyError` if the existing key was made under another custody,
    its files are incomplete, or its public key is not the recorded one;
    :class:`~hsmvault.errors.CustodyError` / ``DecodeError`` from the key store."""
    directory = data_dir / OPERATOR_DIR
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    recorded = read_operator_public_key(data_dir)
    if recorded is not None and recorded[1] != custody:
        raise OperatorKeyError(
            f"the operator key in {directory} was made with custody {recorded[1]!r}, not"
            f" {custody!r}: set [operator] custody = {recorded[1]!r} (the witness knows"
            " only that key)"
        )
    create = recorded is None
    signer: Ed25519Signer
    try:
        if custody == "software":
            if not create and not (directory / _SEED).exists():
                raise OperatorKeyError(f"{directory / _SEED} is missing")
            signer = SoftwareEd25519Signer.open(directory / _SEED, create=create)
        else:
            signer = _open_softhsm(directory, create)
    except CustodyError as exc:
        raise OperatorKeyError(f"cannot open the operator key ({custody}): {exc}") from None
    key = OperatorKey(signer, custody, directory)
    if recorded is None:
        _write_meta(data_dir, custody, signer.public_key())
    elif signer.public_key() != recorded[0]:
        with contextlib.suppress(VaultError):
            key.close()
        raise OperatorKeyError(
            f"the operator key in {directory} is not the one recorded in operator.json"
        )
    return key
