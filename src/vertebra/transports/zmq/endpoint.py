"""A node's own endpoint: calls straight from their callers, past the hub
(docs/protocol/zmq.md §2b).

A bus that serves opens one ROUTER of its own and announces it in SERVE (``direct`` in the
service info: ``endpoint``, and ``key``, its CURVE public key when CURVE is on).  Callers
learn it from the hub (ROUTES) and send CALL frames here, exactly as they would to the hub;
the call is handled like one the hub delivers, and its answers (items and beats of a
streamed call, then the final reply or error) go back on the same connection as ANSWER.
A call for a service not served here (not yet, or not any more: unserved, draining) is
answered REDIRECT, and its caller sends it through the hub, which picks another replica.

With CURVE the ROUTER is a CURVE server with the bus's own key pair; when the hub has an
allow-list it tells it in WELCOME, and a ZAP handler on this bus's context admits the same
client keys here (and follows the list when a new WELCOME changes it).  Nothing here is
ever queued for a caller that left: the ROUTER is ``ROUTER_MANDATORY``, and an answer to a
caller that is gone is dropped and counted (``direct_dropped``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import zmq
import zmq.asyncio

from ...eager import start_eagerly
from ...wire.codec import Codec
from ...wire.envelope import Envelope
from ..base import Incoming
from . import frames as F
from .incoming import PARTIAL, answer_body
from .options import ZmqOptions
from .sockets import LoopSocket

__all__ = ["DirectEndpoint", "DirectIncoming"]

log = logging.getLogger("vertebra.transports.zmq")

_H_ANSWER, _H_REDIRECT = F.header(F.ANSWER), F.header(F.REDIRECT)

DeliverCall = Callable[[bytes, bytes, bytes, bytes], Awaitable[None]]
"""``deliver(caller, service, message id, envelope)``: a CALL that came to this endpoint."""


class _Keys:
    """ZAP credentials provider over the hub's allow-list, which a new WELCOME may change."""

    def __init__(self) -> None:
        self.keys: set[bytes] = set()

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.keys


def bind_address(opts: ZmqOptions) -> str:
    """Where the direct endpoint binds: ``direct_bind``, else the local address this host
    reaches the hub from (loopback for a hub on loopback), any free port."""
    if opts.direct_bind:
        ep = opts.direct_bind
        return ep.rsplit(":", 1)[0] + ":*" if ep.endswith(":0") else ep
    host = opts.host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:   # sends nothing
            probe.connect((host, int(opts.endpoint.rpartition(":")[2])))
            local = probe.getsockname()[0]
    except OSError:
        local = host
    return f"tcp://[{local}]:*" if ":" in local else f"tcp://{local}:*"


class DirectEndpoint:
    """The ROUTER a serving bus takes direct calls on (see the module docstring)."""

    def __init__(self, ctx: zmq.asyncio.Context, opts: ZmqOptions, stats: dict[str, int],
                 deliver: DeliverCall) -> None:
        self.opts = opts
        self.stats = stats
        self._ctx = ctx
        self._deliver = deliver
        self._router: LoopSocket | None = None
        self._serving: set[asyncio.Task[None]] = set()
        """Deliveries that had to wait (started eagerly; most never do)."""
        self._auth: Any = None
        self._keys = _Keys()
        stats.update({"direct_served": 0, "direct_redirects_sent": 0, "direct_dropped": 0})
        self.announce: dict[str, str] = {}
        """What SERVE tells the hub: ``endpoint`` (and ``key`` with CURVE)."""

    async def open(self, allow: list[str] | None) -> dict[str, str]:
        """Bind and start taking calls; what to announce in SERVE."""
        if self._router is not None:
            return self.announce
        self.allow(allow)
        r: zmq.Socket[bytes] = zmq.Socket(self._ctx, zmq.ROUTER)
        r.linger = 0
        r.sndhwm = r.rcvhwm = 100_000
        r.setsockopt(zmq.ROUTER_MANDATORY, 1)
        r.setsockopt(zmq.MAXMSGSIZE, 2 * self.opts.max_message_size + 65536)
        if self.opts.curve is not None:
            r.curve_server = True
            r.curve_secretkey = self.opts.curve[2]
        try:
            r.bind(bind_address(self.opts))
        except zmq.ZMQError:
            r.close(linger=0)
            raise
        endpoint = r.get_string(zmq.LAST_ENDPOINT)
        if self.opts.direct_host:
            endpoint = f"tcp://{self.opts.direct_host}:{endpoint.rpartition(':')[2]}"
        self._router = router = LoopSocket(r)
        self.announce = {"endpoint": endpoint}
        if self.opts.curve is not None:
            self.announce["key"] = self.opts.curve[1].decode("ascii")
        router.on_message(self._on_message)
        return self.announce

    def allow(self, keys: list[str] | None) -> None:
        """Admit only ``keys`` (Z85 client public keys) when CURVE is on; None: any key."""
        if self.opts.curve is None:
            return
        if keys is None:
            if self._auth is not None:
                self._auth.stop()
                self._auth = None
            return
        self._keys.keys = {k.encode("ascii") for k in keys if isinstance(k, str)}
        if self._auth is None:
            from zmq.auth.asyncio import AsyncioAuthenticator
            self._auth = AsyncioAuthenticator(self._ctx, log=log.getChild("auth"))
            self._auth.start()
            self._auth.configure_curve_callback("*", credentials_provider=self._keys)

    async def close(self) -> None:
        """Stop taking calls and close the ROUTER (answers not yet sent are dropped)."""
        if self._router is not None:
            self._router.close(linger=0)
            self._router = None
        serving, self._serving = self._serving, set()
        for task in serving:
            task.cancel()
        for task in serving:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    async def send(self, caller: bytes, frames: list[bytes]) -> None:
        """Send to ``caller`` at once, waiting (bounded by ``confirm_timeout``) only while its
        connection is full; a caller that is gone is counted, not an error."""
        r = self._router
        if r is None:
            raise ConnectionError("the direct endpoint is closed")
        wait = self.opts.confirm_timeout
        while True:
            try:
                r.send([caller, *frames])
                return
            except zmq.Again:
                if wait <= 0:
                    raise ConnectionError("a direct caller is not taking answers (high-water mark)") from None
                await asyncio.sleep(0.01)
                wait -= 0.01
            except zmq.ZMQError as exc:
                if exc.errno == zmq.EHOSTUNREACH:
                    self.stats["direct_dropped"] += 1   # the caller left: nobody to answer
                    return
                raise ConnectionError(f"zmq send failed: {exc}") from None

    async def redirect(self, caller: bytes, msgid: bytes) -> None:
        """Tell ``caller`` to send call ``msgid`` through the hub."""
        self.stats["direct_redirects_sent"] += 1
        await self.send(caller, [_H_REDIRECT, msgid])

    def _on_message(self, msg: list[bytes]) -> None:
        start_eagerly(self._serve(msg), self._serving)

    async def _serve(self, msg: list[bytes]) -> None:
        caller = msg[0]
        try:
            _, args = F.parse(msg[1:], F.DIRECT_CALLS)
        except F.FrameError as exc:
            self.stats["malformed"] += 1
            log.warning("zmq: malformed direct message: %s", exc)
            return
        service, msgid, body = args[0], args[1], args[-1]
        try:
            await self._deliver(caller, service, msgid, body)
        except ConnectionError as exc:
            log.info("zmq: could not answer a direct call: %s", exc)
        except Exception:
            log.exception("zmq: failed to handle a direct call")


class DirectIncoming(Incoming):
    """A call that came to this node's own endpoint: its answers go straight back to its
    caller; a call let go unrun (``reject(requeue=True)``, e.g. while draining) is
    redirected to the hub."""

    __slots__ = ("_caller", "_codec", "_done", "_endpoint", "_msgid")

    def __init__(self, envelope: Envelope, endpoint: DirectEndpoint, codec: Codec, caller: bytes,
                 msgid: bytes) -> None:
        super().__init__(envelope)
        self._endpoint = endpoint
        self._codec = codec
        self._caller = caller
        self._msgid = msgid
        self._done = False

    async def reply(self, answer: Envelope) -> None:
        """Send an item, a beat or the final answer (ProtocolError for an item that cannot be
        encoded or is over ``max_message_size``; a final answer that cannot is replaced by
        an error saying so)."""
        if self._done:
            return
        body = answer_body(self._codec, self.envelope, answer, self._endpoint.opts.max_message_size)
        if answer.kind not in PARTIAL:
            self._done = True
        await self._endpoint.send(self._caller, [_H_ANSWER, body])

    async def ack(self) -> None:
        """Nothing to settle: a direct call holds no credit anywhere."""
        self._done = True

    async def reject(self, requeue: bool, error: dict[str, Any] | None = None) -> None:
        """``requeue``: the caller sends the call through the hub instead.  Otherwise the
        call was answered already (a node answers every call it gives up)."""
        if self._done:
            return
        self._done = True
        if requeue:
            await self._endpoint.redirect(self._caller, self._msgid)
