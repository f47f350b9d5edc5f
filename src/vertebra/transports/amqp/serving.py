"""Serving: consuming a service's call and task queues, checking what arrives, burying
tasks, the poison limit, and answering discovery for the services served here.

Attempts are the node's business: a task that failed and may run again is re-sent by the
node (``attempt`` header) and this delivery acked; ``reject(False, error)`` buries it
(:mod:`.deadletters`).  The transport's own limit is for a task whose *worker dies* with
it.  A quorum queue counts deliveries itself (``x-delivery-count``): a redelivery is run
while that count is below ``max_redeliveries`` and buried with error type ``WorkerLost``
when it reaches it.  A classic queue does not count: a delivery flagged ``redelivered`` is
not run but re-published with the AMQP header ``x-vertebra-redeliveries`` + 1 (confirmed;
the original acked in the confirm's callback), and buried likewise at the limit — so a
crash loop ends on either.

A consumer the broker cancels (its queue was deleted: on a cluster, a call queue whose
node died) is declared and consumed again (:meth:`Serving._cancelled`).

A cast or task that arrives more than ``REDELAY_AFTER`` (1 s) before its ``not_before`` (a
delay longer than the longest delay queue, or clocks apart) is not handed to the node but
sent through a delay queue again for the rest, confirmed, and this delivery acked from the
confirm (:meth:`Serving._redelay`).  An answer to a call may be several envelopes (a
streamed call's ``item`` and ``beat`` answers, then its final ``reply`` or ``error``): each
is published as it comes; the node settles the delivery after the final one.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from ...backoff import Backoff
from ...wire.codec import Codec, decode
from ...wire.deadletter import DeadLetter
from ...wire.envelope import Envelope
from ...wire.errors import ProtocolError, wire_error
from ...wire.info import ServiceInfo
from ..base import Handler
from .confirms import Confirms
from .deadletters import dead_body
from .delays import REDELAY_AFTER, Delays, not_yet_ms
from .discovery import answer_message
from .incoming import AmqpIncoming, Served
from .link import Link, body_of
from .topology import DELIVERY_COUNT, REDELIVERIES_HEADER

__all__ = ["Serving"]

log = logging.getLogger("vertebra.transports.amqp")

_KEPT_PROPERTIES = ("content_type", "message_id", "correlation_id", "type", "priority")


class Serving:
    """The services this transport serves, their consumers and what they settle."""

    def __init__(self, link: Link, confirms: Confirms, delays: Delays) -> None:
        self.link = link
        self._confirms = confirms
        self._delays = delays
        self.services: dict[str, Served] = {}
        self._ch_control: Any = None
        self._backoff = Backoff(base=0.1, cap=link.opts.reconnect_max)

    # -- consumers --------------------------------------------------------------------------

    async def serve(self, info: ServiceInfo, handler: Handler, prefetch: int) -> None:
        """Consume ``info.name``'s queues (now, or after the next reconnect)."""
        if info.name in self.services:
            raise ValueError(f"already serving {info.name!r} on this transport")
        await self.link.ready()
        served = Served(info, handler, max(1, prefetch))
        self.services[info.name] = served
        try:
            self.link.sync(self._start, self.link.conn.conn, served)
        except ConnectionError:
            pass                                     # done by resume() after reconnecting
        except ProtocolError:
            del self.services[info.name]             # its queue exists with other arguments
            raise
        finally:
            self.link.kick()

    def resume(self, conn: Any) -> None:
        """A new connection: consume again for every service served."""
        self._ch_control = None
        for served in self.services.values():
            try:
                self._start(conn, served)
            except ProtocolError as exc:   # its queue is misdeclared: the others still serve
                log.error("amqp: cannot serve %s again: %s", served.info.name, exc)

    def dropped(self) -> None:
        """The connection is gone with every channel and consumer on it."""
        self._ch_control = None
        for served in self.services.values():
            served.channel = None
            served.tags = []

    def _start(self, conn: Any, served: Served) -> None:
        link, name = self.link, served.info.name
        link.declare_task_queue(name)
        ch = conn.channel()
        # Classic: one global window shared by the two consumers.  Quorum queues refuse a
        # global qos (NOT_IMPLEMENTED): each consumer gets the window (the node's own
        # concurrency still bounds what runs at once).
        ch.basic_qos(0, served.prefetch, not link.opts.quorum)
        served.channel = ch
        served.tags = [self._consume(served, ch, link.topology.call_queue(name)),
                       self._consume(served, ch, link.topology.task_queue(name))]
        self._ensure_control(conn)

    def _consume(self, served: Served, ch: Any, queue: str) -> str:
        link = self.link
        if queue == link.topology.call_queue(served.info.name):
            ch.queue_declare(queue, durable=False, auto_delete=True)

        def deliver(msg: Any) -> None:
            link.inbox.append(lambda: self._on_work(served, ch, msg))

        def cancelled(tag: str) -> None:   # the broker cancelled it: see _cancelled
            link.inbox.append(lambda: self._cancelled(served, ch, queue, tag, 0))

        tag: str = ch.basic_consume(queue, callback=deliver, on_cancel=cancelled)
        return tag

    def _cancelled(self, served: Served, ch: Any, queue: str, tag: str, attempt: int) -> None:
        """The broker cancelled a consumer of ``served``: its queue was deleted.  On a
        cluster that is a call queue (classic, transient) whose node died while this bus,
        on another node, consumed it — the replicas there reconnect and declare it anew.
        Declare it again here and consume it, with backoff while the broker refuses."""
        link = self.link
        if served.stopped or ch is not served.channel or tag not in served.tags:
            return
        link.stats["consumers_cancelled"] = link.stats.get("consumers_cancelled", 0) + 1
        try:
            new_tag = link.sync(self._consume, served, ch, queue)
        except (ConnectionError, ProtocolError) as exc:
            log.info("amqp: consuming %s again failed (%s); retrying", queue, exc)
            if link.loop is not None and not link.closed:
                link.loop.call_later(self._backoff.delay(attempt), self._cancelled, served, ch,
                                     queue, tag, attempt + 1)
            return
        finally:
            link.kick()
        served.tags = [new_tag if t == tag else t for t in served.tags]
        log.info("amqp: the broker cancelled the consumer of %s; consuming it again", queue)

    def _check(self, served: Served, msg: Any, body: bytes) -> tuple[Envelope | None, str]:
        """The envelope of a delivery, or why it cannot be run."""
        if len(body) > self.link.opts.max_message:
            return None, f"{len(body)} bytes, above max_message {self.link.opts.max_message}"
        try:
            env = decode(body)
        except ProtocolError as exc:
            return None, str(exc)
        if env.kind not in ("call", "cast", "task"):
            return env, f"a {env.kind} envelope in a service queue"
        if env.service != served.info.name:
            return env, f"envelope for {env.service!r} in {served.info.name!r}'s queue"
        if env.kind == "call":
            rt = msg.properties.get("reply_to")
            if not rt:
                return env, "a call without reply_to"
            env.reply_to = str(rt)
        return env, ""

    def _on_work(self, served: Served, ch: Any, msg: Any) -> None:
        tag = msg.delivery_info["delivery_tag"]
        body = body_of(msg)
        env, why = self._check(served, msg, body)
        if why or env is None or served.stopped:
            if why:
                self.link.malformed(why, msg)   # a task queue dead-letters it (x-death)
            with contextlib.suppress(Exception):
                ch.basic_reject(tag, requeue=not why)
            return
        served.inflight += 1
        incoming = AmqpIncoming(env, self, served, ch, tag, body, dict(msg.properties))
        early = not_yet_ms(env) if env.kind != "call" else 0.0
        if early > REDELAY_AFTER * 1000:
            self.link.spawn(self._redelay(incoming, early))
        elif env.kind != "call" and msg.delivery_info.get("redelivered"):
            count = (msg.properties.get("application_headers") or {}).get(DELIVERY_COUNT)
            if not isinstance(count, int):
                self.link.spawn(self._redelivered(incoming))   # classic: count by re-publishing
            elif count >= self.link.opts.max_redeliveries:
                self.link.spawn(self._lost(incoming, count))   # quorum: the broker counted
            else:
                self.link.stats["redelivered"] += 1
                self.link.spawn(served.handler(incoming))
        else:
            self.link.spawn(served.handler(incoming))

    async def unserve(self, service: str) -> None:
        """Cancel the consumers; in-flight work still settles; leave discovery."""
        served = self.services.pop(service, None)
        if served is None:
            return
        served.stopped = True
        ch = served.channel
        if ch is not None and self.link.conn.up:
            for tag in served.tags:
                with contextlib.suppress(ConnectionError):
                    self.link.sync(ch.basic_cancel, tag)
            self.link.kick()
        self.maybe_close(served)

    def maybe_close(self, served: Served) -> None:
        """Close a stopped service's channel once nothing is in flight on it."""
        if served.stopped and served.inflight <= 0 and served.channel is not None:
            ch, served.channel = served.channel, None
            with contextlib.suppress(Exception), self.link.conn.direct():
                ch.close()   # requeues whatever was delivered but not started

    async def reply(self, answer: Envelope, codec: Codec | None = None) -> None:
        """Publish a call's answer to the caller's reply-to address, in ``codec`` (the
        call's, docs/PROTOCOL.md §3; this transport's when None)."""
        if not answer.reply_to:
            raise ProtocolError("an answer needs the call's reply_to")
        link = self.link
        body = (codec or link.codec).encode(answer)
        if len(body) > link.opts.max_message:
            raise ProtocolError(f"answer of {len(body)} bytes exceeds {link.opts.max_message}")
        await link.ready()
        link.guard(link.publish, link.ch_call, body, "", answer.reply_to,
                   correlation_id=answer.re, delivery_mode=1)

    # -- burying, and the poison limit ----------------------------------------------------

    async def bury(self, incoming: AmqpIncoming, error: dict[str, Any] | None,
                   headers: dict[str, Any] | None = None) -> bool:
        """Keep ``incoming`` in its service's dead queue with ``error``; ack it once the
        broker confirmed the dead copy.  False (and the delivery given back) if it could not."""
        env = incoming.envelope
        dead = DeadLetter.of(env, error)
        props: dict[str, Any] = {"delivery_mode": 2, "message_id": env.id}
        if headers:
            props["application_headers"] = headers
        try:
            await self.link.ready()
            self.link.declare_task_queue(env.service)
            await self._confirms.publish(dead_body(self.link.codec, env, dead.error), "",
                                         self.link.topology.dead_queue(env.service),
                                         then=incoming.ack_now, **props)
        except ConnectionError as exc:
            log.warning("amqp: could not bury task %s of %s (%s); it goes back to its queue",
                        env.id, env.service, exc)
            incoming.requeue_now()
            return False
        self.link.stats["buried"] += 1
        log.error("amqp: buried task %s of %s.%s after %d attempt(s): %s: %s", env.id,
                  env.service, env.method, dead.attempts, dead.error["type"], dead.error["message"])
        return True

    async def _lost(self, incoming: AmqpIncoming, count: int) -> None:
        """Bury a task delivered ``count`` times before without an ack (WorkerLost)."""
        try:
            await self.bury(incoming, wire_error(
                "remote", "WorkerLost", f"delivered {count} time(s) without being "
                "acknowledged: its worker died each time"), {REDELIVERIES_HEADER: count})
        finally:
            incoming._done = True
            incoming._finish()

    async def _redelivered(self, incoming: AmqpIncoming) -> None:
        """A task that was delivered before and never acked: count it, then run the copy."""
        link, env = self.link, incoming.envelope
        headers = dict(incoming.properties.get("application_headers") or {})
        count = headers.get(REDELIVERIES_HEADER, 0)
        count = (count if isinstance(count, int) else 0) + 1
        headers[REDELIVERIES_HEADER] = count
        if count >= link.opts.max_redeliveries:
            await self._lost(incoming, count)
            return
        try:
            link.stats["redelivered"] += 1
            props = {k: v for k, v in incoming.properties.items() if k in _KEPT_PROPERTIES}
            try:
                await link.ready()
                link.declare_task_queue(env.service)
                await self._confirms.publish(incoming.body, "", link.topology.task_queue(env.service),
                                             then=incoming.ack_now, delivery_mode=2,
                                             application_headers=headers, **props)
            except ConnectionError:
                incoming.requeue_now()   # the connection is alive (else a no-op): try again
        finally:
            incoming._done = True
            incoming._finish()

    async def _redelay(self, incoming: AmqpIncoming, early_ms: float) -> None:
        """A cast or task that came out ``early_ms`` before its ``not_before``: through a
        delay queue again (confirmed; this delivery acked from the confirm).  Should the
        broker refuse the delay queue, the node gets it and waits until it is due."""
        link, env = self.link, incoming.envelope
        props = {k: v for k, v in incoming.properties.items() if k in _KEPT_PROPERTIES}
        props["application_headers"] = dict(incoming.properties.get("application_headers") or {})
        props.setdefault("message_id", env.id)   # a returned publish is matched by it
        handed = False
        try:
            await link.ready()
            link.declare_task_queue(env.service)
            await self._delays.publish(incoming.body, env.service, not_yet_ms(env) or early_ms,
                                       then=incoming.ack_now, **props)
            link.stats["redelayed"] += 1
        except ConnectionError:
            incoming.requeue_now()     # the connection is alive (else a no-op): try again
        except ProtocolError as exc:
            log.warning("amqp: cannot delay %s of %s again (%s); its node waits for it",
                        env.id, env.service, exc)
            handed = True              # settled by the node, like any delivery
            link.spawn(incoming._served.handler(incoming))
        finally:
            if not handed:
                incoming._done = True
                incoming._finish()

    # -- discovery: answering for the services served here -------------------------------

    def _ensure_control(self, conn: Any) -> None:
        if self._ch_control is not None:
            return
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True, auto_delete=True).queue
        ch.queue_bind(q, self.link.topology.discovery, "")
        ch.basic_consume(q, no_ack=True,
                         callback=lambda m: self.link.inbox.append(lambda: self._on_discover(m)))
        self._ch_control = ch

    def _on_discover(self, msg: Any) -> None:
        props = msg.properties
        reply_to, corr = props.get("reply_to"), props.get("correlation_id")
        if not reply_to or not corr:
            self.link.malformed("discovery request without reply_to/correlation_id")
            return
        infos = [s.info.to_dict() for s in self.services.values() if not s.stopped]
        if not infos or self.link.ch_call is None:
            return
        with contextlib.suppress(Exception):
            self.link.ch_call.basic_publish(answer_message(infos, str(corr)), exchange="",
                                            routing_key=reply_to)
