"""Delayed casts and tasks, held by the broker: a message with ``not_before`` ahead waits
in a delay queue and reaches its task queue when due.

A delay queue ``P vertebra.delay.N`` holds every message that must wait N ms
(``x-message-ttl`` = N): all of one queue expire in the order they came, at its head,
which is why there is one queue per TTL and no per-message ``expiration`` (a classic queue
only expires messages at its head).  N is the delay rounded *up* to 3 significant digits
(:func:`~.topology.delay_ttl`): never early, at most 1 % late, and few queues.  On expiry
the broker dead-letters the message to the default exchange with its own routing key.
Delayed messages are published, persistent and confirmed, to the headers exchange
``P vertebra.delay`` with the routing key = the service's task queue and the header
``vertebra-delay`` = N, which routes them to the delay queue of N; so the routing key they
come out with is the task queue's name, and one delay queue serves every service.

The publish is ``mandatory``: should the delay queue be missing (deleted by hand), the
broker returns it and the send fails with ConnectionError (the outbox sends it again,
after the queue is declared anew) instead of being confirmed into nowhere.

A delay longer than :data:`~.topology.MAX_DELAY_MS` (7 days) comes out early: the worker
that receives a cast or task still more than ``REDELAY_AFTER`` seconds early (a long delay,
or clocks apart) sends it to a delay queue again for the rest (:meth:`Serving._redelay`);
a smaller earliness is waited out by the node, which never runs a message early.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final

from ...wire.envelope import Envelope
from .confirms import Confirms
from .link import Link
from .topology import DELAY_HEADER, delay_ttl

__all__ = ["REDELAY_AFTER", "Delays", "not_yet_ms", "strip_deaths"]

REDELAY_AFTER: Final = 1.0
"""Seconds: a cast or task that reaches its worker more than this before its
``not_before`` is sent to a delay queue again instead of waiting in the node."""


def not_yet_ms(env: Envelope, now: float | None = None) -> float:
    """How many ms ``env`` is still early (0 when it has no ``not_before`` or is due)."""
    if env.not_before is None:
        return 0.0
    return max(0.0, (env.not_before - (time.time() if now is None else now)) * 1000)


def strip_deaths(headers: dict[str, Any]) -> dict[str, Any]:
    """``headers`` without RabbitMQ's dead-lettering history (``x-death``,
    ``x-first-death-*``) nor the delay header: a message sent through a delay queue again
    must not look like a dead-letter cycle, which the broker would drop."""
    return {k: v for k, v in headers.items()
            if k != "x-death" and not k.startswith("x-first-death") and k != DELAY_HEADER}


class Delays:
    """Confirmed publishing of delayed casts and tasks through the delay queues."""

    def __init__(self, link: Link, confirms: Confirms) -> None:
        self._link = link
        self._confirms = confirms

    async def publish(self, body: bytes, service: str, delay_ms: float,
                      then: Callable[[], None] | None = None, **props: Any) -> None:
        """Publish ``body`` for ``service``'s task queue, to be released in ``delay_ms``
        (or a little later); returns once the broker confirmed it.  The task queue must
        be declared already.  ConnectionError / ProtocolError as for any confirmed send."""
        link = self._link
        ttl = delay_ttl(delay_ms)
        link.declare_delay_queue(ttl)
        headers = {**strip_deaths(props.pop("application_headers", None) or {}),
                   DELAY_HEADER: str(ttl)}
        props.setdefault("delivery_mode", 2)
        try:
            await self._confirms.publish(body, link.topology.delay_exchange,
                                         link.topology.task_queue(service), then=then,
                                         mandatory=True, application_headers=headers, **props)
        except ConnectionError:
            link.delay_leases.pop(ttl, None)   # declared again on the next try
            raise
