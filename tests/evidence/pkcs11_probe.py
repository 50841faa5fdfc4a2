"""Run in a fresh process (SoftHSM2 scans its tokens once per process): provision a
SoftHSM2 token through our PKCS#11 custody, read the identity key's attributes from the
token with :func:`key_properties_from_pkcs11`, make a software-vendor attestation signed
in the token, and read the attributes of two keys that are *not* protected (one
imported, one generated extractable). Prints one JSON object on stdout.

Usage: ``python -m tests.evidence.pkcs11_probe WORKDIR ALGORITHM`` (``ED25519`` or
``ECDSA_P256_SHA256``).
"""

from __future__ import annotations

import base64
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pkcs11
from cryptography.hazmat.primitives.asymmetric import ec
from pkcs11 import Attribute, KeyType, MechanismFlag, ObjectClass

from hsmvault.evidence.attestation.software_vendor import (
    CustodyKind,
    SoftwareVendorCA,
    StatementKeyProperties,
    issue_attestation,
    key_properties_from_pkcs11,
)
from hsmvault.hsm.custody.pkcs11 import IDENTITY_KEY_LABEL, Pkcs11Custody
from hsmvault.hsm.nvram import SignatureAlgorithm
from hsmvault.hsm.softhsm import SoftHsmToken, create_softhsm_token
from tests.evidence.sv_helpers import MEASUREMENT, NONCE, T0

_P256_OID = bytes.fromhex("06082a8648ce3d030107")


def _properties(props: StatementKeyProperties) -> dict[str, Any]:
    record = asdict(props)
    record["source"] = props.source.value
    record["generated_inside"] = props.generated_inside
    record["non_extractable"] = props.non_extractable
    return record


def _session(token: SoftHsmToken) -> pkcs11.Session:
    lib = pkcs11.lib(token.module_path)
    return lib.get_token(token_label=token.token_label).open(rw=True, user_pin=token.user_pin)


def main(workdir: Path, algorithm: SignatureAlgorithm) -> dict[str, Any]:
    token = create_softhsm_token(workdir / "softhsm-nvram", "probe")
    token.activate()
    with Pkcs11Custody.open(token.pkcs11_config(algorithm), create=True) as custody:
        identity = custody.identity
    # Read the identity key's attributes through a raw session (custody closed).
    with _session(token) as session:
        key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=IDENTITY_KEY_LABEL)
        generated = key_properties_from_pkcs11(key)
        imported_key = session.create_object(
            {
                Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                Attribute.KEY_TYPE: KeyType.EC,
                Attribute.EC_PARAMS: _P256_OID,
                Attribute.VALUE: ec.generate_private_key(ec.SECP256R1())
                .private_numbers()
                .private_value.to_bytes(32, "big"),
                Attribute.TOKEN: False,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.SIGN: True,
            }
        )
        imported = key_properties_from_pkcs11(imported_key)
        _, loose_private = session.generate_keypair(
            KeyType.EC,
            store=False,
            capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
            public_template={Attribute.EC_PARAMS: _P256_OID},
            private_template={Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True},
        )
        loose = key_properties_from_pkcs11(loose_private)
        public_key = session.get_key(object_class=ObjectClass.PUBLIC_KEY, label=IDENTITY_KEY_LABEL)
        try:
            key_properties_from_pkcs11(public_key)
            public_refused = False
        except Exception as exc:  # the test checks the class name
            public_refused = type(exc).__name__ == "CustodyError"
    # Attest inside the token.
    ca = SoftwareVendorCA.generate("probe", now=T0)
    certificate = ca.issue_device_certificate(
        identity, region="eu-west", custody=CustodyKind.SOFTHSM2, now=T0
    )
    with Pkcs11Custody.open(token.pkcs11_config(algorithm)) as custody:
        document = issue_attestation(
            custody,
            device_certificate=certificate,
            region="eu-west",
            custody_kind=CustodyKind.SOFTHSM2,
            key_properties=generated,
            measurement=MEASUREMENT,
            issued_at=T0,
            nonce=NONCE,
        )
    return {
        "algorithm": algorithm.name,
        "public_key": identity.public_key.hex(),
        "root": base64.b64encode(ca.root_der()).decode("ascii"),
        "document": document.decode("ascii"),
        "generated": _properties(generated),
        "imported": _properties(imported),
        "extractable": _properties(loose),
        "public_key_object_refused": public_refused,
    }


if __name__ == "__main__":
    result = main(Path(sys.argv[1]), SignatureAlgorithm[sys.argv[2]])
    print(json.dumps(result, sort_keys=True))
