"""Writes of one event-loop round leave together, in order per socket, on real loopback sockets."""

from __future__ import annotations

import asyncio
import socket
from typing import cast

from bastion.server.write_batch import WriteBatch, write_batch_for


async def _pair() -> tuple[asyncio.Transport, socket.socket]:
    """A connected (transport, plain socket) pair on loopback."""
    listener = socket.create_server(("127.0.0.1", 0))
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_connection(asyncio.Protocol, *listener.getsockname()[:2])
    peer, _ = listener.accept()
    listener.close()
    peer.settimeout(2)
    return cast(asyncio.Transport, transport), peer


def _read_until_closed(peer: socket.socket) -> bytes:
    data = b""
    while chunk := peer.recv(65536):
        data += chunk
    return data


def test_writes_leave_at_the_end_of_the_round_in_order() -> None:
    async def scenario() -> None:
        transport, peer = await _pair()
        batch = WriteBatch(asyncio.get_running_loop())
        batch.write(transport, b"head ")
        batch.write(transport, b"body")
        peer.setblocking(False)
        try:
            peer.recv(100)
            raise AssertionError("bytes left before the round ended")
        except BlockingIOError:
            pass
        peer.setblocking(True)
        await asyncio.sleep(0)  # the round ends: the batch is flushed as one write
        assert peer.recv(100) == b"head body"
        transport.close()
        peer.close()

    asyncio.run(scenario())


def test_a_graceful_close_sends_what_is_pending_first() -> None:
    async def scenario() -> None:
        transport, peer = await _pair()
        batch = WriteBatch(asyncio.get_running_loop())
        batch.write(transport, b"last response")
        batch.flush_transport(transport)
        transport.close()
        await asyncio.sleep(0.01)
        assert await asyncio.to_thread(_read_until_closed, peer) == b"last response"
        peer.close()

    asyncio.run(scenario())


def test_an_abort_drops_what_is_pending() -> None:
    async def scenario() -> None:
        transport, peer = await _pair()
        batch = WriteBatch(asyncio.get_running_loop())
        batch.write(transport, b"never sent")
        batch.discard(transport)
        transport.abort()
        await asyncio.sleep(0.01)
        try:
            received = await asyncio.to_thread(_read_until_closed, peer)
        except ConnectionResetError:
            received = b""
        assert received == b""
        peer.close()

    asyncio.run(scenario())


def test_a_closed_socket_does_not_stop_the_others() -> None:
    async def scenario() -> None:
        (gone, gone_peer), (alive, alive_peer) = await _pair(), await _pair()
        batch = WriteBatch(asyncio.get_running_loop())
        batch.write(gone, b"x")
        batch.write(alive, b"y")
        gone.close()  # closed without flushing: its pending bytes are skipped
        await asyncio.sleep(0)
        assert alive_peer.recv(10) == b"y"
        alive.close()
        gone_peer.close()
        alive_peer.close()

    asyncio.run(scenario())


def test_one_batch_per_loop() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        assert write_batch_for(loop) is write_batch_for(loop)

    asyncio.run(scenario())
