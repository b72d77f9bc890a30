"""The hardened HTTP/1.1 server: framing guard, limits, deadlines, connection caps.

Measured: no Python HTTP server is edge-safe as shipped (uvicorn's h11 mode serves smuggled requests,
httptools accepts 1 MB heads, a missing or doubled Host, and none has a total head deadline). So the
data plane parses with llhttp (httptools) and applies its own rules on top, before any handler runs:

- Content-Length with Transfer-Encoding, duplicate/invalid Content-Length, several Transfer-Encodings,
  a coding other than ``chunked``, Transfer-Encoding in HTTP/1.0: 400 and close;
- missing or duplicate Host, absolute-form targets whose authority differs from Host: 400 and close;
- head bytes, header count and URI length limits (431/414), counted while the head streams in;
- a total deadline for the head (whatever its speed), one for the body, an idle keep-alive timeout,
  and a stalled-write timeout; connection caps per listener and per client address.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Final, Protocol, cast
from urllib.parse import urlsplit

import httptools

from bastion.config.model import Limits
from bastion.errors import codes
from bastion.errors.codes import ErrorCode
from bastion.errors.problem import PROBLEM_CONTENT_TYPE, render_problem
from bastion.routing.path import InvalidPath, canonical_path
from bastion.server.clock import http_date
from bastion.server.write_batch import write_batch_for

log = logging.getLogger("bastion.server")

_HOST: Final = re.compile(rb"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?$")
_STATUS_REASON: Final = {
    100: b"Continue", 200: b"OK", 201: b"Created", 202: b"Accepted", 204: b"No Content",
    206: b"Partial Content", 301: b"Moved Permanently", 302: b"Found", 303: b"See Other",
    304: b"Not Modified", 307: b"Temporary Redirect", 308: b"Permanent Redirect", 400: b"Bad Request",
    401: b"Unauthorized", 403: b"Forbidden", 404: b"Not Found", 405: b"Method Not Allowed",
    408: b"Request Timeout", 409: b"Conflict", 410: b"Gone", 412: b"Precondition Failed",
    413: b"Content Too Large", 414: b"URI Too Long", 415: b"Unsupported Media Type", 417: b"Expectation Failed",
    422: b"Unprocessable Content", 429: b"Too Many Requests", 431: b"Request Header Fields Too Large",
    500: b"Internal Server Error", 501: b"Not Implemented", 502: b"Bad Gateway",
    503: b"Service Unavailable", 504: b"Gateway Timeout", 505: b"HTTP Version Not Supported",
}
_BAD_VERSION = re.compile(r"invalid (?:http|major|minor) version")
_READ_HIGH_WATER: Final = 256 * 1024
_MAX_PIPELINE: Final = 16
_HOST_NAMES: Final[dict[bytes, str]] = {}  # valid Host values -> routing host name (few distinct values in practice)
_FRAMING_FIELDS: Final = frozenset({b"content-length", b"transfer-encoding", b"host", b"expect", b"connection"})
# Field names as received -> their lowercase form, one shared object per name: clients send the same few
# names on every request, so lowering and checking a name is one dict lookup, and the shared object's
# cached hash makes every later set or dict test on it cheap. Bounded like _HOST_NAMES.
_FIELD_NAMES: Final[dict[bytes, bytes]] = {}
_MAX_FIELD_NAMES: Final = 1024
_SWEEP_INTERVAL: Final = 0.2


def status_line(status: int, version: bytes = b"1.1") -> bytes:
    reason = _STATUS_REASON.get(status, b"Status")
    return b"HTTP/" + version + b" " + str(status).encode() + b" " + reason + b"\r\n"


def _field_name(name: bytes) -> bytes:
    """The lowercase form of a field name not seen lately. A name with an underscore is refused, never
    remembered: CGI/WSGI upstreams read ``X_User`` as ``X-User``, past the identity headers we strip."""
    lowered = name.lower()
    if lowered.find(b"_") >= 0:  # find, not `in`: see routing/path.py
        raise _Refuse(codes.HTTP_MALFORMED, "underscore in header name")
    if len(_FIELD_NAMES) >= _MAX_FIELD_NAMES:
        _FIELD_NAMES.clear()  # bounded: arbitrary names cannot grow it
    _FIELD_NAMES[name] = lowered
    return lowered


class _Refuse(Exception):
    """Raised inside parser callbacks to stop parsing with a given problem."""

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Handler(Protocol):
    """What a listener runs for each request: the gateway, the admin app, or the HTTPS redirect."""

    def begin(self, exchange: Exchange) -> None:
        """Synchronous, at end of head: decide the body limit (routing happens here)."""

    async def handle(self, exchange: Exchange) -> None:
        """Produce exactly one response through the exchange."""

    def finished(self, exchange: Exchange) -> None:
        """After the response: access log and metrics (never raises)."""


class ConnectionTracker:
    """Counts a listener's connections; idle keep-alive ones are the first to go at the cap."""

    def __init__(self) -> None:
        self.count = 0
        self.per_ip: dict[str, int] = {}
        self.idle: dict[HttpConnection, None] = {}  # insertion-ordered: oldest idle first
        self.connections: set[HttpConnection] = set()

    def admit(self, conn: HttpConnection, ip: str, limits: Limits) -> ErrorCode | None:
        if self.count >= limits.max_connections:
            while self.idle and self.count >= limits.max_connections:
                oldest = next(iter(self.idle))
                oldest.close_idle()
            if self.count >= limits.max_connections:
                return codes.GATEWAY_OVERLOADED
        if self.per_ip.get(ip, 0) >= limits.max_connections_per_ip:
            return codes.GATEWAY_OVERLOADED
        self.count += 1
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1
        self.connections.add(conn)
        return None

    def release(self, conn: HttpConnection, ip: str) -> None:
        if conn not in self.connections:
            return
        self.connections.discard(conn)
        self.idle.pop(conn, None)
        self.count -= 1
        left = self.per_ip.get(ip, 1) - 1
        if left <= 0:
            self.per_ip.pop(ip, None)
        else:
            self.per_ip[ip] = left


class Listener:
    """Shared state of one listening socket."""

    def __init__(self, name: str, handler: Handler, *, tls: bool, limits: Callable[[], Limits],
                 hsts: Callable[[], bytes | None], docs_base: Callable[[], str]) -> None:
        self.name = name
        self.handler = handler
        self.tls = tls
        self.limits = limits
        self.hsts = hsts
        self.docs_base = docs_base
        self.tracker = ConnectionTracker()
        self.draining = False
        self._sweeping = False
        # Optional fast path: a handler may answer a request from the parser callback, without a task.
        self.try_fast: Callable[[Exchange], bool] | None = getattr(handler, "try_fast", None)

    def protocol_factory(self) -> HttpConnection:
        if not self._sweeping:
            self._sweeping = True
            asyncio.get_running_loop().call_later(_SWEEP_INTERVAL, self._sweep)
        return HttpConnection(self)

    def _sweep(self) -> None:
        """Fire due connection deadlines. One periodic pass instead of a timer per request: arming and
        cancelling two or three timers on every request cost more than this sweep does at 10k connections."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        for conn in list(self.tracker.connections):
            deadline = conn.deadline
            if deadline is not None and now >= deadline:
                conn.fire_deadline()
        loop.call_later(_SWEEP_INTERVAL, self._sweep)

    def drain(self) -> None:
        """Stop keep-alive: idle connections close now, busy ones after their current response."""
        self.draining = True
        for conn in list(self.tracker.idle):
            conn.close_idle()

    @property
    def busy(self) -> int:
        return self.tracker.count - len(self.tracker.idle)


_ID_BATCH: Final = 4096
_id_hex = ""
_id_next = _ID_BATCH


def new_request_id() -> str:
    """96 random bits, hex. Random bytes are drawn for 4096 ids at a time: one getrandom call per request
    showed up in profiles."""
    global _id_hex, _id_next  # noqa: PLW0603 - a module-level entropy buffer, refilled when used up
    if _id_next >= _ID_BATCH:
        _id_hex = os.urandom(12 * _ID_BATCH).hex()
        _id_next = 0
    start = _id_next * 24
    _id_next += 1
    return _id_hex[start:start + 24]


class _BodyChunks:
    """``Exchange.iter_body``'s async iterator."""

    def __init__(self, exchange: Exchange) -> None:
        self._exchange = exchange

    def __aiter__(self) -> _BodyChunks:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._exchange.next_body_chunk()
        if chunk is None:
            raise StopAsyncIteration
        return chunk


class Exchange:
    """One request and its response, as handlers see it."""

    __slots__ = (
        "_body_buffer", "_body_buffered", "_body_waiter", "_chunked_out", "_closed_by_client", "_conn",
        "_continue_sent", "_pending_head", "_refused", "_sink_end", "_sink_write", "body_bytes", "body_complete",
        "body_discarded",
        "body_expected", "bytes_sent", "client_ip", "close_after", "content_length", "expect_continue",
        "has_connection_header",
        "head_only", "headers", "host", "http_version", "keep_alive", "max_body_bytes", "method",
        "on_client_gone", "path", "path_error", "peer_ip", "query", "raw_target", "request_id",
        "response_done", "response_started", "scratch", "started", "status",
    )

    def __init__(self, conn: HttpConnection, method: str, raw_target: bytes, http_version: str,
                 headers: list[tuple[bytes, bytes]], keep_alive: bool) -> None:
        self._conn = conn
        self.method = method
        self.raw_target = raw_target
        self.http_version = http_version
        self.headers = headers
        self.keep_alive = keep_alive
        self.started = time.monotonic()
        self.request_id = new_request_id()
        self.peer_ip = conn.peer_ip
        self.client_ip = conn.peer_ip  # the gateway handler applies the trusted-proxy rules
        self.host = ""
        self.path = "/"
        self.path_error: str | None = None
        self.query = ""
        self.content_length: int | None = None
        self.body_expected = False
        self.expect_continue = False
        self.has_connection_header = False
        self.head_only = method == "HEAD"
        self.max_body_bytes = conn.limits.max_body_bytes
        self.body_bytes = 0
        self.body_complete = False
        self.body_discarded = False
        self._body_buffer: deque[bytes] = deque()
        self._body_buffered = 0
        self._body_waiter: asyncio.Future[None] | None = None
        self._sink_write: Callable[[bytes], None] | None = None
        self._sink_end: Callable[[], None] | None = None
        self._continue_sent = False
        self._closed_by_client = False
        self._refused = False
        self.on_client_gone: Callable[[], None] | None = None
        self.response_started = False
        self.response_done = False
        self._pending_head = b""
        self._chunked_out = False
        self.close_after = False
        self.status = 0
        self.bytes_sent = 0
        self.scratch: dict[str, object] = {}

    # -- request body ------------------------------------------------------------------------------
    @property
    def tls(self) -> bool:
        return self._conn.listener.tls

    @property
    def client_gone(self) -> bool:
        """The client left, or the server refused the request itself: either way the handler must stop."""
        return self._closed_by_client or self._refused

    def _feed_body(self, chunk: bytes) -> None:
        self.body_bytes += len(chunk)
        if self.body_bytes > self.max_body_bytes:
            raise _Refuse(codes.HTTP_BODY_TOO_LARGE, "body exceeds the route limit")
        if self._sink_write is not None:
            self._sink_write(chunk)
            return
        self._body_buffer.append(chunk)
        self._body_buffered += len(chunk)
        if self._body_buffered > _READ_HIGH_WATER:
            self._conn.pause_reading_for_body()
        self._wake()

    def _finish_body(self) -> None:
        self.body_complete = True
        if self._sink_end is not None:
            self._sink_end()
        self._wake()

    def _wake(self) -> None:
        waiter = self._body_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def discard_body(self) -> None:
        """The handler will not read the body (e.g. the HTTPS redirect): ignore it and close afterwards."""
        self.body_discarded = True
        self.body_expected = False
        self.close_after = True

    def send_continue(self) -> None:
        """Answer ``Expect: 100-continue`` once the request has passed every policy."""
        if self.expect_continue and not self._continue_sent and not self.body_complete:
            self._continue_sent = True
            self._conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def iter_body(self) -> AsyncIterator[bytes]:
        """Yield the request body (used by local applications)."""
        self.send_continue()
        return _BodyChunks(self)

    async def next_body_chunk(self) -> bytes | None:
        """The next request-body chunk, or None at the end of the body."""
        while True:
            if self._body_buffer:
                chunk = self._body_buffer.popleft()
                self._body_buffered -= len(chunk)
                self._conn.resume_reading_for_body()
                return chunk
            if self.body_complete or not self.body_expected or self.client_gone:
                return None
            self._body_waiter = asyncio.get_running_loop().create_future()
            await self._body_waiter
            self._body_waiter = None

    def set_body_sink(self, write: Callable[[bytes], None], end: Callable[[], None]) -> None:
        """Stream the body straight into ``write`` (the proxy); ``end`` runs at the end of the body."""
        self.send_continue()
        while self._body_buffer:
            chunk = self._body_buffer.popleft()
            write(chunk)
        self._body_buffered = 0
        self._conn.resume_reading_for_body()
        if self.body_complete or not self.body_expected:
            end()
            return
        self._sink_write = write
        self._sink_end = end

    def clear_body_sink(self) -> None:
        self._sink_write = None
        self._sink_end = None

    def add_producer_for(self, producer: Callable[[bool], None]) -> None:
        """``producer(True)`` is called when the client reads too slowly, ``producer(False)`` to resume."""
        self._conn.add_producer(producer)

    def remove_producer_for(self, producer: Callable[[bool], None]) -> None:
        self._conn.remove_producer(producer)

    def pause_body(self) -> None:
        self._conn.pause_reading_for_body()

    def resume_body(self) -> None:
        self._conn.resume_reading_for_body()

    # -- response ----------------------------------------------------------------------------------
    def start_response(self, status: int, headers: list[tuple[bytes, bytes]], *,
                       content_length: int | None, body_allowed: bool = True) -> None:
        """Queue the response head; it is written with the first body bytes (one syscall for both)."""
        if self.response_started:
            raise RuntimeError("response already started")
        self.response_started = True
        self.status = status
        conn = self._conn
        if conn.listener.draining or conn.requests_served + 1 >= conn.limits.max_requests_per_connection:
            self.close_after = True
        if self.body_expected and not self.body_complete:
            self.close_after = True  # answered before its body was read: the rest cannot be parsed as a request
        parts = [status_line(status)]
        for name, value in headers:
            parts.append(name + b": " + value + b"\r\n")
        parts.append(b"x-request-id: " + self.request_id.encode() + b"\r\n")
        if conn.listener.tls:
            hsts = conn.listener.hsts()
            if hsts:
                parts.append(b"strict-transport-security: " + hsts + b"\r\n")
        body_allowed = body_allowed and not self.head_only and status not in (204, 304)
        if content_length is not None:
            parts.append(b"content-length: " + str(content_length).encode() + b"\r\n")
        elif body_allowed:
            if self.http_version == "1.1":
                self._chunked_out = True
                parts.append(b"transfer-encoding: chunked\r\n")
            else:
                self.close_after = True  # HTTP/1.0: the body ends when the connection closes
        if self.close_after or not self.keep_alive:
            parts.append(b"connection: close\r\n")
        elif self.http_version == "1.0":
            parts.append(b"connection: keep-alive\r\n")
        parts.append(b"\r\n")
        self._pending_head = b"".join(parts)
        if not body_allowed:
            self._chunked_out = False

    def write(self, chunk: bytes) -> None:
        if self.response_done or self._closed_by_client or self.head_only:
            return
        if not chunk:
            return
        if self._chunked_out:
            chunk = b"%x\r\n%b\r\n" % (len(chunk), chunk)
        if self._pending_head:
            chunk = self._pending_head + chunk
            self._pending_head = b""
        self.bytes_sent += len(chunk)
        self._conn.write(chunk)

    def end(self) -> None:
        if self.response_done:
            return
        tail = self._pending_head
        self._pending_head = b""
        if self._chunked_out and not self.head_only:
            tail += b"0\r\n\r\n"
        if tail and not self._closed_by_client:
            self._conn.write(tail)
        self.response_done = True
        self._conn.exchange_finished(self)

    def send(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.start_response(status, headers, content_length=len(body))
        self.write(body)
        self.end()

    def send_problem(self, code: ErrorCode, detail: str | None = None, *,
                     headers: list[tuple[bytes, bytes]] | None = None, status: int | None = None) -> None:
        body = render_problem(code, request_id=self.request_id, detail=detail, status=status,
                              docs_base=self._conn.listener.docs_base())
        head = [(b"content-type", PROBLEM_CONTENT_TYPE), (b"cache-control", b"no-store"),
                (b"x-content-type-options", b"nosniff"), (b"date", http_date())]
        if headers:
            head.extend(headers)
        self.scratch["reject_code"] = code.code
        self.send(status or code.status, head, body)

    def abort(self) -> None:
        """The response cannot be completed (it has started and then failed): drop the connection."""
        self.close_after = True
        self.response_done = True
        self._conn.abort()
        self._conn.exchange_finished(self)

    def _client_gone(self) -> None:
        self._closed_by_client = True
        self._stop_handler()

    def _stop_handler(self) -> None:
        self._wake()
        callback = self.on_client_gone
        if callback is not None:
            self.on_client_gone = None
            callback()


class HttpConnection(asyncio.Protocol):
    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.limits = listener.limits()
        self._max_header_count = self.limits.max_header_count  # read per header: a native attribute
        self.loop = asyncio.get_running_loop()
        self._writes = write_batch_for(self.loop)
        self.transport: asyncio.Transport | None = None
        self.peer_ip = ""
        self.parser = httptools.HttpRequestParser(self)
        self.requests_served = 0
        self._admitted = False
        self._closed = False
        self.deadline: float | None = None  # loop time at which _deadline_callback fires (listener sweep)
        self._deadline_callback: Callable[[], None] | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._read_paused_body = False
        self._read_paused_pipeline = False
        self._write_paused = False
        self._producer: Callable[[bool], None] | None = None
        # head being parsed
        self._in_head = False
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._framing: list[tuple[bytes, bytes]] = []
        self._head_size = 0
        self._head_bytes = 0
        self._parsing: Exchange | None = None  # exchange whose body is being read
        self._active: Exchange | None = None  # exchange whose response is being produced
        self._queue: deque[Exchange] = deque()
        self._fatal: tuple[ErrorCode, str] | None = None

    # -- connection lifecycle ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        tcp = cast(asyncio.Transport, transport)
        self.transport = tcp
        peer = tcp.get_extra_info("peername")
        self.peer_ip = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        refusal = self.listener.tracker.admit(self, self.peer_ip, self.limits)
        if refusal is not None:
            # Over capacity: a short answer (no parsing, no handler), then close.
            request_id = new_request_id()
            body = render_problem(refusal, request_id=request_id, docs_base=self.listener.docs_base(),
                                  detail="The gateway is at capacity; retry shortly.")
            tcp.write(status_line(refusal.status) + b"content-type: application/problem+json\r\n"
                      b"cache-control: no-store\r\nx-content-type-options: nosniff\r\nretry-after: 1\r\n"
                      b"x-request-id: " + request_id.encode() + b"\r\nconnection: close\r\n"
                      b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            self._closed = True
            transport.close()
            return
        self._admitted = True
        # The first request must arrive within the head deadline: an idle new socket is not free.
        self._set_timer(self.limits.head_timeout, self._on_head_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._cancel_timer()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        if self._admitted:
            self.listener.tracker.release(self, self.peer_ip)
        for ex in (self._active, self._parsing, *self._queue):
            if ex is not None and not ex.response_done:
                ex._client_gone()
        self._queue.clear()
        active = self._active
        if active is not None and not active.response_done:
            # Nobody to answer. Finishing here (not in the handler) also covers requests served on callbacks
            # only: the access log still gets its line (status 0) and per-request cleanups still run.
            active.scratch.setdefault("log_reason", "client closed the connection")
            active.abort()

    def data_received(self, data: bytes) -> None:
        if self._closed or self._fatal is not None:
            return
        if self._in_head:
            self._head_bytes += len(data)
        elif self._parsing is None:
            self.listener.tracker.idle.pop(self, None)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(codes.HTTP_UPGRADE_UNSUPPORTED, "upgrade or CONNECT requested")
            return
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__ if isinstance(exc.__context__, _Refuse) else exc.__cause__
            if isinstance(cause, _Refuse):
                self._refuse(cause.code, cause.reason)
            else:
                log.error("request parser callback failed", exc_info=exc)
                self._refuse(codes.GATEWAY_INTERNAL, "internal error in parser callback")
            return
        except httptools.HttpParserError as exc:
            self._refuse(*_classify_parser_error(str(exc)))
            return
        if self._in_head and self._head_bytes > self.limits.max_header_bytes + self.limits.max_uri_bytes:
            self._refuse(codes.HTTP_HEADERS_TOO_LARGE, "request head exceeds the limit")

    def eof_received(self) -> bool | None:
        # A half-closed client still gets its pending response; then the connection closes.
        idle = self._active is None and self._parsing is None
        if idle or (self._parsing is not None and not self._parsing.body_complete):  # a body that never completes
            # Closed here, not by the transport (return False): a response finished in this loop round may
            # still sit in the write batch, and a transport closing on its own would drop it.
            self._close()
            return True
        for ex in (self._active, *self._queue):
            if ex is not None:
                ex.keep_alive = False
        return True

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._producer is not None:
            self._producer(True)
        # A client that stops reading may not hold the upstream connection forever.
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self.limits.idle_timeout, self._on_write_stalled)

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        if self._producer is not None:
            self._producer(False)

    def add_producer(self, producer: Callable[[bool], None]) -> None:
        """Register a callback told to pause (True) / resume (False) when the client reads slowly."""
        self._producer = producer  # one exchange at a time streams into this connection
        if self._write_paused:
            producer(True)

    def remove_producer(self, producer: Callable[[bool], None]) -> None:
        if self._producer is producer:
            self._producer = None

    # -- httptools callbacks -----------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._in_head = True
        self._url = b""
        self._headers = []
        self._framing = []
        self._head_size = 0
        if self.requests_served > 0 or self._active is not None:
            # The idle timer ran until now; the head gets its own total deadline.
            self._set_timer(self.limits.head_timeout, self._on_head_timeout)
        if self._active is not None and self.transport is not None and not self._read_paused_pipeline:
            # A pipelined request while a response is pending: read no more than what already arrived
            # (bounded memory). Until then reading goes on, so a client that goes away is noticed at once.
            self._read_paused_pipeline = True
            self.transport.pause_reading()

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.limits.max_uri_bytes:
            raise _Refuse(codes.HTTP_URI_TOO_LONG, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = _FIELD_NAMES.get(name)
        if lowered is None:
            lowered = _field_name(name)
        headers = self._headers
        headers.append((lowered, value))
        self._head_size += len(lowered) + len(value) + 4
        if lowered in _FRAMING_FIELDS:
            self._framing.append((lowered, value))  # the few fields _check_framing must look at
        if len(headers) > self._max_header_count:
            raise _Refuse(codes.HTTP_HEADERS_TOO_LARGE, "too many header fields")

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_timer()
        parser = self.parser
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise _Refuse(codes.HTTP_VERSION_UNSUPPORTED, f"HTTP/{version}")
        headers = self._headers
        if len(self._url) + self._head_size > self.limits.max_header_bytes:
            raise _Refuse(codes.HTTP_HEADERS_TOO_LARGE, "request head exceeds the limit")
        if parser.should_upgrade():
            # llhttp flags CONNECT and Upgrade here, before it raises HttpParserUpgrade after this callback:
            # refuse now, or the request would already have been handed to the handler (and the upstream).
            raise _Refuse(codes.HTTP_UPGRADE_UNSUPPORTED, "upgrade or CONNECT requested")
        method = parser.get_method().decode("ascii", "replace")
        ex = Exchange(self, method, self._url, version, headers, parser.should_keep_alive())
        _check_framing(ex, self._framing)
        if self.listener.draining:
            ex.keep_alive = False
        self._parsing = ex
        self.listener.handler.begin(ex)
        if ex.body_discarded:
            pass  # never read, so never too large: the response closes the connection
        elif ex.content_length is not None and ex.content_length > ex.max_body_bytes:
            raise _Refuse(codes.HTTP_BODY_TOO_LARGE, "declared body exceeds the route limit")
        if ex.body_expected:
            self._set_timer(self.limits.body_timeout, self._on_body_timeout)
        if self._active is None:
            self._start(ex)
        else:
            if len(self._queue) >= _MAX_PIPELINE:
                raise _Refuse(codes.GATEWAY_OVERLOADED, "too many pipelined requests")
            self._queue.append(ex)

    def on_body(self, body: bytes) -> None:
        ex = self._parsing
        if ex is not None:
            if ex.body_discarded:
                self.pause_reading_for_body()  # stop pulling a body nobody will read
                return
            ex._feed_body(body)

    def on_message_complete(self) -> None:
        ex = self._parsing
        self._parsing = None
        self._cancel_timer()
        if ex is None:
            return
        ex._finish_body()

    # -- running exchanges -------------------------------------------------------------------------
    def _start(self, ex: Exchange) -> None:
        self._active = ex
        try_fast = self.listener.try_fast
        if try_fast is not None and not ex.response_started and try_fast(ex):
            return  # answered, or in flight on callbacks only
        self.loop.create_task(self._run(ex))

    async def _run(self, ex: Exchange) -> None:
        if ex.response_started:
            return  # refused (body limit, framing, deadline) before the handler got to run
        try:
            await self.listener.handler.handle(ex)
        except Exception:
            log.exception("unhandled error in request handler (request_id=%s)", ex.request_id)
            ex.scratch["reject_code"] = codes.GATEWAY_INTERNAL.code
            if not ex.response_started:
                ex.close_after = True
                ex.send_problem(codes.GATEWAY_INTERNAL)
            elif not ex.response_done:
                ex.abort()
        if not ex.response_done and ex.client_gone:
            # The client left before its answer: nobody to answer, and not a gateway error. Status 0 in the
            # access log says that no response was sent.
            ex.scratch.setdefault("log_reason", "client closed the connection")
            ex.abort()
            return
        if not ex.response_done:
            log.error("handler returned without a response (request_id=%s)", ex.request_id)
            if not ex.response_started:
                ex.send_problem(codes.GATEWAY_INTERNAL)
            else:
                ex.abort()

    def exchange_finished(self, ex: Exchange) -> None:
        if ex is not self._active:
            return
        self._active = None
        self.requests_served += 1
        try:
            self.listener.handler.finished(ex)
        except Exception:
            log.exception("access log / metrics failed (request_id=%s)", ex.request_id)
        if self._closed or self.transport is None:
            return
        body_unread = ex.body_expected and not ex.body_complete
        if ex.close_after or not ex.keep_alive or body_unread or self.listener.draining:
            # An unread body would be parsed as the next request: close instead of draining it.
            self._close()
            return
        if self._queue:
            self._start(self._queue.popleft())
            return
        if self._fatal is not None:
            # The refused request came after every queued one: answer those first, in order.
            code, reason = self._fatal
            self._fatal = None
            self._send_fatal(code, reason)
            return
        if self._read_paused_pipeline:
            self._read_paused_pipeline = False
            if not self._read_paused_body:
                self.transport.resume_reading()
        if self._parsing is None:
            self.listener.tracker.idle[self] = None
            self._set_timer(self.limits.idle_timeout, self.close_idle)

    # -- flow control ------------------------------------------------------------------------------
    def pause_reading_for_body(self) -> None:
        if not self._read_paused_body and self.transport is not None and not self._closed:
            self._read_paused_body = True
            self.transport.pause_reading()

    def resume_reading_for_body(self) -> None:
        if self._read_paused_body and self.transport is not None and not self._closed:
            self._read_paused_body = False
            if not self._read_paused_pipeline:
                self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not self._closed and not transport.is_closing():
            self._writes.write(transport, data)

    # -- refusals, timers, closing -----------------------------------------------------------------
    def _refuse(self, code: ErrorCode, reason: str) -> None:
        """A request the server refuses before any handler: problem+json, then close."""
        log.info("refused request from %s: %s (%s)", self.peer_ip, code.code, reason)
        self._cancel_timer()
        if self.transport is not None:
            self.transport.pause_reading()
        ex = self._parsing
        if ex is not None and ex is self._active and not ex.response_started:
            # The refused request is the one being handled (e.g. its body is too large).
            ex.close_after = True
            ex.clear_body_sink()
            ex.scratch["log_reason"] = reason
            # Stops the handler's upstream work, and one still waiting (e.g. on an upstream connection) sees
            # client_gone: it must not send a request whose body will never be complete upstream.
            ex._refused = True
            ex._stop_handler()
            ex.send_problem(code)
            self._close()
            return
        if ex is not None and ex is self._active:
            ex.abort()
            return
        if self._active is not None:
            if ex is not None and self._queue and self._queue[-1] is ex:
                self._queue.pop()  # a queued request whose body failed gets the refusal, not a handler
            self._fatal = (code, reason)  # answer after the responses in progress and queued
            return
        self._send_fatal(code, reason)

    def _send_fatal(self, code: ErrorCode, reason: str) -> None:
        ex = Exchange(self, "-", self._url[:256], "1.1", [], False)
        ex.close_after = True
        ex.scratch["log_reason"] = reason
        self._active = ex
        ex.send_problem(code)

    def _on_head_timeout(self) -> None:
        if self._active is not None and not self._in_head:
            return  # waiting on our own response, not on the client
        if not self._in_head and self.requests_served > 0:
            self.close_idle()
            return
        self._refuse(codes.HTTP_REQUEST_TIMEOUT, "request head deadline passed")

    def _on_body_timeout(self) -> None:
        self._refuse(codes.HTTP_REQUEST_TIMEOUT, "request body deadline passed")

    def _on_write_stalled(self) -> None:
        self._write_timer = None
        log.info("closing connection from %s: client stopped reading", self.peer_ip)
        self.abort()

    def _set_timer(self, delay: float, callback: Callable[[], None]) -> None:
        self.deadline = self.loop.time() + delay
        self._deadline_callback = callback

    def _cancel_timer(self) -> None:
        self.deadline = None
        self._deadline_callback = None

    def fire_deadline(self) -> None:
        callback = self._deadline_callback
        self.deadline = None
        self._deadline_callback = None
        if callback is not None and not self._closed:
            callback()

    def close_idle(self) -> None:
        if self._active is None and self._parsing is None:
            self._close()

    def _close(self) -> None:
        self._cancel_timer()
        self.listener.tracker.idle.pop(self, None)
        if self.transport is not None and not self._closed:
            self._closed = True
            self._writes.flush_transport(self.transport)
            self.transport.close()
            self.listener.tracker.release(self, self.peer_ip)

    def abort(self) -> None:
        self._cancel_timer()
        if self.transport is not None:
            self._closed = True
            self._writes.discard(self.transport)
            self.transport.abort()
            self.listener.tracker.release(self, self.peer_ip)


def _classify_parser_error(message: str) -> tuple[ErrorCode, str]:
    lowered = message.lower()
    if "content-length" in lowered or "transfer-encoding" in lowered:
        return codes.HTTP_AMBIGUOUS_FRAMING, message
    if _BAD_VERSION.match(lowered):
        # Only a version llhttp could not accept; "Expected CRLF after version" (bare LF, junk) is malformed.
        return codes.HTTP_VERSION_UNSUPPORTED, message
    return codes.HTTP_MALFORMED, message


def _check_framing(ex: Exchange, fields: list[tuple[bytes, bytes]]) -> None:
    """The request-smuggling and Host rules llhttp does not enforce on its own (``fields``: the framing
    fields among the headers, collected while parsing)."""
    content_lengths = 0
    transfer_encodings: list[bytes] = []
    hosts: list[bytes] = []
    for name, value in fields:
        if name == b"content-length":
            content_lengths += 1
            if not value.strip().isdigit():
                raise _Refuse(codes.HTTP_AMBIGUOUS_FRAMING, "invalid Content-Length")
            ex.content_length = int(value)
        elif name == b"transfer-encoding":
            transfer_encodings.append(value)
        elif name == b"host":
            hosts.append(value)
        elif name == b"expect":
            if value.strip().lower() != b"100-continue":
                raise _Refuse(codes.HTTP_EXPECTATION_FAILED, "unsupported Expect")
            ex.expect_continue = ex.http_version == "1.1"
        elif name == b"connection":
            ex.has_connection_header = True
    if content_lengths > 1:
        raise _Refuse(codes.HTTP_AMBIGUOUS_FRAMING, "duplicate Content-Length")
    if transfer_encodings:
        if ex.http_version == "1.0":
            raise _Refuse(codes.HTTP_AMBIGUOUS_FRAMING, "Transfer-Encoding in HTTP/1.0")
        if len(transfer_encodings) > 1:
            raise _Refuse(codes.HTTP_AMBIGUOUS_FRAMING, "more than one Transfer-Encoding")
        if transfer_encodings[0].strip().lower() != b"chunked":
            raise _Refuse(codes.HTTP_AMBIGUOUS_FRAMING, "transfer coding other than chunked")
        if content_lengths:
            raise _Refuse(codes.HTTP_AMBIGUOUS_FRAMING, "Content-Length with Transfer-Encoding")
        ex.body_expected = True
    elif ex.content_length:
        ex.body_expected = True
    if len(hosts) != 1:
        raise _Refuse(codes.HTTP_HOST_INVALID, "missing Host" if not hosts else "duplicate Host")
    host = hosts[0].strip()
    host_name = _HOST_NAMES.get(host)
    if host_name is None:
        if not _HOST.match(host):
            raise _Refuse(codes.HTTP_HOST_INVALID, "invalid Host")
        host_text = host.decode("latin-1").lower()
        if host_text.startswith("["):
            host_name = host_text[: host_text.index("]") + 1]
        else:
            host_name = host_text.rsplit(":", 1)[0] if ":" in host_text else host_text
        if len(_HOST_NAMES) >= 1024:
            _HOST_NAMES.clear()  # bounded: arbitrary Host values cannot grow it
        _HOST_NAMES[host] = host_name
    ex.host = host_name
    target = ex.raw_target
    if target.find(b"#") >= 0:  # before urlsplit, which would silently drop the fragment of an absolute-form target
        raise _Refuse(codes.HTTP_PATH_INVALID, "fragment in request target")
    if target[:1] != b"/":
        lowered = target[:8].lower()
        if not (lowered.startswith(b"http://") or lowered.startswith(b"https://")):
            raise _Refuse(codes.HTTP_PATH_INVALID, "unsupported request-target form")
        parts = urlsplit(target.decode("latin-1"))
        if parts.netloc.lower() != host.decode("latin-1").lower() or "@" in parts.netloc:
            raise _Refuse(codes.HTTP_HOST_INVALID, "absolute-form authority differs from Host")
        target = (parts.path or "/").encode("latin-1") + (b"?" + parts.query.encode("latin-1")
                                                          if parts.query else b"")
    raw_path, _, query = target.partition(b"?")
    ex.query = query.decode("latin-1")
    try:
        ex.path = canonical_path(raw_path)
    except InvalidPath as exc:
        ex.path_error = str(exc)
