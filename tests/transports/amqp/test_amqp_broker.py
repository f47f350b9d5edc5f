"""The amqp transport against the real broker: routing, confirms, bad input, dead letters."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import amqp
import pytest
from amqp_nodes import Jobs, Live
from tests.conformance.util import eventually as wait_for

import vertebra
from vertebra.transports.amqp.deadletters import dead_body
from vertebra.transports.amqp.topology import REPLY_TO, Topology
from vertebra.wire.deadletter import DEAD_ERROR_HEADER
from vertebra.wire.envelope import Envelope
from vertebra.wire.errors import wire_error


async def eventually(cond: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    """This file's bound (20.0 s) on the one polling helper of the test suite."""
    await wait_for(cond, timeout, what)


def prefix_of(url: str) -> str:
    return url.split("prefix=")[1].split("&")[0]


def queue_depth(amqp_server, name: str) -> int:
    conn = amqp_server.connection()
    try:
        return int(conn.channel().queue_declare(name, passive=True).message_count)
    finally:
        conn.close()


async def test_call_to_a_service_nobody_serves_is_returned_not_timed_out(bus_for):
    bus = await bus_for()
    with pytest.raises(vertebra.Unreachable, match="no replica serves 'nobody'"):
        await bus.call("nobody", "anything", timeout=60)
    assert bus.transport.stats["returned"] == 1          # answered by basic.return


async def test_a_service_that_stopped_serving_is_unreachable(bus_for):
    server, client = await bus_for("jobs"), await bus_for()
    await server.serve(Jobs())
    assert await client.call("jobs", "ping") == "pong"
    await server.stop_serving()
    with pytest.raises(vertebra.Unreachable):
        await client.call("jobs", "ping", timeout=60)


async def test_prefixes_isolate_networks_sharing_a_vhost(bus_for, ns, amqp_server):
    server = await bus_for("jobs")
    await server.serve(Jobs())
    elsewhere = prefix_of(ns("x")) + "elsewhere."
    try:
        async with vertebra.connect_async(ns("client", prefix=elsewhere)) as other:
            with pytest.raises(vertebra.Unreachable):
                await other.call("jobs", "ping", timeout=60)
            assert await other.nodes() == []
        assert [s.name for s in await (await bus_for()).nodes()] == ["jobs"]
    finally:
        amqp_server.delete(elsewhere, set())


async def test_a_confirmed_task_is_on_the_broker_when_send_returns(bus_for, ns, amqp_server):
    bus = await bus_for()
    env = Envelope("task", service="later", method="run", args=["x"])
    await bus.transport.send(env)          # nobody serves "later": the task waits, durable
    q = Topology(prefix_of(ns("later"))).task_queue("later")
    assert queue_depth(amqp_server, q) == 1


async def test_bad_input_is_rejected_counted_and_the_node_keeps_serving(bus_for, ns, amqp_server):
    server = await bus_for("jobs", url_params={"max_message": "4096"})
    jobs = Jobs()
    await server.serve(jobs)
    topo = Topology(prefix_of(ns("jobs")))
    conn = amqp_server.connection()
    ch = conn.channel()
    answers: list[amqp.Message] = []
    ch.basic_consume(REPLY_TO, no_ack=True, callback=answers.append)

    def put(queue: str, body: bytes, **props) -> None:
        ch.basic_publish(amqp.Message(body, **props), exchange="", routing_key=queue)

    good = Envelope("task", service="jobs", method="run", args=["ok"])
    wrong_version = json.loads(server.codec.encode(good))
    wrong_version["v"] = 99
    put(topo.task_queue("jobs"), b"this is not json")
    put(topo.task_queue("jobs"), json.dumps(wrong_version).encode())
    huge = Envelope("task", service="jobs", method="run", args=["x" * 10_000])
    put(topo.task_queue("jobs"), server.codec.encode(huge))
    call = Envelope("call", service="jobs", method="ping")
    put(topo.call_queue("jobs"), server.codec.encode(call))                      # no reply_to
    put(topo.call_queue("jobs"), b"\xff\x00garbage", reply_to=REPLY_TO, correlation_id="c-1")
    put(topo.task_queue("jobs"), server.codec.encode(good))

    await eventually(lambda: server.transport.stats["malformed"] == 5 and jobs.done == ["ok"],
                     what=f"5 malformed counted, got {server.transport.stats}")
    assert await (await bus_for()).call("jobs", "ping") == "pong"     # still serving
    while not answers:                                                 # the garbage call's error
        conn.drain_events(timeout=10)
    err = json.loads(answers[0].body)
    assert (answers[0].properties["correlation_id"], err["kind"], err["re"], err["error"]["code"]) \
        == ("c-1", "error", "c-1", "protocol")
    conn.close()
    # The three bad tasks were dead-lettered (rejected without requeue), not dropped or looping.
    assert queue_depth(amqp_server, topo.dead_queue("jobs")) == 3
    assert queue_depth(amqp_server, topo.task_queue("jobs")) == 0
    # The one that decodes is listed, by the broker's word; the two that do not stay put.
    listed = await server.dead_letters("jobs")
    assert [(d.args[0][:1], d.error["type"]) for d in listed] == [("x", "Rejected")]
    assert queue_depth(amqp_server, topo.dead_queue("jobs")) == 3


async def test_a_task_its_node_buries_is_listed_without_consuming_and_replayed(
        bus_for, ns, amqp_server):
    # the attempts are the node's (nodes/runtime.py): it re-sends with the attempt header
    server = await bus_for("jobs")
    jobs = Jobs()
    await server.serve(jobs)
    client = await bus_for()
    task_id = client.proxy("jobs").run.cast("fixable-1")
    client.proxy("jobs").run.cast("after")
    dead_q = Topology(prefix_of(ns("jobs"))).dead_queue("jobs")
    await eventually(lambda: queue_depth(amqp_server, dead_q) == 1, what="buried")
    await eventually(lambda: "after" in jobs.done)
    assert jobs.failures == {"fixable-1": 3}                               # not looping
    listed = await client.dead_letters("jobs")
    assert [(d.id, d.service, d.method, d.args, d.attempts) for d in listed] == \
        [(task_id, "jobs", "run", ["fixable-1"], 3)]
    assert (listed[0].error["type"], listed[0].error["message"]) == \
        ("RuntimeError", "job fixable-1 is broken")
    assert [d.id for d in await client.dead_letters("jobs")] == [task_id]   # still there
    assert queue_depth(amqp_server, dead_q) == 1
    assert server.transport.stats["buried"] == 1
    jobs.fixed = True
    assert await client.replay("jobs") == 1
    await eventually(lambda: "fixable-1" in jobs.done, what="the replayed task ran")
    assert jobs.failures == {"fixable-1": 3}              # ran once more, as a first attempt
    assert await client.dead_letters("jobs") == [] and queue_depth(amqp_server, dead_q) == 0


async def test_replay_of_chosen_ids_keeps_the_others_in_order(bus_for, ns, amqp_server):
    bus = await bus_for()
    topo = Topology(prefix_of(ns("jobs")))
    await bus.transport.send(Envelope("task", service="jobs", method="run", args=["declare"]))
    conn = amqp_server.connection()
    ch = conn.channel()
    envs = [Envelope("task", service="jobs", method="run", args=[n], headers={"attempt": "3"})
            for n in "abcd"]
    bodies = [dead_body(bus.codec, e, wire_error("remote", "RuntimeError", f"no {n}"))
              for e, n in zip(envs, "abcd", strict=True)]
    for body in [*bodies, bodies[1]]:                      # b buried twice (a lost ack)
        ch.basic_publish(amqp.Message(body, delivery_mode=2), exchange="",
                         routing_key=topo.dead_queue("jobs"))
    ch.basic_publish(amqp.Message(b"not an envelope"), exchange="",
                     routing_key=topo.dead_queue("jobs"))
    try:
        listed = await bus.dead_letters("jobs")
        assert [d.args[0] for d in listed] == ["a", "b", "c", "d", "b"]    # oldest first
        assert [d.error["message"] for d in listed[:2]] == ["no a", "no b"]
        assert await bus.replay("jobs", [envs[1].id, envs[3].id]) == 2    # b once, d
        assert [d.args[0] for d in await bus.dead_letters("jobs")] == ["a", "c"]
        assert queue_depth(amqp_server, topo.dead_queue("jobs")) == 3     # and the garbage
        got = []
        while (msg := ch.basic_get(topo.task_queue("jobs"), no_ack=True)) is not None:
            got.append(json.loads(msg.body))
        assert [(g["args"], g["id"], g["kind"]) for g in got] == \
            [(["declare"], got[0]["id"], "task"), (["b"], envs[1].id, "task"), (["d"], envs[3].id, "task")]
        assert all(DEAD_ERROR_HEADER not in g.get("headers", {}) and "attempt" not in g.get("headers", {})
                   for g in got)
        assert await bus.replay("jobs") == 2 and await bus.dead_letters("jobs") == []
        assert await bus.dead_letters("nobody") == [] and await bus.replay("nobody") == 0
    finally:
        conn.close()


async def test_a_failed_cast_to_an_rpc_method_is_dropped_not_buried(bus_for, ns, amqp_server):
    server = await bus_for("jobs")
    await server.serve(Jobs())
    client = await bus_for()
    client.proxy("jobs").boom.cast()
    await eventually(lambda: server.transport.stats["dropped"] == 1, what="dropped")
    assert queue_depth(amqp_server, Topology(prefix_of(ns("jobs"))).dead_queue("jobs")) == 0
    assert server.transport.stats["buried"] == 0


async def test_oversized_send_raises_protocol_error(bus_for):
    bus = await bus_for(url_params={"max_message": "1000"})
    with pytest.raises(vertebra.ProtocolError):
        await bus.transport.send(Envelope("task", service="s", method="m", args=["x" * 2000]))


async def test_work_in_flight_when_a_node_stops_is_acked_not_redelivered(bus_for, ns, amqp_server):
    server = await bus_for("jobs")
    jobs = Jobs()
    await server.serve(jobs)
    (await bus_for()).proxy("jobs").run.cast("slow-1")
    topo = Topology(prefix_of(ns("jobs")))
    await eventually(lambda: jobs.started == ["slow-1"], what="the task started")
    await server.stop_serving(timeout=10)      # unserve first, then drain the running task
    assert jobs.done == ["slow-1"]
    conn = amqp_server.connection()
    try:   # nothing left unacked: no consumer, so an unacked task would be ready again
        await asyncio.sleep(0.2)
        assert conn.channel().queue_declare(topo.task_queue("jobs"), passive=True).message_count == 0
    finally:
        conn.close()


async def test_a_misdeclared_task_queue_fails_its_own_sends_not_the_connection(
        bus_for, ns, amqp_server):
    node = await bus_for("live")
    live = Live()
    await node.serve(live)
    client = await bus_for()
    bad = Topology(prefix_of(ns("bad"))).task_queue("bad")
    conn = amqp_server.connection()
    try:   # someone declared it before, with other arguments
        conn.channel().queue_declare(bad, durable=True, auto_delete=False,
                                     arguments={"x-max-length": 7})
    finally:
        conn.close()
    for _ in range(2):
        with pytest.raises(vertebra.ProtocolError, match="PRECONDITION_FAILED"):
            await client.transport.send(Envelope("task", service="bad", method="run"))
    for i in range(5):
        client.proxy("live").put.cast(i)
    await eventually(lambda: sorted(live.casts) == list(range(5)))
    assert client.transport.stats["reconnects"] == 0
    class Bad(Jobs):
        name = "bad"

    with pytest.raises(vertebra.ProtocolError, match="PRECONDITION_FAILED"):
        await (await bus_for("bad")).serve(Bad())
