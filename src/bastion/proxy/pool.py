"""Keep-alive connections to one upstream target, bounded (busy + idle <= max_connections)."""

from __future__ import annotations

import asyncio
import socket
from collections import deque

from bastion.proxy.connection import UpstreamConnection
from bastion.proxy.errors import UpstreamConnectError, UpstreamTimeout


class TargetPool:
    def __init__(self, loop: asyncio.AbstractEventLoop, host: str, port: int, *, max_connections: int,
                 idle_timeout: float, max_head: int) -> None:
        self._loop = loop
        self.host = host
        self.port = port
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.max_head = max_head
        self._idle: deque[tuple[UpstreamConnection, float]] = deque()
        self._waiters: deque[asyncio.Future[UpstreamConnection | None]] = deque()
        self.total = 0
        self.closing = False

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    def try_acquire_idle(self) -> UpstreamConnection | None:
        """An idle pooled connection, without waiting (None when there is none)."""
        if not self._idle:
            return None
        now = self._loop.time()
        while self._idle:
            conn, since = self._idle.pop()  # most recently used first: warmest, least likely stale
            if conn.closed or now - since > self.idle_timeout:
                self._discard(conn)
                continue
            return conn
        return None

    async def acquire(self, connect_timeout: float) -> tuple[UpstreamConnection, bool]:
        """A connection and whether it was reused from the pool (a reused one may be stale)."""
        idle = self.try_acquire_idle()
        if idle is not None:
            return idle, True
        if self.total >= self.max_connections:
            waiter: asyncio.Future[UpstreamConnection | None] = self._loop.create_future()
            self._waiters.append(waiter)
            try:
                conn_or_slot = await asyncio.wait_for(waiter, connect_timeout)
            except TimeoutError as exc:
                raise UpstreamTimeout("no pooled connection became free in time") from exc
            if conn_or_slot is not None:
                return conn_or_slot, True
            # None: a slot was freed for us (total already counts it).
        else:
            self.total += 1
        try:
            return await self._connect(connect_timeout), False
        except BaseException:
            self._slot_freed()
            raise

    async def _connect(self, timeout: float) -> UpstreamConnection:
        conn = UpstreamConnection(self._loop, self.max_head)
        try:
            await asyncio.wait_for(
                self._loop.create_connection(lambda: conn, self.host, self.port), timeout)
        except TimeoutError as exc:
            raise UpstreamTimeout("upstream connect timeout") from exc
        except OSError as exc:
            raise UpstreamConnectError(f"connect failed: {exc.strerror or type(exc).__name__}") from exc
        if conn.transport is not None:
            sock = conn.transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def release(self, conn: UpstreamConnection, reusable: bool) -> None:
        if not reusable or conn.closed or not conn.keep_alive or self.closing:
            self._discard(conn)
            return
        # A slow client may have paused reading in the very read that completed the response; a pooled
        # connection must read (its next response, or the upstream closing it).
        conn.resume_reading()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self._idle.append((conn, self._loop.time()))

    def _discard(self, conn: UpstreamConnection) -> None:
        if not conn.closed:
            conn.abort()
        self._slot_freed()

    def _slot_freed(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # hand the slot over: the waiter connects itself
                return
        self.total -= 1

    def close_idle(self) -> None:
        while self._idle:
            conn, _ = self._idle.pop()
            self._discard(conn)

    def close(self) -> None:
        self.closing = True
        self.close_idle()
