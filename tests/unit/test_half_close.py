"""A client that half-closes (sends its FIN) right after its request still gets the whole response, also when
the FIN is read in the same event-loop round in which the response was finished: the response then still sits
in the round's write batch, and the connection must send it before it closes."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from bastion.config.model import Limits
from bastion.server.http1 import Exchange, HttpConnection, Listener

LOOPS: dict[str, Callable[[Coroutine[Any, Any, bytes]], bytes]] = {"asyncio": asyncio.run, "uvloop": uvloop.run}


class AnswerThenFin:
    """Answers every request at once; then the client's FIN is delivered within the same round."""

    def __init__(self) -> None:
        self.connections: list[HttpConnection] = []

    def begin(self, exchange: Exchange) -> None:
        pass

    async def handle(self, exchange: Exchange) -> None:
        exchange.send(200, [(b"content-type", b"text/plain")], b"answered")
        # What the event loop does when the FIN is read in this round, after the response was finished: a
        # protocol that does not keep the connection open has its transport closed.
        connection = self.connections[0]
        if not connection.eof_received() and connection.transport is not None:
            connection.transport.close()

    def finished(self, exchange: Exchange) -> None:
        pass


def _exchange(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        client.sendall(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
        received = b""
        while chunk := client.recv(65536):
            received += chunk
        return received


async def _serve_one() -> bytes:
    handler = AnswerThenFin()
    listener = Listener("test", handler, tls=False, limits=Limits, hsts=lambda: None, docs_base=lambda: "")

    def factory() -> HttpConnection:
        connection = listener.protocol_factory()
        handler.connections.append(connection)
        return connection

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    try:
        return await asyncio.to_thread(_exchange, server.sockets[0].getsockname()[1])
    finally:
        server.close()


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_the_response_finished_in_the_round_of_the_fin_is_sent_before_the_close(loop: str) -> None:
    received = LOOPS[loop](_serve_one())
    assert received.startswith(b"HTTP/1.1 200 "), received
    assert received.endswith(b"\r\n\r\nanswered"), received
