"""Calls, tasks, events and discovery through a real embedded hub, via the Transport API."""

from __future__ import annotations

import asyncio
import collections

import pytest

from vertebra.wire.envelope import Envelope
from vertebra.wire.errors import ProtocolError
from vertebra.wire.info import MethodInfo, ServiceInfo

from .conftest import eventually


def echo_handler(counts: collections.Counter, name: str, delay: float = 0.0):
    async def handle(inc):
        env = inc.envelope
        counts[name] += 1
        if delay:
            await asyncio.sleep(delay)
        if env.kind == "call":
            await inc.reply(env.answer([name, *env.args]))
        await inc.ack()
    return handle


async def test_calls_rotate_over_replicas(open_client, hub):
    counts: collections.Counter = collections.Counter()
    for name in ("r1", "r2", "r3"):
        node = await open_client()
        await node.t.serve(ServiceInfo("calc"), echo_handler(counts, name))
    client = await open_client(hub.url + "?heartbeat=0.2&direct=0")   # the hub's rotation
    for i in range(30):
        answer = await client.call("calc", "m", i)
        assert answer.kind == "reply"
        assert answer.result[1] == i
    assert counts == {"r1": 10, "r2": 10, "r3": 10}


async def test_call_to_unknown_service_is_unreachable_at_once(open_client):
    client = await open_client()
    answer = await client.call("nobody", timeout=30)
    assert answer.kind == "error"
    assert answer.error["code"] == "unreachable"
    assert client.t.stats["unreachable"] == 1


async def test_slow_worker_gets_a_small_share_of_tasks(open_client):
    counts: collections.Counter = collections.Counter()
    for name, delay in (("fast1", 0.002), ("fast2", 0.002), ("slow", 0.02)):
        node = await open_client()
        await node.t.serve(ServiceInfo("work"), echo_handler(counts, name, delay), prefetch=1)
    client = await open_client()
    n = 300
    for i in range(n):
        await client.t.send(Envelope("task", service="work", method="m", args=[i]))
    await eventually(lambda: sum(counts.values()) == n, 30, "all tasks done")
    # ready-based: the slow worker holds one task at a time (about 1/21 of the work);
    # blind round-robin would give it a third
    assert counts["slow"] < n * 0.2, counts
    assert counts["fast1"] > n * 0.3 and counts["fast2"] > n * 0.3, counts


async def test_prefetch_bounds_unacked_deliveries(open_client):
    held = []

    async def hold(inc):
        held.append(inc)

    node = await open_client()
    await node.t.serve(ServiceInfo("q"), hold, prefetch=3)
    client = await open_client()
    for i in range(10):
        await client.t.send(Envelope("task", service="q", method="m", args=[i]))
    await eventually(lambda: len(held) == 3)
    await asyncio.sleep(0.2)
    assert len(held) == 3                      # no more until one is acked
    await held[0].ack()
    await eventually(lambda: len(held) == 4)
    await held[1].reject(True)                 # requeued: comes back
    await eventually(lambda: len(held) == 5)
    assert held[4].envelope.args == held[1].envelope.args


async def test_tasks_cast_before_any_worker_wait_in_the_hub(open_client):
    client = await open_client()
    for i in range(5):
        await client.t.send(Envelope("task", service="later", method="m", args=[i]))
    counts: collections.Counter = collections.Counter()
    node = await open_client()
    await node.t.serve(ServiceInfo("later"), echo_handler(counts, "n"))
    await eventually(lambda: counts["n"] == 5)


async def test_close_returns_unacked_work_to_another_replica(open_client):
    got: list[int] = []

    async def hold(inc):
        got.append(inc.envelope.args[0])

    holder = await open_client()
    await holder.t.serve(ServiceInfo("q"), hold, prefetch=1)
    client = await open_client()
    await client.t.send(Envelope("task", service="q", method="m", args=[7]))
    await eventually(lambda: got == [7])
    counts: collections.Counter = collections.Counter()
    other = await open_client()
    await other.t.serve(ServiceInfo("q"), echo_handler(counts, "other"))
    await holder.t.close()
    await eventually(lambda: counts["other"] == 1, what="task redelivered after close")


async def test_unserve_leaves_routing_and_discovery(open_client):
    counts: collections.Counter = collections.Counter()
    node = await open_client()
    await node.t.serve(ServiceInfo("svc", (MethodInfo("m", "rpc", "(a)", "doc"),), "the doc"),
                       echo_handler(counts, "n"))
    other = await open_client()
    await other.t.serve(ServiceInfo("svc"), echo_handler(counts, "o"))
    client = await open_client()
    [info] = await client.t.discover()
    assert (info.name, info.replicas, info.transport) == ("svc", 2, "zmq")
    assert info.method("m").doc == "doc"
    await node.t.unserve("svc")
    await other.t.unserve("svc")
    assert await client.t.discover() == []
    assert (await client.call("svc")).error["code"] == "unreachable"


async def test_events_use_the_prefix_filter_then_the_full_match(open_client):
    got: list[str] = []

    async def on_event(env):
        got.append(env.topic)

    sub = await open_client()
    await sub.t.subscribe("orders.#", on_event)
    await sub.t.subscribe("*.paid", on_event)
    pub = await open_client()
    for topic in ("orders", "ordersx.created", "orders.created", "bills.paid", "bills.paid.x", "end"):
        await pub.t.send(Envelope("event", topic=topic, payload=topic))
    # the sync marker: everything before it arrived.  Not "end": an "end" still on its way
    # when the marker's pattern is added would match it
    await sub.t.subscribe("marker", on_event)
    await pub.t.send(Envelope("event", topic="marker", payload=None))
    await eventually(lambda: "marker" in got)
    assert sorted(got) == ["bills.paid", "marker", "orders", "orders.created"]


async def test_oversized_send_is_refused_locally(open_client, hub):
    client = await open_client(hub.url + "?max_message_size=1000")
    with pytest.raises(ProtocolError):
        await client.t.send(Envelope("cast", service="s", method="m", args=["x" * 2000]))
    assert client.t.stats["oversized"] == 1
