"""`key-auth`: leveled API keys from `Authorization: Bearer` or `X-API-Key`, never from the query string.

Every way a key can be wrong gets the same 401 (`auth.credentials_invalid`); the reason goes to the access
log. The consumed credential is removed from the upstream request, and the consumer id is forwarded
instead. Addresses that send many invalid keys are blocked for a while (counted in the shared counter
store when there is one, so several nodes count together).
"""

from __future__ import annotations

import logging
from typing import ClassVar, Final

from pydantic import BaseModel

from bastion.errors.codes import (
    AUTH_CREDENTIALS_IN_QUERY,
    AUTH_CREDENTIALS_INVALID,
    AUTH_CREDENTIALS_MISSING,
    AUTH_UNAVAILABLE,
)
from bastion.identity.authenticator import AuthFailure, KeyAuthenticator
from bastion.identity.principal import Principal
from bastion.pipeline.context import RequestContext
from bastion.pipeline.policy import PENDING, BasePolicy, Pending, PolicyServices, PolicyType, Reject, Stage
from bastion.policies.failed_auth import FailedAuthBrake
from bastion.policies.forwarding import ForwardedIdentity
from bastion.policies.key_auth.config import KeyAuthConfig
from bastion.ratelimit.memory import MemoryCounterStore
from bastion.storage.identity_store import StoreUnavailable

log = logging.getLogger("bastion.auth")

_QUERY_CREDENTIAL_NAMES: Final = frozenset({"api_key", "apikey", "api-key", "key", "token", "access_token",
                                            "x-api-key", "auth", "authorization"})
_CHALLENGE = 'Bearer realm="bastion"'


def credentials_in_query(query: str) -> bool:
    """A key-shaped value, or a parameter named like a credential, anywhere in the query string."""
    if not query:
        return False
    if "bst_" in query:
        return True
    for pair in query.split("&"):
        name = pair.partition("=")[0].lower()
        if name in _QUERY_CREDENTIAL_NAMES:
            return True
    return False


class KeyAuthPolicy(BasePolicy):
    name: ClassVar[str] = "key-auth"
    stage: ClassVar[Stage] = Stage.AUTHENTICATE
    Config: ClassVar[type[BaseModel]] = KeyAuthConfig

    def __init__(self, config: KeyAuthConfig, services: PolicyServices) -> None:
        authenticator = services.extras.get("key_authenticator")
        if not isinstance(authenticator, KeyAuthenticator) and not services.extras.get("check_only"):
            raise ValueError("key-auth needs the identity store (it is set up by the gateway runtime)")
        # None only when a configuration is checked offline (`bastion check`): the policy never runs then.
        self._authenticator = authenticator if isinstance(authenticator, KeyAuthenticator) else None
        self._clock = services.clock
        self._header = config.header.lower()
        self._header_bytes = self._header.encode("latin-1")
        # The key never goes upstream, nor do client-sent copies of the identity headers.
        self._forwarding = ForwardedIdentity(("authorization", self._header), (
            (config.forward_consumer_header or "", lambda p: p.consumer_id),
            (config.forward_consumer_name_header or "", lambda p: p.consumer_name),
        ))
        counters = services.extras.get("counters")
        self._brake = FailedAuthBrake(config.failed_auth,
                                      counters if counters is not None else MemoryCounterStore(),
                                      counter_prefix="authfail", credential="credentials")

    def _presented(self, ctx: RequestContext) -> str | None:
        for name, value in ctx.headers.items:
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and token.strip():
                    return token.strip()
            elif name == self._header_bytes and value.strip():
                return value.decode("latin-1").strip()
        return None

    def recognizes(self, ctx: RequestContext) -> bool:
        """An API key: the key header, or a bearer credential in the key format (`bst_...`)."""
        presented = self._presented(ctx)
        if presented is None:
            return False
        return presented.startswith("bst_") or ctx.headers.get(self._header) is not None

    def _before_lookup(self, ctx: RequestContext, now: float) -> Reject | str:
        """Refusals that need no lookup, or the presented credential."""
        blocked = self._brake.refusal(ctx.client_ip, lambda: now)
        if blocked is not None:
            return blocked
        if credentials_in_query(ctx.query):
            return Reject(AUTH_CREDENTIALS_IN_QUERY,
                          "Credentials are never accepted in the URL. Send the API key in the "
                          "'Authorization: Bearer <key>' or 'X-API-Key' header, and revoke the exposed key.",
                          log_reason="credential in query string")
        presented = self._presented(ctx)
        if presented is None:
            return Reject(AUTH_CREDENTIALS_MISSING,
                          "Send an API key in the 'Authorization: Bearer <key>' or 'X-API-Key' header.",
                          {"WWW-Authenticate": _CHALLENGE}, log_reason="no credential")
        return presented

    def _accept(self, ctx: RequestContext, principal: Principal) -> None:
        self._forwarding.accept(ctx, principal)

    def try_sync(self, ctx: RequestContext) -> Reject | Pending | None:
        """A key the cache knows is decided here, without a task; failures are counted asynchronously."""
        if self._authenticator is None:
            return PENDING
        first = self._before_lookup(ctx, self._clock())
        if isinstance(first, Reject):
            return first
        result = self._authenticator.authenticate_cached(first, ctx.client_ip)
        if isinstance(result, Principal):
            self._accept(ctx, result)
            return None
        return PENDING  # a miss, or a failure (its counting may touch a shared store): the async path

    async def on_request(self, ctx: RequestContext) -> Reject | None:
        now = self._clock()
        first = self._before_lookup(ctx, now)
        if isinstance(first, Reject):
            return first
        if self._authenticator is None:
            return Reject(AUTH_UNAVAILABLE, "Credentials cannot be checked right now.", {"Retry-After": "1"},
                          log_reason="key-auth built without an identity store")
        try:
            result = await self._authenticator.authenticate(first, ctx.client_ip)
        except StoreUnavailable:
            log.error("identity store unavailable: refusing request %s", ctx.request_id)
            return Reject(AUTH_UNAVAILABLE, "Credentials cannot be checked right now; retry shortly.",
                          {"Retry-After": "1"}, log_reason="identity store unavailable")
        if isinstance(result, AuthFailure):
            self._forwarding.strip(ctx)
            await self._brake.count_failure(ctx.client_ip, now)
            reason = result.reason if result.key_id is None else f"{result.reason} (key {result.key_id})"
            return Reject(AUTH_CREDENTIALS_INVALID, "The credential was not accepted.",
                          {"WWW-Authenticate": _CHALLENGE + ', error="invalid_token"'}, log_reason=reason)
        self._accept(ctx, result)
        return None


def _build(config: BaseModel, services: PolicyServices) -> BasePolicy:
    if not isinstance(config, KeyAuthConfig):
        raise TypeError("key-auth expects KeyAuthConfig")
    return KeyAuthPolicy(config, services)


POLICY_TYPE = PolicyType("key-auth", Stage.AUTHENTICATE, KeyAuthConfig, _build,
                         "Authenticate requests with leveled API keys.")
