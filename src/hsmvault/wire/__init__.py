"""Messages that cross a trust boundary: typed, versioned, one canonical encoding.

Every decoder rejects unknown versions, wrong lengths and trailing bytes with
:class:`hsmvault.errors.DecodeError`. Imports nothing of ours but ``hsmvault.errors``.
(The message set arrives with the HSM fleet.)
"""
