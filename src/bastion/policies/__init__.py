"""Built-in policies. Each lives in its own package: config.py (schema) + policy.py (behaviour)."""

from __future__ import annotations

from bastion.pipeline.policy import PolicyType


def builtin_policy_types() -> dict[str, PolicyType]:
    """The registry of built-in policies, built on demand (no import-time global state)."""
    from bastion.policies.business_flow.policy import POLICY_TYPE as BUSINESS_FLOW
    from bastion.policies.concurrency.policy import POLICY_TYPE as CONCURRENCY
    from bastion.policies.ip_allow.policy import POLICY_TYPE as IP_ALLOW
    from bastion.policies.json_limits.policy import POLICY_TYPE as JSON_LIMITS
    from bastion.policies.key_auth.policy import POLICY_TYPE as KEY_AUTH
    from bastion.policies.oauth2.policy import POLICY_TYPE as OAUTH2
    from bastion.policies.query_limits.policy import POLICY_TYPE as QUERY_LIMITS
    from bastion.policies.quota.policy import POLICY_TYPE as QUOTA
    from bastion.policies.rate_limit.policy import POLICY_TYPE as RATE_LIMIT
    from bastion.policies.security_headers.policy import POLICY_TYPE as SECURITY_HEADERS

    types = [BUSINESS_FLOW, CONCURRENCY, IP_ALLOW, JSON_LIMITS, KEY_AUTH, OAUTH2, QUERY_LIMITS, QUOTA, RATE_LIMIT,
             SECURITY_HEADERS]
    return {t.name: t for t in types}


__all__ = ["builtin_policy_types"]
