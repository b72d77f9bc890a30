"""The rate-limit policy on a memory store and an injected clock (no sleeps, no event loop needed)."""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import ValidationError

from bastion.pipeline.context import Headers, RequestContext
from bastion.pipeline.policy import PolicyServices, Reject, Stage
from bastion.policies import builtin_policy_types
from bastion.policies.rate_limit.config import RateLimitConfig
from bastion.policies.rate_limit.keys import client_prefix
from bastion.policies.rate_limit.policy import RateLimitPolicy, describe_period
from bastion.ratelimit.algorithms import Decision, RuleSpec
from bastion.ratelimit.memory import MemoryCounterStore
from bastion.ratelimit.store import CounterStoreError
from tests.support.routes import compiled_route


class Clock:
    def __init__(self, now: float = 1000.25) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Identity:
    consumer_id: str
    credential_id: str
    plan: str | None = None


class FailingStore:
    """A counter store whose backend is down: every hit fails the way RedisCounterStore's do."""

    def __init__(self) -> None:
        self.calls = 0

    async def hit(self, key: str, rule: RuleSpec, cost: int, now: float) -> Decision:
        self.calls += 1
        raise CounterStoreError("rate-limit store failed: ConnectionError: connection refused")

    async def close(self) -> None:
        return None


class RecordingStore:
    """A memory store that remembers the keys it was asked about."""

    def __init__(self) -> None:
        self.inner = MemoryCounterStore()
        self.keys: list[str] = []

    async def hit(self, key: str, rule: RuleSpec, cost: int, now: float) -> Decision:
        self.keys.append(key)
        return await self.inner.hit(key, rule, cost, now)

    async def close(self) -> None:
        return None


def run(coroutine: Coroutine[Any, Any, Reject | None]) -> Reject | None:
    """Drive on_request without an event loop: the memory path must never suspend."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coroutine.close()
    raise AssertionError("on_request suspended on the memory path")


ROUTE = compiled_route()


def policy(config: dict[str, Any], clock: Clock | None = None, **extras: Any) -> RateLimitPolicy:
    return RateLimitPolicy(RateLimitConfig.model_validate(config), PolicyServices(clock or Clock(), extras))


def request(method: str = "GET", ip: str = "203.0.113.9", headers: dict[str, str] | None = None,
            identity: Identity | None = None) -> RequestContext:
    items = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    ctx = RequestContext(request_id="r1", client_ip=ip, method=method, path="/items", query="", host="api",
                         headers=Headers(items), tls=True, started=0.0, route=ROUTE,
                         identity=identity)
    return ctx


def admitted(p: RateLimitPolicy, count: int, **kwargs: Any) -> int:
    return sum(run(p.on_request(request(**kwargs))) is None for _ in range(count))


def limit(name: str, rate: int, per: str = "1s", **more: Any) -> dict[str, Any]:
    return {"name": name, "rate": rate, "per": per, **more}


# -- what is counted -----------------------------------------------------------------------------------------
def test_reads_and_writes_are_counted_separately() -> None:
    p = policy({"limits": [limit("reads", 10, key=["ip"], methods="read"),
                           limit("writes", 5, key=["ip"], methods="write")]})
    assert admitted(p, 8, method="GET") == 8
    assert admitted(p, 4, method="HEAD") == 2  # HEAD and OPTIONS are reads too
    assert admitted(p, 6, method="POST") == 5  # writes have their own budget
    assert admitted(p, 1, method="DELETE") == 0
    assert admitted(p, 1, method="OPTIONS") == 0
    assert admitted(p, 1, method="PROPFIND") == 0  # unknown methods are writes


def test_keys_by_ip_count_ipv6_per_64_and_unwrap_mapped_ipv4() -> None:
    p = policy({"limits": [limit("per-ip", 2)]})
    assert admitted(p, 3, ip="198.51.100.1") == 2
    assert admitted(p, 3, ip="198.51.100.2") == 2
    assert admitted(p, 1, ip="::ffff:198.51.100.1") == 0  # the same client as 198.51.100.1
    assert admitted(p, 2, ip="2001:db8:1:2::1") == 2
    assert admitted(p, 1, ip="2001:db8:1:2:ffff::9") == 0  # same /64
    assert admitted(p, 1, ip="2001:db8:1:3::1") == 1
    assert client_prefix("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert client_prefix("10.0.0.1") == "10.0.0.1"


def test_keys_by_header_skip_requests_without_it_and_never_store_the_value() -> None:
    store = RecordingStore()
    p = policy({"limits": [limit("per-key", 2, key=["header:X-Api-Key"])]}, counters=store)
    secret = "sk_live_0123456789abcdef"
    assert admitted(p, 3, headers={"X-Api-Key": secret}) == 2
    assert admitted(p, 3, headers={"X-Api-Key": "other"}) == 2
    ctx = request()
    assert run(p.on_request(ctx)) is None and ctx.response_headers == {}  # no header: the limit does not apply
    assert store.keys and not any(secret in key for key in store.keys)


def test_consumer_keys_do_not_apply_to_anonymous_requests() -> None:
    p = policy({"limits": [limit("per-consumer", 1, key=["consumer"])]})
    assert admitted(p, 5) == 5
    alice = Identity("alice", "key-1")
    assert admitted(p, 2, identity=alice) == 1
    assert admitted(p, 1, identity=Identity("alice", "key-2")) == 0  # same consumer, other credential
    assert admitted(p, 1, identity=Identity("bob", "key-3")) == 1


def test_combined_keys() -> None:
    p = policy({"limits": [limit("per-credential-route", 1, key=["credential", "route", "method_class"])]})
    key = Identity("alice", "key-1")
    assert admitted(p, 2, identity=key, method="GET") == 1
    assert admitted(p, 1, identity=key, method="POST") == 1  # another method class: another counter


def test_plans_override_rate_by_limit_name() -> None:
    p = policy({"limits": [limit("reads-per-ip", 4, key=["consumer"])],
                "plans": {"free": {"reads-per-ip": {"rate": 2}}, "pro": {"reads-per-ip": {"rate": 6, "per": "2s"}}}})
    assert admitted(p, 5, identity=Identity("a", "k", "free")) == 2
    assert admitted(p, 9, identity=Identity("b", "k", "pro")) == 6
    assert admitted(p, 9, identity=Identity("c", "k", "gold")) == 4  # unknown plan: the base limit
    assert admitted(p, 9, identity=Identity("d", "k")) == 4
    ctx = request(identity=Identity("e", "k", "pro"))
    run(p.on_request(ctx))
    assert ctx.response_headers["RateLimit-Policy"] == '"reads-per-ip";q=6;w=2'


def test_costs_by_method() -> None:
    p = policy({"limits": [limit("writes", 10, methods="write", cost={"post": 5})]})
    assert admitted(p, 3, method="POST") == 2
    assert admitted(p, 1, method="PUT") == 0


# -- headers and refusals ------------------------------------------------------------------------------------
def test_headers_exact_format() -> None:
    clock = Clock(1000.25)  # a quarter into a 1 s window
    p = policy({"limits": [limit("reads-per-ip", 10)]}, clock)
    ctx = request()
    assert run(p.on_request(ctx)) is None
    assert ctx.response_headers == {"RateLimit-Policy": '"reads-per-ip";q=10;w=1',
                                    "RateLimit": '"reads-per-ip";r=9;t=1'}
    g = policy({"limits": [limit("burst", 60, per="1m", algorithm="gcra", burst=5)]}, clock)
    ctx = request()
    run(g.on_request(ctx))
    assert ctx.response_headers == {"RateLimit-Policy": '"burst";q=60;w=60', "RateLimit": '"burst";r=4;t=1'}
    half = policy({"limits": [limit("fast", 10, per="500ms")]}, clock)
    ctx = request()
    run(half.on_request(ctx))
    assert ctx.response_headers["RateLimit-Policy"] == '"fast";q=20;w=1'  # `w` is whole seconds: quota scaled


def test_refusal_is_429_with_retry_after_and_detail() -> None:
    clock = Clock(1000.25)
    p = policy({"limits": [limit("reads-per-ip", 3, per="1m")]}, clock)
    assert admitted(p, 3) == 3
    ctx = request()
    reject = run(p.on_request(ctx))
    assert reject is not None and reject.code.code == "rate_limit.exceeded" and reject.code.status == 429
    # The window began at 960 s; its 3 hits weigh <= 2 only 1/3 into the next one: 19.75 + 20 s from now.
    assert reject.headers == {"Retry-After": "40"}
    assert reject.detail == "Limit of 3 requests per minute reached; retry after 40 s."
    assert ctx.response_headers == {"RateLimit-Policy": '"reads-per-ip";q=3;w=60',
                                    "RateLimit": '"reads-per-ip";r=0;t=40'}
    assert reject.log_reason is not None and "reads-per-ip" in reject.log_reason
    clock.now = 1100.0  # the window slid past
    assert admitted(p, 1) == 1


def test_the_most_restrictive_limit_wins_and_stops_the_others() -> None:
    store = RecordingStore()
    p = policy({"limits": [limit("per-second", 5), limit("tight", 3), limit("per-hour", 100, per="1h")]},
               counters=store)
    assert admitted(p, 3) == 3
    ctx = request()
    reject = run(p.on_request(ctx))
    assert reject is not None and reject.detail is not None and reject.detail.startswith("Limit of 3 requests")
    assert ctx.response_headers["RateLimit-Policy"] == '"per-second";q=5;w=1, "tight";q=3;w=1'
    assert ctx.response_headers["RateLimit"] == '"per-second";r=1;t=1, "tight";r=0;t=2'  # t = Retry-After
    # The refused request was not charged to the hour limit (checked after the refusing one).
    assert sum("per-hour" in key for key in store.keys) == 3
    ok = request(ip="198.51.100.7")
    assert run(p.on_request(ok)) is None
    assert ok.response_headers["RateLimit"] == ('"per-second";r=4;t=1, "tight";r=2;t=1, '
                                                '"per-hour";r=99;t=2600')


def test_requests_without_applicable_limits_get_no_headers() -> None:
    p = policy({"limits": [limit("writes", 1, methods="write")]})
    ctx = request("GET")
    assert run(p.on_request(ctx)) is None and ctx.response_headers == {}
    empty = policy({})
    assert run(empty.on_request(request())) is None


# -- shadow mode ---------------------------------------------------------------------------------------------
def test_shadow_mode_counts_and_logs_but_never_refuses(caplog: pytest.LogCaptureFixture) -> None:
    p = policy({"mode": "shadow", "limits": [limit("reads-per-ip", 2)]})
    with caplog.at_level(logging.INFO, logger="bastion.ratelimit"):
        contexts = [request() for _ in range(5)]
        assert all(run(p.on_request(ctx)) is None for ctx in contexts)
    assert "rate_limit_shadow" not in contexts[1].scratch
    assert contexts[2].scratch["rate_limit_shadow"] == "reads-per-ip"
    assert contexts[2].response_headers["RateLimit"] == '"reads-per-ip";r=0;t=2'
    shadow_logs = [r for r in caplog.records if "would refuse" in r.getMessage()]
    assert len(shadow_logs) == 1 and shadow_logs[0].levelno == logging.INFO  # throttled: one per second


# -- store failures ------------------------------------------------------------------------------------------
def test_store_failure_closed_refuses_with_503() -> None:
    store = FailingStore()
    p = policy({"limits": [limit("reads-per-ip", 10)]}, counters=store)
    ctx = request()
    reject = run(p.on_request(ctx))
    assert reject is not None and reject.code.code == "rate_limit.unavailable" and reject.code.status == 503
    assert reject.headers == {"Retry-After": "1"}
    assert ctx.scratch["rate_limit_store_failed"] is True
    assert p.store_failures == 1 and store.calls == 1


def test_store_failure_open_admits_and_counts() -> None:
    p = policy({"on_store_failure": "open", "limits": [limit("reads-per-ip", 1)]}, counters=FailingStore())
    contexts = [request() for _ in range(3)]
    assert all(run(p.on_request(ctx)) is None for ctx in contexts)
    assert all(ctx.scratch["rate_limit_failed_open"] is True for ctx in contexts)
    assert contexts[0].response_headers == {"RateLimit-Policy": '"reads-per-ip";q=1;w=1'}  # no state known
    assert p.store_failures == 3


def test_store_failure_local_limits_each_node_to_its_share() -> None:
    p = policy({"on_store_failure": "local", "nodes": 2, "limits": [limit("reads-per-ip", 10)]},
               counters=FailingStore())
    contexts = [request() for _ in range(7)]
    verdicts = [run(p.on_request(ctx)) for ctx in contexts]
    assert [v is None for v in verdicts] == [True] * 5 + [False] * 2
    refused = verdicts[5]
    assert refused is not None and refused.code.code == "rate_limit.exceeded"
    assert contexts[0].scratch["rate_limit_local"] is True
    assert contexts[0].response_headers["RateLimit"] == '"reads-per-ip";r=4;t=1'


def test_shadow_mode_never_refuses_even_when_the_store_fails() -> None:
    p = policy({"mode": "shadow", "limits": [limit("reads-per-ip", 1)]}, counters=FailingStore())
    ctx = request()
    assert run(p.on_request(ctx)) is None and ctx.scratch["rate_limit_failed_open"] is True


# -- stores and sites ----------------------------------------------------------------------------------------
def test_shared_store_keeps_sites_apart_and_survives_rebuilds() -> None:
    store = MemoryCounterStore()
    config = {"limits": [limit("reads-per-ip", 2)]}
    api_a = policy(config, counters=store, policy_site="api:a")
    api_b = policy(config, counters=store, policy_site="api:b")
    assert admitted(api_a, 3) == 2
    assert admitted(api_b, 3) == 2  # same limit name, another declaration site: another counter
    reloaded = policy(config, counters=store, policy_site="api:a")
    assert admitted(reloaded, 1) == 0  # a configuration reload does not reset the counters


def test_own_memory_store_when_none_is_given() -> None:
    p = policy({"limits": [limit("reads-per-ip", 1)]})
    assert admitted(p, 2) == 1


# -- configuration -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value, seconds", [("1s", 1.0), ("5m", 300.0), ("1h", 3600.0), ("1d", 86400.0),
                                            (2, 2.0), ("500ms", 0.5), ("1.5s", 1.5)])
def test_durations(value: object, seconds: float) -> None:
    config = RateLimitConfig.model_validate({"limits": [{"name": "x", "rate": 1, "per": value}]})
    assert config.limits[0].per == seconds


@pytest.mark.parametrize("bad", [
    {"limits": [limit("x", 1, per="1 week")]},
    {"limits": [limit("x", 1, per="0s")]},
    {"limits": [limit("x", 0)]},
    {"limits": [limit("x", 1), limit("x", 2)]},
    {"limits": [limit("x", 1, burst=5)]},  # burst is gcra only
    {"limits": [limit("x", 1, key=["cookie"])]},
    {"limits": [limit("x", 1, key=["header:Bad Name"])]},
    {"limits": [limit("x", 1, key=["ip", "ip"])]},
    {"limits": [limit("x", 10, cost={"POST": 11})]},  # could never pass
    {"limits": [limit("x", 10, methods="read", cost={"POST": 2})]},
    {"limits": [limit("x", 10, cost={"BREW": 2})]},
    {"limits": [limit("x", 10, algorithm="gcra", burst=2, cost={"POST": 3})]},
    {"limits": [limit("x", 10, cost={"POST": 5})], "plans": {"free": {"x": {"rate": 4}}}},
    {"limits": [limit("x", 10)], "plans": {"free": {"y": {"rate": 4}}}},
    {"limits": [limit("x", 10)], "plans": {"free": {"x": {"rate": 4, "burst": 2}}}},
    {"limits": [limit("x", 10)], "unknown": True},
    {"mode": "warn"},
    {"on_store_failure": "ignore"},
])
def test_invalid_configurations(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        RateLimitConfig.model_validate(bad)


def test_every_field_is_described() -> None:
    from bastion.policies.rate_limit.config import LimitConfig, PlanLimit

    for model in (RateLimitConfig, LimitConfig, PlanLimit):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name}"


def test_registered_as_a_limit_stage_policy() -> None:
    policy_type = builtin_policy_types()["rate-limit"]
    assert policy_type.stage is Stage.LIMIT
    built = policy_type.factory(RateLimitConfig.model_validate({"limits": [limit("a", 1)]}),
                                PolicyServices(Clock()))
    assert isinstance(built, RateLimitPolicy) and built.name == "rate-limit"


def test_period_descriptions() -> None:
    assert describe_period(1.0) == "second"
    assert describe_period(300.0) == "5 minutes"
    assert describe_period(3600.0) == "hour"
    assert describe_period(172800.0) == "2 days"
    assert describe_period(0.5) == "500 ms"
    assert describe_period(1.5) == "1.5 seconds"
