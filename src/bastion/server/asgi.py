"""Serve an ASGI application (admin API, console, sign-in pages) on the hardened HTTP/1.1 server.

One HTTP stack for every listener: the admin side gets the same framing guard, limits and deadlines as
the data plane, without a second server (and its signal handling) in the process.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from bastion.errors import codes

if TYPE_CHECKING:
    from bastion.server.http1 import Exchange

log = logging.getLogger("bastion.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class AsgiHandler:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, server: tuple[str, int],
                 finished: Callable[[Exchange], None]) -> None:
        self._app = app
        self._max_body = max_body_bytes
        self._server = server
        self._finished = finished

    def begin(self, exchange: Exchange) -> None:
        exchange.max_body_bytes = self._max_body

    async def handle(self, ex: Exchange) -> None:
        if ex.path_error is not None:
            ex.send_problem(codes.HTTP_PATH_INVALID)
            return
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": ex.http_version,
            "method": ex.method,
            "scheme": "https" if ex.tls else "http",
            "path": ex.path,
            "raw_path": ex.raw_target.partition(b"?")[0],
            "query_string": ex.query.encode("latin-1"),
            "root_path": "",
            "headers": list(ex.headers),
            "client": (ex.client_ip, 0),
            "server": self._server,
            "state": {"request_id": ex.request_id, "exchange": ex},
        }
        body_iter = ex.iter_body().__aiter__()
        body_done = False

        async def receive() -> Message:
            nonlocal body_done
            if not body_done:
                try:
                    chunk = await body_iter.__anext__()
                    return {"type": "http.request", "body": chunk, "more_body": True}
                except StopAsyncIteration:
                    body_done = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            if ex.client_gone:
                return {"type": "http.disconnect"}
            # Apps that wait for a disconnect after the body must not hang forever.
            return {"type": "http.disconnect"}

        pending: dict[str, Any] = {}

        async def send(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                pending["status"] = int(message["status"])
                pending["headers"] = [(bytes(k).lower(), bytes(v)) for k, v in message.get("headers", [])]
                return
            if kind != "http.response.body" or ex.response_done:
                return
            body = bytes(message.get("body", b""))
            more = bool(message.get("more_body", False))
            if not ex.response_started:
                headers = pending.get("headers", [])
                length: int | None = None
                kept = []
                for name, value in headers:
                    if name == b"content-length":
                        length = int(value) if value.isdigit() else None
                    elif name not in (b"transfer-encoding", b"connection", b"server"):
                        kept.append((name, value))
                if not more and length is None:
                    length = len(body)
                ex.start_response(pending.get("status", 500), kept, content_length=length)
            ex.write(body)
            if not more:
                ex.end()

        await self._app(scope, receive, send)
        if not ex.response_started:
            log.error("ASGI app returned without a response (request_id=%s)", ex.request_id)
            ex.send_problem(codes.GATEWAY_INTERNAL)
        elif not ex.response_done:
            ex.end()

    def finished(self, exchange: Exchange) -> None:
        self._finished(exchange)
