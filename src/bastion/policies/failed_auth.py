"""The failed-authentication brake shared by the authentication policies and the admin API: client addresses
that present many invalid credentials are refused for a while, so guessing and spraying credentials is slowed.

Failures are counted in the shared counter store when there is one (several nodes count together); the
block itself is kept per node, checked with one dict lookup before any credential work.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Final

from bastion.config.model import FailedAuthConfig
from bastion.errors.codes import AUTH_TOO_MANY_FAILURES
from bastion.pipeline.policy import Reject
from bastion.ratelimit.algorithms import Algorithm, RuleSpec
from bastion.ratelimit.store import CounterStore, CounterStoreError

log = logging.getLogger("bastion.auth")

_MAX_BLOCKED: Final = 100_000


class FailedAuthBrake:
    def __init__(self, config: FailedAuthConfig, counters: CounterStore, *, counter_prefix: str,
                 credential: str) -> None:
        """``counter_prefix`` names the counters (``authfail``, ``oauthfail``, ``adminfail``); ``credential``
        says what was invalid in the log (``credentials``, ``tokens``, ``admin credentials``)."""
        self._counters = counters
        self._rule = RuleSpec(Algorithm.SLIDING_WINDOW, config.max_failures, config.window)
        self._block_seconds = config.block
        self._prefix = counter_prefix + ":"
        self._credential = credential
        self._blocked: dict[str, float] = {}

    def refusal(self, client_ip: str, clock: Callable[[], float]) -> Reject | None:
        """The 429 for a blocked address, else None (the clock is read only for a blocked address)."""
        if not self._blocked:
            return None
        until = self._blocked.get(client_ip)
        if until is None:
            return None
        now = clock()
        if now < until:
            return Reject(AUTH_TOO_MANY_FAILURES, "Too many invalid credentials from your address; try again later.",
                          {"Retry-After": str(math.ceil(until - now))},
                          log_reason=f"client address blocked after repeated invalid {self._credential}")
        del self._blocked[client_ip]
        return None

    async def count_failure(self, client_ip: str, now: float) -> None:
        try:
            decision = await self._counters.hit(self._prefix + client_ip, self._rule, 1, now)
        except CounterStoreError:
            return  # a brake, not a gate: the credential was refused anyway
        if not decision.allowed:
            if len(self._blocked) >= _MAX_BLOCKED:
                self._blocked.clear()
            self._blocked[client_ip] = now + self._block_seconds
            log.warning("blocking %s for %.0f s after repeated invalid %s", client_ip, self._block_seconds,
                        self._credential)
