"""The concurrency policy with injected request contexts: slots taken, refused over the cap, given back."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import ValidationError

from bastion.pipeline.context import Headers, RequestContext
from bastion.pipeline.policy import PolicyServices, Reject, Stage
from bastion.policies import builtin_policy_types
from bastion.policies.concurrency.config import ConcurrencyConfig
from bastion.policies.concurrency.policy import ConcurrencyPolicy, SlotTables


@dataclass
class Identity:
    consumer_id: str
    credential_id: str
    plan: str | None = None


def policy(config: dict[str, Any], **extras: Any) -> ConcurrencyPolicy:
    return ConcurrencyPolicy(ConcurrencyConfig.model_validate(config), PolicyServices(time.monotonic, extras))


def request(ip: str = "203.0.113.9", identity: Identity | None = None) -> RequestContext:
    return RequestContext(request_id="r1", client_ip=ip, method="GET", path="/slow", query="", host="api",
                          headers=Headers(), tls=True, started=0.0, identity=identity)


def finish(ctx: RequestContext) -> None:
    """What the gateway does when the exchange ends, whatever its outcome."""
    for cleanup in ctx.cleanups or ():
        cleanup()
    ctx.cleanups = None


def start(p: ConcurrencyPolicy, count: int, **kwargs: Any) -> tuple[list[RequestContext], list[Reject]]:
    admitted: list[RequestContext] = []
    refused: list[Reject] = []
    for _ in range(count):
        ctx = request(**kwargs)
        outcome = p.try_sync(ctx)
        if outcome is None:
            admitted.append(ctx)
        else:
            assert isinstance(outcome, Reject)
            assert ctx.cleanups is None  # a refused request holds nothing
            refused.append(outcome)
    return admitted, refused


def test_caps_requests_in_flight_and_admits_again_once_they_end() -> None:
    p = policy({"limits": [{"name": "per-ip", "max": 2}]})
    admitted, refused = start(p, 5)
    assert len(admitted) == 2 and len(refused) == 3
    reject = refused[0]
    assert reject.code.code == "concurrency.exceeded" and reject.code.status == 429
    assert reject.code.title == "Too many concurrent requests"
    assert dict(reject.headers) == {"Retry-After": "1"}
    assert reject.detail is not None and "203.0.113.9" not in reject.detail and "per-ip" in reject.detail
    assert p.in_flight("per-ip") == 2
    finish(admitted[0])
    again, refused = start(p, 2)
    assert len(again) == 1 and len(refused) == 1
    for ctx in admitted[1:] + again:
        finish(ctx)
    assert p.in_flight("per-ip") == 0
    assert p._limits[0].counts == {}  # idle keys take no memory


def test_each_client_address_has_its_own_slots_and_ipv6_counts_per_64() -> None:
    p = policy({"limits": [{"name": "per-ip", "max": 1}]})
    assert len(start(p, 2, ip="198.51.100.1")[0]) == 1
    assert len(start(p, 2, ip="198.51.100.2")[0]) == 1
    assert len(start(p, 1, ip="::ffff:198.51.100.1")[0]) == 0  # the same client as 198.51.100.1
    assert len(start(p, 1, ip="2001:db8:1:2::1")[0]) == 1
    assert len(start(p, 1, ip="2001:db8:1:2:ffff::9")[0]) == 0  # the same /64


def test_consumer_key_counts_the_caller_and_falls_back_to_the_address_when_anonymous() -> None:
    p = policy({"limits": [{"name": "per-consumer", "key": ["consumer"], "max": 1}]})
    alice = Identity("c-alice", "k-1")
    assert len(start(p, 1, ip="198.51.100.1", identity=alice)[0]) == 1
    assert len(start(p, 1, ip="198.51.100.2", identity=Identity("c-alice", "k-2"))[0]) == 0  # same consumer
    assert len(start(p, 1, ip="198.51.100.1", identity=Identity("c-bob", "k-3"))[0]) == 1
    # Anonymous: counted by address, never sharing a slot with a consumer whose id looks like an address.
    assert len(start(p, 2, ip="198.51.100.1")[0]) == 1
    assert len(start(p, 1, identity=Identity("anonymous|203.0.113.9", "k-4"))[0]) == 1
    assert len(start(p, 1, ip="203.0.113.9")[0]) == 1


def test_credential_and_combined_keys() -> None:
    p = policy({"limits": [{"name": "per-key", "key": ["credential"], "max": 1}]})
    assert len(start(p, 2, identity=Identity("c-1", "k-1"))[0]) == 1
    assert len(start(p, 1, identity=Identity("c-1", "k-2"))[0]) == 1  # another credential of the same consumer
    both = policy({"limits": [{"name": "ip-and-consumer", "key": ["ip", "consumer"], "max": 1}]})
    assert len(start(both, 1, ip="198.51.100.1", identity=Identity("c-1", "k-1"))[0]) == 1
    assert len(start(both, 1, ip="198.51.100.2", identity=Identity("c-1", "k-1"))[0]) == 1
    assert len(start(both, 1, ip="198.51.100.1", identity=Identity("c-1", "k-2"))[0]) == 0


def test_a_request_refused_by_a_later_limit_gives_back_the_slots_of_earlier_ones() -> None:
    p = policy({"limits": [{"name": "per-ip", "max": 10}, {"name": "per-consumer", "key": ["consumer"], "max": 1}]})
    alice = Identity("c-alice", "k-1")
    held, _ = start(p, 1, identity=alice)
    _, refused = start(p, 3, identity=alice)
    assert len(refused) == 3 and "per-consumer" in (refused[0].detail or "")
    assert p.in_flight("per-ip") == 1  # the refused requests did not keep their per-ip slots
    finish(held[0])
    assert p.in_flight("per-ip") == 0 and p.in_flight("per-consumer") == 0


def test_slots_are_released_once_by_the_finish_callbacks() -> None:
    p = policy({"limits": [{"name": "per-ip", "max": 1}]})
    (ctx,), _ = start(p, 1)
    assert ctx.cleanups is not None and len(ctx.cleanups) == 1
    finish(ctx)
    finish(ctx)  # the gateway clears the callbacks after running them
    assert p.in_flight("per-ip") == 0
    assert len(start(p, 2)[0]) == 1


def test_on_request_matches_try_sync() -> None:
    p = policy({"limits": [{"name": "per-ip", "max": 1}]})
    first, second = request(), request()
    assert asyncio.run(p.on_request(first)) is None
    reject = asyncio.run(p.on_request(second))
    assert reject is not None and reject.code.code == "concurrency.exceeded"


def test_shared_tables_keep_counting_across_a_reload() -> None:
    tables = SlotTables()
    old = policy({"limits": [{"name": "per-ip", "max": 1}]}, concurrency_slots=tables, policy_site="route:a.b")
    (held,), _ = start(old, 1)
    new = policy({"limits": [{"name": "per-ip", "max": 1}]}, concurrency_slots=tables, policy_site="route:a.b")
    assert len(start(new, 1)[0]) == 0  # the request admitted under the old configuration still counts
    other_site = policy({"limits": [{"name": "per-ip", "max": 1}]}, concurrency_slots=tables,
                        policy_site="route:a.c")
    assert len(start(other_site, 1)[0]) == 1
    finish(held)
    assert len(start(new, 1)[0]) == 1


def test_without_limits_nothing_is_held() -> None:
    p = policy({})
    ctx = request()
    assert p.try_sync(ctx) is None and ctx.cleanups is None


@pytest.mark.parametrize("config", [
    {"limits": [{"name": "a", "max": 0}]},
    {"limits": [{"name": "a", "max": 1, "key": ["route"]}]},
    {"limits": [{"name": "a", "max": 1, "key": ["ip", "ip"]}]},
    {"limits": [{"name": "a", "max": 1}, {"name": "a", "max": 2}]},
    {"limits": [{"name": "a", "max": 1, "extra": True}]},
])
def test_invalid_configurations_are_refused(config: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ConcurrencyConfig.model_validate(config)


def test_registered_as_a_limit_stage_policy() -> None:
    policy_type = builtin_policy_types()["concurrency"]
    assert policy_type.stage is Stage.LIMIT and policy_type.config_model is ConcurrencyConfig
    built = policy_type.factory(ConcurrencyConfig.model_validate({"limits": [{"name": "a", "max": 1}]}),
                                PolicyServices(time.monotonic))
    assert isinstance(built, ConcurrencyPolicy) and not built.needs_body
