"""OWASP REST security headers on every response (the upstream's values are overridden)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel

from bastion.pipeline.context import RequestContext, ResponseHead
from bastion.pipeline.policy import BasePolicy, PolicyServices, PolicyType, Stage
from bastion.policies.security_headers.config import SecurityHeadersConfig


class SecurityHeadersPolicy(BasePolicy):
    name: ClassVar[str] = "security-headers"
    stage: ClassVar[Stage] = Stage.TRANSFORM
    Config: ClassVar[type[BaseModel]] = SecurityHeadersConfig
    has_request_hook: ClassVar[bool] = False
    has_response_hook: ClassVar[bool] = True

    def __init__(self, config: SecurityHeadersConfig) -> None:
        fixed: list[tuple[bytes, bytes]] = []
        if config.content_type_options:
            fixed.append((b"x-content-type-options", b"nosniff"))
        for name, value in (("x-frame-options", config.frame_options),
                            ("content-security-policy", config.content_security_policy),
                            ("referrer-policy", config.referrer_policy),
                            ("cross-origin-resource-policy", config.cross_origin_resource_policy)):
            if value is not None:
                fixed.append((name.encode(), value.encode("latin-1")))
        for name, value in config.extra.items():
            fixed.append((name.lower().encode("latin-1"), value.encode("latin-1")))
        self._fixed = fixed
        self._names = frozenset(n for n, _ in fixed)
        self._cache_control = config.cache_control.encode("latin-1") if config.cache_control else None

    def on_response(self, ctx: RequestContext, response: ResponseHead) -> None:
        headers = response.headers
        headers.replace(self._fixed, self._names)
        if self._cache_control is not None and not any(n == b"cache-control" for n, _ in headers.items):
            headers.items.append((b"cache-control", self._cache_control))


def _build(config: BaseModel, services: PolicyServices) -> BasePolicy:
    assert isinstance(config, SecurityHeadersConfig)
    return SecurityHeadersPolicy(config)


POLICY_TYPE = PolicyType("security-headers", Stage.TRANSFORM, SecurityHeadersConfig, _build,
                         "Add OWASP-recommended security headers to every response.")
