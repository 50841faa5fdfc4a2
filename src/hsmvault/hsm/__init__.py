"""The trusted zone: the vault state machine and key custody of one HSM node.

Imports only ``crypto``, ``wire``, ``errors`` and the consensus engine; never ``host``,
``client`` or ``cli`` (checked by import-linter). (Built with the HSM fleet issue.)
"""
