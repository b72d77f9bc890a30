"""Compile a validated configuration into routers, policy chains and upstream clusters."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from bastion.config.loader import ConfigError, ConfigIssue, Loc, SourceDocument, format_loc
from bastion.config.model import ApiConfig, GatewayConfig, RouteSettings, UpstreamConfig
from bastion.config.openapi import load_operations
from bastion.pipeline.compiled import CompiledConfig, CompiledRoute
from bastion.pipeline.policy import BasePolicy, PolicyServices, PolicyType
from bastion.proxy.cluster import UpstreamCluster
from bastion.routing.router import Router, RouteSpec, TemplateError

ClusterProvider = Callable[[str, UpstreamConfig], UpstreamCluster]
_ROUTE_NAME = re.compile(r"[^a-zA-Z0-9_.-]+")


class _PolicyBuilder:
    """Builds one policy instance per declaration site (global, API or route), shared by its routes."""

    def __init__(self, registry: Mapping[str, PolicyType], services: PolicyServices,
                 doc: SourceDocument, issues: list[ConfigIssue]) -> None:
        self.registry = registry
        self.services = services
        self.doc = doc
        self.issues = issues
        self._built: dict[tuple[Loc, str], BasePolicy] = {}

    def build_site(self, site: Loc, declared: Mapping[str, dict[str, Any]]) -> dict[str, BasePolicy | None]:
        out: dict[str, BasePolicy | None] = {}
        for name, raw in declared.items():
            loc = (*site, name)
            policy_type = self.registry.get(name)
            if policy_type is None:
                known = ", ".join(sorted(self.registry))
                self.issues.append(self.doc.issue(loc, f"unknown policy {name!r} (known: {known})"))
                continue
            raw = dict(raw or {})
            if raw.pop("enabled", True) is False:
                out[name] = None  # switches off an inherited entry
                continue
            try:
                config = policy_type.config_model.model_validate(raw)
            except ValidationError as exc:
                for item in exc.errors(include_url=False):
                    message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
                    self.issues.append(self.doc.issue((*loc, *item["loc"]), message))
                continue
            key = (site, name)
            if key not in self._built:
                try:
                    self._built[key] = policy_type.factory(config, self.services)
                except ValueError as exc:
                    self.issues.append(self.doc.issue(loc, str(exc)))
                    continue
            out[name] = self._built[key]
        return out


def _chain(*levels: Mapping[str, BasePolicy | None]) -> tuple[tuple[BasePolicy, ...], tuple[BasePolicy, ...]]:
    merged: dict[str, BasePolicy | None] = {}
    for level in levels:
        merged.update(level)
    policies = sorted((p for p in merged.values() if p is not None), key=lambda p: (p.stage, p.name))
    request = tuple(p for p in policies if p.has_request_hook)
    response = tuple(p for p in reversed(policies) if p.has_response_hook)
    return request, response


def compile_config(config: GatewayConfig, doc: SourceDocument, *, generation: int,
                   registry: Mapping[str, PolicyType], services: PolicyServices,
                   clusters: ClusterProvider) -> CompiledConfig:
    issues: list[ConfigIssue] = []
    base_dir = doc.path.parent
    builder = _PolicyBuilder(registry, services, doc, issues)
    global_policies = builder.build_site(("policies",), config.policies)
    built_clusters = {name: clusters(name, up) for name, up in config.upstreams.items()}
    specs: list[RouteSpec[CompiledRoute]] = []
    routes: list[CompiledRoute] = []
    route_names: set[str] = set()
    default_body = config.server.limits.max_body_bytes

    for api_index, api in enumerate(config.apis):
        api_loc: Loc = ("apis", api_index)
        api_policies = builder.build_site((*api_loc, "policies"), api.policies)
        cluster = built_clusters[api.upstream]

        def add_route(name: str, path: str, methods: list[str], settings: RouteSettings, loc: Loc,
                      api: ApiConfig = api, api_policies: dict[str, BasePolicy | None] = api_policies,
                      cluster: UpstreamCluster = cluster) -> None:
            full_name = f"{api.name}.{name}"
            if full_name in route_names:
                issues.append(doc.issue(loc, f"route name {name!r} is used twice in api {api.name!r}"))
                return
            route_names.add(full_name)
            route_policies = builder.build_site((*loc, "policies"), settings.policies)
            request, response = _chain(global_policies, api_policies, route_policies)
            body = settings.max_body_bytes
            if body is None:
                body = api.max_body_bytes if api.max_body_bytes is not None else default_body
            mask = settings.mask_upstream_errors
            route = CompiledRoute(
                name=full_name, api=api.name, api_version=api.version, lifecycle=api.lifecycle,
                template=api.base_path + path, upstream=cluster, request_policies=request,
                response_policies=response, max_body_bytes=body,
                mask_upstream_errors=api.mask_upstream_errors if mask is None else mask,
                strip_prefix=api.base_path if api.strip_base_path else "",
                preserve_host=config.upstreams[api.upstream].preserve_host,
            )
            routes.append(route)
            specs.append(RouteSpec(api.base_path + path, frozenset(methods), route, tuple(api.hosts)))

        if api.openapi is not None:
            spec_path = Path(api.openapi)
            if not spec_path.is_absolute():
                spec_path = base_dir / spec_path
            try:
                operations, op_issues = load_operations(spec_path)
            except ConfigError as exc:
                issues.extend(exc.issues)
                operations, op_issues = [], []
            issues.extend(op_issues)
            known_ops = {op.operation_id for op in operations}
            for op_id in api.operations:
                if op_id not in known_ops:
                    issues.append(doc.issue((*api_loc, "operations", op_id),
                                            f"no operation {op_id!r} in {api.openapi}"))
            for op in operations:
                settings = api.operations.get(op.operation_id, RouteSettings())
                name = _ROUTE_NAME.sub("-", op.operation_id)
                add_route(name, op.path, [op.method], settings, (*api_loc, "operations", op.operation_id))
        for route_index, route_cfg in enumerate(api.routes):
            add_route(route_cfg.name, route_cfg.path, route_cfg.methods, route_cfg,
                      (*api_loc, "routes", route_index))

    router: Router[CompiledRoute] | None = None
    try:
        router = Router(specs)
    except TemplateError as exc:
        issues.append(ConfigIssue(str(doc.path), None, format_loc(("apis",)), str(exc)))
    if issues or router is None:
        raise ConfigError(issues)
    trusted = tuple(ipaddress.ip_network(c, strict=False) for c in config.server.trusted_proxies)
    return CompiledConfig(generation=generation, config=config, router=router, clusters=built_clusters,
                          trusted_proxies=trusted, source=str(doc.path), routes=tuple(routes))
