"""Compile a validated configuration into routers, policy chains and upstream clusters."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from bastion.config.loader import (
    ConfigError,
    ConfigIssue,
    Loc,
    SourceDocument,
    read_document,
    validate_document,
    validation_issues,
)
from bastion.config.model import ApiConfig, GatewayConfig, PolicyMap, RouteSettings, UpstreamConfig
from bastion.config.openapi import Operation, OperationSecurity, load_operations
from bastion.pipeline.alternatives import first_recognized
from bastion.pipeline.compiled import CompiledConfig, CompiledRoute
from bastion.pipeline.policy import BasePolicy, PolicyServices, PolicyType, Stage
from bastion.policies.authorize.config import AuthorizeConfig
from bastion.policies.authorize.policy import AuthorizePolicy
from bastion.proxy.cluster import UpstreamCluster
from bastion.routing.router import Router, RouteSpec, TemplateError, split_template

ClusterProvider = Callable[[str, UpstreamConfig], UpstreamCluster]
_ROUTE_NAME = re.compile(r"[^a-zA-Z0-9_.-]+")
_POLICY_MAP: TypeAdapter[PolicyMap] = TypeAdapter(PolicyMap)


class _PolicyBuilder:
    """Builds one policy instance per declaration site (global, API or route), shared by its routes."""

    def __init__(self, registry: Mapping[str, PolicyType], services: PolicyServices,
                 doc: SourceDocument, issues: list[ConfigIssue]) -> None:
        self.registry = registry
        self.services = services
        self.doc = doc
        self.issues = issues
        self._built: dict[tuple[Loc, str], BasePolicy] = {}

    def build_site(self, site: Loc, declared: Mapping[str, dict[str, Any]],
                   site_name: str = "global") -> dict[str, BasePolicy | None]:
        """``site_name`` (``global``, ``api:<api>``, ``route:<api>.<route>``) is stable across reloads:
        stateful policies key their shared counters by it."""
        out: dict[str, BasePolicy | None] = {}
        services = replace(self.services, extras={**self.services.extras, "policy_site": site_name})
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
                self.issues.extend(validation_issues(self.doc, exc, loc))
                continue
            key = (site, name)
            if key not in self._built:
                try:
                    self._built[key] = policy_type.factory(config, services)
                except ValueError as exc:
                    self.issues.append(self.doc.issue(loc, str(exc)))
                    continue
            out[name] = self._built[key]
        return out


# Within the LIMIT stage the cheap, refusing-first limits run before those that spend a budget: a request
# refused by its rate limit has not used up quota or a business-flow allowance. Others run by name.
_WITHIN_STAGE = {"rate-limit": 0, "business-flow": 1, "concurrency": 2, "quota": 3}


def _chain(*levels: Mapping[str, BasePolicy | None],
           authorize: BasePolicy | None = None) -> tuple[tuple[BasePolicy, ...], tuple[BasePolicy, ...]]:
    merged: dict[str, BasePolicy | None] = {}
    for level in levels:
        merged.update(level)
    if authorize is not None:
        merged[authorize.name] = authorize
    policies = sorted((p for p in merged.values() if p is not None),
                      key=lambda p: (p.stage, _WITHIN_STAGE.get(p.name, len(_WITHIN_STAGE)), p.name))
    authenticators = tuple(p for p in policies if p.stage is Stage.AUTHENTICATE and p.has_request_hook)
    if len(authenticators) > 1:
        first = policies.index(authenticators[0])
        policies = [p for p in policies if p not in authenticators]
        policies.insert(first, first_recognized(authenticators))
    request = tuple(p for p in policies if p.has_request_hook)
    response = tuple(p for p in reversed(policies) if p.has_response_hook)
    return request, response


def reference_issues(doc: SourceDocument) -> list[ConfigIssue]:
    """Cross-references between sections, located at the key that names them.

    Runs on the raw document, so it also reports when other parts failed structural validation.
    """
    data = doc.data if isinstance(doc.data, Mapping) else {}
    upstreams = data.get("upstreams", {})
    apis = data.get("apis", [])
    issues: list[ConfigIssue] = []
    if not isinstance(apis, list):
        return issues
    names: set[str] = set()
    for index, api in enumerate(apis):
        if not isinstance(api, Mapping):
            continue
        upstream = api.get("upstream")
        if isinstance(upstream, str) and isinstance(upstreams, Mapping) and upstream not in upstreams:
            known = ", ".join(sorted(str(k) for k in upstreams)) or "none declared"
            issues.append(doc.issue(("apis", index, "upstream"),
                                    f"unknown upstream {upstream!r} (known: {known})"))
        name = api.get("name")
        if isinstance(name, str):
            if name in names:
                issues.append(doc.issue(("apis", index, "name"), f"api name {name!r} is used twice"))
            names.add(name)
    return issues


class _Compiler:
    """Compiles APIs into routes. Without clusters (a document that failed structural validation) it
    still checks what it can (policies, OpenAPI documents, route names and paths) and builds no route."""

    def __init__(self, doc: SourceDocument, registry: Mapping[str, PolicyType], services: PolicyServices,
                 global_policies: Mapping[str, dict[str, Any]], clusters: Mapping[str, UpstreamCluster],
                 upstreams: Mapping[str, UpstreamConfig], default_body: int) -> None:
        self.doc = doc
        self.issues: list[ConfigIssue] = []
        self.builder = _PolicyBuilder(registry, services, doc, self.issues)
        self.global_policies = self.builder.build_site(("policies",), global_policies)
        self.clusters = clusters
        self.upstreams = upstreams
        self.default_body = default_body
        self.specs: list[RouteSpec[CompiledRoute]] = []
        self.routes: list[CompiledRoute] = []
        self.route_names: set[str] = set()

    def api(self, api_index: int, api: ApiConfig) -> None:
        doc = self.doc
        api_loc: Loc = ("apis", api_index)
        api_policies = self.builder.build_site((*api_loc, "policies"), api.policies, f"api:{api.name}")
        if api.openapi is not None:
            spec_path = Path(api.openapi)
            if not spec_path.is_absolute():
                spec_path = doc.path.parent / spec_path
            operations: list[Operation] = []
            if not spec_path.is_file():
                self.issues.append(doc.issue((*api_loc, "openapi"), f"OpenAPI document not found: {spec_path}"))
            else:
                try:
                    operations, op_issues = load_operations(spec_path)
                    self.issues.extend(op_issues)
                except ConfigError as exc:
                    self.issues.extend(exc.issues)
            known_ops = {op.operation_id for op in operations}
            for op_id in api.operations:
                if operations and op_id not in known_ops:
                    self.issues.append(doc.issue((*api_loc, "operations", op_id),
                                                 f"no operation {op_id!r} in {api.openapi}"))
            for op in operations:
                settings = api.operations.get(op.operation_id, RouteSettings())
                name = _ROUTE_NAME.sub("-", op.operation_id)
                self._route(api, api_policies, name, op.path, [op.method], settings,
                            (*api_loc, "operations", op.operation_id), op.security)
        for route_index, route_cfg in enumerate(api.routes):
            self._route(api, api_policies, route_cfg.name, route_cfg.path, route_cfg.methods, route_cfg,
                        (*api_loc, "routes", route_index), None)

    def _access(self, api: ApiConfig, settings: RouteSettings,
                security: OperationSecurity | None) -> tuple[bool, frozenset[str], bool]:
        """Whether the route is public, the permissions it requires, and whether it is administrative."""
        public = api.public
        permissions = set(api.permissions)
        if security is not None:
            if security.public:
                public = True  # `security: []` in the OpenAPI document
            permissions.update(security.scopes)
        if settings.public is not None:
            public = settings.public
        permissions.update(settings.permissions or ())
        return public, frozenset(permissions), bool(settings.admin)

    def _route(self, api: ApiConfig, api_policies: dict[str, BasePolicy | None], name: str, path: str,
               methods: list[str], settings: RouteSettings, loc: Loc, security: OperationSecurity | None) -> None:
        doc = self.doc
        full_name = f"{api.name}.{name}"
        if full_name in self.route_names:
            self.issues.append(doc.issue(loc, f"route name {name!r} is used twice in api {api.name!r}"))
            return
        self.route_names.add(full_name)
        route_policies = self.builder.build_site((*loc, "policies"), settings.policies, f"route:{full_name}")
        try:
            split_template(api.base_path + path)
        except TemplateError as exc:
            self.issues.append(doc.issue((*loc, "path"), str(exc)))
            return
        cluster = self.clusters.get(api.upstream)
        if cluster is None:
            return  # unknown upstream (reported by reference_issues) or a check-only pass
        public, permissions, admin = self._access(api, settings, security)
        authorize = None
        if not public:
            authorize = AuthorizePolicy(AuthorizeConfig(permissions=sorted(permissions), admin=admin))
        request, response = _chain(self.global_policies, api_policies, route_policies, authorize=authorize)
        if not public and not any(p.stage is Stage.AUTHENTICATE for p in request):
            self.issues.append(doc.issue(loc, "the route is not public and no authentication policy applies to "
                                              "it: add one (e.g. `key-auth`) or mark it `public: true`"))
            return
        body = settings.max_body_bytes
        if body is None:
            body = api.max_body_bytes if api.max_body_bytes is not None else self.default_body
        mask = settings.mask_upstream_errors
        route = CompiledRoute(
            name=full_name, api=api.name, api_version=api.version, lifecycle=api.lifecycle,
            template=api.base_path + path, upstream=cluster, request_policies=request,
            response_policies=response, max_body_bytes=body,
            mask_upstream_errors=api.mask_upstream_errors if mask is None else mask,
            strip_prefix=api.base_path if api.strip_base_path else "",
            preserve_host=self.upstreams[api.upstream].preserve_host,
        )
        self.routes.append(route)
        self.specs.append(RouteSpec(api.base_path + path, frozenset(methods), route, tuple(api.hosts)))


def compile_config(config: GatewayConfig, doc: SourceDocument, *, generation: int,
                   registry: Mapping[str, PolicyType], services: PolicyServices,
                   clusters: ClusterProvider) -> CompiledConfig:
    built_clusters = {name: clusters(name, up) for name, up in config.upstreams.items()}
    compiler = _Compiler(doc, registry, services, config.policies, built_clusters, config.upstreams,
                         config.server.limits.max_body_bytes)
    issues = compiler.issues
    issues.extend(reference_issues(doc))
    for api_index, api in enumerate(config.apis):
        compiler.api(api_index, api)
    router: Router[CompiledRoute] | None = None
    try:
        router = Router(compiler.specs)
    except TemplateError as exc:
        issues.append(doc.issue(("apis",), str(exc)))
    if issues or router is None:
        raise ConfigError(_in_order(doc, issues))
    trusted = tuple(ipaddress.ip_network(c, strict=False) for c in config.server.trusted_proxies)
    return CompiledConfig(generation=generation, config=config, router=router, clusters=built_clusters,
                          trusted_proxies=trusted, source=str(doc.path), routes=tuple(compiler.routes))


def _in_order(doc: SourceDocument, issues: list[ConfigIssue]) -> list[ConfigIssue]:
    """The configuration file's problems by line, then those of the documents it names."""
    main = str(doc.path)
    return sorted(issues, key=lambda i: (i.file != main, i.file, i.line or 0))


def _check_unvalidated(doc: SourceDocument, registry: Mapping[str, PolicyType],
                       services: PolicyServices) -> list[ConfigIssue]:
    """What compile_config would report, for a document with structural errors: each API that is valid on
    its own is checked, so one run reports every problem."""
    data = doc.data if isinstance(doc.data, Mapping) else {}
    try:
        global_policies = _POLICY_MAP.validate_python(data.get("policies", {}))
    except ValidationError:
        global_policies = {}  # already reported
    compiler = _Compiler(doc, registry, services, global_policies, {}, {}, 0)
    compiler.issues.extend(reference_issues(doc))
    apis = data.get("apis", [])
    for api_index, raw in enumerate(apis if isinstance(apis, list) else []):
        try:
            api = ApiConfig.model_validate(raw)
        except ValidationError:
            continue  # already reported
        compiler.api(api_index, api)
    return compiler.issues


def load_and_compile(path: str | os.PathLike[str], *, generation: int, registry: Mapping[str, PolicyType],
                     services: PolicyServices, clusters: ClusterProvider) -> CompiledConfig:
    """Read, validate and compile a configuration file; every problem found is in one ConfigError."""
    doc = read_document(Path(path))
    config, issues = validate_document(doc)
    if config is None:
        raise ConfigError(_in_order(doc, [*issues, *_check_unvalidated(doc, registry, services)]))
    return compile_config(config, doc, generation=generation, registry=registry, services=services,
                          clusters=clusters)
