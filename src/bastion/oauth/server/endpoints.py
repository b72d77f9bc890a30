"""The authorization server's HTTP endpoints, as one small ASGI application (Starlette requests/responses).

Why the protocol logic is ours and not Authlib's server core: Authlib's ``AuthorizationServer`` is
synchronous (``query_client``, ``save_token``, ``authenticate_user`` are plain callbacks) while our store is
async on the gateway's event loop, so it would need a thread per request and a second event loop per store
call; its integrations are Flask/Django only; and the strict profile removes most of what it offers while
changing its defaults everywhere else (``plain`` PKCE allowed and required only for public clients, no
refresh-token reuse detection, no family revocation). What is left, three grants and four small endpoints,
is shorter to write against the RFCs than to harden. joserfc (the same author's JOSE library) signs the
tokens.

Endpoints (nothing else answers, and only with the listed methods):

- ``POST /oauth2/token``: the grants (``grants.py``); client authentication (``client_auth.py``).
- ``GET|POST /oauth2/authorize``: the authorization endpoint (``authorize.py``).
- ``POST /oauth2/revoke``: RFC 7009.
- ``POST /oauth2/introspect``: RFC 7662, confidential clients only.
- ``GET /oauth2/jwks``: the public signing keys.
- ``GET /.well-known/oauth-authorization-server``: RFC 8414 metadata.

Requests are ``application/x-www-form-urlencoded`` bodies (bounded, each parameter at most once); the
token, revocation and introspection endpoints refuse parameters in the URL (credentials must never be in
one). Unknown paths and methods answer problem+json like the rest of the gateway; everything else answers as
the OAuth RFCs require. Tokens, codes and secrets are never logged.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from bastion.config.model import AuthorizationServerConfig
from bastion.errors import codes
from bastion.errors.codes import ErrorCode
from bastion.errors.problem import DEFAULT_DOCS_BASE, PROBLEM_CONTENT_TYPE, render_problem
from bastion.oauth.jwt import looks_like_jwt
from bastion.oauth.revocation import RevocationList
from bastion.oauth.server.authorize import AuthorizationEndpoint
from bastion.oauth.server.client_auth import (
    ALL_METHODS,
    SECRET_METHODS,
    AuthenticatedClient,
    authenticate_client,
    presented_credentials,
)
from bastion.oauth.server.errors import (
    INVALID_CLIENT,
    INVALID_GRANT,
    INVALID_REQUEST,
    SERVER_ERROR,
    TEMPORARILY_UNAVAILABLE,
    OAuthError,
    error_response,
    invalid_client,
    json_response,
)
from bastion.oauth.server.grants import SUPPORTED_GRANTS, TokenGrants, grant_type_of
from bastion.oauth.server.keys import SigningKeys
from bastion.oauth.server.limits import FailureBrake
from bastion.oauth.server.params import read_form, single_header
from bastion.oauth.server.pkce import METHOD as PKCE_METHOD
from bastion.oauth.server.secrets import REFRESH_TOKEN_PREFIX
from bastion.oauth.server.store import OAuthStore, StoreUnavailable
from bastion.oauth.server.tokens import AccessTokens, claim_text

log = logging.getLogger("bastion.oauth")

TOKEN_PATH = "/oauth2/token"  # noqa: S105 - a path
AUTHORIZE_PATH = "/oauth2/authorize"
REVOKE_PATH = "/oauth2/revoke"
INTROSPECT_PATH = "/oauth2/introspect"
JWKS_PATH = "/oauth2/jwks"
METADATA_PATH = "/.well-known/oauth-authorization-server"

JWKS_MAX_AGE = 60  # seconds: a new `next` key is published long before it signs
METADATA_MAX_AGE = 300
_INACTIVE = {"active": False}

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Handler = Callable[[Request], Awaitable[Response]]


def client_address(request: Request) -> str:
    """The client address the gateway resolved through its trusted proxies (``scope["client"]``)."""
    client = request.scope.get("client")
    return str(client[0]) if client else "-"


class OAuthEndpoints:
    """The ASGI application. ``settings`` is read on every request, so reloaded lifetimes apply at once."""

    def __init__(self, *, settings: Callable[[], AuthorizationServerConfig], store: OAuthStore, keys: SigningKeys,
                 revocations: RevocationList, tokens: AccessTokens, grants: TokenGrants,
                 authorize: AuthorizationEndpoint, brake: FailureBrake,
                 docs_base: Callable[[], str] | None = None) -> None:
        self._settings = settings
        self._store = store
        self._keys = keys
        self._revocations = revocations
        self._tokens = tokens
        self._grants = grants
        self._brake = brake
        self._docs_base = docs_base
        self._routes: dict[str, dict[str, Handler]] = {
            TOKEN_PATH: {"POST": self._with_client_errors(self._token)},
            AUTHORIZE_PATH: {"GET": authorize.handle, "POST": authorize.handle},
            REVOKE_PATH: {"POST": self._with_client_errors(self._revoke)},
            INTROSPECT_PATH: {"POST": self._with_client_errors(self._introspect)},
            JWKS_PATH: {"GET": self._jwks},
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # no lifespan or websocket work: the gateway owns the process
        request = Request(scope, receive)
        response = await self._dispatch(request)
        await response(scope, receive, send)

    def _metadata_path(self) -> str:
        """RFC 8414 section 3: the issuer's path, if any, follows the well-known segment."""
        issuer = self._settings().issuer or ""
        after_scheme = issuer.partition("://")[2]
        path = after_scheme[len(after_scheme.split("/", 1)[0]):]
        return METADATA_PATH + path

    async def _dispatch(self, request: Request) -> Response:
        path = request.url.path
        methods = self._routes.get(path)
        if methods is None and path == self._metadata_path():
            methods = {"GET": self._metadata}
        if methods is None:
            return self._problem(request, codes.ROUTE_NOT_FOUND)
        handler = methods.get(request.method)
        if handler is None:
            return self._problem(request, codes.ROUTE_METHOD_NOT_ALLOWED, {"allow": ", ".join(sorted(methods))})
        try:
            return await handler(request)
        except Exception:
            log.exception("OAuth endpoint %s failed", path)
            return error_response(OAuthError(SERVER_ERROR, "The authorization server failed to handle the request.",
                                             status=500))

    def _problem(self, request: Request, code: ErrorCode, headers: dict[str, str] | None = None) -> Response:
        request_id = str(request.scope.get("state", {}).get("request_id", "-"))
        docs_base = self._docs_base() if self._docs_base is not None else DEFAULT_DOCS_BASE
        body = render_problem(code, request_id=request_id, docs_base=docs_base)
        return Response(body, status_code=code.status, media_type=PROBLEM_CONTENT_TYPE.decode(),
                         headers={**(headers or {}), "cache-control": "no-store"})

    # -- endpoints authenticating clients --------------------------------------------------------------

    def _with_client_errors(self, handler: Handler) -> Handler:
        """The brake before anything else; OAuth errors as RFC 6749 5.2 JSON; guessing counted."""

        async def run(request: Request) -> Response:
            address = client_address(request)
            try:
                self._brake.check(address)
                if request.url.query:
                    raise OAuthError(INVALID_REQUEST, "Parameters are accepted in the form body only, never in "
                                                      "the URL.")
                return await handler(request)
            except OAuthError as error:
                if error.error in (INVALID_CLIENT, INVALID_GRANT):
                    await self._brake.failure(address)
                    log.info("OAuth %s refused from %s: %s", request.url.path, address, error.error)
                return error_response(error)
            except StoreUnavailable:
                log.error("OAuth store unavailable at %s", request.url.path)
                return error_response(OAuthError(TEMPORARILY_UNAVAILABLE, "The authorization server cannot handle "
                                                 "the request right now; retry shortly.", status=503,
                                                 headers={"retry-after": "1"}))

        return run

    async def _client(self, request: Request, params: dict[str, str], *, allow_public: bool,
                      always_challenge: bool = False) -> AuthenticatedClient:
        presented = presented_credentials(single_header(request, "authorization"), params)
        return await authenticate_client(self._store, presented, allow_public=allow_public,
                                         always_challenge=always_challenge)

    async def _token(self, request: Request) -> Response:
        params = await read_form(request)
        grant_type = grant_type_of(params)
        # Public clients identify themselves by client_id alone; `grant` refuses them client_credentials.
        auth = await self._client(request, params, allow_public=True)
        return await self._grants.grant(grant_type, auth, params)

    async def _revoke(self, request: Request) -> Response:
        """RFC 7009. 200 whatever became of the token: unknown, expired, already revoked, or another client's
        (left alone: the answer says nothing about other clients' tokens)."""
        params = await read_form(request)
        auth = await self._client(request, params, allow_public=True)
        token = params.get("token")
        if token is None:
            raise OAuthError(INVALID_REQUEST, "token is required.")
        client_id = auth.client.client_id
        if token.startswith(REFRESH_TOKEN_PREFIX):
            revoked = await self._store.revoke_refresh_token(token, client_id=client_id)
            if revoked:
                await self._revocations.revoke(revoked)
        elif looks_like_jwt(token):
            verified = await self._tokens.verify_own(token)
            if verified is not None and verified.jti and claim_text(verified.claims, "client_id") == client_id:
                expires_at = datetime.fromtimestamp(verified.expires_at, UTC)
                await self._revocations.revoke([(verified.jti, expires_at)])
        return Response(status_code=200, headers={"cache-control": "no-store", "pragma": "no-cache"})

    async def _introspect(self, request: Request) -> Response:
        """RFC 7662. Any confidential client of this server may ask (resource servers register as clients);
        an inactive, unknown or malformed token gets exactly ``{"active": false}``."""
        params = await read_form(request)
        auth = await self._client(request, params, allow_public=False, always_challenge=True)
        if auth.public:  # cannot happen (public clients cannot authenticate), kept as the rule's statement
            raise invalid_client("Introspection requires a confidential client.", challenge=True)
        token = params.get("token")
        if token is None:
            raise OAuthError(INVALID_REQUEST, "token is required.")
        issuer = self._settings().issuer
        if token.startswith(REFRESH_TOKEN_PREFIX):
            record = await self._store.refresh_token_info(token)
            if record is None:
                return json_response(_INACTIVE)
            return json_response({
                "active": True, "scope": " ".join(record.scopes), "client_id": record.client_id,
                "sub": record.subject, "exp": int(record.family_expires_at.timestamp()), "iss": issuer,
            })
        if not looks_like_jwt(token):
            return json_response(_INACTIVE)
        verified = await self._tokens.verify_own(token)
        if verified is None or not verified.jti or self._revocations.is_revoked(verified.jti):
            return json_response(_INACTIVE)
        claims = verified.claims
        body: dict[str, object] = {"active": True}
        for name in ("scope", "client_id", "sub", "exp", "iat", "iss", "aud"):
            if name in claims:
                body[name] = claims[name]
        body["token_type"] = "Bearer"  # noqa: S105 - a token type
        body["jti"] = verified.jti
        return json_response(body)

    # -- public documents ----------------------------------------------------------------------------

    async def _jwks(self, request: Request) -> Response:
        return json_response(self._keys.jwks(), max_age=JWKS_MAX_AGE)

    async def _metadata(self, request: Request) -> Response:
        return json_response(metadata(self._settings()), max_age=METADATA_MAX_AGE)


def metadata(settings: AuthorizationServerConfig) -> dict[str, object]:
    """RFC 8414 authorization server metadata."""
    issuer = settings.issuer or ""
    return {
        "issuer": issuer,
        "authorization_endpoint": issuer + AUTHORIZE_PATH,
        "token_endpoint": issuer + TOKEN_PATH,
        "jwks_uri": issuer + JWKS_PATH,
        "revocation_endpoint": issuer + REVOKE_PATH,
        "introspection_endpoint": issuer + INTROSPECT_PATH,
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": list(SUPPORTED_GRANTS),
        "code_challenge_methods_supported": [PKCE_METHOD],
        "token_endpoint_auth_methods_supported": list(ALL_METHODS),
        "revocation_endpoint_auth_methods_supported": list(ALL_METHODS),
        "introspection_endpoint_auth_methods_supported": list(SECRET_METHODS),
        "authorization_response_iss_parameter_supported": True,
    }
