"""
Tests for L{realtimed.webhooks.signing}.
"""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from twisted.trial.unittest import SynchronousTestCase

from realtimed.webhooks.signing import decode_webhook_secret, encode_webhook_secret, sign

KEY = bytes(range(32))


class SecretTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        """
        A key encoded as a secret decodes to the same key.
        """
        self.assertEqual(decode_webhook_secret(encode_webhook_secret(KEY)), KEY)

    def test_unpadded(self) -> None:
        """
        A secret whose base64 lost its padding is still accepted.
        """
        key = b"k" * 31
        secret = encode_webhook_secret(key).rstrip("=")
        self.assertEqual(decode_webhook_secret(secret), key)

    def test_refused(self) -> None:
        """
        A secret without the prefix, with bad base64, or with a key shorter
        than 24 bytes is refused.
        """
        for secret in (
            base64.b64encode(KEY).decode(),
            "whsec_not base64!",
            "whsec_" + base64.b64encode(b"short").decode(),
        ):
            with self.assertRaises(ValueError):
                decode_webhook_secret(secret)


class SignTests(SynchronousTestCase):
    def test_verified_now(self) -> None:
        """
        A request signed now passes the reference library's verification,
        which also checks the timestamp.
        """
        secret = encode_webhook_secret(KEY)
        body = '{"channel": "room:1", "payload": {"text": "h\u00e9"}}'.encode()
        timestamp = int(time.time())
        headers = {
            "webhook-id": "3f2c6a55-0f5e-4c59-9c55-1f7f3c7f2b10",
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(KEY, "3f2c6a55-0f5e-4c59-9c55-1f7f3c7f2b10", timestamp, body),
        }
        self.assertEqual(
            Webhook(secret).verify(body, headers),
            {"channel": "room:1", "payload": {"text": "h\u00e9"}},
        )

    def test_tampered(self) -> None:
        """
        A changed body no longer matches the signature.
        """
        timestamp = int(time.time())
        headers = {
            "webhook-id": "m1",
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(KEY, "m1", timestamp, b'{"a": 1}'),
        }
        with self.assertRaises(WebhookVerificationError):
            Webhook(encode_webhook_secret(KEY)).verify(b'{"a": 2}', headers)

    @given(
        key=st.binary(min_size=24, max_size=64),
        message_id=st.text(
            alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1
        ),
        timestamp=st.integers(min_value=0, max_value=2**33),
        body=st.text(),
    )
    def test_same_as_reference(
        self, key: bytes, message_id: str, timestamp: int, body: str
    ) -> None:
        """
        For any key, id, timestamp and body, the signature is the one the
        reference library computes.
        """
        when = datetime.fromtimestamp(timestamp, UTC)
        self.assertEqual(
            sign(key, message_id, timestamp, body.encode("utf-8")),
            Webhook(key).sign(message_id, when, body),
        )
