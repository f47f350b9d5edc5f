"""The Transport interface: what every adapter implements, and nothing more.

A transport moves envelopes; the Bus above it owns calls, pending replies, the outbox,
deadlines and retries.  The whole interface is nine coroutines::

    connect(on_answer)        open; answers to our calls (reply, error, item, beat) go to on_answer(env)
    close()                   release everything; unacked work goes back to its queue
    send(env)                 route one call / cast / task / event to where it belongs
    serve(info, handler, prefetch=n)   consume calls, casts and tasks for info.name and
                              announce it for discovery; each arrives as an Incoming
    unserve(name)             stop taking new work for a service (drain); in flight ends normally
    subscribe(pattern, handler)  deliver events whose topic may match pattern
    discover()                the live services, as ServiceInfo
    dead_letters(service)     the tasks of ``service`` that were buried, as DeadLetter
    replay(service, ids)      send buried tasks (all when ids is None) back to the queue

Rules every adapter follows (the conformance suite holds them to it):

* Bytes on the wire come from the codec it was given, except answers, which are written in
  the codec of the message they answer (docs/PROTOCOL.md §3); anything it receives that does not
  decode is counted in ``stats["malformed"]``, logged, answered with an ``error`` envelope
  of code "protocol" where there is someone to answer, and never crashes the adapter.
* A call to a service nobody serves is answered at once with an error of code
  "unreachable" (through ``on_answer``), not left to time out — where the transport can
  know it; where it cannot, :attr:`Capabilities.fast_unreachable` is False.
* Library exceptions never escape: connection failures become :class:`ConnectionError`
  (which the Bus retries), bad input becomes :class:`ProtocolError`.
* ``send`` returns once the message is handed to the transport (for a broker with
  confirms, once the broker has it); ``Incoming.ack`` is called after a handler finished.
  While the transport is down (not yet connected, or reconnecting) ``send`` raises a plain
  :class:`ConnectionError`, never :class:`Unreachable`: the Bus retries it with backoff
  within the message's deadline or ``max_age``.  A wait for a confirmation is bounded: a
  confirmation that cannot come (the connection was reset) fails the send with
  ConnectionError rather than holding it.
* ``send`` may run outside a Task (the sync API starts coroutines eagerly, in a plain
  callback): bound waits with ``loop.call_at`` timers or ``asyncio.wait``, not
  ``asyncio.timeout``, which needs a current Task.
* Attempts are the node's business, not the transport's: a task that failed and may be
  tried again is re-sent by the node with its ``attempt`` header raised
  (:mod:`vertebra.wire.deadletter`) and the original acked; ``reject(False, error)``
  buries it: the transport keeps it, with ``error``, where :meth:`Transport.dead_letters`
  finds it.  A transport may bury on its own only a task whose worker died with it too
  often (a poison message): with the same DeadLetter shape.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from ..wire.codec import Codec
from ..wire.deadletter import DeadLetter
from ..wire.envelope import Envelope
from ..wire.info import ServiceInfo

__all__ = ["AnswerCallback", "Capabilities", "Handler", "Incoming", "Transport"]


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a transport can and cannot do; tests skip only behind one of these flags."""

    durable_tasks: bool = False
    """Tasks survive a restart of the server (broker) that holds them."""
    task_redelivery: bool = True
    """A task whose worker dies before acking it goes to another worker."""
    fast_unreachable: bool = True
    """A call to a service nobody serves fails at once, not by timeout."""
    multi_process: bool = True
    """Buses in different processes reach each other (False for memory://)."""
    max_message_size: int = 16 * 1024 * 1024
    """The largest encoded envelope it accepts, in bytes."""
    holds_delayed: bool = False
    """The server holds a message with ``not_before`` until it is due (RabbitMQ); where
    False, the sender's outbox (and its spool) holds it instead."""
    priorities: bool = False
    """Queued casts and tasks with a higher ``priority`` (0-9) are delivered first."""


class Incoming(abc.ABC):
    """One call, cast or task handed to a served service."""

    __slots__ = ("envelope",)

    def __init__(self, envelope: Envelope) -> None:
        self.envelope = envelope

    @abc.abstractmethod
    async def reply(self, answer: Envelope) -> None:
        """Send an answer back to the caller (calls only): any number of ``item`` and
        ``beat`` envelopes (a streamed call, PROTOCOL.md §6d), then the one final ``reply``
        or ``error``, which alone settles the delivery."""

    @abc.abstractmethod
    async def ack(self) -> None:
        """The message is done with: a task is not redelivered after this."""

    @abc.abstractmethod
    async def reject(self, requeue: bool, error: dict[str, Any] | None = None) -> None:
        """Give the message up: back to its queue unchanged (``requeue``: the node let it
        go without running it through, say while draining; not counted as an attempt), or
        buried (a task: kept as a dead letter with ``error``, the wire error object of why;
        a cast: dropped, since nobody waits for it)."""


Handler = Callable[[Incoming], Awaitable[None]]
EventHandler = Callable[[Envelope], Awaitable[None]]
AnswerCallback = Callable[[Envelope], None]


class Transport(abc.ABC):
    """One connection to one messaging system; see the module docstring for the rules."""

    scheme: ClassVar[str] = ""
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, url: str, codec: Codec) -> None:
        self.url = url
        self.codec = codec
        self.stats: dict[str, int] = {"malformed": 0, "reconnects": 0}

    @abc.abstractmethod
    async def connect(self, on_answer: AnswerCallback) -> None:
        """Open the connection; answers (reply/error envelopes) go to ``on_answer``."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close; unacked work returns to its queue.  Safe to call twice."""

    @abc.abstractmethod
    async def send(self, env: Envelope) -> None:
        """Route one call, cast, task or event envelope."""

    @abc.abstractmethod
    async def serve(self, info: ServiceInfo, handler: Handler, prefetch: int = 16) -> None:
        """Consume calls, casts and tasks for ``info.name``; announce ``info``."""

    @abc.abstractmethod
    async def unserve(self, service: str) -> None:
        """Stop taking new work for ``service``; work not yet started goes back."""

    @abc.abstractmethod
    async def subscribe(self, pattern: str, handler: EventHandler) -> None:
        """Deliver events that may match ``pattern`` to ``handler``."""

    @abc.abstractmethod
    async def discover(self) -> list[ServiceInfo]:
        """The services live now (one entry per service, ``replicas`` counted)."""

    @abc.abstractmethod
    async def dead_letters(self, service: str) -> list[DeadLetter]:
        """The buried tasks of ``service``, oldest first (listing removes nothing)."""

    @abc.abstractmethod
    async def replay(self, service: str, ids: list[str] | None = None) -> int:
        """Send buried tasks of ``service`` (those with ``ids``; all when None) back to its
        queue as first attempts (:meth:`DeadLetter.replay_envelope`), remove them from the
        dead letters, and return how many were sent."""
