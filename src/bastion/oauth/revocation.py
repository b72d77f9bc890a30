"""The revoked access-token ids every node refuses, checked locally on every request without I/O.

A revocation is written to the store first (durable, the source of truth), then added locally, then
broadcast on Redis when configured, so other nodes refuse the token within milliseconds. The broadcast is
fire-and-forget; every node also polls the store's revocation table every second by an increasing id cursor,
so a node that missed a message (or a deployment without Redis) still refuses the token within a second.
Entries are dropped once the token they name has expired: the list stays as small as the tokens alive.

The same channel and poller carry signing-key changes: "keys" on the channel (and every 5 s regardless)
makes each node reload its signing keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Final

from bastion.oauth.server.store import OAuthStore, StoreUnavailable
from bastion.storage.broadcast import Broadcast

__all__ = ["CHANNEL", "RevocationList"]

log = logging.getLogger("bastion.oauth")

CHANNEL: Final = "bastion:oauth-revocations"
KEYS_MESSAGE: Final = b"keys"
POLL_INTERVAL: Final = 1.0
KEY_RELOAD_INTERVAL: Final = 5.0
PRUNE_INTERVAL: Final = 10.0
PURGE_INTERVAL: Final = 3600.0
_MAX_MESSAGE_BYTES = 1 << 20
# No access token lives longer (oauth.server.access_token_ttl <= 86400): a broadcast naming a later expiry is
# capped, so a bogus message cannot pin entries in memory forever.
_MAX_TOKEN_LIFETIME = 86400.0 + 300.0
_MAX_JTI = 128


class RevocationList:
    """Implements ``bastion.oauth.contracts.RevocationCheck``. ``wall_clock`` gives POSIX seconds (tests
    inject it); the intervals are for tests to shorten."""

    def __init__(self, store: OAuthStore, *, redis_url: str | None, wall_clock: Callable[[], float] = time.time,
                 on_keys_changed: Callable[[], Awaitable[None]] | None = None, channel: str = CHANNEL,
                 poll_interval: float = POLL_INTERVAL, key_reload_interval: float = KEY_RELOAD_INTERVAL) -> None:
        self._store = store
        self._broadcast = Broadcast(redis_url, channel, what="OAuth revocation or key change") if redis_url else None
        self._wall_clock = wall_clock
        self._on_keys_changed = on_keys_changed
        self._poll_interval = poll_interval
        self._key_reload_interval = key_reload_interval
        self._revoked: dict[str, float] = {}  # jti -> the token's expiry (POSIX seconds)
        self._cursor = 0
        self._tasks: list[asyncio.Task[None]] = []

    def __len__(self) -> int:
        return len(self._revoked)

    def is_revoked(self, jti: str) -> bool:
        return jti in self._revoked

    def _add(self, entries: Iterable[tuple[str, float]]) -> None:
        revoked = self._revoked
        for jti, expires in entries:
            if expires > revoked.get(jti, -math.inf):
                revoked[jti] = expires

    async def revoke(self, entries: Iterable[tuple[str, datetime]]) -> None:
        """Refuse these tokens (jti, exp) everywhere: here at once, in the store, then on every node."""
        entries = list(entries)
        if not entries:
            return
        self._add((jti, expires_at.timestamp()) for jti, expires_at in entries)
        await self._store.revoke_access_tokens(entries)
        message = {"revoked": [[jti, expires_at.timestamp()] for jti, expires_at in entries]}
        await self._publish(json.dumps(message, separators=(",", ":")).encode())

    async def announce_keys_changed(self) -> None:
        """After a signing-key change: this node reloads at once, the others when they hear it (or within
        their 5 s reload)."""
        await self._keys_changed()
        await self._publish(KEYS_MESSAGE)

    async def load(self) -> None:
        """At start: every unexpired revocation."""
        await self.poll_once()

    async def poll_once(self) -> None:
        cursor, entries = await self._store.revocations_since(self._cursor)
        self._add((jti, expires_at.timestamp()) for jti, expires_at in entries)
        self._cursor = cursor

    def prune(self) -> None:
        """Forget revocations of tokens that have expired (they are refused for being expired)."""
        now = self._wall_clock()
        self._revoked = {jti: expires for jti, expires in self._revoked.items() if expires > now}

    # -- background work -----------------------------------------------------------------------------

    def start(self, on_keys_changed: Callable[[], Awaitable[None]] | None = None) -> None:
        if on_keys_changed is not None:
            self._on_keys_changed = on_keys_changed
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._poll_forever()))
        if self._broadcast is not None:
            self._tasks.append(loop.create_task(self._broadcast.listen(self._handle, self._catch_up)))

    async def close(self) -> None:
        """Stop the background tasks and the Redis connection (the store's engine belongs to its owner)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._broadcast is not None:
            await self._broadcast.close()

    async def _poll_forever(self) -> None:
        loop = asyncio.get_running_loop()
        last_keys = last_prune = loop.time()
        last_purge = -math.inf  # purge soon after start, then hourly
        warned = False
        while True:
            await asyncio.sleep(self._poll_interval)
            try:
                await self.poll_once()
                warned = False
            except StoreUnavailable:
                if not warned:
                    log.warning("cannot poll the revocation list (store unavailable); retrying every %.0f s",
                                self._poll_interval)
                    warned = True
            now = loop.time()
            if now - last_prune >= PRUNE_INTERVAL:
                last_prune = now
                self.prune()
            if now - last_keys >= self._key_reload_interval:
                last_keys = now
                await self._keys_changed()
            if now - last_purge >= PURGE_INTERVAL:
                last_purge = now
                await self._purge()

    async def _purge(self) -> None:
        try:
            deleted = await self._store.purge_expired()
        except StoreUnavailable:
            log.warning("could not purge expired OAuth records (store unavailable)")
            return
        if deleted:
            log.info("purged %d expired OAuth records", deleted)

    async def _keys_changed(self) -> None:
        callback = self._on_keys_changed
        if callback is None:
            return
        try:
            await callback()
        except Exception as exc:  # a failed reload keeps the keys already loaded
            log.warning("could not reload the signing keys (%s)", type(exc).__name__)

    async def _publish(self, payload: bytes) -> None:
        if self._broadcast is not None:
            await self._broadcast.publish(payload)

    async def _catch_up(self) -> None:
        with contextlib.suppress(StoreUnavailable):
            await self.poll_once()
        await self._keys_changed()

    async def _handle(self, data: object) -> None:
        if not isinstance(data, bytes) or len(data) > _MAX_MESSAGE_BYTES:
            return
        if data == KEYS_MESSAGE:
            await self._keys_changed()
            return
        latest = self._wall_clock() + _MAX_TOKEN_LIFETIME
        self._add((jti, min(expires, latest)) for jti, expires in _parse_revocations(data))


def _parse_revocations(data: bytes) -> list[tuple[str, float]]:
    """Entries of a broadcast; anything malformed is ignored (the poll brings the truth)."""
    try:
        message = json.loads(data)
    except ValueError:
        return []
    entries = message.get("revoked") if isinstance(message, dict) else None
    if not isinstance(entries, list):
        return []
    parsed = []
    for entry in entries:
        if (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)
                and 0 < len(entry[0]) <= _MAX_JTI and isinstance(entry[1], int | float)
                and not isinstance(entry[1], bool) and math.isfinite(entry[1])):
            parsed.append((entry[0], float(entry[1])))
    return parsed
