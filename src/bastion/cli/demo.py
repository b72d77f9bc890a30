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


def _tour() -> str:
    return """
Bastion demo is running.
  HTTPS gateway   https://localhost:8443   (self-signed development certificate: curl -k)
  HTTP            http://localhost:8080    (redirects to HTTPS)
  Admin           http://127.0.0.1:9090    (/healthz /readyz /metrics, POST /admin/v1/reload)

Try:
  curl -k https://localhost:8443/v1/users                 # declared in the v1 OpenAPI document
  curl -k https://localhost:8443/v2/users?limit=2         # v2 side by side, another shape
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
        click.echo(_tour(), err=True)
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
