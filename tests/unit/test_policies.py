from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import ValidationError

from bastion.pipeline.context import Headers, RequestContext, ResponseHead
from bastion.pipeline.policy import PolicyServices, Stage
from bastion.policies import builtin_policy_types
from bastion.policies.ip_allow.config import IpAllowConfig
from bastion.policies.ip_allow.policy import IpAllowPolicy
from bastion.policies.security_headers.config import SecurityHeadersConfig
from bastion.policies.security_headers.policy import SecurityHeadersPolicy


def ctx(ip: str) -> RequestContext:
    return RequestContext(request_id="r1", client_ip=ip, method="GET", path="/", query="", host="h",
                          headers=Headers(), tls=True, started=time.monotonic())


def verdict(policy: IpAllowPolicy, ip: str) -> str | None:
    reject = asyncio.run(policy.on_request(ctx(ip)))
    return None if reject is None else reject.code.code


# Policies that have no meaning without some settings (a flow needs a name and a limit, a quota its size).
MINIMAL_CONFIGS: dict[str, dict[str, object]] = {
    "business-flow": {"name": "checkout", "global": {"rate": 10, "per": "1m"}},
    "quota": {"period": "day", "limit": 1000},
}


def test_registry_builds_each_policy_from_its_config() -> None:
    types = builtin_policy_types()
    assert {"ip-allow", "key-auth", "rate-limit", "security-headers"} <= set(types)
    for policy_type in types.values():
        services = PolicyServices(time.monotonic, extras={"check_only": True})
        config = policy_type.config_model.model_validate(MINIMAL_CONFIGS.get(policy_type.name, {}))
        policy = policy_type.factory(config, services)
        assert policy.name == policy_type.name and policy.stage == policy_type.stage
    assert types["ip-allow"].stage == Stage.GUARD


def test_allow_list_denies_everything_else() -> None:
    policy = IpAllowPolicy(IpAllowConfig(allow=["10.0.0.0/8", "2001:db8::/32"]))
    assert verdict(policy, "10.1.2.3") is None
    assert verdict(policy, "2001:db8::1") is None
    assert verdict(policy, "11.0.0.1") == "access.ip_denied"
    assert verdict(policy, "::1") == "access.ip_denied"
    assert verdict(policy, "not-an-ip") == "access.ip_denied"


def test_deny_wins_over_allow_and_ipv4_mapped_addresses_are_unwrapped() -> None:
    policy = IpAllowPolicy(IpAllowConfig(allow=["10.0.0.0/8"], deny=["10.9.0.0/16"]))
    assert verdict(policy, "10.9.1.1") == "access.ip_denied"
    assert verdict(policy, "::ffff:10.9.1.1") == "access.ip_denied"
    assert verdict(policy, "::ffff:10.1.1.1") is None


def test_empty_lists_allow_all_and_verdicts_are_cached_consistently() -> None:
    policy = IpAllowPolicy(IpAllowConfig())
    for _ in range(3):
        assert verdict(policy, "203.0.113.9") is None


def test_bad_cidr_is_a_config_error() -> None:
    with pytest.raises(ValidationError):
        IpAllowConfig(allow=["10.0.0.0/33"])
    with pytest.raises(ValidationError):
        IpAllowConfig.model_validate({"allow": [], "unknown": 1})


def test_security_headers_override_upstream_values_and_keep_cache_control() -> None:
    policy = SecurityHeadersPolicy(SecurityHeadersConfig(extra={"X-Api": "1"}))
    head = ResponseHead(200, Headers([(b"x-frame-options", b"ALLOWALL"), (b"cache-control", b"max-age=60")]))
    policy.on_response(ctx("1.2.3.4"), head)
    assert head.headers.get_all("x-frame-options") == ["DENY"]
    assert head.headers.get("x-content-type-options") == "nosniff"
    assert head.headers.get("cache-control") == "max-age=60"
    assert head.headers.get("x-api") == "1"
    bare = ResponseHead(200, Headers())
    policy.on_response(ctx("1.2.3.4"), bare)
    assert bare.headers.get("cache-control") == "no-store"
