"""vertebra on a real three-node RabbitMQ cluster (tests/servers/rabbit_cluster.py): quorum
task queues, several brokers in one URL, and a broker node SIGKILLed under load.

The kill tests check that work goes on *during* the outage (every task processed and calls
answered while the killed node is still down), not only that nothing is lost in the end,
then restart the node.  ``pytest -s`` shows the counts.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import time
from collections.abc import Callable

import amqp
import pytest
from amqp_nodes import Jobs, Live
from tests.conformance.util import eventually as wait_for

import vertebra
from vertebra.transports.amqp.topology import Topology
from vertebra.wire.envelope import Envelope

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]


async def eventually(cond: Callable[[], bool], timeout: float = 60.0, what: str = "") -> None:
    """This file's bound (60.0 s) on the one polling helper of the test suite."""
    await wait_for(cond, timeout, what)


def prefix_of(url: str) -> str:
    return url.split("prefix=")[1].split("&")[0]


def raw(cluster, index: int) -> amqp.Connection:
    conn = amqp.Connection(f"127.0.0.1:{cluster.ports[index]}", "guest", "guest")
    conn.connect()
    return conn


def consumers(cluster, queue: str) -> int:
    """How many consumers the broker counts on a classic queue."""
    out = cluster.alive_node().ctl("list_queues", "-q", "--no-table-headers", "name", "consumers")
    return sum(int(line.split("\t")[1]) for line in out.splitlines() if line.split("\t")[0] == queue)


def pick(bus, *keys: str) -> dict[str, int]:
    return {k: bus.transport.stats[k] for k in keys}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- quorum queues and URLs, no kill --------------------------------------------------------

async def test_a_cluster_url_declares_quorum_task_and_dead_queues(cluster, cluster_ns, cluster_bus):
    worker = await cluster_bus("jobs", first=1)
    jobs = Jobs()
    await worker.serve(jobs)
    client = await cluster_bus(first=2)
    assert client.proxy("jobs").run.cast("one") is not None
    await eventually(lambda: jobs.done == ["one"], what="the task ran")
    topo = Topology(prefix_of(cluster_ns("jobs")))
    queues = await asyncio.to_thread(cluster.queues)
    assert queues[topo.task_queue("jobs")][0] == "quorum"
    assert queues[topo.dead_queue("jobs")][0] == "quorum"
    assert queues[topo.call_queue("jobs")][0] == "classic"       # transient by design
    # A bus that declares classic queues for the same network is refused, with the reason.
    other = vertebra.connect_async(cluster.single(cluster_ns("jobs", queue_type="classic"), 0))
    await other.start()
    try:
        with pytest.raises(vertebra.ProtocolError, match="queue_type"):
            await other.serve(Jobs())
    finally:
        await other.close()


async def test_a_url_whose_first_broker_is_down_connects_to_the_next(cluster, cluster_ns):
    dead = closed_port()
    url = cluster_ns("client").replace("guest:guest@", f"guest:guest@127.0.0.1:{dead},", 1)
    async with vertebra.connect_async(url) as bus:
        assert bus.transport.broker == f"127.0.0.1:{cluster.ports[0]}"
        assert await bus.nodes() == []


async def test_a_task_returned_unacked_too_often_is_buried_as_worker_lost(cluster, cluster_ns,
                                                                          cluster_bus):
    # A quorum queue counts deliveries itself (x-delivery-count): two consumers that die
    # with the task (here: raw channels closed without an ack), then a vertebra worker.
    client = await cluster_bus(url_params={"max_redeliveries": "2"})
    assert client.proxy("jobs").run.cast("doomed") is not None
    await client.flush()
    queue = Topology(prefix_of(cluster_ns("jobs"))).task_queue("jobs")
    conn = await asyncio.to_thread(raw, cluster, 1)
    try:
        for _ in range(2):
            ch = conn.channel()
            assert ch.basic_get(queue, no_ack=False) is not None
            ch.close()                                   # returned unacked: count + 1
    finally:
        conn.close()
    worker = await cluster_bus("jobs", first=2, url_params={"max_redeliveries": "2"})
    jobs = Jobs()
    await worker.serve(jobs)
    await eventually(lambda: worker.transport.stats["buried"] == 1, what="buried")
    [dead] = await client.dead_letters("jobs")
    assert (dead.args, dead.error["type"], dead.error["redeliveries"]) == (["doomed"], "WorkerLost", 2)
    assert jobs.started == []                            # never run a fourth time


async def test_the_brokers_delivery_limit_policy_buries_as_worker_lost(cluster, cluster_ns,
                                                                       cluster_bus):
    # The backstop docs/production.md recommends: a delivery-limit policy on task queues.
    prefix = prefix_of(cluster_ns("jobs"))
    queue = Topology(prefix).task_queue("jobs")
    name = f"limit-{prefix}"
    await asyncio.to_thread(cluster.alive_node().ctl, "set_policy", name,
                            "^" + queue.replace(".", "\\.") + "$", '{"delivery-limit":1}',
                            "--apply-to", "queues")
    try:
        client = await cluster_bus()
        assert client.proxy("jobs").run.cast("doomed") is not None
        await client.flush()
        conn = await asyncio.to_thread(raw, cluster, 0)
        try:
            for _ in range(2):                           # limit 1: the second return buries it
                ch = conn.channel()
                deadline = time.monotonic() + 30         # the policy may take a moment
                while ch.basic_get(queue, no_ack=False) is None:
                    assert time.monotonic() < deadline, "the task is not in its queue"
                    await asyncio.sleep(0.05)
                ch.close()
        finally:
            conn.close()
        deadline = time.monotonic() + 30
        while not (dead := await client.dead_letters("jobs")):
            assert time.monotonic() < deadline, "the broker did not dead-letter the task"
        assert (dead[0].args, dead[0].error["type"]) == (["doomed"], "WorkerLost")
        assert "delivery_limit" in dead[0].error["message"]
    finally:
        await asyncio.to_thread(cluster.alive_node().ctl, "clear_policy", name)


# -- a broker node SIGKILLed under load ----------------------------------------------------

@pytest.mark.slow
async def test_a_worker_pool_loses_no_task_when_a_broker_node_is_killed_mid_stream(
        cluster, cluster_ns, cluster_bus):
    total, kill_at = 1000, 300
    sender = await cluster_bus(first=0, outbox_size=100_000)
    # The sender declares the task queue first, on node 0: node 0 leads it (client-local).
    await sender.transport.send(Envelope("task", service="jobs", method="run", args=["warmup"]))
    task_q = Topology(prefix_of(cluster_ns("jobs"))).task_queue("jobs")
    leader = cluster.index_of((await asyncio.to_thread(cluster.queues))[task_q][1])
    victim_addr = f"127.0.0.1:{cluster.ports[leader]}"
    assert sender.transport.broker == victim_addr
    # A bus on a live node that has not published to the queue yet: its first publishes
    # come right after the leader died (the nack trap, see confirms.py).
    late = await cluster_bus("client2", first=(leader + 1) % 3)
    workers = [await cluster_bus("jobs", first=(leader + i) % 3) for i in range(3)]
    pool = [Jobs() for _ in workers]
    for bus, jobs in zip(workers, pool):
        await bus.serve(jobs)

    def done() -> list[str]:
        return [job for jobs in pool for job in jobs.done]

    sent = ["warmup"]
    killed_at = 0.0
    for i in range(total):
        job = f"busy-{i}"                                      # 10 ms of work each
        assert sender.proxy("jobs").run.cast(job) is not None
        sent.append(job)
        if i == kill_at:
            await asyncio.to_thread(cluster.kill, leader)      # the queue's leader, mid-stream
            killed_at = time.monotonic()
            for k in range(100):
                assert late.proxy("jobs").run.cast(f"late-{k}") is not None
                sent.append(f"late-{k}")
        await asyncio.sleep(0.003)
    # Everything is processed while the killed node is still down.
    await eventually(lambda: set(sent) <= set(done()), timeout=90,
                     what=f"{len(set(sent) - set(done()))} of {len(sent)} tasks not processed")
    all_done = time.monotonic() - killed_at
    # Every worker consumes calls again (those on live nodes lost the call queue with node 0).
    call_q = Topology(prefix_of(cluster_ns("jobs"))).call_queue("jobs")
    assert await asyncio.to_thread(consumers, cluster, call_q) == len(workers)
    assert not cluster.nodes[leader].alive
    assert sender.transport.connected and sender.transport.broker != victim_addr
    assert sender.transport.stats["failovers"] >= 1
    assert workers[0].transport.broker != victim_addr            # the worker that was on it
    # A poison task still reaches the dead-letter queue, with its error, during the outage.
    assert sender.proxy("jobs").run.cast("fail-poison") is not None
    deadline = time.monotonic() + 60
    while not (dead := await sender.dead_letters("jobs")):
        assert time.monotonic() < deadline, "the poison task was not buried"
        await asyncio.sleep(0.1)
    assert (dead[0].args, dead[0].error["type"]) == (["fail-poison"], "RuntimeError")
    # The node comes back; the cluster and every bus carry on.
    back = await asyncio.to_thread(cluster.restart, leader)
    after = [f"after-{i}" for i in range(100)]
    for job in after:
        assert sender.proxy("jobs").run.cast(job) is not None
    await eventually(lambda: set(after) <= set(done()), what="tasks after the restart")

    counts = collections.Counter(done())
    processed = [j for j in counts if not j.startswith("fail")]
    duplicates = sum(n - 1 for j, n in counts.items() if not j.startswith("fail"))
    assert set(processed) == set(sent) | set(after)              # nothing lost
    stats = [b.transport.stats for b in (sender, late, *workers)]
    print(f"\nkill of node {leader} (leader of the task queue) after task {kill_at}: "
          f"sent {len(sent) + len(after)}, delivered {sum(counts.values()) - counts['fail-poison']}, "
          f"distinct {len(processed)}, duplicates {duplicates}; all {len(sent)} sent before "
          f"the restart processed {all_done:.2f}s after the kill, node down; restart took "
          f"{back:.1f}s; sender outbox {sender.stats()['outbox']}; for [sender, late sender, "
          f"worker on the killed node, 2 other workers]: failovers "
          f"{[s['failovers'] for s in stats]}, nacked {[s['nacked'] for s in stats]}, channels "
          f"renewed {[s['channels_renewed'] for s in stats]}, redelivered "
          f"{[s['redelivered'] for s in stats]}; dead letter {dead[0].error['type']}")


@pytest.mark.slow
async def test_calls_events_and_discovery_go_on_while_a_broker_node_is_down(cluster, cluster_ns,
                                                                           cluster_bus):
    victim = 1
    victim_addr = f"127.0.0.1:{cluster.ports[victim]}"
    replica_a = await cluster_bus("jobs", first=victim)   # first: its node homes the call queue
    await replica_a.serve(Jobs())
    replica_b = await cluster_bus("jobs", first=victim + 1)
    await replica_b.serve(Jobs())
    caller_a = await cluster_bus(first=victim)             # on the node that will die
    caller_b = await cluster_bus("client2", first=victim + 2)
    subscriber = await cluster_bus("live", first=victim)
    live = Live()
    await subscriber.serve(live)
    await eventually(lambda: len([1 for b in (replica_a, replica_b) if b.transport.connected]) == 2)

    outcomes: list[tuple[str, float, float, str]] = []   # caller, started, took, outcome
    stop = asyncio.Event()

    async def lane(name: str, bus) -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                result = "answered" if await bus.call("jobs", "ping", timeout=3) == "pong" else "wrong"
            except vertebra.Unreachable:
                result = "Unreachable"
            except vertebra.CallTimeout:
                result = "CallTimeout"
            except Exception as exc:                   # anything else fails the test below
                result = f"{type(exc).__name__}: {exc}"
            outcomes.append((name, t0, time.monotonic() - t0, result))

    call_q = Topology(prefix_of(cluster_ns("jobs"))).call_queue("jobs")
    lanes = [asyncio.ensure_future(lane(n, b)) for n, b in
             (("a", caller_a), ("a", caller_a), ("a", caller_a), ("b", caller_b), ("b", caller_b))]
    try:
        await eventually(lambda: sum(o[3] == "answered" for o in outcomes) >= 50, what="calls run")
        await asyncio.to_thread(cluster.kill, victim)
        killed_at = time.monotonic()

        def answered_since(name: str, since: float) -> int:
            return sum(1 for o in outcomes if o[0] == name and o[1] > since and o[3] == "answered")

        await eventually(lambda: caller_a.transport.connected
                         and caller_a.transport.broker != victim_addr, what="caller failover")
        moved = time.monotonic()
        # Discovery: both replicas again (the one on the dead node moved to another).
        deadline = time.monotonic() + 30
        while [s.replicas for s in await caller_a.nodes() if s.name == "jobs"] != [2]:
            assert time.monotonic() < deadline, "discovery did not see both replicas again"
        discovered = time.monotonic() - killed_at
        # Events: the subscriber that was on the dead node gets events again.
        await eventually(lambda: subscriber.transport.connected, what="subscriber failover")
        n = 0
        deadline = time.monotonic() + 30
        while not live.events or live.events[-1] < 1000:
            assert time.monotonic() < deadline, "events did not reach the moved subscriber"
            n += 1
            assert caller_b.publish("live.n", 1000 + n) is not None
            await asyncio.sleep(0.05)
        evented = time.monotonic() - killed_at
        try:
            await eventually(lambda: answered_since("a", moved) >= 20 and answered_since("b", moved) >= 20,
                             what="calls answered after the failover, node still down")
        except AssertionError as exc:      # say what the calls got instead
            since = {name: dict(collections.Counter(o[3] for o in outcomes if o[0] == name and o[1] > moved))
                     for name in ("a", "b")}
            now_consuming = await asyncio.to_thread(consumers, cluster, call_q)
            raise AssertionError(f"{exc}; outcomes since the failover: {since}; "
                                 f"consumers of the call queue: {now_consuming}") from None
        assert await asyncio.to_thread(consumers, cluster, call_q) == 2    # both replicas
        assert not cluster.nodes[victim].alive               # all of that with the node down
    finally:
        stop.set()
        stopped = time.monotonic()
        await asyncio.gather(*lanes)
    back = await asyncio.to_thread(cluster.restart, victim)
    assert await caller_a.call("jobs", "ping") == "pong" and await caller_b.call("jobs", "ping") == "pong"

    assert {o[3] for o in outcomes} <= {"answered", "Unreachable", "CallTimeout"}

    def bucket(name: str, start: float, end: float) -> dict[str, int]:
        return dict(collections.Counter(o[3] for o in outcomes if o[0] == name and start <= o[1] < end))

    def in_flight(name: str) -> dict[str, int]:
        return dict(collections.Counter(o[3] for o in outcomes if o[0] == name
                                        and o[1] < killed_at < o[1] + o[2]))

    slowest = max((o[2] for o in outcomes if o[3] != "answered"), default=0.0)
    b_unreachable = [o[1] - killed_at for o in outcomes if o[0] == "b" and o[3] == "Unreachable"]
    print(f"\nkill of node {victim}, 3 call lanes on it (a) and 2 on a live node (b), timeout 3 s; "
          f"a's failover took {moved - killed_at:.2f}s; in flight at the kill: a {in_flight('a')}, "
          f"b {in_flight('b')}; started during a's failover: a {bucket('a', killed_at, moved)}, "
          f"b {bucket('b', killed_at, moved)}; started after it, node down: "
          f"a {bucket('a', moved, stopped)}, b {bucket('b', moved, stopped)}; "
          f"b's Unreachable {len(b_unreachable)} "
          f"({min(b_unreachable, default=0):.3f}-{max(b_unreachable, default=0):.3f}s after the kill); "
          f"slowest failure {slowest:.2f}s; discovery saw 2 replicas {discovered:.2f}s and the "
          f"moved subscriber had an event {evented:.2f}s after the kill; restart took "
          f"{back:.1f}s; caller a {pick(caller_a, 'failovers', 'returned', 'held')}, caller b "
          f"{pick(caller_b, 'returned', 'held')}, replica b {pick(replica_b, 'consumers_cancelled')}")
