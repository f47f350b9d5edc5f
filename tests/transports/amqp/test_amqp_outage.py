"""Broker outages, on a private RabbitMQ node of this module's own (the broker on 5672 is
never stopped): a call made while the broker is down is answered once it is back, and
every task accepted across a restart is processed."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import pytest
from amqp_nodes import Jobs
from amqp_proxy import LinkProxy
from tests.conformance.util import eventually as wait_for
from tests.servers import amqp as amqp_servers
from tests.servers import started_buses

import vertebra


@pytest.fixture(scope="module")
def private_server(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:            # only while it starts
        mp.setenv("VERTEBRA_AMQP_PRIVATE", "1")
        running = amqp_servers.running(tmp_path_factory.mktemp("amqp-private"))
        server = running.__enter__()
    try:
        yield server
    finally:
        running.__exit__(None, None, None)


@pytest.fixture
def private_ns(private_server):
    with private_server.namespace(uuid.uuid4().hex[:10]) as url_for:
        yield url_for


@pytest.fixture
async def private_bus_for(private_ns):
    async with started_buses(private_ns) as factory:
        yield factory


async def eventually(cond: Callable[[], bool], timeout: float = 60.0, what: str = "") -> None:
    """This file's bound (60.0 s) on the one polling helper of the test suite."""
    await wait_for(cond, timeout, what)


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_calls_made_while_the_broker_is_down_are_answered_once_it_is_back(
        private_server, private_ns, private_bus_for):
    # The node reaches the broker through a proxy that keeps refusing it after the broker
    # is back, so that the client is sure to reconnect first: its calls then come back
    # unrouted (no call queue yet) and must be held, not failed, until the node is back.
    proxy = LinkProxy(private_server.port)
    await proxy.start()
    node_url = proxy.url(private_ns("jobs", reconnect_max="1"), private_server.port)
    try:
        async with vertebra.connect_async(node_url) as node:
            await node.serve(Jobs())
            client = await private_bus_for()
            await _calls_across_an_outage(private_server, proxy, node, client)
    finally:
        await proxy.close()
        await asyncio.to_thread(private_server.ctl, "start_app")   # whatever happened above


async def _calls_across_an_outage(private_server, proxy, node, client) -> None:
    assert await client.call("jobs", "ping") == "pong"
    await asyncio.to_thread(private_server.ctl, "stop_app")
    await eventually(lambda: not client.transport.connected and not node.transport.connected,
                     what="both buses saw the broker go")
    proxy.refusing = True
    calls = [asyncio.ensure_future(client.call("jobs", "ping", timeout=90)) for _ in range(5)]
    await asyncio.sleep(0)
    assert not any(c.done() for c in calls)                  # waiting, not Unreachable
    await asyncio.to_thread(private_server.ctl, "start_app")
    back = time.monotonic()
    await eventually(lambda: client.transport.connected, what="the client reconnected")
    await eventually(lambda: client.transport.stats["held"] >= 1,
                     what="a call came back unrouted and was held")
    assert not any(c.done() for c in calls)
    proxy.refusing = False                                   # now the node comes back
    assert await asyncio.gather(*calls) == ["pong"] * 5
    print(f"\n5 calls answered {time.monotonic() - back:.2f}s after the broker was back; "
          f"client stats {client.transport.stats}")
    assert await client.call("jobs", "ping") == "pong"


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_every_task_accepted_is_processed_across_a_broker_restart(
        private_server, private_bus_for):
    server = await private_bus_for("jobs")
    jobs = Jobs()
    await server.serve(jobs)
    client = await private_bus_for(outbox_size=100_000)
    accepted: list[str] = []
    restarted = asyncio.Event()

    async def restart() -> None:
        await asyncio.sleep(0.5)
        await asyncio.to_thread(private_server.ctl, "stop_app")
        await asyncio.sleep(1.0)
        await asyncio.to_thread(private_server.ctl, "start_app")
        restarted.set()

    restarter = asyncio.create_task(restart())
    i = 0
    while not restarted.is_set() or i < 600:    # a stream before, during and after
        job = f"job-{i}"
        if client.proxy("jobs").run.cast(job) is not None:
            accepted.append(job)
        i += 1
        await asyncio.sleep(0.005)
    await restarter
    await eventually(lambda: set(accepted) <= set(jobs.done), timeout=90,
                     what=f"{len(set(accepted) - set(jobs.done))} accepted tasks not processed")
    assert len(accepted) >= 600
    assert server.transport.stats["reconnects"] >= 1 and client.transport.stats["reconnects"] >= 1
    # at-least-once: a few duplicates are allowed (unacked work redelivered), no losses
    assert set(jobs.done) == set(accepted)
    print(f"\nbroker restart: accepted {len(accepted)}, processed {len(jobs.done)} "
          f"({len(jobs.done) - len(set(jobs.done))} duplicates)")
