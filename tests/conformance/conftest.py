"""One gateway with the built-in authorization server for the conformance tests of a module: each test
drives it with a client library nobody on the team wrote, then uses the tokens on a protected API route."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.oauth import (
    RegisteredClients,
    oauth_api_config,
    register_clients,
    sign_in_env,
    with_authorization_server,
)
from tests.support.processes import Gateway, Upstream, base_config, start_gateway

PERMISSIONS = ["orders:read", "users:read"]


@dataclass
class OAuthDeployment:
    gateway: Gateway
    clients: RegisteredClients
    env: dict[str, str]

    @property
    def issuer(self) -> str:
        return self.gateway.url


@pytest.fixture(scope="module")
def deployment(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthDeployment]:
    workdir: Path = tmp_path_factory.mktemp("oauth-conformance")
    config = oauth_api_config(base_config(upstream.url), ["orders:read"])
    env = sign_in_env()
    gateway = start_gateway(config, workdir, with_ports=with_authorization_server(config), extra_env=env)
    try:
        clients = register_clients(gateway.config, workdir, permissions=PERMISSIONS, scopes=PERMISSIONS)
        yield OAuthDeployment(gateway, clients, env)
    finally:
        gateway.stop()
