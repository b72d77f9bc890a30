"""Rate-limiting algorithms as pure functions of (state, now, rule, cost): no clock, no I/O.

Two algorithms:

- **sliding window counter** (as Cloudflare's and the `limits` library's SlidingWindowCounter): two fixed
  windows; the previous window's count is weighted by how much of it still overlaps the sliding window.
  O(1) state per key, at most `limit` per fixed window, smooth at window edges.
- **GCRA** (generic cell rate algorithm, equivalent to a token bucket of capacity `burst` refilled at
  `limit` per `period`): one timestamp per key, the "theoretical arrival time" (TAT).

And one for quotas: a **fixed window** whose start and end the caller gives (`FixedWindow`), because calendar
periods (a UTC day, a month of 28 to 31 days) cannot be derived from the clock by division. It is not an
`Algorithm` member: a rate limit has no calendar to give it.

The Redis store runs the same arithmetic in Lua (bastion.ratelimit.scripts); the contract tests hold the
two implementations to the same admission counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final, TypeAlias, final

# Float arithmetic must never refuse a request that exact arithmetic admits (e.g. 0.1 * 3 > 0.3).
_EPSILON: Final = 1e-9


class Algorithm(StrEnum):
    SLIDING_WINDOW = "sliding-window"
    GCRA = "gcra"


@final
class Decision:
    """The answer to one hit, made on every limited request: a plain class, so that the compiled build
    makes it a native object built and read by direct access (a NamedTuple stays a Python tuple there)."""

    __slots__ = ("allowed", "limit", "remaining", "reset_after", "retry_after")

    def __init__(self, allowed: bool, limit: int, remaining: int, reset_after: float, retry_after: float) -> None:
        self.allowed = allowed
        self.limit = limit  # the most the key can spend at once: `limit` (sliding window) or `burst` (GCRA)
        self.remaining = remaining  # what the key can still spend now
        self.reset_after = reset_after  # seconds until the window ends (sliding window) or the bucket is full
        self.retry_after = retry_after  # seconds until this request would be admitted; 0 when allowed

    def __repr__(self) -> str:
        return (f"Decision(allowed={self.allowed}, limit={self.limit}, remaining={self.remaining}, "
                f"reset_after={self.reset_after}, retry_after={self.retry_after})")


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """One limit: `limit` units per `period` seconds; `burst` is the GCRA bucket capacity."""

    algorithm: Algorithm
    limit: int
    period: float
    burst: int = 0  # 0: same as `limit`; ignored by the sliding window
    capacity: int = field(init=False)
    interval: float = field(init=False)  # GCRA: seconds per unit
    tolerance: float = field(init=False)  # GCRA: capacity * interval

    def __post_init__(self) -> None:
        if self.limit < 1 or self.period <= 0 or self.burst < 0:
            raise ValueError(f"invalid rate-limit rule: {self.limit} per {self.period}s, burst {self.burst}")
        capacity = self.limit
        if self.algorithm is Algorithm.GCRA and self.burst:
            capacity = self.burst
        interval = self.period / self.limit
        object.__setattr__(self, "capacity", capacity)
        object.__setattr__(self, "interval", interval)
        object.__setattr__(self, "tolerance", capacity * interval)

    def divided(self, nodes: int) -> RuleSpec:
        """This rule's share on one of `nodes` nodes that each count alone (never below 1)."""
        if nodes <= 1:
            return self
        burst = max(1, self.burst // nodes) if self.burst else 0
        return RuleSpec(self.algorithm, max(1, self.limit // nodes), self.period, burst)


def gcra(tat: float | None, now: float, rule: RuleSpec, cost: int) -> tuple[float | None, Decision]:
    """One GCRA hit. `tat` is the key's stored TAT (None: never seen). Returns the TAT to store and the decision;
    a refused hit leaves the TAT as it was."""
    interval = rule.interval
    base = now if tat is None or tat < now else tat
    new_tat = base + cost * interval
    allow_at = new_tat - rule.tolerance
    if allow_at <= now + _EPSILON * interval:
        remaining = int((now - allow_at) / interval + _EPSILON)
        return new_tat, Decision(True, rule.capacity, remaining, new_tat - now, 0.0)
    remaining = int((now - (base - rule.tolerance)) / interval + _EPSILON)
    return tat, Decision(False, rule.capacity, remaining if remaining > 0 else 0, base - now, allow_at - now)


# A sliding-window key: (current window index, previous window's count, current window's count, when the
# state can be dropped). A tuple of numbers, replaced on each admitted hit: the garbage collector stops
# tracking such tuples, where 100k mutable objects would lengthen every full collection.
WindowState: TypeAlias = tuple[float, int, int, float]


def sliding_window(state: WindowState | None, now: float, rule: RuleSpec,
                   cost: int) -> tuple[WindowState | None, Decision]:
    """One sliding-window hit. Returns the state to store and the decision; a refused hit leaves the state as
    it was."""
    period = rule.period
    index = now // period
    if state is None:
        previous = current = 0
    elif state[0] == index:
        previous, current = state[1], state[2]
    elif state[0] == index - 1:
        previous, current = state[2], 0
    else:
        previous = current = 0
    elapsed = now - index * period
    limit = rule.limit
    estimate: float = previous * (1.0 - elapsed / period) + current if previous else float(current)  # native float
    if estimate + cost <= limit + _EPSILON:
        return ((index, previous, current + cost, (index + 2) * period),
                Decision(True, limit, int(limit - estimate - cost + _EPSILON), period - elapsed, 0.0))
    remaining = int(limit - estimate + _EPSILON)
    return state, Decision(False, limit, remaining if remaining > 0 else 0, period - elapsed,
                           window_retry_after(previous, current, cost, limit, elapsed, period))


def window_retry_after(previous: int, current: int, cost: int, limit: int, elapsed: float, period: float) -> float:
    """Seconds until `previous * weight + current + cost <= limit`, the weight falling linearly to 0."""
    room = limit - cost  # the estimate must fall to this
    if room < 0:
        return period  # costs more than the whole limit: never admitted; configuration forbids it
    if current <= room:
        # Within this window: previous * (1 - x / period) + current <= room.
        if previous == 0:
            return 0.0
        at = period * (1.0 - (room - current) / previous)
        return max(0.0, at - elapsed)
    # In the next window, this window's count becomes the weighted one: current * (1 - y / period) <= room.
    return (period - elapsed) + period * (1.0 - room / current)


@dataclass(frozen=True, slots=True)
class FixedWindow:
    """`limit` units in the window [start, end), in seconds of the caller's wall clock (UNIX time: the Redis
    store measures what is left of the window on the server's clock)."""

    limit: int
    start: float
    end: float

    def __post_init__(self) -> None:
        if self.limit < 1 or self.end <= self.start:
            raise ValueError(f"invalid fixed window: {self.limit} in [{self.start}, {self.end})")

    def divided(self, nodes: int) -> FixedWindow:
        """This window's share on one of `nodes` nodes that each count alone (never below 1)."""
        if nodes <= 1:
            return self
        return FixedWindow(max(1, self.limit // nodes), self.start, self.end)


# A fixed-window key: (window start, units spent in it, window end: when the state can be dropped).
FixedState: TypeAlias = tuple[float, int, float]


def fixed_window(state: FixedState | None, now: float, window: FixedWindow,
                 cost: int) -> tuple[FixedState | None, Decision]:
    """One fixed-window hit. A state of another window counts as empty (the window rolled over). Returns the
    state to store and the decision; a refused hit leaves the state as it was."""
    spent = state[1] if state is not None and state[0] == window.start else 0
    limit = window.limit
    reset = window.end - now
    if reset < 0:
        reset = 0.0
    if spent + cost <= limit:
        return ((window.start, spent + cost, window.end),
                Decision(True, limit, limit - spent - cost, reset, 0.0))
    # Nothing is admitted before the window ends: the next window starts empty.
    return state, Decision(False, limit, limit - spent if spent < limit else 0, reset, reset)


def ceil_seconds(value: float) -> int:
    """Whole seconds for headers (delay-seconds): never rounds a wait down to zero."""
    return max(0, math.ceil(value - _EPSILON))
