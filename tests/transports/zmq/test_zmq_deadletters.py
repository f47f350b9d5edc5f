"""Dead letters live in the hub: what a node buries, what kills its workers; replayed from
any bus.  And a service the hub refuses work for does not hold up the others."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import vertebra
from vertebra.transports.zmq import Hub
from vertebra.wire.envelope import Envelope
from vertebra.wire.errors import wire_error
from vertebra.wire.info import ServiceInfo

from .conftest import eventually
from .test_zmq_restart import Sink


async def test_a_task_its_node_buries_is_kept_in_the_hub_and_replayed(open_client):
    seen: list[Envelope] = []
    fail = True

    async def handle(inc):
        seen.append(inc.envelope)
        if fail:
            await inc.reject(False, wire_error("remote", "LookupError", f"no {inc.envelope.args[0]}"))
        else:
            await inc.ack()

    node = await open_client()
    await node.t.serve(ServiceInfo("jobs"), handle)
    client = await open_client()
    task = Envelope("task", service="jobs", method="m", args=[7], headers={"attempt": "3"})
    await client.t.send(task)
    await client.t.send(Envelope("cast", service="jobs", method="m", args=[8]))   # a cast: dropped
    await eventually(lambda: len(seen) == 2, what="both delivered")
    (dead,) = await client.t.dead_letters("jobs")
    assert (dead.id, dead.method, dead.args, dead.attempts) == (task.id, "m", [7], 3)
    assert (dead.error["type"], dead.error["message"]) == ("LookupError", "no 7")
    assert await client.t.dead_letters("other") == []
    fail = False
    assert await client.t.replay("jobs", ["not-an-id"]) == 0
    assert await client.t.replay("jobs") == 1
    await eventually(lambda: len(seen) == 3, what="the replayed task delivered")
    assert (seen[2].id, seen[2].kind, seen[2].headers.get("attempt")) == (task.id, "task", None)
    assert await client.t.dead_letters("jobs") == []


@pytest.fixture
def hub_with_one_redelivery() -> Iterator[Hub]:
    with Hub("tcp://127.0.0.1:0", heartbeat=0.2, liveness=3, max_redeliveries=1) as h:
        yield h


@pytest.mark.slow
async def test_a_task_that_kills_its_workers_is_buried_as_worker_lost(hub_with_one_redelivery, procs):
    hub = hub_with_one_redelivery
    url = hub.url + "?heartbeat=0.2"
    first = procs(url, "jobs", "hold")
    await first.wait_for("ready")
    bus = vertebra.connect_async(url)
    await bus.start()
    try:
        bus.cast("jobs", "m", ["poison"], kind="task")
        assert await first.wait_for("got") == "got poison"
        second = procs(url, "jobs", "hold")
        await second.wait_for("ready")
        first.kill()                          # dies holding it: delivered once more
        assert await second.wait_for("got") == "got poison"
        second.kill()                         # and dies too: that is the limit
        await eventually(lambda: hub.stats["worker_lost"] == 1, 20, "buried as a poison task")
        (dead,) = await bus.dead_letters("jobs")
        assert (dead.args, dead.error["type"], dead.error["deliveries"]) == (["poison"], "WorkerLost", 2)
    finally:
        await bus.close(linger=1.0)


async def test_a_service_whose_hub_queue_is_full_does_not_hold_up_the_others():
    with Hub("tcp://127.0.0.1:0", max_queue=10) as hub:
        node = vertebra.connect_async(hub.url)
        sender = vertebra.connect_async(hub.url, max_age=30)
        await node.start()
        await sender.start()
        try:
            sink = Sink()
            await node.serve(sink)
            await node.transport.events.barrier()
            for i in range(100):              # 10 fit in the hub; 90 are refused, retried
                sender.cast("absent", "m", [i])
            for i in range(20):
                sender.proxy("sink").record.cast(f"cast-{i}")
                sender.publish("restart.live", f"event-{i}")
            want = {f"cast-{i}" for i in range(20)}

            def arrived() -> bool:
                with sink.lock:
                    return set(sink.got) == want and len(sink.events) == 20

            await eventually(arrived, 30, "the live service's casts and events")
            assert sender.stats()["transport"]["unreachable"] >= 1    # the hub did refuse
        finally:
            await sender.close(linger=0.5)
            await node.close(linger=0.5)
