"""The targets a run measures. THIS IS THE EXTENSION POINT for new policy chains.

A target is a `TargetSpec`: a name, the kind of system it starts (`direct`, `nginx`, `bastion`), and
for Bastion targets a function that renders the gateway configuration (a dict, written as YAML) from
a `TargetContext`. To benchmark a new chain, write a `render_*` function (start from `bastion_base`),
optionally `headers` (e.g. an API key or a JWT the load generator sends) and `prepare` (start an
auxiliary service such as Redis through `ctx.registry`, which the harness cleans up), then append a
`TargetSpec` to `TARGETS`. Bars may compare against any target of the same run, e.g.
`Bar("rps", 0.8, reference="bastion-passthrough")`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from harness import Pinning, ProcessRegistry

Kind = Literal["direct", "nginx", "bastion"]

API_NAME = "items"
ROUTE_NAME = "list-items"
ROUTE_LABEL = f"{API_NAME}.{ROUTE_NAME}"  # the `route` label Bastion's metrics use: <api>.<route>


@dataclass(frozen=True)
class Bar:
    """A pass/fail bar relative to another target's median in the same run.

    metric "rps": target rps >= threshold x reference rps.
    metric "p99": target p99 <= threshold x reference p99.
    metric "cpu": target CPU us/req <= threshold x reference CPU us/req.
    """

    metric: Literal["rps", "p99", "cpu"]
    threshold: float
    reference: str = "nginx"

    def describe(self) -> str:
        if self.metric == "rps":
            return f"rps >= {self.threshold:.2f} x {self.reference}"
        label = "p99" if self.metric == "p99" else "CPU us/req"
        return f"{label} <= {self.threshold:.2f} x {self.reference}"


@dataclass
class TargetContext:
    """What a renderer may use: where the upstream is, a private work directory, the process registry."""

    target: str
    rep: int
    workdir: Path
    upstream_url: str
    registry: ProcessRegistry
    pinning: Pinning
    extras: dict[str, Any] = field(default_factory=dict)  # state a `prepare` hook hands to `render`


Renderer = Callable[[TargetContext], dict[str, Any]]
HeaderFactory = Callable[[TargetContext], dict[str, str]]
Prepare = Callable[[TargetContext], None]


@dataclass(frozen=True)
class TargetSpec:
    name: str
    kind: Kind
    description: str
    render: Renderer | None = None  # Bastion targets: the gateway configuration
    headers: HeaderFactory | None = None  # sent with every request (load and health check)
    prepare: Prepare | None = None  # start auxiliary services before the target
    bars: tuple[Bar, ...] = ()
    reference_only: bool = False  # shown in the table, never judged
    check_metrics: bool = True  # Bastion: compare bastion_requests_total with the requests sent
    route_label: str = ROUTE_LABEL  # the metrics `route` label of the benchmarked route



def bastion_base(ctx: TargetContext, *, access_log: bool) -> dict[str, Any]:
    """One API, one route (GET /api/v1/items) to the upstream; plain HTTP; no policies."""
    return {
        "version": 1,
        "server": {
            "https": {"enabled": False},
            "http": {"enabled": True, "host": "127.0.0.1", "port": 0},
            "admin": {"enabled": True, "host": "127.0.0.1", "port": 0},
            "access_log": {"enabled": access_log, "path": "access.log"},
            "data_dir": "data",
            "drain_timeout": 2.0,
        },
        "upstreams": {"items": {"targets": [{"url": ctx.upstream_url}]}},
        "apis": [{
            "name": API_NAME,
            "version": "v1",
            "base_path": "/api/v1",
            "upstream": "items",
            "public": True,
            "routes": [{"name": ROUTE_NAME, "path": "/items", "methods": ["GET"]}],
        }],
        "policies": {},
    }


def render_passthrough(ctx: TargetContext) -> dict[str, Any]:
    return bastion_base(ctx, access_log=False)


def render_policies(ctx: TargetContext) -> dict[str, Any]:
    """The foundation's always-on protections: ip-allow, security headers, default limits, access log."""
    config = bastion_base(ctx, access_log=True)
    config["policies"] = {
        "ip-allow": {"allow": ["127.0.0.0/8", "::1/128"]},
        "security-headers": {},
    }
    return config


def render_apikey_rbac(ctx: TargetContext) -> dict[str, Any]:
    """API key (cached after the first request) + RBAC: the route requires `items:read`."""
    config = bastion_base(ctx, access_log=False)
    api = config["apis"][0]
    api["public"] = False
    api["permissions"] = ["items:read"]
    api["policies"] = {"key-auth": {}}
    return config


def provision_key(ctx: TargetContext) -> None:
    """A consumer with the `reader` role and a read-level key, in the store the gateway will open."""
    import asyncio

    from bastion.config.model import GatewayConfig
    from bastion.identity.keys import KeyLevel
    from bastion.identity.service import IdentityService, identity_settings
    from bastion.storage.audit import AuditActor

    async def create() -> str:
        config = GatewayConfig.model_validate(render_apikey_rbac(ctx))
        service = IdentityService(identity_settings(config, ctx.workdir))
        actor = AuditActor("bench")
        try:
            await service.prepare()
            await service.store.put_role("reader", ["items:read"], actor=actor)
            consumer = await service.store.create_consumer("bench", actor=actor, roles=["reader"])
            key, _ = await service.store.create_key(consumer.id, KeyLevel.READ, actor=actor, hasher=service.hasher,
                                                    max_ttl=service.settings.max_ttl)
            return key
        finally:
            await service.close()

    ctx.extras["api_key"] = asyncio.run(create())


BENCH_ISSUER = "http://bastion.bench"  # only compared with the token's `iss`: never contacted


def render_jwt_scopes(ctx: TargetContext) -> dict[str, Any]:
    """Access token from the built-in authorization server (ES256, verified once, then cached) + the route's
    required scope."""
    config = bastion_base(ctx, access_log=False)
    config["oauth"] = {"server": {"enabled": True, "issuer": BENCH_ISSUER, "access_token_ttl": 3600}}
    api = config["apis"][0]
    api["public"] = False
    api["permissions"] = ["items:read"]
    api["policies"] = {"oauth2": {}}
    return config


def provision_token(ctx: TargetContext) -> None:
    """A client-credentials access token, issued by the product's own token code from the store the gateway
    will open (same signing keys), as the token endpoint would issue it."""
    import asyncio

    from bastion.config.model import GatewayConfig
    from bastion.identity.service import IdentityService, identity_settings
    from bastion.oauth.server.keys import SigningKeys
    from bastion.oauth.server.store import ClientKind, OAuthStore
    from bastion.oauth.server.tokens import AccessTokens
    from bastion.storage.audit import AuditActor

    async def create() -> str:
        config = GatewayConfig.model_validate(render_jwt_scopes(ctx))
        server = config.oauth.server
        service = IdentityService(identity_settings(config, ctx.workdir))
        actor = AuditActor("bench")
        try:
            await service.prepare()
            store = OAuthStore(service.store.engine, service.hasher)
            await service.store.put_role("reader", ["items:read"], actor=actor)
            consumer = await service.store.create_consumer("bench", actor=actor, roles=["reader"])
            client, _ = await store.create_client(consumer_id=consumer.id, name="bench",
                                                  kind=ClientKind.CONFIDENTIAL, grant_types=["client_credentials"],
                                                  scopes=["items:read"], redirect_uris=[], actor=actor)
            keys = SigningKeys(store, service.settings.pepper, server.signing.algorithm)
            await keys.ensure()
            await keys.load()
            issued = await AccessTokens(store, keys, lambda: server).issue(
                client, subject=client.client_id, scopes=["items:read"], family_id=None)
            return issued.token
        finally:
            await service.close()

    ctx.extras["access_token"] = asyncio.run(create())


def render_ratelimit(ctx: TargetContext, *, redis: bool) -> dict[str, Any]:
    """A per-client-address limit that the load never reaches: the cost of counting, not of refusing."""
    config = bastion_base(ctx, access_log=False)
    config["policies"] = {"rate-limit": {"limits": [
        {"name": "per-ip", "key": ["ip"], "rate": 10_000_000, "per": "1s"}]}}
    if redis:
        config["redis"] = "redis://127.0.0.1:6379/0"
    return config


TARGETS: list[TargetSpec] = [
    TargetSpec("direct", "direct", "wrk straight at the upstream nginx (no proxy): reference only",
               reference_only=True),
    TargetSpec("nginx", "nginx", "nginx reverse proxy, 1 worker, upstream keepalive 256: the reference"),
    TargetSpec("bastion-passthrough", "bastion", "Bastion, plain HTTP, no policies, access log off",
               render=render_passthrough, bars=(Bar("rps", 0.40), Bar("p99", 3.0))),
    TargetSpec("bastion-policies", "bastion", "Bastion + ip-allow + security-headers + default limits "
               "+ access log to a file + metrics", render=render_policies,
               bars=(Bar("rps", 0.30), Bar("p99", 3.0))),
    TargetSpec("bastion-apikey-rbac", "bastion", "Bastion + API key (cached) + RBAC (route needs items:read)",
               render=render_apikey_rbac, prepare=provision_key,
               headers=lambda ctx: {"Authorization": f"Bearer {ctx.extras['api_key']}"},
               bars=(Bar("rps", 0.85, reference="bastion-passthrough"),)),
    TargetSpec("bastion-jwt-scopes", "bastion", "Bastion + OAuth access token (ES256 JWT, cached after the "
               "first request) + scopes (route needs items:read)",
               render=render_jwt_scopes, prepare=provision_token,
               headers=lambda ctx: {"Authorization": f"Bearer {ctx.extras['access_token']}"},
               bars=(Bar("rps", 0.85, reference="bastion-passthrough"),)),
    TargetSpec("bastion-ratelimit-memory", "bastion", "Bastion + rate limit per client address, in memory",
               render=lambda ctx: render_ratelimit(ctx, redis=False),
               bars=(Bar("rps", 0.90, reference="bastion-passthrough"),)),
    TargetSpec("bastion-ratelimit-redis", "bastion", "Bastion + rate limit per client address, in Redis "
               "(127.0.0.1:6379): one Lua round trip per request; cost reported, no bar",
               render=lambda ctx: render_ratelimit(ctx, redis=True)),
]
