"""Real faults: a worker SIGKILLed mid-task, connections cut mid-call or before a call,
Prosody restarted."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import vertebra
from tests.conformance.util import eventually as wait_for

from .netcut import Relay
from .nodes import Calc


async def eventually(cond: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    """This file's bound (20.0 s) on the one polling helper of the test suite."""
    await wait_for(cond, timeout, what)


async def test_task_of_a_killed_worker_goes_to_another_replica(bus_for, ns, tmp_path):
    log = tmp_path / "worker.log"
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("worker.py")),
                             ns("calc"), str(log)], cwd=str(Path(__file__).parents[3]))
    try:
        client = await bus_for()
        await eventually(lambda: log.exists() and "ready" in log.read_text(), what="worker up")
        client.proxy("calc").work.cast("job-1")
        await eventually(lambda: "started job-1" in log.read_text(), what="worker took it")
        survivor = Calc()
        await (await bus_for("calc")).serve(survivor)
        os.kill(proc.pid, signal.SIGKILL)
        await eventually(lambda: survivor.done == ["job-1"], what="redelivered")
    finally:
        proc.kill()
        proc.wait()


async def test_call_in_flight_survives_the_nodes_connection_being_cut(bus_for):
    node = await bus_for("calc")
    await node.serve(Calc())
    client = await bus_for()
    call = asyncio.ensure_future(client.proxy("calc").slow("kept", 0.5))
    await eventually(lambda: bool(node.transport.serving.inflight), what="the call on the node")
    node.transport.drop_connection()
    assert await asyncio.wait_for(call, 20) == "kept"
    await eventually(lambda: node.transport._session.reconnects >= 1, what="reconnected")
    assert await client.proxy("calc").add(1, 2) == 3


async def test_call_in_flight_survives_the_callers_connection_being_cut(bus_for):
    node = await bus_for("calc")
    await node.serve(Calc())
    client = await bus_for()
    call = asyncio.ensure_future(client.proxy("calc").slow("kept", 0.5))
    await eventually(lambda: bool(node.transport.serving.inflight), what="the call on the node")
    client.transport.drop_connection()
    assert await asyncio.wait_for(call, 20) == "kept"
    assert node.transport.stats["duplicates"] + client.transport.stats["resent"] >= 1


async def test_task_in_flight_across_a_cut_runs_once(bus_for):
    calc = Calc()
    node = await bus_for("calc")
    await node.serve(calc)
    client = await bus_for()
    client.proxy("calc").work.cast("t1", 0.5)
    await eventually(lambda: bool(node.transport.serving.inflight), what="the task on the node")
    node.transport.drop_connection()
    client.transport.drop_connection()
    await eventually(lambda: calc.done == ["t1"], what="task done")
    client.proxy("calc").work.cast("t2")
    await eventually(lambda: calc.done == ["t1", "t2"], what="later task done")
    assert await client.flush(20) == 0
    assert client.transport.outgoing.out == {}     # nothing left that could arrive again
    assert calc.done == ["t1", "t2"]


@pytest.mark.slow
async def test_buses_come_back_after_prosody_restarts(bus_for, xmpp_server):
    node = await bus_for("calc")
    await node.serve(Calc())
    client = await bus_for()
    assert await client.proxy("calc").add(1, 1) == 2
    xmpp_server.kill()
    await eventually(lambda: not (client.transport._session.online or node.transport._session.online),
                     what="both saw the server go")
    xmpp_server.start()
    await eventually(lambda: client.transport._session.online and node.transport._session.online,
                     30, "both reconnected")
    for _ in range(200):
        if any(s.name == "calc" for s in await client.transport.discover()):
            break
        await asyncio.sleep(0.05)
    assert await client.proxy("calc").add(2, 2) == 4


async def test_a_call_made_while_the_callers_network_is_down_is_answered_once_it_is_back(
        bus_for, ns, xmpp_server):
    node = await bus_for("calc")
    await node.serve(Calc())
    relay = Relay(xmpp_server.port)
    await relay.up()
    client = vertebra.connect_async(relay.url(ns("client"), xmpp_server.port), linger=1.0)
    await client.start()
    try:
        assert await client.proxy("calc").add(1, 1) == 2
        await relay.down()                      # the caller's network is gone, not the node's
        await eventually(lambda: not client.transport._session.online, what="caller offline")
        with pytest.raises(ConnectionError) as err:
            await client.transport.send(vertebra.wire.envelope.Envelope("call", service="calc",
                                                                         method="add"))
        assert not isinstance(err.value, vertebra.Unreachable)   # plain: the Bus retries it
        tries = 0
        send = client.transport.send

        async def counted(env):
            nonlocal tries
            tries += 1
            await send(env)
        client.transport.send = counted
        call = asyncio.ensure_future(client.proxy("calc", timeout=60).add(2, 3))
        await eventually(lambda: tries >= 3, what="the Bus retrying the call")
        assert not call.done()                  # retried, not failed
        await relay.up()
        assert await asyncio.wait_for(call, 60) == 5
        assert client.transport._session.reconnects >= 1
    finally:
        await client.close(linger=0.5)
        await relay.down()


async def test_a_call_made_before_the_bus_is_back_in_the_directory_room_waits_for_it(bus_for):
    node = await bus_for("calc")
    await node.serve(Calc())
    client = await bus_for()
    assert await client.proxy("calc").add(1, 1) == 2
    calls: list[asyncio.Future[int]] = []
    session = client.transport._session
    back_online = session._on_online

    def online_again() -> None:
        back_online()     # the join presence is sent; the room has not answered it yet
        calls.append(asyncio.ensure_future(client.proxy("calc", timeout=30).add(20, 22)))
    session._on_online = online_again
    client.transport.drop_connection()
    await eventually(lambda: bool(calls), what="reconnected")
    assert await asyncio.wait_for(calls[0], 30) == 42      # was: Unreachable at once


async def test_a_call_to_a_service_whose_replica_is_reconnecting_waits_for_it(
        bus_for, ns, xmpp_server):
    relay = Relay(xmpp_server.port)
    await relay.up()
    node = vertebra.connect_async(relay.url(ns("calc"), xmpp_server.port), linger=1.0)
    await node.start()
    try:
        await node.serve(Calc())
        client = await bus_for(url_params={"grace": "30"})
        assert await client.proxy("calc").add(1, 1) == 2
        await relay.down()                     # the node restarts (its network is away)
        await eventually(lambda: not client.transport.directory.has_replica("calc"),
                         what="the client saw the replica leave")
        call = asyncio.ensure_future(client.proxy("calc", timeout=60).add(2, 2))
        await eventually(lambda: bool(client.transport.outgoing.waiting.get("calc")),
                         what="the call waits for a replica")       # was: Unreachable at once
        await relay.up()
        assert await asyncio.wait_for(call, 60) == 4
        with pytest.raises(vertebra.Unreachable):
            await client.proxy("never-served").add(1, 1)             # unknown: still at once
    finally:
        await node.close(linger=0.5)
        await relay.down()
