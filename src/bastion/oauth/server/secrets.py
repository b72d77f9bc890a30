"""Identifiers and secrets of the authorization server, all from the OS CSPRNG (``secrets.token_urlsafe``).

Prefixes let secret scanners recognise a leaked credential and tell people what they are looking at. Only
client ids, family ids, jtis and kids may be stored or logged as they are; secrets, codes and refresh tokens
are stored as HMAC digests (``KeyHasher``) and never logged.
"""

from __future__ import annotations

import secrets

CLIENT_ID_PREFIX = "bcl_"
CLIENT_SECRET_PREFIX = "bcs_"  # noqa: S105 - a prefix, not a secret
REFRESH_TOKEN_PREFIX = "brt_"  # noqa: S105
AUTHORIZATION_CODE_PREFIX = "bac_"

_ID_BYTES = 16  # 22 url-safe characters, 128 bits: identifiers that must not collide or be guessed
_SECRET_BYTES = 32  # 43 url-safe characters, 256 bits


def new_client_id() -> str:
    """``bcl_`` + 22 characters; not secret."""
    return CLIENT_ID_PREFIX + secrets.token_urlsafe(_ID_BYTES)


def new_client_secret() -> str:
    """``bcs_`` + 43 characters; shown once."""
    return CLIENT_SECRET_PREFIX + secrets.token_urlsafe(_SECRET_BYTES)


def new_refresh_token() -> str:
    """``brt_`` + 43 characters."""
    return REFRESH_TOKEN_PREFIX + secrets.token_urlsafe(_SECRET_BYTES)


def new_authorization_code() -> str:
    """``bac_`` + 43 characters."""
    return AUTHORIZATION_CODE_PREFIX + secrets.token_urlsafe(_SECRET_BYTES)


def new_jti() -> str:
    """An access token's id (22 characters)."""
    return secrets.token_urlsafe(_ID_BYTES)


def new_family_id() -> str:
    """A refresh-token family's id (22 characters): every token of one grant shares it."""
    return secrets.token_urlsafe(_ID_BYTES)


def new_kid() -> str:
    """A signing key's id: random, so it reveals nothing about the key material."""
    return secrets.token_urlsafe(_ID_BYTES)
