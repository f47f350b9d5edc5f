"""Faults on the wire: a TCP proxy between the bus and RabbitMQ stops forwarding (a dead
link that stays open) or cuts the link; heartbeats notice, confirm waits end, the
transport reconnects and serves again."""

from __future__ import annotations

import asyncio
import time

import pytest
from amqp_nodes import Jobs
from amqp_proxy import LinkProxy

import vertebra
from vertebra.wire.envelope import Envelope


@pytest.fixture
async def proxy(amqp_server):
    p = LinkProxy(amqp_server.port)
    await p.start()
    yield p
    await p.close()


def task_for(service: str) -> Envelope:
    return Envelope("task", service=service, method="run", args=["x"])


@pytest.mark.slow
async def test_a_silent_link_is_detected_by_heartbeats_and_the_bus_recovers(ns, amqp_server, proxy):
    direct = ns("jobs")
    via_proxy = proxy.url(direct, amqp_server.port) + "&heartbeat=1"
    async with vertebra.connect_async(direct) as server, \
            vertebra.connect_async(via_proxy) as client:
        await server.serve(Jobs())
        assert await client.call("jobs", "ping") == "pong"
        proxy.freeze_all()
        # a call in flight on the dead link is answered Unreachable once the loss is
        # noticed, long before its own 60 s deadline
        with pytest.raises(vertebra.Unreachable, match=r"connection to the broker .* was lost"):
            await client.call("jobs", "ping", timeout=60)
        deadline = time.monotonic() + 30
        while client.transport.stats["reconnects"] < 1:
            assert time.monotonic() < deadline, "never reconnected"
            await asyncio.sleep(0.05)
        assert await client.call("jobs", "ping", timeout=10) == "pong"


async def test_a_confirm_that_cannot_come_fails_the_send_after_confirm_timeout(ns, amqp_server, proxy):
    url = proxy.url(ns("client"), amqp_server.port) + "&heartbeat=0&confirm_timeout=1"
    ns("later")
    async with vertebra.connect_async(url) as client:
        await client.transport.send(task_for("later"))        # declares the queue, confirmed
        proxy.freeze_all()                                    # no heartbeats: nobody notices
        with pytest.raises(ConnectionError, match="no confirm from the broker within 1s"):
            await client.transport.send(task_for("later"))
        assert client.transport.stats["confirm_timeouts"] == 1
        assert client.transport.connected                     # the link itself is not judged


async def test_a_confirm_lost_with_the_connection_fails_the_send_at_once(ns, amqp_server, proxy):
    url = proxy.url(ns("client"), amqp_server.port) + "&heartbeat=0&confirm_timeout=3600"
    ns("later")
    async with vertebra.connect_async(url) as client:
        await client.transport.send(task_for("later"))
        proxy.freeze_all()
        sending = asyncio.ensure_future(client.transport.send(task_for("later")))
        while len(client.transport._confirms) == 0:           # published, waiting for its ack
            await asyncio.sleep(0.01)
        assert not sending.done()
        proxy.refusing = True                                 # and it stays down
        proxy.cut_all()                                       # the connection is reset
        with pytest.raises(ConnectionError, match="amqp connection lost"):
            await sending
        with pytest.raises(ConnectionError, match="reconnecting") as down:
            await client.transport.send(task_for("later"))
        assert type(down.value) is ConnectionError            # not Unreachable: retried above
