"""Priorities on the amqp transport, against the real broker: queued casts and tasks of a
higher ``priority`` reach a worker first on a classic task queue (``x-max-priority``); a
task queue that exists without it goes on working, in order of arrival; and what a quorum
queue does (RabbitMQ 3.x: arrival order; 4.x: two levels)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from tests.conformance.util import eventually as wait_for

from vertebra import Node, task
from vertebra.transports.amqp.options import parse_url
from vertebra.transports.amqp.topology import Topology
from vertebra.wire.envelope import Envelope

PRIORITIES = [0, 5, 9, 1, 5, 3, 9, 0, 7, 2]


async def eventually(cond: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    """This file's bound (20.0 s) on the one polling helper of the test suite."""
    await wait_for(cond, timeout, what)


class Prio(Node):
    """Records the order its tasks run in, one at a time."""

    name = "prio"
    concurrency = 1

    def __init__(self) -> None:
        self.order: list[str] = []
        self.lock = threading.Lock()

    @task
    def run(self, job: str) -> None:
        """One job."""
        with self.lock:
            self.order.append(job)


async def queue_ten(client) -> list[str]:
    """Send ten tasks of PRIORITIES (nobody consumes yet); their names, in sending order."""
    names = [f"j{i}-p{p}" for i, p in enumerate(PRIORITIES)]
    for name, p in zip(names, PRIORITIES, strict=True):
        await client.transport.send(Envelope("task", service="prio", method="run", args=[name],
                                             priority=p))
    return names


def by_priority(names: list[str]) -> list[str]:
    """Highest priority first, in sending order within one priority."""
    return sorted(names, key=lambda n: -int(n.rsplit("-p", 1)[1]))


async def run_them(bus_for, expected: int) -> list[str]:
    worker = await bus_for("prio")
    prio = Prio()
    await worker.serve(prio)
    await eventually(lambda: len(prio.order) == expected, what=f"{expected} tasks ran")
    return prio.order


async def test_queued_tasks_reach_a_worker_highest_priority_first(bus_for):
    client = await bus_for()
    assert client.transport.capabilities.priorities
    names = await queue_ten(client)
    assert await run_them(bus_for, len(names)) == by_priority(names)


async def test_a_task_queue_declared_without_priorities_is_used_as_it_is(bus_for, ns, amqp_server,
                                                                      caplog):
    opts = parse_url(ns("prio"))
    topo = Topology(opts.prefix, opts.expires_ms)
    conn = await asyncio.to_thread(amqp_server.connection)
    try:   # as a vertebra before priorities declared it
        ch = conn.channel()
        ch.queue_declare(topo.dead_queue("prio"), durable=True, auto_delete=False,
                         arguments=topo.dead_arguments())
        ch.queue_declare(topo.task_queue("prio"), durable=True, auto_delete=False,
                         arguments=topo.task_arguments("prio", priority=False))
    finally:
        conn.close()
    caplog.set_level(logging.WARNING, logger="vertebra.transports.amqp")
    client = await bus_for()
    names = await queue_ten(client)
    second = await bus_for("client2")
    await second.transport.send(Envelope("task", service="prio", method="run", args=["last-p9"],
                                         priority=9))
    assert await run_them(bus_for, 11) == [*names, "last-p9"]          # arrival order
    warned = [r for r in caplog.records if "without x-max-priority" in r.getMessage()]
    assert len(warned) == 3                  # once per bus: the client, client2 and the worker
    assert client.transport.stats["reconnects"] == 0
    assert topo.task_queue("prio") in client.transport._link.plain_queues   # remembered


async def test_on_a_quorum_queue_priorities_are_what_the_broker_version_gives(bus_for, amqp_server):
    conn = await asyncio.to_thread(amqp_server.connection)
    try:
        version = str(conn.server_properties.get("version", "0"))
    finally:
        conn.close()
    client = await bus_for(url_params={"queue_type": "quorum"})
    assert not client.transport.capabilities.priorities
    names = await queue_ten(client)
    order = await run_them(lambda role: bus_for(role, url_params={"queue_type": "quorum"}),
                           len(names))
    if int(version.split(".")[0]) >= 4:      # two levels of its own: 5-9 before 0-4
        high = [n for n in names if int(n.rsplit("-p", 1)[1]) >= 5]
        assert order == high + [n for n in names if n not in high]
    else:                                    # 3.x: a quorum queue has no priorities
        assert order == names
