"""What a user's device does, against a real fleet through the host's FleetClient:
OPAQUE registration and login over the wire API (test helper).

The KSF is a tiny Argon2id (8 KiB, one pass) so that tests spend their time on the fleet,
not on key stretching; nodes never run the KSF, they only store its parameters.

The device pins the fleet's published public keys: the ``FleetClient`` must carry them
(``FleetClient.from_fleet_dir``, or ``public_keys=layout.public_keys`` as
``conftest.start_local_fleet`` does). Every start response (RegistrationStart,
LoginStart) goes through the client protocol's trust check
(:func:`hsmvault.client.vault_protocol.verify_start` with
:class:`~hsmvault.client.fleet_trust.PinnedFleetTrust`): the fleet signature over the
exact request and the bundle must verify, else
:class:`~hsmvault.transparency.errors.FleetKeyMismatch` is raised and nothing more is
sent. Registration uploads (record, KSF parameters, wrapped key) are sealed to the
``enc`` key of the keys that check returned, after the AKE key is compared with them.

The steps stay separate (not :func:`hsmvault.client.vault_protocol.enroll`/``recover``)
because the fault tests need them: a chosen node per request, a pending login held
across a fault, outcomes returned rather than raised, and a fixed wrapped key.
"""

from __future__ import annotations

from dataclasses import dataclass

from hsmvault.client.fleet_trust import PinnedFleetTrust
from hsmvault.client.vault_protocol import verify_start
from hsmvault.crypto.fleet_seal import PURPOSE_REGISTRATION_UPLOAD, seal_to_fleet
from hsmvault.crypto.ksf import Argon2idKsf, KsfAlgorithm, KsfParams
from hsmvault.crypto.opaque import KE2, OpaqueClient, OpaqueConfig, RegistrationResponse
from hsmvault.crypto.opaque.protocol import ClientLoginState
from hsmvault.crypto.session_box import LABEL_WRAPPED_KEY, open_from_session
from hsmvault.errors import InvalidParameter, VerificationError
from hsmvault.fleet.fleet_keys import FleetPublicKeys
from hsmvault.host.fleet_client import FleetClient
from hsmvault.wire.hsm_api import (
    AttemptsRemainingRequest,
    AttemptsRemainingResponse,
    LoginFinishRequest,
    LoginFinishResponse,
    LoginStartRequest,
    LoginStartResponse,
    Outcome,
    RegisterRequest,
    RegisterResponse,
    RegistrationStartRequest,
    RegistrationStartResponse,
    RegistrationUpload,
    upload_context,
)

TINY_KSF = Argon2idKsf(KsfParams(KsfAlgorithm.ARGON2ID, memory_kib=8, iterations=1, parallelism=1))
CONFIG = OpaqueConfig(ksf=TINY_KSF)
WRAPPED_KEY = b"wrapped backup key (opaque to the fleet)"


def _trust(client: FleetClient) -> PinnedFleetTrust:
    """Pinned trust in the fleet public keys ``client`` carries."""
    if client.public_keys is None:
        raise InvalidParameter(
            "the FleetClient has no fleet public keys: build it with "
            "FleetClient.from_fleet_dir(...) or FleetClient(..., public_keys=...)"
        )
    return PinnedFleetTrust(client.public_keys)


def session_keys(
    client: FleetClient,
    request: bytes,
    response: RegistrationStartResponse | LoginStartResponse,
) -> FleetPublicKeys:
    """The client protocol's trust check of an OK start response to ``request``."""
    return verify_start(_trust(client), request, response)


def register(
    client: FleetClient,
    user_id: bytes,
    password: bytes,
    *,
    guess_limit: int = 10,
    final_node: int | None = None,
) -> Outcome:
    """Register ``user_id``; returns the outcome of the final RegisterRequest (sent only
    to ``final_node`` if given, else with failover)."""
    opaque = OpaqueClient(CONFIG)
    request, state = opaque.start_registration(password)
    raw = RegistrationStartRequest(user_id, request.to_bytes()).to_bytes()
    start = client.call(raw)
    assert isinstance(start.response, RegistrationStartResponse)
    assert start.response.outcome is Outcome.OK, start.response
    keys = session_keys(client, raw, start.response)
    result = opaque.finish_registration(
        state, RegistrationResponse.from_bytes(start.response.registration_response)
    )
    if result.server_public_key.encoded != keys.ake_public_key:
        raise VerificationError("the registration was answered with another fleet's AKE key")
    nonce = start.response.credential_nonce
    upload = RegistrationUpload(
        registration_record=result.record.to_bytes(),
        ksf_params=TINY_KSF.params.to_bytes(),
        wrapped_key=WRAPPED_KEY,
    )
    sealed_upload = seal_to_fleet(
        keys.enc_public_key,
        upload.to_bytes(),
        purpose=PURPOSE_REGISTRATION_UPLOAD,
        context=upload_context(user_id, nonce),
    )
    register_request = RegisterRequest(
        user_id=user_id,
        credential_nonce=nonce,
        sealed_upload=sealed_upload,
        guess_limit=guess_limit,
    )
    answer = client.call(
        register_request.to_bytes(), prefer=final_node, failover=final_node is None
    )
    assert isinstance(answer.response, RegisterResponse)
    return answer.response.outcome


@dataclass
class PendingLogin:
    """A login after LoginStart: which node holds the session, and the client state."""

    node: int
    start: LoginStartResponse
    state: ClientLoginState


def login_start(
    client: FleetClient,
    user_id: bytes,
    password: bytes,
    *,
    prefer: int | None = None,
    failover: bool = True,
) -> PendingLogin | Outcome:
    """LoginStart (with failover unless ``failover=False``): the pending login (its
    fleet signature verified), or the refusal's outcome."""
    ke1, state = OpaqueClient(CONFIG).start_login(password)
    raw = LoginStartRequest(user_id, ke1.to_bytes()).to_bytes()
    answer = client.call(raw, prefer=prefer, failover=failover)
    assert isinstance(answer.response, LoginStartResponse)
    if answer.response.outcome is not Outcome.OK:
        return answer.response.outcome
    session_keys(client, raw, answer.response)
    return PendingLogin(answer.node, answer.response, state)


def login_finish(client: FleetClient, pending: PendingLogin) -> tuple[Outcome, bytes | None]:
    """LoginFinish on the node that holds the session (no failover: the session lives
    there). Returns the outcome and, on OK, the opened wrapped key. Raises
    :class:`~hsmvault.errors.Unavailable` if that node cannot answer and
    :class:`~hsmvault.errors.InvalidLogin` if the password was wrong."""
    # A wrong password fails here, on the device (InvalidLogin): the guess was already
    # counted at LoginStart.
    result = OpaqueClient(CONFIG).finish_login(pending.state, KE2.from_bytes(pending.start.ke2))
    answer = client.call(
        LoginFinishRequest(pending.start.session_id, result.ke3.to_bytes()).to_bytes(),
        prefer=pending.node,
        failover=False,
    )
    assert isinstance(answer.response, LoginFinishResponse)
    if answer.response.outcome is not Outcome.OK:
        return answer.response.outcome, None
    wrapped = open_from_session(
        result.session_key, answer.response.sealed_wrapped_key, label=LABEL_WRAPPED_KEY
    )
    return Outcome.OK, wrapped


def login(client: FleetClient, user_id: bytes, password: bytes) -> tuple[Outcome, bytes | None]:
    """A whole login: start (with failover), finish on the same node."""
    pending = login_start(client, user_id, password)
    if isinstance(pending, Outcome):
        return pending, None
    return login_finish(client, pending)


def wrong_guess(client: FleetClient, user_id: bytes, node: int) -> Outcome:
    """One guess as an attacker makes it, sent to exactly one node: LoginStart with a
    wrong password (the guess is counted there, before KE2 exists), then give up.
    Returns LoginStart's outcome."""
    pending = login_start(client, user_id, b"not the password", prefer=node, failover=False)
    return pending if isinstance(pending, Outcome) else Outcome.OK


def attempts_remaining(client: FleetClient, user_id: bytes, *, node: int | None = None) -> int:
    """Guesses left, as node ``node`` (or any) sees its committed state."""
    answer = client.call(
        AttemptsRemainingRequest(user_id).to_bytes(), prefer=node, failover=node is None
    )
    assert isinstance(answer.response, AttemptsRemainingResponse)
    assert answer.response.outcome is Outcome.OK, answer.response
    return answer.response.attempts_remaining
