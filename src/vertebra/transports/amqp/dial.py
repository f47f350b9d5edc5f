"""Opening a py-amqp connection to one of the brokers a URL names.

A URL may name several brokers of one RabbitMQ cluster (``amqp://u:p@h1,h2:5673,h3/vh``).
:func:`connect_any` tries them in ring order from a given one and returns the first
connection that completes the TCP + TLS + AMQP handshake, with the index of its broker;
the caller (:class:`.connection.LoopConnection`) starts from the broker after the one it
lost, so a bus moves to another node when its node dies and comes back round to it later.
Blocking: run it in a worker thread.
"""

from __future__ import annotations

import logging
from typing import Any

import amqp

from .options import AmqpOptions

__all__ = ["connect_any", "new_connection"]

log = logging.getLogger("vertebra.transports.amqp")


def new_connection(opts: AmqpOptions, index: int = 0, **callbacks: Any) -> Any:
    """A connected (blocking) py-amqp connection to broker ``index`` of ``opts``.

    ``callbacks`` are py-amqp's ``on_blocked`` / ``on_unblocked``.
    """
    brokers = opts.brokers or ((opts.host, opts.port),)
    host, _ = brokers[index % len(brokers)]
    conn = amqp.Connection(
        host=opts.addresses[index % len(brokers)], userid=opts.user, password=opts.password,
        virtual_host=opts.vhost, heartbeat=opts.heartbeat, ssl=opts.ssl_for(host),
        connect_timeout=opts.connect_timeout, **callbacks)
    conn.connect()
    return conn


def connect_any(opts: AmqpOptions, start: int = 0, **callbacks: Any) -> tuple[Any, int]:
    """(connection, broker index): the first broker that accepts, trying each once in
    ring order from ``start``.  ConnectionError naming every failure when none does."""
    addresses = opts.addresses
    failures: list[str] = []
    for k in range(len(addresses)):
        index = (start + k) % len(addresses)
        try:
            return new_connection(opts, index, **callbacks), index
        except Exception as exc:   # refused, timed out, TLS or AMQP handshake refused
            failures.append(f"{addresses[index]}: {type(exc).__name__}: {exc}")
            if len(addresses) > 1:
                log.info("amqp broker %s did not accept a connection: %s", addresses[index], exc)
    raise ConnectionError("cannot connect to any amqp broker (" + "; ".join(failures) + ")")
