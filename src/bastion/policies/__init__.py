"""Built-in policies. Each lives in its own package: config.py (schema) + policy.py (behaviour)."""

from __future__ import annotations

from bastion.pipeline.policy import PolicyType


def builtin_policy_types() -> dict[str, PolicyType]:
    """The registry of built-in policies, built on demand (no import-time global state)."""
    from bastion.policies.ip_allow.policy import POLICY_TYPE as IP_ALLOW
    from bastion.policies.key_auth.policy import POLICY_TYPE as KEY_AUTH
    from bastion.policies.rate_limit.policy import POLICY_TYPE as RATE_LIMIT
    from bastion.policies.security_headers.policy import POLICY_TYPE as SECURITY_HEADERS

    types = [IP_ALLOW, KEY_AUTH, RATE_LIMIT, SECURITY_HEADERS]
    return {t.name: t for t in types}


__all__ = ["builtin_policy_types"]
