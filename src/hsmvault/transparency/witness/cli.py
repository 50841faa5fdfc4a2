"""``python -m hsmvault.transparency.witness <command>``: run and administer a witness.

Commands (each takes ``--data-dir D``, the witness's own directory)::

    init                 create keys, admin token and an empty log  [--name N] [--key K]
    serve                serve the API (initialises D first if it is empty)
                         [--host H] [--port P] [--name N] [--key K] [--allow-remote]
    register-namespace   --namespace NS --root-epoch E --operator-key HEX [--url URL]
                         (over HTTP with the admin token of D when --url is given, else
                         directly on D while the witness is stopped)
    add-key              --not-before MS: a new signing key used from then on (offline)
    info                 print what /info serves (offline, reads only settings)
    repair               drop an interrupted, never-acknowledged append (offline)

``--key`` is ``software`` (seed files in D) or ``softhsm`` (a SoftHSM2 token in D).
``serve`` prints one JSON line ``{"url": ...}`` on stdout once it listens; other
commands print JSON. Exit status 0 on success, 1 on a refusal or error, 2 on bad usage.

:func:`add_commands` adds these commands to any argparse sub-parser set (the
``hsmvault witness ...`` command reuses it); :func:`main` is the module entry point.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from hsmvault.errors import InvalidParameter, VaultError
from hsmvault.transparency.signed_note import Verifier
from hsmvault.transparency.witness_client import WitnessClient

from .core import Witness, default_clock
from .datadir import (
    ADMIN_TOKEN_FILE,
    LOG_DIR,
    SETTINGS_FILE,
    DirectoryLock,
    Pkcs11KeySpec,
    add_signing_key,
    init_data_dir,
    load_settings,
    read_admin_token,
)
from .model import check_witness_name
from .server import WitnessConfig, run_witness
from .store import discard_uncommitted_tail

__all__ = ["DEFAULT_NAME", "add_commands", "main"]

DEFAULT_NAME: Final = "localhost/hsmvault-witness"
EXIT_OK: Final = 0
EXIT_ERROR: Final = 1


def _print(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


def _settings_info(data_dir: Path) -> dict[str, Any]:
    settings = load_settings(data_dir)
    backend = "software"
    spec = settings.signing_keys[-1].spec
    if isinstance(spec, Pkcs11KeySpec):
        backend = "softhsm" if spec.softhsm_conf is not None else "pkcs11"
    return {
        "name": settings.name,
        "keys": [e.published.to_json() for e in settings.signing_keys],
        "log_key": Verifier.from_public_key(settings.name, settings.log_key.public_key).to_vkey(),
        "key_backend": backend,
        "admin_token_file": str(data_dir / ADMIN_TOKEN_FILE),
    }


def _init(args: argparse.Namespace) -> int:
    init_data_dir(
        args.data_dir, name=args.name or DEFAULT_NAME, backend=args.key, now_ms=default_clock()
    )
    _print(_settings_info(args.data_dir))
    return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    data_dir: Path = args.data_dir
    if not (data_dir / SETTINGS_FILE).exists():
        init_data_dir(
            data_dir,
            name=args.name or DEFAULT_NAME,
            backend=args.key or "software",
            now_ms=default_clock(),
        )
    else:
        info = _settings_info(data_dir)
        if args.name is not None and args.name != info["name"]:
            raise InvalidParameter("--name differs from the initialised witness's name")
        if args.key is not None and args.key != info["key_backend"]:
            raise InvalidParameter("--key differs from the initialised witness's key backend")
    config = WitnessConfig(
        data_dir=data_dir,
        host=args.host,
        port=args.port,
        allow_remote=args.allow_remote,
        log_level=args.log_level,
    )
    run_witness(config, on_ready=lambda url: _print({"url": url}))
    return EXIT_OK


def _register(args: argparse.Namespace) -> int:
    try:
        key = bytes.fromhex(args.operator_key)
    except ValueError:
        raise InvalidParameter("--operator-key must be hex") from None
    if args.url is not None:
        with WitnessClient(args.url) as client:
            info = client.register_namespace(
                read_admin_token(args.data_dir), args.namespace, args.root_epoch, key
            )
        _print(info.to_json())
        return EXIT_OK
    witness = Witness.open(args.data_dir)
    try:
        state, _created = witness.register_namespace(args.namespace, args.root_epoch, key)
    finally:
        witness.close()
    _print(state.to_json())
    return EXIT_OK


def _add_key(args: argparse.Namespace) -> int:
    key = add_signing_key(args.data_dir, not_before=args.not_before, now_ms=default_clock())
    _print(key.to_json())
    return EXIT_OK


def _info(args: argparse.Namespace) -> int:
    _print(_settings_info(args.data_dir))
    return EXIT_OK


def _repair(args: argparse.Namespace) -> int:
    with DirectoryLock(args.data_dir):
        dropped = discard_uncommitted_tail(args.data_dir / LOG_DIR)
    _print({"dropped_bytes": dropped})
    return EXIT_OK


def _name(value: str) -> str:
    try:
        return check_witness_name(value)
    except InvalidParameter as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _u64(value: str) -> int:
    if not value.isascii() or not value.isdigit() or int(value) >= 1 << 64:
        raise argparse.ArgumentTypeError("must be a decimal integer in 0..2^64-1")
    return int(value)


def add_commands(subparsers: Any) -> None:
    """Add the witness commands to ``subparsers`` (from ``add_subparsers``); each sets
    ``func`` to its handler ``(argparse.Namespace) -> exit status``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", type=Path, required=True, help="the witness's data directory")
    key_choice = ("software", "softhsm")

    p = subparsers.add_parser("init", parents=[common], help="create a witness data directory")
    p.add_argument(
        "--name", type=_name, default=None, help=f"checkpoint origin (default {DEFAULT_NAME})"
    )
    p.add_argument("--key", choices=key_choice, default="software", help="key backend")
    p.set_defaults(func=_init)

    p = subparsers.add_parser("serve", parents=[common], help="serve the witness API")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8440)
    p.add_argument("--name", type=_name, default=None, help="name when initialising")
    p.add_argument("--key", choices=key_choice, default=None, help="key backend when initialising")
    p.add_argument("--allow-remote", action="store_true", help="bind beyond loopback")
    p.add_argument("--log-level", default="warning")
    p.set_defaults(func=_serve)

    p = subparsers.add_parser("register-namespace", parents=[common], help="register a namespace")
    p.add_argument("--namespace", required=True)
    p.add_argument("--root-epoch", type=_u64, required=True)
    p.add_argument("--operator-key", required=True, help="operator Ed25519 public key, hex")
    p.add_argument("--url", default=None, help="a running witness (else work on --data-dir)")
    p.set_defaults(func=_register)

    p = subparsers.add_parser("add-key", parents=[common], help="add a signing key (rotation)")
    p.add_argument("--not-before", type=_u64, required=True, help="ms since the Unix epoch")
    p.set_defaults(func=_add_key)

    p = subparsers.add_parser("info", parents=[common], help="print the witness's public keys")
    p.set_defaults(func=_info)

    p = subparsers.add_parser("repair", parents=[common], help="drop an interrupted append")
    p.set_defaults(func=_repair)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hsmvault.transparency.witness", description="hsmvault witness"
    )
    add_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status: int = args.func(args)
    except VaultError as exc:
        sys.stderr.write(f"witness: {type(exc).__name__}: {exc}\n")
        return EXIT_ERROR
    return status
