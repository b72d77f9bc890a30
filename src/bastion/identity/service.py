"""The identity store as the gateway, the admin API and the CLI use it: open, migrate, authenticate, and
keep every node's key cache in step with changes made anywhere.

Changes reach other nodes two ways: a Redis broadcast (when Redis is configured) within milliseconds, and
a poll of the audit log's newest sequence number every second as the safety net (a broadcast is
fire-and-forget; the CLI may write to the database directly). Either one empties the local key cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from bastion.config.loader import resolve_secret
from bastion.config.model import GatewayConfig
from bastion.identity.authenticator import KeyAuthenticator
from bastion.identity.keys import KeyHasher
from bastion.storage.broadcast import Broadcast
from bastion.storage.engine import create_engine
from bastion.storage.identity_store import IdentityStore, StoreUnavailable
from bastion.storage.migrate import current_revision, head_revision, migrate

log = logging.getLogger("bastion.identity")

CHANGES_CHANNEL = "bastion:identity-changes"
_POLL_INTERVAL = 1.0
_FLUSH_INTERVAL = 10.0


class IdentitySetupError(Exception):
    """The identity store cannot be used as configured (message safe to print)."""


@dataclass(frozen=True, slots=True)
class IdentitySettings:
    store_url: str
    pepper: bytes
    default_ttl: timedelta
    max_ttl: timedelta
    rotation_overlap: timedelta
    cache_ttl: float
    redis_url: str | None

    def __repr__(self) -> str:  # never print the pepper or a URL's credentials
        return "IdentitySettings(...)"


def _ensure_pepper_file(path: Path) -> bytes:
    if path.exists():
        return path.read_bytes().strip()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    value = secrets.token_urlsafe(48).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(value + b"\n")
    log.warning("generated an API-key pepper at %s (mode 0600): back it up, losing it invalidates every key; "
                "several nodes must share it (keys.pepper: file:... or env:...)", path)
    return value


def identity_settings(config: GatewayConfig, base_dir: Path) -> IdentitySettings:
    data_dir = base_dir / config.server.data_dir
    try:
        store = config.store
        url = resolve_secret(store, base_dir) if store and store.startswith(("env:", "file:")) else store
        if url is None:
            url = f"sqlite:///{data_dir / 'bastion.db'}"
        elif url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
            relative = url[len("sqlite:///"):]
            url = f"sqlite:///{(base_dir / relative).resolve()}"
        redis_url = None
        if config.redis:
            redis_url = resolve_secret(config.redis, base_dir) if config.redis.startswith(("env:", "file:")) \
                else config.redis
        keys = config.keys
        if keys.pepper:
            pepper = resolve_secret(keys.pepper, base_dir).encode()
        else:
            pepper = _ensure_pepper_file(data_dir / "key-pepper")
    except (ValueError, OSError) as exc:
        raise IdentitySetupError(str(exc)) from exc
    if len(pepper) < 32:
        raise IdentitySetupError("keys.pepper must be at least 32 bytes")
    if keys.default_ttl_days > keys.max_ttl_days:
        raise IdentitySetupError("keys.default_ttl_days is longer than keys.max_ttl_days")
    return IdentitySettings(
        store_url=url, pepper=pepper, default_ttl=timedelta(days=keys.default_ttl_days),
        max_ttl=timedelta(days=keys.max_ttl_days), rotation_overlap=timedelta(hours=keys.rotation_overlap_hours),
        cache_ttl=keys.cache_ttl, redis_url=redis_url)


class IdentityService:
    def __init__(self, settings: IdentitySettings) -> None:
        self.settings = settings
        self.hasher = KeyHasher(settings.pepper)
        engine = create_engine(settings.store_url)
        self.store = IdentityStore(engine)
        self.authenticator = KeyAuthenticator(self.store, self.hasher, monotonic=time.monotonic,
                                              cache_ttl=settings.cache_ttl)
        self._tasks: list[asyncio.Task[None]] = []
        self._broadcast = Broadcast(settings.redis_url, CHANGES_CHANNEL, what="identity change") \
            if settings.redis_url else None
        self._last_seq = 0

    async def prepare(self) -> None:
        """SQLite migrates itself; PostgreSQL must be migrated with `bastion migrate` first."""
        url = self.settings.store_url
        try:
            if url.startswith("sqlite"):
                await migrate(url)
            elif await current_revision(url) != head_revision():
                raise IdentitySetupError("the identity database is not migrated to this version: run "
                                         "`bastion migrate -c <config>` first")
            self._last_seq = await self.store.latest_audit_seq()
        except (StoreUnavailable, SQLAlchemyError) as exc:
            raise IdentitySetupError(f"the identity store cannot be reached ({type(exc).__name__})") from exc
        except OSError as exc:
            raise IdentitySetupError(f"the identity store cannot be opened: {exc.strerror}") from exc

    # -- background work -----------------------------------------------------------------------------
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._poll_changes()))
        self._tasks.append(loop.create_task(self._flush_last_used_forever()))
        if self._broadcast is not None:
            self._tasks.append(loop.create_task(self._broadcast.listen(self._on_broadcast, self._on_subscribed)))

    async def _poll_changes(self) -> None:
        while True:
            await asyncio.sleep(_POLL_INTERVAL)
            try:
                seq = await self.store.latest_audit_seq()
            except StoreUnavailable:
                continue
            if seq != self._last_seq:
                self._last_seq = seq
                self.authenticator.invalidate()

    async def _flush_last_used_forever(self) -> None:
        while True:
            await asyncio.sleep(_FLUSH_INTERVAL)
            await self.flush_last_used()

    async def flush_last_used(self) -> None:
        batch = self.authenticator.take_last_used()
        if batch:
            try:
                await self.store.record_last_used(batch)
            except StoreUnavailable:
                log.warning("could not record last use of %d keys (identity store unavailable)", len(batch))

    async def _on_subscribed(self) -> None:
        self.authenticator.invalidate()  # messages may have been missed while disconnected

    async def _on_broadcast(self, data: object) -> None:
        key_id = data.decode() if isinstance(data, bytes) else "*"
        self.authenticator.invalidate(None if key_id in ("", "*") else key_id)

    async def announce_change(self, key_id: str | None = None) -> None:
        """After a committed change: this node forgets now, other nodes through Redis (or the poll)."""
        self.authenticator.invalidate(key_id)
        if self._broadcast is not None:
            await self._broadcast.publish(key_id or "*")

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        await self.flush_last_used()
        if self._broadcast is not None:
            await self._broadcast.close()
        await self.store.engine.dispose()
