"""
Tests for L{realtimed.auth}.
"""

from __future__ import annotations

import base64
import json

import jwt
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from realtimed.auth import (
    ADMIN_PRINCIPAL,
    ANON_PRINCIPAL,
    AuthenticationError,
    Keys,
    authenticate,
    bearer_credential,
)

KEYS = Keys(
    jwt_secret="s" * 40,
    api_key="ik_" + "a" * 40,
    anon_key="anon_" + "b" * 40,
    webhook_secret="whsec_" + base64.b64encode(b"k" * 32).decode(),
)
NOW = 1_800_000_000.0


def token(claims: dict, secret: str = KEYS.jwt_secret, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=algorithm)


class AuthenticateTests(SynchronousTestCase):
    def reason(self, credential: str | None) -> str:
        with self.assertRaises(AuthenticationError) as raised:
            authenticate(credential, KEYS, NOW)
        return str(raised.exception)

    def test_missing(self) -> None:
        """
        No credential at all is refused with "No authentication provided".
        """
        self.assertEqual(self.reason(None), "No authentication provided")
        self.assertEqual(self.reason(""), "No authentication provided")

    def test_api_key(self) -> None:
        """
        The API key stands for the project admin, a system sender.
        """
        principal = authenticate(KEYS.api_key, KEYS, NOW)
        self.assertEqual(principal, ADMIN_PRINCIPAL)
        self.assertTrue(principal.is_admin)
        self.assertEqual((principal.sender_type, principal.sender_id), ("system", None))

    def test_anon_key(self) -> None:
        """
        The anon key stands for an anonymous user without a sender id.
        """
        principal = authenticate(KEYS.anon_key, KEYS, NOW)
        self.assertEqual(principal, ANON_PRINCIPAL)
        self.assertEqual((principal.role, principal.sender_id), ("anon", None))

    def test_user_token(self) -> None:
        """
        A token without a role is an authenticated user whose sender id is
        its sub; its claims are kept for policies.
        """
        principal = authenticate(token({"sub": "user-1", "email": "a@b"}), KEYS, NOW)
        self.assertEqual(principal.role, "authenticated")
        self.assertEqual(principal.sender_id, "user-1")
        self.assertEqual(principal.claims["email"], "a@b")
        self.assertEqual(principal.claims["role"], "authenticated")

    def test_roles(self) -> None:
        """
        The role claim picks anon or project_admin; another role is refused.
        """
        self.assertEqual(authenticate(token({"role": "anon"}), KEYS, NOW).role, "anon")
        admin = authenticate(token({"role": "project_admin", "sub": "x"}), KEYS, NOW)
        self.assertEqual(
            (admin.role, admin.sender_type, admin.sender_id), ("project_admin", "system", None)
        )
        self.assertEqual(
            self.reason(token({"role": "postgres", "sub": "x"})), "Invalid token: unknown role"
        )

    def test_authenticated_needs_sub(self) -> None:
        """
        An authenticated token must name its user.
        """
        self.assertEqual(
            self.reason(token({"role": "authenticated"})), "Invalid token: sub is required"
        )

    def test_bad_signature(self) -> None:
        """
        A token signed with another secret is refused.
        """
        self.assertEqual(self.reason(token({"sub": "u"}, secret="t" * 40)), "Invalid token")

    def test_expired(self) -> None:
        """
        A token past its exp is refused as expired; one before it passes.
        """
        self.assertEqual(self.reason(token({"sub": "u", "exp": NOW})), "Token expired")
        authenticate(token({"sub": "u", "exp": NOW + 1}), KEYS, NOW)

    def test_not_yet_valid(self) -> None:
        """
        A token before its nbf is refused.
        """
        self.assertEqual(self.reason(token({"sub": "u", "nbf": NOW + 10})), "Token not yet valid")

    def test_alg_none(self) -> None:
        """
        An unsigned token (alg none) is refused even with the right claims.
        """
        header = base64.urlsafe_b64encode(
            json.dumps({"alg": "none", "typ": "JWT"}).encode()
        ).rstrip(b"=")
        body = base64.urlsafe_b64encode(
            json.dumps({"sub": "u", "role": "project_admin"}).encode()
        ).rstrip(b"=")
        self.assertEqual(self.reason((header + b"." + body + b".").decode()), "Invalid token")

    def test_other_algorithm(self) -> None:
        """
        A token signed with HS512, even with the right secret, is refused.
        """
        self.assertEqual(self.reason(token({"sub": "u"}, algorithm="HS512")), "Invalid token")

    @given(st.text())
    def test_garbage(self, credential: str) -> None:
        """
        Any other string is refused with a reason, never another exception.
        """
        if credential in (KEYS.api_key, KEYS.anon_key):
            return
        self.assertRaises(AuthenticationError, authenticate, credential, KEYS, NOW)


class BearerCredentialTests(SynchronousTestCase):
    def test_bearer(self) -> None:
        """
        The credential follows "Bearer", whatever the scheme's case.
        """
        self.assertEqual(bearer_credential("Bearer abc"), "abc")
        self.assertEqual(bearer_credential("bearer  abc "), "abc")

    def test_other(self) -> None:
        """
        No header, an empty one or another scheme give no credential.
        """
        self.assertIsNone(bearer_credential(None))
        self.assertIsNone(bearer_credential("Bearer "))
        self.assertIsNone(bearer_credential("Basic abc"))
