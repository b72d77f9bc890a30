"""A gateway running the built-in authorization server, with a consumer, a confidential client and a public
client registered in its store: what the conformance and end-to-end OAuth tests start from."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bastion.config.model import GatewayConfig
from bastion.identity.service import IdentityService, identity_settings
from bastion.oauth.server.store import ClientKind, OAuthStore
from tests.support.identity import ACTOR, run
from tests.support.oauth_user import SECRET_ENV, user_assertion
from tests.support.processes import REPO, Gateway

REDIRECT_URI = "http://127.0.0.1:9/callback"  # loopback, never contacted: tests read the Location header
SIGN_IN = "tests.support.oauth_user:sign_in"


def with_authorization_server(config: dict[str, Any], *, sign_in: bool = True,
                              **server: Any) -> Callable[[dict[str, Any], dict[str, int]], dict[str, Any]]:
    """A `with_ports` hook: the issuer is the URL the gateway is reached at, known once ports are bound."""

    def complete(cfg: dict[str, Any], ports: dict[str, int]) -> dict[str, Any]:
        tls = cfg.get("server", {}).get("https", {}).get("enabled", True)
        issuer = f"https://127.0.0.1:{ports['https']}" if tls else f"http://127.0.0.1:{ports['http']}"
        settings: dict[str, Any] = {"enabled": True, "issuer": issuer, **server}
        if sign_in:
            settings["user_authentication"] = SIGN_IN
        cfg.setdefault("oauth", {})["server"] = settings
        return cfg

    del config
    return complete


def sign_in_env() -> dict[str, str]:
    """The gateway must import the test sign-in step and share its secret with the test."""
    return {"PYTHONPATH": str(REPO), SECRET_ENV: secrets.token_urlsafe(24)}


@dataclass
class RegisteredClients:
    consumer_id: str
    confidential_id: str
    confidential_secret: str
    public_id: str


def register_clients(config: dict[str, Any], config_dir: Path, *, permissions: list[str],
                     scopes: list[str]) -> RegisteredClients:
    """A role with `permissions`, a consumer holding it, and two clients allowed `scopes`."""
    settings = identity_settings(GatewayConfig.model_validate(config), config_dir)

    async def work() -> RegisteredClients:
        service = IdentityService(settings)
        try:
            await service.prepare()
            store = OAuthStore(service.store.engine, service.hasher)
            role = "oauth-app-" + secrets.token_hex(3)
            await service.store.put_role(role, permissions, actor=ACTOR)
            consumer = await service.store.create_consumer("app-" + secrets.token_hex(3), actor=ACTOR,
                                                           roles=[role])
            confidential, secret = await store.create_client(
                consumer_id=consumer.id, name="backend", kind=ClientKind.CONFIDENTIAL,
                grant_types=["client_credentials", "authorization_code", "refresh_token"], scopes=scopes,
                redirect_uris=[REDIRECT_URI], actor=ACTOR)
            public, _ = await store.create_client(
                consumer_id=consumer.id, name="spa", kind=ClientKind.PUBLIC,
                grant_types=["authorization_code", "refresh_token"], scopes=scopes,
                redirect_uris=[REDIRECT_URI], actor=ACTOR)
            assert secret is not None
            return RegisteredClients(consumer.id, confidential.client_id, secret, public.client_id)
        finally:
            await service.close()

    return run(work())


def user_headers(gateway_env: dict[str, str], subject: str = "alice") -> dict[str, str]:
    return {"X-Test-User": user_assertion(subject, gateway_env[SECRET_ENV])}


def oauth_api_config(base: dict[str, Any], permissions: list[str]) -> dict[str, Any]:
    """The demo API behind the `oauth2` policy, its routes needing `permissions`."""
    api = base["apis"][0]
    api["public"] = False
    api["permissions"] = permissions
    api["policies"] = {"oauth2": {}}
    return base


def gateway_dir(gateway: Gateway) -> Path:
    return gateway.config_path.parent
