"""An upstream: its targets, weighted round robin over healthy ones, health checks, retry budget."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from bastion.config.model import UpstreamConfig
from bastion.proxy.pool import TargetPool

log = logging.getLogger("bastion.upstream")

MAX_EJECTION = 300.0


@dataclass(slots=True)
class TargetHealth:
    healthy: bool = True  # active checks' verdict
    consecutive_failures: int = 0  # passive
    ejected_until: float = 0.0
    ejections: int = 0
    probe_successes: int = 0
    probe_failures: int = 0


class Target:
    def __init__(self, url: str, weight: int, pool: TargetPool) -> None:
        parts = urlsplit(url)
        self.url = url
        self.weight = weight
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.prefix = parts.path.rstrip("/")
        default_port = parts.port in (None, 80)
        self.host_header = self.host if default_port else f"{self.host}:{self.port}"
        if ":" in self.host and not default_port:
            self.host_header = f"[{self.host}]:{self.port}"
        self.host_header_bytes = self.host_header.encode("latin-1")
        self.pool = pool
        self.health = TargetHealth()

    def available(self, now: float) -> bool:
        return self.health.healthy and now >= self.health.ejected_until


class RetryBudget:
    """Retries may add at most ``ratio`` of recent requests, plus ``min_per_second`` (Envoy's model)."""

    def __init__(self, ratio: float, min_per_second: int) -> None:
        self.ratio = ratio
        self.min_per_second = min_per_second
        self._second = 0
        self._requests = 0
        self._retries = 0

    def _roll(self) -> None:
        second = int(time.monotonic())
        if second != self._second:
            self._second = second
            self._requests = 0
            self._retries = 0

    def record_request(self) -> None:
        self._roll()
        self._requests += 1

    def try_acquire(self) -> bool:
        self._roll()
        if self._retries < self.min_per_second or self._retries < self._requests * self.ratio:
            self._retries += 1
            return True
        return False


class UpstreamCluster:
    def __init__(self, name: str, config: UpstreamConfig, loop: asyncio.AbstractEventLoop) -> None:
        self.name = name
        self.config = config
        self._loop = loop
        self.targets: list[Target] = []
        for target in config.targets:
            parts = urlsplit(target.url)
            pool = TargetPool(loop, parts.hostname or "127.0.0.1", parts.port or 80,
                              max_connections=config.max_connections,
                              idle_timeout=config.idle_connection_timeout,
                              max_head=config.max_response_header_bytes)
            self.targets.append(Target(target.url, target.weight, pool))
        # Weighted round robin: a schedule with each target repeated by weight, interleaved.
        schedule: list[Target] = []
        remaining = {id(t): t.weight for t in self.targets}
        while any(remaining.values()):
            for t in self.targets:
                if remaining[id(t)]:
                    schedule.append(t)
                    remaining[id(t)] -= 1
        self._schedule = schedule
        self._cursor = 0
        self.retry_budget = RetryBudget(config.retries.budget_ratio, config.retries.min_per_second)
        self.in_flight = 0  # requests admitted under max_concurrent_requests
        self._health_task: asyncio.Task[None] | None = None

    # -- balancing ---------------------------------------------------------------------------------
    def pick(self, exclude: Target | None = None) -> Target | None:
        now = time.monotonic()
        schedule = self._schedule
        count = len(schedule)
        for _ in range(count):
            target = schedule[self._cursor % count]
            self._cursor += 1
            if target is not exclude and target.available(now):
                return target
        if exclude is not None and exclude.available(now):
            return exclude
        return None

    def enter(self) -> bool:
        """Take a slot of the bulkhead (always granted without a cap); release it with ``leave``."""
        cap = self.config.max_concurrent_requests
        if cap is not None and self.in_flight >= cap:
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        self.in_flight -= 1

    def healthy_count(self) -> int:
        now = time.monotonic()
        return sum(1 for t in self.targets if t.available(now))

    # -- passive health (circuit breaker) ----------------------------------------------------------
    def report_success(self, target: Target) -> None:
        target.health.consecutive_failures = 0

    def report_failure(self, target: Target) -> None:
        passive = self.config.health_check.passive
        if not passive.enabled:
            return
        health = target.health
        health.consecutive_failures += 1
        if health.consecutive_failures >= passive.consecutive_failures:
            health.ejections += 1
            duration = min(passive.ejection_time * (2 ** (health.ejections - 1)), MAX_EJECTION)
            health.ejected_until = time.monotonic() + duration
            health.consecutive_failures = 0
            target.pool.close_idle()
            log.warning("upstream %s target %s ejected for %.0f s after %d consecutive failures",
                        self.name, target.url, duration, passive.consecutive_failures)

    # -- active health checks ----------------------------------------------------------------------
    def start(self) -> None:
        if self.config.health_check.active.enabled and self._health_task is None:
            self._health_task = self._loop.create_task(self._probe_loop())

    def close(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            self._health_task = None
        for target in self.targets:
            target.pool.close()

    async def _probe_loop(self) -> None:
        active = self.config.health_check.active
        while True:
            await asyncio.gather(*(self._probe(t) for t in self.targets))
            await asyncio.sleep(active.interval)

    async def _probe(self, target: Target) -> None:
        active = self.config.health_check.active
        ok = False
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(active.timeout):
                reader, writer = await asyncio.open_connection(target.host, target.port)
                path = (target.prefix + active.path) or "/"
                writer.write(f"GET {path} HTTP/1.1\r\nHost: {target.host_header}\r\n"
                             "User-Agent: bastion-health\r\nConnection: close\r\n\r\n".encode("latin-1"))
                status_line = await reader.readline()
                parts = status_line.split(b" ", 2)
                ok = len(parts) >= 2 and parts[1].isdigit() and int(parts[1]) in active.expected_status
        except (OSError, TimeoutError, ValueError):
            ok = False
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
        health = target.health
        if ok:
            health.probe_failures = 0
            health.probe_successes += 1
            if not health.healthy and health.probe_successes >= active.healthy_threshold:
                health.healthy = True
                health.ejected_until = 0.0
                log.warning("upstream %s target %s is healthy again", self.name, target.url)
        else:
            health.probe_successes = 0
            health.probe_failures += 1
            if health.healthy and health.probe_failures >= active.unhealthy_threshold:
                health.healthy = False
                target.pool.close_idle()
                log.warning("upstream %s target %s failed %d health checks: marked unhealthy",
                            self.name, target.url, health.probe_failures)
