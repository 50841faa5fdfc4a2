"""The SDK an app embeds. Never imports ``hsm`` or ``host``: it speaks only ``wire``
over the network. (Built with the gateway/client issue, ADR 0008.)

Modules, from the top:

``sdk``             :class:`~hsmvault.client.sdk.VaultClient` — backups (archive → encrypt
                    → resumable chunked upload; download → decrypt → atomic restore) and
                    key protection (PIN, password, recovery code) through the gateway
``keystore``        :class:`~hsmvault.client.keystore.DeviceKeystore` — BK on the device,
                    wrapped under a device key file (a stand-in for secure storage)
``vault_protocol``  the device's side of the vault protocol (ADR 0007) over any
                    ``send(request_bytes) -> response_bytes``; KSF floor policy
``http``            the HTTP routes of ADR 0008 and the status → error mapping
``recovery_codes``  recovery codes (Crockford base32 + Reed-Solomon check symbols),
                    PIN/password policy, the 64-digit key format
``archive``         directories as tar streams; a restore that refuses to escape
``backup_files``    whole-file atomic encrypt/decrypt
``errors``          SDK errors, subclasses of :mod:`hsmvault.errors` with the fields a
                    caller acts on (``attempts_remaining``, ``retry_after``)
"""
