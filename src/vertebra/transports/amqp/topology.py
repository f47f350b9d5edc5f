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
(server-named)                 queue     exclusive, auto-delete: one per bus that subscribes
                                         (bound to events) or serves (bound to discovery)
=============================  ========  ======================================================

Replies use RabbitMQ's direct reply-to pseudo-queue ``amq.rabbitmq.reply-to``.

Quorum queues (``queue_type=quorum``, the default when the URL names several brokers) are
replicated on the cluster's nodes (Raft): a task survives the loss of a node, and the
queue goes on as long as a majority runs.  Call queues and the per-bus queues stay
classic: they are transient by design (auto-delete, exclusive), which quorum queues are not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

__all__ = ["DELIVERY_COUNT", "REDELIVERIES_HEADER", "REPLY_TO", "Topology"]

REPLY_TO: Final = "amq.rabbitmq.reply-to"
"""RabbitMQ's direct reply-to pseudo-queue."""
REDELIVERIES_HEADER: Final = "x-vertebra-redeliveries"
"""How many times a task came back unacknowledged (its worker died, or its link): an AMQP
header of the transport's own, for its poison-task limit (``max_redeliveries``) on classic
queues."""
DELIVERY_COUNT: Final = "x-delivery-count"
"""The header a quorum queue sets on a redelivery: how often it was returned unacked."""


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

    def task_arguments(self, service: str) -> dict[str, Any]:
        """The ``x-`` arguments a task queue is declared with (identical everywhere)."""
        args: dict[str, Any] = {"x-dead-letter-exchange": self.dlx,
                                "x-dead-letter-routing-key": self.dead_queue(service)}
        return {**args, **self.dead_arguments()}

    def dead_arguments(self) -> dict[str, Any]:
        """The ``x-`` arguments a dead queue is declared with."""
        args: dict[str, Any] = {"x-queue-type": "quorum"} if self.quorum else {}
        if self.expires_ms:
            args["x-expires"] = self.expires_ms
        return args

    def exchanges(self) -> list[tuple[str, str]]:
        """(name, type) of every exchange, declared durable at each (re)connect."""
        return [(self.events, "topic"), (self.discovery, "fanout"), (self.dlx, "direct")]
