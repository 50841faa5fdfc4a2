"""Validation bundles, the witness service and its append-only Merkle audit log.
(Built with the fleet-keys issue.)

Pure building blocks (no I/O): ``merkle`` (RFC 6962/9162 hashes, inclusion and consistency
proofs), ``signed_note`` (C2SP signed notes, Ed25519 vkeys), ``checkpoint`` (C2SP tlog
checkpoint bodies) and ``plexi`` (Plexi ``SignatureMessage`` protobuf encoding).
"""
