"""The untrusted zone: gateway HTTP API, user-to-fleet routing, blob and metadata
storage. It relays bytes it cannot read. (Built with the gateway issue.)
"""
