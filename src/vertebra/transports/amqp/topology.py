"""Every exchange and queue vertebra declares on RabbitMQ: names, flags, arguments.

All names start with the URL's ``prefix`` (empty by default), so that several vertebra
networks can share one vhost (``?prefix=staging.``).  For a prefix ``P`` and a service
``S``:

=============================  ========  ======================================================
name                           type      flags / arguments
=============================  ========  ======================================================
``P`` + ``vertebra.events``    topic     durable exchange; routing key = the event's topic
``P`` + ``vertebra.discovery`` fanout    durable exchange; discovery requests
``P`` + ``vertebra.dlx``       direct    durable exchange; dead letters of task queues
``P`` + ``vertebra.call.S``    queue     non-durable, auto-delete: exists while a replica serves
``P`` + ``vertebra.task.S``    queue     durable; x-dead-letter-exchange = the dlx,
                                         x-dead-letter-routing-key = the dead queue's name;
                                         x-queue-type = quorum with ``queue_type=quorum``
``P`` + ``vertebra.dead.S``    queue     durable; bound to the dlx with its own name; holds the
                                         buried tasks (:mod:`.deadletters`); quorum likewise
``P`` + ``vertebra.delay``     headers   durable exchange; delayed casts and tasks, routing key =
                                         their task queue, header ``vertebra-delay`` = the TTL
``P`` + ``vertebra.delay.N``   queue     durable; x-message-ttl = N ms, x-dead-letter-exchange =
                                         "" (the routing key kept: the task queue), x-expires =
                                         N + 1 h; bound to the delay exchange on
                                         ``vertebra-delay`` = N; quorum likewise (then
                                         at-least-once dead-lettering)
(server-named)                 queue     exclusive, auto-delete: one per bus that subscribes
                                         (bound to events) or serves (bound to discovery)
=============================  ========  ======================================================

Replies use RabbitMQ's direct reply-to pseudo-queue ``amq.rabbitmq.reply-to``.

Quorum queues (``queue_type=quorum``, the default when the URL names several brokers) are
replicated on the cluster's nodes (Raft): a task survives the loss of a node, and the
queue goes on as long as a majority runs.  Call queues and the per-bus queues stay
classic: they are transient by design (auto-delete, exclusive), which quorum queues are not.

Priorities: a classic task queue is declared with ``x-max-priority`` 9 (the message's
``priority`` property, 0-9, is honoured).  A quorum queue refuses that argument (RabbitMQ
3.10: ``invalid arg 'x-max-priority'``); RabbitMQ 4 orders quorum queues by two levels of
its own (priority 5-9 before 0-4), without an argument.

Delays: a cast or task with ``not_before`` waits in the delay queue of its TTL (the delay
rounded *up* to 3 significant digits of ms, :func:`delay_ttl`, so there are few of them
and none releases early); when the TTL expires the broker dead-letters it to the default
exchange with its routing key, the service's task queue.  The delay queues are shared by
every service of the prefix.  ``x-expires`` deletes one unused for its TTL + 1 hour; a
declaration renews that lease (publishing does not), so a bus declares a delay queue
again before publishing to it when its last declaration is more than half an hour old.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

from ...wire.envelope import MAX_PRIORITY

__all__ = ["DELAY_HEADER", "DELAY_LEASE_MS", "DELIVERY_COUNT", "MAX_DELAY_MS", "MAX_PRIORITY_ARG",
           "REDELIVERIES_HEADER", "REPLY_TO", "Topology", "delay_ttl", "priority_mismatch"]

REPLY_TO: Final = "amq.rabbitmq.reply-to"
"""RabbitMQ's direct reply-to pseudo-queue."""
REDELIVERIES_HEADER: Final = "x-vertebra-redeliveries"
"""How many times a task came back unacknowledged (its worker died, or its link): an AMQP
header of the transport's own, for its poison-task limit (``max_redeliveries``) on classic
queues."""
DELIVERY_COUNT: Final = "x-delivery-count"
"""The header a quorum queue sets on a redelivery: how often it was returned unacked."""
MAX_PRIORITY_ARG: Final = "x-max-priority"
"""The queue argument that makes a classic queue order by the ``priority`` property."""
DELAY_HEADER: Final = "vertebra-delay"
"""The message header the delay exchange routes on: the TTL in ms, as decimal text.  (Not
``x-``: a headers exchange ignores those when matching.)"""
DELAY_LEASE_MS: Final = 3_600_000
"""How long past its TTL an unused delay queue lives (``x-expires`` = TTL + this)."""
MAX_DELAY_MS: Final = 604_800_000
"""The longest TTL of a delay queue (7 days); a longer delay takes several (a message that
comes out still early is sent to a delay queue again by the worker it reaches)."""


def delay_ttl(delay_ms: float) -> int:
    """The TTL, in ms, of the delay queue for a delay of ``delay_ms``: rounded *up* to 3
    significant digits (so a message is never released early, at most 1 % late, and the
    number of delay queues stays small), at least 1, at most :data:`MAX_DELAY_MS`."""
    ms = max(1, math.ceil(delay_ms))
    if ms >= MAX_DELAY_MS:
        return MAX_DELAY_MS
    step = int(10 ** max(0, len(str(ms)) - 3))
    return -(-ms // step) * step


def priority_mismatch(exc: BaseException) -> bool:
    """Whether a refused declaration failed only over ``x-max-priority`` (the queue exists
    with, or without, it)."""
    text = str(exc)
    return "PRECONDITION_FAILED" in text and f"'{MAX_PRIORITY_ARG}'" in text


@dataclass(frozen=True, slots=True)
class Topology:
    """The names and declaration arguments for one prefix."""

    prefix: str = ""
    expires_ms: int | None = None
    """If set, task and dead queues get ``x-expires`` (deleted when unused that long)."""
    quorum: bool = False
    """Task and dead queues are quorum queues (``x-queue-type``)."""

    @property
    def events(self) -> str:
        """The topic exchange every event is published to."""
        return f"{self.prefix}vertebra.events"

    @property
    def discovery(self) -> str:
        """The fanout exchange discovery requests go to."""
        return f"{self.prefix}vertebra.discovery"

    @property
    def dlx(self) -> str:
        """The direct exchange task queues dead-letter to."""
        return f"{self.prefix}vertebra.dlx"

    def call_queue(self, service: str) -> str:
        """The queue holding calls for ``service``."""
        return f"{self.prefix}vertebra.call.{service}"

    def task_queue(self, service: str) -> str:
        """The durable queue holding casts and tasks for ``service``."""
        return f"{self.prefix}vertebra.task.{service}"

    def dead_queue(self, service: str) -> str:
        """The durable queue of ``service``'s dead tasks."""
        return f"{self.prefix}vertebra.dead.{service}"

    def task_arguments(self, service: str, priority: bool = True) -> dict[str, Any]:
        """The ``x-`` arguments a task queue is declared with (identical everywhere):
        ``priority`` adds ``x-max-priority`` on a classic queue (quorum queues refuse it).
        False is for a queue that already exists without it (declared by a vertebra that
        did not order by priority): the broker refuses to change a queue's arguments."""
        args: dict[str, Any] = {"x-dead-letter-exchange": self.dlx,
                                "x-dead-letter-routing-key": self.dead_queue(service)}
        if priority and not self.quorum:
            args[MAX_PRIORITY_ARG] = MAX_PRIORITY
        return {**args, **self.dead_arguments()}

    @property
    def delay_exchange(self) -> str:
        """The headers exchange delayed casts and tasks are published to."""
        return f"{self.prefix}vertebra.delay"

    def delay_queue(self, ttl_ms: int) -> str:
        """The queue where messages wait ``ttl_ms`` before going to their task queue."""
        return f"{self.prefix}vertebra.delay.{ttl_ms}"

    def delay_arguments(self, ttl_ms: int) -> dict[str, Any]:
        """The ``x-`` arguments of the delay queue of ``ttl_ms`` (identical everywhere).

        Expired messages are dead-lettered to the default exchange with their own routing
        key (no ``x-dead-letter-routing-key``): the task queue they were published for.  A
        quorum delay queue dead-letters at-least-once (RabbitMQ >= 3.10; it needs
        ``x-overflow`` = ``reject-publish``): it keeps a message until its task queue
        confirmed it, where the default, at-most-once, would lose it if that failed."""
        args: dict[str, Any] = {"x-message-ttl": ttl_ms, "x-dead-letter-exchange": "",
                                "x-expires": ttl_ms + DELAY_LEASE_MS}
        if self.quorum:
            args.update({"x-queue-type": "quorum", "x-dead-letter-strategy": "at-least-once",
                         "x-overflow": "reject-publish"})
        return args

    @staticmethod
    def delay_binding(ttl_ms: int) -> dict[str, Any]:
        """The binding arguments of a delay queue to the delay exchange."""
        return {"x-match": "all", DELAY_HEADER: str(ttl_ms)}

    def dead_arguments(self) -> dict[str, Any]:
        """The ``x-`` arguments a dead queue is declared with."""
        args: dict[str, Any] = {"x-queue-type": "quorum"} if self.quorum else {}
        if self.expires_ms:
            args["x-expires"] = self.expires_ms
        return args

    def exchanges(self) -> list[tuple[str, str]]:
        """(name, type) of every exchange, declared durable at each (re)connect."""
        return [(self.events, "topic"), (self.discovery, "fanout"), (self.dlx, "direct"),
                (self.delay_exchange, "headers")]
