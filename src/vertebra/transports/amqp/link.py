"""What the parts of the amqp transport share: the connection, its base channels, and
py-amqp calls made safe (library errors become ConnectionError at this edge).

The transport is split along its jobs — :mod:`.confirms` (confirmed publishing),
:mod:`.calls` (calls out, answers in), :mod:`.serving` (consuming for served services),
:mod:`.deadletters` (the dead queue) — and each part holds one :class:`Link`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import amqp

from ...eager import start_eagerly
from ...wire.codec import Codec
from ...wire.envelope import Envelope
from ...wire.errors import ProtocolError, wire_error
from .connection import LoopConnection
from .frames import ack_frame, publish_frames
from .options import AmqpOptions
from .topology import DELAY_LEASE_MS, Topology, priority_mismatch

__all__ = ["LIBRARY_ERRORS", "Link", "body_of", "send_publish"]

log = logging.getLogger("vertebra.transports.amqp")

LIBRARY_ERRORS = (OSError, amqp.exceptions.AMQPError, amqp.exceptions.RecoverableConnectionError,
                  AttributeError)   # AttributeError: a channel py-amqp already tore down
"""What py-amqp raises when a connection or channel is gone."""

_BLOCKED_WAIT = 5.0   # seconds a send waits for a broker that blocks publishers


_PUBLISH_ARGS = "Bssbb"   # basic.publish: reserved, exchange, routing key, mandatory, immediate


def send_publish(ch: Any, msg: Any, exchange: str, key: str, mandatory: bool = False) -> None:
    """Write ``basic.publish`` of ``msg`` on ``ch`` (its method, header and body frames).

    What py-amqp's ``basic_publish`` writes, without the ``drain_events(timeout=0)`` it
    runs first on every publish to notice ``connection.blocked`` (a socket read and two
    timeout changes, each a syscall): here the loop's reader watches the socket all the
    time and sees ``connection.blocked`` as it comes (:mod:`.connection`)."""
    if not ch.connection:
        raise amqp.exceptions.RecoverableConnectionError("basic_publish: connection closed")
    ch.send_method(amqp.spec.Basic.Publish, _PUBLISH_ARGS, (0, exchange, key, mandatory, False),
                   msg)


def body_of(msg: Any) -> bytes:
    """The body of a py-amqp message as bytes."""
    body = msg.body
    if isinstance(body, str):
        return body.encode()
    return bytes(body)


class Link:
    """One connection to the broker and the handles every part of the transport uses.

    ``ch_setup`` (declarations), ``ch_call`` (calls out, replies in and out) and
    ``ch_pub`` (confirmed publishes) are opened by the transport after every connect and
    are None while it is down.  ``generation`` counts successful connects; ``up_since`` is
    when the last one happened (monotonic seconds).
    """

    def __init__(self, opts: AmqpOptions, codec: Codec, stats: dict[str, int],
                 on_up: Callable[[Any], None], on_down: Callable[[BaseException], None]) -> None:
        self.opts = opts
        self.codec = codec
        self.stats = stats
        self.topology = Topology(opts.prefix, opts.expires_ms, opts.quorum)
        self.conn = LoopConnection(opts, on_up, on_down, stats)
        self.conn.after_read = self._drain_inbox
        self.inbox: list[Callable[[], None]] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ch_setup: Any = None
        self.ch_call: Any = None
        self.ch_pub: Any = None
        self.task_queues: set[str] = set()
        self.plain_queues: set[str] = set()
        """Task queues that exist without ``x-max-priority`` (kept across connections)."""
        self.delay_leases: dict[int, float] = {}
        """TTL -> when this bus last declared that delay queue (monotonic seconds)."""
        self.tasks: set[asyncio.Task[Any]] = set()
        self.closed = False
        self.generation = 0
        self.up_since = 0.0

    def opened(self, conn: Any) -> None:
        """Open the base channels and declare the exchanges on a new connection."""
        self.ch_setup = conn.channel()
        for name, kind in self.topology.exchanges():
            self.ch_setup.exchange_declare(name, kind, durable=True, auto_delete=False)
        self.ch_call = conn.channel()
        self.ch_pub = conn.channel()
        self.task_queues.clear()
        self.delay_leases.clear()
        self.generation += 1
        self.up_since = time.monotonic()

    def dropped(self) -> None:
        """The connection is gone: forget its channels."""
        self.ch_setup = self.ch_call = self.ch_pub = None

    # -- py-amqp calls, made safe ----------------------------------------------------------

    def guard(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a py-amqp call; a failure means the connection is lost -> ConnectionError."""
        try:
            return fn(*args, **kwargs)
        except LIBRARY_ERRORS as exc:
            self.conn.lost(exc)
            raise ConnectionError(f"amqp: {type(exc).__name__}: {exc}") from exc

    def sync(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A py-amqp call that waits for the broker's answer: writes go out directly."""
        def run() -> Any:
            with self.conn.direct():
                return fn(*args, **kwargs)
        return self.guard(run)

    async def ready(self) -> None:
        """Return when a send may go out; ConnectionError while closed, down or blocked."""
        if self.closed:
            raise ConnectionError("amqp transport is closed")
        if not self.conn.up:
            raise ConnectionError(f"amqp broker {self.opts.address} unreachable (reconnecting)")
        if not self.conn.writable.is_set():
            # asyncio.wait, not wait_for/timeout: a send may run outside a task (eagerly)
            waiter = asyncio.ensure_future(self.conn.writable.wait())
            try:
                done, _ = await asyncio.wait({waiter}, timeout=_BLOCKED_WAIT)
            finally:
                waiter.cancel()
            if not done:
                raise ConnectionError("amqp broker is blocking publishers")
            if not self.conn.up:
                raise ConnectionError(f"amqp broker {self.opts.address} unreachable (reconnecting)")

    def publish(self, ch: Any, body: bytes, exchange: str, key: str, *,
                mandatory: bool = False, **props: Any) -> None:
        """``basic.publish`` of ``body`` with ``props`` (content_type: the codec's)."""
        props.setdefault("content_type", self.codec.content_type)
        conn = ch.connection
        frames = (publish_frames(ch.channel_id, exchange, key, mandatory, body, props,
                                 conn.frame_max) if conn else None)
        if frames is None:   # properties only py-amqp encodes (or a channel already gone)
            send_publish(ch, amqp.Message(body, **props), exchange, key, mandatory)
            return
        conn.transport.write(frames)
        conn.bytes_sent += 1   # py-amqp's count of frames written, for its heartbeats

    @staticmethod
    def ack(ch: Any, tag: int) -> None:
        """``basic.ack`` of delivery ``tag`` on ``ch`` (one frame, packed here)."""
        conn = ch.connection
        if not conn:
            raise amqp.exceptions.RecoverableConnectionError("basic_ack: connection closed")
        conn.transport.write(ack_frame(ch.channel_id, tag))
        conn.bytes_sent += 1   # py-amqp's count of frames written, for its heartbeats

    def encode(self, env: Envelope) -> bytes:
        """Encode ``env``; ProtocolError when it is larger than ``max_message``."""
        body = self.codec.encode(env)
        if len(body) > self.opts.max_message:
            raise ProtocolError(f"message of {len(body)} bytes exceeds the limit of "
                                f"{self.opts.max_message} bytes")
        return body

    def declare(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``ch_setup.<method>(...)``, waiting for the broker's answer.

        A refusal (the queue exists with other arguments, access refused) closes only the
        setup channel: it is opened again and the refusal raised as ProtocolError, so that
        one misdeclared service fails its own sends instead of the whole connection."""
        if self.ch_setup is None or self.conn.conn is None:
            raise ConnectionError(f"amqp broker {self.opts.address} unreachable (reconnecting)")
        try:
            with self.conn.direct():
                return getattr(self.ch_setup, method)(*args, **kwargs)
        except amqp.exceptions.ChannelError as exc:
            self.ch_setup = self.sync(self.conn.conn.channel)
            hint = ""
            if "x-queue-type" in str(exc):
                hint = (f" (this bus declares {self.opts.queue_type} queues: every bus of a "
                        "network must use the same queue_type)")
            raise ProtocolError(f"the broker refused {method} {args[0]!r}: {exc}{hint}") from exc
        except LIBRARY_ERRORS as exc:
            self.conn.lost(exc)
            raise ConnectionError(f"amqp: {type(exc).__name__}: {exc}") from exc

    def declare_task_queue(self, service: str) -> None:
        """Declare ``service``'s dead queue, its binding and its task queue (once per
        connection); ProtocolError when the broker refuses them.

        A classic task queue that exists without ``x-max-priority`` (declared by a vertebra
        that did not order by priority) cannot be given it: the broker refuses to change a
        queue's arguments (PRECONDITION_FAILED).  It is then used as it is, without
        priorities, with one warning; and the other way round for one that has it."""
        queue = self.topology.task_queue(service)
        if queue in self.task_queues:
            return
        topo = self.topology
        dead = topo.dead_queue(service)
        try:
            self.declare("queue_declare", dead, durable=True, auto_delete=False,
                         arguments=topo.dead_arguments())
            self.declare("queue_bind", dead, topo.dlx, dead)
            plain = queue in self.plain_queues
            try:
                self.declare("queue_declare", queue, durable=True, auto_delete=False,
                             arguments=topo.task_arguments(service, priority=not plain))
            except ProtocolError as exc:
                if topo.quorum or not priority_mismatch(exc):
                    raise
                plain = not plain
                self.declare("queue_declare", queue, durable=True, auto_delete=False,
                             arguments=topo.task_arguments(service, priority=not plain))
                if plain:
                    self.plain_queues.add(queue)
                    log.warning("amqp: task queue %s exists without x-max-priority (declared "
                                "by an older vertebra or by hand): its tasks are not ordered "
                                "by priority; delete it while it is empty to have them", queue)
                else:
                    self.plain_queues.discard(queue)
        finally:
            self.kick()
        self.task_queues.add(queue)

    def declare_delay_queue(self, ttl_ms: int) -> None:
        """Declare the delay queue of ``ttl_ms`` and its binding, unless this bus did less
        than half its lease ago: ``x-expires`` counts from the last declaration (publishing
        does not renew it), so the queue outlives every message published meanwhile."""
        now = time.monotonic()
        last = self.delay_leases.get(ttl_ms)
        if last is not None and now - last < DELAY_LEASE_MS / 2000:
            return
        topo = self.topology
        queue = topo.delay_queue(ttl_ms)
        try:
            self.declare("queue_declare", queue, durable=True, auto_delete=False,
                         arguments=topo.delay_arguments(ttl_ms))
            self.declare("queue_bind", queue, topo.delay_exchange, "",
                         arguments=topo.delay_binding(ttl_ms))
        finally:
            self.kick()
        if len(self.delay_leases) >= 1024:
            self.delay_leases = {t: at for t, at in self.delay_leases.items()
                                 if now - at < DELAY_LEASE_MS / 2000}
        self.delay_leases[ttl_ms] = now

    # -- the loop ---------------------------------------------------------------------------

    def spawn(self, coro: Any) -> None:
        """Run ``coro`` as a task of the transport (started eagerly)."""
        start_eagerly(coro, self.tasks)

    def kick(self) -> None:
        """Frames may have been read while waiting for a declaration's answer: process them."""
        if self.loop is not None:
            self.loop.call_soon(self.conn.readable)

    def _drain_inbox(self) -> None:
        """Handle the deliveries py-amqp collected during the last read (loop thread)."""
        while self.inbox:
            batch, self.inbox = self.inbox, []
            for job in batch:
                try:
                    job()
                except Exception:
                    log.exception("amqp: handling a delivery failed")

    def malformed(self, why: str, msg: Any = None) -> None:
        """Count and log a message that is not a valid envelope; answer its sender if it can."""
        self.stats["malformed"] += 1
        log.warning("amqp: malformed message dropped: %s", why)
        props = getattr(msg, "properties", None) or {}
        reply_to, corr = props.get("reply_to"), props.get("correlation_id")
        if reply_to and corr and self.ch_call is not None:
            err = Envelope("error", re=str(corr), error=wire_error("protocol", "ProtocolError", why[:500]))
            with contextlib.suppress(Exception):
                self.publish(self.ch_call, self.codec.encode(err), "", str(reply_to),
                             correlation_id=str(corr))
