"""One periodic sweep per event loop for request-scoped deadlines (upstream read and total timeouts).

Arming and cancelling a loop timer for every request cost more CPU than the rest of a pooled proxy hop
(measured); a deadline here is a set insertion and a float. Precision is the sweep interval (50 ms),
plenty for timeouts counted in seconds.
"""

from __future__ import annotations

import asyncio
from typing import Final, Protocol

from bastion.server.per_loop import PerLoop

SWEEP_INTERVAL: Final = 0.05


class Deadlined(Protocol):
    def check_deadline(self, now: float) -> bool:
        """Fire if due; True when the item is done with the sweeper."""


class DeadlineSweeper:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: set[Deadlined] = set()
        self._scheduled = False

    def add(self, item: Deadlined) -> None:
        self._items.add(item)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_later(SWEEP_INTERVAL, self._sweep)

    def discard(self, item: Deadlined) -> None:
        self._items.discard(item)

    def _sweep(self) -> None:
        now = self._loop.time()
        for item in list(self._items):
            if item.check_deadline(now):
                self._items.discard(item)
        if self._items:
            self._loop.call_later(SWEEP_INTERVAL, self._sweep)
        else:
            self._scheduled = False


sweeper_for: PerLoop[DeadlineSweeper] = PerLoop(DeadlineSweeper)
