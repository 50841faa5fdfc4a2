"""Storage adapters of the gateway: encrypted backup blobs and their metadata.

The gateway stores only ciphertext (the backup stream format) and metadata it may see
(sizes, digests, labels, timestamps). Protocols in :mod:`.base`; adapters: filesystem and
S3 (blobs), SQLite and PostgreSQL (metadata).
"""
