"""Delayed casts and tasks held by RabbitMQ (delay queues, src/vertebra/transports/amqp/
delays.py): a message with ``not_before`` waits in the broker, reaches its worker no
earlier, survives a broker restart (on a private node of this module's own: the broker on
5672 is never stopped) and is delivered once.

Most tests here serve at the transport level (a handler that records when each delivery
arrives), so that what they check is the broker path itself, not the node's own guard."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable

import pytest
from tests.conformance.util import eventually as wait_for
from tests.servers import amqp as amqp_servers

from vertebra import Node, task
from vertebra.transports.amqp import AmqpTransport, serving, topology
from vertebra.transports.amqp.topology import DELAY_HEADER, Topology
from vertebra.transports.base import Incoming
from vertebra.wire.codec import get_codec
from vertebra.wire.envelope import Envelope
from vertebra.wire.info import ServiceInfo


async def eventually(cond: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    """This file's bound (30.0 s) on the one polling helper of the test suite."""
    await wait_for(cond, timeout, what)


def prefix_of(url: str) -> str:
    return url.split("prefix=")[1].split("&")[0]


def depths(server: amqp_servers.Server, prefix: str) -> dict[str, int]:
    """Messages ready in every queue of ``prefix``, by name (counted by a passive declare:
    rabbitmqctl's figures for quorum queues lag behind)."""
    names = server.ctl("list_queues", "-q", "--no-table-headers", "name").split()
    found: dict[str, int] = {}
    conn = server.connection()
    try:
        for name in names:
            if name.startswith(prefix):
                ch = conn.channel()
                try:
                    found[name] = int(ch.queue_declare(name, passive=True).message_count)
                except Exception:          # gone meanwhile (an auto-delete call queue)
                    continue
                finally:
                    with contextlib.suppress(Exception):
                        ch.close()
    finally:
        conn.close()
    return found


class Arrivals:
    """A transport-level handler: records (job, arrival time, properties) and acks."""

    def __init__(self) -> None:
        self.got: list[tuple[str, float, dict]] = []

    async def __call__(self, incoming: Incoming) -> None:
        self.got.append((incoming.envelope.args[0], time.time(), incoming.properties))
        await incoming.ack()

    def jobs(self) -> list[str]:
        return [job for job, _, _ in self.got]


@pytest.fixture
async def transports(ns):
    made: list[AmqpTransport] = []

    async def make(role: str, **params: str) -> AmqpTransport:
        t = AmqpTransport(ns(role, **params), get_codec("json"))
        await t.connect(lambda env: None)
        made.append(t)
        return t

    yield make
    for t in reversed(made):
        await t.close()


def delayed(job: str, seconds: float, kind: str = "task", **fields) -> Envelope:
    return Envelope(kind, service="later", method="run", args=[job],
                    not_before=time.time() + seconds, **fields)


async def test_a_delayed_task_waits_in_the_broker_and_arrives_when_due(transports, ns, amqp_server):
    worker = await transports("later")
    arrivals = Arrivals()
    await worker.serve(ServiceInfo("later"), arrivals)
    sender = await transports("client")
    prefix = prefix_of(ns("later"))
    topo = Topology(prefix)
    task = delayed("delayed-task", 2.0, priority=7)
    cast = delayed("delayed-cast", 1.0, kind="cast")
    await sender.send(task)
    await sender.send(cast)
    await sender.send(Envelope("task", service="later", method="run", args=["now"]))
    assert sender.stats["delayed"] == 2
    waiting = await asyncio.to_thread(depths, amqp_server, prefix)
    delay_queues = {q: n for q, n in waiting.items() if q.startswith(topo.delay_queue(0)[:-1])}
    assert len(delay_queues) == 2                      # one per TTL: ~1 s and ~2 s
    if "delayed-task" not in arrivals.jobs():          # still held (unless the machine is slow)
        assert sum(delay_queues.values()) >= 1
    await eventually(lambda: len(arrivals.got) == 3, what=f"three arrivals, got {arrivals.jobs()}")
    when = {job: at for job, at, _ in arrivals.got}
    assert when["delayed-cast"] >= cast.not_before
    assert when["delayed-task"] >= task.not_before
    props = {job: p for job, _, p in arrivals.got}
    assert props["delayed-task"]["priority"] == 7                       # kept through the delay
    death = props["delayed-task"]["application_headers"]["x-death"][0]
    assert (death["reason"], death["queue"]) == ("expired", topo.delay_queue(
        int(props["delayed-task"]["application_headers"][DELAY_HEADER])))
    left = await asyncio.to_thread(depths, amqp_server, prefix)
    assert sum(left.values()) == 0 and len(arrivals.got) == 3           # delivered once each


async def test_a_delay_longer_than_the_longest_delay_queue_is_delayed_again_by_its_worker(
        transports, monkeypatch):
    # The longest delay queue made 0.7 s long: a 2 s delay needs three passes through delay
    # queues, the worker sending it on twice (and stripping x-death: else the broker would
    # take the second pass through one queue for a dead-letter cycle and drop it).
    monkeypatch.setattr(topology, "MAX_DELAY_MS", 700)
    monkeypatch.setattr(serving, "REDELAY_AFTER", 0.05)
    worker = await transports("later")
    arrivals = Arrivals()
    await worker.serve(ServiceInfo("later"), arrivals)
    sender = await transports("client")
    env = delayed("long", 2.0)
    await sender.send(env)
    await eventually(lambda: arrivals.got, what="the long-delayed task arrived")
    [(_, at, props)] = arrivals.got
    assert at >= env.not_before
    assert worker.stats["redelayed"] >= 2
    assert int(props["application_headers"][DELAY_HEADER]) <= 700         # its last pass


class Later(Node):
    """Records when each task ran."""

    name = "later"

    def __init__(self) -> None:
        self.runs: list[tuple[str, float]] = []

    @task
    def run(self, job: str) -> None:
        """One job."""
        self.runs.append((job, time.time()))


async def test_options_delay_goes_through_the_brokers_delay_queue(bus_for):
    worker = await bus_for("later")
    later = Later()
    await worker.serve(later)
    client = await bus_for()
    assert client.transport.capabilities.holds_delayed
    before = time.time()
    client.proxy("later").run.options(delay=1.5, priority=3).cast("in-a-while")
    await eventually(lambda: later.runs, what="the delayed cast ran")
    [(job, at)] = later.runs
    assert job == "in-a-while" and at >= before + 1.5
    assert client.transport.stats["delayed"] == 1        # held by the broker, not the outbox


# -- across a broker restart, on a private node --------------------------------------------

@pytest.fixture(scope="module")
def private_node(tmp_path_factory):
    node = amqp_servers.PrivateNode(tmp_path_factory.mktemp("amqp-delay"), "rabbit_vtdelay")
    node.start()
    try:
        node.wait_ready()
        yield node
    finally:
        node.stop()


def restart(node: amqp_servers.PrivateNode) -> None:
    node.stop()
    node.start()
    node.wait_ready()


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
async def test_a_delayed_task_survives_a_broker_restart_and_is_delivered_once_when_due(
        private_node, queue_type):
    server = private_node.server()
    with server.namespace(uuid.uuid4().hex[:10]) as url_for:
        def url(role: str) -> str:
            return url_for(role, queue_type=queue_type, reconnect_max="0.5")

        worker = AmqpTransport(url("later"), get_codec("json"))
        sender = AmqpTransport(url("client"), get_codec("json"))
        arrivals = Arrivals()
        try:
            await worker.connect(lambda env: None)
            await worker.serve(ServiceInfo("later"), arrivals)
            await sender.connect(lambda env: None)
            prefix = prefix_of(url("later"))
            env = delayed("across-a-restart", 12.0)     # the restart takes 5-8 s here
            await sender.send(env)                       # confirmed: on the broker's disk
            held = await asyncio.to_thread(depths, server, prefix)
            assert held[Topology(prefix).task_queue("later")] == 0
            [ttl] = [q.rsplit(".", 1)[1] for q, n in held.items() if ".vertebra.delay." in q and n]
            t0 = time.time()
            await asyncio.to_thread(restart, private_node)
            back = time.time()
            print(f"\n{queue_type}: broker restarted in {back - t0:.1f}s, "
                  f"{env.not_before - back:.1f}s before the task was due (delay queue {ttl} ms)")
            if back < env.not_before:                   # nothing may have come out yet
                assert arrivals.got == []
            await eventually(lambda: arrivals.got, timeout=90, what="the delayed task arrived")
            assert worker.stats["reconnects"] >= 1
            [(job, at, _)] = arrivals.got
            assert job == "across-a-restart" and at >= env.not_before
            await eventually(lambda: sum(depths(server, prefix).values()) == 0,
                             what="every queue empty (acked, nothing left to deliver)")
            assert len(arrivals.got) == 1
        finally:
            await sender.close()
            await worker.close()

