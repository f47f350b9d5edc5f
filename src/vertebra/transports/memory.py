"""memory:// — an in-process broker, held to the same conformance suite as the real ones.

Capability sheet
----------------
* Every bus in one process that says ``memory://`` shares one broker, whatever thread or
  event loop it runs on; ``memory://NAME`` is a separate broker.  Nothing leaves the process.
* Messages are encoded and decoded by the codec like on any wire, so what works here
  works on a real transport (and a pickle can never ride along).
* Calls, casts and tasks: one queue per service shared by its replicas; ready-based
  delivery (a replica gets at most ``prefetch`` unacked messages, least busy first).
  A replica that disconnects with unacked work has it requeued (at-least-once).
  A task its node buries (attempts exhausted, see :mod:`vertebra.wire.deadletter`) is kept
  as a dead letter of its service, with its error, until replayed.
* A call to a service with no replica fails at once with Unreachable; casts and tasks
  wait in the queue until a replica comes (like a durable queue, but not durable: the
  broker lives and dies with the process).
* Queued casts and tasks with a higher ``priority`` (0-9) are delivered first, FIFO
  within a priority.  Delayed messages (``not_before``) are held by the sender's outbox.
* A streamed call's ``item`` and ``beat`` answers reach the caller in the order sent.
* Events are broadcast to every subscription whose pattern matches.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import itertools
import logging
import threading
import types
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

from ..eager import start_in
from ..wire.codec import Codec, decode
from ..wire.deadletter import DeadLetter
from ..wire.envelope import ANSWERS, Envelope
from ..wire.errors import ProtocolError, wire_error
from ..wire.info import ServiceInfo
from ..wire.topics import matches
from .base import AnswerCallback, Capabilities, EventHandler, Handler, Incoming, Transport
from .workqueue import WorkQueue

__all__ = ["MemoryBroker", "MemoryTransport", "broker"]

log = logging.getLogger("vertebra.transports.memory")


@dataclass(slots=True)
class _Message:
    data: bytes
    service: str
    is_call: bool
    reply_to: str
    priority: int = 0


def _priority_of(msg: _Message) -> int:
    return msg.priority


def _new_queue() -> WorkQueue[_Message]:
    return WorkQueue(_priority_of)


@dataclass(slots=True)
class _Consumer:
    transport: MemoryTransport
    info: ServiceInfo
    handler: Handler
    prefetch: int
    tag: int
    unacked: dict[int, _Message] = field(default_factory=dict)
    active: bool = True


class MemoryBroker:
    """The shared state behind one ``memory://NAME``; every method is thread-safe."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.RLock()
        self._queues: dict[str, WorkQueue[_Message]] = collections.defaultdict(_new_queue)
        self._consumers: dict[str, list[_Consumer]] = collections.defaultdict(list)
        self._subs: list[tuple[str, MemoryTransport, EventHandler]] = []
        self._buses: dict[str, MemoryTransport] = {}
        self._seq = itertools.count(1)
        self._dead: dict[str, list[DeadLetter]] = collections.defaultdict(list)

    # -- connections --------------------------------------------------------------------

    def attach(self, t: MemoryTransport) -> None:
        """Register a connected transport (its address answers calls it makes)."""
        with self._lock:
            self._buses[t.address] = t

    def detach(self, t: MemoryTransport) -> None:
        """Forget a transport: its subscriptions go, its unacked work is requeued."""
        with self._lock:
            self._buses.pop(t.address, None)
            self._subs = [s for s in self._subs if s[1] is not t]
            for name in list(self._consumers):
                for c in [c for c in self._consumers[name] if c.transport is t]:
                    self._remove_consumer(c, requeue=True)

    # -- work queues --------------------------------------------------------------------

    def consume(self, t: MemoryTransport, info: ServiceInfo, handler: Handler, prefetch: int) -> None:
        """Add a replica of ``info.name``."""
        with self._lock:
            self._consumers[info.name].append(
                _Consumer(t, info, handler, max(1, prefetch), next(self._seq)))
            self._dispatch(info.name)

    def cancel(self, t: MemoryTransport, service: str) -> None:
        """Stop delivering new work of ``service`` to ``t``; its unacked work stays its own."""
        with self._lock:
            for c in self._consumers.get(service, []):
                if c.transport is t:
                    c.active = False

    def _remove_consumer(self, c: _Consumer, requeue: bool) -> None:
        consumers = self._consumers.get(c.info.name, [])
        if c in consumers:
            consumers.remove(c)
        if requeue and c.unacked:
            q = self._queues[c.info.name]
            for msg in reversed(list(c.unacked.values())):
                q.appendleft(msg)
            c.unacked.clear()
        self._dispatch(c.info.name)

    def enqueue(self, msg: _Message) -> bool:
        """Queue work; False (and not queued) for a call to a service with no replica."""
        with self._lock:
            if msg.is_call:
                consumers = self._consumers.get(msg.service)
                if not consumers or not (consumers[0].active if len(consumers) == 1
                                         else any(c.active for c in consumers)):
                    return False
            self._queues[msg.service].append(msg)
            self._dispatch(msg.service)
            return True

    def _dispatch(self, service: str) -> None:
        q = self._queues.get(service)
        while q:
            consumers = self._consumers.get(service)
            if not consumers:
                return
            if len(consumers) == 1:
                c = consumers[0]
                if not c.active or len(c.unacked) >= c.prefetch:
                    return
            else:
                # least busy ready replica; ties go to the one served longest ago (list order)
                best: _Consumer | None = None
                for x in consumers:
                    if x.active and len(x.unacked) < x.prefetch and (
                            best is None or len(x.unacked) < len(best.unacked)):
                        best = x
                if best is None:
                    return
                c = best
                consumers.remove(c)  # round robin among equally busy replicas
                consumers.append(c)
            msg = q.popleft()
            tag = next(self._seq)
            c.unacked[tag] = msg
            c.transport.post(c, tag, msg)

    def settle(self, c: _Consumer, tag: int, requeue: bool | None = None,
               dead: DeadLetter | None = None) -> None:
        """Ack (``requeue`` None), requeue at the front, or drop a delivered message,
        keeping ``dead`` (its dead letter) when it is given."""
        with self._lock:
            msg = c.unacked.pop(tag, None)
            if msg is not None and requeue:
                self._queues[msg.service].appendleft(msg)
            if dead is not None:
                self._dead[dead.service].append(dead)
            if not c.active and not c.unacked:
                self._remove_consumer(c, requeue=False)
            self._dispatch(c.info.name)

    def dead_letters(self, service: str) -> list[DeadLetter]:
        """The dead letters of ``service``, oldest first."""
        with self._lock:
            return list(self._dead.get(service, ()))

    def take_dead(self, service: str, ids: list[str] | None) -> list[DeadLetter]:
        """Remove and return the dead letters of ``service`` with ``ids`` (all when None)."""
        with self._lock:
            kept: list[DeadLetter] = []
            taken: list[DeadLetter] = []
            for d in self._dead.get(service, ()):
                (taken if ids is None or d.id in ids else kept).append(d)
            self._dead[service] = kept
            return taken

    # -- answers, events, discovery -------------------------------------------------------

    def answer(self, address: str, data: bytes) -> None:
        """Route a reply or error to the bus at ``address`` (dropped if it left)."""
        with self._lock:
            t = self._buses.get(address)
        if t is not None:
            t.post_answer(data)

    def subscribe(self, t: MemoryTransport, pattern: str, handler: EventHandler) -> None:
        """Add an event subscription."""
        with self._lock:
            self._subs.append((pattern, t, handler))

    def publish(self, topic: str, data: bytes) -> None:
        """Deliver an event to every matching subscription."""
        with self._lock:
            targets = [(t, h) for p, t, h in self._subs if matches(p, topic)]
        for t, h in targets:
            t.post_event(h, data)

    def services(self) -> list[ServiceInfo]:
        """One ServiceInfo per served service, replicas counted."""
        with self._lock:
            out = []
            for name, consumers in self._consumers.items():
                live = [c for c in consumers if c.active]
                if live:
                    i = live[0].info
                    out.append(ServiceInfo(name, i.methods, i.doc, len(live), "memory", i.extra))
            return out


_brokers: dict[str, MemoryBroker] = {}
_brokers_lock = threading.Lock()


def broker(name: str = "") -> MemoryBroker:
    """The process-wide broker called ``name`` ("" is the one plain ``memory://`` uses)."""
    with _brokers_lock:
        b = _brokers.get(name)
        if b is None:
            b = _brokers[name] = MemoryBroker(name)
        return b


class _MemoryIncoming(Incoming):
    __slots__ = ("_consumer", "_settled", "_tag")

    def __init__(self, env: Envelope, consumer: _Consumer, tag: int) -> None:
        self.envelope = env      # what Incoming.__init__ does, without the call
        self._consumer, self._tag, self._settled = consumer, tag, False

    async def reply(self, answer: Envelope) -> None:
        t = self._consumer.transport
        data = t.encode(answer)
        t.broker.answer(answer.reply_to, data)

    async def ack(self) -> None:
        if not self._settled:
            self._settled = True
            self._consumer.transport.broker.settle(self._consumer, self._tag, None)

    async def reject(self, requeue: bool, error: dict[str, Any] | None = None) -> None:
        if self._settled:
            return
        self._settled = True
        env = self.envelope
        dead = None
        if not requeue and env.kind == "task":
            dead = DeadLetter.of(env, error)
            log.warning("buried task %s of %s.%s after %d attempt(s)", env.id, env.service,
                        env.method, dead.attempts)
        self._consumer.transport.broker.settle(self._consumer, self._tag, requeue, dead)


async def _awaiting(awaitable: Awaitable[object]) -> None:
    await awaitable


class MemoryTransport(Transport):
    """The in-process transport; see the module docstring."""

    scheme: ClassVar[str] = "memory"
    capabilities: ClassVar[Capabilities] = Capabilities(
        durable_tasks=False, task_redelivery=True, fast_unreachable=True, multi_process=False,
        priorities=True)
    _ids = itertools.count(1)

    def __init__(self, url: str, codec: Codec) -> None:
        super().__init__(url, codec)
        parts = urlsplit(url)
        self.broker = broker(parts.netloc + parts.path)
        query = parse_qs(parts.query)
        self.max_size = int(query.get("max_size", [self.capabilities.max_message_size])[0])
        self.address = f"mem-{next(self._ids)}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0
        self._on_answer: AnswerCallback | None = None
        self._connected = False
        self._tasks: set[asyncio.Task[None]] = set()

    def encode(self, env: Envelope) -> bytes:
        """Encode with this transport's codec, refusing oversized messages."""
        data = self.codec.encode(env)
        if len(data) > self.max_size:
            raise ProtocolError(f"message of {len(data)} bytes exceeds the maximum {self.max_size}")
        return data

    async def connect(self, on_answer: AnswerCallback) -> None:
        """Attach to the broker."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._on_answer = on_answer
        self._connected = True
        self.broker.attach(self)

    async def close(self) -> None:
        """Detach: subscriptions end, unacked work is requeued for other replicas."""
        if not self._connected:
            return
        self._connected = False
        self.broker.detach(self)
        for task in list(self._tasks):
            task.cancel()

    async def send(self, env: Envelope) -> None:
        """Route a call, cast, task or event."""
        if not self._connected:
            raise ConnectionError("memory transport is not connected")
        if env.kind == "event":
            self.broker.publish(env.topic, self.encode(env))
            return
        if env.kind == "call":
            env.reply_to = self.address
        data = self.encode(env)
        msg = _Message(data, env.service, env.kind == "call", env.reply_to, env.priority or 0)
        if not self.broker.enqueue(msg):
            self._answer_now(env.fail(wire_error("unreachable", "Unreachable",
                                                 f"no replica of service {env.service!r}")))

    def _answer_now(self, answer: Envelope) -> None:
        assert self._on_answer is not None
        self._on_answer(answer)

    async def serve(self, info: ServiceInfo, handler: Handler, prefetch: int = 16) -> None:
        """Become a replica of ``info.name``."""
        self.broker.consume(self, info, handler, prefetch)

    async def unserve(self, service: str) -> None:
        """Take no new work for ``service``."""
        self.broker.cancel(self, service)

    async def subscribe(self, pattern: str, handler: EventHandler) -> None:
        """Receive events matching ``pattern``."""
        self.broker.subscribe(self, pattern, handler)

    async def discover(self) -> list[ServiceInfo]:
        """The services served on this broker."""
        return self.broker.services()

    async def dead_letters(self, service: str) -> list[DeadLetter]:
        """The buried tasks of ``service``."""
        return self.broker.dead_letters(service)

    async def replay(self, service: str, ids: list[str] | None = None) -> int:
        """Queue buried tasks of ``service`` again, as first attempts."""
        taken = self.broker.take_dead(service, ids)
        for d in taken:
            await self.send(d.replay_envelope())
        return len(taken)

    # -- cross-thread delivery: everything lands on this transport's own loop ---------------

    def _post(self, fn: Callable[..., Awaitable[None] | None], *args: Any) -> None:
        """Run ``fn(*args)`` on this transport's loop (a coroutine it returns is started
        there), in a context of its own: a copy of the poster's, as ``call_soon`` makes."""
        loop = self._loop
        if loop is None or not self._connected:
            return
        ctx = contextvars.copy_context()
        if threading.get_ident() == self._thread:
            loop.call_soon(self._run_item, ctx, fn, args, context=ctx)
        else:
            try:
                loop.call_soon_threadsafe(self._run_item, ctx, fn, args, context=ctx)
            except RuntimeError:
                log.warning("%s: loop closed, message dropped", self.address)

    def _run_item(self, ctx: contextvars.Context, fn: Callable[..., Awaitable[None] | None],
                  args: tuple[Any, ...]) -> None:
        if not self._connected:
            return
        result = fn(*args)
        if result is not None:
            start_in(result if type(result) is types.CoroutineType else _awaiting(result),
                     self._tasks, ctx)

    def post(self, consumer: _Consumer, tag: int, msg: _Message) -> None:
        """Hand a delivered work message to this transport's loop."""
        self._post(self._deliver, consumer, tag, msg)

    def post_answer(self, data: bytes) -> None:
        """Hand a reply or error to this transport's loop (at once, when already on it)."""
        if threading.get_ident() == self._thread and self._on_answer is not None:
            self._deliver_answer(data)
        else:
            self._post(self._deliver_answer, data)

    def post_event(self, handler: EventHandler, data: bytes) -> None:
        """Hand an event to this transport's loop."""
        self._post(self._deliver_event, handler, data)

    def _decode(self, data: bytes) -> Envelope | None:
        try:
            return decode(data)
        except ProtocolError as exc:
            self.stats["malformed"] += 1
            log.warning("%s: malformed message dropped: %s", self.address, exc)
            return None

    def _deliver(self, consumer: _Consumer, tag: int, msg: _Message) -> Awaitable[None] | None:
        """Decode a work message (here, before any coroutine is made) and hand it to the
        handler; the handler's coroutine is returned, for _run_item to start."""
        try:
            env = decode(msg.data)
        except ProtocolError as exc:
            self.stats["malformed"] += 1
            log.warning("%s: malformed message for %s rejected: %s", self.address, msg.service, exc)
            if msg.is_call and msg.reply_to and exc.envelope_id:
                # a call we cannot parse still deserves an answer, if we can tell whose it is
                self.broker.answer(msg.reply_to, self.encode(Envelope(
                    "error", re=exc.envelope_id, error=wire_error("protocol", "ProtocolError", str(exc)))))
            self.broker.settle(consumer, tag)
            return None
        if env.kind == "call":
            env.reply_to = msg.reply_to
        return consumer.handler(_MemoryIncoming(env, consumer, tag))

    def _deliver_answer(self, data: bytes) -> None:
        env = self._decode(data)
        if env is not None and env.kind in ANSWERS:
            self._answer_now(env)

    async def _deliver_event(self, handler: EventHandler, data: bytes) -> None:
        env = self._decode(data)
        if env is not None and env.kind == "event":
            try:
                await handler(env)
            except Exception:
                log.exception("%s: event handler failed", self.address)
