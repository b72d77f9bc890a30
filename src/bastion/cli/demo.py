"""`bastion demo`: the bundled shop API behind the gateway, with the example configuration."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from datetime import timedelta
from importlib import resources
from pathlib import Path

import click

DEMO_FILES = ("bastion.yaml", "openapi-v1.yaml", "openapi-v2.yaml")


def _prepare(work_dir: Path, upstream_port: int) -> Path:
    work_dir.mkdir(parents=True, exist_ok=True)
    package = resources.files("bastion.demo")
    for name in DEMO_FILES:
        target = work_dir / name
        if not target.exists():
            text = package.joinpath(name).read_text(encoding="utf-8")
            if name == "bastion.yaml":
                text = text.replace("http://127.0.0.1:9001", f"http://127.0.0.1:{upstream_port}")
            target.write_text(text, encoding="utf-8")
    return work_dir / "bastion.yaml"


def _wait_healthy(port: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
                if resp.status == 200:
                    return True
        except OSError:
            time.sleep(0.1)
    return False


DEMO_ROLES = {
    "shop-reader": ["users:read", "orders:read"],
    "shop-writer": ["users:read", "users:write", "orders:read", "orders:write"],
}
DEMO_CLIENT = "reporting-service"


@dataclass(frozen=True)
class DemoCredentials:
    """Fresh each run: a key or a client secret is shown only once."""

    keys: dict[str, str]  # consumer name -> API key
    client_id: str
    client_secret: str


async def provision(config_path: Path) -> DemoCredentials:
    """Two consumers with a read key and a write key, and a third whose OAuth client gets access tokens
    with the client-credentials grant."""
    from bastion.config.loader import load_config
    from bastion.identity.keys import KeyLevel
    from bastion.identity.service import IdentityService, identity_settings
    from bastion.oauth.server.store import ClientKind, OAuthStore
    from bastion.storage.audit import AuditActor

    config, _ = load_config(config_path)
    service = IdentityService(identity_settings(config, config_path.parent))
    actor = AuditActor("demo")
    try:
        await service.prepare()
        store = service.store
        for role, permissions in DEMO_ROLES.items():
            await store.put_role(role, permissions, actor=actor)
        consumers = {}
        for name, role in (("mobile-app", "shop-reader"), ("partner", "shop-writer"), ("reporting", "shop-reader")):
            consumer = await store.get_consumer_by_name(name)
            if consumer is None:
                consumer = await store.create_consumer(name, actor=actor, roles=[role])
            consumers[name] = consumer.id
        keys: dict[str, str] = {}
        for name, level in (("mobile-app", KeyLevel.READ), ("partner", KeyLevel.WRITE)):
            key, _ = await store.create_key(consumers[name], level, actor=actor, hasher=service.hasher,
                                            max_ttl=service.settings.max_ttl, description="bastion demo")
            keys[name] = key
        oauth = OAuthStore(store.engine, service.hasher)
        existing = [c for c in await oauth.list_clients(consumers["reporting"]) if c.name == DEMO_CLIENT]
        if existing:
            client, secret = await oauth.rotate_client_secret(existing[0].client_id, actor=actor,
                                                              overlap=timedelta(0))
        else:
            client, new_secret = await oauth.create_client(
                consumer_id=consumers["reporting"], name=DEMO_CLIENT, kind=ClientKind.CONFIDENTIAL,
                grant_types=["client_credentials"], scopes=["orders:read", "users:read"], redirect_uris=[],
                actor=actor)
            assert new_secret is not None  # confidential clients always get one
            secret = new_secret
        return DemoCredentials(keys, client.client_id, secret)
    finally:
        await service.close()


def _tour(credentials: DemoCredentials) -> str:
    read_key, write_key = credentials.keys["mobile-app"], credentials.keys["partner"]
    client_id, client_secret = credentials.client_id, credentials.client_secret
    return f"""
Bastion demo is running.
  HTTPS gateway   https://localhost:8443   (self-signed development certificate: curl -k)
  HTTP            http://localhost:8080    (redirects to HTTPS)
  Admin           http://127.0.0.1:9090    (/healthz /readyz /metrics, POST /admin/v1/reload)

Demo API keys (shown once; stored only as HMAC digests):
  mobile-app, read level, role shop-reader:  {read_key}
  partner,    write level, role shop-writer: {write_key}
Demo OAuth client of the `reporting` consumer (client credentials; the secret is shown once):
  client_id {client_id}   client_secret {client_secret}

Try:
  curl -k -H "X-API-Key: {read_key}" https://localhost:8443/v1/users
  curl -k -H "Authorization: Bearer {write_key}" -H "content-type: application/json" \\
       -d '{{"name": "Lin", "email": "lin@example.com"}}' https://localhost:8443/v1/users
  curl -k -i -H "X-API-Key: {read_key}" -H "content-type: application/json" \\
       -d '{{"name": "Lin", "email": "lin@example.com"}}' https://localhost:8443/v1/users  # 403: read key
  curl -k -i https://localhost:8443/v1/users                                   # 401: no key
  curl -k -i "https://localhost:8443/v1/users?api_key={read_key}"  # 400: keys never in URLs
  curl -k -H "X-API-Key: {read_key}" 'https://localhost:8443/v2/users?limit=2'  # v2 side by side
  for i in $(seq 25); do curl -k -s -o /dev/null -w '%{{http_code}} ' -H "X-API-Key: {read_key}" \\
       https://localhost:8443/v1/orders; done; echo   # 429s after 20 reads in a second
  curl -k -i https://localhost:8443/v1/admin              # not declared: 404 problem+json
  curl -k -i -X DELETE https://localhost:8443/v1/users/1  # declared path, undeclared method: 405
  curl -k -i https://localhost:8443/v1/boom               # upstream 500 masked, no stack trace
  curl -k -i 'https://localhost:8443/v1/%2e%2e/etc/passwd' # path tricks: 400
  curl -i http://localhost:8080/v1/users                   # 308 to HTTPS
  curl -s http://127.0.0.1:9090/metrics | grep bastion_requests_total
OAuth 2: a 10-minute access token instead of a shared key; revocation works at once:
  TOKEN=$(curl -k -s -u '{client_id}:{client_secret}' -d grant_type=client_credentials -d scope=orders:read \\
       https://localhost:8443/oauth2/token | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
  curl -k -H "Authorization: Bearer $TOKEN" https://localhost:8443/v1/orders       # 200
  curl -k -i -H "Authorization: Bearer $TOKEN" https://localhost:8443/v1/users     # 403: scope orders:read only
  curl -k -u '{client_id}:{client_secret}' -d "token=$TOKEN" https://localhost:8443/oauth2/revoke
  curl -k -i -H "Authorization: Bearer $TOKEN" https://localhost:8443/v1/orders    # 401: revoked
  curl -k -s https://localhost:8443/.well-known/oauth-authorization-server          # RFC 8414 metadata
Access log: JSON lines on standard output. Stop with Ctrl-C.
"""


def run_demo(work_dir: Path, upstream_port: int) -> int:
    import uvloop

    from bastion.config.loader import ConfigError
    from bastion.runtime import run_gateway

    config_path = _prepare(work_dir, upstream_port)
    upstream = subprocess.Popen([sys.executable, "-m", "bastion.demo", "--host", "127.0.0.1",
                                 "--port", str(upstream_port)])
    try:
        if not _wait_healthy(upstream_port):
            click.echo(f"the demo API did not start on port {upstream_port}", err=True)
            return 1
        import asyncio

        credentials = asyncio.run(provision(config_path))
        click.echo(_tour(credentials), err=True)
        try:
            uvloop.run(run_gateway(config_path))
        except ConfigError as exc:
            for issue in exc.issues:
                click.echo(f"error: {issue}", err=True)
            return 2
        except KeyboardInterrupt:
            pass
        return 0
    finally:
        upstream.terminate()
        try:
            upstream.wait(5)
        except subprocess.TimeoutExpired:
            upstream.kill()
        shutil.rmtree(work_dir / "__pycache__", ignore_errors=True)
