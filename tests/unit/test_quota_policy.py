"""The quota policy and the fixed-window counting under it, on an injected wall clock: UTC day and month
rollovers, month lengths, plans, keys, headers, anonymous requests and store failures."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from bastion.errors.codes import QUOTA_EXCEEDED, RATE_LIMIT_UNAVAILABLE
from bastion.pipeline.context import Headers, RequestContext
from bastion.pipeline.policy import PENDING, PolicyServices, Reject, Stage
from bastion.policies import builtin_policy_types
from bastion.policies.quota.config import Period, QuotaConfig
from bastion.policies.quota.policy import QuotaPolicy, period_bounds
from bastion.ratelimit.algorithms import Algorithm, Decision, FixedState, FixedWindow, RuleSpec, fixed_window
from bastion.ratelimit.failover import LocalFallback
from bastion.ratelimit.memory import MemoryCounterStore
from bastion.ratelimit.store import CounterStoreError


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


class WallClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Identity:
    consumer_id: str
    credential_id: str
    plan: str | None = None


class FailingStore:
    async def hit_fixed(self, key: str, window: FixedWindow, cost: int, now: float) -> Decision:
        raise CounterStoreError("redis ConnectionError: connection refused")

    async def close(self) -> None:
        return None


def run(coroutine: Coroutine[Any, Any, Reject | None]) -> Reject | None:
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coroutine.close()
    raise AssertionError("on_request suspended on the memory path")


def quota(config: dict[str, Any], clock: WallClock, **extras: Any) -> QuotaPolicy:
    return QuotaPolicy(QuotaConfig.model_validate(config),
                       PolicyServices(lambda: 0.0, {"wall_clock": clock, "policy_site": "api:shop", **extras}))


def request(consumer: str | None = "alice", credential: str = "key-1", plan: str | None = None) -> RequestContext:
    identity = None if consumer is None else Identity(consumer, credential, plan)
    return RequestContext(request_id="r1", client_ip="203.0.113.9", method="GET", path="/items", query="",
                          host="api", headers=Headers(), tls=True, started=0.0, identity=identity)


def call(policy: QuotaPolicy, **kwargs: Any) -> tuple[Reject | None, dict[str, str]]:
    ctx = request(**kwargs)
    return run(policy.on_request(ctx)), ctx.response_headers


def admitted(policy: QuotaPolicy, count: int, **kwargs: Any) -> int:
    return sum(call(policy, **kwargs)[0] is None for _ in range(count))


# -- calendar periods ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("moment", "start", "end"), [
    (utc(2024, 2, 29, 13, 5), utc(2024, 2, 29), utc(2024, 3, 1)),
    (utc(2024, 12, 31, 23, 59, 59), utc(2024, 12, 31), utc(2025, 1, 1)),
    (utc(2025, 3, 30, 0, 0, 0), utc(2025, 3, 30), utc(2025, 3, 31)),  # a DST change elsewhere: UTC has none
])
def test_days_are_utc_days(moment: float, start: float, end: float) -> None:
    assert period_bounds(Period.DAY, moment) == (start, end)


@pytest.mark.parametrize(("moment", "days"), [
    (utc(2024, 2, 10), 29), (utc(2023, 2, 28, 23, 59, 59), 28), (utc(2100, 2, 1), 28), (utc(2000, 2, 15), 29),
    (utc(2025, 4, 30, 12), 30), (utc(2025, 1, 31, 23), 31), (utc(2025, 12, 31, 23, 59, 59), 31),
])
def test_months_have_their_own_lengths(moment: float, days: int) -> None:
    start, end = period_bounds(Period.MONTH, moment)
    first = datetime.fromtimestamp(moment, UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    assert start == first.timestamp()
    assert end - start == days * 86400


# -- counting and headers ------------------------------------------------------------------------------------
def test_headers_count_down_and_the_last_request_is_refused_until_midnight_utc() -> None:
    clock = WallClock(utc(2024, 5, 17, 22, 0, 0))
    policy = quota({"period": "day", "limit": 3}, clock)
    seen = [call(policy) for _ in range(4)]
    assert [result for result, _ in seen[:3]] == [None] * 3
    assert [h["Quota-Remaining"] for _, h in seen] == ["2", "1", "0", "0"]
    assert all(h["Quota-Limit"] == "3" and h["Quota-Reset"] == "7200" for _, h in seen)
    refusal = seen[3][0]
    assert isinstance(refusal, Reject) and refusal.code is QUOTA_EXCEEDED and refusal.code.status == 429
    assert refusal.headers == {"Retry-After": "7200"}
    assert refusal.detail == "The daily quota of 3 requests is used up; it starts again in 7200 s."


def test_day_rollover_at_utc_midnight() -> None:
    clock = WallClock(utc(2024, 5, 17, 23, 59, 59) + 0.25)
    policy = quota({"period": "day", "limit": 2}, clock)
    assert admitted(policy, 3) == 2
    refusal, headers = call(policy)
    assert isinstance(refusal, Reject) and refusal.headers["Retry-After"] == "1" and headers["Quota-Reset"] == "1"
    clock.now = utc(2024, 5, 18)  # midnight: a new day, a new quota
    result, headers = call(policy)
    assert result is None
    assert (headers["Quota-Remaining"], headers["Quota-Reset"]) == ("1", "86400")


def test_month_rollover_follows_the_calendar() -> None:
    clock = WallClock(utc(2023, 2, 28, 23, 0))
    policy = quota({"period": "month", "limit": 2}, clock)
    assert admitted(policy, 3) == 2
    refusal, _ = call(policy)
    assert isinstance(refusal, Reject) and refusal.headers["Retry-After"] == "3600"
    assert refusal.detail is not None and refusal.detail.startswith("The monthly quota of 2 requests")
    clock.now = utc(2023, 3, 1)
    result, headers = call(policy)
    assert result is None and headers["Quota-Reset"] == str(31 * 86400)  # March has 31 days
    clock.now = utc(2023, 3, 31, 23, 59, 59)
    assert admitted(policy, 2) == 1  # still March: one left
    clock.now = utc(2023, 4, 1)
    assert call(policy)[1]["Quota-Reset"] == str(30 * 86400)


def test_plans_choose_the_limit_and_unknown_plans_get_the_base() -> None:
    clock = WallClock(utc(2024, 1, 10, 12))
    policy = quota({"period": "day", "limit": 3, "plans": {"free": 1, "pro": 5}}, clock)
    assert admitted(policy, 9, consumer="f", plan="free") == 1
    assert admitted(policy, 9, consumer="p", plan="pro") == 5
    assert admitted(policy, 9, consumer="n", plan=None) == 3
    assert admitted(policy, 9, consumer="u", plan="enterprise") == 3
    assert call(policy, consumer="p2", plan="pro")[1]["Quota-Limit"] == "5"


def test_consumer_key_shares_one_quota_across_credentials() -> None:
    policy = quota({"period": "day", "limit": 2}, WallClock(utc(2024, 1, 10)))
    assert admitted(policy, 1, credential="k1") == 1
    assert admitted(policy, 2, credential="k2") == 1


def test_credential_key_gives_each_credential_its_quota() -> None:
    policy = quota({"period": "day", "limit": 2, "key": "credential"}, WallClock(utc(2024, 1, 10)))
    assert admitted(policy, 3, credential="k1") == 2
    assert admitted(policy, 3, credential="k2") == 2


def test_anonymous_requests_are_not_counted_and_get_no_headers() -> None:
    policy = quota({"period": "day", "limit": 1}, WallClock(utc(2024, 1, 10)))
    for _ in range(3):
        result, headers = call(policy, consumer=None)
        assert result is None and headers == {}
    assert admitted(policy, 2) == 1


def test_refusals_are_recorded_under_the_declaration_site() -> None:
    policy = quota({"period": "day", "limit": 1}, WallClock(utc(2024, 1, 10)))
    first, second = request(), request()
    run(policy.on_request(first))
    run(policy.on_request(second))
    assert first.events is None
    assert second.events == [("quota", "exceeded", "api:shop")]


def test_quotas_of_two_sites_are_separate() -> None:
    store, clock = MemoryCounterStore(), WallClock(utc(2024, 1, 10))
    one = QuotaPolicy(QuotaConfig.model_validate({"period": "day", "limit": 1}),
                      PolicyServices(lambda: 0.0, {"wall_clock": clock, "counters": store, "policy_site": "a"}))
    two = QuotaPolicy(QuotaConfig.model_validate({"period": "day", "limit": 1}),
                      PolicyServices(lambda: 0.0, {"wall_clock": clock, "counters": store, "policy_site": "b"}))
    assert admitted(one, 2) == 1 and admitted(two, 2) == 1


# -- store failures ------------------------------------------------------------------------------------------
def test_store_failure_modes() -> None:
    clock = WallClock(utc(2024, 1, 10))
    closed = quota({"period": "day", "limit": 5}, clock, counters=FailingStore())
    ctx = request()
    refusal = asyncio.run(closed.on_request(ctx))
    assert isinstance(refusal, Reject) and refusal.code is RATE_LIMIT_UNAVAILABLE
    assert refusal.headers == {"Retry-After": "1"} and ctx.events == [("quota", "unavailable", "api:shop")]
    opened = quota({"period": "day", "limit": 1, "on_store_failure": "open"}, clock, counters=FailingStore())
    ctx = request()
    assert [asyncio.run(opened.on_request(request())) for _ in range(3)] == [None] * 3
    assert asyncio.run(opened.on_request(ctx)) is None and ctx.response_headers == {}
    assert ctx.events == [("quota", "unchecked", "api:shop")]
    local = quota({"period": "day", "limit": 10, "on_store_failure": "local", "nodes": 2}, clock,
                  counters=FailingStore())
    contexts = [request() for _ in range(6)]
    results = [asyncio.run(local.on_request(ctx)) for ctx in contexts]
    assert results[:5] == [None] * 5 and isinstance(results[5], Reject)
    assert contexts[0].events == [("quota", "local", "api:shop")]
    assert (contexts[0].response_headers["Quota-Limit"], contexts[0].response_headers["Quota-Remaining"]) == (
        "5", "4")  # what this node enforces during the outage: half the quota
    assert local.store_failures == 6


def test_memory_store_decides_synchronously_and_other_stores_do_not() -> None:
    clock = WallClock(utc(2024, 1, 10))
    assert quota({"period": "day", "limit": 1}, clock).try_sync(request()) is None
    assert quota({"period": "day", "limit": 1}, clock, counters=FailingStore()).try_sync(request()) is PENDING


# -- the fixed window underneath -----------------------------------------------------------------------------
def test_fixed_window_counts_within_its_bounds_and_restarts_in_the_next() -> None:
    window = FixedWindow(2, 100.0, 200.0)
    state: FixedState | None = None
    decisions = []
    for _ in range(3):
        state, decision = fixed_window(state, 150.0, window, 1)
        decisions.append(decision)
    assert [d.allowed for d in decisions] == [True, True, False]
    assert [d.remaining for d in decisions] == [1, 0, 0]
    assert decisions[2].retry_after == 50.0 and decisions[2].reset_after == 50.0
    assert state == (100.0, 2, 200.0)  # the refusal left it as it was
    state, decision = fixed_window(state, 200.0, FixedWindow(2, 200.0, 300.0), 2)
    assert decision.allowed and decision.remaining == 0 and state == (200.0, 2, 300.0)
    with pytest.raises(ValueError, match="invalid fixed window"):
        FixedWindow(1, 10.0, 10.0)
    assert FixedWindow(10, 0.0, 1.0).divided(3) == FixedWindow(3, 0.0, 1.0)
    assert FixedWindow(2, 0.0, 1.0).divided(5).limit == 1


def test_memory_store_sweeps_fixed_windows_apart_from_rate_limits() -> None:
    """Quota windows are on the wall clock and rate limits on the monotonic one: sweeping one table with the
    other's time would drop live state."""
    store = MemoryCounterStore(sweep_threshold=4)
    rule = RuleSpec(Algorithm.SLIDING_WINDOW, 10, 60.0)
    for i in range(3):
        assert store.hit_now(f"rl{i}", rule, 1, 100.0).allowed  # monotonic seconds since boot
    wall = utc(2024, 1, 10)
    day = FixedWindow(5, wall, wall + 86400)
    for i in range(10):
        assert store.hit_fixed_now(f"q{i}", day, 1, wall + 1).allowed
    assert len(store) == 13  # nothing was live enough to drop
    next_day = FixedWindow(5, wall + 86400, wall + 2 * 86400)
    for i in range(10):
        store.hit_fixed_now(f"n{i}", next_day, 1, wall + 86401)
    assert len(store) < 23  # yesterday's windows were swept...
    assert all(store.hit_now(f"rl{i}", rule, 1, 100.0).remaining == 8 for i in range(3))  # ...not the limits


def test_local_fallback_divides_fixed_windows() -> None:
    fallback = LocalFallback(4)
    window = FixedWindow(10, 0.0, 100.0)
    assert [fallback.hit_fixed("k", window, 1, 1.0).allowed for _ in range(3)] == [True, True, False]


# -- configuration -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [
    {"limit": 10},  # the period is required
    {"period": "week", "limit": 10},
    {"period": "day", "limit": 0},
    {"period": "day", "limit": 10, "key": "ip"},
    {"period": "day", "limit": 10, "plans": {"free": 0}},
    {"period": "day", "limit": 10, "plans": {"Free Tier": 5}},
    {"period": "day", "limit": 10, "cost": {"POST": 2}},
])
def test_invalid_configurations(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        QuotaConfig.model_validate(bad)


def test_every_field_is_described_and_the_policy_is_registered() -> None:
    for name, field in QuotaConfig.model_fields.items():
        assert field.description, name
    policy_type = builtin_policy_types()["quota"]
    assert policy_type.stage is Stage.LIMIT
    built = policy_type.factory(QuotaConfig.model_validate({"period": "month", "limit": 1}),
                                PolicyServices(lambda: 0.0))
    assert isinstance(built, QuotaPolicy) and built.name == "quota"
