"""Real faults: a worker SIGKILLed mid-task, connections cut mid-call, Prosody restarted."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .nodes import Calc


async def eventually(cond, timeout: float = 20.0, what: str = "") -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError(f"not met within {timeout}s: {what}")
        await asyncio.sleep(0.02)


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
    await asyncio.sleep(0.2)
    node.transport.drop_connection()
    assert await asyncio.wait_for(call, 20) == "kept"
    await eventually(lambda: node.transport._session.reconnects >= 1, what="reconnected")
    assert await client.proxy("calc").add(1, 2) == 3


async def test_call_in_flight_survives_the_callers_connection_being_cut(bus_for):
    node = await bus_for("calc")
    await node.serve(Calc())
    client = await bus_for()
    call = asyncio.ensure_future(client.proxy("calc").slow("kept", 0.5))
    await asyncio.sleep(0.2)
    client.transport.drop_connection()
    assert await asyncio.wait_for(call, 20) == "kept"
    assert node.transport.stats["duplicates"] + client.transport.stats["resent"] >= 1


async def test_task_in_flight_across_a_cut_runs_once(bus_for):
    calc = Calc()
    node = await bus_for("calc")
    await node.serve(calc)
    client = await bus_for()
    client.proxy("calc").work.cast("t1", 0.5)
    await asyncio.sleep(0.2)
    node.transport.drop_connection()
    client.transport.drop_connection()
    await eventually(lambda: calc.done == ["t1"], what="task done")
    client.proxy("calc").work.cast("t2")
    await eventually(lambda: calc.done == ["t1", "t2"], what="later task done")
    await asyncio.sleep(0.5)
    assert calc.done == ["t1", "t2"]


@pytest.mark.slow
async def test_buses_come_back_after_prosody_restarts(bus_for, xmpp_server):
    node = await bus_for("calc")
    await node.serve(Calc())
    client = await bus_for()
    assert await client.proxy("calc").add(1, 1) == 2
    xmpp_server.kill()
    await asyncio.sleep(0.3)
    xmpp_server.start()
    await eventually(lambda: client.transport._session.online and node.transport._session.online,
                     30, "both reconnected")
    for _ in range(200):
        if any(s.name == "calc" for s in await client.transport.discover()):
            break
        await asyncio.sleep(0.05)
    assert await client.proxy("calc").add(2, 2) == 4
