"""Majority-consensus replication between HSM nodes (Raft via pysyncobj, behind an
authenticated, encrypted transport of our own). (Built with the HSM fleet issue.)

Modules: :mod:`~hsmvault.fleet.membership` (who is in the fleet),
:mod:`~hsmvault.fleet.codec` (strict, pickle-free encoding of pysyncobj messages),
:mod:`~hsmvault.fleet.secure_link` (mutually authenticated, encrypted links),
:mod:`~hsmvault.fleet.transport` (the pysyncobj transport), and
:mod:`~hsmvault.fleet.raft_node` (a running member: ``RaftNode.submit``).
"""
