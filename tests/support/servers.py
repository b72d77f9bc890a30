"""Small upstreams that run inside the test process: a controllable HTTP server and a scripted raw one."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so the gateway pools connections to it
    server: _Server

    def do_GET(self) -> None:
        owner = self.server.owner
        if self.path.split("?", 1)[0] == "/healthz":
            with owner.lock:
                owner.health_probes += 1
                healthy = owner.healthy
            self._answer(200 if healthy else 503, {"status": "ok" if healthy else "failing"})
            return
        with owner.lock:
            owner.hits += 1
        self._answer(200, {"name": owner.name, "path": self.path}, extra=owner.extra_headers)

    def _answer(self, status: int, payload: dict[str, Any], extra: list[tuple[str, str]] | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)  # also sends `Server: BaseHTTP/... Python/...`
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra or []:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: ControlledUpstream


class ControlledUpstream:
    """An HTTP/1.1 upstream whose ``/healthz`` can be made to fail; every other GET answers with its name.

    Its responses also carry headers the gateway must not pass on (``Server``, ``X-Powered-By``,
    hop-by-hop fields) when ``extra_headers`` asks for them.
    """

    def __init__(self, name: str, extra_headers: list[tuple[str, str]] | None = None) -> None:
        self.name = name
        self.extra_headers = list(extra_headers or [])
        self.healthy = True
        self.hits = 0
        self.health_probes = 0
        self.lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_healthy(self, healthy: bool) -> None:
        with self.lock:
            self.healthy = healthy

    def hit_count(self) -> int:
        with self.lock:
            return self.hits

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> ControlledUpstream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RawUpstream:
    """Answers every request head with the same scripted bytes; counts connections and requests.

    With ``close_after=False`` the connection stays open after the answer, so a gateway that wrongly
    reused it would send its next request on it (``requests > connections``).
    """

    def __init__(self, response: bytes, *, close_after: bool = False) -> None:
        self.response = response
        self.close_after = close_after
        self.connections = 0
        self.requests = 0
        self.lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.05)
        self._stopping = threading.Event()
        self._clients: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def counts(self) -> tuple[int, int]:
        with self.lock:
            return self.connections, self.requests

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self.lock:
                self.connections += 1
                self._clients.append(client)
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, client: socket.socket) -> None:
        client.settimeout(0.05)
        buffer = b""
        while not self._stopping.is_set():
            try:
                data = client.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            buffer += data
            while b"\r\n\r\n" in buffer:  # the tests only send body-less requests here
                _, buffer = buffer.split(b"\r\n\r\n", 1)
                with self.lock:
                    self.requests += 1
                try:
                    client.sendall(self.response)
                except OSError:
                    break
                if self.close_after:
                    client.close()
                    return
        client.close()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(5)
        for thread in self._threads:
            thread.join(5)
        with self.lock:
            for client in self._clients:
                client.close()
        self._sock.close()

    def __enter__(self) -> RawUpstream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def refused_port() -> tuple[socket.socket, int]:
    """A port that refuses connections: bound (so nothing else takes it) but not listening."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock, int(sock.getsockname()[1])
