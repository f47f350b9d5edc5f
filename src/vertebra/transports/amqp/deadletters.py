"""The dead queue of a service (``P vertebra.dead.S``): what a buried task looks like there,
how it is listed without being consumed, and how it is replayed.

* Burying (the node's ``reject(False, error)``, or the transport's own poison limit): the
  task's envelope, with the ``dead-error`` header (:data:`~vertebra.wire.deadletter.
  DEAD_ERROR_HEADER`: the wire error object as JSON text), is published persistent to the
  dead queue with a confirm; only then is the delivery acked.  Tasks RabbitMQ dead-letters
  by itself (bad input rejected without requeue) land there too, with its ``x-death``
  header and no ``dead-error``: they are listed with error type ``"Rejected"`` — or
  ``"WorkerLost"`` when a quorum queue's ``delivery-limit`` (a policy) dead-lettered it.
* Listing and replay run in a worker thread on a connection of their own (the event loop
  never waits for them): every message is taken with ``basic.get`` *without* ack, and the
  connection is closed at the end, so the broker puts back every message not acked, in
  its place.  Listing acks nothing.  Replay publishes each chosen task to the task queue
  as :meth:`DeadLetter.replay_envelope` (attempt 1, same id) with a confirm, then acks it
  out of the dead queue: a crash in between leaves it in both (at-least-once).  Two dead
  copies of one id (a bury whose ack was lost) are replayed once; the other is removed.
* A body that does not decode is left where it is and not listed (it is logged).  While
  one bus lists, the messages it holds are invisible to another bus listing at once.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import amqp

from ...wire.codec import Codec, decode
from ...wire.deadletter import DEAD_ERROR_HEADER, DeadLetter
from ...wire.envelope import Envelope
from ...wire.errors import ProtocolError, wire_error
from .dial import connect_any
from .link import body_of
from .options import AmqpOptions
from .topology import REDELIVERIES_HEADER, Topology, priority_mismatch

__all__ = ["dead_body", "list_dead", "replay_dead"]

log = logging.getLogger("vertebra.transports.amqp")

_MAX_TRACEBACK = 8192


def dead_body(codec: Codec, env: Envelope, error: dict[str, Any]) -> bytes:
    """The body a buried ``env`` is kept as: itself, with its error in ``dead-error``."""
    err = dict(error)
    if isinstance(err.get("traceback"), str) and len(err["traceback"]) > _MAX_TRACEBACK:
        err["traceback"] = "…" + err["traceback"][-_MAX_TRACEBACK:]
    headers = {**env.headers, DEAD_ERROR_HEADER: json.dumps(err, separators=(",", ":"))}
    return codec.encode(dataclasses.replace(env, headers=headers))


def _dead_letter(msg: Any) -> DeadLetter | None:
    """The DeadLetter a dead-queue message holds; None when its body is not an envelope."""
    try:
        env = decode(body_of(msg))
    except ProtocolError as exc:
        log.warning("amqp: a message in a dead queue is not an envelope (left there): %s", exc)
        return None
    raw = env.headers.get(DEAD_ERROR_HEADER)
    error: dict[str, Any] | None = None
    if raw is not None:
        try:
            loaded = json.loads(raw)
        except ValueError:
            loaded = None
        error = loaded if isinstance(loaded, dict) else {"type": "Error", "message": str(raw)}
    else:
        headers = msg.properties.get("application_headers") or {}
        deaths = headers.get("x-death") or [{}]
        reason = deaths[0].get("reason", "rejected") if isinstance(deaths[0], dict) else "rejected"
        if reason == "delivery_limit":   # a quorum queue's delivery-limit (policy)
            error = wire_error("remote", "WorkerLost", "dead-lettered by the broker "
                               "(delivery_limit): delivered too often without being acknowledged")
        else:
            error = wire_error("protocol", "Rejected",
                               f"dead-lettered by the broker ({reason}): a node could not run it")
    redeliveries = (msg.properties.get("application_headers") or {}).get(REDELIVERIES_HEADER)
    if isinstance(redeliveries, int):
        error = {**error, "redeliveries": redeliveries}
    return DeadLetter.of(env, error)


def _open_dead(opts: AmqpOptions, topology: Topology, service: str,
               start: int) -> tuple[Any, Any] | None:
    """A connection (to broker ``start``, or the next that accepts) and channel on which
    ``service``'s dead queue exists; None if it does not."""
    conn, _ = connect_any(dataclasses.replace(opts, heartbeat=0), start)   # short-lived
    try:
        ch = conn.channel()
        ch.queue_declare(topology.dead_queue(service), passive=True)
    except amqp.exceptions.NotFound:
        _close(conn)
        return None
    except Exception as exc:
        _close(conn)
        raise ConnectionError(f"amqp: {type(exc).__name__}: {exc}") from exc
    return conn, ch


def _close(conn: Any) -> None:
    """Close the connection: the broker requeues every message it holds unacked, in place."""
    try:
        conn.close()
    except Exception:
        try:
            conn.collect()
        except Exception:
            log.debug("amqp: closing the dead-letter connection failed", exc_info=True)


def _declare_task_queue(conn: Any, ch: Any, topology: Topology, service: str) -> Any:
    """Declare ``service``'s task queue on ``ch``; the channel to go on with.  One that
    exists with the other ``x-max-priority`` setting is taken as it is (a refusal closes
    the channel: a new one is opened for that)."""
    queue = topology.task_queue(service)
    try:
        ch.queue_declare(queue, durable=True, auto_delete=False,
                         arguments=topology.task_arguments(service))
    except amqp.exceptions.PreconditionFailed as exc:
        if topology.quorum or not priority_mismatch(exc):
            raise
        ch = conn.channel()
        ch.queue_declare(queue, durable=True, auto_delete=False,
                         arguments=topology.task_arguments(service, priority=False))
    return ch


def list_dead(opts: AmqpOptions, topology: Topology, service: str,
              start: int = 0) -> list[DeadLetter]:
    """The dead letters of ``service``, oldest first; consumes nothing (blocking: run it
    in a worker thread).  ``start``: the broker to connect to first."""
    opened = _open_dead(opts, topology, service, start)
    if opened is None:
        return []
    conn, ch = opened
    found: list[DeadLetter] = []
    try:
        while (msg := ch.basic_get(topology.dead_queue(service), no_ack=False)) is not None:
            dead = _dead_letter(msg)
            if dead is not None:
                found.append(dead)
    except (OSError, amqp.exceptions.AMQPError) as exc:
        raise ConnectionError(f"amqp: listing dead letters failed: {exc}") from exc
    finally:
        _close(conn)
    return found


def replay_dead(opts: AmqpOptions, topology: Topology, codec: Codec, service: str,
                ids: list[str] | None, start: int = 0) -> int:
    """Send ``service``'s dead letters with ``ids`` (all when None) back to its task queue;
    how many were sent (blocking: run it in a worker thread).  ``start``: the broker to
    connect to first."""
    opened = _open_dead(opts, topology, service, start)
    if opened is None:
        return 0
    conn, ch = opened
    wanted = None if ids is None else set(ids)
    sent: set[str] = set()
    dead_q, task_q = topology.dead_queue(service), topology.task_queue(service)
    try:
        ch = _declare_task_queue(conn, ch, topology, service)
        ch.confirm_select()
        while (msg := ch.basic_get(dead_q, no_ack=False)) is not None:
            tag = msg.delivery_info["delivery_tag"]
            dead = _dead_letter(msg)
            if dead is None or (wanted is not None and dead.id not in wanted):
                continue                      # stays: put back when the connection closes
            if dead.id in sent:
                log.warning("amqp: a second dead copy of task %s of %s removed (replayed once)",
                            dead.id, service)
            else:
                again = dead.replay_envelope()
                props: dict[str, Any] = {"content_type": codec.content_type,
                                         "delivery_mode": 2, "message_id": dead.id}
                if again.priority is not None:
                    props["priority"] = again.priority
                ch.basic_publish_confirm(amqp.Message(codec.encode(again), **props),
                                         exchange="", routing_key=task_q,
                                         confirm_timeout=opts.confirm_timeout)
                sent.add(dead.id)
            ch.basic_ack(tag)
    except (OSError, amqp.exceptions.AMQPError, amqp.exceptions.MessageNacked) as exc:
        raise ConnectionError(f"amqp: replay stopped after {len(sent)} task(s): {exc}") from exc
    finally:
        _close(conn)
    log.info("amqp: replayed %d dead letter(s) of %s", len(sent), service)
    return len(sent)
