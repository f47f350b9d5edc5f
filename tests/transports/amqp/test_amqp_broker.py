"""The amqp transport against the real broker: routing, confirms, bad input, dead letters."""

from __future__ import annotations

import asyncio
import json
import time

import amqp
import pytest
from amqp_nodes import Jobs

import vertebra
from vertebra.transports.amqp.topology import ATTEMPTS_HEADER, ERROR_HEADER, REPLY_TO, Topology
from vertebra.wire.envelope import Envelope


async def eventually(cond, timeout=20.0, what=""):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not met within {timeout}s: {what}")
        await asyncio.sleep(0.02)


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


async def test_a_task_failing_max_attempts_times_is_dead_lettered_with_its_error(
        bus_for, ns, amqp_server):
    server = await bus_for("jobs", url_params={"max_attempts": "2"})
    jobs = Jobs()
    await server.serve(jobs)
    client = await bus_for()
    client.proxy("jobs").run.cast("fail-1")
    client.proxy("jobs").run.cast("after")
    topo = Topology(prefix_of(ns("jobs")))
    await eventually(lambda: queue_depth(amqp_server, topo.dead_queue("jobs")) == 1, what="dead")
    await eventually(lambda: "after" in jobs.done)
    assert jobs.failures == {"fail-1": 2}
    conn = amqp_server.connection()
    try:
        msg = conn.channel().basic_get(topo.dead_queue("jobs"), no_ack=True)
    finally:
        conn.close()
    headers = msg.properties["application_headers"]
    assert headers[ATTEMPTS_HEADER] == 2
    error = json.loads(headers[ERROR_HEADER])
    assert error["code"] == "remote" and error["message"]
    assert json.loads(msg.body)["args"] == ["fail-1"]
    assert server.transport.stats["dead_lettered"] == 1 and server.transport.stats["retried"] == 1
    assert jobs.failures == {"fail-1": 2}                                  # not looping


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
