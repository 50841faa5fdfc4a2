"""Pure cryptography for hsmvault: no I/O, no clocks, randomness injectable.

Modules:

``ristretto255``  the prime-order group (RFC 9496) on libsodium, scalars and elements
``hash_to_curve`` ``expand_message_xmd`` (RFC 9380) and hash-to-group for ristretto255
``oprf``          OPRF, VOPRF and POPRF, ristretto255-SHA512 (RFC 9497)
``ksf``           key-stretching functions for OPAQUE (Identity, Argon2id)
``opaque``        OPAQUE-3DH, ristretto255-SHA512 (RFC 9807)
``backup_stream`` the streaming AEAD format for backup files (docs/formats/backup.md)

Only ``crypto`` itself and the leaf ``hsmvault.errors`` are imported from our package.
"""
