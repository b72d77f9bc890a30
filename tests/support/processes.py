"""Start the real gateway and real upstreams as processes on sockets bound before they start."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parents[2]
BASTION = [sys.executable, "-m", "bastion.cli.main"]


def bind_socket(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def port_of(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


def _wait_http(url: str, timeout: float = 20.0, verify: bool | ssl.SSLContext = False,
               process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {process.returncode}")
        try:
            response = httpx.get(url, timeout=1.0, verify=verify)
            if response.status_code < 500:
                return
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up: {last}")


@dataclass
class Upstream:
    """The bundled demo API served by uvicorn on a pre-bound socket."""

    process: subprocess.Popen[bytes]
    port: int
    sock: socket.socket

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.sock.close()


def start_upstream() -> Upstream:
    sock = bind_socket()
    # Accepted sockets inherit TCP_NODELAY on Linux; uvicorn does not set it on a socket passed by fd, and
    # without it every keep-alive response waited ~40 ms for a delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    process = subprocess.Popen(
        [sys.executable, "-m", "bastion.demo", "--fd", str(sock.fileno())],
        pass_fds=[sock.fileno()], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    upstream = Upstream(process, port_of(sock), sock)
    try:
        _wait_http(upstream.url + "/healthz")
    except RuntimeError:
        upstream.stop()
        raise
    return upstream


@dataclass
class Gateway:
    process: subprocess.Popen[bytes]
    config_path: Path
    ports: dict[str, int]
    sockets: dict[str, socket.socket]
    log_path: Path
    access_log_path: Path
    tls: bool
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        if self.tls:
            return f"https://127.0.0.1:{self.ports['https']}"
        return f"http://127.0.0.1:{self.ports['http']}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['admin']}"

    def client(self, **kwargs: Any) -> httpx.Client:
        kwargs.setdefault("timeout", 10.0)
        return httpx.Client(base_url=self.url, verify=False, **kwargs)

    def write_config(self, config: dict[str, Any]) -> None:
        self.config = config
        text = yaml.safe_dump(config, sort_keys=False)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.config_path)

    def reload(self) -> None:
        self.process.send_signal(signal.SIGHUP)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def access_log(self) -> list[dict[str, Any]]:
        if not self.access_log_path.exists():
            return []
        text = self.access_log_path.read_text()
        complete = text[:text.rfind("\n") + 1]  # the gateway may be writing the last line right now
        return [json.loads(line) for line in complete.splitlines() if line.strip()]

    def wait_access_log(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            records = self.access_log()
            if len(records) >= count or time.monotonic() > deadline:
                return records
            time.sleep(0.05)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        for sock in self.sockets.values():
            sock.close()
        return self.process.returncode


def base_config(upstream_url: str, *, tls: bool = False) -> dict[str, Any]:
    """A small configuration in front of the demo API; tests adjust it."""
    return {
        "version": 1,
        "server": {
            "https": {"enabled": tls, "self_signed": True},
            "http": {"enabled": True},
            "admin": {"enabled": True},
            "limits": {"head_timeout": 2.0, "body_timeout": 3.0, "idle_timeout": 5.0},
            "access_log": {"enabled": True, "path": "access.log"},
        },
        "upstreams": {
            "shop": {
                "targets": [{"url": upstream_url}],
                "timeouts": {"connect": 1.0, "read": 3.0, "total": 5.0},
            },
        },
        "apis": [
            {
                "name": "shop-v1", "version": "v1", "base_path": "/v1", "upstream": "shop", "public": True,
                "openapi": str(REPO / "src/bastion/demo/openapi-v1.yaml"),
                "routes": [
                    {"name": "echo", "path": "/echo", "methods": ["GET", "POST", "PUT", "PATCH", "DELETE"]},
                    {"name": "boom", "path": "/boom", "methods": ["GET"]},
                    {"name": "slow", "path": "/slow", "methods": ["GET"]},
                    {"name": "big", "path": "/big", "methods": ["GET"]},
                    {"name": "status", "path": "/status/{code}", "methods": ["GET"]},
                ],
            },
            {
                "name": "shop-v2", "version": "v2", "base_path": "/v2", "upstream": "shop", "public": True,
                "openapi": str(REPO / "src/bastion/demo/openapi-v2.yaml"),
            },
        ],
        "policies": {"security-headers": {}},
    }


def start_gateway(config: dict[str, Any], workdir: Path, *, expect_start: bool = True,
                  with_ports: Callable[[dict[str, Any], dict[str, int]], dict[str, Any]] | None = None,
                  extra_env: dict[str, str] | None = None) -> Gateway:
    """``with_ports`` completes the configuration once the listener ports are known (e.g. an issuer URL)."""
    workdir.mkdir(parents=True, exist_ok=True)
    tls = bool(config.get("server", {}).get("https", {}).get("enabled", True))
    names = ["http", "admin"] + (["https"] if tls else [])
    sockets = {name: bind_socket() for name in names}
    ports = {name: port_of(sock) for name, sock in sockets.items()}
    if with_ports is not None:
        config = with_ports(config, ports)
    config_path = workdir / "bastion.yaml"
    log_path = workdir / "gateway.log"
    env = dict(os.environ)
    env.update(extra_env or {})
    env["BASTION_LISTEN_FDS"] = ",".join(f"{name}={sock.fileno()}" for name, sock in sockets.items())
    env.setdefault("PYTHONUNBUFFERED", "1")
    gateway = Gateway(
        process=None,  # type: ignore[arg-type]
        config_path=config_path, ports=ports, sockets=sockets, log_path=log_path,
        access_log_path=workdir / "access.log", tls=tls,
    )
    gateway.write_config(config)
    with open(log_path, "ab") as log_file:
        gateway.process = subprocess.Popen(
            [*BASTION, "run", "-c", str(config_path), "--log-level", "info"],
            pass_fds=[s.fileno() for s in sockets.values()], cwd=workdir, env=env,
            stdout=log_file, stderr=subprocess.STDOUT,
        )
    if not expect_start:
        return gateway
    try:
        _wait_http(gateway.admin_url + "/healthz", process=gateway.process)
    except RuntimeError:
        gateway.stop()
        raise RuntimeError("gateway did not start:\n" + gateway.logs()) from None
    return gateway


@contextmanager
def running_gateway(config: dict[str, Any], workdir: Path) -> Iterator[Gateway]:
    gateway = start_gateway(config, workdir)
    try:
        yield gateway
    finally:
        gateway.stop()


FORBIDDEN_IN_ERRORS = ("Traceback", "File \"", "Exception", "SELECT ", "INSERT ", "DROP TABLE",
                       "sqlalchemy", "psycopg", "127.0.0.1", "localhost:", "internal-db", "uvicorn",
                       "starlette", ".py\"", "line ")


def assert_safe_problem(response: httpx.Response, code: str | None = None) -> dict[str, Any]:
    """Every error the gateway answers: problem+json, a stable code, a request id, nothing internal."""
    assert response.headers["content-type"] == "application/problem+json", response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) >= {"type", "title", "status", "detail", "code", "request_id"}, body
    assert body["status"] == response.status_code
    assert body["request_id"] == response.headers["x-request-id"]
    if code is not None:
        assert body["code"] == code, body
    for needle in FORBIDDEN_IN_ERRORS:
        assert needle not in response.text, f"{needle!r} leaked in {response.text}"
    return body
