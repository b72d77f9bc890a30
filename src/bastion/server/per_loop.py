"""One instance of a helper per event loop (the deadline sweeper, the write batch)."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerLoop(Generic[T]):
    """``PerLoop(factory)(loop)``: the loop's instance, made by ``factory(loop)`` on first use. Weakly keyed,
    so a closed loop (tests run many) takes its instance with it."""

    def __init__(self, factory: Callable[[asyncio.AbstractEventLoop], T]) -> None:
        self._factory = factory
        self._instances: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = weakref.WeakKeyDictionary()

    def __call__(self, loop: asyncio.AbstractEventLoop) -> T:
        instance = self._instances.get(loop)
        if instance is None:
            instance = self._instances[loop] = self._factory(loop)
        return instance
