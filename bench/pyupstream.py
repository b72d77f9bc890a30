"""Fallback upstream used only when nginx cannot be installed: answers every request with the fixed
JSON body, HTTP/1.1 keep-alive. Results made with it are labelled (it is slower than nginx).

    python bench/pyupstream.py --port 18080
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import cast

BODY = b'{"id":1,"name":"item","price":9.99,"tags":["a","b"],"ok":true}'
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)


class _Server(asyncio.Protocol):
    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        self._buffer += data
        # requests without bodies: one response per complete head
        count = self._buffer.count(b"\r\n\r\n")
        if count:
            self._buffer = self._buffer[self._buffer.rindex(b"\r\n\r\n") + 4:]
            self._transport.write(RESPONSE * count)


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Server, host, port, backlog=4096, reuse_address=True)
    async with server:
        await server.serve_forever()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.host, args.port))
    else:
        uvloop.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
