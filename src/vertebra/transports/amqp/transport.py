"""The ``amqp://`` / ``amqps://`` transport: vertebra on RabbitMQ through py-amqp.

Capability sheet
----------------
Guarantees:

* Calls: one auto-delete queue per service, shared by its replicas (round robin within
  the prefetch window); replies over direct reply-to, ``correlation_id`` = call id.  A call
  to a service no replica serves fails at once with ``unreachable`` (mandatory publish,
  ``basic.return``) — within ``settle`` seconds after a reconnect it is held and sent again
  instead, while the replicas reconnect too (:mod:`.calls`).  A call's deadline becomes a
  per-message TTL, so a stale call is dropped by the broker instead of being run late.
* While the connection is down (or the broker blocks publishers for more than 5 s)
  ``send`` raises a plain ConnectionError: the Bus retries calls until their deadline and
  the outbox retries casts, tasks and events.  Calls already on the wire when the
  connection drops are answered ``unreachable`` at once (they may or may not have run).
* Casts and tasks: a durable queue per service, persistent messages, publisher confirms
  (``send`` returns once the broker has the message; a confirm that cannot come fails the
  send with ConnectionError, at once on connection loss, else after ``confirm_timeout``),
  manual ack after the handler ends, ``basic.qos`` prefetch per served service (one
  global window on classic queues, one per consumer on quorum queues).  A worker that
  dies unacked: redelivered.  Attempts are the node's: ``reject(False, error)`` buries
  the task in the service's durable dead queue, listed by :meth:`dead_letters` without
  consuming it and sent back by :meth:`replay` (:mod:`.deadletters`).  A task redelivered
  unacked ``max_redeliveries`` times (default 10: its worker dies on it each time) is
  buried by the transport with error type ``WorkerLost``, so even a crash loop ends.
* A RabbitMQ cluster: a URL may name several brokers (:mod:`.options`); the bus connects
  to the first that answers and, when it is lost, to the next (:mod:`.dial`), then
  re-declares and resumes consuming.  Task and dead queues are then quorum queues by
  default (replicated: a task survives the loss of a node; the broker's own delivery
  count feeds the poison limit).  A nack moves publishing to a new channel (a RabbitMQ
  3.10 quorum-queue trap, :mod:`.confirms`); a consumer the broker cancels (its call
  queue died with its node) consumes the re-declared queue again (:mod:`.serving`); a
  call returned unrouted for a service that answered lately is held up to 1 s while
  its replicas re-declare (:mod:`.calls`).
* Delayed casts and tasks (``not_before`` ahead) are held by the broker, durably: published
  persistent and confirmed to a delay queue whose TTL (the delay rounded up) dead-letters
  them to the task queue when due (:mod:`.delays`).  Never released early; a worker sends
  one that still comes out early (a delay above 7 days, clocks apart) to a delay queue
  again.  A call with ``not_before`` is sent at once (its node waits until it is due).
* Priorities: the ``priority`` property (0-9); classic task queues are declared with
  ``x-max-priority`` 9, so queued casts and tasks of a higher priority are delivered
  first.  One that exists without it is used as it is (a warning; no priorities there).
  Quorum queues: no ``priorities`` capability (RabbitMQ 3.x has none for them; 4.x two
  levels, 5-9 before 0-4, which the property still gets).
* Streamed calls: any number of ``item`` / ``beat`` answers, then the final ``reply`` /
  ``error``, over direct reply-to, in the order sent; the call is forgotten only on the
  final one.
* Events: one topic exchange; a pattern is the binding key, one to one; one exclusive
  auto-delete queue per subscribing bus; confirmed publish.
* Connection loss: heartbeats; reconnect with backoff, re-declare, resume consuming.  A
  declaration the broker refuses (a queue that exists with other arguments) fails that
  service's sends and ``serve`` with ProtocolError; the connection and the rest stay.
* Bad input (not an envelope, wrong version, wrong kind, a call without ``reply_to``,
  larger than ``max_message``): counted in ``stats["malformed"]``, logged, answered with a
  ``protocol`` error when it names a reply address, and rejected without requeue (task
  queues dead-letter it).  Discovery: a fanout broadcast, answers collected for a window.

Cannot:

* Redeliveries are counted whatever their cause: a task that was prefetched by a node that
  stopped, or that was unacked across a broker restart or a failover, counts one too
  (hence the limit of 10).  Duplicates are possible (at-least-once): a confirm lost with
  the connection makes the outbox send again, and a task run by a worker whose node died
  before its ack arrived runs again elsewhere.
* Events published while a subscriber fails over to another node are missed by it (its
  exclusive queue died with its node).  A call in flight to a replica whose node died
  ends at its deadline (CallTimeout); a call on the wire when the caller's own node dies
  is answered ``unreachable`` at once.
* Calls are at-most-once: a call queued when its last replica stops is lost with the
  auto-delete queue, and the caller times out.
* Declarations (serve, subscribe, first task to a service, reconnect) wait one broker
  round trip on the event loop thread (see :mod:`.connection`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from typing import Any, ClassVar

from ...wire.codec import Codec, decode
from ...wire.deadletter import DeadLetter
from ...wire.envelope import Envelope, new_id
from ...wire.errors import ProtocolError
from ...wire.info import ServiceInfo
from ...wire.topics import matches
from ..base import AnswerCallback, Capabilities, EventHandler, Handler, Transport
from .calls import Calls
from .confirms import Confirms
from .deadletters import list_dead, replay_dead
from .delays import Delays, not_yet_ms
from .discovery import merge, request_message
from .link import Link, body_of
from .options import parse_url
from .serving import Serving
from .topology import REPLY_TO

__all__ = ["AmqpTransport"]


class AmqpTransport(Transport):
    """vertebra over AMQP 0-9-1 (RabbitMQ); see the module docstring for what it guarantees."""

    scheme: ClassVar[str] = "amqp"
    capabilities: ClassVar[Capabilities] = Capabilities(
        durable_tasks=True, task_redelivery=True, fast_unreachable=True, multi_process=True,
        max_message_size=16 * 1024 * 1024, holds_delayed=True, priorities=True)

    def __init__(self, url: str, codec: Codec) -> None:
        super().__init__(url, codec)
        self.opts = parse_url(url)
        if self.opts.quorum:   # quorum queues take no x-max-priority (see the module doc)
            self.capabilities = dataclasses.replace(  # type: ignore[misc]  # per URL
                type(self).capabilities, priorities=False)
        self.stats.update({"returned": 0, "held": 0, "buried": 0, "redelivered": 0,
                           "dropped": 0, "nacked": 0, "confirm_timeouts": 0, "failovers": 0,
                           "channels_renewed": 0, "consumers_cancelled": 0, "delayed": 0,
                           "redelayed": 0})
        self._link = Link(self.opts, codec, self.stats, self._up, self._down)
        self.topology = self._link.topology
        self._confirms = Confirms(self._link)
        self._calls = Calls(self._link)
        self._delays = Delays(self._link, self._confirms)
        self._serving = Serving(self._link, self._confirms, self._delays)
        self._ch_events: Any = None
        self._event_queue = ""
        self._subs: list[tuple[str, EventHandler]] = []
        self._bound: set[str] = set()

    @property
    def connected(self) -> bool:
        """Whether the connection to the broker is up right now."""
        return self._link.conn.up

    @property
    def broker(self) -> str:
        """``host:port`` of the broker this bus is connected to (or was, while down)."""
        return self._link.conn.address

    # -- lifecycle ------------------------------------------------------------------------

    async def connect(self, on_answer: AnswerCallback) -> None:
        """Connect, declare the exchanges and start the reply consumer."""
        self._link.loop = asyncio.get_running_loop()
        self._calls.on_answer = on_answer
        try:
            await self._link.conn.start()
        except ConnectionError:
            await self._link.conn.close()
            raise

    async def close(self) -> None:
        """Close the connection; the broker requeues whatever was not acked."""
        link = self._link
        if link.closed:
            return
        link.closed = True
        self._calls.fail_all("the transport was closed")
        await link.conn.close()
        self._confirms.fail_all(ConnectionError("transport closed"))
        for task in list(link.tasks):
            task.cancel()

    def _up(self, conn: Any) -> None:
        """(Re)declare everything and resume consuming; runs after every connect."""
        self._link.opened(conn)
        self._calls.attach(self._link.ch_call)
        self._confirms.attach(self._link.ch_pub)
        self._ch_events = None
        self._event_queue = ""
        self._bound.clear()
        self._serving.resume(conn)
        if self._subs:
            self._ensure_events(conn)
            for pattern, _ in self._subs:
                self._bind(pattern)

    def _down(self, exc: BaseException) -> None:
        self._link.dropped()
        self._ch_events = None
        self._serving.dropped()
        self._confirms.fail_all(ConnectionError(f"amqp connection lost: {exc}"))
        self._calls.lost(f"the connection to the broker {self._link.conn.address} was lost; "
                         "the call may or may not have run")

    # -- sending --------------------------------------------------------------------------

    async def send(self, env: Envelope) -> None:
        """Route a call, cast, task or event; casts, tasks and events wait for the confirm.

        ConnectionError while the broker cannot be reached (retried above), ProtocolError
        for an envelope that cannot be sent at all."""
        link = self._link
        if env.kind == "call":
            await self._calls.send(env)
        elif env.kind in ("cast", "task"):
            body = link.encode(env)
            await link.ready()
            link.declare_task_queue(env.service)
            props: dict[str, Any] = {"delivery_mode": 2, "message_id": env.id}
            if env.priority is not None:
                props["priority"] = env.priority
            early = not_yet_ms(env)
            if early >= 1:
                await self._delays.publish(body, env.service, early, **props)
                link.stats["delayed"] += 1
            else:
                await self._confirms.publish(body, "", link.topology.task_queue(env.service),
                                             **props)
        elif env.kind == "event":
            body = link.encode(env)
            await self._confirms.publish(body, link.topology.events, env.topic, delivery_mode=1,
                                         message_id=env.id)
        else:
            raise ProtocolError(f"cannot send a {env.kind!r} envelope")

    # -- serving --------------------------------------------------------------------------

    async def serve(self, info: ServiceInfo, handler: Handler, prefetch: int = 16) -> None:
        """Consume ``info.name``'s call and task queues; answer discovery for it."""
        await self._serving.serve(info, handler, prefetch)

    async def unserve(self, service: str) -> None:
        """Cancel the consumers; in-flight work still acks; remove from discovery."""
        await self._serving.unserve(service)

    # -- dead letters ---------------------------------------------------------------------

    async def dead_letters(self, service: str) -> list[DeadLetter]:
        """The tasks buried in ``service``'s dead queue, oldest first; consumes nothing."""
        await self._link.ready()
        return await asyncio.to_thread(list_dead, self.opts, self.topology, service,
                                       self._link.conn.broker)

    async def replay(self, service: str, ids: list[str] | None = None) -> int:
        """Send ``service``'s dead letters (those with ``ids``; all when None) back to its
        task queue as first attempts, confirmed, and remove them from the dead queue."""
        await self._link.ready()
        return await asyncio.to_thread(replay_dead, self.opts, self.topology, self.codec,
                                       service, ids, self._link.conn.broker)

    # -- discovery ------------------------------------------------------------------------

    async def discover(self) -> list[ServiceInfo]:
        """Broadcast a discovery request; collect answers for ``discover_window`` seconds."""
        link = self._link
        await link.ready()
        corr = new_id()
        bucket: list[dict[str, Any]] = []
        self._calls.discovery[corr] = bucket
        try:
            link.guard(link.ch_call.basic_publish, request_message(corr, REPLY_TO),
                       exchange=link.topology.discovery, routing_key="")
            await asyncio.sleep(self.opts.discover_window)
        finally:
            self._calls.discovery.pop(corr, None)
        return merge(bucket, self.scheme)

    # -- events ---------------------------------------------------------------------------

    async def subscribe(self, pattern: str, handler: EventHandler) -> None:
        """Bind ``pattern`` to this bus's event queue (created on first use)."""
        link = self._link
        await link.ready()
        self._subs.append((pattern, handler))
        with contextlib.suppress(ConnectionError):   # else re-done by _up after reconnecting
            link.sync(self._ensure_events, link.conn.conn)
            link.sync(self._bind, pattern)
        link.kick()

    def _ensure_events(self, conn: Any) -> None:
        if self._ch_events is not None:
            return
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True, auto_delete=True).queue
        ch.basic_consume(q, no_ack=True,
                         callback=lambda m: self._link.inbox.append(lambda: self._on_event(m)))
        self._ch_events, self._event_queue = ch, q

    def _bind(self, pattern: str) -> None:
        if pattern in self._bound:
            return
        self._ch_events.queue_bind(self._event_queue, self.topology.events, pattern)
        self._bound.add(pattern)

    def _on_event(self, msg: Any) -> None:
        try:
            env = decode(body_of(msg))
        except ProtocolError as exc:
            self._link.malformed(f"event: {exc}")
            return
        if env.kind != "event":
            self._link.malformed(f"a {env.kind} envelope on the events exchange")
            return
        for pattern, handler in self._subs:
            if matches(pattern, env.topic):
                self._link.spawn(handler(env))
