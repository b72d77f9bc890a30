"""A circuit breaker: stop calling a failing dependency for a cool-down, then let one probe through."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger("bastion.ratelimit")


class CircuitBreaker:
    """closed -> (threshold consecutive failures) -> open -> (cooldown) -> half-open: one probe call.

    The probe's success closes the breaker, its failure opens it for another cool-down. Everything else is
    refused while open or while the probe is in flight, so a dead dependency costs callers nothing.
    Single-threaded (one event loop): no locks.
    """

    __slots__ = ("_clock", "_cooldown", "_failures", "_name", "_open_until", "_probing", "_threshold")

    def __init__(self, name: str, *, threshold: int = 5, cooldown: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if threshold < 1 or cooldown <= 0:
            raise ValueError("circuit breaker needs threshold >= 1 and cooldown > 0")
        self._name = name
        self._threshold = threshold
        self._cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._open_until = 0.0
        self._probing = False

    @property
    def state(self) -> str:
        if self._failures < self._threshold:
            return "closed"
        if self._probing or self._clock() >= self._open_until:
            return "half-open"
        return "open"

    def allow(self) -> bool:
        """May a call go through now? True at most once per cool-down while the breaker is open."""
        if self._failures < self._threshold:
            return True
        if self._probing or self._clock() < self._open_until:
            return False
        self._probing = True
        return True

    def success(self) -> None:
        if self._failures >= self._threshold:
            log.warning("%s: reachable again, circuit closed", self._name)
        self._failures = 0
        self._probing = False

    def failure(self) -> None:
        self._failures += 1
        if self._failures < self._threshold:
            return
        if self._failures == self._threshold:
            log.warning("%s: %d consecutive failures, circuit open: failing fast for %.1f s",
                        self._name, self._threshold, self._cooldown)
        self._open_until = self._clock() + self._cooldown
        self._probing = False

    def abandon(self) -> None:
        """A call ended without a verdict (cancelled): free the probe slot, count nothing."""
        self._probing = False
