"""Where an app plugs in its platform's passkey API (ADR 0011, "Client SDK").

The SDK runs the passkey ceremonies with the gateway (:mod:`.flows`); the WebAuthn
calls themselves — ``navigator.credentials.create/get``, Android's Credential Manager,
Apple's ``ASAuthorizationPlatformPublicKeyCredentialProvider``, a CTAP2 library — are
behind :class:`Authenticator`. An implementation:

* gets ``options``: the gateway's ``publicKey`` member, i.e. WebAuthn Level 3
  ``PublicKeyCredentialCreationOptionsJSON`` / ``PublicKeyCredentialRequestOptionsJSON``
  (byte strings in base64url without padding; no ``extensions``);
* adds the PRF extension itself with the raw input bytes it is given: ``prf.eval.first``
  at creation, ``prf.evalByCredential`` (credential id → input) at assertion. The
  platform applies WebAuthn's hashing (``SHA-256("WebAuthn PRF" || 0x00 || input)``)
  before CTAP2 ``hmac-secret``; an implementation that talks CTAP2 directly must apply
  it itself (WebAuthn L3 §10.1.4);
* returns the response as ``RegistrationResponseJSON`` / ``AuthenticationResponseJSON``
  **without** ``clientExtensionResults.prf.results`` (the gateway refuses it: that is
  the secret), and the PRF output (``prf.results.first``, 32 bytes) separately, or
  ``None`` when the authenticator gave none (e.g. no PRF at creation time: the SDK
  then asks for an assertion).

Cancellation or refusal by the user or platform should raise (any exception): the SDK
lets it propagate, and nothing is stored for a ceremony that did not finish.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["Authenticator", "CreateResult", "GetResult"]


@dataclass(frozen=True, slots=True)
class CreateResult:
    """A new credential: ``response_json`` (``RegistrationResponseJSON``, sent to the
    gateway) and the PRF output for the given input, if the authenticator produced one
    (secret: kept out of ``repr``)."""

    response_json: dict[str, Any]
    prf_output: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class GetResult:
    """An assertion: ``response_json`` (``AuthenticationResponseJSON``, sent to the
    gateway), the raw id of the credential that answered, and its PRF output for that
    credential's input, if any (secret: kept out of ``repr``)."""

    response_json: dict[str, Any]
    credential_id: bytes
    prf_output: bytes | None = field(default=None, repr=False)


class Authenticator(Protocol):
    """A passkey authenticator as the SDK uses it (see the module docstring)."""

    def create(self, options: Mapping[str, Any], prf_input: bytes | None) -> CreateResult:
        """Make a credential for ``options`` (creation options JSON); evaluate the PRF
        on ``prf_input`` if the authenticator can at creation time."""
        ...

    def get(self, options: Mapping[str, Any], prf_inputs: Mapping[bytes, bytes]) -> GetResult:
        """Assert with one of the credentials ``options`` allows (request options
        JSON); evaluate the PRF on ``prf_inputs[credential id]`` of the one used."""
        ...
