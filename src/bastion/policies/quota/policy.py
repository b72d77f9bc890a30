"""The `quota` policy: requests per consumer (or per credential) per calendar day or month, in UTC.

Counted in the shared counter store (`services.extras["counters"]`) with a fixed window whose bounds are the
calendar period's: a day is [00:00, 24:00) UTC, a month runs from midnight UTC on its first day to midnight UTC
on the next month's, whatever its length. The bounds come from the wall clock, `services.extras["wall_clock"]`
(UNIX seconds; `time.time` when absent): `services.clock` is monotonic, and a calendar cannot be read from it.

Recorded with `ctx.record("quota", <event>, <declaration site>)`: `exceeded` (refused), and on a store failure
`unavailable` (refused, 503), `unchecked` (admitted uncounted) or `local` (counted in this node's share).

Anonymous requests are not counted and get no quota headers: a quota belongs to a consumer, and unidentified
traffic is the rate limits' job (per address). Every request the quota admits counts, including one a later
policy (validation) refuses or the upstream fails: the quota counts attempts, not successes. It runs last in
the LIMIT stage (see the compiler), so requests refused by a rate limit, a flow or a concurrency cap do not.

Headers, on every response of a counted request (refusals included):
`Quota-Limit` (requests per period), `Quota-Remaining`, `Quota-Reset` (seconds until the period ends).
Why not the IETF draft's `RateLimit`/`RateLimit-Policy` fields with a `quota` policy item: the `rate-limit`
policy owns those fields and sets each as a whole, so a route with both would lose one of them, and a calendar
quota resets at a fixed instant rather than after a window of `w` seconds, which those fields cannot say.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import ClassVar

from pydantic import BaseModel

from bastion.errors.codes import QUOTA_EXCEEDED, RATE_LIMIT_UNAVAILABLE
from bastion.pipeline.context import RequestContext
from bastion.pipeline.policy import PENDING, BasePolicy, Pending, PolicyServices, PolicyType, Reject, Stage
from bastion.policies.counting import StoreFailures, counter_store, run_sync
from bastion.policies.quota.config import Period, QuotaConfig
from bastion.policies.rate_limit.keys import key_function
from bastion.ratelimit.algorithms import FixedWindow
from bastion.ratelimit.failover import UNAVAILABLE_RETRY_AFTER, FailureMode
from bastion.ratelimit.store import CounterStoreError

log = logging.getLogger("bastion.ratelimit")

POLICY = "quota"
DAY = 86400.0


def period_bounds(period: Period, now: float) -> tuple[float, float]:
    """The UTC calendar period holding `now` (UNIX seconds) as [start, end). UNIX time has no leap seconds,
    so every UTC day is exactly 86400 s."""
    if period is Period.DAY:
        start = math.floor(now / DAY) * DAY
        return start, start + DAY
    moment = datetime.fromtimestamp(now, UTC)
    first = datetime(moment.year, moment.month, 1, tzinfo=UTC)
    following = datetime(moment.year + 1, 1, 1, tzinfo=UTC) if moment.month == 12 else \
        datetime(moment.year, moment.month + 1, 1, tzinfo=UTC)
    return first.timestamp(), following.timestamp()


class _Quota:
    """One plan's quota in the current period: its window and its texts, built once per period."""

    __slots__ = ("detail", "limit", "window")

    def __init__(self, limit: int, start: float, end: float, adjective: str) -> None:
        self.window = FixedWindow(limit, start, end)
        self.limit = str(limit)
        self.detail = f"The {adjective} quota of {limit} requests is used up; it starts again in "


class QuotaPolicy(BasePolicy):
    name: ClassVar[str] = POLICY
    stage: ClassVar[Stage] = Stage.LIMIT
    Config: ClassVar[type[BaseModel]] = QuotaConfig

    def __init__(self, config: QuotaConfig, services: PolicyServices) -> None:
        wall_clock = services.extras.get("wall_clock")
        self._wall: Callable[[], float] = wall_clock if callable(wall_clock) else time.time
        self._store, self._memory = counter_store(services)
        site = services.extras.get("policy_site")
        if not isinstance(site, str) or not site:
            site = "cfg-" + hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:16]
        self._site = site
        self._period = config.period
        self._key = key_function(f"quota:{site}:{config.period.value}|", [config.key.value])
        self._limit = config.limit
        self._plans = dict(config.plans)
        self._failures = StoreFailures(config.on_store_failure, config.nodes, "quota")
        self._adjective = "daily" if config.period is Period.DAY else "monthly"
        # The current period's windows, by plan, rebuilt when the wall clock leaves the period.
        self._start = 0.0
        self._end = -math.inf
        self._base = _Quota(config.limit, 0.0, 1.0, self._adjective)
        self._quotas: dict[str, _Quota] = {}

    def try_sync(self, ctx: RequestContext) -> Reject | Pending | None:
        if self._memory is None:
            return PENDING
        return run_sync(self.on_request(ctx))

    async def on_request(self, ctx: RequestContext) -> Reject | None:
        key = self._key(ctx)
        if key is None:
            return None  # anonymous: not counted
        now = self._wall()
        if not self._start <= now < self._end:
            self._roll(now)
        plan = getattr(ctx.identity, "plan", None)
        quota = self._base if plan is None else self._quotas.get(plan, self._base)
        window = quota.window
        memory = self._memory
        if memory is not None:
            decision = memory.hit_fixed_now(key, window, 1, now)
        else:
            try:
                decision = await self._store.hit_fixed(key, window, 1, now)
            except CounterStoreError as exc:
                local = self._failures.record(exc, now)
                fallback = local.hit_fixed(key, window, 1, now) if local is not None else None
                if fallback is None:
                    if self._failures.mode is FailureMode.CLOSED:
                        ctx.record(POLICY, "unavailable", self._site)
                        return Reject(RATE_LIMIT_UNAVAILABLE, "Quotas cannot be checked right now; retry "
                                      "shortly.", {"Retry-After": str(UNAVAILABLE_RETRY_AFTER)},
                                      log_reason=f"quota store failed: {exc}")
                    ctx.record(POLICY, "unchecked", self._site)
                    return None  # failing open: nothing counted, nothing to report
                ctx.record(POLICY, "local", self._site)
                decision = fallback
        reset = math.ceil(decision.reset_after)
        headers = ctx.response_headers
        # During a store outage with `local`, this node enforces its share: say so rather than the full quota.
        headers["Quota-Limit"] = quota.limit if decision.limit == window.limit else str(decision.limit)
        headers["Quota-Remaining"] = str(decision.remaining)
        headers["Quota-Reset"] = str(reset)
        if decision.allowed:
            return None
        wait = reset or 1
        ctx.record(POLICY, "exceeded", self._site)
        return Reject(QUOTA_EXCEEDED, f"{quota.detail}{wait} s.", {"Retry-After": str(wait)},
                      log_reason=f"{self._adjective} quota of {window.limit} used up")

    def _roll(self, now: float) -> None:
        """Enter the period holding `now` (also backwards, if the wall clock was set back)."""
        start, end = period_bounds(self._period, now)
        self._start, self._end = start, end
        adjective = self._adjective
        self._base = _Quota(self._limit, start, end, adjective)
        self._quotas = {plan: _Quota(limit, start, end, adjective) for plan, limit in self._plans.items()}

    @property
    def store_failures(self) -> int:
        return self._failures.count


def _build(config: BaseModel, services: PolicyServices) -> BasePolicy:
    if not isinstance(config, QuotaConfig):
        raise TypeError(f"quota expects QuotaConfig, got {type(config).__name__}")
    return QuotaPolicy(config, services)


POLICY_TYPE = PolicyType(POLICY, Stage.LIMIT, QuotaConfig, _build,
                         "Requests per consumer or credential per calendar day or month, in UTC (429 when used "
                         "up, with the quota in `Quota-*` headers).")
