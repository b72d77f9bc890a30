"""The authorization endpoint (RFC 6749 4.1.1, OAuth 2.1 4.1.1, RFC 9207), GET or POST form.

Order matters: the client and the exact redirect URI are checked first, and until both are known to be good
every error is a page for the user, never a redirect (an open redirector would hand codes or errors to
whoever forged the URI). After that, errors go back to the client's redirect URI with ``state`` and ``iss``.
Then: ``response_type=code`` only, PKCE S256 required, scopes computed, the sign-in step, the consent step,
and the code (short-lived, single-use, bound to the client, redirect URI, challenge, scopes and user).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from bastion.config.model import AuthorizationServerConfig
from bastion.oauth.server import pkce
from bastion.oauth.server.errors import (
    ACCESS_DENIED,
    INVALID_REQUEST,
    NO_STORE,
    SERVER_ERROR,
    TEMPORARILY_UNAVAILABLE,
    UNAUTHORIZED_CLIENT,
    UNSUPPORTED_RESPONSE_TYPE,
    OAuthError,
    error_page,
)
from bastion.oauth.server.params import parse_parameters, read_form
from bastion.oauth.server.scopes import grant_scopes, parse_scope
from bastion.oauth.server.secrets import new_authorization_code
from bastion.oauth.server.steps import Approved, ConsentStep, Denied, SignedInUser, SignInStep
from bastion.oauth.server.store import ClientAuthRecord, OAuthStore, StoreUnavailable

log = logging.getLogger("bastion.oauth")

MAX_STATE = 2048
MAX_CLIENT_ID = 128


class Redirect(Exception):
    """An error to send to the (validated) redirect URI."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(error)
        self.error = error
        self.description = description


def redirect_to(uri: str, params: Mapping[str, str], *, post: bool) -> Response:
    """``uri`` plus ``params`` in its query (an existing query is kept, RFC 6749 3.1.2). 303 after a POST so the
    browser follows with GET (RFC 9700 4.12); 302 after a GET."""
    separator = "" if uri.endswith(("?", "&")) else "&" if "?" in uri else "?"
    location = uri + separator + urlencode(params)
    headers = {**NO_STORE, "location": location, "referrer-policy": "no-referrer"}
    return Response(status_code=303 if post else 302, headers=headers)


class AuthorizationEndpoint:
    def __init__(self, store: OAuthStore, settings: Callable[[], AuthorizationServerConfig], *,
                 sign_in: SignInStep | None, consent: ConsentStep, wall_clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._settings = settings
        self._sign_in = sign_in
        self._consent = consent
        self._wall_clock = wall_clock

    async def handle(self, request: Request) -> Response:
        post = request.method == "POST"
        try:
            params = await self._parameters(request, post=post)
            record, redirect_uri = await self._client_and_redirect(params)
        except OAuthError as error:
            return error_page(error)
        except StoreUnavailable:
            log.error("OAuth store unavailable at the authorization endpoint")
            return error_page(OAuthError(TEMPORARILY_UNAVAILABLE, "Authorization is unavailable right now; try "
                                         "again shortly.", status=503))
        state = params.get("state")
        answer: dict[str, str] = {}
        if state is not None and len(state) <= MAX_STATE:
            answer["state"] = state
        answer["iss"] = self._settings().issuer or ""
        try:
            if state is not None and len(state) > MAX_STATE:
                raise Redirect(INVALID_REQUEST, f"state is longer than {MAX_STATE} characters.")
            result = await self._authorize(request, params, record, redirect_uri)
        except Redirect as error:
            return redirect_to(redirect_uri, {"error": error.error, "error_description": error.description,
                                              **answer}, post=post)
        except StoreUnavailable:
            log.error("OAuth store unavailable at the authorization endpoint")
            return redirect_to(redirect_uri, {"error": TEMPORARILY_UNAVAILABLE, "error_description":
                                              "Authorization is unavailable right now; try again shortly.",
                                              **answer}, post=post)
        except Exception:
            log.exception("authorization request failed (client %s)", record.client.client_id)
            return redirect_to(redirect_uri, {"error": SERVER_ERROR, "error_description":
                                              "The authorization server failed to handle the request.", **answer},
                               post=post)
        if isinstance(result, Response):
            return result
        return redirect_to(redirect_uri, {"code": result, **answer}, post=post)

    async def _parameters(self, request: Request, *, post: bool) -> dict[str, str]:
        if post:
            if request.url.query:
                raise OAuthError(INVALID_REQUEST, "Send the parameters either in the URL or in the form, not both.")
            return await read_form(request)
        return parse_parameters(request.url.query)

    async def _client_and_redirect(self, params: Mapping[str, str]) -> tuple[ClientAuthRecord, str]:
        """The client and the redirect URI to answer on, or an error for the page."""
        client_id = params.get("client_id")
        if client_id is None:
            raise OAuthError(INVALID_REQUEST, "client_id is required.")
        record = await self._store.client_for_auth(client_id) if len(client_id) <= MAX_CLIENT_ID else None
        if record is None:
            raise OAuthError(INVALID_REQUEST, "Unknown client.")
        if record.client.status != "active" or not record.consumer_active:
            raise OAuthError(INVALID_REQUEST, "This client is disabled.")
        registered = record.client.redirect_uris
        redirect_uri = params.get("redirect_uri")
        if redirect_uri is None:
            if len(registered) != 1:
                raise OAuthError(INVALID_REQUEST, "redirect_uri is required for this client.")
            return record, registered[0]
        if redirect_uri not in registered:  # exact string comparison (RFC 9700 2.1)
            raise OAuthError(INVALID_REQUEST, "redirect_uri is not registered for this client.")
        return record, redirect_uri

    async def _authorize(self, request: Request, params: Mapping[str, str], record: ClientAuthRecord,
                         redirect_uri: str) -> str | Response:
        """The code, a response from a step, or ``Redirect``."""
        client = record.client
        response_type = params.get("response_type")
        if response_type is None:
            raise Redirect(INVALID_REQUEST, "response_type is required.")
        if response_type != "code":
            raise Redirect(UNSUPPORTED_RESPONSE_TYPE, "Only response_type=code is supported.")
        if "authorization_code" not in client.grant_types:
            raise Redirect(UNAUTHORIZED_CLIENT, "This client may not use the authorization code grant.")
        challenge = params.get("code_challenge")
        if challenge is None:
            raise Redirect(INVALID_REQUEST, "code_challenge is required (PKCE with S256).")
        if params.get("code_challenge_method") != pkce.METHOD:
            raise Redirect(INVALID_REQUEST, "code_challenge_method must be S256.")
        if not pkce.valid_challenge(challenge):
            raise Redirect(INVALID_REQUEST, "code_challenge must be the 43-character BASE64URL SHA-256 of the "
                                            "code verifier.")
        try:
            offered = grant_scopes(parse_scope(params.get("scope")), client.scopes, record.permissions)
        except OAuthError as error:
            raise Redirect(error.error, error.description) from None
        if self._sign_in is None:
            raise Redirect(TEMPORARILY_UNAVAILABLE, "User sign-in is not configured on this authorization server.")
        user = await self._sign_in.authenticate(request)
        if isinstance(user, Response):
            return user
        if not isinstance(user, SignedInUser):
            raise TypeError("the sign-in step must return a SignedInUser or a Response")
        decision = await self._consent.decide(request, user, client, offered)
        if isinstance(decision, Response):
            return decision
        if isinstance(decision, Denied):
            raise Redirect(ACCESS_DENIED, "The user denied the request.")
        if not isinstance(decision, Approved):
            raise TypeError("the consent step must return Approved, Denied or a Response")
        scopes = tuple(s for s in offered if s in decision.scopes)  # never more than was offered
        if not scopes:
            raise Redirect(ACCESS_DENIED, "The user granted none of the requested scopes.")
        settings = self._settings()
        code = new_authorization_code()
        now = datetime.fromtimestamp(self._wall_clock(), UTC)
        expires_at = now + timedelta(seconds=settings.authorization_code_ttl)
        await self._store.save_authorization_code(code, client_id=client.client_id, redirect_uri=redirect_uri,
                                                  code_challenge=challenge, scopes=scopes, subject=user.subject,
                                                  expires_at=expires_at)
        return code
