"""A plain zmq socket driven by the running asyncio loop: the bus's hot-path sockets.

pyzmq's own asyncio sockets make a Future for every send and receive and compute the
socket's events through ``enum`` flags several times per message; profiled on a direct
call, that was about a third of the caller's and the node's CPU.  A bus never needs a send
to wait (it sends with DONTWAIT and handles ``zmq.Again`` itself), so here a send is the
plain non-blocking call, and the only waiting is for input: one reader callback on the
socket's ``ZMQ_FD`` wakes the one receive loop, or hands the messages to a plain function
right there (:meth:`LoopSocket.on_message`).

``ZMQ_FD`` is edge-triggered: it signals that the socket's state changed, and any call on
the socket (a send included) may consume that signal.  So the receive loop takes every
message queued before it waits, and a send made while it waits checks ``ZMQ_EVENTS`` and
wakes it if input arrived meanwhile: no message is left unread behind a quiet FD.

Sockets are used on the loop's thread only, as zmq requires.  Needs a loop with
``add_reader`` (the default selector loop on Linux and macOS, and uvloop).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import cast

import zmq

__all__ = ["DRAIN", "LoopSocket"]

DRAIN = 256
"""Messages taken at once after a wake-up, before the loop looks at anything else."""

_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_POLLOUT = int(zmq.POLLOUT)
_DONTWAIT = int(zmq.DONTWAIT)
_SNDMORE = int(zmq.SNDMORE)
_RCVMORE = int(zmq.RCVMORE)

log = logging.getLogger("vertebra.transports.zmq")


class LoopSocket:
    """``sock`` (a plain, non-blocking zmq socket) on the running loop."""

    __slots__ = ("_events", "_fd", "_handler", "_loop", "_readable", "_reading", "_writable", "sock")

    def __init__(self, sock: zmq.Socket[bytes]) -> None:
        self.sock = sock
        self._events = cast("Callable[[int], int]", sock.get)
        """``sock.get``, typed for the int options read here (EVENTS, RCVMORE, FD)."""
        self._loop = asyncio.get_running_loop()
        self._readable: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None
        self._handler: Callable[[list[bytes]], None] | None = None
        self._reading = False
        self._fd = self._events(int(zmq.FD))
        self._loop.add_reader(self._fd, self._poke)

    @property
    def closed(self) -> bool:
        """Whether the socket is closed."""
        return bool(self.sock.closed)

    def send(self, frames: list[bytes]) -> None:
        """Send a multipart message now; ``zmq.Again`` if the socket cannot take it now (no
        peer, or its high-water mark), other ``zmq.ZMQError`` as zmq raises them."""
        send = self.sock.send
        last = len(frames) - 1
        for i, frame in enumerate(frames):
            send(frame, _DONTWAIT | _SNDMORE if i < last else _DONTWAIT)
        # the send may have taken the FD's edge for input that came meanwhile
        if self._readable is not None:
            self._poke()
        elif self._handler is not None and not self._reading and self._events(_EVENTS) & _POLLIN:
            self._loop.call_soon(self._poke)      # read it after this sender's step

    async def writable(self, timeout: float) -> None:
        """Wait until the socket can take a message, or ``timeout`` seconds."""
        if self._events(_EVENTS) & _POLLOUT:
            return
        waiter = self._writable = self._loop.create_future()
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            pass
        finally:
            self._writable = None

    async def receive_forever(self, handle: Callable[[list[bytes]], Awaitable[None]]) -> None:
        """Hand every message to ``handle``, in order, until cancelled; a burst is taken in
        one wake-up (up to :data:`DRAIN` messages, then the loop's other work goes first)."""
        get = self._events
        while True:
            for _ in range(DRAIN):
                if not get(_EVENTS) & _POLLIN:   # checked after ``handle``: it may have sent
                    break
                await handle(self._take())
            else:
                await asyncio.sleep(0)
                continue
            await self._wait_readable()

    def on_message(self, handle: Callable[[list[bytes]], None]) -> None:
        """Call ``handle`` with every message, in order, right in the loop's callback for the
        socket: no task to wake, one trip round the loop less per message than
        :meth:`receive_forever`.  For handlers that never wait (one that must, starts a
        coroutine eagerly: vertebra.eager).  An exception from ``handle`` is logged and the
        next message goes on."""
        self._handler = handle
        self._loop.call_soon(self._poke)          # what came before

    def _read(self, handle: Callable[[list[bytes]], None]) -> None:
        if self._reading:            # a send from inside ``handle``: the loop below goes on
            return
        self._reading = True
        try:
            for _ in range(DRAIN):
                if self.sock.closed or not self._events(_EVENTS) & _POLLIN:
                    return
                msg = self._take()
                try:
                    handle(msg)
                except Exception:
                    log.exception("zmq: failed to handle a message")
            self._loop.call_soon(self._poke)      # more: after the loop's other work
        finally:
            self._reading = False

    def _take(self) -> list[bytes]:
        """The multipart message ZMQ_EVENTS said is there (checking it first costs half of
        a recv that raises ``zmq.Again``)."""
        sock = self.sock
        parts: list[bytes] = [sock.recv(_DONTWAIT)]
        while self._events(_RCVMORE):
            parts.append(sock.recv(_DONTWAIT))
        return parts

    async def _wait_readable(self) -> None:
        waiter = self._readable = self._loop.create_future()
        try:
            await waiter
        finally:
            self._readable = None

    def _poke(self) -> None:
        """The FD signalled (or a send may have hidden that it did): wake what waits."""
        if self.sock.closed:
            return
        events = self._events(_EVENTS)
        readable, writable = self._readable, self._writable
        if events & _POLLIN:
            if self._handler is not None:
                self._read(self._handler)
            elif readable is not None and not readable.done():
                readable.set_result(None)
        if events & _POLLOUT and writable is not None and not writable.done():
            writable.set_result(None)

    def close(self, linger: int | None = None) -> None:
        """Stop watching the socket and close it."""
        self._handler = None
        if not self.sock.closed:
            self._loop.remove_reader(self._fd)
            self.sock.close(linger=linger)
