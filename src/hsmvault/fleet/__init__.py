"""Majority-consensus replication between HSM nodes (Raft via pysyncobj, behind an
authenticated, encrypted transport of our own). (Built with the HSM fleet issue.)
"""
