"""How a client decides which fleet keys to trust for one session (ADR 0010).

The first response of every session (``RegistrationStart``, ``LoginStart``) carries the
fleet id, the fleet's current validation bundle and the fleet's ``sig`` signature over
:func:`~hsmvault.wire.fleet_session.fleet_session_message` (fleet id, the exact request
bytes, the bundle). Before it uses anything else of that response, the client hands these
to a :class:`FleetTrust`, which either returns the :class:`FleetPublicKeys` the session
must use — the OPAQUE step compares KE2's server key with ``ake_public_key`` and uploads
are sealed to ``enc_public_key`` — or raises.

Two implementations:

* :class:`PinnedFleetTrust` (here): keys pinned at build time. Only the fleet check (step
  7 of ADR 0010 "Client verification") applies; the bundle is ignored.
* ``BundleFleetTrust`` (:mod:`hsmvault.client.bundle_verifier`): verifies the bundle
  (witness, operator, namespace, epoch, freshness, optional log proofs), then step 7
  against the artifact.
"""

from __future__ import annotations

import hmac
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from hsmvault.fleet.fleet_keys import FleetPublicKeys
from hsmvault.transparency.errors import FleetKeyMismatch
from hsmvault.wire.fleet_session import SIGNATURE_LEN, fleet_session_message

__all__ = ["FleetTrust", "PinnedFleetTrust", "verify_fleet_signature"]


class FleetTrust(Protocol):
    """Decides, once per session, which fleet keys the session may use."""

    def session_keys(
        self, fleet_id: bytes, request: bytes, bundle: bytes, fleet_signature: bytes
    ) -> FleetPublicKeys:
        """The keys of the fleet that answered ``request`` (the exact bytes the client
        sent) with ``bundle`` and ``fleet_signature``, as claimed in the response.

        Returns the trusted :class:`FleetPublicKeys` of ``fleet_id`` only if
        ``fleet_signature`` verifies under that fleet's trusted ``sig`` key over
        ``fleet_session_message(fleet_id, request, bundle)``. Raises a subclass of
        :class:`hsmvault.transparency.errors.BundleError` (a
        :class:`~hsmvault.errors.VerificationError`) — or
        :class:`~hsmvault.transparency.errors.BundleFormatError` for a bundle that does
        not parse — otherwise; the caller must then send nothing further in the session.
        """
        ...


def verify_fleet_signature(
    keys: FleetPublicKeys, request: bytes, bundle: bytes, fleet_signature: bytes
) -> None:
    """Check that ``fleet_signature`` is ``keys``' ``sig`` key's Ed25519 signature (RFC
    8032) over ``fleet_session_message(keys.fleet_id, request, bundle)``.

    Raises :class:`FleetKeyMismatch` on a wrong length, a malformed public key or a
    signature that does not verify."""
    if not isinstance(fleet_signature, bytes) or len(fleet_signature) != SIGNATURE_LEN:
        raise FleetKeyMismatch("fleet signature has the wrong length")
    message = fleet_session_message(keys.fleet_id, request, bundle)
    try:
        Ed25519PublicKey.from_public_bytes(keys.sig_public_key).verify(fleet_signature, message)
    except (InvalidSignature, ValueError):
        raise FleetKeyMismatch("the fleet signature does not verify under its sig key") from None


class PinnedFleetTrust:
    """Pinned mode (ADR 0010): trust exactly ``keys``, whatever bundle is attached.

    :meth:`session_keys` returns ``keys`` when ``fleet_id`` is the pinned fleet's and the
    fleet signature verifies under the pinned ``sig`` key; it raises
    :class:`FleetKeyMismatch` otherwise. The bundle bytes are not parsed (only signed
    over), so a fleet with or without an installed bundle is accepted alike.
    """

    def __init__(self, keys: FleetPublicKeys) -> None:
        if not isinstance(keys, FleetPublicKeys):
            raise TypeError("PinnedFleetTrust needs FleetPublicKeys")
        self._keys = keys

    @property
    def keys(self) -> FleetPublicKeys:
        """The pinned keys."""
        return self._keys

    def session_keys(
        self, fleet_id: bytes, request: bytes, bundle: bytes, fleet_signature: bytes
    ) -> FleetPublicKeys:
        """See :meth:`FleetTrust.session_keys`."""
        if not isinstance(fleet_id, bytes) or not hmac.compare_digest(
            fleet_id, self._keys.fleet_id
        ):
            raise FleetKeyMismatch("the session's fleet is not the pinned fleet")
        verify_fleet_signature(self._keys, request, bundle, fleet_signature)
        return self._keys

    def __repr__(self) -> str:
        return f"PinnedFleetTrust(fleet_id={self._keys.fleet_id.hex()[:16]}…)"
