"""Fake registration records for unknown users (RFC 9807 §6.3.2.2, §10.9).

A server that answers a login for an unregistered ``credential_identifier`` runs the
normal ``GenerateKE2`` with a *fake* record, so the KE2 it returns has the same length
and the same distribution as a real one and costs the same to compute. Only a client
that knows a registered password can tell the difference (its envelope does not open).
Pass ``record_is_fake=True`` to :func:`~hsmvault.crypto.opaque.protocol.generate_ke2`
so that :func:`~hsmvault.crypto.opaque.protocol.server_finish` can never accept.

RFC 9807 recommends creating the fake record once and storing it next to the real
records, so that fetching it costs the same as fetching a real one.
"""

from __future__ import annotations

from hsmvault.crypto.opaque.messages import Envelope, RegistrationRecord
from hsmvault.crypto.opaque.suite import NH, NSEED, derive_dh_key_pair, random_bytes
from hsmvault.crypto.ristretto255 import Element, RandomBytes

__all__ = ["create_fake_record"]


def create_fake_record(
    *,
    client_public_key: Element | None = None,
    masking_key: bytes | None = None,
    rng: RandomBytes | None = None,
) -> RegistrationRecord:
    """A fake ``RegistrationRecord`` (RFC 9807 §6.3.2.2):

    * ``client_public_key``: a random public key (its private key is discarded),
    * ``masking_key``: ``Nh`` random bytes,
    * ``envelope``: ``Nn + Nm`` zero bytes.

    ``client_public_key`` and ``masking_key`` may be fixed (test vectors).
    """
    if client_public_key is None:
        client_public_key = derive_dh_key_pair(random_bytes(rng, NSEED)).pk
    if masking_key is None:
        masking_key = random_bytes(rng, NH)
    return RegistrationRecord(client_public_key, masking_key, Envelope.zero())
