"""The processes a run starts: the upstream (nginx, or the Python fallback), nginx as a reverse proxy,
and Bastion. Each launcher writes its own config under the run's temp directory and returns a
`Running` handle; nothing touches /etc/nginx or the repository."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from harness import (
    BENCH,
    UPSTREAM_BODY,
    HarnessError,
    Proc,
    ProcessRegistry,
    bound_socket,
    free_port,
    log,
    wait_for_body,
)

HOST = "127.0.0.1"
_HUGE = 1_000_000_000  # keepalive_requests: effectively unlimited


@dataclass
class Running:
    """A started system: where to send load, which process tree to charge CPU to, how to stop it."""

    name: str
    host: str
    port: int
    procs: list[Proc]
    cpu_pid: int
    admin_port: int | None = None
    access_log: Path | None = None
    sockets: list[socket.socket] = field(default_factory=list)
    workdir: Path | None = None

    @property
    def main(self) -> Proc:
        return self.procs[0]

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def stop(self, registry: ProcessRegistry) -> None:
        for proc in self.procs:
            registry.stop(proc)
        for sock in self.sockets:
            sock.close()
        self.sockets.clear()


# -- nginx --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NginxInfo:
    path: str
    version: str
    configure: str

    @classmethod
    def probe(cls, path: str) -> NginxInfo:
        result = subprocess.run([path, "-V"], capture_output=True, text=True, timeout=10, check=False)
        text = result.stderr + result.stdout
        version = text.splitlines()[0] if text else "nginx (unknown version)"
        return cls(path, version, text)

    def has_module(self, module: str) -> bool:
        return f"--without-http_{module}_module" not in self.configure

    def supports_error_log_flag(self) -> bool:
        """`nginx -e` exists since 1.19.5; it keeps the compiled-in error log path unused."""
        digits = version_tuple(self.version)
        return digits >= (1, 19, 5)


def version_tuple(text: str) -> tuple[int, ...]:
    for token in text.replace("/", " ").split():
        parts = token.split(".")
        if len(parts) >= 2 and all(p.isdigit() for p in parts):
            return tuple(int(p) for p in parts)
    return (0,)


def _nginx_common(info: NginxInfo, directory: Path, *, master: bool) -> str:
    """Process-level directives and temp paths: everything inside `directory`."""
    temp = [f"client_body_temp_path {directory}/client_body;"]
    for module in ("proxy", "fastcgi", "uwsgi", "scgi"):
        if info.has_module(module):
            temp.append(f"{module}_temp_path {directory}/{module};")
    temp_lines = "\n    ".join(temp)
    return f"""daemon off;
master_process {"on" if master else "off"};
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    {temp_lines}
    keepalive_requests {_HUGE};
    keepalive_timeout 300s;
"""


def render_nginx_upstream(info: NginxInfo, directory: Path, port: int) -> str:
    body = UPSTREAM_BODY.decode()
    assert "'" not in body and "\\" not in body
    return _nginx_common(info, directory, master=False) + f"""    server {{
        listen {HOST}:{port} backlog=4096;
        default_type application/json;
        location / {{
            return 200 '{body}';
        }}
    }}
}}
"""


def render_nginx_proxy(info: NginxInfo, directory: Path, port: int, upstream_port: int) -> str:
    return _nginx_common(info, directory, master=True) + f"""    upstream backend {{
        server {HOST}:{upstream_port};
        keepalive 256;
        keepalive_requests {_HUGE};
        keepalive_timeout 300s;
    }}
    server {{
        listen {HOST}:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def _start_nginx(registry: ProcessRegistry, info: NginxInfo, name: str, directory: Path, config: str,
                 core: int | None) -> Proc:
    directory.mkdir(parents=True, exist_ok=True)
    # as root the nginx worker runs as nobody; let it traverse to its temp paths
    for path in (directory, directory.parent):
        os.chmod(path, 0o755)
    conf = directory / "nginx.conf"
    conf.write_text(config)
    argv = [info.path, "-p", f"{directory}/", "-c", str(conf)]
    if info.supports_error_log_flag():
        argv[1:1] = ["-e", str(directory / "error.log")]
    check = subprocess.run([*argv, "-t", "-q"], capture_output=True, text=True, timeout=30, check=False)
    if check.returncode != 0:
        raise HarnessError(f"nginx rejected the {name} config:\n{check.stderr}\n{config}")
    return registry.spawn(name, argv, directory / "stdout.log", core=core)


def start_upstream(registry: ProcessRegistry, nginx: NginxInfo | None, directory: Path,
                   core: int | None) -> Running:
    """The fixed-response upstream, pinned to the load core (it is not the system under test)."""
    port = free_port()
    if nginx is not None:
        proc = _start_nginx(registry, nginx, "upstream-nginx", directory,
                            render_nginx_upstream(nginx, directory, port), core)
    else:
        log("nginx unavailable: using the Python fallback upstream (labelled in the results)")
        directory.mkdir(parents=True, exist_ok=True)
        proc = registry.spawn("upstream-python", [sys.executable, str(BENCH / "pyupstream.py"), "--port",
                                                  str(port)], directory / "stdout.log", core=core)
    running = Running("upstream", HOST, port, [proc], proc.pid, workdir=directory)
    probe = wait_for_body(HOST, port, "/", UPSTREAM_BODY, proc=proc)
    if not probe.ok:
        running.stop(registry)
        raise HarnessError(f"upstream did not come up: {probe.detail}\n{proc.log_tail()}")
    return running


def start_nginx_proxy(registry: ProcessRegistry, nginx: NginxInfo, directory: Path, upstream_port: int,
                      core: int | None) -> Running:
    port = free_port()
    proc = _start_nginx(registry, nginx, "nginx-proxy", directory,
                        render_nginx_proxy(nginx, directory, port, upstream_port), core)
    return Running("nginx", HOST, port, [proc], proc.pid, workdir=directory)


# -- Bastion ------------------------------------------------------------------------------------------
def start_bastion(registry: ProcessRegistry, name: str, config: dict[str, Any], directory: Path,
                  core: int | None) -> Running:
    """Bastion on pre-bound http and admin sockets (BASTION_LISTEN_FDS), --log-level warning."""
    directory.mkdir(parents=True, exist_ok=True)
    sockets = {"http": bound_socket(HOST), "admin": bound_socket(HOST)}
    config_path = directory / "bastion.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = dict(os.environ)
    env["BASTION_LISTEN_FDS"] = ",".join(f"{n}={s.fileno()}" for n, s in sockets.items())
    env["PYTHONUNBUFFERED"] = "1"
    argv = [sys.executable, "-m", "bastion.cli.main", "run", "-c", str(config_path), "--log-level", "warning"]
    try:
        proc = registry.spawn(name, argv, directory / "gateway.log", core=core, env=env,
                              pass_fds=tuple(s.fileno() for s in sockets.values()), cwd=directory)
    except BaseException:
        for sock in sockets.values():
            sock.close()
        raise
    access = config.get("server", {}).get("access_log", {})
    access_path = None
    if access.get("enabled", True) and access.get("path", "-") != "-":
        access_path = directory / str(access["path"])
    return Running(name, HOST, sockets["http"].getsockname()[1], [proc], proc.pid,
                   admin_port=sockets["admin"].getsockname()[1], access_log=access_path,
                   sockets=list(sockets.values()), workdir=directory)
