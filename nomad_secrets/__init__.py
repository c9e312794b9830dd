"""nomad-secrets: a secret provider plugin for HashiCorp Nomad.

Kept empty on purpose: the fingerprint and fetch paths import only what they
need, and anything imported here would be paid by every call.
"""
