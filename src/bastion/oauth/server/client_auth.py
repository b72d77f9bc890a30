"""Client authentication at the token, revocation and introspection endpoints.

Confidential clients: ``client_secret_basic`` (RFC 6749 section 2.3.1: the id and the secret are each
form-urlencoded *before* being joined by ``:`` and base64-encoded, so a ``:`` or ``%`` in either survives) or
``client_secret_post`` (both in the form body). Public clients: ``none``, the ``client_id`` alone (their
tokens are bound by PKCE and rotation instead). Using two methods at once is ``invalid_request`` (OAuth 2.1
section 2.4). Every failure is one ``invalid_client`` with the same description, whatever the reason
(unknown client, wrong secret, disabled client or consumer), so the answer tells an attacker nothing.
"""

from __future__ import annotations

import binascii
from base64 import b64decode
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote_plus

from bastion.oauth.server.errors import INVALID_REQUEST, OAuthError, invalid_client
from bastion.oauth.server.store import ClientAuthRecord, ClientKind, OAuthClient, OAuthStore

Method = Literal["client_secret_basic", "client_secret_post", "none"]
SECRET_METHODS: tuple[Method, ...] = ("client_secret_basic", "client_secret_post")
ALL_METHODS: tuple[Method, ...] = (*SECRET_METHODS, "none")

MAX_CLIENT_ID = 128
MAX_SECRET = 256
_FAILED = "Client authentication failed."


@dataclass(frozen=True, slots=True)
class Presented:
    """What the request offers as client credentials (nothing verified yet)."""

    client_id: str | None
    secret: str | None
    method: Method | None  # None: no credentials at all

    def __repr__(self) -> str:  # never print the secret
        return f"Presented(client_id={self.client_id!r}, method={self.method!r})"


@dataclass(frozen=True, slots=True)
class AuthenticatedClient:
    record: ClientAuthRecord
    method: Method

    @property
    def client(self) -> OAuthClient:
        return self.record.client

    @property
    def public(self) -> bool:
        return self.record.client.kind == ClientKind.PUBLIC


def _basic(value: str) -> tuple[str, str]:
    """``Basic base64(urlencode(id) ":" urlencode(secret))``; malformed -> ``invalid_client`` with a challenge."""
    try:
        decoded = b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise invalid_client(_FAILED, challenge=True) from None
    raw_id, sep, raw_secret = decoded.partition(":")
    if not sep:
        raise invalid_client(_FAILED, challenge=True)
    return unquote_plus(raw_id, errors="strict"), unquote_plus(raw_secret, errors="strict")


def presented_credentials(authorization: str | None, params: Mapping[str, str]) -> Presented:
    """The client credentials of a request: the ``Authorization`` header and the form parameters."""
    form_id, form_secret = params.get("client_id"), params.get("client_secret")
    if authorization is not None:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() != "basic":
            raise invalid_client("Authenticate the client with HTTP Basic or client_secret_post.", challenge=True)
        try:
            client_id, secret = _basic(value)
        except UnicodeDecodeError:
            raise invalid_client(_FAILED, challenge=True) from None
        if form_secret is not None:
            raise OAuthError(INVALID_REQUEST, "Use one client authentication method, not HTTP Basic and "
                                              "client_secret together.")
        if form_id is not None and form_id != client_id:
            raise OAuthError(INVALID_REQUEST, "client_id differs from the authenticated client.")
        return Presented(client_id, secret, "client_secret_basic")
    if form_secret is not None:
        return Presented(form_id, form_secret, "client_secret_post")
    if form_id is not None:
        return Presented(form_id, None, "none")
    return Presented(None, None, None)


async def authenticate_client(store: OAuthStore, presented: Presented, *, allow_public: bool,
                              always_challenge: bool = False) -> AuthenticatedClient:
    """The client, or ``invalid_client``: 401 + ``WWW-Authenticate: Basic`` when Basic was tried, nothing was
    presented, or ``always_challenge`` (introspection); 400 otherwise (RFC 6749 section 5.2)."""
    method = presented.method
    challenge = always_challenge or method in (None, "client_secret_basic")
    client_id = presented.client_id
    if method is None or not client_id:
        raise invalid_client("Client authentication is required.", challenge=challenge)
    if len(client_id) > MAX_CLIENT_ID or (presented.secret is not None and len(presented.secret) > MAX_SECRET):
        raise invalid_client(_FAILED, challenge=challenge)
    if method == "none":
        record = await store.client_for_auth(client_id) if allow_public else None
        if record is None or record.client.kind != ClientKind.PUBLIC:
            raise invalid_client(_FAILED, challenge=challenge)
    else:
        if not presented.secret:
            raise invalid_client(_FAILED, challenge=challenge)
        record = await store.verify_client_secret(client_id, presented.secret)
        if record is None:
            raise invalid_client(_FAILED, challenge=challenge)
    if record.client.status != "active" or not record.consumer_active:
        raise invalid_client(_FAILED, challenge=challenge)
    return AuthenticatedClient(record, method)
