"""Events on zmq://: a PUB to the hub's XSUB, a SUB on its XPUB (docs/protocol/zmq.md §6).

The SUB subscribes to each pattern's literal prefix (the hub's XPUB filters on it) and the
full ``*``/``#`` match runs before a handler.  Two barriers keep ZeroMQ's "slow joiner"
from losing events: ``subscribe`` returns once a SYNC marker subscribed after the pattern
came back through the hub, and the first publish waits until the hub has seen our PUB
(PUBOK).  A restarted hub has new event ports: :meth:`EventLink.rewire` moves both
sockets to the ports its WELCOME tells (libzmq sends the SUB's subscriptions again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import zmq

from ...wire.codec import decode
from ...wire.envelope import Envelope
from ...wire.errors import ProtocolError
from ...wire.topics import literal_prefix, matches
from ..base import EventHandler
from . import frames as F
from .connection import HubLink
from .sockets import LoopSocket

__all__ = ["EventLink"]

log = logging.getLogger("vertebra.transports.zmq")

_PROBE = 0.05   # seconds between PUB hellos / SYNCs while waiting for the hub


class EventLink:
    """The event sockets of one bus, next to its :class:`~.connection.HubLink`."""

    def __init__(self, link: HubLink, malformed: Callable[..., None], stats: dict[str, int]) -> None:
        self.link = link
        self._malformed = malformed
        self.stats = stats
        self.sub: LoopSocket | None = None
        self.pub: LoopSocket | None = None
        self._endpoints: tuple[str, str] = ("", "")
        self._pubok: asyncio.Future[None] | None = None
        self._syncs: dict[bytes, asyncio.Future[None]] = {}
        self._subs: list[tuple[str, EventHandler]] = []
        self._task: asyncio.Task[None] | None = None

    def open(self, welcome: dict[str, Any]) -> None:
        """Make the sockets and connect them to the endpoints in ``welcome``."""
        self.sub = LoopSocket(self.link.socket(zmq.SUB))
        self.pub = LoopSocket(self.link.socket(zmq.PUB))
        self.rewire(welcome)
        self._task = asyncio.get_running_loop().create_task(self.sub.receive_forever(self._on_event),
                                                            name="vertebra-zmq-events")

    def rewire(self, welcome: dict[str, Any], restarted: bool = False) -> None:
        """Follow the hub to the event endpoints ``welcome`` names (a restarted hub: new
        ports, and it has not seen our PUB yet)."""
        assert self.sub is not None and self.pub is not None
        new = (self.link.opts.event_endpoint(str(welcome.get("xpub", ""))),
               self.link.opts.event_endpoint(str(welcome.get("xsub", ""))))
        if restarted or new != self._endpoints:
            self._pubok = None
        if new == self._endpoints:
            return
        old, self._endpoints = self._endpoints, new
        for sock, before, after in ((self.sub, old[0], new[0]), (self.pub, old[1], new[1])):
            if before:
                with contextlib.suppress(zmq.ZMQError):
                    sock.sock.disconnect(before)
            if after:
                sock.sock.connect(after)

    async def close(self) -> None:
        """Stop the SUB loop and close both sockets (before the context ends)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for s in (self.sub, self.pub):
            if s is not None:
                s.close(linger=0)
        self.sub = self.pub = None
        for fut in self._syncs.values():
            if not fut.done():
                fut.set_exception(ConnectionError("the zmq transport closed"))

    # ---------------------------------------------------------------- publishing

    async def publish(self, topic: str, body: bytes) -> None:
        """Send one encoded event (after the PUB hello, the first time on this hub)."""
        pub = self.pub
        if pub is None:
            raise ConnectionError("the zmq transport is closed")
        if self._pubok is None or not self._pubok.done():
            await self._pub_handshake()
        try:
            pub.send([topic.encode(), body])
        except zmq.ZMQError as exc:   # PUB drops at its high-water mark; anything else:
            raise ConnectionError(f"zmq publish failed: {exc}") from None

    def on_pubok(self) -> None:
        """PUBOK arrived: the hub sees our PUB socket."""
        if self._pubok is not None and not self._pubok.done():
            self._pubok.set_result(None)

    async def _pub_handshake(self) -> None:
        if self._pubok is None:
            self._pubok = asyncio.get_running_loop().create_future()
        pubok, pub = self._pubok, self.pub
        assert pub is not None
        deadline = time.monotonic() + self.link.opts.connect_timeout
        while not pubok.done():
            if time.monotonic() > deadline or not self.link.up:
                if self._pubok is pubok:
                    self._pubok = None
                raise ConnectionError("the zmq hub does not see our event socket")
            with contextlib.suppress(zmq.Again):
                pub.send([F.EVENT_CONTROL + b"hello", self.link.ident])
            await asyncio.wait([pubok], timeout=_PROBE)

    # ---------------------------------------------------------------- subscribing

    async def subscribe(self, pattern: str, handler: EventHandler) -> None:
        """Subscribe with the pattern's ZeroMQ prefix; returns once the hub filters for us."""
        sub = self.sub
        if sub is None:
            raise ConnectionError("the zmq transport is not connected")
        self._subs.append((pattern, handler))
        sub.sock.setsockopt(zmq.SUBSCRIBE, literal_prefix(pattern).encode())
        await self.barrier()

    async def barrier(self) -> None:
        """Return once the hub filters for every subscription made so far: they travel in
        order on the SUB connection, so once a marker subscribed after them comes back
        through the hub, they are in force too."""
        if self.sub is None:
            raise ConnectionError("the zmq transport is not connected")
        token = f"{os.getpid()}.{id(self):x}.{self.link.next_token()}".encode()
        topic = F.EVENT_CONTROL + b"sync." + token
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._syncs[topic] = fut
        self.sub.sock.setsockopt(zmq.SUBSCRIBE, topic)
        deadline = time.monotonic() + self.link.opts.connect_timeout
        try:
            while not fut.done():
                if time.monotonic() > deadline:
                    raise ConnectionError("the zmq hub did not confirm the subscription")
                with contextlib.suppress(ConnectionError):
                    await self.link.send([F.header(F.SYNC), token])
                await asyncio.wait([fut], timeout=_PROBE)
            fut.result()
        finally:
            self._syncs.pop(topic, None)
            if self.sub is not None:
                self.sub.sock.setsockopt(zmq.UNSUBSCRIBE, topic)

    async def _on_event(self, msg: list[bytes]) -> None:
        if len(msg) != 2:
            self._malformed("event with %d frames", len(msg))
            return
        topic_b, body = msg
        if topic_b[:1] == F.EVENT_CONTROL:
            fut = self._syncs.get(topic_b)
            if fut is not None and not fut.done():
                fut.set_result(None)
            return
        try:
            topic = topic_b.decode()
            env: Envelope = decode(body)
        except (UnicodeDecodeError, ProtocolError) as exc:
            self._malformed("bad event: %s", exc)
            return
        if env.kind != "event" or env.topic != topic:
            self._malformed("event frame topic %r does not match its envelope", topic)
            return
        for pattern, handler in self._subs:
            if matches(pattern, topic):
                try:
                    await handler(env)
                except Exception:
                    log.exception("event handler for %r raised", pattern)
            else:
                self.stats["events_filtered"] += 1
