"""The trusted zone: the vault state machine and key custody of one HSM node.

``custody``       key-custody backends (software store, PKCS#11 token) behind one interface
``nvram``         the small trusted NVRAM: identity, fleet membership, monotonic epoch
``softhsm``       throwaway SoftHSM2 tokens for tests and local deployments

Imports only ``crypto``, ``wire``, ``errors`` and the consensus engine (``fleet``); never
``host``, ``client`` or ``cli`` (checked by import-linter).
"""
