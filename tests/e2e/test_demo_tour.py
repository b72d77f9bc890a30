"""The demo's configuration and provisioning, as `bastion demo` sets them up, through the real gateway: the
tour's API-key and OAuth steps work as the printed tour says."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bastion.cli.demo import DEMO_FILES, DemoCredentials, provision
from tests.support.processes import REPO, Gateway, Upstream, start_gateway

DEMO = REPO / "src" / "bastion" / "demo"


@pytest.fixture
def demo(upstream: Upstream, tmp_path: Path) -> Iterator[tuple[Gateway, DemoCredentials]]:
    workdir = tmp_path / "demo"
    workdir.mkdir()
    for name in DEMO_FILES[1:]:
        (workdir / name).write_text((DEMO / name).read_text())
    config: dict[str, Any] = yaml.safe_load((DEMO / "bastion.yaml").read_text())
    config["upstreams"]["shop"]["targets"] = [{"url": upstream.url}]
    config["upstreams"]["shop"]["health_check"]["active"]["enabled"] = False

    def at_ports(cfg: dict[str, Any], ports: dict[str, int]) -> dict[str, Any]:
        cfg["oauth"]["server"]["issuer"] = f"https://127.0.0.1:{ports['https']}"
        return cfg

    gateway = start_gateway(config, workdir, with_ports=at_ports)
    try:
        yield gateway, asyncio.run(provision(gateway.config_path))
    finally:
        gateway.stop()


def test_the_tours_key_and_oauth_steps(demo: tuple[Gateway, DemoCredentials]) -> None:
    gateway, credentials = demo
    with gateway.client() as client:
        assert client.get("/v1/users", headers={"X-API-Key": credentials.keys["mobile-app"]}).status_code == 200
        auth = (credentials.client_id, credentials.client_secret)
        answer = client.post("/oauth2/token", auth=auth, data={"grant_type": "client_credentials",
                                                               "scope": "orders:read"})
        assert answer.status_code == 200, answer.text
        token = answer.json()["access_token"]
        bearer = {"Authorization": f"Bearer {token}"}
        assert client.get("/v1/orders", headers=bearer).status_code == 200
        assert client.get("/v1/users", headers=bearer).status_code == 403  # the token has orders:read only
        assert client.post("/oauth2/revoke", auth=auth, data={"token": token}).status_code == 200
        refused = client.get("/v1/orders", headers=bearer)
        assert refused.status_code == 401
        assert 'error="invalid_token"' in refused.headers["www-authenticate"]
        metadata = client.get("/.well-known/oauth-authorization-server").json()
        assert metadata["issuer"] == gateway.url


def test_a_second_run_rotates_the_demo_clients_secret(demo: tuple[Gateway, DemoCredentials]) -> None:
    gateway, first = demo
    second = asyncio.run(provision(gateway.config_path))
    assert second.client_id == first.client_id and second.client_secret != first.client_secret
    with gateway.client() as client:
        grant = {"grant_type": "client_credentials"}
        old = client.post("/oauth2/token", auth=(first.client_id, first.client_secret), data=grant)
        assert old.status_code == 401 and old.json()["error"] == "invalid_client"
        assert client.post("/oauth2/token", auth=(second.client_id, second.client_secret),
                           data=grant).status_code == 200
