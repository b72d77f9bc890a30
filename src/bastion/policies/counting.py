"""What the counting policies (`rate-limit`, `business-flow`, `quota`) share: the counter store they are given, the
synchronous fast path over the memory store, and log lines an attack cannot multiply."""

from __future__ import annotations

import math
from collections.abc import Coroutine
from typing import Any

from bastion.pipeline.policy import PolicyServices, Reject
from bastion.ratelimit.store import CounterStore, MemoryCounterStore

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
