"""What the counting policies (`rate-limit`, `business-flow`, `quota`) share: the counter store they are given, the
synchronous fast path over the memory store, what they do when that store fails, and log lines an attack cannot
multiply."""

from __future__ import annotations

import logging
import math
from collections.abc import Coroutine
from typing import Any

from bastion.pipeline.policy import PolicyServices, Reject
from bastion.ratelimit.failover import FailureMode, LocalFallback
from bastion.ratelimit.memory import MemoryCounterStore
from bastion.ratelimit.store import CounterStore, CounterStoreError

log = logging.getLogger("bastion.ratelimit")

_LOG_INTERVAL = 1.0  # seconds between two log lines of one kind


def counter_store(services: PolicyServices) -> tuple[CounterStore, MemoryCounterStore | None]:
    """The shared store (`services.extras["counters"]`, kept across reloads) or one of this instance; and the
    same store again when it is the memory store, which answers synchronously (no coroutine per hit)."""
    store = services.extras.get("counters")
    if store is None:
        store = MemoryCounterStore()
    return store, store if isinstance(store, MemoryCounterStore) else None


def run_sync(coroutine: Coroutine[Any, Any, Reject | None]) -> Reject | None:
    """Run an `on_request` that never waits (memory store) to completion, without a task."""
    try:
        coroutine.send(None)
    except StopIteration as stop:
        result: Reject | None = stop.value
        return result
    coroutine.close()
    raise RuntimeError("an in-memory counting policy unexpectedly waited")


class LogThrottle:
    """At most one log line per interval; counts what it held back."""

    __slots__ = ("_next", "suppressed")

    def __init__(self) -> None:
        self._next = -math.inf
        self.suppressed = 0

    def ready(self, now: float) -> bool:
        if now < self._next:
            self.suppressed += 1
            return False
        self._next = now + _LOG_INTERVAL
        return True


class StoreFailures:
    """A failed shared counter store, as each counting policy handles it: counted, logged at most once a
    second, and answered from this node's share of the limit when `on_store_failure` is `local` (otherwise
    the policy refuses (`closed`) or admits unchecked (`open`))."""

    __slots__ = ("_log", "_what", "count", "fallback", "mode")

    def __init__(self, mode: FailureMode, nodes: int, what: str) -> None:
        """``what`` names the policy in the log line, e.g. ``quota`` or ``business flow 'checkout'``."""
        self.mode = mode
        self.fallback = LocalFallback(nodes) if mode is FailureMode.LOCAL else None
        self.count = 0  # hits the store could not answer
        self._what = what
        self._log = LogThrottle()

    def record(self, exc: CounterStoreError, now: float) -> LocalFallback | None:
        """Count and log one failure; the local fallback to decide with, if there is one."""
        self.count += 1
        throttle = self._log
        if throttle.ready(now):
            log.warning("%s counter store failed, failing %s (%d similar not logged): %s", self._what,
                        self.mode.value, throttle.suppressed, exc)
            throttle.suppressed = 0
        return self.fallback
