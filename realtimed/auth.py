"""
Credentials to principals.

A request or a socket presents one credential: a JWT signed with HS256 and
the JWT secret, the anon key, or the admin API key.  `authenticate` turns it
into the `Principal` that authorization and message attribution use, or
raises `AuthenticationError` with a message fit to show the client.

Pure code: the time is passed in.
"""

from __future__ import annotations

import hmac
import json
import sys
from collections.abc import Mapping
from typing import Any

import jwt
from attrs import Factory, field, frozen

ANON = "anon"
AUTHENTICATED = "authenticated"
PROJECT_ADMIN = "project_admin"
ROLES = (ANON, AUTHENTICATED, PROJECT_ADMIN)


@frozen
class Keys:
    """
    The secrets credentials are checked against (and webhooks signed
    with).
    """

    jwt_secret: str
    api_key: str
    anon_key: str
    webhook_secret: str

    def __repr__(self) -> str:
        return "<Keys (secret)>"


class AuthenticationError(Exception):
    """
    No usable credential.  C{str(error)} is the reason, fit to show the
    client (``No authentication provided``, ``Invalid token``, ``Token
    expired``, ...).
    """


@frozen
class Principal:
    """
    Who is asking.

    @ivar role: The PostgreSQL role authorization runs as.
    @ivar sender_type: ``user`` or ``system``, recorded on messages.
    @ivar sender_id: The JWT ``sub`` of an authenticated user, else C{None}.
    @ivar claims: What ``request.jwt.claims`` holds while this principal's
        access is checked.
    """

    role: str
    sender_type: str
    sender_id: str | None
    claims: Mapping[str, Any] = field(eq=False)
    #: C{claims} as JSON text, as the database gets them.
    claims_json: str = field(
        init=False,
        eq=False,
        repr=False,
        default=Factory(
            lambda self: json.dumps(dict(self.claims), separators=(",", ":"), default=str),
            takes_self=True,
        ),
    )

    @property
    def is_admin(self) -> bool:
        return self.role == PROJECT_ADMIN


ANON_PRINCIPAL = Principal(ANON, "user", None, {"role": ANON})
ADMIN_PRINCIPAL = Principal(PROJECT_ADMIN, "system", None, {"role": PROJECT_ADMIN})


def bearer_credential(authorization: str | None) -> str | None:
    """
    The credential in an ``Authorization: Bearer <credential>`` header, or
    C{None} when the header is absent or of another scheme.
    """
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


def authenticate(credential: str | None, keys: Keys, now: float) -> Principal:
    """
    The principal a credential stands for.

    @param now: The current POSIX time, for ``exp`` and ``nbf``.
    @raise AuthenticationError: If the credential is missing or not valid.
    """
    if not credential:
        raise AuthenticationError("No authentication provided")
    if hmac.compare_digest(credential.encode(), keys.api_key.encode()):
        return ADMIN_PRINCIPAL
    if hmac.compare_digest(credential.encode(), keys.anon_key.encode()):
        return ANON_PRINCIPAL
    return _principal_from_token(credential, keys.jwt_secret, now)


def _principal_from_token(token: str, secret: str, now: float) -> Principal:
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            options={
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": False,
                "verify_iss": False,
            },
        )
    except jwt.PyJWTError:
        raise AuthenticationError("Invalid token") from None
    if not isinstance(claims, dict):
        raise AuthenticationError("Invalid token")
    exp = claims.get("exp")
    if exp is not None:
        if not _is_number(exp):
            raise AuthenticationError("Invalid token: exp is not a number")
        if now >= exp:
            raise AuthenticationError("Token expired")
    nbf = claims.get("nbf")
    if nbf is not None:
        if not _is_number(nbf):
            raise AuthenticationError("Invalid token: nbf is not a number")
        if now < nbf:
            raise AuthenticationError("Token not yet valid")
    # The claims live as long as the socket does; their names are the same
    # few strings on every token, so one copy of each is shared.
    claims = {
        sys.intern(name) if isinstance(name, str) else name: value for name, value in claims.items()
    }
    role = claims.get("role", AUTHENTICATED)
    if role == AUTHENTICATED:
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise AuthenticationError("Invalid token: sub is required")
        return Principal(AUTHENTICATED, "user", sub, {**claims, "role": AUTHENTICATED})
    if role == ANON:
        return Principal(ANON, "user", None, claims)
    if role == PROJECT_ADMIN:
        return Principal(PROJECT_ADMIN, "system", None, claims)
    raise AuthenticationError("Invalid token: unknown role")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
