"""A bus's link to its hub: the DEALER, HELLO / WELCOME, heartbeats, reconnects, and every
wait for the hub's answer, each one bounded.

The DEALER sets ZMQ_IMMEDIATE: a message is only ever queued on a connection that is up,
never on one being (re)established.  Without it libzmq keeps what is sent while the hub is
away and delivers it when the hub is back, after the sender had already been told the send
failed and sent it again: every cast made in that window arrived twice.  Now a send while
the link is down fails at once with :class:`ConnectionError`, and the caller (the outbox,
the Bus) retries it.

The link is *up* from a WELCOME until it learns the hub is gone: the connection dropped
(a socket monitor sees it), or the hub missed ``heartbeat × liveness``.  Going down fails
every pending wait (QUEUED confirmations and requests) with ConnectionError; a WELCOME from
a hub with another ``id`` (it restarted) fails those left over from the old one.  Each wait
is bounded besides: ``confirm_timeout`` for QUEUED, ``connect_timeout`` for requests.  A
message the old hub had taken may so be sent again; within one hub's life the hub takes
a re-send once (:class:`~.graveyard.RecentSends`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from . import frames as F
from .options import ZmqOptions
from .sockets import LoopSocket
from .waiters import Waiters, within

__all__ = ["HubLink"]

log = logging.getLogger("vertebra.transports.zmq")

_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
           | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
_HELLO_WAIT = 1.0   # seconds a HELLO waits for a connection that has just come up


Deliver = Callable[[int, list[bytes]], Awaitable[None]]
Rewelcome = Callable[[dict[str, Any], bool], Awaitable[None]]


class HubLink:
    """The DEALER to the hub and its state (see the module docstring).

    ``deliver(cmd, frames)`` gets what is not about the link itself (deliveries, answers,
    UNREACHABLE of a call, PROTOCOL, PUBOK); ``rewelcome(welcome, restarted)`` runs after
    every WELCOME but the first (``restarted``: from a hub with another ``id``).
    """

    def __init__(self, opts: ZmqOptions, stats: dict[str, int], deliver: Deliver,
                 rewelcome: Rewelcome) -> None:
        self.opts = opts
        self.stats = stats
        self._deliver = deliver
        self._rewelcome = rewelcome
        self.ctx: zmq.asyncio.Context | None = None
        self.dealer: LoopSocket | None = None
        self._monitor: zmq.asyncio.Socket | None = None
        self.ident = b""
        self.up = False
        """A WELCOME came on the current connection and the hub has not been lost since."""
        self.hub_id: str | None = None
        self.welcome: dict[str, Any] = {}
        self.confirms: Waiters[None] = Waiters(timeout=opts.confirm_timeout)
        self.requests: Waiters[list[bytes]] = Waiters()
        self._opened: asyncio.Future[dict[str, Any]] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._last_hub = 0.0
        self._last_hello = 0.0
        self._handshakes = 0
        self._counter = 0

    # ---------------------------------------------------------------- sockets

    def socket(self, kind: int) -> zmq.Socket[bytes]:
        """A plain socket of ``kind`` set up for this hub (limits, CURVE), for a
        :class:`~.sockets.LoopSocket` (its monitor socket, made by the context, is an
        asyncio one)."""
        assert self.ctx is not None
        s: zmq.Socket[bytes] = zmq.Socket(self.ctx, kind)
        s.linger = 1000
        s.sndhwm = 100_000
        s.rcvhwm = 100_000
        s.setsockopt(zmq.MAXMSGSIZE, 2 * self.opts.max_message_size + 65536)
        if self.opts.curve is not None:
            s.curve_serverkey, s.curve_publickey, s.curve_secretkey = self.opts.curve
        return s

    async def open(self) -> dict[str, Any]:
        """Connect and wait for the first WELCOME; ConnectionError if it does not come."""
        loop = asyncio.get_running_loop()
        self.ctx = zmq.asyncio.Context()
        dealer = self.socket(zmq.DEALER)
        dealer.setsockopt(zmq.IMMEDIATE, 1)
        self.ident = b"vz" + os.urandom(8)
        dealer.setsockopt(zmq.ROUTING_ID, self.ident)
        # an asyncio socket: the context that makes it is an asyncio one
        self._monitor = cast(zmq.asyncio.Socket, dealer.get_monitor_socket(_EVENTS))
        self.dealer = LoopSocket(dealer)
        self._opened = loop.create_future()
        self._tasks = [loop.create_task(self.dealer.receive_forever(self._on_message),
                                        name="vertebra-zmq-recv"),
                       loop.create_task(self._monitor_loop(), name="vertebra-zmq-monitor")]
        dealer.connect(self.opts.endpoint)
        try:
            welcome = await within(self._opened, self.opts.connect_timeout)
        except TimeoutError:
            await self.teardown()
            self.term()
            raise ConnectionError(f"no answer from the zmq hub at {self.opts.endpoint} within "
                                  f"{self.opts.connect_timeout} s (down, or our key refused)") from None
        except BaseException:
            await self.teardown()
            self.term()
            raise
        self._tasks.append(loop.create_task(self._heartbeat_loop(), name="vertebra-zmq-heartbeat"))
        return welcome

    async def close(self) -> None:
        """Say BYE (the hub requeues our unacked work) and close the DEALER."""
        if self.up:
            with contextlib.suppress(ConnectionError):
                await self.send([F.header(F.BYE)])
        await self.teardown()

    async def teardown(self) -> None:
        """Stop the loops, close the sockets, end the context; fail what still waits."""
        self.up = False
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._monitor is not None:    # before the context ends: term() waits for it too
            if self.dealer is not None:
                self.dealer.sock.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None
        if self.dealer is not None:
            self.dealer.close(linger=1000)
            self.dealer = None
        closed = ConnectionError("the zmq transport closed")
        self.confirms.fail_all(closed)
        self.requests.fail_all(closed)

    def term(self) -> None:
        """End the context (after every socket made with :meth:`socket` is closed)."""
        if self.ctx is not None:
            self.ctx.term()
            self.ctx = None

    # ---------------------------------------------------------------- sending

    async def send(self, frames: list[bytes], *, wait: float = 0.0, when_down: bool = False) -> None:
        """Send at once, or raise ConnectionError: the link is down (unless ``when_down``),
        or the connection cannot take it (high-water mark) within ``wait`` seconds."""
        if not self.up and not when_down:
            raise ConnectionError(f"the zmq hub at {self.opts.endpoint} is not connected")
        dealer = self.dealer
        if dealer is None:
            raise ConnectionError("the zmq transport is closed")
        deadline = time.monotonic() + wait
        while True:
            try:
                dealer.send(frames)
                return
            except zmq.Again:
                left = deadline - time.monotonic()
                if left <= 0 or dealer.closed:
                    raise ConnectionError(f"the zmq hub at {self.opts.endpoint} is not taking "
                                          "messages (not connected, or at its high-water mark)") from None
                await dealer.writable(left)
            except zmq.ZMQError as exc:
                raise ConnectionError(f"zmq send failed: {exc}") from None

    async def send_confirmed(self, frames: list[bytes], msgid: bytes) -> None:
        """Send a CAST or TASK and wait (bounded) until the hub holds it (QUEUED)."""
        fut = self.confirms.add(msgid)            # fails with TimeoutError in confirm_timeout
        try:
            await self.send(frames)
            await fut
        except TimeoutError:
            self.stats["confirm_timeouts"] += 1
            raise ConnectionError(f"the zmq hub did not confirm {msgid.decode(errors='replace')} "
                                  f"within {self.opts.confirm_timeout} s") from None
        finally:
            self.confirms.discard(msgid, fut)

    async def request(self, command: int, *frames: bytes) -> list[bytes]:
        """Send ``command`` with a fresh request id and the ``frames`` after it; the frames
        of the answer after its request id.  ConnectionError if none within connect_timeout."""
        self._counter += 1
        reqid = str(self._counter).encode()
        fut = self.requests.add(reqid)
        try:
            await self.send([F.header(command), reqid, *frames])
            return await within(fut, self.opts.connect_timeout)
        except TimeoutError:
            raise ConnectionError(f"the zmq hub at {self.opts.endpoint} did not answer") from None
        finally:
            self.requests.discard(reqid, fut)

    def next_token(self) -> int:
        """A number not handed out before on this link (request ids, sync tokens)."""
        self._counter += 1
        return self._counter

    # ---------------------------------------------------------------- the link's state

    def _lost(self, why: str) -> None:
        if self.up:
            log.warning("zmq: lost the hub at %s (%s)", self.opts.endpoint, why)
        self.up = False
        exc = ConnectionError(f"the zmq hub at {self.opts.endpoint}: {why}")
        self.confirms.fail_all(exc)
        self.requests.fail_all(exc)

    async def _hello(self, wait: float = 0.0) -> None:
        self._last_hello = time.monotonic()
        body: dict[str, Any] = {"heartbeat": self.opts.heartbeat, "liveness": self.opts.liveness}
        if self.hub_id:
            body["hub"] = self.hub_id   # tells a new hub that buses are coming back to it
        with contextlib.suppress(ConnectionError):
            await self.send([F.header(F.HELLO), json.dumps(body).encode()], wait=wait, when_down=True)

    async def _on_welcome(self, body: bytes) -> None:
        try:
            welcome = json.loads(body)
            if not isinstance(welcome, dict):
                raise ValueError("not an object")
        except ValueError:
            self.malformed("bad WELCOME")
            return
        hub_id = str(welcome.get("id", ""))
        restarted = self.hub_id is not None and hub_id != self.hub_id
        if restarted:
            self.stats["hub_restarts"] += 1
            log.info("zmq: the hub at %s restarted (was %s, now %s)", self.opts.endpoint,
                     self.hub_id, hub_id)
            gone = ConnectionError("the zmq hub restarted: what the old one held is gone")
            self.confirms.fail_all(gone)
            self.requests.fail_all(gone)
        self.hub_id, self.welcome, self.up = hub_id, welcome, True
        if self._opened is not None and not self._opened.done():
            self._opened.set_result(welcome)
            return
        await self._rewelcome(welcome, restarted)

    def malformed(self, what: str, *args: object) -> None:
        """Count and log input that does not follow the protocol."""
        self.stats["malformed"] += 1
        log.warning("zmq: malformed input: " + what, *args)

    # ---------------------------------------------------------------- loops

    async def _on_message(self, msg: list[bytes]) -> None:
        self._last_hub = time.monotonic()
        try:
            await self._dispatch(msg)
        except ConnectionError as exc:   # an answer to the hub (a NACK, say) found it gone
            log.info("zmq: could not answer the hub: %s", exc)
        except Exception:
            log.exception("zmq: failed to handle a message from the hub")

    async def _dispatch(self, msg: list[bytes]) -> None:
        try:
            cmd, args = F.parse(msg, F.HUB_COMMANDS)
        except F.FrameError as exc:
            self.malformed("%s", exc)
            return
        if cmd == F.QUEUED:
            self.confirms.resolve(args[0], None)
        elif cmd == F.UNREACHABLE and self.confirms.reject(
                args[0], ConnectionError(args[1].decode(errors="replace"))):
            self.stats["unreachable"] += 1   # a cast or task the hub could not take: resent
        elif cmd in (F.SERVICES, F.DEAD_LETTERS, F.REPLAYED, F.REPLICAS):
            self.requests.resolve(args[0], args[1:])
        elif cmd == F.WELCOME:
            await self._on_welcome(args[0])
        elif cmd == F.RESET:
            if time.monotonic() - self._last_hello >= self.opts.heartbeat:
                log.info("zmq: the hub does not know us (restarted?); saying HELLO again")
                self.stats["reconnects"] += 1
                await self._hello()
        elif cmd != F.HEARTBEAT:
            await self._deliver(cmd, args)

    async def _monitor_loop(self) -> None:
        monitor = self._monitor
        assert monitor is not None
        while True:
            event = parse_monitor_message(await monitor.recv_multipart())["event"]
            if event == zmq.EVENT_DISCONNECTED:
                self._lost("the connection dropped")
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._handshakes += 1
                if self._handshakes > 1:
                    self.stats["reconnects"] += 1
                self._last_hub = time.monotonic()
                await self._hello(wait=_HELLO_WAIT)
            elif self._opened is not None and not self._opened.done():   # a failed handshake
                self._opened.set_exception(ConnectionError(
                    f"the zmq hub at {self.opts.endpoint} refused the CURVE handshake "
                    "(our key is not on its allow-list, or the wrong server_key)"))
            else:
                log.warning("zmq: the hub at %s refused our handshake", self.opts.endpoint)

    async def _heartbeat_loop(self) -> None:
        hb = F.header(F.HEARTBEAT)
        while True:
            await asyncio.sleep(self.opts.heartbeat)
            silent = time.monotonic() - self._last_hub
            if silent > self.opts.heartbeat * self.opts.liveness:
                self._lost("it missed its heartbeats")
                self._last_hub = time.monotonic()   # one HELLO per silent period
                await self._hello()
            elif self.up:
                with contextlib.suppress(ConnectionError):
                    await self.send([hb])
