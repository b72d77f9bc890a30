"""The immutable result of compiling a configuration: what one request pins for its whole life."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from bastion.config.model import GatewayConfig, Lifecycle
from bastion.pipeline.policy import BasePolicy
from bastion.proxy.cluster import UpstreamCluster
from bastion.routing.router import Router

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True, eq=False)
class CompiledRoute:
    name: str
    api: str
    api_version: str | None
    lifecycle: Lifecycle
    template: str
    upstream: UpstreamCluster
    request_policies: tuple[BasePolicy, ...]
    response_policies: tuple[BasePolicy, ...]  # already in reverse stage order
    max_body_bytes: int
    mask_upstream_errors: bool
    strip_prefix: str
    preserve_host: bool


@dataclass(frozen=True, slots=True, eq=False)
class CompiledConfig:
    generation: int
    config: GatewayConfig
    router: Router[CompiledRoute]
    clusters: dict[str, UpstreamCluster]
    trusted_proxies: tuple[IpNetwork, ...]
    source: str = ""
    routes: tuple[CompiledRoute, ...] = field(default_factory=tuple)
    # (host, method, path) -> router outcome; bounded by the handler. Paths repeat far more than they vary.
    match_cache: dict[tuple[str, str, str], object] = field(default_factory=dict)
