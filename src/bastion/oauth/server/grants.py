"""The token endpoint's grants, strict profile (OAuth 2.1, RFC 9700).

- ``client_credentials``: confidential clients only; the token speaks for the client itself (``sub`` is the
  client id); no refresh token.
- ``authorization_code``: PKCE with S256 for every client (the verifier is checked against the challenge of the
  authorization request); the code is bound to its client and redirect URI and works once. A second
  redemption is refused and revokes everything the first one produced (RFC 6749 4.1.2, OAuth 2.1 4.1.3).
- ``refresh_token``: rotated on every use, for confidential and public clients. Presenting a token that was
  already rotated away means two parties hold the family: the whole family (refresh tokens and the access
  tokens issued from it) is revoked and the request refused (RFC 9700 4.14.2). The scope may be narrowed
  for the new access token; the family keeps its scope (RFC 6749 section 6).

Every grant re-checks the scopes against the client's registration and the consumer's permissions as they are
now, so a role change reaches new tokens at the next refresh. No implicit grant, no password grant.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

from starlette.responses import Response

from bastion.config.model import AuthorizationServerConfig
from bastion.oauth.revocation import RevocationList
from bastion.oauth.server import pkce
from bastion.oauth.server.client_auth import AuthenticatedClient
from bastion.oauth.server.errors import (
    INVALID_GRANT,
    INVALID_REQUEST,
    INVALID_SCOPE,
    UNAUTHORIZED_CLIENT,
    UNSUPPORTED_GRANT_TYPE,
    OAuthError,
)
from bastion.oauth.server.scopes import grant_scopes, intersect, parse_scope, within
from bastion.oauth.server.secrets import (
    AUTHORIZATION_CODE_PREFIX,
    REFRESH_TOKEN_PREFIX,
    new_family_id,
    new_refresh_token,
)
from bastion.oauth.server.store import OAuthStore
from bastion.oauth.server.tokens import AccessTokens, token_response

log = logging.getLogger("bastion.oauth")

CLIENT_CREDENTIALS = "client_credentials"
AUTHORIZATION_CODE = "authorization_code"
REFRESH_TOKEN = "refresh_token"  # noqa: S105 - a grant type
SUPPORTED_GRANTS = (AUTHORIZATION_CODE, CLIENT_CREDENTIALS, REFRESH_TOKEN)
MAX_OPAQUE_LENGTH = 128  # codes and refresh tokens are 47 characters; longer input is never looked up

_BAD_CODE = "The authorization code is invalid, expired, already used, or was issued to another client."
_BAD_REFRESH = "The refresh token is invalid, expired, revoked or already used."


def grant_type_of(params: Mapping[str, str]) -> str:
    grant_type = params.get("grant_type")
    if grant_type is None:
        raise OAuthError(INVALID_REQUEST, "grant_type is required.")
    if grant_type not in SUPPORTED_GRANTS:
        raise OAuthError(UNSUPPORTED_GRANT_TYPE, "Supported grant types: authorization_code, client_credentials, "
                                                 "refresh_token.")
    return grant_type


def _require(params: Mapping[str, str], name: str) -> str:
    value = params.get(name)
    if value is None:
        raise OAuthError(INVALID_REQUEST, f"{name} is required.")
    return value


def _opaque(value: str, prefix: str) -> bool:
    """Shaped like one of our codes or refresh tokens (anything else is not worth a lookup)."""
    return value.startswith(prefix) and len(value) <= MAX_OPAQUE_LENGTH and value.isascii()


def current_scopes(scopes: Sequence[str], auth: AuthenticatedClient) -> tuple[str, ...]:
    """Scopes granted earlier, within the client's registration and the consumer's permissions as they are now."""
    return intersect(intersect(scopes, auth.client.scopes), auth.record.permissions)


class TokenGrants:
    def __init__(self, store: OAuthStore, tokens: AccessTokens, revocations: RevocationList,
                 settings: Callable[[], AuthorizationServerConfig], *,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._tokens = tokens
        self._revocations = revocations
        self._settings = settings
        self._wall_clock = wall_clock

    async def grant(self, grant_type: str, auth: AuthenticatedClient, params: Mapping[str, str]) -> Response:
        if grant_type not in auth.client.grant_types or (grant_type == CLIENT_CREDENTIALS and auth.public):
            raise OAuthError(UNAUTHORIZED_CLIENT, f"This client may not use the {grant_type} grant.")
        if grant_type == CLIENT_CREDENTIALS:
            return await self.client_credentials(auth, params)
        if grant_type == AUTHORIZATION_CODE:
            return await self.authorization_code(auth, params)
        return await self.refresh_token(auth, params)

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._wall_clock(), UTC)

    async def client_credentials(self, auth: AuthenticatedClient, params: Mapping[str, str]) -> Response:
        scopes = grant_scopes(parse_scope(params.get("scope")), auth.client.scopes, auth.record.permissions)
        access = await self._tokens.issue(auth.client, subject=auth.client.client_id, scopes=scopes, family_id=None)
        return token_response(access)

    async def authorization_code(self, auth: AuthenticatedClient, params: Mapping[str, str]) -> Response:
        code = _require(params, "code")
        verifier = params.get("code_verifier")
        if verifier is None:
            raise OAuthError(INVALID_REQUEST, "code_verifier is required (PKCE).")
        if not pkce.valid_verifier(verifier):
            raise OAuthError(INVALID_REQUEST, "code_verifier must be 43-128 characters of A-Z a-z 0-9 - . _ ~.")
        if not _opaque(code, AUTHORIZATION_CODE_PREFIX):
            raise OAuthError(INVALID_GRANT, _BAD_CODE)
        client = auth.client
        family_id = new_family_id()
        record = await self._store.redeem_authorization_code(code, family_id=family_id)
        if record is None:
            raise OAuthError(INVALID_GRANT, _BAD_CODE)
        if record.reused:
            # The store has revoked what the first redemption produced; every node must refuse it now.
            if record.revoked_access_tokens:
                await self._revocations.revoke(record.revoked_access_tokens)
            log.warning("authorization code redeemed twice (client %s): its token family was revoked",
                        record.client_id)
            raise OAuthError(INVALID_GRANT, _BAD_CODE)
        if record.client_id != client.client_id:
            raise OAuthError(INVALID_GRANT, _BAD_CODE)
        redirect_uri = params.get("redirect_uri")
        if redirect_uri is not None and redirect_uri != record.redirect_uri:
            raise OAuthError(INVALID_GRANT, "redirect_uri differs from the authorization request's.")
        if not pkce.verifier_matches(verifier, record.code_challenge):
            raise OAuthError(INVALID_GRANT, "code_verifier does not match the code_challenge.")
        scopes = current_scopes(record.scopes, auth)
        if not scopes:
            raise OAuthError(INVALID_GRANT, "The scopes of this grant are no longer allowed for the client.")
        settings = self._settings()
        refresh: str | None = None
        if REFRESH_TOKEN in client.grant_types:
            refresh = new_refresh_token()
            await self._store.save_refresh_token(
                refresh, family_id=family_id, client_id=client.client_id, subject=record.subject, scopes=scopes,
                family_expires_at=self._now() + timedelta(seconds=settings.refresh_token_ttl))
        access = await self._tokens.issue(client, subject=record.subject, scopes=scopes, family_id=family_id)
        return token_response(access, refresh)

    async def refresh_token(self, auth: AuthenticatedClient, params: Mapping[str, str]) -> Response:
        presented = _require(params, REFRESH_TOKEN)
        requested = parse_scope(params.get("scope"))
        if not _opaque(presented, REFRESH_TOKEN_PREFIX):
            raise OAuthError(INVALID_GRANT, _BAD_REFRESH)
        client = auth.client
        if requested:
            # A scope the family never had is the client's mistake: answer it without spending the token.
            info = await self._store.refresh_token_info(presented)
            if info is not None and info.client_id == client.client_id and within(requested, info.scopes):
                raise OAuthError(INVALID_SCOPE, "The requested scope exceeds the scope of the refresh token.")
        replacement = new_refresh_token()
        rotation = await self._store.rotate_refresh_token(presented, replacement, client_id=client.client_id)
        if rotation.outcome == "reused":
            if rotation.revoked_access_tokens:
                await self._revocations.revoke(rotation.revoked_access_tokens)
            log.warning("refresh token reused (client %s): the whole token family was revoked", client.client_id)
            raise OAuthError(INVALID_GRANT, _BAD_REFRESH)
        record = rotation.record
        if rotation.outcome != "rotated" or record is None:
            raise OAuthError(INVALID_GRANT, _BAD_REFRESH)
        if requested and within(requested, record.scopes):
            raise OAuthError(INVALID_SCOPE, "The requested scope exceeds the scope of the refresh token.")
        scopes = current_scopes(requested or record.scopes, auth)
        if not scopes:
            raise OAuthError(INVALID_GRANT, "The scopes of this grant are no longer allowed for the client.")
        access = await self._tokens.issue(client, subject=record.subject, scopes=scopes, family_id=record.family_id)
        return token_response(access, replacement)
