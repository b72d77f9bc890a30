"""`authorize`: least privilege, checked on every non-public route (the compiler attaches it).

A request's effective rights are its credential's scopes intersected with its consumer's role permissions
(computed by the authentication policy). The route's requirements come from the configuration and from
the OpenAPI operation's `security` scopes. Read-level keys may only read; administrative routes need an
admin-level key (an OAuth access token is never one). An OAuth token lacking a scope also gets the RFC 6750
`insufficient_scope` challenge, naming every scope the route needs.
"""

from __future__ import annotations

from typing import ClassVar, Final

from pydantic import BaseModel

from bastion.errors.codes import AUTH_CREDENTIALS_MISSING, AUTHZ_LEVEL_INSUFFICIENT, AUTHZ_PERMISSION_DENIED
from bastion.identity.principal import Principal
from bastion.pipeline.context import RequestContext
from bastion.pipeline.policy import BasePolicy, PolicyServices, PolicyType, Reject, Stage
from bastion.policies.authorize.config import AuthorizeConfig

OAUTH_KINDS: Final = frozenset({"jwt", "opaque-token"})


class AuthorizePolicy(BasePolicy):
    name: ClassVar[str] = "authorize"
    stage: ClassVar[Stage] = Stage.AUTHORIZE
    Config: ClassVar[type[BaseModel]] = AuthorizeConfig

    def __init__(self, config: AuthorizeConfig) -> None:
        self._required = frozenset(config.permissions)
        self._admin = config.admin

    async def on_request(self, ctx: RequestContext) -> Reject | None:
        return self.try_sync(ctx)

    def try_sync(self, ctx: RequestContext) -> Reject | None:
        principal = ctx.identity
        if not isinstance(principal, Principal):
            return Reject(AUTH_CREDENTIALS_MISSING, "This route needs an authenticated caller.",
                          {"WWW-Authenticate": 'Bearer realm="bastion"'}, log_reason="no identity established")
        if not principal.may_use_method(ctx.method):
            return Reject(AUTHZ_LEVEL_INSUFFICIENT, "This key is read-only; use a write key for this request.",
                          log_reason=f"read-level key {principal.credential_id} used for {ctx.method}")
        oauth = principal.credential_kind in OAUTH_KINDS
        if self._admin and (oauth or principal.level not in (None, "admin")):
            held = "an OAuth token" if oauth else f"{principal.level}-level key {principal.credential_id}"
            return Reject(AUTHZ_LEVEL_INSUFFICIENT, "This route needs an admin-level key.",
                          log_reason=f"{held} on admin route")
        if self._required:
            missing = principal.missing(self._required)
            if missing:
                names = ", ".join(sorted(missing))
                # RFC 6750 section 3.1: a token without the scope learns which scope the route needs.
                headers = {"WWW-Authenticate": _insufficient_scope(self._required)} if oauth else {}
                return Reject(AUTHZ_PERMISSION_DENIED, f"Missing permission: {names}.", headers,
                              log_reason=f"consumer {principal.consumer_name} lacks {names}")
        return None


def _insufficient_scope(required: frozenset[str]) -> str:
    scope = " ".join(sorted(s for s in required if '"' not in s and "\\" not in s))
    return f'Bearer realm="bastion", error="insufficient_scope", scope="{scope}"'


def _build(config: BaseModel, services: PolicyServices) -> BasePolicy:
    if not isinstance(config, AuthorizeConfig):
        raise TypeError("authorize expects AuthorizeConfig")
    return AuthorizePolicy(config)


POLICY_TYPE = PolicyType("authorize", Stage.AUTHORIZE, AuthorizeConfig, _build,
                         "Check the route's required permissions and key level (attached automatically).")
