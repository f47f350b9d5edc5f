"""One receive loop for every asyncio socket of a bus (the hub link, events, direct calls).

Each wait for a message goes through the asyncio socket; once it wakes, what else is
already queued is taken without waiting (up to :data:`DRAIN` messages, through a plain
shadow of the socket), so a burst costs one event-loop wake-up, not one per message.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import zmq
import zmq.asyncio

__all__ = ["DRAIN", "receive_forever"]

DRAIN = 256
"""Messages taken at once after a wake-up, before the loop looks at anything else."""


async def receive_forever(sock: zmq.asyncio.Socket,
                          handle: Callable[[list[bytes]], Awaitable[None]]) -> None:
    """Hand every multipart message ``sock`` receives to ``handle``, in order, until cancelled."""
    shadow: zmq.Socket[bytes] = zmq.Socket.shadow(sock.underlying)
    while True:
        await handle(await sock.recv_multipart())
        for _ in range(DRAIN):
            try:
                msg = shadow.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            await handle(msg)
