"""Dead letters on xmpp://: kept on the server (PEP), listed by anyone, replayed by anyone;
poison tasks buried by the sender's redelivery limit (WorkerLost)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import vertebra
from vertebra.transports.xmpp.deadletters import node_name

from .nodes import Calc, recorder
from .test_xmpp_faults import eventually


async def dead(bus, service: str, n: int, timeout: float = 20.0) -> list:
    """The dead letters of ``service`` once there are ``n`` (a bound, not a speed limit)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while len(found := await bus.dead_letters(service)) < n:
        assert loop.time() < end, f"{len(found)} dead letter(s) of {service}, wanted {n}"
        await asyncio.sleep(0.05)
    return found


async def raw_items(bus, service: str) -> list:
    """What the service account's PEP node holds, tombstones included."""
    t = bus.transport
    return await t.dead._items(f"{service}@localhost", service)


@pytest.mark.slow
async def test_buried_tasks_outlive_a_prosody_restart_and_anyone_can_replay_them(
        bus_for, xmpp_server):
    gate = recorder("gate")
    node = await bus_for("gate")
    await node.serve(gate)
    client = await bus_for()
    ids = [client.proxy("gate").doomed.cast(x) for x in ("a", "b")]
    listed = await dead(client, "gate", 2)
    assert [d.id for d in listed] == ids                          # oldest first
    assert [(d.method, d.args, d.attempts, d.error["type"]) for d in listed] == [
        ("doomed", ["a"], 1, "LookupError"), ("doomed", ["b"], 1, "LookupError")]
    assert node.transport.stats["buried"] == 2
    xmpp_server.kill()                                            # SIGKILL: no clean shutdown
    xmpp_server.start()
    await eventually(lambda: client.transport.ready and node.transport.ready, 30, "reconnected")
    other = await bus_for("client2")                              # a bus that never saw them
    assert [d.id for d in await dead(other, "gate", 2)] == ids
    gate.release.set()                                            # the task can succeed now
    assert await other.replay("gate", [ids[1]]) == 1              # not the owner: a tombstone
    await eventually(lambda: gate.done == ["b"], what="the replayed task ran")
    assert [d.id for d in await other.dead_letters("gate")] == [ids[0]]
    assert await other.replay("gate") == 1
    await eventually(lambda: sorted(gate.done) == ["a", "b"], what="the rest ran")
    assert await other.dead_letters("gate") == [] and await other.replay("gate") == 0


async def test_the_service_account_replays_by_retracting_and_clears_tombstones(bus_for):
    gate = recorder("gate")
    node = await bus_for("gate")
    await node.serve(gate)
    client = await bus_for()
    first, second = (client.proxy("gate").doomed.cast(x) for x in ("x", "y"))
    await dead(client, "gate", 2)
    gate.release.set()
    assert await client.replay("gate", [first]) == 1              # a tombstone for x
    assert [item_id for _, item_id, d in await raw_items(client, "gate") if d is None] == [first]
    assert await node.replay("gate", [second]) == 1               # the owner: retracted
    await eventually(lambda: sorted(gate.done) == ["x", "y"], what="both replays ran")
    assert await node.dead_letters("gate") == []                  # ... and x's tombstone goes
    loop = asyncio.get_running_loop()
    end = loop.time() + 20
    while await raw_items(client, "gate"):
        assert loop.time() < end, "the owner did not retract the tombstone"
        await asyncio.sleep(0.05)


async def test_a_replayed_letter_that_fails_again_is_buried_again(bus_for):
    gate = recorder("gate")
    await (await bus_for("gate")).serve(gate)
    client = await bus_for()
    sent = client.proxy("gate").doomed.cast("z")
    await dead(client, "gate", 1)
    assert await client.replay("gate") == 1                       # still shut: fails again
    (again,) = await dead(client, "gate", 1)
    assert again.id == sent and again.attempts == 1
    gate.release.set()
    assert await client.replay("gate") == 1
    await eventually(lambda: gate.done == ["z"], what="the second replay ran")


async def test_a_cast_rejected_for_good_is_dropped_with_a_log_line_not_buried(bus_for, caplog):
    gate = recorder("gate")
    node = await bus_for("gate")
    await node.serve(gate)
    client = await bus_for()
    with caplog.at_level(logging.WARNING, logger="vertebra.transports.xmpp"):
        client.proxy("gate").shout.cast("hey")                    # an @rpc method: a cast
        client.proxy("gate").work.cast("after")
        await eventually(lambda: gate.done == ["after"], what="the marker")
        await eventually(lambda: "dropped cast gate.shout" in caplog.text, what="the log line")
    assert await client.dead_letters("gate") == [] and node.transport.stats["buried"] == 0


async def test_dead_letters_of_separate_networks_are_kept_apart(bus_for, xmpp_server):
    gate = recorder("gate")
    await (await bus_for("gate")).serve(gate)
    client = await bus_for()
    client.proxy("gate").doomed.cast(1)
    await dead(client, "gate", 1)
    t = client.transport
    assert node_name(t.opts.room, "gate") == f"vertebra.dead/{t.opts.room}/gate"
    elsewhere = vertebra.connect_async(xmpp_server.url("client", t.opts.room + "-other"))
    await elsewhere.start()
    try:
        assert await elsewhere.dead_letters("gate") == []
    finally:
        await elsewhere.close(linger=0.5)


@pytest.mark.slow
async def test_a_task_whose_workers_keep_dying_is_buried_unrun_as_worker_lost(bus_for, ns, tmp_path):
    client = await bus_for(url_params={"max_redeliveries": "2", "grace": "60"})
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [subprocess.Popen([sys.executable, str(Path(__file__).with_name("worker.py")),
                               ns("calc"), str(log)], cwd=str(Path(__file__).parents[3]))
             for log in logs]
    try:
        await eventually(lambda: all(p.exists() and "ready" in p.read_text() for p in logs),
                         what="both workers up")
        sent = client.proxy("calc").work.cast("poison")
        def holder() -> int | None:
            return next((i for i, p in enumerate(logs)
                         if p.exists() and "started poison" in p.read_text()), None)

        for _ in range(2):                       # whoever holds it dies with it, twice
            await eventually(lambda: holder() is not None, what="a worker took it")
            k = holder()
            assert k is not None
            os.kill(procs[k].pid, signal.SIGKILL)
            procs[k].wait()
            logs[k].unlink()
        survivor = Calc()
        await (await bus_for("calc")).serve(survivor)
        (buried,) = await dead(client, "calc", 1, timeout=60)
        assert (buried.id, buried.error["type"]) == (sent, "WorkerLost")
        assert survivor.done == []               # buried without running it a third time
        assert client.transport.stats["worker_lost"] == 1
    finally:
        for p in procs:
            p.kill()
            p.wait()
