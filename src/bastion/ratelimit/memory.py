"""The memory counter store: the limits of one process, in dicts (see store.py for why it is hand-written)."""

from __future__ import annotations

import itertools
import logging
from typing import Final

from bastion.ratelimit.algorithms import (
    Algorithm,
    Decision,
    FixedState,
    FixedWindow,
    RuleSpec,
    WindowState,
    fixed_window,
    gcra,
    sliding_window,
)

log = logging.getLogger("bastion.ratelimit")

_GCRA: Final = Algorithm.GCRA
_SWEEP_STEP: Final = 64  # keys checked per new key while a sweep is under way: ~4 us


class MemoryCounterStore:
    """Limits of one process in two dicts (GCRA TATs; sliding-window states).

    Bounded: when the dicts reach a threshold, idle keys are swept out a few at a time (`_SWEEP_STEP` per new
    key, so no request pays for a whole pass: a full pass over 200k keys costs ~30-60 ms); the threshold then
    becomes twice the surviving size, so sweeping is O(1) amortised per new key. Past `max_keys` live keys
    the oldest are evicted (each evicted key's limit restarts: logged) rather than letting memory grow.
    `hit` never suspends; `hit_now` is the same without the coroutine, for callers that know the type.
    Fixed windows (quotas, `hit_fixed`) live in a third dict, swept on their own: their callers' clock is the
    wall clock, which the other tables' (monotonic) times cannot be compared with.
    """

    def __init__(self, *, max_keys: int = 200_000, sweep_threshold: int = 10_000) -> None:
        if max_keys < 1 or sweep_threshold < 1:
            raise ValueError("max_keys and sweep_threshold must be >= 1")
        self._tats: dict[str, float] = {}
        self._windows: dict[str, WindowState] = {}
        self._max_keys = max_keys
        self._floor = min(sweep_threshold, max_keys)
        self._sweep_at = self._floor
        self._tat_backlog: list[str] = []  # keys still to check in the sweep under way
        self._window_backlog: list[str] = []
        self._sweeping = False
        self.evicted = 0  # live keys dropped because of max_keys (each may over-admit once)
        self._fixed: dict[str, FixedState] = {}
        self._fixed_sweep_at = self._floor

    def __len__(self) -> int:
        return len(self._tats) + len(self._windows) + len(self._fixed)

    async def hit(self, key: str, rule: RuleSpec, cost: int, now: float) -> Decision:
        return self.hit_now(key, rule, cost, now)

    def hit_now(self, key: str, rule: RuleSpec, cost: int, now: float) -> Decision:
        if rule.algorithm is _GCRA:
            tats = self._tats
            tat = tats.get(key)
            new_tat, decision = gcra(tat, now, rule, cost)
            if decision.allowed and new_tat is not None:
                if tat is None and (len(tats) + len(self._windows) >= self._sweep_at or self._sweeping):
                    self._maintain(now)
                tats[key] = new_tat
            return decision
        windows = self._windows
        state = windows.get(key)
        new_state, decision = sliding_window(state, now, rule, cost)
        if new_state is not state and new_state is not None:
            if state is None and (len(self._tats) + len(windows) >= self._sweep_at or self._sweeping):
                self._maintain(now)
            windows[key] = new_state
        return decision

    async def hit_fixed(self, key: str, window: FixedWindow, cost: int, now: float) -> Decision:
        return self.hit_fixed_now(key, window, cost, now)

    def hit_fixed_now(self, key: str, window: FixedWindow, cost: int, now: float) -> Decision:
        fixed = self._fixed
        state = fixed.get(key)
        new_state, decision = fixed_window(state, now, window, cost)
        if new_state is not state and new_state is not None:
            if state is None and len(fixed) >= self._fixed_sweep_at:
                self._sweep_fixed(now)
            fixed[key] = new_state
        return decision

    def _sweep_fixed(self, now: float) -> None:
        """One whole pass, at a threshold that doubles: O(1) amortised per new key. Its keys are consumers or
        credentials, never client addresses or request data, so only valid credentials can add entries."""
        fixed = self._fixed
        for key in [k for k, state in fixed.items() if state[2] <= now]:
            del fixed[key]
        if len(fixed) >= self._max_keys:
            excess = len(fixed) - (self._max_keys * 9) // 10
            for key in list(itertools.islice(fixed, excess)):
                del fixed[key]
            self.evicted += excess
            log.warning("rate-limit memory store full (%d quota keys): evicted the %d oldest; raise max_keys",
                        len(fixed) + excess, excess)
        self._fixed_sweep_at = min(max(self._floor, 2 * len(fixed)), self._max_keys)

    async def close(self) -> None:
        self._tats.clear()
        self._windows.clear()
        self._fixed.clear()
        self._tat_backlog.clear()
        self._window_backlog.clear()
        self._sweeping = False

    def _maintain(self, now: float) -> None:
        """Runs before a new key is stored: start a sweep, or advance the one under way."""
        if not self._sweeping:
            self._sweeping = True
            self._tat_backlog = list(self._tats)
            self._window_backlog = list(self._windows)
            self._sweep_at = self._max_keys + self._max_keys // 16  # only the hard cap until this sweep ends
            self._sweep_some(now, _SWEEP_STEP)
        elif len(self._tats) + len(self._windows) >= self._sweep_at:
            self._sweep_some(now, len(self._tat_backlog) + len(self._window_backlog))  # hard cap: finish now
        else:
            self._sweep_some(now, _SWEEP_STEP)

    def _sweep_some(self, now: float, budget: int) -> None:
        tats, backlog = self._tats, self._tat_backlog
        while backlog and budget > 0:
            key = backlog.pop()
            budget -= 1
            tat = tats.get(key)
            if tat is not None and tat <= now:
                del tats[key]
        windows, window_backlog = self._windows, self._window_backlog
        while window_backlog and budget > 0:
            key = window_backlog.pop()
            budget -= 1
            state = windows.get(key)
            if state is not None and state[3] <= now:
                del windows[key]
        if not backlog and not window_backlog:
            self._sweeping = False
            self._sweep_done()

    def _sweep_done(self) -> None:
        tats, windows = self._tats, self._windows
        size = len(tats) + len(windows)
        if size >= self._max_keys:
            # Insertion order approximates age: evict down to 90% so this does not run on every new key.
            excess = size - (self._max_keys * 9) // 10
            for table in (tats, windows):
                share = -(-excess * len(table) // size)
                for key in list(itertools.islice(table, share)):
                    del table[key]
                self.evicted += share
            log.warning("rate-limit memory store full (%d keys): evicted the %d oldest; raise max_keys",
                        size, excess)
            size = len(tats) + len(windows)
        self._sweep_at = min(max(self._floor, 2 * size), self._max_keys)
