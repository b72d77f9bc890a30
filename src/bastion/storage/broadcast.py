"""A Redis pub/sub channel between gateway nodes, for changes that must reach every node at once (key
revocations, OAuth token revocations, signing-key rotations).

Fire-and-forget by design: a publish that fails is logged, never raised, and a listener that loses its
connection resubscribes forever. The store stays the source of truth; each user also polls it, and catches
up after every (re)subscription, since messages sent meanwhile are lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("bastion.broadcast")

_PUBLISH_TIMEOUT = 0.5
_RETRY_DELAY = 1.0


class Broadcast:
    def __init__(self, redis_url: str, channel: str, *, what: str) -> None:
        """``what`` names the changes in log lines, e.g. "identity change"."""
        self._url = redis_url
        self.channel = channel
        self._what = what
        self._redis: Any = None

    def __repr__(self) -> str:  # the URL may carry credentials
        return f"Broadcast(channel={self.channel!r})"

    async def _client(self) -> Any:
        if self._redis is None:
            import redis.asyncio as redis_asyncio  # imported when configured: it is slow to import

            self._redis = redis_asyncio.Redis.from_url(self._url, socket_timeout=None, socket_connect_timeout=1.0,
                                                       retry=None)
        return self._redis

    async def publish(self, payload: bytes | str) -> None:
        try:
            client = await self._client()
            async with asyncio.timeout(_PUBLISH_TIMEOUT):
                await client.publish(self.channel, payload)
        except Exception as exc:  # the other nodes' poll is the safety net
            log.warning("could not broadcast an %s (%s)", self._what, type(exc).__name__)

    async def listen(self, on_message: Callable[[object], Awaitable[None]],
                     on_subscribed: Callable[[], Awaitable[None]]) -> None:
        """Runs until cancelled. ``on_subscribed`` runs after every (re)subscription, to catch up."""
        while True:
            try:
                client = await self._client()
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                try:
                    await pubsub.subscribe(self.channel)
                    await on_subscribed()
                    async for message in pubsub.listen():
                        await on_message(message.get("data"))
                finally:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("%s broadcast unavailable (%s); relying on the store poll", self._what,
                            type(exc).__name__)
                await asyncio.sleep(_RETRY_DELAY)

    async def close(self) -> None:
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.aclose()
            self._redis = None
