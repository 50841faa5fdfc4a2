"""The software key-custody backend: the embedded default.

.. warning::

    This backend does **not** protect keys from the host. The keys live in this
    process's memory and are persisted, in the clear, in the node's NVRAM — which on a
    local deployment is a directory on the host's disk (:class:`DirectoryNvram`). Anyone
    who can read that directory or this process's memory has the node's keys. It exists
    so that the vault runs with no hardware (demos, the embedded default, fast tests);
    deployments that must keep keys from the operator use the PKCS#11 backend.

Same interface, same sealed-blob format and the same failure behaviour as the PKCS#11
backend (see :mod:`hsmvault.hsm.custody.base`); the identity key is always Ed25519.
AES-256-GCM and Ed25519 come from ``cryptography`` (OpenSSL).
"""

from __future__ import annotations

import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hsmvault.errors import ProtocolStateError, VerificationError
from hsmvault.hsm.custody.base import CustodyError, KeyCustody, bind_identity
from hsmvault.hsm.nvram import NodeIdentity, Nvram, SignatureAlgorithm, SoftwareKeyMaterial

__all__ = ["SoftwareCustody"]


class SoftwareCustody(KeyCustody):
    """Keys in process memory, persisted through the NVRAM. Not a protection against the
    host (see the module warning). Open it with :meth:`open`."""

    def __init__(self, keys: SoftwareKeyMaterial) -> None:
        """Build a custody over ``keys`` (prefer :meth:`open`, which also persists them
        and binds the NVRAM identity)."""
        self._aead: AESGCM | None = AESGCM(keys.sealing_key)
        self._signer: Ed25519PrivateKey | None = Ed25519PrivateKey.from_private_bytes(
            keys.signing_seed
        )
        public_key = self._signer.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        super().__init__(NodeIdentity(SignatureAlgorithm.ED25519, public_key))

    @classmethod
    def open(cls, nvram: Nvram, *, create: bool = False) -> SoftwareCustody:
        """The custody whose keys ``nvram`` holds.

        With ``create=True`` and no keys in the NVRAM, fresh keys are generated and stored
        first. The NVRAM's node identity is recorded if absent and must match otherwise.
        Raises CustodyError if there are no keys (and ``create`` is false) or the NVRAM
        identity belongs to other keys.
        """
        keys = nvram.software_key_material()
        if keys is None:
            if not create:
                raise CustodyError("NVRAM holds no software custody keys (not provisioned)")
            keys = SoftwareKeyMaterial.generate()
            nvram.set_software_key_material(keys)
        custody = cls(keys)
        try:
            bind_identity(custody, nvram)
            custody.self_test()
        except BaseException:
            custody.close()
            raise
        return custody

    def _keys(self) -> tuple[AESGCM, Ed25519PrivateKey]:
        if self._aead is None or self._signer is None:
            raise ProtocolStateError("key custody is closed")
        return self._aead, self._signer

    def _random(self, n: int) -> bytes:
        return secrets.token_bytes(n)

    def _aead_encrypt(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        return self._keys()[0].encrypt(nonce, plaintext, aad)

    def _aead_decrypt(self, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        try:
            return self._keys()[0].decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            raise VerificationError("sealed blob failed authentication") from None

    def _sign_raw(self, data: bytes) -> bytes:
        return self._keys()[1].sign(data)

    def _release(self) -> None:
        # Drop our references; Python cannot promise the key bytes are wiped.
        self._aead = None
        self._signer = None
