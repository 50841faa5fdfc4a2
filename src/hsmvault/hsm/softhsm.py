"""Throwaway SoftHSM2 tokens for tests and demos.

.. warning::

    SoftHSM2 is a software token: its "non-extractable" keys are files in its token
    directory, encrypted under the PIN. It proves that our code drives a real PKCS#11
    module correctly; it protects nothing from whoever owns the machine.

:func:`create_softhsm_token` makes a directory-local SoftHSM2 installation (its own
``softhsm2.conf``, selected through ``SOFTHSM2_CONF``), initializes a fresh token in it
with random PINs, and returns a :class:`SoftHsmToken`: module path, token label and user
PIN. The SO PIN is thrown away. Several tokens may share one directory.

PINs never appear in a log, a repr, an exception message or a command line: they are
typed into ``softhsm2-util``'s prompts through a pseudo-terminal.

SoftHSM2 reads ``SOFTHSM2_CONF`` and scans its tokens when a process initializes it, so
set the variable (:meth:`SoftHsmToken.activate`) and create every token the process will
use *before* the process first loads the module. On a local deployment put the directory
inside the node's NVRAM directory: the token's files are the HSM's inside, not host state.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import secrets
import select
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from hsmvault.errors import InvalidParameter
from hsmvault.hsm.custody.base import CustodyError
from hsmvault.hsm.custody.pkcs11 import Pkcs11Config
from hsmvault.hsm.nvram import SignatureAlgorithm

__all__ = [
    "CONF_FILE_NAME",
    "SoftHsmToken",
    "create_softhsm_token",
    "find_softhsm_module",
    "find_softhsm_util",
]

_log = logging.getLogger(__name__)

CONF_FILE_NAME = "softhsm2.conf"
_STORE_DIR_NAME = "tokens"
_MODULE_ENV = "SOFTHSM2_MODULE"
_CONF_ENV = "SOFTHSM2_CONF"
_MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/*/softhsm/libsofthsm2.so",
    "/usr/lib64/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",
)
_INSTALL_HINT = "install SoftHSM2 (Debian: apt-get install softhsm2)"
_PROMPT = re.compile(rb"Please (?:re)?enter (SO|user) PIN: ")
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
_INIT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class SoftHsmToken:
    """A SoftHSM2 token made by :func:`create_softhsm_token`. The PIN is kept out of
    ``repr`` and equality."""

    module_path: str
    token_label: str
    user_pin: str = field(repr=False, compare=False)
    conf_path: Path

    def environ(self) -> dict[str, str]:
        """The environment a process needs to see this token (for subprocesses)."""
        return {_CONF_ENV: str(self.conf_path)}

    def activate(self) -> None:
        """Point this process's ``SOFTHSM2_CONF`` at the token's configuration. Raises
        CustodyError if another configuration is already selected (SoftHSM2 reads it once
        per process initialization, so switching silently would hide tokens)."""
        current = os.environ.get(_CONF_ENV)
        if current is not None and current != str(self.conf_path):
            raise CustodyError("another SoftHSM2 configuration is active in this process")
        os.environ[_CONF_ENV] = str(self.conf_path)

    def pkcs11_config(self, identity_algorithm: SignatureAlgorithm | None = None) -> Pkcs11Config:
        """The :class:`Pkcs11Config` that opens this token."""
        return Pkcs11Config(self.module_path, self.token_label, self.user_pin, identity_algorithm)


def find_softhsm_module() -> str:
    """The path of ``libsofthsm2.so``: ``$SOFTHSM2_MODULE`` if set, else the usual
    install locations (Debian multiarch included), else next to ``softhsm2-util``.
    Raises CustodyError if SoftHSM2 is not installed."""
    override = os.environ.get(_MODULE_ENV)
    if override:
        if not os.path.isfile(override):
            raise CustodyError(f"${_MODULE_ENV} does not name a file")
        return override
    for pattern in _MODULE_CANDIDATES:
        for candidate in sorted(glob.glob(pattern)):
            if os.path.isfile(candidate):
                return candidate
    util = shutil.which("softhsm2-util")
    if util is not None:
        prefix = Path(util).resolve().parent.parent
        for beside in (prefix / "lib/softhsm/libsofthsm2.so", prefix / "lib/libsofthsm2.so"):
            if beside.is_file():
                return str(beside)
    raise CustodyError(f"SoftHSM2 PKCS#11 module not found: {_INSTALL_HINT}")


def find_softhsm_util() -> str:
    """The path of ``softhsm2-util``; CustodyError if it is not installed."""
    util = shutil.which("softhsm2-util")
    if util is None:
        raise CustodyError(f"softhsm2-util not found: {_INSTALL_HINT}")
    return util


def _write_conf(directory: Path) -> Path:
    token_dir = directory / _STORE_DIR_NAME
    token_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    conf = directory / CONF_FILE_NAME
    text = (
        "# hsmvault throwaway SoftHSM2 configuration (hsmvault.hsm.softhsm)\n"
        f"directories.tokendir = {token_dir}\n"
        "objectstore.backend = file\n"
        "log.level = ERROR\n"
        "slots.removable = false\n"
    )
    if conf.exists():
        if conf.read_text(encoding="utf-8") != text:
            raise InvalidParameter("directory holds a SoftHSM2 configuration not made here")
    else:
        conf.write_text(text, encoding="utf-8")
        conf.chmod(0o600)
    return conf


def _existing_labels(util: str, env: dict[str, str]) -> set[str]:
    shown = subprocess.run(  # noqa: S603 - fixed argv, no shell, no secrets
        [util, "--show-slots"], env=env, capture_output=True, text=True, check=False
    )
    return {
        line.split(":", 1)[1].strip()
        for line in shown.stdout.splitlines()
        if line.strip().startswith("Label:")
    }


def _redact(text: str, *secrets_: str) -> str:
    for value in secrets_:
        text = text.replace(value, "<redacted>")
    return text


def _init_token(util: str, label: str, so_pin: str, user_pin: str, env: dict[str, str]) -> None:
    """Run ``softhsm2-util --init-token --free`` and answer its PIN prompts through a
    pseudo-terminal, so that no PIN is ever on a command line."""
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell, no secrets
            [util, "--init-token", "--free", "--label", label],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            close_fds=True,
            start_new_session=True,
        )
    except OSError:
        os.close(master)
        raise
    finally:
        os.close(slave)
    transcript = bytearray()
    answered = 0
    deadline = time.monotonic() + _INIT_TIMEOUT_S
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CustodyError("softhsm2-util --init-token timed out")
            ready, _, _ = select.select([master], [], [], remaining)
            if not ready:
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            transcript += chunk
            prompts = _PROMPT.findall(transcript)
            while answered < len(prompts):
                pin = so_pin if prompts[answered] == b"SO" else user_pin
                os.write(master, pin.encode("ascii") + b"\n")
                answered += 1
        returncode = proc.wait(timeout=max(deadline - time.monotonic(), 1.0))
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if returncode != 0:
        lines = transcript.decode("utf-8", "replace").strip().splitlines() or [""]
        detail = _redact(lines[-1], so_pin, user_pin)
        raise CustodyError(f"softhsm2-util --init-token failed (exit {returncode}): {detail}")


def create_softhsm_token(
    directory: str | os.PathLike[str], label: str, *, user_pin: str | None = None
) -> SoftHsmToken:
    """Initialize a new SoftHSM2 token labelled ``label`` under ``directory``.

    Writes ``directory/softhsm2.conf`` (tokens in ``directory/tokens``) unless it is
    already there. ``label`` is 1..32 characters of ``[A-Za-z0-9._-]`` and must be new
    in this directory (InvalidParameter otherwise). ``user_pin`` defaults to a random
    32-hex-digit PIN. Raises CustodyError if SoftHSM2 is not installed or the
    initialization fails. Does not touch this process's environment.
    """
    if not _LABEL.fullmatch(label):
        raise InvalidParameter("token label must be 1..32 characters of [A-Za-z0-9._-]")
    if user_pin is not None and not (4 <= len(user_pin) <= 255 and user_pin.isprintable()):
        raise InvalidParameter("a SoftHSM2 PIN is 4..255 printable characters")
    module = find_softhsm_module()
    util = find_softhsm_util()
    root = Path(directory).resolve()
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    conf = _write_conf(root)
    env = {**os.environ, _CONF_ENV: str(conf)}
    if label in _existing_labels(util, env):
        raise InvalidParameter("a token with this label already exists in this directory")
    pin = user_pin if user_pin is not None else secrets.token_hex(16)
    _init_token(util, label, secrets.token_hex(16), pin, env)
    _log.info("created SoftHSM2 token %r under %s", label, root)
    return SoftHsmToken(module_path=module, token_label=label, user_pin=pin, conf_path=conf)
