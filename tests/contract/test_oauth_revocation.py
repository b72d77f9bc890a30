"""The revocation list on two nodes sharing one database: broadcast through real Redis, the poll without it,
expiry. Each test uses its own Redis channel so parallel tests cannot hear each other."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy import text

from bastion.identity.keys import KeyHasher
from bastion.oauth.revocation import RevocationList
from bastion.oauth.server.secrets import new_jti
from bastion.oauth.server.store import OAuthStore
from bastion.storage.engine import create_engine
from bastion.storage.migrate import migrate
from tests.contract.test_counter_stores import REDIS_URL, require_redis
from tests.contract.test_identity_store import temporary_postgres_database

HASHER = KeyHasher(b"revocation-test-pepper-0123456789abcdef")
SLOW_POLL = 3600.0  # so long that only Redis can deliver within a test
WAIT = 5.0  # upper bound to wait for something asynchronous (not a timing assertion)


@pytest.fixture(scope="module")
def revocation_postgres_url() -> Iterator[str]:
    with temporary_postgres_database() as url:
        asyncio.run(migrate(url))
        yield url


async def _truncate(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text("TRUNCATE oauth_revocations RESTART IDENTITY"))
    finally:
        await engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        url: str = request.getfixturevalue("revocation_postgres_url")
        asyncio.run(_truncate(url))
        return url
    url = f"sqlite:///{tmp_path / 'revocations.db'}"
    asyncio.run(migrate(url))
    return url


@pytest.fixture
def channel() -> str:
    return f"bastion:oauth-revocations:test-{uuid.uuid4().hex[:12]}"


@dataclass
class Node:
    revocations: RevocationList
    key_reloads: list[float]


@asynccontextmanager
async def node(url: str, *, redis_url: str | None, channel: str, poll_interval: float = SLOW_POLL,
               wall_clock: Callable[[], float] = time.time) -> AsyncIterator[Node]:
    """A gateway node's revocation list, on its own engine (its own connection pool)."""
    engine = create_engine(url)
    reloads: list[float] = []

    async def reload_keys() -> None:
        reloads.append(time.monotonic())

    revocations = RevocationList(OAuthStore(engine, HASHER), redis_url=redis_url, wall_clock=wall_clock,
                                 on_keys_changed=reload_keys, channel=channel, poll_interval=poll_interval)
    try:
        await revocations.load()
        revocations.start()
        yield Node(revocations, reloads)
    finally:
        await revocations.close()
        await engine.dispose()


async def eventually(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "the condition did not become true"
        await asyncio.sleep(0.01)


async def subscribers(channel: str) -> int:
    client = Redis.from_url(REDIS_URL)
    try:
        counts: Any = await client.pubsub_numsub(channel)
        return int(counts[0][1])
    finally:
        await client.aclose()


async def wait_for_subscribers(channel: str, count: int) -> None:
    deadline = time.monotonic() + WAIT
    while await subscribers(channel) < count:
        assert time.monotonic() < deadline, "the nodes did not subscribe"
        await asyncio.sleep(0.01)


def _in(minutes: float) -> datetime:
    return datetime.now(UTC) + timedelta(minutes=minutes)


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(body())


def test_a_revocation_reaches_the_other_node_through_redis(database: str, channel: str) -> None:
    require_redis()

    async def body() -> None:
        async with node(database, redis_url=REDIS_URL, channel=channel) as a, \
                node(database, redis_url=REDIS_URL, channel=channel) as b:
            await wait_for_subscribers(channel, 2)
            await eventually(lambda: len(b.key_reloads) >= 1)  # the catch-up after subscribing
            jti = new_jti()
            assert not a.revocations.is_revoked(jti) and not b.revocations.is_revoked(jti)
            await a.revocations.revoke([(jti, _in(10))])
            assert a.revocations.is_revoked(jti)  # the revoking node: at once, before any message
            await eventually(lambda: b.revocations.is_revoked(jti))  # the poll is an hour away: Redis did it

            # Signing-key changes travel the same way: the announcing node reloads at once, the other on the
            # message.
            a_reloads, b_reloads = len(a.key_reloads), len(b.key_reloads)
            await a.revocations.announce_keys_changed()
            assert len(a.key_reloads) > a_reloads
            await eventually(lambda: len(b.key_reloads) > b_reloads)

            # A node started later loads what was revoked before it.
            async with node(database, redis_url=None, channel=channel) as late:
                assert late.revocations.is_revoked(jti)

    run(body)


def test_without_redis_the_poll_delivers(database: str, channel: str) -> None:
    async def body() -> None:
        async with node(database, redis_url=None, channel=channel, poll_interval=0.05) as a, \
                node(database, redis_url=None, channel=channel, poll_interval=0.05) as b:
            jtis = [new_jti() for _ in range(3)]
            await a.revocations.revoke([(jti, _in(10)) for jti in jtis])
            assert all(a.revocations.is_revoked(jti) for jti in jtis)
            await eventually(lambda: all(b.revocations.is_revoked(jti) for jti in jtis))
            assert not b.revocations.is_revoked(new_jti())
            await a.revocations.revoke([])  # nothing to do

    run(body)


def test_an_unreachable_redis_still_revokes_through_the_store(database: str, channel: str) -> None:
    async def body() -> None:
        dead_redis = "redis://127.0.0.1:1/0"
        async with node(database, redis_url=dead_redis, channel=channel) as a, \
                node(database, redis_url=None, channel=channel, poll_interval=0.05) as b:
            jti = new_jti()
            await a.revocations.revoke([(jti, _in(10))])  # the failed broadcast is logged, not raised
            assert a.revocations.is_revoked(jti)
            await eventually(lambda: b.revocations.is_revoked(jti))

    run(body)


def test_malformed_broadcasts_are_ignored(tmp_path: Path, channel: str) -> None:
    require_redis()
    url = f"sqlite:///{tmp_path / 'revocations.db'}"
    asyncio.run(migrate(url))

    async def body() -> None:
        wall = [time.time()]
        async with node(url, redis_url=REDIS_URL, channel=channel, wall_clock=lambda: wall[0]) as listener:
            await wait_for_subscribers(channel, 1)
            client = Redis.from_url(REDIS_URL)
            try:
                for garbage in (b"not json", b"[1,2]", b'{"revoked": "x"}', b'{"revoked": [["", 1e12]]}',
                                b'{"revoked": [["bad", "soon"]]}', b'{"revoked": [["big", 1e400]]}',
                                b'{"revoked": [["' + b"x" * 200 + b'", 1e12]]}'):
                    await client.publish(channel, garbage)
                good = new_jti()
                await client.publish(channel, b'{"revoked": [["%s", %d]]}' % (good.encode(), time.time() + 600))
                forever = new_jti()
                await client.publish(channel, b'{"revoked": [["%s", 1e15]]}' % forever.encode())
            finally:
                await client.aclose()
            await eventually(lambda: listener.revocations.is_revoked(forever))
            assert listener.revocations.is_revoked(good) and len(listener.revocations) == 2
            wall[0] += 86400 + 301  # no token lives that long: even the absurd expiry is dropped
            listener.revocations.prune()
            assert len(listener.revocations) == 0

    run(body)


def test_expired_revocations_are_dropped(database: str, channel: str) -> None:
    async def body() -> None:
        wall = [time.time()]
        async with node(database, redis_url=None, channel=channel, wall_clock=lambda: wall[0]) as a:
            short, long = new_jti(), new_jti()
            await a.revocations.revoke([(short, _in(1)), (long, _in(30))])
            assert len(a.revocations) == 2
            wall[0] += 120
            a.revocations.prune()
            assert not a.revocations.is_revoked(short) and a.revocations.is_revoked(long)
            assert len(a.revocations) == 1
            wall[0] += 3600
            a.revocations.prune()
            assert len(a.revocations) == 0

        # A node starting after a token expired never loads its revocation.
        async with node(database, redis_url=None, channel=channel) as b:
            past = new_jti()
            await b.revocations.revoke([(past, datetime.now(UTC) - timedelta(seconds=1))])
            async with node(database, redis_url=None, channel=channel) as c:
                assert not c.revocations.is_revoked(past)

    run(body)
