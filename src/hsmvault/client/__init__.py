"""The SDK an app embeds. Never imports ``hsm`` or ``host``: it speaks only ``wire``
over the network. (Built with the gateway/client issue.)
"""
