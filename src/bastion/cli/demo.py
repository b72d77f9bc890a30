"""`bastion demo`: the bundled shop API behind the gateway, with the example configuration."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.request
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


async def _provision(config_path: Path) -> dict[str, str]:
    """Two demo consumers, a read key and a write key (fresh keys each run: a key is shown only once)."""
    from bastion.config.loader import load_config
    from bastion.identity.keys import KeyLevel
    from bastion.identity.service import IdentityService, identity_settings
    from bastion.storage.audit import AuditActor

    config, _ = load_config(config_path)
    service = IdentityService(identity_settings(config, config_path.parent))
    actor = AuditActor("demo")
    try:
        await service.prepare()
        store = service.store
        for role, permissions in DEMO_ROLES.items():
            await store.put_role(role, permissions, actor=actor)
        keys: dict[str, str] = {}
        for name, role, level in (("mobile-app", "shop-reader", KeyLevel.READ),
                                  ("partner", "shop-writer", KeyLevel.WRITE)):
            consumer = await store.get_consumer_by_name(name)
            if consumer is None:
                consumer = await store.create_consumer(name, actor=actor, roles=[role])
            key, _ = await store.create_key(consumer.id, level, actor=actor, hasher=service.hasher,
                                            max_ttl=service.settings.max_ttl, description="bastion demo")
            keys[name] = key
        return keys
    finally:
        await service.close()


def _tour(keys: dict[str, str]) -> str:
    read_key, write_key = keys["mobile-app"], keys["partner"]
    return f"""
Bastion demo is running.
  HTTPS gateway   https://localhost:8443   (self-signed development certificate: curl -k)
  HTTP            http://localhost:8080    (redirects to HTTPS)
  Admin           http://127.0.0.1:9090    (/healthz /readyz /metrics, POST /admin/v1/reload)

Demo API keys (shown once; stored only as HMAC digests):
  mobile-app, read level, role shop-reader:  {read_key}
  partner,    write level, role shop-writer: {write_key}

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

        keys = asyncio.run(_provision(config_path))
        click.echo(_tour(keys), err=True)
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
