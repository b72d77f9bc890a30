"""The plain-HTTP listener's only job when HTTPS is on: a 308 to the same URL over HTTPS."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from bastion.server.clock import http_date

if TYPE_CHECKING:
    from bastion.server.http1 import Exchange


class RedirectHandler:
    def __init__(self, https_port: Callable[[], int], finished: Callable[[Exchange], None]) -> None:
        self._https_port = https_port
        self._finished = finished

    def begin(self, exchange: Exchange) -> None:
        exchange.discard_body()  # never read a body sent in clear text

    async def handle(self, exchange: Exchange) -> None:
        port = self._https_port()
        host = exchange.host
        authority = host if port == 443 else f"{host}:{port}"
        target = exchange.raw_target if exchange.raw_target.startswith(b"/") else b"/"
        location = b"https://" + authority.encode("latin-1") + target
        exchange.scratch["route"] = "https-redirect"
        exchange.send(308, [(b"location", location), (b"date", http_date()),
                            (b"cache-control", b"no-store"), (b"content-type", b"text/plain")],
                      b"Use HTTPS: " + location + b"\n")

    def finished(self, exchange: Exchange) -> None:
        self._finished(exchange)
