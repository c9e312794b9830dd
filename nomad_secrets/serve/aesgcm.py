"""Drone's encrypted answer (``Accept-Encoding: aesgcm``).

As drone-go's plugin/internal/aesgcm: AES-256-GCM, the key is the shared
secret's first 32 bytes, and the body is the 12-byte random nonce followed
by the ciphertext and its 16-byte tag, with no associated data. The answer
says ``Content-Encoding: aesgcm`` and ``Content-Type: application/octet-stream``.
"""

from __future__ import annotations

import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
NONCE_BYTES = 12


def seal(plaintext: bytes, secret: bytes) -> bytes:
    if len(secret) < KEY_BYTES:  # settings.py refuses such secrets at start
        raise ValueError("the shared secret is shorter than 32 bytes")
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(secret[:KEY_BYTES]).encrypt(nonce, plaintext, None)
