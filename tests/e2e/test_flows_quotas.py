"""Business flows and quotas through real gateway processes, with API keys of consumers on plans and the
memory counter store: a checkout flow per consumer and per address with its refusals in /metrics, and a
daily quota counting down in headers to a 429 that says when the day ends."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from tests.support.identity import StoreHandle
from tests.support.processes import Gateway, Upstream, assert_safe_problem, base_config

OTHER_IP = "127.0.0.2"  # a second client address: Linux routes all of 127.0.0.0/8 to the loopback
DAY = 86400


def keyed_config(upstream_url: str, policies: dict[str, Any]) -> dict[str, Any]:
    """v1 behind key-auth (its routes need `echo:use`), with `policies` on the echo route."""
    config = base_config(upstream_url)
    v1 = config["apis"][0]
    v1["public"] = False
    v1["policies"] = {"key-auth": {}}
    for route in v1["routes"]:
        route["permissions"] = ["echo:use"]
        if route["name"] == "echo":
            route["policies"] = policies
    return config


def consumers(gateway: Gateway, config: dict[str, Any], plans: dict[str, str | None]) -> dict[str, str]:
    """An API key per consumer name, each consumer on its plan."""
    store = StoreHandle(config, gateway.config_path.parent)
    store.role("user", ["echo:use"])
    return {name: store.key(store.consumer(name, ["user"], plan=plan), "write")[0] for name, plan in plans.items()}


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@contextmanager
def client_from(gateway: Gateway, local_address: str) -> Iterator[httpx.Client]:
    transport = httpx.HTTPTransport(local_address=local_address)
    with httpx.Client(base_url=gateway.url, transport=transport, timeout=10.0) as client:
        yield client


def statuses(responses: list[httpx.Response]) -> list[int]:
    return [r.status_code for r in responses]


def flow_events(gateway: Gateway) -> dict[str, float]:
    """`bastion_policy_events_total` of the checkout flow, by event (labels in any order)."""
    text = httpx.get(gateway.admin_url + "/metrics", timeout=5.0).text
    found: dict[str, float] = {}
    for labels, value in re.findall(r"^bastion_policy_events_total\{([^}]*)\} (\S+)$", text, re.MULTILINE):
        parsed = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if parsed.get("policy") == "business-flow" and parsed.get("name") == "checkout":
            found[parsed["event"]] = float(value)
    return found


def test_checkout_flow_per_consumer_per_address_and_metrics(make_gateway: Callable[..., Gateway],
                                                             upstream: Upstream) -> None:
    config = keyed_config(upstream.url, {"business-flow": {
        "name": "checkout", "require_consumer": True,
        "per_consumer": {"rate": 5, "per": "1m"}, "per_address": {"rate": 8, "per": "1m"},
    }})
    gateway = make_gateway(config)
    keys = consumers(gateway, config, {"alice": None, "bob": "pro"})
    with gateway.client() as client:
        alice = [client.post("/v1/echo", json={"cart": 1}, headers=bearer(keys["alice"])) for _ in range(6)]
        assert statuses(alice) == [200] * 5 + [429]
        body = assert_safe_problem(alice[5], "flow.limit_exceeded")
        assert body["title"] == "Business flow limit exceeded"
        assert "'checkout'" in body["detail"] and "cart" not in body["detail"]
        assert 1 <= int(alice[5].headers["retry-after"]) <= 120  # a sliding window: up to two windows
        assert "ratelimit" not in alice[0].headers  # no budget shown to a flow's callers
        # bob, another consumer, still passes ... until this address has made 8 attempts
        bob = [client.post("/v1/echo", json={}, headers=bearer(keys["bob"])) for _ in range(4)]
        assert statuses(bob) == [200, 200, 200, 429]
        assert_safe_problem(bob[3], "flow.limit_exceeded")
        assert client.post("/v1/echo", json={}).status_code == 401  # anonymous: key-auth answers first
    with client_from(gateway, OTHER_IP) as other:
        assert other.post("/v1/echo", json={}, headers=bearer(keys["bob"])).status_code == 200  # another address
    deadline = time.monotonic() + 5  # events are counted once each exchange is over
    while sum(flow_events(gateway).values()) < 11 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert flow_events(gateway) == {"admitted": 9.0, "refused": 2.0}
    records = gateway.wait_access_log(11)
    refused = [r for r in records if r["status"] == 429]
    assert len(refused) == 2 and all(r["reject_code"] == "flow.limit_exceeded" for r in refused)


def test_daily_quota_counts_down_to_a_429_until_midnight_utc(make_gateway: Callable[..., Gateway],
                                                             upstream: Upstream) -> None:
    config = keyed_config(upstream.url, {"quota": {"period": "day", "limit": 10, "plans": {"free": 3}}})
    gateway = make_gateway(config)
    keys = consumers(gateway, config, {"frugal": "free", "other": None})
    before = math.ceil(DAY - time.time() % DAY)
    with gateway.client() as client:
        responses = [client.get("/v1/echo", headers=bearer(keys["frugal"])) for _ in range(4)]
        other = client.get("/v1/echo", headers=bearer(keys["other"]))
    after = math.ceil(DAY - time.time() % DAY)
    assert statuses(responses) == [200, 200, 200, 429]
    assert [r.headers["quota-remaining"] for r in responses] == ["2", "1", "0", "0"]
    assert all(r.headers["quota-limit"] == "3" for r in responses)
    resets = [int(r.headers["quota-reset"]) for r in responses]
    # Seconds until midnight UTC (a test that runs across midnight would see a new day: allow it).
    assert all(after - 1 <= reset <= before or reset > DAY - 60 for reset in resets), (before, resets, after)
    refusal = responses[3]
    assert_safe_problem(refusal, "quota.exceeded")
    assert refusal.headers["retry-after"] == refusal.headers["quota-reset"]
    assert (other.status_code, other.headers["quota-limit"], other.headers["quota-remaining"]) == (200, "10", "9")
