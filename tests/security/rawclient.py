"""A raw-socket HTTP/1.1 client for hostile requests: it trusts nothing the server sends and never hangs.

Every read is bounded by an absolute deadline. Requests are given as bytes, or as a sequence of byte
chunks, float pauses (seconds) and :data:`HALF_CLOSE`; a sequence is sent from a background thread so
that the response is read while a slow client is still "typing".
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from tests.support.processes import FORBIDDEN_IN_ERRORS


class _HalfClose:
    def __repr__(self) -> str:
        return "HALF_CLOSE"


HALF_CLOSE: Final = _HalfClose()
"""In a chunk sequence: shut down the sending side (the client's FIN), keep reading."""

Part = bytes | float | _HalfClose
Send = bytes | Sequence[Part]


class ReadTimeout(AssertionError):
    """The response did not complete within the hard timeout (a hang is a test failure, not a stall)."""


@dataclass
class RawResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    interim: list[int] = field(default_factory=list)
    elapsed: float = 0.0

    def header(self, name: str) -> str | None:
        values = self.header_all(name)
        return values[0] if values else None

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [value for key, value in self.headers if key == name]

    def json(self) -> Any:
        return json.loads(self.body)


class RawConnection:
    """One TCP connection to the server under test."""

    def __init__(self, port: int, host: str = "127.0.0.1", connect_timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=connect_timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        self.eof = False
        self.reset = False
        self._writer: threading.Thread | None = None
        self._writer_sock: socket.socket | None = None
        self.opened = time.monotonic()

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for sock in (self.sock, self._writer_sock):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
        if self._writer is not None:
            self._writer.join(5)

    # -- sending -----------------------------------------------------------------------------------
    @staticmethod
    def _send_parts(sock: socket.socket, parts: Sequence[Part]) -> bool:
        try:
            for part in parts:
                if isinstance(part, _HalfClose):
                    sock.shutdown(socket.SHUT_WR)
                elif isinstance(part, bytes):
                    if part:
                        sock.sendall(part)
                else:
                    time.sleep(part)
        except OSError:
            return False  # the server closed the connection: a slow client stops typing
        return True

    def send(self, data: Send) -> bool:
        """Send now, in this thread; False if the server closed the connection meanwhile."""
        return self._send_parts(self.sock, [data] if isinstance(data, bytes) else data)

    def send_background(self, data: Send) -> None:
        """Send from a thread (its own descriptor, so read timeouts do not affect it)."""
        parts: Sequence[Part] = [data] if isinstance(data, bytes) else data
        self._writer_sock = self.sock.dup()
        self._writer_sock.settimeout(10.0)
        self._writer = threading.Thread(target=self._send_parts, args=(self._writer_sock, parts), daemon=True)
        self._writer.start()

    # -- reading -----------------------------------------------------------------------------------
    def _fill(self, deadline: float) -> bool:
        """Read more into the buffer; False at EOF. ReadTimeout past the deadline."""
        if self.eof:
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ReadTimeout(f"no complete response in time; received {self.buffer[:200]!r}")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            raise ReadTimeout(f"no complete response in time; received {self.buffer[:200]!r}") from None
        except ConnectionResetError:
            self.eof = self.reset = True
            return False
        if not data:
            self.eof = True
            return False
        self.buffer += data
        return True

    def _take_until(self, marker: bytes, deadline: float) -> bytes | None:
        while marker not in self.buffer:
            if not self._fill(deadline):
                return None
        index = self.buffer.index(marker) + len(marker)
        out, self.buffer = self.buffer[:index], self.buffer[index:]
        return out

    def _take(self, count: int, deadline: float) -> bytes | None:
        while len(self.buffer) < count:
            if not self._fill(deadline):
                return None
        out, self.buffer = self.buffer[:count], self.buffer[count:]
        return out

    def read_response(self, timeout: float, *, head_request: bool = False) -> RawResponse | None:
        """Read one final response (1xx are collected in ``interim``); None if closed before any byte."""
        started = time.monotonic()
        deadline = started + timeout
        interim: list[int] = []
        while True:
            head = self._take_until(b"\r\n\r\n", deadline)
            if head is None:
                assert not self.buffer and not interim, f"connection closed mid-response: {self.buffer[:300]!r}"
                return None
            lines = head[:-4].split(b"\r\n")
            version, _, rest = lines[0].partition(b" ")
            assert version == b"HTTP/1.1", f"bad status line {lines[0]!r}"
            code_text, _, reason = rest.partition(b" ")
            assert len(code_text) == 3 and code_text.isdigit(), f"bad status line {lines[0]!r}"
            status = int(code_text)
            headers = []
            for line in lines[1:]:
                name, sep, value = line.partition(b":")
                assert sep and name and name == name.strip(), f"bad response header line {line!r}"
                headers.append((name.decode("latin-1").lower(), value.decode("latin-1").strip()))
            if 100 <= status < 200:
                assert not headers or status != 100, "100 Continue with headers"
                interim.append(status)
                continue
            break
        response = RawResponse(status, reason.decode("latin-1"), headers, b"", interim=interim)
        lengths = response.header_all("content-length")
        encodings = response.header_all("transfer-encoding")
        assert not (lengths and encodings), "response with both Content-Length and Transfer-Encoding"
        if head_request or status in (204, 304):
            pass
        elif encodings:
            assert encodings == ["chunked"], encodings
            response.body = self._read_chunked(deadline)
        elif lengths:
            assert len(lengths) == 1 and lengths[0].isdigit(), f"bad response Content-Length: {lengths}"
            data = self._take(int(lengths[0]), deadline)
            assert data is not None, f"response body truncated: {self.buffer[:200]!r}"
            response.body = data
        else:
            while self._fill(deadline):  # close-delimited
                pass
            response.body, self.buffer = self.buffer, b""
        response.elapsed = time.monotonic() - started
        return response

    def _read_chunked(self, deadline: float) -> bytes:
        body = b""
        while True:
            line = self._take_until(b"\r\n", deadline)
            assert line is not None, "chunked response truncated"
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                while True:
                    trailer = self._take_until(b"\r\n", deadline)
                    assert trailer is not None, "chunked response truncated in trailers"
                    if trailer == b"\r\n":
                        return body
            data = self._take(size + 2, deadline)
            assert data is not None and data.endswith(b"\r\n"), "response chunk truncated"
            body += data[:-2]

    def closed_by_server(self, wait: float = 0.5) -> bool:
        """True if the server closes within ``wait`` seconds; anything it sends meanwhile stays in ``buffer``."""
        return self.wait_closed(wait) is not None

    def wait_closed(self, timeout: float) -> float | None:
        """Seconds (since now) until the server closes, or None if it is still open after ``timeout``."""
        started = time.monotonic()
        deadline = started + timeout
        try:
            while self._fill(deadline):
                pass
        except ReadTimeout:
            return None
        return time.monotonic() - started


def assert_safe_raw_problem(response: RawResponse, code: str | None = None) -> dict[str, Any]:
    """The raw-socket twin of ``assert_safe_problem``: problem+json, a code, a request id, nothing internal."""
    text = response.body.decode("utf-8", "replace")
    assert response.header("content-type") == "application/problem+json", (response.status, text)
    assert response.header("cache-control") == "no-store", response.headers
    assert response.header("x-content-type-options") == "nosniff", response.headers
    body = response.json()
    assert isinstance(body, dict)
    assert set(body) >= {"type", "title", "status", "detail", "code", "request_id"}, body
    assert body["status"] == response.status, body
    assert body["request_id"] and body["request_id"] == response.header("x-request-id"), (body, response.headers)
    if code is not None:
        assert body["code"] == code, body
    for needle in FORBIDDEN_IN_ERRORS:
        assert needle not in text, f"{needle!r} leaked in {text}"
    return body
