"""`oauth2`: OAuth 2 access tokens from `Authorization: Bearer` (RFC 6750), never from the URL.

The token is validated by the resource server (``bastion.oauth.resource``) against the issuers the route
allows. A token verified before is answered from the cache in the parser callback, without a task (the
hot path). Every way a token can be wrong gets the same 401 with ``error="invalid_token"``; the reason
goes to the access log. When the issuer's keys or introspection endpoint cannot be reached beyond their
staleness bound the answer is 503 (fail closed). The token is removed from the upstream request and the
caller's identity is forwarded in configured headers instead (client copies of those headers are dropped).
Addresses that send many invalid tokens are blocked for a while, like key-auth's failed_auth brake.
"""

from __future__ import annotations

import logging
import re
from typing import ClassVar, Final

from pydantic import BaseModel

from bastion.errors.codes import (
    AUTH_CREDENTIALS_IN_QUERY,
    AUTH_CREDENTIALS_INVALID,
    AUTH_CREDENTIALS_MISSING,
    AUTH_UNAVAILABLE,
)
from bastion.identity.principal import Principal
from bastion.oauth.contracts import TokenFailure
from bastion.oauth.resource import TokenValidator
from bastion.pipeline.context import RequestContext
from bastion.pipeline.policy import PENDING, BasePolicy, Pending, PolicyServices, PolicyType, Reject, Stage
from bastion.policies.failed_auth import FailedAuthBrake
from bastion.policies.forwarding import ForwardedIdentity
from bastion.policies.key_auth.policy import credentials_in_query
from bastion.policies.oauth2.config import OAuth2Config
from bastion.ratelimit.memory import MemoryCounterStore

log = logging.getLogger("bastion.auth")

CHALLENGE = 'Bearer realm="bastion"'
INVALID_TOKEN_CHALLENGE = CHALLENGE + ', error="invalid_token"'
_B64TOKEN: Final = re.compile(r"[A-Za-z0-9\-._~+/]+=*")  # RFC 6750 section 2.1
# Bastion's own secrets (API keys, client secrets, refresh tokens, authorization codes) by their prefixes.
_BASTION_SECRETS: Final = ("bst_", "bcs_", "brt_", "bac_")


class OAuth2Policy(BasePolicy):
    name: ClassVar[str] = "oauth2"
    stage: ClassVar[Stage] = Stage.AUTHENTICATE
    Config: ClassVar[type[BaseModel]] = OAuth2Config

    def __init__(self, config: OAuth2Config, services: PolicyServices) -> None:
        validator = services.extras.get("oauth_validator")
        if not isinstance(validator, TokenValidator) and not services.extras.get("check_only"):
            raise ValueError("oauth2 needs the OAuth resource server (it is set up by the gateway runtime)")
        # None only when a configuration is checked offline (`bastion check`): the policy never runs then.
        self._validator = validator if isinstance(validator, TokenValidator) else None
        self._issuers = frozenset(config.issuers) if config.issuers is not None else None
        if self._validator is not None:
            known = self._validator.issuer_names()
            if not known:
                raise ValueError("oauth2 accepts no token: configure oauth.issuers or enable oauth.server")
            unknown = sorted((self._issuers or frozenset()) - known)
            if unknown:
                raise ValueError(f"unknown issuers {unknown} (configured: {', '.join(sorted(known))})")
        self._clock = services.clock
        # The token never goes upstream, nor do client-sent copies of the identity headers.
        self._forwarding = ForwardedIdentity(("authorization",), (
            (config.forward_consumer_header or "", lambda p: p.consumer_id),
            (config.forward_subject_header or "", lambda p: p.subject),
            (config.forward_client_id_header or "", lambda p: p.client_id),
            (config.forward_scopes_header or "", lambda p: " ".join(sorted(p.permissions))),
            (config.forward_roles_header or "", lambda p: ",".join(p.roles)),
            (config.forward_issuer_header or "", lambda p: p.issuer),
        ))
        counters = services.extras.get("counters")
        self._brake = FailedAuthBrake(config.failed_auth,
                                      counters if counters is not None else MemoryCounterStore(),
                                      counter_prefix="oauthfail", credential="tokens")

    # -- the credential ----------------------------------------------------------------------------
    @staticmethod
    def _bearer(ctx: RequestContext) -> str | None:
        """The token after `Bearer ` (None: no bearer credential; "": several Authorization fields)."""
        found: str | None = None
        for name, value in ctx.headers.items:
            if name == b"authorization":
                if found is not None:
                    return ""
                if len(value) > 7 and value.startswith(b"Bearer ") and _not_space(value[7]) and _not_space(value[-1]):
                    found = value[7:].decode("latin-1")  # the usual form: no strip, no lowering
                    continue
                value = value.strip()
                if value[:7].lower() != b"bearer " or not (token := value[7:].strip()):
                    return None  # another scheme (or no token): not a bearer credential
                found = token.decode("latin-1")
        return found

    def recognizes(self, ctx: RequestContext) -> bool:
        """A bearer credential that is not an API key (those start with `bst_`)."""
        presented = self._bearer(ctx)
        return presented is not None and not presented.startswith("bst_")

    def _before_lookup(self, ctx: RequestContext) -> Reject | str:
        """Refusals that need no validation, or the presented token."""
        blocked = self._brake.refusal(ctx.client_ip, self._clock)
        if blocked is not None:
            return blocked
        if ctx.query and credentials_in_query(ctx.query):
            return Reject(AUTH_CREDENTIALS_IN_QUERY,
                          "Access tokens are never accepted in the URL. Send the token in the "
                          "'Authorization: Bearer <token>' header.",
                          log_reason="credential in query string")
        presented = self._bearer(ctx)
        if not presented:
            reason = "several Authorization fields" if presented == "" else "no bearer token"
            return Reject(AUTH_CREDENTIALS_MISSING if presented is None else AUTH_CREDENTIALS_INVALID,
                          "Send an access token in the 'Authorization: Bearer <token>' header.",
                          {"WWW-Authenticate": CHALLENGE if presented is None else INVALID_TOKEN_CHALLENGE},
                          log_reason=reason)
        return presented

    # -- the outcome -------------------------------------------------------------------------------
    def _accept(self, ctx: RequestContext, principal: Principal) -> None:
        self._forwarding.accept(ctx, principal)

    def try_sync(self, ctx: RequestContext) -> Reject | Pending | None:
        """A token the cache knows is decided here, without a task."""
        if self._validator is None:
            return PENDING
        first = self._before_lookup(ctx)
        if isinstance(first, Reject):
            return first
        principal = self._validator.validate_cached(first, self._issuers)
        if principal is not None:
            self._accept(ctx, principal)
            return None
        return PENDING

    async def on_request(self, ctx: RequestContext) -> Reject | None:
        first = self._before_lookup(ctx)
        if isinstance(first, Reject):
            return first
        self._forwarding.strip(ctx)
        if self._validator is None:
            return Reject(AUTH_UNAVAILABLE, "Credentials cannot be checked right now.", {"Retry-After": "1"},
                          log_reason="oauth2 built without the resource server")
        if not _B64TOKEN.fullmatch(first):
            result: Principal | TokenFailure = TokenFailure("token is not RFC 6750 b64token syntax")
        elif first.startswith(_BASTION_SECRETS):
            # An API key, refresh token or client secret is never shown to an identity provider.
            result = TokenFailure("a Bastion credential that is not an access token")
        else:
            result = await self._validator.validate(first, self._issuers)
        if isinstance(result, Principal):
            self._accept(ctx, result)
            return None
        if result.unavailable:
            log.error("token could not be checked, refusing request %s: %s", ctx.request_id, result.reason)
            return Reject(AUTH_UNAVAILABLE, "The access token cannot be checked right now; retry shortly.",
                          {"Retry-After": "5"}, log_reason=result.reason)
        await self._brake.count_failure(ctx.client_ip, self._clock())
        return Reject(AUTH_CREDENTIALS_INVALID, "The access token was not accepted.",
                      {"WWW-Authenticate": INVALID_TOKEN_CHALLENGE}, log_reason=result.reason)


def _not_space(byte: int) -> bool:
    return byte not in (32, 9)  # SP, HTAB (a tuple display: compiled to two comparisons)


def _build(config: BaseModel, services: PolicyServices) -> BasePolicy:
    if not isinstance(config, OAuth2Config):
        raise TypeError("oauth2 expects OAuth2Config")
    return OAuth2Policy(config, services)


POLICY_TYPE = PolicyType("oauth2", Stage.AUTHENTICATE, OAuth2Config, _build,
                         "Authenticate requests with OAuth 2 access tokens (JWT or introspected).")
