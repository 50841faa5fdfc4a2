"""hsmvault: an HSM-backed backup key vault for end-to-end encrypted backups.

The package is split into one sub-package per trust zone (see ARCHITECTURE §3 and
``docs/decisions/0001-layout-and-trust-zones.md``):

``crypto``        pure cryptography, no I/O (OPRF, OPAQUE, streaming backup AEAD)
``wire``          every message that crosses a trust boundary
``hsm``           the trusted zone: vault state machine and key custody
``fleet``         majority-consensus replication between HSM nodes
``host``          the untrusted gateway and storage adapters
``transparency``  validation bundles, witness and audit log
``evidence``      deployment ceremony, attestations, audit
``client``        the SDK an app embeds
``cli``           the ``hsmvault`` command
"""

__version__ = "0.1.0"
