"""The built-in authorization server, assembled: what the runtime builds, mounts and reconfigures."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import ClassVar

from bastion.config.model import AuthorizationServerConfig
from bastion.oauth.revocation import RevocationList
from bastion.oauth.server.authorize import AuthorizationEndpoint
from bastion.oauth.server.endpoints import METADATA_PATH, OAuthEndpoints
from bastion.oauth.server.grants import TokenGrants
from bastion.oauth.server.keys import SigningKeys
from bastion.oauth.server.limits import FailureBrake
from bastion.oauth.server.steps import ApproveOffered, ConsentStep, SignInStep
from bastion.oauth.server.store import OAuthStore
from bastion.oauth.server.tokens import AccessTokens
from bastion.ratelimit.store import CounterStore


class AuthorizationServer:
    """``app`` is the ASGI application to serve at ``MOUNTS`` (a prefix ending in ``/``, or an exact path).

    ``update_config`` applies a reload: token and code lifetimes and the brake's thresholds take effect at the
    next request. The issuer, audience, signing algorithm and sign-in step are fixed for the process (changing
    them needs a restart). ``consent`` defaults to approving what the client may be granted; ``docs_base``
    gives the problem+json ``type`` base of the 404/405 answers (the gateway's ``server.docs_base_url``)."""

    MOUNTS: ClassVar[tuple[str, ...]] = ("/oauth2/", METADATA_PATH)

    def __init__(self, config: AuthorizationServerConfig, *, store: OAuthStore, keys: SigningKeys,
                 revocations: RevocationList, counters: CounterStore, sign_in: SignInStep | None,
                 wall_clock: Callable[[], float] = time.time, consent: ConsentStep | None = None,
                 docs_base: Callable[[], str] | None = None, monotonic: Callable[[], float] = time.monotonic) -> None:
        if not config.issuer:
            raise ValueError("the authorization server needs oauth.server.issuer")
        self._config = config
        self._brake = FailureBrake(config.token_endpoint_limits, counters, clock=monotonic)
        tokens = AccessTokens(store, keys, self.settings, wall_clock=wall_clock)
        grants = TokenGrants(store, tokens, revocations, self.settings, wall_clock=wall_clock)
        authorize = AuthorizationEndpoint(store, self.settings, sign_in=sign_in, consent=consent or ApproveOffered(),
                                          wall_clock=wall_clock)
        self.app = OAuthEndpoints(settings=self.settings, store=store, keys=keys, revocations=revocations,
                                  tokens=tokens, grants=grants, authorize=authorize, brake=self._brake,
                                  docs_base=docs_base)

    def settings(self) -> AuthorizationServerConfig:
        return self._config

    def update_config(self, config: AuthorizationServerConfig) -> None:
        if not config.issuer:
            raise ValueError("the authorization server needs oauth.server.issuer")
        self._config = config
        self._brake.update(config.token_endpoint_limits)
