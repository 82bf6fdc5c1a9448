"""
Standard Webhooks signing (https://www.standardwebhooks.com/): the secret
format and the ``webhook-signature`` header.  Pure code.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

SECRET_PREFIX = "whsec_"


def decode_webhook_secret(secret: str) -> bytes:
    """
    The key bytes of a ``whsec_<base64>`` secret.

    @raise ValueError: If the secret is not in that form or its key is
        shorter than 24 bytes.
    """
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("expected whsec_ followed by base64")
    encoded = secret[len(SECRET_PREFIX) :]
    # Secrets are often copied without their base64 padding.
    encoded += "=" * (-len(encoded) % 4)
    try:
        key = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise ValueError("expected whsec_ followed by base64") from None
    if len(key) < 24:
        raise ValueError("the key must be at least 24 bytes")
    return key


def encode_webhook_secret(key: bytes) -> str:
    """
    The ``whsec_<base64>`` form of a key.
    """
    return SECRET_PREFIX + base64.b64encode(key).decode("ascii")


def sign(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """
    The ``webhook-signature`` header value for one request: ``v1,`` and the
    base64 HMAC-SHA256 of ``id.timestamp.body``.
    """
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")
