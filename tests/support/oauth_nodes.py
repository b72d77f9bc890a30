"""Several gateway nodes running the built-in authorization server as one deployment: one PostgreSQL database
(created for the test, migrated with `bastion migrate`, dropped afterwards), one key pepper, optionally one
Redis, and the same issuer string (the first node's URL: the issuer is only compared with `iss`).

The test talks to the nodes from a loopback address of its own (127.x.y.z): with Redis, failed-authentication
counters are shared by every gateway using that Redis and keyed by client address, so refusals made by other
tests (or earlier runs) on 127.0.0.1 must not brake this test, nor this test's refusals brake theirs.

PostgreSQL or Redis absent: the test is skipped with the reason printed, except under CI=true, where it fails.
"""

from __future__ import annotations

import copy
import os
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.contract.test_counter_stores import REDIS_URL, require_redis
from tests.contract.test_identity_store import temporary_postgres_database
from tests.support.admin import IdentityHandle
from tests.support.identity import shared_pepper_env
from tests.support.oauth import (
    RegisteredClients,
    oauth_api_config,
    register_clients,
    sign_in_env,
    with_authorization_server,
)
from tests.support.processes import BASTION, REPO, Gateway, base_config, start_gateway

PERMISSIONS = ["orders:read"]  # what /v1/* needs, what the consumer's role grants and the clients may ask for
API_PATH = "/v1/echo"


@dataclass
class OAuthNodes:
    nodes: list[Gateway]
    clients: RegisteredClients
    config: dict[str, Any]  # as every node runs it (issuer included)
    env: dict[str, str]  # the nodes' extra environment: the test sign-in step and its secret
    admin_key: str
    client_address: str  # the loopback address the test's requests come from

    @property
    def issuer(self) -> str:
        return str(self.config["oauth"]["server"]["issuer"])

    def http(self, node: Gateway) -> httpx.Client:
        """A client of the node's API listener, from this test's own address."""
        return httpx.Client(base_url=node.url, timeout=10.0,
                            transport=httpx.HTTPTransport(local_address=self.client_address, verify=False))

    def admin(self, node: Gateway) -> httpx.Client:
        return httpx.Client(base_url=node.admin_url, timeout=10.0,
                            headers={"Authorization": f"Bearer {self.admin_key}"})

    def cli(self, *verb: str, node: Gateway) -> subprocess.CompletedProcess[str]:
        """`bastion <verb> -c <node's config>`: the CLI's local mode, on the shared store."""
        return bastion_cli(*verb, "-c", str(node.config_path), env=self.env)


def bastion_cli(*arguments: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*BASTION, *arguments], check=False, capture_output=True, text=True, timeout=60,
                            cwd=REPO, env={**os.environ, **(env or {})})
    assert result.returncode == 0, (arguments, result.stdout, result.stderr)
    return result


def _shared_issuer(issuer: str) -> Callable[[dict[str, Any], dict[str, int]], dict[str, Any]]:
    def complete(config: dict[str, Any], ports: dict[str, int]) -> dict[str, Any]:
        del ports
        config["oauth"]["server"]["issuer"] = issuer
        return config

    return complete


@contextmanager
def oauth_nodes(upstream_url: str, workdir: Path, *, redis: bool, count: int = 2) -> Iterator[OAuthNodes]:
    """``count`` nodes in front of the demo API (/v1/* behind `oauth2`, needing orders:read), a consumer with
    orders:read and its two clients (confidential and public). Everything is stopped and dropped on exit."""
    if redis:
        require_redis()
    with temporary_postgres_database() as database_url:
        config = oauth_api_config(base_config(upstream_url), PERMISSIONS)
        config["store"] = database_url
        config["keys"] = {"pepper": shared_pepper_env(workdir)}
        if redis:
            config["redis"] = REDIS_URL
        setup = workdir / "setup.yaml"
        setup.write_text(yaml.safe_dump(config, sort_keys=False))
        bastion_cli("migrate", "-c", str(setup))  # a PostgreSQL store is never migrated by a gateway
        env = sign_in_env()
        started: list[Gateway] = []
        try:
            first = start_gateway(config, workdir / "node-0", with_ports=with_authorization_server(config),
                                  extra_env=env)
            started.append(first)
            shared = first.config
            for index in range(1, count):
                started.append(start_gateway(copy.deepcopy(shared), workdir / f"node-{index}",
                                             with_ports=_shared_issuer(shared["oauth"]["server"]["issuer"]),
                                             extra_env=env))
            clients = register_clients(shared, workdir, permissions=PERMISSIONS, scopes=PERMISSIONS)
            with IdentityHandle(first) as identity:
                admin_key = identity.admin_key("nodes-admin")
            address = f"127.{secrets.randbelow(254) + 1}.{secrets.randbelow(256)}.{secrets.randbelow(254) + 1}"
            yield OAuthNodes(started, clients, shared, env, admin_key, address)
        finally:
            for node in started:  # before the database is dropped under them
                node.stop()


def wait_for(probe: Callable[[], bool], *, timeout: float, interval: float = 0.02) -> bool:
    """Whether ``probe`` becomes true before the deadline (a bound on waiting, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        if probe():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
