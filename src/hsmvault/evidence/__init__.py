"""Fleet deployment ceremony, HSM attestation chains, code measurement and audit.
(Built with the evidence issue.)
"""
