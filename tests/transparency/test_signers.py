"""Ed25519 signers: the software seed file (0600, strict) and the PKCS#11 key on a real
SoftHSM2 token (generated in the token, sensitive, non-extractable, CKA_LOCAL checked,
CKM_EDDSA signatures that verify under the CKA_EC_POINT public key).

SoftHSM2 reads its configuration once per process, and other test modules load it with
their own; so every PKCS#11 operation here runs in one spawned worker process that sees
only this module's tokens. The functions prefixed ``_w_`` run there and return plain data.
"""

from __future__ import annotations

import concurrent.futures
import copy
import multiprocessing
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pkcs11
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pkcs11 import Attribute, KeyType, MechanismFlag, ObjectClass

from hsmvault.errors import CustodyError, DecodeError, InvalidParameter
from hsmvault.hsm.softhsm import SoftHsmToken, create_softhsm_token
from hsmvault.transparency.signers import (
    SEED_FILE_HEADER,
    Ed25519Signer,
    Pkcs11Ed25519Signer,
    Pkcs11SignerConfig,
    SoftwareEd25519Signer,
)

MESSAGE = b"hsmvault/test-message"
LABEL = "witness-signing-1"


def _verifies(public_key: bytes, signature: bytes, message: bytes = MESSAGE) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except InvalidSignature:
        return False
    return True


# ----------------------------------------------------------------------------- software


def test_software_seed_file_is_created_0600_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "key.seed"
    signer = SoftwareEd25519Signer.open(path)
    assert isinstance(signer, Ed25519Signer)
    assert path.stat().st_mode & 0o777 == 0o600
    content = path.read_bytes()
    assert content.startswith(SEED_FILE_HEADER)
    assert len(content) == 90
    again = SoftwareEd25519Signer.open(path, create=False)
    assert again.public_key() == signer.public_key()
    assert _verifies(signer.public_key(), again.sign(MESSAGE))
    assert not _verifies(signer.public_key(), again.sign(MESSAGE + b"!"))
    assert [p.name for p in tmp_path.iterdir()] == ["key.seed"]  # no temporary left


def test_software_signer_matches_rfc8032_test_1() -> None:
    # RFC 8032 §7.1, TEST 1 (empty message).
    seed = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    signer = SoftwareEd25519Signer(seed)
    assert signer.public_key().hex() == (
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    )
    assert signer.sign(b"").hex() == (
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )


def test_software_seed_file_is_loaded_strictly(tmp_path: Path) -> None:
    path = tmp_path / "key.seed"
    good = SoftwareEd25519Signer.open(path)
    content = path.read_bytes()
    bad_contents = [
        content[:-1],  # no final newline
        content + b"\n",  # trailing bytes
        content.upper(),  # header and hex case
        content[:25] + content[25:89].upper() + b"\n",  # uppercase hex
        b"hsmvault-ed25519-seed-v2\n" + content[25:],  # unknown version
        content[:25] + b"zz" + content[27:],  # not hex
        b"",
    ]
    for bad in bad_contents:
        path.write_bytes(bad)
        with pytest.raises(DecodeError):
            SoftwareEd25519Signer.open(path, create=True)  # never overwritten
        assert path.read_bytes() == bad
    path.write_bytes(content)
    for mode in (0o640, 0o604, 0o700 | 0o044):
        path.chmod(mode)
        with pytest.raises(CustodyError, match="group or others"):
            SoftwareEd25519Signer.open(path)
    path.chmod(0o600)
    link = tmp_path / "link.seed"
    link.symlink_to(path)
    with pytest.raises(CustodyError):
        SoftwareEd25519Signer.open(link)
    with pytest.raises(CustodyError, match="does not exist"):
        SoftwareEd25519Signer.open(tmp_path / "absent.seed", create=False)
    (tmp_path / "dir.seed").mkdir()
    with pytest.raises(CustodyError):
        SoftwareEd25519Signer.open(tmp_path / "dir.seed")
    assert SoftwareEd25519Signer.open(path).public_key() == good.public_key()


def test_software_signer_hides_its_seed(tmp_path: Path) -> None:
    path = tmp_path / "key.seed"
    signer = SoftwareEd25519Signer.open(path)
    seed_hex = path.read_bytes()[25:89].decode()
    assert seed_hex not in repr(signer)
    assert signer.public_key().hex() in repr(signer)
    for attempt in (pickle.dumps, copy.copy, copy.deepcopy):
        with pytest.raises(TypeError, match="cannot be pickled"):
            attempt(signer)
    with pytest.raises(InvalidParameter):
        SoftwareEd25519Signer(bytes(31))
    assert SoftwareEd25519Signer.generate().public_key() != signer.public_key()


# ----------------------------------------------------------------------------- PKCS#11 worker


def _init_worker(conf: str) -> None:
    os.environ["SOFTHSM2_CONF"] = conf


def _config(token: SoftHsmToken, label: str = LABEL, pin: str | None = None) -> Pkcs11SignerConfig:
    return Pkcs11SignerConfig(
        token.module_path, token.token_label, token.user_pin if pin is None else pin, label
    )


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _w_generate_and_reopen(token: SoftHsmToken) -> dict[str, Any]:
    with Pkcs11Ed25519Signer.open(_config(token)) as created:
        public = created.public_key()
        first = created.sign(MESSAGE)
        shown = repr(created)
        try:
            pickle.dumps(created)
            pickled = "pickled"
        except TypeError as exc:
            pickled = _error(exc)
    reopened = Pkcs11Ed25519Signer.open(_config(token), create=False)
    out = {
        "public": public,
        "first": first,
        "again": reopened.public_key(),
        "second": reopened.sign(MESSAGE),
        "repr": shown,
        "pickled": pickled,
    }
    reopened.close()
    out["closed_repr"] = repr(reopened)
    return out


def _raw_session(token: SoftHsmToken) -> Any:
    lib = pkcs11.lib(token.module_path)
    return lib.get_token(token_label=token.token_label).open(rw=True, user_pin=token.user_pin)


def _w_attributes(token: SoftHsmToken) -> dict[str, Any]:
    Pkcs11Ed25519Signer.open(_config(token)).close()
    with _raw_session(token) as session:
        key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=LABEL)
        names = (
            "TOKEN", "PRIVATE", "SENSITIVE", "ALWAYS_SENSITIVE", "EXTRACTABLE",
            "NEVER_EXTRACTABLE", "LOCAL", "MODIFIABLE", "SIGN", "DERIVE", "DECRYPT",
        )  # fmt: skip
        out: dict[str, Any] = {name: key[getattr(Attribute, name)] for name in names}
        try:
            key[Attribute.VALUE]
            out["value"] = "readable"
        except pkcs11.exceptions.AttributeSensitive:
            out["value"] = "sensitive"
        return out


def _w_imported_key_is_refused(token: SoftHsmToken) -> str:
    seed = bytes(range(32))
    public = SoftwareEd25519Signer(seed).public_key()
    with _raw_session(token) as session:
        common = {
            Attribute.KEY_TYPE: KeyType.EC_EDWARDS,
            Attribute.LABEL: LABEL,
            Attribute.TOKEN: True,
        }
        common[Attribute.EC_PARAMS] = bytes.fromhex("06032b6570")
        session.create_object(
            {
                **common,
                Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                Attribute.VALUE: seed,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.SIGN: True,
            }
        )
        session.create_object(
            {
                **common,
                Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                Attribute.EC_POINT: b"\x04\x20" + public,
            }
        )
    try:
        Pkcs11Ed25519Signer.open(_config(token)).close()
    except CustodyError as exc:
        return _error(exc)
    return "opened"


def _w_other_curve_is_refused(token: SoftHsmToken) -> str:
    with _raw_session(token) as session:
        session.generate_keypair(
            KeyType.EC,
            label=LABEL,
            store=True,
            capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
            public_template={Attribute.EC_PARAMS: bytes.fromhex("06082a8648ce3d030107")},
            private_template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False},
        )
    try:
        Pkcs11Ed25519Signer.open(_config(token)).close()
    except CustodyError as exc:
        return _error(exc)
    return "opened"


def _w_half_pair_and_missing(token: SoftHsmToken) -> list[str]:
    results = []
    try:
        Pkcs11Ed25519Signer.open(_config(token), create=False)
    except CustodyError as exc:
        results.append(_error(exc))
    Pkcs11Ed25519Signer.open(_config(token)).close()
    with _raw_session(token) as session:
        session.get_key(object_class=ObjectClass.PUBLIC_KEY, label=LABEL).destroy()
    try:
        Pkcs11Ed25519Signer.open(_config(token))
    except CustodyError as exc:
        results.append(_error(exc))
    return results


def _w_login_rules(token: SoftHsmToken, other: SoftHsmToken) -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        Pkcs11Ed25519Signer.open(_config(token, pin="wrong-pin-0000"))
    except CustodyError as exc:
        out["wrong_pin"] = _error(exc)
    signing = Pkcs11Ed25519Signer.open(_config(token, "witness-signing-1"))
    log = Pkcs11Ed25519Signer.open(_config(token, "witness-log"))  # joins the login
    out["distinct"] = signing.public_key() != log.public_key()
    try:
        Pkcs11Ed25519Signer.open(_config(token, "third", pin="another-pin-000"))
    except CustodyError as exc:
        out["other_pin"] = _error(exc)
    signing.close()
    signing.close()  # idempotent
    out["log_after_close"] = (log.public_key(), log.sign(MESSAGE))  # still logged in
    try:
        signing.sign(MESSAGE)
    except CustodyError as exc:
        out["closed"] = _error(exc)
    log.close()
    with Pkcs11Ed25519Signer.open(_config(other, "witness-log")) as elsewhere:
        out["other_token"] = elsewhere.public_key() != out["log_after_close"][0]
    try:
        Pkcs11Ed25519Signer.open(
            Pkcs11SignerConfig(token.module_path, "no-such-token", "1234", LABEL)
        )
    except CustodyError as exc:
        out["no_token"] = _error(exc)
    out["config_repr"] = repr(_config(token))
    return out


# ----------------------------------------------------------------------------- PKCS#11 tests


class Worker:
    def __init__(
        self, pool: concurrent.futures.ProcessPoolExecutor, tokens: list[SoftHsmToken]
    ) -> None:
        self.pool = pool
        self.tokens = tokens

    def token(self) -> SoftHsmToken:
        return self.tokens.pop()

    def run(self, fn: Any, *args: Any) -> Any:
        return self.pool.submit(fn, *args).result(timeout=120)


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    directory = tmp_path_factory.mktemp("signers-softhsm")
    tokens = [create_softhsm_token(directory, f"signer-{i}") for i in range(8)]
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=1,
        mp_context=context,
        initializer=_init_worker,
        initargs=(str(tokens[0].conf_path),),
    ) as pool:
        yield Worker(pool, tokens)


def test_pkcs11_key_is_generated_in_the_token_and_signs(worker: Worker) -> None:
    token = worker.token()
    result = worker.run(_w_generate_and_reopen, token)
    assert result["again"] == result["public"]  # found again by its label
    assert _verifies(result["public"], result["first"])
    assert result["second"] == result["first"]  # pure Ed25519 is deterministic
    assert not _verifies(result["public"], result["first"], MESSAGE + b"!")
    assert result["public"].hex() in result["repr"]
    assert token.user_pin not in result["repr"]
    assert token.user_pin not in result["closed_repr"]
    assert "closed" in result["closed_repr"]
    assert result["pickled"].startswith("TypeError")


def test_pkcs11_key_is_sensitive_non_extractable_and_local(worker: Worker) -> None:
    attributes = worker.run(_w_attributes, worker.token())
    assert attributes == {
        "TOKEN": True,
        "PRIVATE": True,
        "SENSITIVE": True,
        "ALWAYS_SENSITIVE": True,
        "EXTRACTABLE": False,
        "NEVER_EXTRACTABLE": True,
        "LOCAL": True,
        "MODIFIABLE": False,
        "SIGN": True,
        "DERIVE": False,
        "DECRYPT": False,
        "value": "sensitive",
    }


def test_pkcs11_refuses_an_imported_key(worker: Worker) -> None:
    assert worker.run(_w_imported_key_is_refused, worker.token()) == (
        "CustodyError: private key in the token is not protected as required"
    )


def test_pkcs11_refuses_a_key_on_another_curve(worker: Worker) -> None:
    assert worker.run(_w_other_curve_is_refused, worker.token()) == (
        "CustodyError: key in the token is not an Edwards-curve key"
    )


def test_pkcs11_refuses_missing_or_half_key_pairs(worker: Worker) -> None:
    assert worker.run(_w_half_pair_and_missing, worker.token()) == [
        "CustodyError: token holds no key under the configured label",
        "CustodyError: token holds only one half of the key pair",
    ]


def test_pkcs11_login_is_shared_per_token(worker: Worker) -> None:
    token, other = worker.token(), worker.token()
    out = worker.run(_w_login_rules, token, other)
    assert out["wrong_pin"] == "CustodyError: login to the token failed (PinIncorrect)"
    assert out["distinct"] is True
    assert out["other_pin"] == "CustodyError: token is open in this process under another PIN"
    public, signature = out["log_after_close"]
    assert _verifies(public, signature)
    assert out["closed"] == "CustodyError: token signer is closed"
    assert out["other_token"] is True
    assert out["no_token"].startswith("CustodyError: cannot find exactly one token")
    assert token.user_pin not in out["config_repr"]
    assert LABEL in out["config_repr"]


def test_pkcs11_config_validates_labels() -> None:
    for label in ("", "-x", "a b", "x" * 65, "é"):
        with pytest.raises(InvalidParameter):
            Pkcs11SignerConfig("/lib.so", "token", "1234", label)


def test_software_seed_file_in_a_missing_directory_is_a_custody_error(tmp_path: Path) -> None:
    with pytest.raises(CustodyError, match="cannot create"):
        SoftwareEd25519Signer.open(tmp_path / "absent" / "key.seed")
