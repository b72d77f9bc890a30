"""One pooled HTTP/1.1 connection to an upstream target.

A lean asyncio Protocol on httptools (llhttp): the framework-level clients cost 5-100x more CPU per
request (measured, see docs/performance.md), which would put the gateway's throughput bar out of reach.
"""

from __future__ import annotations

import asyncio
from typing import Final, Protocol, cast

import httptools

from bastion.proxy.deadlines import sweeper_for
from bastion.proxy.errors import UpstreamBadResponse, UpstreamConnectError, UpstreamError, UpstreamTimeout
from bastion.server.write_batch import write_batch_for

_FRAMING_FIELDS: Final = frozenset({b"content-length", b"transfer-encoding", b"connection"})


class ResponseSink(Protocol):
    """What a connection reports to the exchange that uses it (all calls are synchronous)."""

    def on_response_head(self, status: int, headers: list[tuple[bytes, bytes]], close_delimited: bool) -> None: ...

    def on_response_body(self, chunk: bytes) -> None: ...

    def on_response_complete(self) -> None: ...

    def on_upstream_error(self, error: UpstreamError) -> None: ...

    def pause_request_body(self) -> None: ...

    def resume_request_body(self) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "_body_allowed",
        "_close_delimited",
        "_deadline",
        "_has_length",
        "_head_bytes",
        "_head_size",
        "_headers",
        "_last_activity",
        "_loop",
        "_max_head",
        "_parser",
        "_read_timeout",
        "_response_started",
        "_sink",
        "_sweeper",
        "_writes",
        "closed",
        "connected",
        "keep_alive",
        "on_idle_close",
        "requests",
        "saw_connection_header",
        "transport",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, max_head: int) -> None:
        self._loop = loop
        self._max_head = max_head
        self.transport: asyncio.Transport | None = None
        self.connected: asyncio.Future[None] = loop.create_future()
        self.closed = False
        self.keep_alive = True
        self.requests = 0
        self.on_idle_close: object = None
        self._sink: ResponseSink | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_size = 0
        self._has_length = False
        self.saw_connection_header = False  # the response named hop-by-hop fields in Connection
        self._head_bytes = 0
        self._response_started = False
        self._body_allowed = True
        self._close_delimited = False
        self._read_timeout = 0.0
        self._last_activity = 0.0
        self._deadline = 0.0
        self._sweeper = sweeper_for(loop)
        self._writes = write_batch_for(loop)

    # -- asyncio.Protocol --------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        if not self.connected.done():
            self.connected.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timer()
        sink = self._sink
        if sink is None:
            return
        self._sink = None
        if self._response_started and self._close_delimited:
            sink.on_response_complete()  # EOF ends a close-delimited body
        elif self._response_started:
            sink.on_upstream_error(UpstreamBadResponse("upstream closed mid-body", before_response=False))
        else:
            sink.on_upstream_error(UpstreamConnectError("upstream closed the connection before responding"))

    def data_received(self, data: bytes) -> None:
        if self._sink is None:
            # Bytes from an idle connection: the upstream is confused; never reuse it.
            self.abort()
            return
        self._last_activity = self._loop.time()
        if not self._response_started:
            self._head_bytes += len(data)
        try:
            assert self._parser is not None
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            self._fail(cause if isinstance(cause, UpstreamError) else
                       UpstreamBadResponse("unparseable upstream response", before_response=not self._response_started))
            return
        # Still no complete head: everything received so far is head.
        if not self._response_started and self._head_bytes > self._max_head and self._sink is not None:
            self._fail(UpstreamBadResponse("upstream response head too large"))

    def pause_writing(self) -> None:
        if self._sink is not None:
            self._sink.pause_request_body()

    def resume_writing(self) -> None:
        if self._sink is not None:
            self._sink.resume_request_body()

    # -- httptools callbacks -----------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        self._headers.append((name, value))
        self._head_size += len(name) + len(value) + 4
        if name in _FRAMING_FIELDS:
            if name == b"connection":
                # "keep-alive" and "close" name no other field: nothing more to strip.
                if value.lower() not in (b"keep-alive", b"close"):
                    self.saw_connection_header = True
            else:
                self._has_length = True

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            # Interim responses (100, 103) are not forwarded: the gateway answers Expect itself.
            self._reset_head()
            return
        # Measured on the parsed head: the read that completed it may also hold body bytes.
        if self._head_size > self._max_head:
            raise UpstreamBadResponse("upstream response head too large")
        self.keep_alive = self._parser.should_keep_alive()
        self._response_started = True
        headers = self._headers
        has_length = self._has_length
        self._headers = []
        no_body = not self._body_allowed or status in (204, 304)
        self._close_delimited = not no_body and not has_length
        if self._close_delimited:
            self.keep_alive = False
        sink = self._sink
        assert sink is not None
        sink.on_response_head(status, headers, self._close_delimited)
        if no_body:
            # llhttp cannot be told a HEAD response has no body; finish here and use a fresh parser next time.
            self._parser = None
            self._complete()

    def _reset_head(self) -> None:
        self._headers = []
        self._head_size = 0
        self._has_length = False
        self.saw_connection_header = False

    def on_body(self, body: bytes) -> None:
        if self._sink is not None and self._response_started:
            self._sink.on_response_body(body)

    def on_message_complete(self) -> None:
        if self._response_started and self._sink is not None:
            self._complete()

    # -- used by the exchange ----------------------------------------------------------------------
    def begin(self, sink: ResponseSink, head: bytes, *, body_allowed: bool, read_timeout: float,
              deadline: float) -> None:
        """Send a request head; the response is reported to ``sink``. ``read_timeout`` bounds upstream
        silence, ``deadline`` (loop time) the whole exchange."""
        self._sink = sink
        self._response_started = False
        self._close_delimited = False
        self._head_bytes = 0
        self._reset_head()
        self._body_allowed = body_allowed
        if self._parser is None:
            self._parser = httptools.HttpResponseParser(self)  # llhttp resets itself between responses
        self.requests += 1
        self._read_timeout = read_timeout
        self._deadline = deadline
        self._last_activity = self._loop.time()
        self._sweeper.add(self)
        assert self.transport is not None
        self._writes.write(self.transport, head)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self._last_activity = self._loop.time()
            self._writes.write(self.transport, data)

    def detach(self) -> None:
        """The exchange gives up on this connection (client gone, timeout): it is closed, never reused."""
        self._sink = None
        self.abort()

    def abort(self) -> None:
        self.closed = True
        self._cancel_timer()
        if self.transport is not None:
            self._writes.discard(self.transport)
            self.transport.abort()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    # -- internals ---------------------------------------------------------------------------------
    def _complete(self) -> None:
        self._cancel_timer()
        sink = self._sink
        self._sink = None
        if sink is not None:
            sink.on_response_complete()

    def _fail(self, error: UpstreamError) -> None:
        sink = self._sink
        self._sink = None
        self.abort()
        if sink is not None:
            sink.on_upstream_error(error)

    def check_deadline(self, now: float) -> bool:
        """Called by the deadline sweeper: fail the exchange after ``read_timeout`` of upstream silence."""
        if self._sink is None:
            return True
        if now - self._last_activity >= self._read_timeout:
            self._fail(UpstreamTimeout("upstream read timeout", before_response=not self._response_started))
            return True
        if now >= self._deadline:
            self._fail(UpstreamTimeout("total timeout", before_response=not self._response_started))
            return True
        return False

    def _cancel_timer(self) -> None:
        self._sweeper.discard(self)
