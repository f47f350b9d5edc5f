"""Every wait of a send is bounded, and one absent service holds up no other destination
(issue 14, item 3)."""

from __future__ import annotations

import asyncio

import pytest

from vertebra.wire.envelope import Envelope
from vertebra.wire.errors import Unreachable

from .nodes import recorder
from .test_xmpp_faults import eventually


@pytest.mark.parametrize("kind", ["cast", "task"])
async def test_a_send_for_a_service_with_no_replica_gives_the_message_back(bus_for, kind):
    client = await bus_for("client", url_params={"grace": "0.2"})
    t = client.transport
    env = Envelope(kind, service="nobody", method="work", args=[1])
    # wait_for is a guard against hanging (the bug: this send never returned), not a speed bound
    with pytest.raises(ConnectionError) as err:
        await asyncio.wait_for(t.send(env), 30)
    assert not isinstance(err.value, Unreachable)     # plain: the outbox retries it
    assert "nobody" in str(err.value)
    assert t.outgoing.out == {} and not any(t.outgoing.waiting.values())   # nothing left behind


async def test_100_casts_to_an_absent_service_hold_up_nothing_and_arrive_once_it_is_up(bus_for):
    live = recorder("calc")
    await (await bus_for("calc")).serve(live)
    client = await bus_for("client", url_params={"grace": "0.5"})
    for i in range(100):
        assert client.proxy("absent").work.cast(i)
    for i in range(20):
        assert client.proxy("calc").work.cast(f"live-{i}")
        assert client.publish("live.tick", i)
    await eventually(lambda: len(live.done) == 20 and len(live.events) == 20, 60,
                     "the 20 casts and 20 events to the live node")
    waiting = client.stats()["outbox"]
    print(f"while 'absent' is down: casts {len(live.done)}/20, events {len(live.events)}/20; "
          f"outbox {waiting}")
    assert sorted(live.done) == sorted(f"live-{i}" for i in range(20))
    assert sorted(live.events) == list(range(20))
    absent = recorder("absent")
    await (await bus_for("absent")).serve(absent)
    await eventually(lambda: len(absent.done) >= 100, 60, "the 100 once 'absent' is up")
    assert await client.flush(30) == 0
    outbox = client.stats()["outbox"]
    print(f"after 'absent' came up: {len(absent.done)}/100; outbox {outbox}")
    assert sorted(absent.done) == list(range(100))
    assert (outbox["accepted"], outbox["sent"], outbox["dropped"], outbox["expired"]) == (140, 140, 0, 0)


async def test_a_task_outlasting_ack_wait_is_waited_for_again_not_sent_twice(bus_for):
    node_side = recorder("calc")
    node = await bus_for("calc")
    await node.serve(node_side)
    client = await bus_for("client", url_params={"ack_wait": "0.2"})
    client.proxy("calc").hold.cast("long")
    # the send gives up waiting (ConnectionError, the outbox retries it) while it runs
    await eventually(lambda: client.stats()["outbox"]["retries"] >= 1, 30, "a bounded wait")
    node_side.release.set()
    assert await client.flush(30) == 0
    assert node_side.done == ["long"]
    assert node.transport.stats["duplicates"] == 0        # the retry found it in flight
    assert client.transport.outgoing.out == {}


async def test_a_send_cancelled_by_the_outbox_leaves_nothing_behind(bus_for):
    client = await bus_for("client", url_params={"grace": "30"})
    t = client.transport
    send = asyncio.ensure_future(t.send(Envelope("task", service="nobody", method="work")))
    await eventually(lambda: bool(t.outgoing.out), 10, "the task waits for a replica")
    send.cancel()              # what the outbox does when max_age passes, or when it stops
    with pytest.raises(asyncio.CancelledError):
        await send
    assert t.outgoing.out == {} and not any(t.outgoing.waiting.values())
