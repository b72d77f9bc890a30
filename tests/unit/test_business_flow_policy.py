"""The business-flow policy on a memory store and an injected clock: per-consumer, per-address and global
velocity limits, anonymous callers, events, store failures and configuration errors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from bastion.config.loader import ConfigError, load_config
from bastion.errors.codes import FLOW_CONSUMER_REQUIRED, FLOW_LIMIT_EXCEEDED, RATE_LIMIT_UNAVAILABLE
from bastion.pipeline.compiler import compile_config
from bastion.pipeline.context import Headers, RequestContext
from bastion.pipeline.policy import PENDING, PolicyServices, Reject, Stage
from bastion.policies import builtin_policy_types
from bastion.policies.business_flow.config import BusinessFlowConfig
from bastion.policies.business_flow.policy import BusinessFlowPolicy
from bastion.proxy.cluster import UpstreamCluster
from bastion.ratelimit.algorithms import Decision, RuleSpec
from bastion.ratelimit.memory import MemoryCounterStore
from bastion.ratelimit.store import CounterStoreError


class Clock:
    def __init__(self, now: float = 5000.5) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Identity:
    consumer_id: str
    credential_id: str = "key-1"
    plan: str | None = None


class FailingStore:
    async def hit(self, key: str, rule: RuleSpec, cost: int, now: float) -> Decision:
        raise CounterStoreError("redis ConnectionError: connection refused")

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


def flow(config: dict[str, Any], clock: Clock | None = None, **extras: Any) -> BusinessFlowPolicy:
    return BusinessFlowPolicy(BusinessFlowConfig.model_validate({"name": "checkout", **config}),
                              PolicyServices(clock or Clock(), extras))


def request(consumer: str | None = None, ip: str = "203.0.113.9") -> RequestContext:
    return RequestContext(request_id="r1", client_ip=ip, method="POST", path="/checkout", query="", host="api",
                          headers=Headers([(b"x-note", b"<script>")]), tls=True, started=0.0,
                          identity=None if consumer is None else Identity(consumer))


def attempts(policy: BusinessFlowPolicy, count: int, **kwargs: Any) -> list[Reject | None]:
    return [run(policy.on_request(request(**kwargs))) for _ in range(count)]


def admitted(policy: BusinessFlowPolicy, count: int, **kwargs: Any) -> int:
    return sum(result is None for result in attempts(policy, count, **kwargs))


# -- limits --------------------------------------------------------------------------------------------------
def test_per_consumer_refuses_the_sixth_attempt_and_other_consumers_pass() -> None:
    policy = flow({"per_consumer": {"rate": 5, "per": "1m"}})
    results = attempts(policy, 6, consumer="alice")
    assert results[:5] == [None] * 5
    refusal = results[5]
    assert isinstance(refusal, Reject) and refusal.code is FLOW_LIMIT_EXCEEDED
    assert refusal.code.status == 429 and refusal.code.title == "Business flow limit exceeded"
    wait = int(refusal.headers["Retry-After"])
    assert 1 <= wait <= 60
    assert refusal.detail == f"Too many attempts at the business flow 'checkout'; retry after {wait} s."
    assert refusal.log_reason is not None and "consumer limit of 5 per minute" in refusal.log_reason
    assert admitted(policy, 5, consumer="bob") == 5


def test_the_window_slides_on_the_injected_clock() -> None:
    clock = Clock()
    policy = flow({"per_consumer": {"rate": 2, "per": "10s"}}, clock)
    assert admitted(policy, 3, consumer="alice") == 2
    clock.now += 10.0  # the previous window still weighs fully at its end
    assert admitted(policy, 1, consumer="alice") == 0
    clock.now += 10.0
    assert admitted(policy, 3, consumer="alice") == 2


def test_per_address_ceiling_applies_across_consumers_and_anonymous_callers() -> None:
    policy = flow({"per_consumer": {"rate": 5, "per": "1m"}, "per_address": {"rate": 8, "per": "1m"}})
    assert admitted(policy, 6, consumer="alice") == 5  # the 6th is refused per consumer: not charged per address
    assert admitted(policy, 4, consumer="bob") == 3  # 8 from this address
    assert admitted(policy, 1) == 0  # anonymous: the address limit still applies
    assert admitted(policy, 1, consumer="bob", ip="198.51.100.7") == 1  # another address
    assert admitted(policy, 1, consumer="carol", ip="::ffff:203.0.113.9") == 0  # the same client, IPv4-mapped


def test_ipv6_clients_are_counted_per_64() -> None:
    policy = flow({"per_address": {"rate": 2, "per": "1m"}})
    assert admitted(policy, 1, ip="2001:db8:1:2::1") == 1
    assert admitted(policy, 2, ip="2001:db8:1:2::ffff") == 1
    assert admitted(policy, 1, ip="2001:db8:1:3::1") == 1


def test_global_ceiling_counts_every_caller_together() -> None:
    policy = flow({"per_consumer": {"rate": 3, "per": "1m"}, "global": {"rate": 4, "per": "1h"}})
    assert admitted(policy, 3, consumer="alice") == 3
    assert admitted(policy, 3, consumer="bob", ip="198.51.100.7") == 1
    refusal = run(policy.on_request(request("carol", "192.0.2.1")))
    assert isinstance(refusal, Reject) and refusal.code is FLOW_LIMIT_EXCEEDED
    assert refusal.log_reason is not None and "global limit of 4 per hour" in refusal.log_reason


def test_refused_attempts_do_not_spend_the_wider_budgets() -> None:
    policy = flow({"per_consumer": {"rate": 1, "per": "1m"}, "global": {"rate": 3, "per": "1m"}})
    assert admitted(policy, 10, consumer="bot") == 1  # nine refusals per consumer
    assert admitted(policy, 3, consumer="alice") == 1
    assert admitted(policy, 1, consumer="bob") == 1  # the global budget of 3 was spent by admitted attempts only


def test_routes_declaring_the_same_flow_count_together() -> None:
    store = MemoryCounterStore()
    v1 = flow({"per_consumer": {"rate": 3, "per": "1m"}}, counters=store, policy_site="route:shop-v1.checkout")
    v2 = flow({"per_consumer": {"rate": 3, "per": "1m"}}, counters=store, policy_site="route:shop-v2.checkout")
    assert admitted(v1, 2, consumer="alice") == 2
    assert admitted(v2, 2, consumer="alice") == 1
    other = BusinessFlowPolicy(BusinessFlowConfig.model_validate({"name": "signup", "per_consumer": {
        "rate": 3, "per": "1m"}}), PolicyServices(Clock(), {"counters": store}))
    assert admitted(other, 3, consumer="alice") == 3  # another flow, another budget


# -- who may enter -------------------------------------------------------------------------------------------
def test_require_consumer_refuses_anonymous_callers_before_counting() -> None:
    policy = flow({"require_consumer": True, "per_address": {"rate": 1, "per": "1m"}})
    ctx = request()
    refusal = run(policy.on_request(ctx))
    assert isinstance(refusal, Reject) and refusal.code is FLOW_CONSUMER_REQUIRED
    assert refusal.code.status == 403
    assert refusal.detail is not None and "'checkout'" in refusal.detail and "<script>" not in refusal.detail
    assert ctx.events == [("business-flow", "refused", "checkout")]
    assert admitted(policy, 1, consumer="alice") == 1  # the refusal spent nothing of the address budget


def test_anonymous_callers_skip_the_consumer_limit_without_require_consumer() -> None:
    policy = flow({"per_consumer": {"rate": 1, "per": "1m"}})
    assert admitted(policy, 5) == 5


# -- events --------------------------------------------------------------------------------------------------
def test_every_outcome_is_recorded_under_the_flow_name() -> None:
    policy = flow({"per_consumer": {"rate": 1, "per": "1m"}})
    first, second = request("alice"), request("alice")
    assert run(policy.on_request(first)) is None
    assert isinstance(run(policy.on_request(second)), Reject)
    assert first.events == [("business-flow", "admitted", "checkout")]
    assert second.events == [("business-flow", "refused", "checkout")]
    assert first.response_headers == {} and second.response_headers == {}  # no budget shown to clients


# -- store failures ------------------------------------------------------------------------------------------
def test_store_failure_fails_closed_by_default() -> None:
    policy = flow({"per_address": {"rate": 5, "per": "1m"}}, counters=FailingStore())
    ctx = request("alice")
    refusal = asyncio.run(policy.on_request(ctx))
    assert isinstance(refusal, Reject) and refusal.code is RATE_LIMIT_UNAVAILABLE
    assert refusal.headers == {"Retry-After": "1"}
    assert ctx.events == [("business-flow", "unavailable", "checkout")]
    assert policy.store_failures == 1


def test_store_failure_open_admits_unchecked() -> None:
    policy = flow({"per_address": {"rate": 1, "per": "1m"}, "on_store_failure": "open"}, counters=FailingStore())
    contexts = [request("alice") for _ in range(3)]
    assert [asyncio.run(policy.on_request(ctx)) for ctx in contexts] == [None] * 3
    assert contexts[0].events == [("business-flow", "unchecked", "checkout")]


def test_store_failure_local_counts_a_share_per_node() -> None:
    policy = flow({"per_address": {"rate": 6, "per": "1m"}, "on_store_failure": "local", "nodes": 3},
                  counters=FailingStore())
    contexts = [request("alice") for _ in range(3)]
    results = [asyncio.run(policy.on_request(ctx)) for ctx in contexts]
    assert results[:2] == [None, None]
    assert isinstance(results[2], Reject) and results[2].code is FLOW_LIMIT_EXCEEDED
    assert contexts[0].events == [("business-flow", "local", "checkout"), ("business-flow", "admitted", "checkout")]


def test_memory_store_decides_synchronously_and_other_stores_do_not() -> None:
    policy = flow({"per_consumer": {"rate": 1, "per": "1m"}})
    assert policy.try_sync(request("alice")) is None
    refusal = policy.try_sync(request("alice"))
    assert isinstance(refusal, Reject) and refusal.code is FLOW_LIMIT_EXCEEDED
    assert flow({"per_consumer": {"rate": 1, "per": "1m"}}, counters=FailingStore()).try_sync(
        request("alice")) is PENDING


# -- configuration -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [
    {"name": "checkout"},  # no limit at all
    {"name": "Checkout!", "global": {"rate": 1, "per": "1m"}},
    {"name": "checkout", "global_": {"rate": 1, "per": "1m"}},  # the field is spelt `global`
    {"name": "checkout", "per_consumer": {"rate": 0, "per": "1m"}},
    {"name": "checkout", "per_consumer": {"rate": 1, "per": "soon"}},
    {"name": "checkout", "per_consumer": {"rate": 1, "per": "1m"}, "require": ["sms_otp"]},
    {"name": "checkout", "per_consumer": {"rate": 1, "per": "1m"}, "on_store_failure": "maybe"},
])
def test_invalid_configurations(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        BusinessFlowConfig.model_validate(bad)


@pytest.mark.parametrize("requirement", ["recent_passkey", "verified_consumer"])
def test_declared_requirements_are_refused_until_available(requirement: str) -> None:
    with pytest.raises(ValidationError, match="not available yet"):
        BusinessFlowConfig.model_validate({"name": "checkout", "per_consumer": {"rate": 1, "per": "1m"},
                                           "require": [requirement]})


def test_requirements_are_reported_at_config_load_with_their_location(tmp_path: Path) -> None:
    config = {
        "server": {"https": {"enabled": False}},
        "upstreams": {"up": {"targets": [{"url": "http://127.0.0.1:1"}]}},
        "apis": [{"name": "shop", "base_path": "/v1", "upstream": "up", "public": True,
                  "routes": [{"name": "checkout", "path": "/checkout", "methods": ["POST"], "policies": {
                      "business-flow": {"name": "checkout", "per_consumer": {"rate": 5, "per": "1m"},
                                        "require": ["recent_passkey"]}}}]}],
    }
    path = tmp_path / "bastion.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))

    async def compile_it() -> None:
        loop = asyncio.get_running_loop()
        cfg, doc = load_config(path)
        compile_config(cfg, doc, generation=1, registry=builtin_policy_types(),
                       services=PolicyServices(time.monotonic),
                       clusters=lambda name, up: UpstreamCluster(name, up, loop))

    with pytest.raises(ConfigError) as caught:
        asyncio.run(compile_it())
    text = str(caught.value)
    assert "apis[0].routes[0].policies.business-flow.require" in text
    assert "recent_passkey: not available yet" in text


def test_every_field_is_described_and_the_policy_is_registered() -> None:
    from bastion.policies.business_flow.config import VelocityLimit

    for model in (BusinessFlowConfig, VelocityLimit):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name}"
    policy_type = builtin_policy_types()["business-flow"]
    assert policy_type.stage is Stage.LIMIT
    built = policy_type.factory(BusinessFlowConfig.model_validate({"name": "a", "global": {"rate": 1, "per": 1}}),
                                PolicyServices(Clock()))
    assert isinstance(built, BusinessFlowPolicy) and built.name == "business-flow"
