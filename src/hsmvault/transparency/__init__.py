"""Validation bundles, the witness service and its append-only Merkle audit log.
(Built with the fleet-keys issue.)
"""
