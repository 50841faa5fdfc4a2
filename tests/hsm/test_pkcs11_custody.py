"""The PKCS#11 backend against a real token (SoftHSM2): keys made in the token and never
leaving it, persistence across sessions, and refusal of tokens that are not as we left
them. Attacks on the token go through a raw python-pkcs11 session, not through our code.
"""

from __future__ import annotations

import logging

import pkcs11
import pytest
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11.types import Session, WrapMixin

from hsmvault.errors import ProtocolStateError, VerificationError
from hsmvault.hsm.custody.base import CustodyError, verify_signature
from hsmvault.hsm.custody.pkcs11 import (
    IDENTITY_KEY_LABEL,
    SEALING_KEY_LABEL,
    Pkcs11Config,
    Pkcs11Custody,
)
from hsmvault.hsm.nvram import SignatureAlgorithm
from hsmvault.hsm.softhsm import SoftHsmToken
from tests.hsm.conftest import raw_session

PURPOSE = b"vault-state"


def _provision(token: SoftHsmToken, algorithm: SignatureAlgorithm | None = None) -> bytes:
    """Create the keys through our code, close, and return the node id."""
    with Pkcs11Custody.open(token.pkcs11_config(algorithm), create=True) as custody:
        return custody.node_id


def _sealing_key(session: Session) -> pkcs11.SecretKey:
    key = session.get_key(object_class=ObjectClass.SECRET_KEY, label=SEALING_KEY_LABEL)
    assert isinstance(key, pkcs11.SecretKey)
    return key


def _identity_private_key(session: Session) -> pkcs11.PrivateKey:
    key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=IDENTITY_KEY_LABEL)
    assert isinstance(key, pkcs11.PrivateKey)
    return key


# -- the keys really are non-extractable -------------------------------------------------


@pytest.mark.parametrize("algorithm", list(SignatureAlgorithm), ids=lambda a: a.name)
def test_key_values_cannot_be_read_from_the_token(
    token: SoftHsmToken, algorithm: SignatureAlgorithm
) -> None:
    _provision(token, algorithm)
    with raw_session(token) as session:
        for key in (_sealing_key(session), _identity_private_key(session)):
            with pytest.raises(pkcs11.exceptions.AttributeSensitive):
                key[Attribute.VALUE]


@pytest.mark.parametrize("algorithm", list(SignatureAlgorithm), ids=lambda a: a.name)
def test_keys_are_marked_sensitive_non_extractable_and_token_generated(
    token: SoftHsmToken, algorithm: SignatureAlgorithm
) -> None:
    _provision(token, algorithm)
    with raw_session(token) as session:
        for key in (_sealing_key(session), _identity_private_key(session)):
            assert key[Attribute.TOKEN] is True
            assert key[Attribute.PRIVATE] is True
            assert key[Attribute.SENSITIVE] is True
            assert key[Attribute.ALWAYS_SENSITIVE] is True
            assert key[Attribute.EXTRACTABLE] is False
            assert key[Attribute.NEVER_EXTRACTABLE] is True
            assert key[Attribute.LOCAL] is True
            assert key[Attribute.MODIFIABLE] is False
        sealing = _sealing_key(session)
        assert sealing.key_type == KeyType.AES
        assert sealing[Attribute.VALUE_LEN] == 32
        for capability in (Attribute.WRAP, Attribute.UNWRAP, Attribute.SIGN, Attribute.DERIVE):
            assert sealing[capability] is False


def test_sealing_key_cannot_be_wrapped_out(token: SoftHsmToken) -> None:
    _provision(token)
    with raw_session(token) as session:
        wrapper = session.generate_key(
            KeyType.AES, 256, capabilities=MechanismFlag.WRAP | MechanismFlag.UNWRAP
        )
        assert isinstance(wrapper, WrapMixin)
        for key in (_sealing_key(session), _identity_private_key(session)):
            with pytest.raises(pkcs11.exceptions.KeyUnextractable):
                wrapper.wrap_key(key, mechanism=Mechanism.AES_KEY_WRAP_PAD)


def test_sealing_key_cannot_be_made_extractable(token: SoftHsmToken) -> None:
    _provision(token)
    with raw_session(token) as session:
        sealing = _sealing_key(session)
        with pytest.raises(pkcs11.exceptions.PKCS11Error):
            sealing[Attribute.EXTRACTABLE] = True
        with pytest.raises(pkcs11.exceptions.PKCS11Error):
            sealing[Attribute.SENSITIVE] = False
        assert sealing[Attribute.EXTRACTABLE] is False
        assert sealing[Attribute.SENSITIVE] is True


# -- persistence -------------------------------------------------------------------------


def test_keys_persist_across_sessions(token: SoftHsmToken) -> None:
    with Pkcs11Custody.open(token.pkcs11_config(), create=True) as first:
        identity = first.identity
        sealed = first.seal(PURPOSE, b"state", b"ad")
        signature = first.sign(b"raft-vote", b"m")
    with Pkcs11Custody.open(token.pkcs11_config()) as second:
        assert second.identity == identity
        assert second.node_id == identity.node_id
        assert second.unseal(PURPOSE, sealed, b"ad") == b"state"
        verify_signature(second.identity, b"raft-vote", b"m", signature)
        verify_signature(identity, b"raft-vote", b"m2", second.sign(b"raft-vote", b"m2"))


def test_create_on_a_provisioned_token_keeps_its_keys(token: SoftHsmToken) -> None:
    node_id = _provision(token)
    assert _provision(token) == node_id
    with raw_session(token) as session:
        assert len(list(session.get_objects({Attribute.LABEL: SEALING_KEY_LABEL}))) == 1


def test_ed25519_chosen_when_the_token_offers_eddsa(token: SoftHsmToken) -> None:
    with Pkcs11Custody.open(token.pkcs11_config(), create=True) as custody:
        assert custody.identity.algorithm is SignatureAlgorithm.ED25519


def test_configured_algorithm_must_match_existing_keys(token: SoftHsmToken) -> None:
    _provision(token, SignatureAlgorithm.ED25519)
    with pytest.raises(CustodyError, match="algorithm"):
        Pkcs11Custody.open(token.pkcs11_config(SignatureAlgorithm.ECDSA_P256_SHA256))


# -- tokens that are not as we left them -------------------------------------------------


def test_unprovisioned_token_refused_without_create(token: SoftHsmToken) -> None:
    with pytest.raises(CustodyError, match="not provisioned"):
        Pkcs11Custody.open(token.pkcs11_config())


def test_token_missing_a_key_refused(token: SoftHsmToken) -> None:
    _provision(token)
    with raw_session(token) as session:
        _sealing_key(session).destroy()
    with pytest.raises(CustodyError, match="incomplete"):
        Pkcs11Custody.open(token.pkcs11_config(), create=True)


def test_planted_imported_sealing_key_refused(token: SoftHsmToken) -> None:
    """A key someone imported under our label (its value is known outside the token)
    is refused even though it claims to be sensitive and non-extractable now."""
    _provision(token)
    with raw_session(token) as session:
        _sealing_key(session).destroy()
        session.create_object(
            {
                Attribute.CLASS: ObjectClass.SECRET_KEY,
                Attribute.KEY_TYPE: KeyType.AES,
                Attribute.VALUE: b"\x42" * 32,
                Attribute.LABEL: SEALING_KEY_LABEL,
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.ENCRYPT: True,
                Attribute.DECRYPT: True,
            }
        )
    with pytest.raises(CustodyError, match="not protected"):
        Pkcs11Custody.open(token.pkcs11_config())


def test_swapped_identity_public_key_refused(token: SoftHsmToken) -> None:
    """A public key that does not belong to the private key fails the self-test."""
    _provision(token)
    with raw_session(token) as session:
        session.get_key(object_class=ObjectClass.PUBLIC_KEY, label=IDENTITY_KEY_LABEL).destroy()
        session.generate_keypair(
            KeyType.EC_EDWARDS,
            label="other",
            store=True,
            public_template={
                Attribute.EC_PARAMS: bytes.fromhex("06032b6570"),
                Attribute.LABEL: IDENTITY_KEY_LABEL,
            },
            private_template={Attribute.TOKEN: False},
        )
    with pytest.raises(CustodyError, match="self-test"):
        Pkcs11Custody.open(token.pkcs11_config())


def test_duplicate_keys_under_our_label_refused(token: SoftHsmToken) -> None:
    _provision(token)
    with raw_session(token) as session:
        session.generate_key(
            KeyType.AES,
            256,
            label=SEALING_KEY_LABEL,
            store=True,
            template={Attribute.EXTRACTABLE: False},
        )
    with pytest.raises(CustodyError, match="more than one"):
        Pkcs11Custody.open(token.pkcs11_config())


# -- configuration and login -------------------------------------------------------------


def test_wrong_pin_refused_without_revealing_any_pin(token: SoftHsmToken) -> None:
    config = Pkcs11Config(token.module_path, token.token_label, "wrong-pin-0123")
    with pytest.raises(CustodyError, match="login") as caught:
        Pkcs11Custody.open(config, create=True)
    message = str(caught.value)
    assert "wrong-pin-0123" not in message
    assert token.user_pin not in message


def test_unknown_token_label_refused(token: SoftHsmToken) -> None:
    config = Pkcs11Config(token.module_path, "no-such-token", token.user_pin)
    with pytest.raises(CustodyError, match="token"):
        Pkcs11Custody.open(config, create=True)


def test_missing_module_refused(token: SoftHsmToken) -> None:
    config = Pkcs11Config("/nonexistent/libpkcs11.so", token.token_label, token.user_pin)
    with pytest.raises(CustodyError, match="module"):
        Pkcs11Custody.open(config)


def test_same_token_cannot_be_opened_twice_in_one_process(token: SoftHsmToken) -> None:
    with (
        Pkcs11Custody.open(token.pkcs11_config(), create=True),
        pytest.raises(CustodyError, match="already open"),
    ):
        Pkcs11Custody.open(token.pkcs11_config())
    Pkcs11Custody.open(token.pkcs11_config()).close()  # released on close


def test_failed_open_releases_the_token(token: SoftHsmToken) -> None:
    with pytest.raises(CustodyError):
        Pkcs11Custody.open(token.pkcs11_config())  # not provisioned
    Pkcs11Custody.open(token.pkcs11_config(), create=True).close()


def test_closed_custody_refuses_every_operation(token: SoftHsmToken) -> None:
    custody = Pkcs11Custody.open(token.pkcs11_config(), create=True)
    sealed = custody.seal(PURPOSE, b"x")
    custody.close()
    custody.close()  # idempotent
    assert custody.closed
    with pytest.raises(ProtocolStateError):
        custody.seal(PURPOSE, b"x")
    with pytest.raises(ProtocolStateError):
        custody.unseal(PURPOSE, sealed)
    with pytest.raises(ProtocolStateError):
        custody.sign(b"raft-vote", b"m")


def test_pin_is_never_in_a_repr_or_a_log(
    token: SoftHsmToken, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    config = token.pkcs11_config()
    assert token.user_pin not in repr(config)
    assert token.user_pin not in repr(token)
    with Pkcs11Custody.open(config, create=True) as custody:
        assert token.user_pin not in repr(custody)
        custody.unseal(PURPOSE, custody.seal(PURPOSE, b"x"))
        with pytest.raises(VerificationError):
            custody.unseal(PURPOSE, custody.seal(PURPOSE, b"x")[:-1] + b"\x00")
    assert token.user_pin not in caplog.text
    assert config == Pkcs11Config(token.module_path, token.token_label, "another-pin")
