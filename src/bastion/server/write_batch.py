"""Socket writes made during one round of the event loop leave together, at the end of that round.

Why: every write to a loopback or LAN socket wakes the process reading the other end, and waking a peer
whose CPU is idle costs an inter-processor interrupt (a VM exit under KVM). Written as they are produced,
a round's responses and upstream requests wake their peers one by one, each after the peer went back to
sleep; written back to back at the end of the round, the first wakes the peer and the rest find it awake.
Measured on the pass-through bench: the gateway's kernel time per request fell from ~40 us to ~23 us.
Several writes to one socket in a round also become one system call. The cost is one ``call_soon`` per
round that wrote anything (Netty's flush consolidation does the same for the same reason).

Order is kept per socket. ``flush_transport`` must run before a graceful close (pending bytes go first);
``discard`` before an abort (the bytes die with the connection).
"""

from __future__ import annotations

import asyncio
import logging

from bastion.server.per_loop import PerLoop

log = logging.getLogger("bastion.server")


class WriteBatch:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: dict[asyncio.Transport, list[bytes]] = {}
        self._scheduled = False

    def write(self, transport: asyncio.Transport, data: bytes) -> None:
        chunks = self._pending.get(transport)
        if chunks is not None:
            chunks.append(data)
            return
        self._pending[transport] = [data]
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush_transport(self, transport: asyncio.Transport) -> None:
        chunks = self._pending.pop(transport, None)
        if chunks is not None:
            _send(transport, chunks)

    def discard(self, transport: asyncio.Transport) -> None:
        self._pending.pop(transport, None)

    def flush(self) -> None:
        self._scheduled = False
        pending = self._pending
        if not pending:
            return
        self._pending = {}
        for transport, chunks in pending.items():
            _send(transport, chunks)


def _send(transport: asyncio.Transport, chunks: list[bytes]) -> None:
    if transport.is_closing():
        return
    try:
        transport.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))
    except Exception:  # one broken socket must not keep the others' bytes from leaving
        log.exception("write failed; closing the connection")
        transport.abort()


write_batch_for: PerLoop[WriteBatch] = PerLoop(WriteBatch)
