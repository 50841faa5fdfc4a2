"""Ed25519 signing keys for the transparency zone: the witness's signing and log keys, and
the operator's counter-signing key.

Two implementations of one small protocol, :class:`Ed25519Signer`:

* :class:`SoftwareEd25519Signer` — the 32-byte RFC 8032 seed in a file of its own, mode
  0600, created if absent and loaded strictly (exact format, owner-only permissions,
  owned by this user, not a symlink). The seed is held by ``cryptography``'s Ed25519 key.
* :class:`Pkcs11Ed25519Signer` — the key pair lives in a PKCS#11 token (SoftHSM2 in tests
  and demos, any PKCS#11 v3 HSM with Ed25519 in production), found by its label. If it is
  absent it is generated *in the token* (``CKM_EC_EDWARDS_KEY_PAIR_GEN``) as a sensitive,
  non-extractable, non-modifiable, non-copyable, sign-only private key; an existing key is
  accepted only if it still carries ``CKA_SENSITIVE``, ``CKA_ALWAYS_SENSITIVE``,
  ``CKA_NEVER_EXTRACTABLE``, not ``CKA_EXTRACTABLE`` and ``CKA_LOCAL`` (so a key somebody
  imported under our label is refused). Signing is ``CKM_EDDSA`` (pure Ed25519, no
  pre-hash); the raw 32-byte public key is read from ``CKA_EC_POINT`` (a DER OCTET STRING,
  or raw on some tokens). Opening runs a sign/verify self-test.

Neither class prints, pickles or copies key material: ``repr`` shows the public key only,
and pickling raises :class:`TypeError`. Errors are :class:`~hsmvault.errors.CustodyError`
(key store cannot do its job) or :class:`~hsmvault.errors.DecodeError` (a seed file that
does not parse); messages never contain a PIN or a key.

PKCS#11 login state belongs to the process, not to a session: every signer on one token
(module path + token label) in this process shares one logged-in session, and each
signature is made under that token's lock. The first opener's PIN logs in; a later opener
must present the same PIN. Do not open the same token through another PKCS#11 user in the
same process (e.g. :class:`hsmvault.hsm.custody.pkcs11.Pkcs11Custody`): its logout would
end ours.

This module imports nothing from ``hsmvault.hsm``: it is used by the witness and by the
operator tooling, which are not part of the trusted HSM zone.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import re
import secrets
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NoReturn, Protocol, runtime_checkable

import pkcs11
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11.types import Object, PrivateKey, PublicKey, Session, SignMixin

from hsmvault.closing import ClosingContext
from hsmvault.durable_files import fsync_directory
from hsmvault.errors import CustodyError, DecodeError, InvalidParameter
from hsmvault.pkcs11_tokens import (
    ED25519_EC_PARAMS,
    LOCKED_KEY_TEMPLATE,
    REQUIRED_PROTECTIONS,
    check_protected,
    open_token_session,
)
from hsmvault.pkcs11_tokens import find_one as _one
from hsmvault.pkcs11_tokens import token_error as _err

__all__ = [
    "SEED_FILE_HEADER",
    "Ed25519Signer",
    "Pkcs11Ed25519Signer",
    "Pkcs11SignerConfig",
    "SoftwareEd25519Signer",
]

#: First line of a seed file; the second line is the seed as 64 lowercase hex digits.
SEED_FILE_HEADER: Final = b"hsmvault-ed25519-seed-v1\n"
_SEED_FILE_LEN: Final = len(SEED_FILE_HEADER) + 64 + 1
_HEX64: Final = re.compile(rb"[0-9a-f]{64}\n")
_KEY_LABEL: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}")

#: What an existing private key must carry before we sign with it.
_REQUIRED: Final = {**REQUIRED_PROTECTIONS, Attribute.SIGN: True}


@runtime_checkable
class Ed25519Signer(Protocol):
    """Something that holds an Ed25519 private key and signs with it (RFC 8032, pure)."""

    def public_key(self) -> bytes:
        """The raw 32-byte public key."""
        ...

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``message``."""
        ...


def _no_pickle(obj: object) -> NoReturn:
    raise TypeError(f"{type(obj).__name__} holds a private key and cannot be pickled or copied")


class _NoPickle:
    """Mixin of the signers: pickling and (deep) copying raise TypeError."""

    __slots__ = ()

    def __reduce__(self) -> NoReturn:
        _no_pickle(self)

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        _no_pickle(self)

    def __copy__(self) -> NoReturn:
        _no_pickle(self)

    def __deepcopy__(self, memo: Any) -> NoReturn:
        _no_pickle(self)


def _self_test(signer: Ed25519Signer) -> None:
    probe = b"hsmvault/signer-self-test/v1\x00" + secrets.token_bytes(16)
    try:
        Ed25519PublicKey.from_public_bytes(signer.public_key()).verify(signer.sign(probe), probe)
    except (InvalidSignature, ValueError):
        raise CustodyError("signing key failed its sign/verify self-test") from None


# --------------------------------------------------------------------------- software


class SoftwareEd25519Signer(_NoPickle):
    """An Ed25519 key whose seed is in memory (from a 0600 seed file, or given).

    Seed file format (exactly 90 bytes)::

        hsmvault-ed25519-seed-v1\\n<64 lowercase hex digits of the 32-byte seed>\\n
    """

    __slots__ = ("_key", "_public")

    def __init__(self, seed: bytes) -> None:
        """A signer from a 32-byte RFC 8032 seed (InvalidParameter otherwise)."""
        if type(seed) is not bytes or len(seed) != 32:
            raise InvalidParameter("an Ed25519 seed is 32 bytes")
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        self._public = self._key.public_key().public_bytes_raw()

    @classmethod
    def generate(cls) -> SoftwareEd25519Signer:
        """A fresh in-memory key (never written anywhere)."""
        return cls(secrets.token_bytes(32))

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, create: bool = True) -> SoftwareEd25519Signer:
        """Load the key in ``path``; if there is no such file and ``create`` is true,
        generate a key and write it there first (mode 0600, atomically: a crash leaves
        either no file or a complete one; the parent directory must exist).

        Raises CustodyError if the file is missing (``create`` false), is not a regular
        file, is a symlink, is not owned by this user, or is readable or writable by group
        or others; DecodeError if its content is not exactly the format above.
        """
        target = Path(path)
        if create and not os.path.lexists(target):
            try:
                cls._create(target)
            except FileExistsError:
                pass  # lost a race: load the winner's key
            except OSError as exc:
                raise CustodyError(f"cannot create the seed file ({type(exc).__name__})") from None
        return cls._load(target)

    @staticmethod
    def _create(target: Path) -> None:
        seed = secrets.token_bytes(32)
        content = SEED_FILE_HEADER + seed.hex().encode("ascii") + b"\n"
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            try:
                os.write(fd, content)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.link(tmp, target)  # fails with FileExistsError instead of replacing
        finally:
            os.unlink(tmp)
        fsync_directory(target.parent)

    @classmethod
    def _load(cls, target: Path) -> SoftwareEd25519Signer:
        try:
            fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise CustodyError("seed file does not exist") from None
        except OSError as exc:
            raise CustodyError(f"cannot open the seed file ({type(exc).__name__})") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise CustodyError("seed file is not a regular file")
            if info.st_uid != os.geteuid():
                raise CustodyError("seed file is not owned by this user")
            if info.st_mode & 0o077:
                raise CustodyError("seed file is accessible to group or others (want 0600)")
            content = os.read(fd, _SEED_FILE_LEN + 1)
        finally:
            os.close(fd)
        body = content[len(SEED_FILE_HEADER) :]
        if (
            len(content) != _SEED_FILE_LEN
            or not content.startswith(SEED_FILE_HEADER)
            or not _HEX64.fullmatch(body)
        ):
            raise DecodeError("seed file is malformed")
        return cls(bytes.fromhex(body[:64].decode("ascii")))

    def public_key(self) -> bytes:
        return self._public

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(bytes(message))

    def __repr__(self) -> str:
        return f"SoftwareEd25519Signer(public_key={self._public.hex()})"


# --------------------------------------------------------------------------- PKCS#11


@dataclass(frozen=True)
class Pkcs11SignerConfig:
    """Where a PKCS#11 Ed25519 key lives. ``user_pin`` is left out of repr and equality.

    ``key_label`` (CKA_LABEL of both halves of the pair) is 1..64 characters of
    ``[A-Za-z0-9._:/-]``, starting with a letter or digit.
    """

    module_path: str
    token_label: str
    user_pin: str = field(repr=False, compare=False)
    key_label: str

    def __post_init__(self) -> None:
        if not _KEY_LABEL.fullmatch(self.key_label):
            raise InvalidParameter("key label must be 1..64 characters of [A-Za-z0-9._:/-]")
        if not self.token_label or not self.module_path:
            raise InvalidParameter("module path and token label must not be empty")


class _TokenLogin:
    """One logged-in session per token per process, shared by the signers on it."""

    def __init__(self, session: Session, pin: str) -> None:
        self.session: Session | None = session
        self.pin = pin
        self.refs = 0
        self.lock = threading.Lock()


_logins: dict[tuple[str, str], _TokenLogin] = {}
_logins_lock = threading.Lock()


def _acquire(config: Pkcs11SignerConfig) -> tuple[tuple[str, str], _TokenLogin]:
    key = (os.path.realpath(config.module_path), config.token_label)
    with _logins_lock:
        login = _logins.get(key)
        if login is not None:
            if not hmac.compare_digest(login.pin.encode("utf-8"), config.user_pin.encode("utf-8")):
                raise CustodyError("token is open in this process under another PIN")
            login.refs += 1
            return key, login
        session = open_token_session(config.module_path, config.token_label, config.user_pin)
        login = _TokenLogin(session, config.user_pin)
        login.refs = 1
        _logins[key] = login
        return key, login


def _release(key: tuple[str, str], login: _TokenLogin) -> None:
    with _logins_lock:
        login.refs -= 1
        if login.refs > 0:
            return
        _logins.pop(key, None)
        with login.lock:
            session, login.session = login.session, None
        if session is not None:
            with contextlib.suppress(pkcs11.exceptions.PKCS11Error):
                session.close()


def _ec_point(raw: bytes) -> bytes:
    """The raw public key from CKA_EC_POINT: DER OCTET STRING ``04 20 || key`` or raw."""
    if len(raw) == 34 and raw[0] == 0x04 and raw[1] == 0x20:
        return bytes(raw[2:])
    if len(raw) == 32:
        return bytes(raw)
    raise CustodyError("public key in the token has an unexpected encoding")


class Pkcs11Ed25519Signer(ClosingContext, _NoPickle):
    """An Ed25519 key pair in a PKCS#11 token. Open it with :meth:`open`; close it (or use
    it as a context manager) to release the token session."""

    __slots__ = ("_closed", "_key", "_login", "_private", "_public")

    def __init__(
        self,
        key: tuple[str, str],
        login: _TokenLogin,
        private: SignMixin,
        public: bytes,
    ) -> None:
        """Internal: use :meth:`open`."""
        self._key = key
        self._login = login
        self._private = private
        self._public = public
        self._closed = False

    @classmethod
    def open(cls, config: Pkcs11SignerConfig, *, create: bool = True) -> Pkcs11Ed25519Signer:
        """Log in (or join this process's login) and find the key pair labelled
        ``config.key_label``; with ``create`` and no such key, generate it in the token.

        Raises CustodyError if the module or token cannot be found, the login fails, the
        key is missing (``create`` false), only one half of the pair exists, more than one
        key carries the label, the key is not Ed25519, not protected as required, or fails
        the sign/verify self-test.
        """
        key, login = _acquire(config)
        try:
            with login.lock:
                session = login.session
                if session is None:
                    raise CustodyError("token session is closed")
                private, public = cls._find_or_create(session, config, create)
            signer = cls(key, login, private, public)
        except BaseException:
            _release(key, login)
            raise
        try:
            _self_test(signer)
        except BaseException:
            signer.close()
            raise
        return signer

    @classmethod
    def _find_or_create(
        cls, session: Session, config: Pkcs11SignerConfig, create: bool
    ) -> tuple[SignMixin, bytes]:
        try:
            label = config.key_label
            private = _one(
                session, {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: label}
            )
            public = _one(
                session, {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.LABEL: label}
            )
            if private is None and public is None:
                if not create:
                    raise CustodyError("token holds no key under the configured label")
                public, private = cls._generate(session, label)
            elif private is None or public is None:
                raise CustodyError("token holds only one half of the key pair")
            return cls._check(private, public)
        except pkcs11.exceptions.PKCS11Error as exc:
            raise _err("token key lookup or generation failed", exc) from None

    @staticmethod
    def _generate(session: Session, label: str) -> tuple[Object, Object]:
        public, private = session.generate_keypair(
            KeyType.EC_EDWARDS,
            id=label.encode("utf-8"),
            label=label,
            store=True,
            capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
            public_template={
                Attribute.TOKEN: True,
                Attribute.EC_PARAMS: ED25519_EC_PARAMS[0],
                Attribute.MODIFIABLE: False,
            },
            private_template={
                **LOCKED_KEY_TEMPLATE,
                Attribute.SIGN: True,
                Attribute.DECRYPT: False,
                Attribute.DERIVE: False,
                Attribute.UNWRAP: False,
            },
        )
        return public, private

    @staticmethod
    def _check(private: Object, public: Object) -> tuple[SignMixin, bytes]:
        if not (isinstance(private, PrivateKey) and isinstance(private, SignMixin)):
            raise CustodyError("private key in the token cannot sign")
        if not isinstance(public, PublicKey):
            raise CustodyError("public half in the token is not a public key")
        if private.key_type != KeyType.EC_EDWARDS or public.key_type != KeyType.EC_EDWARDS:
            raise CustodyError("key in the token is not an Edwards-curve key")
        check_protected(private, "private key", _REQUIRED)
        if public[Attribute.EC_PARAMS] not in ED25519_EC_PARAMS:
            raise CustodyError("key in the token is not on edwards25519")
        raw = _ec_point(public[Attribute.EC_POINT])
        try:
            Ed25519PublicKey.from_public_bytes(raw)
        except ValueError:
            raise CustodyError("public key in the token is not a valid Ed25519 key") from None
        return private, raw

    def public_key(self) -> bytes:
        return self._public

    def sign(self, message: bytes) -> bytes:
        """CKM_EDDSA over ``message``; CustodyError if closed or the token fails."""
        with self._login.lock:
            if self._closed or self._login.session is None:
                raise CustodyError("token signer is closed")
            try:
                signature = self._private.sign(bytes(message), mechanism=Mechanism.EDDSA)
            except pkcs11.exceptions.PKCS11Error as exc:
                raise _err("token signing failed", exc) from None
        if not isinstance(signature, bytes) or len(signature) != 64:
            raise CustodyError("token returned a malformed signature")
        return signature

    def close(self) -> None:
        """Release this signer's share of the token session (idempotent)."""
        with self._login.lock:
            if self._closed:
                return
            self._closed = True
        _release(self._key, self._login)

    def __repr__(self) -> str:
        state = ", closed" if self._closed else ""
        return f"Pkcs11Ed25519Signer(public_key={self._public.hex()}{state})"
