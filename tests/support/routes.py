"""A real compiled route for policy unit tests (the compiled modules check the types they are given)."""

from __future__ import annotations

import asyncio

from bastion.config.model import Lifecycle, UpstreamConfig
from bastion.pipeline.compiled import CompiledRoute
from bastion.proxy.cluster import UpstreamCluster


def compiled_route(name: str = "shop.list", api: str = "shop") -> CompiledRoute:
    """A route as the compiler builds it; its upstream is never contacted (no loop ever runs)."""
    upstream = UpstreamCluster("shop", UpstreamConfig.model_validate({"targets": [{"url": "http://127.0.0.1:9"}]}),
                               asyncio.new_event_loop())
    return CompiledRoute(name=name, api=api, api_version=None, lifecycle=Lifecycle.ACTIVE, template="/items",
                         upstream=upstream, request_policies=(), response_policies=(), max_body_bytes=1 << 20,
                         mask_upstream_errors=True, strip_prefix="", preserve_host=False)
