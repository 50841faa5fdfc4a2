"""Tests of hsmvault.transparency (Merkle proofs, signed notes, checkpoints, Plexi)."""
