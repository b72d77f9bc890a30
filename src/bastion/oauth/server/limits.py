"""Brute-force brake on the token, revocation and introspection endpoints.

Failed client authentications, unknown or misused authorization codes and refresh tokens are counted per
client address in a sliding window (``oauth.server.token_endpoint_limits``), in the shared counter store when
there is one so that several nodes count together. Past ``max_failures`` the address is blocked on this node
for ``block`` seconds: every request from it is answered at once, before any secret is checked.

A blocked address gets 429 with ``Retry-After`` and ``{"error": "slow_down"}``: ``slow_down`` is the error
code registered for token-endpoint responses that ask the client to slow down (RFC 8628 section 3.5, IANA
OAuth Extensions Error registry), whereas ``temporarily_unavailable`` is registered for the authorization
endpoint only and would suggest the server itself is in trouble.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from bastion.config.model import TokenEndpointLimits
from bastion.oauth.server.errors import SLOW_DOWN, OAuthError
from bastion.ratelimit.algorithms import Algorithm, RuleSpec
from bastion.ratelimit.store import CounterStore, CounterStoreError

log = logging.getLogger("bastion.oauth")

_MAX_BLOCKED = 100_000
_KEY_PREFIX = "oauthfail:"


class FailureBrake:
    """Counts failures per client address; answers ``slow_down`` while an address is blocked.

    Time is monotonic: the memory counter store compares its sliding-window states with the monotonic
    clock of the other limiters that share it (Redis uses its own clock)."""

    def __init__(self, limits: TokenEndpointLimits, counters: CounterStore, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._counters = counters
        self._clock = clock
        self._blocked: dict[str, float] = {}
        self._rule = RuleSpec(Algorithm.SLIDING_WINDOW, limits.max_failures, limits.window)
        self._block_seconds = limits.block

    def update(self, limits: TokenEndpointLimits) -> None:
        """A reload: new thresholds apply to the next failure; blocks already imposed run out as they were."""
        self._rule = RuleSpec(Algorithm.SLIDING_WINDOW, limits.max_failures, limits.window)
        self._block_seconds = limits.block

    def check(self, client_ip: str) -> None:
        """Raise ``slow_down`` (429) while the address is blocked."""
        if not self._blocked:
            return
        until = self._blocked.get(client_ip)
        if until is None:
            return
        now = self._clock()
        if now < until:
            raise OAuthError(SLOW_DOWN, "Too many failed requests from your address; retry later.", status=429,
                             headers={"retry-after": str(max(1, math.ceil(until - now)))})
        del self._blocked[client_ip]

    async def failure(self, client_ip: str) -> None:
        """Count one failure; block the address once it is over the limit."""
        now = self._clock()
        try:
            decision = await self._counters.hit(_KEY_PREFIX + client_ip, self._rule, 1, now)
        except CounterStoreError:
            return  # a brake, not a gate: the request failed anyway
        if not decision.allowed:
            if len(self._blocked) >= _MAX_BLOCKED:
                self._blocked.clear()
            self._blocked[client_ip] = now + self._block_seconds
            log.warning("blocking %s at the OAuth endpoints for %.0f s after repeated failures", client_ip,
                        self._block_seconds)
