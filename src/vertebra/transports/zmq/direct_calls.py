"""The caller's side of direct calls: which replica's own endpoint a call goes to
(docs/protocol/zmq.md §2b, docs/transports/zmq.md "Direct calls").

The hub stays the directory and the liveness monitor: ROUTES asks it for the live
replicas of a service and their endpoints (what they announced in SERVE).  A call goes to
one of them on a DEALER of its own (``ZMQ_IMMEDIATE``: a send succeeds only on a
connection that is up), the replica with the fewest of this bus's calls in flight, taking
turns among equals, and never more than its ``prefetch``.  Otherwise it goes through the
hub, as before: the first calls to a service (its routes are being fetched), a service one
of whose replicas announced no endpoint, every replica full or not connected, a replica
that answers REDIRECT (it no longer serves the service).

A replica whose connection drops has its calls in flight answered UNREACHABLE at once,
as the hub answers those of a replica it loses: its process died or closed, or it stopped
answering the connection's ZMTP heartbeats for ``heartbeat × liveness`` (hung, or its host
gone).  Routes are fetched again every ``heartbeat`` while the service is called; a replica
the hub no longer lists gets no new calls, and its connection is closed once the calls it
holds are answered (a draining node still answers them; so does one a restarted hub has
not heard from yet).  Calls whose caller gave up (past their deadline) are forgotten then.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from ...eager import start_eagerly
from ...wire.codec import decode
from ...wire.envelope import ANSWERS, Envelope
from ...wire.errors import ProtocolError, wire_error
from . import frames as F
from .connection import HubLink
from .sockets import LoopSocket

__all__ = ["DirectCalls"]

log = logging.getLogger("vertebra.transports.zmq")

_KEEP = 60.0      # seconds a service's routes are kept fresh after its last call
_MONITORED = zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_AUTH


@dataclass(slots=True, eq=False)
class _Replica:
    """One node's endpoint (shared by every service it serves) and this bus's calls on it."""

    endpoint: str
    dealer: LoopSocket
    monitor: zmq.asyncio.Socket
    inflight: dict[bytes, tuple[list[bytes], float]] = field(default_factory=dict)
    """message id -> (its CALL frames, its deadline in epoch seconds; inf for none)."""
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


@dataclass(slots=True, eq=False)
class _Routes:
    """One service: its replicas with their prefetch, in the hub's rotation order."""

    replicas: list[tuple[_Replica, int]] = field(default_factory=list)
    used: float = 0.0
    turn: int = 0
    fetching: bool = False


class DirectCalls:
    """Sends calls straight to replicas (see the module docstring)."""

    def __init__(self, link: HubLink, stats: dict[str, int],
                 on_answer: Callable[[Envelope], None]) -> None:
        self.link = link
        self.stats = stats
        self._on_answer = on_answer
        self._routes: dict[str, _Routes] = {}
        self._replicas: dict[tuple[str, str], _Replica] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._refresher: asyncio.Task[None] | None = None
        stats.update({"direct_calls": 0, "direct_redirected": 0, "direct_lost": 0})

    # ---------------------------------------------------------------- sending

    async def send(self, service: str, msgid: bytes, frames: list[bytes],
                   deadline: float | None) -> bool:
        """Send a CALL straight to a replica; False when it has to go through the hub."""
        routes = self._routes.get(service)
        if routes is None:
            routes = self._routes[service] = _Routes()
            self._fetch(service, routes)
        routes.used = time.monotonic()
        replicas = routes.replicas
        if not replicas:
            return False
        n = len(replicas)
        best: _Replica | None = None
        load = 0
        for k in range(n):
            replica, prefetch = replicas[(routes.turn + k) % n]
            busy = len(replica.inflight)
            if busy < prefetch and (best is None or busy < load):
                best, load = replica, busy
                if busy == 0:
                    break
        if best is None:
            return False
        routes.turn += 1
        try:
            best.dealer.send(frames)
        except zmq.ZMQError:          # Again: not connected (yet, or any more), or full
            return False
        best.inflight[msgid] = (frames, deadline if deadline is not None else float("inf"))
        self.stats["direct_calls"] += 1
        return True

    # ---------------------------------------------------------------- routes

    def _fetch(self, service: str, routes: _Routes) -> None:
        if routes.fetching or not self.link.up:
            return
        routes.fetching = True
        task = asyncio.get_running_loop().create_task(self._refresh(service, routes))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refresh(self, service: str, routes: _Routes) -> None:
        try:
            (body,) = await self.link.request(F.ROUTES, service.encode())
            table = json.loads(body)
            direct = table["direct"]
            if len(direct) != table["replicas"]:
                direct = []              # a replica without an endpoint: all through the hub
            wanted = [(str(d["endpoint"]), str(d.get("key") or ""), max(1, int(d["prefetch"])))
                      for d in direct]
        except ConnectionError:
            return                       # the hub is away: keep what we know
        except (ValueError, KeyError, TypeError) as exc:
            self.link.malformed("bad REPLICAS: %s", exc)
            return
        finally:
            routes.fetching = False
        if self._routes.get(service) is not routes:
            return                       # forgotten meanwhile
        routes.replicas = [(self._replica(ep, key), prefetch) for ep, key, prefetch in wanted]
        self._forget_unlisted()

    def _replica(self, endpoint: str, key: str) -> _Replica:
        replica = self._replicas.get((endpoint, key))
        if replica is not None:
            return replica
        opts = self.link.opts
        dealer = self.link.socket(zmq.DEALER)
        dealer.setsockopt(zmq.IMMEDIATE, 1)
        # the connection's own liveness, as the hub keeps it for its peers: a replica that
        # stops answering ZMTP pings for heartbeat x liveness (hung, or its host gone) is
        # disconnected, and its calls in flight answered UNREACHABLE
        dealer.setsockopt(zmq.HEARTBEAT_IVL, max(1, int(opts.heartbeat * 1000)))
        dealer.setsockopt(zmq.HEARTBEAT_TIMEOUT, max(1, int(opts.heartbeat * opts.liveness * 1000)))
        if key and opts.curve is not None:
            dealer.curve_serverkey = key.encode("ascii")
        # an asyncio socket: the context that makes it is an asyncio one
        monitor = cast(zmq.asyncio.Socket, dealer.get_monitor_socket(_MONITORED))
        dealer.connect(endpoint)
        replica = self._replicas[(endpoint, key)] = _Replica(endpoint, LoopSocket(dealer), monitor)
        loop = asyncio.get_running_loop()
        answers = functools.partial(self._on_message, replica)
        replica.dealer.on_message(answers)
        replica.tasks = [loop.create_task(self._monitor_loop(replica), name="vertebra-zmq-direct-monitor")]
        return replica

    def _forget_unlisted(self) -> None:
        """Close the connections no route names any more, once their calls in flight are
        over: a replica the hub stopped listing (it unserved and drains, or the hub
        restarted and has not heard from it yet) still answers the calls it holds."""
        listed = {id(r) for routes in self._routes.values() for r, _ in routes.replicas}
        for key, replica in list(self._replicas.items()):
            if id(replica) not in listed and not replica.inflight:
                del self._replicas[key]
                self._close_replica(replica)

    async def run(self) -> None:
        """Every heartbeat: fetch the routes of the services called lately, forget the
        others, and the calls whose deadline passed."""
        while True:
            await asyncio.sleep(self.link.opts.heartbeat)
            now = time.monotonic()
            for service, routes in list(self._routes.items()):
                if now - routes.used > _KEEP:
                    del self._routes[service]
                else:
                    self._fetch(service, routes)
            late = time.time() - 1.0
            for replica in self._replicas.values():
                for msgid in [m for m, (_, dl) in replica.inflight.items() if dl < late]:
                    del replica.inflight[msgid]
            self._forget_unlisted()

    def start(self) -> None:
        """Start the refresh loop."""
        if self._refresher is None:
            self._refresher = asyncio.get_running_loop().create_task(self.run(), name="vertebra-zmq-routes")

    async def close(self) -> None:
        """Close every direct connection (calls still in flight are left to their deadline)."""
        tasks = [*self._tasks, *([self._refresher] if self._refresher else [])]
        self._refresher = None
        for replica in self._replicas.values():
            tasks += replica.tasks
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for replica in self._replicas.values():
            self._close_replica(replica)
        self._replicas.clear()
        self._routes.clear()

    @staticmethod
    def _close_replica(replica: _Replica) -> None:
        for t in replica.tasks:
            t.cancel()
        with contextlib.suppress(zmq.ZMQError):
            replica.dealer.sock.disable_monitor()
        replica.monitor.close(linger=0)
        replica.dealer.close(linger=0)

    def _fail(self, replica: _Replica, reason: str) -> None:
        """Answer every call in flight on ``replica`` UNREACHABLE."""
        flights, replica.inflight = replica.inflight, {}
        for msgid in flights:
            self.stats["direct_lost"] += 1
            self._on_answer(Envelope("error", re=msgid.decode(errors="replace"),
                                     error=wire_error("unreachable", "Unreachable", reason)))

    # ---------------------------------------------------------------- answers

    def _on_message(self, replica: _Replica, msg: list[bytes]) -> None:
        try:
            cmd, args = F.parse(msg, F.DIRECT_ANSWERS)
        except F.FrameError as exc:
            self.link.malformed("direct: %s", exc)
            return
        if cmd == F.REDIRECT:
            flight = replica.inflight.pop(args[0], None)
            if flight is not None:
                start_eagerly(self._via_hub(args[0], flight[0]), self._tasks)
            return
        try:
            env = decode(args[0])
        except ProtocolError as exc:
            self.link.malformed("bad direct answer: %s", exc)
            return
        if env.kind not in ANSWERS:
            self.link.malformed("direct answer of kind %r", env.kind)
            return
        if env.kind == "reply" or env.kind == "error":
            replica.inflight.pop(env.re.encode(), None)
        self._on_answer(env)

    async def _via_hub(self, msgid: bytes, frames: list[bytes]) -> None:
        """A call its replica sent back (REDIRECT): through the hub, to another replica."""
        self.stats["direct_redirected"] += 1
        try:
            await self.link.send(frames)
        except ConnectionError as exc:
            self._on_answer(Envelope("error", re=msgid.decode(errors="replace"),
                                     error=wire_error("unreachable", "Unreachable", str(exc))))

    async def _monitor_loop(self, replica: _Replica) -> None:
        while True:
            event = parse_monitor_message(await replica.monitor.recv_multipart())["event"]
            if event == zmq.EVENT_DISCONNECTED:
                self._fail(replica, "the replica's connection dropped (it died or closed)")
            else:
                log.warning("zmq: the replica at %s refused our CURVE handshake", replica.endpoint)
