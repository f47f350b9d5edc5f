"""Real faults: a worker process SIGKILLed mid-task or on every try, a service that is absent
beside a live one.  (Broker restarts: test_amqp_outage.py, on a private node.)"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from amqp_nodes import Jobs, Live
from amqp_proxy import LinkProxy
from tests.conformance.util import eventually as wait_for

import vertebra
from vertebra.transports.amqp.topology import Topology

HERE = Path(__file__).resolve().parent


async def eventually(cond: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    """This file's bound (30.0 s) on the one polling helper of the test suite."""
    await wait_for(cond, timeout, what)


def worker(url: str, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), *sys.path]))
    return subprocess.Popen([sys.executable, str(HERE / "amqp_nodes.py"), url, str(log)], env=env)


def lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


@pytest.mark.slow
async def test_a_task_whose_worker_is_sigkilled_goes_to_another_worker(ns, bus_for, tmp_path):
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    a = worker(ns("jobs"), log_a)
    b = None
    try:
        client = await bus_for()
        deadline = time.monotonic() + 30
        while not [s for s in await client.nodes() if s.name == "jobs"]:   # A is serving
            assert time.monotonic() < deadline, "worker A never served"
        client.proxy("jobs").run.cast("block-1")
        await eventually(lambda: "started block-1" in lines(log_a), what="A started the task")
        a.send_signal(signal.SIGKILL)
        a.wait()
        b = worker(ns("jobs"), log_b)
        await eventually(lambda: "started block-1" in lines(log_b), what="B got the task again")
        assert "done block-1" not in lines(log_a)
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()


@pytest.mark.slow
async def test_a_task_that_kills_every_worker_is_buried_not_looping(ns, bus_for, amqp_server, tmp_path):
    url = ns("jobs", max_redeliveries="2")
    client = await bus_for()
    client.proxy("jobs").run.cast("crash-1")
    topo_dead = url.split("prefix=")[1].split("&")[0] + "vertebra.dead.jobs"
    crashes = 0
    for _ in range(6):           # workers start one after another; each may die on the task
        log = tmp_path / f"w{crashes}.log"
        w = worker(url, log)
        try:
            deadline = time.monotonic() + 30
            while w.poll() is None and depth(amqp_server, topo_dead) == 0:
                assert time.monotonic() < deadline, "worker neither died nor buried the task"
                await asyncio.sleep(0.05)
        finally:
            if w.poll() is None:
                w.kill()
            w.wait()
        if w.returncode == -signal.SIGKILL and "started crash-1" in lines(log):
            crashes += 1
        if depth(amqp_server, topo_dead) == 1:
            break
    assert depth(amqp_server, topo_dead) == 1
    # The first delivery and one counted redelivery, then buried.  One more is possible: a
    # worker SIGKILLed right after acking the original (when its copy was confirmed) may
    # lose that ack with the connection's reset, and the original then comes back too.
    assert crashes in (2, 3)
    [dead] = await client.dead_letters("jobs")
    assert (dead.args, dead.error["type"], dead.error["redeliveries"]) == (["crash-1"], "WorkerLost", 2)


async def test_an_absent_service_does_not_hold_up_sends_to_a_live_one(ns, bus_for, amqp_server):
    ns("absent")                                   # its queues are cleaned up after the test
    node = await bus_for("live")
    live = Live()
    await node.serve(live)
    client = await bus_for()
    started = time.monotonic()
    for i in range(50):                            # nobody serves "absent": 100 wait for it
        assert client.cast("absent", "run", [i]) is not None
        assert client.cast("absent", "run", [i], kind="task") is not None
    for i in range(20):
        assert client.proxy("live").put.cast(i) is not None
        assert client.publish("live.n", i) is not None
    await eventually(lambda: len(live.casts) == 20 and len(live.events) == 20,
                     what=f"casts {len(live.casts)}, events {len(live.events)} of 20 each; "
                          f"{client.stats()['outbox']}")
    took = time.monotonic() - started
    assert sorted(live.casts) == list(range(20)) and sorted(live.events) == list(range(20))
    await eventually(lambda: client.stats()["outbox"]["sent"] == 140, what="all confirmed")
    prefix = ns("absent").split("prefix=")[1].split("&")[0]
    assert depth(amqp_server, Topology(prefix).task_queue("absent")) == 100   # kept, durable
    print(f"\nabsent service: 40 of 40 live messages in {took:.3f}s; outbox {client.stats()['outbox']}")


def depth(amqp_server, queue: str) -> int:
    conn = amqp_server.connection()
    try:
        return int(conn.channel().queue_declare(queue, passive=True).message_count)
    except Exception:
        return 0
    finally:
        conn.close()


async def test_a_call_queue_deleted_under_a_live_replica_comes_back_and_calls_bridge_the_gap(
        ns, bus_for, amqp_server):
    # What a replica on a cluster sees when the node holding its call queue dies: the queue
    # is gone, the broker cancels the consumer (basic.cancel).  The replica reaches the
    # broker through a proxy held still, so that callers meet the gap for sure.
    proxy = LinkProxy(amqp_server.port)
    await proxy.start()
    try:
        async with vertebra.connect_async(proxy.url(ns("jobs"), amqp_server.port)) as node:
            await node.serve(Jobs())
            client, stranger = await bus_for(), await bus_for("client2")
            assert await client.call("jobs", "ping") == "pong"
            await asyncio.to_thread(proxy.pause_all)
            prefix = ns("jobs").split("prefix=")[1].split("&")[0]
            await asyncio.to_thread(_delete_queue, amqp_server, Topology(prefix).call_queue("jobs"))
            calls = [asyncio.ensure_future(client.call("jobs", "ping", timeout=30)) for _ in range(5)]
            await eventually(lambda: client.transport.stats["held"] >= 1,
                             what="a call came back unrouted and was held")
            with pytest.raises(vertebra.Unreachable):       # never answered by it: no grace
                await stranger.call("jobs", "ping", timeout=30)
            proxy.resume_all()
            assert await asyncio.gather(*calls) == ["pong"] * 5
            assert node.transport.stats["consumers_cancelled"] == 1
            assert await stranger.call("jobs", "ping") == "pong"
    finally:
        await proxy.close()


def _delete_queue(amqp_server, queue: str) -> None:
    conn = amqp_server.connection()
    try:
        conn.channel().queue_delete(queue)
    finally:
        conn.close()
