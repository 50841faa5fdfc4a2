"""The ``hsmvault`` command line."""
