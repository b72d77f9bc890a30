"""The built-in issuer's public keys as the resource side sees them (``bastion.oauth.contracts.KeySet``).

``SigningKeys`` (which owns the store, the cipher and the private keys) publishes the verification keys here
after every load; looking one up needs no I/O and no clock unless the key is retired. The token cache asks
on every hit whether the key that verified a token is still published, so this lookup is kept native and
small (compiled with the request path, see setup.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Final

from bastion.oauth.contracts import VerificationKey

REFRESH_INTERVAL: Final = 1.0  # at most one reload per second for unknown kids

# kid -> (public key, POSIX time it stops being published; None: no limit, for the next and active keys)
Published = dict[str, tuple[VerificationKey, float | None]]


class LocalKeySet:
    """An unknown kid reloads the keys at most once per second, single-flight."""

    def __init__(self, reload: Callable[[], Awaitable[None]], *, wall_clock: Callable[[], float],
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        """``reload``: reads the keys from the store and publishes them; never raises."""
        self._reload = reload
        self._wall = wall_clock
        self._monotonic = monotonic
        self._published: Published = {}
        self._loaded = False
        self._last_reload: float | None = None
        self._inflight: asyncio.Task[None] | None = None

    def publish(self, keys: Published) -> None:
        self._published = keys
        self._loaded = True

    def get(self, kid: str) -> VerificationKey | None:
        entry = self._published.get(kid)
        if entry is None:
            return None
        until = entry[1]
        if until is not None and self._wall() >= until:
            return None  # retired, and every token it signed has expired
        return entry[0]

    async def refresh(self, kid: str) -> None:
        if self.get(kid) is not None:
            return
        task = self._inflight
        if task is None:
            now = self._monotonic()
            if self._last_reload is not None and now - self._last_reload < REFRESH_INTERVAL:
                return
            self._last_reload = now
            task = self._inflight = asyncio.get_running_loop().create_task(self._reload_once())
        await asyncio.shield(task)

    async def _reload_once(self) -> None:
        try:
            await self._reload()
        finally:
            self._inflight = None

    def usable(self) -> bool:
        return self._loaded
