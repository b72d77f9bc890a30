"""A small closed-loop HTTP/1.1 load generator, used only when wrk cannot be installed.

N keep-alive connections, each sending the next GET as soon as the previous response is complete,
for a fixed duration; latency percentiles over all completed requests. It is far slower than wrk
(one Python core), so results made with it are labelled and are not comparable with wrk's.

    python bench/loadgen.py http://127.0.0.1:8080/api/v1/items -c 50 -d 10 [--json] [-H 'Name: value']
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import urlsplit


@dataclass
class Stats:
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    non_2xx_3xx: int = 0
    errors: dict[str, int] = field(default_factory=lambda: {"connect": 0, "read": 0, "write": 0, "timeout": 0})
    bytes_read: int = 0


class _Connection(asyncio.Protocol):
    """One keep-alive connection running requests back to back."""

    def __init__(self, request: bytes, stats: Stats, stop_at: float, closed: asyncio.Future[None]) -> None:
        self._request = request
        self._stats = stats
        self._stop_at = stop_at
        self._closed = closed
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._sent_at = 0.0
        self._in_flight = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        self._send()

    def _send(self) -> None:
        assert self._transport is not None
        if time.perf_counter() >= self._stop_at:
            self._transport.close()
            return
        self._in_flight = True
        self._sent_at = time.perf_counter()
        self._transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._stats.bytes_read += len(data)
        while self._in_flight:
            done = self._parse()
            if done is None:
                return
            keep_alive = done
            now = time.perf_counter()
            self._in_flight = False
            if now <= self._stop_at:
                self._stats.latencies.append(now - self._sent_at)
            if not keep_alive:
                assert self._transport is not None
                self._transport.close()
                return
            self._send()

    def _parse(self) -> bool | None:
        """Consume one complete response from the buffer; None while incomplete, else keep-alive."""
        head_end = self._buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return None
        head = bytes(self._buffer[:head_end]).decode("latin-1")
        lines = head.split("\r\n")
        parts = lines[0].split(" ", 2)
        status = int(parts[1])
        length = 0
        chunked = False
        keep_alive = True
        for line in lines[1:]:
            name, _, value = line.partition(":")
            lowered = name.strip().lower()
            value = value.strip()
            if lowered == "content-length":
                length = int(value)
            elif lowered == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
            elif lowered == "connection" and value.lower() == "close":
                keep_alive = False
        body_start = head_end + 4
        if chunked:
            end = self._chunked_end(body_start)
            if end is None:
                return None
        else:
            end = body_start + length
            if len(self._buffer) < end:
                return None
        del self._buffer[:end]
        if time.perf_counter() <= self._stop_at:
            self._stats.statuses[status] = self._stats.statuses.get(status, 0) + 1
            if not 200 <= status < 400:
                self._stats.non_2xx_3xx += 1
        return keep_alive

    def _chunked_end(self, position: int) -> int | None:
        buffer = self._buffer
        while True:
            line_end = buffer.find(b"\r\n", position)
            if line_end < 0:
                return None
            size = int(bytes(buffer[position:line_end]).split(b";")[0], 16)
            position = line_end + 2
            if size == 0:
                trailer_end = buffer.find(b"\r\n\r\n", position - 2)
                return None if trailer_end < 0 else trailer_end + 4
            position += size + 2
            if len(buffer) < position:
                return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._in_flight and time.perf_counter() < self._stop_at:
            self._stats.errors["read"] += 1
        if not self._closed.done():
            self._closed.set_result(None)


async def _worker(host: str, port: int, request: bytes, stats: Stats, stop_at: float) -> None:
    loop = asyncio.get_running_loop()
    while time.perf_counter() < stop_at:
        closed: asyncio.Future[None] = loop.create_future()

        def factory(closed: asyncio.Future[None] = closed) -> _Connection:
            return _Connection(request, stats, stop_at, closed)

        try:
            await loop.create_connection(factory, host, port)
        except OSError:
            stats.errors["connect"] += 1
            await asyncio.sleep(0.01)
            continue
        remaining = stop_at - time.perf_counter() + 2.0
        try:
            await asyncio.wait_for(asyncio.shield(closed), max(remaining, 0.1))
        except TimeoutError:
            stats.errors["timeout"] += 1
            return


def percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, math.ceil(pct / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


async def run(url: str, connections: int, seconds: float, headers: list[tuple[str, str]]) -> dict[str, object]:
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise SystemExit("only http:// URLs are supported")
    host, port = parts.hostname, parts.port or 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers)
    request = f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n{extra}\r\n".encode("latin-1")
    stats = Stats()
    started = time.perf_counter()
    stop_at = started + seconds
    await asyncio.gather(*(_worker(host, port, request, stats, stop_at) for _ in range(connections)))
    elapsed = min(time.perf_counter(), stop_at) - started
    latencies = sorted(stats.latencies)
    completed = len(latencies)
    return {
        "generator": "python",
        "url": url,
        "connections": connections,
        "requests": completed,
        "seconds": round(elapsed, 3),
        "rps": round(completed / elapsed, 2) if elapsed > 0 else 0.0,
        "latency_ms": {f"p{p}": round(percentile(latencies, p) * 1000, 3) for p in (50, 75, 90, 99)}
        | {"max": round((latencies[-1] if latencies else 0.0) * 1000, 3)},
        "statuses": {str(k): v for k, v in sorted(stats.statuses.items())},
        "non_2xx_3xx": stats.non_2xx_3xx,
        "socket_errors": stats.errors,
        "bytes_read": stats.bytes_read,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("-c", "--connections", type=int, default=50)
    parser.add_argument("-d", "--duration", type=float, default=10.0, help="seconds")
    parser.add_argument("-H", "--header", action="append", default=[], help="'Name: value'")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    headers = [(h.split(":", 1)[0].strip(), h.split(":", 1)[1].strip()) for h in args.header]
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(run(args.url, args.connections, args.duration, headers))
    else:
        result = uvloop.run(run(args.url, args.connections, args.duration, headers))
    if args.json:
        print(json.dumps(result))
    else:
        latency = result["latency_ms"]
        assert isinstance(latency, dict)
        print(f"{result['requests']} requests in {result['seconds']}s: {result['rps']} req/s, "
              f"p50 {latency['p50']} ms, p99 {latency['p99']} ms, non-2xx/3xx {result['non_2xx_3xx']}, "
              f"socket errors {result['socket_errors']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
