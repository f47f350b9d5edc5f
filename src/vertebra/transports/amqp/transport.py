"""The ``amqp://`` / ``amqps://`` transport: vertebra on RabbitMQ through py-amqp.

Capability sheet
----------------
Guarantees:

* Calls: one auto-delete queue per service, shared by its replicas (round robin within
  the prefetch window); replies over direct reply-to, ``correlation_id`` = call id.  A call
  to a service no replica serves fails at once with ``unreachable`` (mandatory publish,
  ``basic.return``); a call's deadline becomes a per-message TTL, so a stale call is dropped
  by the broker instead of being run late.  Calls in flight when the connection drops are
  answered ``unreachable`` at once (the call may or may not have run).
* Casts and tasks: a durable queue per service, persistent messages, publisher confirms
  (``send`` returns once the broker has the message), manual ack after the handler ends,
  ``basic.qos`` prefetch per served service.  A worker that dies unacked: redelivered.
  A task that fails ``max_attempts`` times (URL, default 3) goes to the service's dead
  queue with the error in a header; fewer failures: re-published with an attempt count.
  A task redelivered unacked ``max_redeliveries`` times (default 10: its worker dies on
  it each time) is buried the same way, so even a crash loop ends.
* Events: one topic exchange; a pattern is the binding key, one to one; one exclusive
  auto-delete queue per subscribing bus; confirmed publish.
* Connection loss: heartbeats; reconnect with exponential backoff and jitter, re-declare,
  resume consuming; ``send`` raises ConnectionError while down (the Bus's outbox retries).
* Bad input (not an envelope, wrong version, wrong kind, a call without ``reply_to``,
  larger than ``max_message``): counted in ``stats["malformed"]``, logged, answered with a
  ``protocol`` error when it names a reply address, and rejected without requeue (task
  queues dead-letter it).  Discovery: a fanout broadcast, answers collected for a window.

Cannot:

* Redeliveries are counted whatever their cause: a task that was prefetched by a node that
  stopped, or that was unacked across a broker restart, counts one too (hence the larger
  limit).  Duplicates are possible (at-least-once): a confirm lost with the connection
  makes the outbox send again.
* Calls are at-most-once: a call queued when its last replica stops is lost with the
  auto-delete queue, and the caller times out.
* Declarations (serve, subscribe, first task to a service, reconnect) wait one broker
  round trip on the event loop thread (see :mod:`.connection`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any, ClassVar

import amqp

from ...eager import start_eagerly
from ...wire.codec import Codec, decode
from ...wire.envelope import Envelope, new_id
from ...wire.errors import ProtocolError
from ...wire.info import ServiceInfo
from ...wire.topics import matches
from ..base import AnswerCallback, Capabilities, EventHandler, Handler, Transport
from .connection import LoopConnection
from .discovery import DISCOVER_TYPE, answer_message, merge, parse_answer, request_message
from .incoming import AmqpIncoming, Served
from .options import parse_url
from .topology import ATTEMPTS_HEADER, ERROR_HEADER, REDELIVERIES_HEADER, REPLY_TO, Topology

__all__ = ["AmqpTransport"]

log = logging.getLogger("vertebra.transports.amqp")

_LIBRARY_ERRORS = (OSError, amqp.exceptions.AMQPError, amqp.exceptions.RecoverableConnectionError,
                   AttributeError)   # AttributeError: a channel py-amqp already tore down



class AmqpTransport(Transport):
    """vertebra over AMQP 0-9-1 (RabbitMQ); see the module docstring for what it guarantees."""

    scheme: ClassVar[str] = "amqp"
    capabilities: ClassVar[Capabilities] = Capabilities(
        durable_tasks=True, task_redelivery=True, fast_unreachable=True, multi_process=True,
        max_message_size=16 * 1024 * 1024)

    def __init__(self, url: str, codec: Codec) -> None:
        super().__init__(url, codec)
        self.opts = parse_url(url)
        self.topology = Topology(self.opts.prefix, self.opts.expires_ms)
        self.stats.update({"returned": 0, "dead_lettered": 0, "retried": 0, "redelivered": 0,
                           "nacked": 0})
        self._on_answer: AnswerCallback = lambda env: None
        self._conn = LoopConnection(self.opts, self._up, self._down, self.stats)
        self._conn.after_read = self._drain_inbox
        self._inbox: list[Callable[[], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ch_call: Any = None       # calls out, replies in (direct reply-to), replies out
        self._ch_pub: Any = None        # confirmed publishes: casts, tasks, events
        self._ch_setup: Any = None      # declarations
        self._ch_events: Any = None     # the event queue's consumer
        self._ch_control: Any = None    # the discovery queue's consumer
        self._event_queue = ""
        self._control_queue = ""
        self._next_tag = 1
        self._unconfirmed: dict[int, asyncio.Future[None]] = {}
        self._then: dict[int, Callable[[], None]] = {}   # run inside the confirm callback
        self._task_queues: set[str] = set()
        self._services: dict[str, Served] = {}
        self._subs: list[tuple[str, EventHandler]] = []
        self._bound: set[str] = set()
        self._calls: dict[str, float] = {}          # call id -> deadline, for loss answers
        self._discovery: dict[str, list[dict[str, Any]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------------

    async def connect(self, on_answer: AnswerCallback) -> None:
        """Connect, declare the exchanges and start the reply consumer."""
        self._loop = asyncio.get_running_loop()
        self._on_answer = on_answer
        try:
            await self._conn.start()
        except ConnectionError:
            await self._conn.close()
            raise

    async def close(self) -> None:
        """Close the connection; the broker requeues whatever was not acked."""
        if self._closed:
            return
        self._closed = True
        self._fail_calls("the transport was closed")
        await self._conn.close()
        self._fail_confirms(ConnectionError("transport closed"))
        for task in list(self._tasks):
            task.cancel()

    def _up(self, conn: Any) -> None:
        """(Re)declare everything and resume consuming; runs after every connect."""
        self._ch_setup = conn.channel()
        for name, kind in self.topology.exchanges():
            self._ch_setup.exchange_declare(name, kind, durable=True, auto_delete=False)
        self._ch_call = conn.channel()
        self._ch_call.events["basic_return"].add(self._on_return)
        self._ch_call.basic_consume(REPLY_TO, no_ack=True, callback=self._on_reply)
        self._ch_pub = conn.channel()
        self._ch_pub.confirm_select()
        self._ch_pub.events["basic_ack"].add(self._on_confirm)
        self._ch_pub.events["basic_nack"].add(self._on_nack)
        self._next_tag = 1
        self._task_queues.clear()
        self._ch_events = self._ch_control = None
        self._event_queue = self._control_queue = ""
        self._bound.clear()
        for served in self._services.values():
            self._start_serving(conn, served)
        if self._subs:
            self._ensure_events(conn)
            for pattern, _ in self._subs:
                self._bind(pattern)

    def _down(self, exc: BaseException) -> None:
        self._ch_call = self._ch_pub = self._ch_setup = self._ch_events = self._ch_control = None
        for served in self._services.values():
            served.channel = None
            served.tags = []
        self._fail_confirms(ConnectionError(f"amqp connection lost: {exc}"))
        self._fail_calls("the connection to the broker was lost; the call may or may not have run")

    def _fail_confirms(self, exc: BaseException) -> None:
        pending, self._unconfirmed = self._unconfirmed, {}
        self._then.clear()
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(exc)

    def _fail_calls(self, message: str) -> None:
        calls, self._calls = self._calls, {}
        for call_id in calls:
            self._answer_unreachable(Envelope("call", id=call_id), message)

    def _answer_unreachable(self, call: Envelope, message: str) -> None:
        self._on_answer(call.fail({"code": "unreachable", "type": "Unreachable",
                                   "message": message, "traceback": ""}))

    def _guard(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a py-amqp call; a failure means the connection is lost -> ConnectionError."""
        try:
            return fn(*args, **kwargs)
        except _LIBRARY_ERRORS as exc:
            self._conn.lost(exc)
            raise ConnectionError(f"amqp: {type(exc).__name__}: {exc}") from exc

    def _sync(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A py-amqp call that waits for the broker's answer: writes go out directly."""
        def run() -> Any:
            with self._conn.direct():
                return fn(*args, **kwargs)
        return self._guard(run)

    def _spawn(self, coro: Any) -> None:
        start_eagerly(coro, self._tasks)

    def _drain_inbox(self) -> None:
        """Handle the deliveries py-amqp collected during the last read (loop thread)."""
        while self._inbox:
            batch, self._inbox = self._inbox, []
            for job in batch:
                try:
                    job()
                except Exception:
                    log.exception("amqp: handling a delivery failed")

    def _malformed(self, why: str, msg: Any = None) -> None:
        self.stats["malformed"] += 1
        log.warning("amqp: malformed message dropped: %s", why)
        props = getattr(msg, "properties", None) or {}
        reply_to, corr = props.get("reply_to"), props.get("correlation_id")
        if reply_to and corr and self._ch_call is not None:
            err = Envelope("error", re=str(corr), error={
                "code": "protocol", "type": "ProtocolError", "message": why[:500], "traceback": ""})
            with contextlib.suppress(Exception):
                self._publish_raw(self._ch_call, self.codec.encode(err), "", str(reply_to),
                                  correlation_id=str(corr))

    # -- publishing -----------------------------------------------------------------------

    def _publish_raw(self, ch: Any, body: bytes, exchange: str, key: str, *,
                     mandatory: bool = False, **props: Any) -> None:
        props.setdefault("content_type", self.codec.content_type)
        msg = amqp.Message(body, **props)
        ch.basic_publish(msg, exchange=exchange, routing_key=key, mandatory=mandatory)

    def _encode(self, env: Envelope) -> bytes:
        body = self.codec.encode(env)
        if len(body) > self.opts.max_message:
            raise ProtocolError(f"message of {len(body)} bytes exceeds the limit of "
                                f"{self.opts.max_message} bytes")
        return body

    async def _ready(self) -> None:
        if self._closed:
            raise ConnectionError("amqp transport is closed")
        if not self._conn.up:
            raise ConnectionError(f"amqp broker {self.opts.address} unreachable (reconnecting)")
        if not self._conn.writable.is_set():
            try:
                await asyncio.wait_for(self._conn.writable.wait(), 5.0)
            except TimeoutError:
                raise ConnectionError("amqp broker is blocking publishers") from None

    async def _confirmed(self, body: bytes, exchange: str, key: str,
                         then: Callable[[], None] | None = None, **props: Any) -> None:
        """Publish on the confirm channel and wait for the broker's ack."""
        await self._ready()
        assert self._loop is not None
        tag = self._next_tag
        self._next_tag += 1
        fut: asyncio.Future[None] = self._loop.create_future()
        self._unconfirmed[tag] = fut
        if then is not None:
            self._then[tag] = then
        self._guard(self._publish_raw, self._ch_pub, body, exchange, key, **props)
        await fut

    def _on_confirm(self, tag: int, multiple: bool) -> None:
        self._settle_confirms(tag, multiple, None)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        self.stats["nacked"] += 1
        self._settle_confirms(tag, multiple, ConnectionError("the broker refused the message (nack)"))

    def _settle_confirms(self, tag: int, multiple: bool, exc: BaseException | None) -> None:
        if multiple:
            done = [t for t in self._unconfirmed if t <= tag]
        else:
            done = [tag] if tag in self._unconfirmed else []
        for t in done:
            fut = self._unconfirmed.pop(t)
            then = self._then.pop(t, None)
            if then is not None and exc is None:
                then()
            if not fut.done():
                if exc is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(exc)

    async def send(self, env: Envelope) -> None:
        """Route a call, cast, task or event; casts, tasks and events wait for the confirm."""
        if env.kind == "call":
            await self._ready()
            env.reply_to = REPLY_TO
            body = self._encode(env)
            props: dict[str, Any] = {"correlation_id": env.id, "reply_to": REPLY_TO,
                                     "delivery_mode": 1, "message_id": env.id}
            if env.deadline is not None:
                ttl = int((env.deadline - time.time()) * 1000)
                props["expiration"] = str(max(ttl, 1))
            self._calls[env.id] = env.deadline if env.deadline is not None else time.time() + 3600
            try:
                self._guard(self._publish_raw, self._ch_call, body, "",
                            self.topology.call_queue(env.service), mandatory=True, **props)
            except ConnectionError:
                self._calls.pop(env.id, None)
                raise
            self._prune_calls()
        elif env.kind in ("cast", "task"):
            body = self._encode(env)
            await self._ready()
            queue = self.topology.task_queue(env.service)
            self._declare_task_queue(env.service)
            await self._confirmed(body, "", queue, delivery_mode=2, message_id=env.id)
        elif env.kind == "event":
            body = self._encode(env)
            await self._confirmed(body, self.topology.events, env.topic, delivery_mode=1,
                                  message_id=env.id)
        else:
            raise ProtocolError(f"cannot send a {env.kind!r} envelope")

    def _prune_calls(self) -> None:
        if len(self._calls) < 1024:
            return
        now = time.time()
        for call_id in [c for c, d in self._calls.items() if d < now]:
            del self._calls[call_id]

    def _declare_task_queue(self, service: str) -> None:
        queue = self.topology.task_queue(service)
        if queue in self._task_queues:
            return
        ch = self._ch_setup
        dead = self.topology.dead_queue(service)
        self._sync(ch.queue_declare, dead, durable=True, auto_delete=False,
                   arguments=self.topology.dead_arguments())
        self._sync(ch.queue_bind, dead, self.topology.dlx, dead)
        self._sync(ch.queue_declare, queue, durable=True, auto_delete=False,
                   arguments=self.topology.task_arguments(service))
        self._task_queues.add(queue)
        self._kick()

    def _kick(self) -> None:
        """Frames may have been read while waiting for a declaration's answer: process them."""
        if self._loop is not None:
            self._loop.call_soon(self._conn.readable)

    async def _reply(self, answer: Envelope) -> None:
        if not answer.reply_to:
            raise ProtocolError("an answer needs the call's reply_to")
        body = self.codec.encode(answer)
        if len(body) > self.opts.max_message:
            raise ProtocolError(f"answer of {len(body)} bytes exceeds {self.opts.max_message}")
        await self._ready()
        self._guard(self._publish_raw, self._ch_call, body, "", answer.reply_to,
                    correlation_id=answer.re, delivery_mode=1)

    async def _retry_or_bury(self, incoming: AmqpIncoming, error: dict[str, Any] | None) -> None:
        """The handler failed: re-queue with the attempt count + 1, or bury past the limit."""
        await self._republish(incoming, ATTEMPTS_HEADER, self.opts.max_attempts, error or {
            "code": "remote", "type": "Failed", "traceback": "",
            "message": f"the task failed {self.opts.max_attempts} time(s)"})

    async def _redelivered(self, incoming: AmqpIncoming) -> None:
        """A task that was delivered before and never acked: count it, then run the copy."""
        try:
            with contextlib.suppress(ConnectionError):
                await self._republish(incoming, REDELIVERIES_HEADER, self.opts.max_redeliveries, {
                    "code": "remote", "type": "WorkerLost", "traceback": "",
                    "message": f"delivered {self.opts.max_redeliveries} time(s) without being "
                               "acknowledged: its worker died each time"})
        finally:   # acked by the copy's confirm (ack_now); else redelivered after reconnect
            incoming._done = True
            incoming._finish()

    async def _republish(self, incoming: AmqpIncoming, header: str, limit: int,
                         error: dict[str, Any]) -> None:
        headers = dict(incoming.properties.get("application_headers") or {})
        count = headers.get(header, 0)
        count = (count if isinstance(count, int) else 0) + 1
        headers[header] = count
        service = incoming.envelope.service
        props = {k: v for k, v in incoming.properties.items()
                 if k in ("content_type", "message_id", "correlation_id", "type")}
        if count >= limit:
            headers[ERROR_HEADER] = json.dumps(error)
            self.stats["dead_lettered"] += 1
            log.error("amqp: %s task %s dead-lettered (%s=%d): %s", service,
                      incoming.envelope.id, header, count, error.get("message", ""))
            target = self.topology.dead_queue(service)
        else:
            self.stats["retried" if header == ATTEMPTS_HEADER else "redelivered"] += 1
            target = self.topology.task_queue(service)
        await self._ready()
        self._declare_task_queue(service)
        await self._confirmed(incoming.body, "", target, then=incoming.ack_now, delivery_mode=2,
                              application_headers=headers, **props)

    # -- receiving answers ----------------------------------------------------------------

    def _on_reply(self, msg: Any) -> None:
        props = msg.properties
        corr = props.get("correlation_id")
        if props.get("type") == DISCOVER_TYPE:
            bucket = self._discovery.get(str(corr))
            if bucket is not None:
                try:
                    bucket.extend(parse_answer(_body(msg)))
                except ProtocolError as exc:
                    self._malformed(f"discovery answer: {exc}")
            return
        try:
            env = decode(_body(msg))
        except ProtocolError as exc:
            self._malformed(f"reply: {exc}")
            return
        if env.kind not in ("reply", "error"):
            self._malformed(f"a {env.kind} envelope arrived as a reply")
            return
        self._calls.pop(env.re, None)
        self._on_answer(env)

    def _on_return(self, exc: Any, exchange: str, routing_key: str, msg: Any) -> None:
        self.stats["returned"] += 1
        corr = msg.properties.get("correlation_id")
        try:
            call = decode(_body(msg))
        except ProtocolError:
            if not corr:
                return
            call = Envelope("call", id=str(corr))
        if call.kind != "call":
            return
        self._calls.pop(call.id, None)
        self._answer_unreachable(call, f"no replica serves {call.service!r} "
                                       f"(queue {routing_key!r}: {getattr(exc, 'reply_text', exc)})")

    # -- serving --------------------------------------------------------------------------

    async def serve(self, info: ServiceInfo, handler: Handler, prefetch: int = 16) -> None:
        """Consume ``info.name``'s call and task queues; answer discovery for it."""
        if info.name in self._services:
            raise ValueError(f"already serving {info.name!r} on this transport")
        await self._ready()
        served = Served(info, handler, max(1, prefetch))
        self._services[info.name] = served
        with contextlib.suppress(ConnectionError):   # else re-done by _up after reconnecting
            self._sync(self._start_serving, self._conn.conn, served)
        self._kick()

    def _start_serving(self, conn: Any, served: Served) -> None:
        name = served.info.name
        self._declare_task_queue(name)
        ch = conn.channel()
        ch.basic_qos(0, served.prefetch, True)   # global: shared by its two consumers
        call_q = self.topology.call_queue(name)
        ch.queue_declare(call_q, durable=False, auto_delete=True)
        served.channel = ch
        served.tags = [
            ch.basic_consume(call_q, callback=lambda m: self._inbox.append(
                lambda: self._on_work(served, ch, m))),
            ch.basic_consume(self.topology.task_queue(name), callback=lambda m: self._inbox.append(
                lambda: self._on_work(served, ch, m))),
        ]
        self._ensure_control(conn)

    def _on_work(self, served: Served, ch: Any, msg: Any) -> None:
        tag = msg.delivery_info["delivery_tag"]
        queue = msg.delivery_info.get("routing_key", "")
        body = _body(msg)
        why = ""
        env: Envelope | None = None
        if len(body) > self.opts.max_message:
            why = f"{len(body)} bytes, above max_message {self.opts.max_message}"
        else:
            try:
                env = decode(body)
            except ProtocolError as exc:
                why = str(exc)
        if env is not None and why == "":
            if env.kind not in ("call", "cast", "task"):
                why = f"a {env.kind} envelope in a service queue"
            elif env.service != served.info.name:
                why = f"envelope for {env.service!r} in {served.info.name!r}'s queue"
            elif env.kind == "call":
                rt = msg.properties.get("reply_to")
                if not rt:
                    why = "a call without reply_to"
                else:
                    env.reply_to = str(rt)
        if why or env is None or served.stopped:
            if why:
                self._malformed(why, msg)
            with contextlib.suppress(Exception):
                ch.basic_reject(tag, requeue=not why)
            return
        headers = msg.properties.get("application_headers") or {}
        attempts = headers.get(ATTEMPTS_HEADER, 0)
        attempts = attempts if isinstance(attempts, int) else 0
        served.inflight += 1
        incoming = AmqpIncoming(env, self, served, ch, tag, queue, body, dict(msg.properties),
                                attempts)
        if env.kind != "call" and msg.delivery_info.get("redelivered"):
            self._spawn(self._redelivered(incoming))
        else:
            self._spawn(served.handler(incoming))

    async def unserve(self, service: str) -> None:
        """Cancel the consumers; in-flight work still acks; remove from discovery."""
        served = self._services.pop(service, None)
        if served is None:
            return
        served.stopped = True
        ch = served.channel
        if ch is not None and self._conn.up:
            for tag in served.tags:
                with contextlib.suppress(ConnectionError):
                    self._sync(ch.basic_cancel, tag)
            self._kick()
        self._maybe_close_served(served)

    def _maybe_close_served(self, served: Served) -> None:
        if served.stopped and served.inflight <= 0 and served.channel is not None:
            ch, served.channel = served.channel, None
            with contextlib.suppress(Exception), self._conn.direct():
                ch.close()   # requeues whatever was delivered but not started

    # -- discovery ------------------------------------------------------------------------

    def _ensure_control(self, conn: Any) -> None:
        if self._ch_control is not None:
            return
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True, auto_delete=True).queue
        ch.queue_bind(q, self.topology.discovery, "")
        ch.basic_consume(q, no_ack=True,
                         callback=lambda m: self._inbox.append(lambda: self._on_discover(m)))
        self._ch_control, self._control_queue = ch, q

    def _on_discover(self, msg: Any) -> None:
        props = msg.properties
        reply_to, corr = props.get("reply_to"), props.get("correlation_id")
        if not reply_to or not corr:
            self._malformed("discovery request without reply_to/correlation_id")
            return
        infos = [s.info.to_dict() for s in self._services.values() if not s.stopped]
        if not infos or self._ch_call is None:
            return
        with contextlib.suppress(Exception):
            self._ch_call.basic_publish(answer_message(infos, str(corr)), exchange="",
                                        routing_key=reply_to)

    async def discover(self) -> list[ServiceInfo]:
        """Broadcast a discovery request; collect answers for ``discover_window`` seconds."""
        await self._ready()
        corr = new_id()
        bucket: list[dict[str, Any]] = []
        self._discovery[corr] = bucket
        try:
            msg = request_message(corr, REPLY_TO)
            self._guard(self._ch_call.basic_publish, msg, exchange=self.topology.discovery,
                        routing_key="")
            await asyncio.sleep(self.opts.discover_window)
        finally:
            self._discovery.pop(corr, None)
        return merge(bucket, self.scheme)

    # -- events ---------------------------------------------------------------------------

    async def subscribe(self, pattern: str, handler: EventHandler) -> None:
        """Bind ``pattern`` to this bus's event queue (created on first use)."""
        await self._ready()
        self._subs.append((pattern, handler))
        with contextlib.suppress(ConnectionError):   # else re-done by _up after reconnecting
            self._sync(self._ensure_events, self._conn.conn)
            self._sync(self._bind, pattern)
        self._kick()

    def _ensure_events(self, conn: Any) -> None:
        if self._ch_events is not None:
            return
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True, auto_delete=True).queue
        ch.basic_consume(q, no_ack=True,
                         callback=lambda m: self._inbox.append(lambda: self._on_event(m)))
        self._ch_events, self._event_queue = ch, q

    def _bind(self, pattern: str) -> None:
        if pattern in self._bound:
            return
        self._ch_events.queue_bind(self._event_queue, self.topology.events, pattern)
        self._bound.add(pattern)

    def _on_event(self, msg: Any) -> None:
        try:
            env = decode(_body(msg))
        except ProtocolError as exc:
            self._malformed(f"event: {exc}")
            return
        if env.kind != "event":
            self._malformed(f"a {env.kind} envelope on the events exchange")
            return
        for pattern, handler in self._subs:
            if matches(pattern, env.topic):
                self._spawn(handler(env))


def _body(msg: Any) -> bytes:
    body = msg.body
    if isinstance(body, str):
        return body.encode()
    return bytes(body)
