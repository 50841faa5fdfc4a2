"""The PKCS#11 key-custody backend: keys generated in, and never leaving, a token.

Through ``python-pkcs11`` against any PKCS#11 module: SoftHSM2 in tests and demos
(:mod:`hsmvault.hsm.softhsm`), a real HSM in production. In the token, both created by
the token itself (``CKA_LOCAL``) as persistent token objects:

* the **sealing key**: AES-256, ``CKA_SENSITIVE``, not ``CKA_EXTRACTABLE``, not
  modifiable, not copyable, usable only for encrypt/decrypt. The token does the
  AES-256-GCM (``CKM_AES_GCM``); the key value is never exported;
* the **identity key pair**: Ed25519 (``CKM_EC_EDWARDS_KEY_PAIR_GEN``, signing with
  ``CKM_EDDSA``) when the token offers it, else ECDSA P-256 (``CKM_EC_KEY_PAIR_GEN``,
  signing a SHA-256 digest with ``CKM_ECDSA``). The private key is sensitive,
  non-extractable, not modifiable, sign-only.

Opening existing keys checks that they still carry those protections, including
``CKA_ALWAYS_SENSITIVE``, ``CKA_NEVER_EXTRACTABLE`` and ``CKA_LOCAL`` (so a key someone
imported under our label is refused), then runs a sign/verify and seal/unseal self-test.

PKCS#11 login state belongs to the process, not to a session, so one process opens a
given token through at most one :class:`Pkcs11Custody` at a time. A module scans its slots
when it is initialized: a token created after this process loaded the module is not seen.
The user PIN lives only in :class:`Pkcs11Config` (never in a repr, log or message).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from dataclasses import dataclass, field

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11.mechanisms import GCMParams
from pkcs11.types import (
    DecryptMixin,
    EncryptMixin,
    Object,
    PrivateKey,
    PublicKey,
    SecretKey,
    Session,
    SignMixin,
)

from hsmvault.errors import InvalidParameter, VerificationError
from hsmvault.hsm.custody.base import TAG_LEN, CustodyError, KeyCustody
from hsmvault.hsm.nvram import NodeIdentity, SignatureAlgorithm
from hsmvault.pkcs11_tokens import (
    ED25519_EC_PARAMS,
    LOCKED_KEY_TEMPLATE,
    check_protected,
    open_token_session,
)
from hsmvault.pkcs11_tokens import find_one as _one
from hsmvault.pkcs11_tokens import token_error as _err

__all__ = [
    "IDENTITY_KEY_ID",
    "IDENTITY_KEY_LABEL",
    "SEALING_KEY_ID",
    "SEALING_KEY_LABEL",
    "Pkcs11Config",
    "Pkcs11Custody",
]

SEALING_KEY_LABEL = "hsmvault-sealing-key-v1"
SEALING_KEY_ID = b"hsmvault/sealing/1"
IDENTITY_KEY_LABEL = "hsmvault-identity-key-v1"
IDENTITY_KEY_ID = b"hsmvault/identity/1"

#: DER of the named-curve parameters (CKA_EC_PARAMS).
_P256_OID = bytes.fromhex("06082a8648ce3d030107")  # 1.2.840.10045.3.1.7
_EC_PARAMS = {
    SignatureAlgorithm.ED25519: ED25519_EC_PARAMS,
    SignatureAlgorithm.ECDSA_P256_SHA256: (_P256_OID,),
}
_KEY_TYPE = {
    SignatureAlgorithm.ED25519: KeyType.EC_EDWARDS,
    SignatureAlgorithm.ECDSA_P256_SHA256: KeyType.EC,
}
_POINT_LEN = {SignatureAlgorithm.ED25519: 32, SignatureAlgorithm.ECDSA_P256_SHA256: 65}

#: What the token reports for a failed GCM tag: SoftHSM2 2.6 says CKR_GENERAL_ERROR,
#: the standard says CKR_ENCRYPTED_DATA_INVALID; all mean "did not authenticate".
_AUTH_FAILURES = (
    pkcs11.exceptions.GeneralError,
    pkcs11.exceptions.EncryptedDataInvalid,
    pkcs11.exceptions.EncryptedDataLenRange,
    pkcs11.exceptions.FunctionFailed,
)

_open_tokens: set[tuple[str, str]] = set()
_open_tokens_lock = threading.Lock()


@dataclass(frozen=True)
class Pkcs11Config:
    """Where the node's keys live and how to log in.

    ``identity_algorithm`` is used only when keys are created: None picks Ed25519 if the
    token offers CKM_EDDSA and CKM_EC_EDWARDS_KEY_PAIR_GEN, else ECDSA P-256. When keys
    exist and it is set, it must match them. ``user_pin`` is left out of ``repr`` and
    equality.
    """

    module_path: str
    token_label: str
    user_pin: str = field(repr=False, compare=False)
    identity_algorithm: SignatureAlgorithm | None = None


def _registration_key(config: Pkcs11Config) -> tuple[str, str]:
    return (os.path.realpath(config.module_path), config.token_label)


def _ec_point(raw: bytes, algorithm: SignatureAlgorithm) -> bytes:
    """The raw public key from CKA_EC_POINT (a DER OCTET STRING, or raw on some tokens)."""
    n = _POINT_LEN[algorithm]
    if len(raw) == n + 2 and raw[0] == 0x04 and raw[1] == n:
        return raw[2:]
    if len(raw) == n:
        return raw
    raise CustodyError("identity public key in the token has an unexpected encoding")


class Pkcs11Custody(KeyCustody):
    """Key custody in a PKCS#11 token. Open it with :meth:`open`."""

    def __init__(
        self,
        config: Pkcs11Config,
        session: Session,
        sealing_key: SecretKey,
        signing_key: PrivateKey,
        identity: NodeIdentity,
    ) -> None:
        """Internal: use :meth:`open`."""
        self._registration = _registration_key(config)
        self._session: Session | None = session
        self._sealing_key = sealing_key
        self._signing_key = signing_key
        super().__init__(identity)

    @classmethod
    def open(cls, config: Pkcs11Config, *, create: bool = False) -> Pkcs11Custody:
        """Log in to the token and find the node's keys.

        With ``create=True`` and no hsmvault keys in the token, generate them in the
        token first. Raises CustodyError if the module or token cannot be found, the
        login fails, the token is already open in this process, the keys are missing
        (and ``create`` is false), only some of them exist, or they are not protected
        as required.
        """
        registration = _registration_key(config)
        with _open_tokens_lock:
            if registration in _open_tokens:
                raise CustodyError("this token is already open in this process")
            _open_tokens.add(registration)
        session: Session | None = None
        try:
            session = cls._login(config)
            sealing, signing, identity = cls._find_or_create_keys(session, config, create)
            custody = cls(config, session, sealing, signing, identity)
        except BaseException:
            if session is not None:
                with contextlib.suppress(pkcs11.exceptions.PKCS11Error):
                    session.close()
            with _open_tokens_lock:
                _open_tokens.discard(registration)
            raise
        try:
            custody.self_test()
        except BaseException:
            custody.close()
            raise
        return custody

    # -- opening ------------------------------------------------------------------------

    @staticmethod
    def _login(config: Pkcs11Config) -> Session:
        return open_token_session(config.module_path, config.token_label, config.user_pin)

    @classmethod
    def _find_or_create_keys(
        cls, session: Session, config: Pkcs11Config, create: bool
    ) -> tuple[SecretKey, PrivateKey, NodeIdentity]:
        try:
            sealing = _one(
                session,
                {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: SEALING_KEY_LABEL},
            )
            private = _one(
                session,
                {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: IDENTITY_KEY_LABEL},
            )
            public = _one(
                session,
                {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.LABEL: IDENTITY_KEY_LABEL},
            )
            if sealing is None and private is None and public is None:
                if not create:
                    raise CustodyError("token holds no hsmvault keys (not provisioned)")
                sealing, public, private = cls._generate(session, config)
            elif sealing is None or private is None or public is None:
                raise CustodyError("token holds an incomplete set of hsmvault keys")
            return cls._check_keys(sealing, private, public, config)
        except pkcs11.exceptions.PKCS11Error as exc:
            raise _err("token key lookup or generation failed", exc) from exc

    @staticmethod
    def _generate(session: Session, config: Pkcs11Config) -> tuple[Object, Object, Object]:
        algorithm = config.identity_algorithm
        if algorithm is None:
            mechanisms = session.token.slot.get_mechanisms()
            has_eddsa = {Mechanism.EDDSA, Mechanism.EC_EDWARDS_KEY_PAIR_GEN} <= mechanisms
            algorithm = (
                SignatureAlgorithm.ED25519 if has_eddsa else SignatureAlgorithm.ECDSA_P256_SHA256
            )
        sealing = session.generate_key(
            KeyType.AES,
            256,
            id=SEALING_KEY_ID,
            label=SEALING_KEY_LABEL,
            store=True,
            capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
            template=dict(LOCKED_KEY_TEMPLATE),
        )
        public, private = session.generate_keypair(
            _KEY_TYPE[algorithm],
            id=IDENTITY_KEY_ID,
            label=IDENTITY_KEY_LABEL,
            store=True,
            capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
            public_template={
                Attribute.TOKEN: True,
                Attribute.EC_PARAMS: _EC_PARAMS[algorithm][0],
                Attribute.MODIFIABLE: False,
            },
            private_template=dict(LOCKED_KEY_TEMPLATE),
        )
        return sealing, public, private

    @staticmethod
    def _check_keys(
        sealing: Object, private: Object, public: Object, config: Pkcs11Config
    ) -> tuple[SecretKey, PrivateKey, NodeIdentity]:
        if not (
            isinstance(sealing, SecretKey)
            and isinstance(sealing, EncryptMixin)
            and isinstance(sealing, DecryptMixin)
            and sealing.key_type == KeyType.AES
            and sealing[Attribute.VALUE_LEN] == 32
        ):
            raise CustodyError("sealing key in the token is not an AES-256 key")
        check_protected(sealing, "sealing key")
        if not (isinstance(private, PrivateKey) and isinstance(private, SignMixin)):
            raise CustodyError("identity private key in the token cannot sign")
        if not isinstance(public, PublicKey):
            raise CustodyError("identity public key in the token is not a public key")
        check_protected(private, "identity private key")
        algorithms = {v: k for k, v in _KEY_TYPE.items()}
        algorithm = algorithms.get(private.key_type)
        if algorithm is None or public.key_type != private.key_type:
            raise CustodyError("identity key in the token has an unsupported type")
        if config.identity_algorithm not in (None, algorithm):
            raise CustodyError("identity key in the token is not of the configured algorithm")
        if public[Attribute.EC_PARAMS] not in _EC_PARAMS[algorithm]:
            raise CustodyError("identity key in the token is on an unexpected curve")
        try:
            identity = NodeIdentity(algorithm, _ec_point(public[Attribute.EC_POINT], algorithm))
        except InvalidParameter:
            raise CustodyError("identity public key in the token is invalid") from None
        return sealing, private, identity

    def identity_key_object(self) -> PrivateKey:
        """The token's identity private-key *object* (a handle, not the key: its value
        never leaves the token), so the key ceremony can read its protection attributes
        for the attestation statement (ADR 0012)."""
        self._check_open()
        return self._signing_key

    # -- primitives ---------------------------------------------------------------------

    def _live_session(self) -> Session:
        if self._session is None:
            raise CustodyError("token session is closed")
        return self._session

    def _random(self, n: int) -> bytes:
        try:
            return self._live_session().generate_random(8 * n)
        except pkcs11.exceptions.PKCS11Error as exc:
            raise _err("token random generation failed", exc) from exc

    def _aead_encrypt(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        key = self._sealing_key
        if not isinstance(key, EncryptMixin):  # checked when opened; narrows the type
            raise CustodyError("token key lacks a required capability")
        try:
            out = key.encrypt(
                plaintext,
                mechanism=Mechanism.AES_GCM,
                mechanism_param=GCMParams(nonce, aad, TAG_LEN * 8),
            )
        except pkcs11.exceptions.PKCS11Error as exc:
            raise _err("token AES-GCM encryption failed", exc) from exc
        if not isinstance(out, bytes):
            raise CustodyError("token returned no ciphertext")
        return out

    def _aead_decrypt(self, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        key = self._sealing_key
        if not isinstance(key, DecryptMixin):  # checked when opened; narrows the type
            raise CustodyError("token key lacks a required capability")
        try:
            out = key.decrypt(
                ciphertext,
                mechanism=Mechanism.AES_GCM,
                mechanism_param=GCMParams(nonce, aad, TAG_LEN * 8),
            )
        except _AUTH_FAILURES:
            raise VerificationError("sealed blob failed authentication") from None
        except pkcs11.exceptions.PKCS11Error as exc:
            raise _err("token AES-GCM decryption failed", exc) from exc
        if not isinstance(out, bytes):
            raise CustodyError("token returned no plaintext")
        return out

    def _sign_raw(self, data: bytes) -> bytes:
        key = self._signing_key
        if not isinstance(key, SignMixin):  # checked when opened; narrows the type
            raise CustodyError("token key lacks a required capability")
        try:
            if self.identity.algorithm is SignatureAlgorithm.ED25519:
                return key.sign(data, mechanism=Mechanism.EDDSA)
            return key.sign(hashlib.sha256(data).digest(), mechanism=Mechanism.ECDSA)
        except pkcs11.exceptions.PKCS11Error as exc:
            raise _err("token signing failed", exc) from exc

    def _release(self) -> None:
        session, self._session = self._session, None
        try:
            if session is not None:
                with contextlib.suppress(pkcs11.exceptions.PKCS11Error):
                    session.close()  # the session is gone either way
        finally:
            with _open_tokens_lock:
                _open_tokens.discard(self._registration)
