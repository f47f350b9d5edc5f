"""Cancellation that reaches the handler: a caller that gives up (task.cancel(), a sync
future's cancel(), a deadline) cancels the handler on the node; ``bus.cancel(service, id)``
cancels a cast or task, running or not yet started.  The same on every transport."""

from __future__ import annotations

import asyncio
import inspect

import pytest

import vertebra

from .services import Lane, Sleeper
from .util import eventually, wait_sync


async def _sleeper(open_bus) -> tuple[Sleeper, vertebra.AsyncBus]:
    node = Sleeper()
    await (await open_bus("sleeper")).serve(node)
    return node, await open_bus("client")


async def _cancel(bus: vertebra.AsyncBus, service: str, message_id: str) -> None:
    """``bus.cancel`` of the async bus (a plain method or a coroutine: either is fine)."""
    done = bus.cancel(service, message_id)
    if inspect.isawaitable(done):
        await done


async def test_cancelling_the_awaiting_task_cancels_an_async_handler(open_bus):
    node, client = await _sleeper(open_bus)
    p = client.proxy("sleeper", timeout=60)
    call = asyncio.ensure_future(p.nap("a"))
    await eventually(lambda: node.started == ["a"], what="the handler started")
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await eventually(lambda: node.cancelled == ["a"], what="the handler got CancelledError")
    assert node.finished == []
    assert await p.nap("after", 0) == "after"          # the node serves on


async def test_cancelling_the_awaiting_task_cancels_a_sync_handler(open_bus):
    node, client = await _sleeper(open_bus)
    p = client.proxy("sleeper", timeout=60)
    call = asyncio.ensure_future(p.poll("b"))
    await eventually(lambda: node.started == ["b"], what="the handler started")
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await eventually(lambda: node.cancelled == ["b"], what="current().cancelled became True")
    assert node.finished == []
    assert await p.poll("after", 0) is False


async def test_a_passed_deadline_cancels_an_async_handler(open_bus):
    node, client = await _sleeper(open_bus)
    with pytest.raises(vertebra.CallTimeout):
        await client.proxy("sleeper").nap.options(timeout=0.5)("late")
    await eventually(lambda: node.cancelled == ["late"], what="the deadline cancelled the handler")
    assert node.finished == []


async def test_a_passed_deadline_cancels_a_sync_handler(open_bus):
    node, client = await _sleeper(open_bus)
    with pytest.raises(vertebra.CallTimeout):
        await client.proxy("sleeper").poll.options(timeout=0.5)("late")
    await eventually(lambda: node.cancelled == ["late"], what="current().cancelled became True")
    assert node.finished == []


async def test_bus_cancel_stops_a_running_task_which_is_then_not_retried(open_bus):
    node, client = await _sleeper(open_bus)
    p = client.proxy("sleeper")
    async_id = p.nap_task.cast("async-task")
    sync_id = p.poll_task.cast("sync-task")
    assert async_id and sync_id
    await eventually(lambda: sorted(node.started) == ["async-task", "sync-task"], what="both running")
    await _cancel(client, "sleeper", async_id)
    await _cancel(client, "sleeper", sync_id)
    await eventually(lambda: sorted(node.cancelled) == ["async-task", "sync-task"],
                     what="both handlers cancelled")
    p.mark.cast("marker")
    await eventually(lambda: "marker" in node.finished, what="the marker task ran")
    assert node.runs["async-task"] == node.runs["sync-task"] == 1      # acked, not retried
    assert await client.dead_letters("sleeper") == []                   # ... nor buried


async def test_bus_cancel_of_a_queued_task_means_it_never_runs(open_bus):
    lane = Lane()
    node_bus = await open_bus("lane")
    await node_bus.serve(lane)
    # The cancel travels as an event; this listener, on the node's own bus, shows when it
    # has reached the node (so that the blocker is released only after that).
    controls: list[object] = []
    await node_bus.subscribe("_vertebra.control.lane", lambda topic, payload: controls.append(payload))
    client = await open_bus("client")
    p = client.proxy("lane")
    p.block.cast("blocker")
    await eventually(lambda: lane.ran == ["blocker"], what="the blocker holds the only slot")
    victim = p.job.cast("victim")    # queued: in the broker, the hub, or (xmpp) the sender
    assert victim
    await _cancel(client, "lane", victim)
    await eventually(lambda: any(isinstance(c, dict) and c.get("id") == victim for c in controls),
                     what="the cancel reached the node's bus")
    lane.release.set()
    p.job.cast("marker")
    await eventually(lambda: "marker" in lane.ran, what="the marker, queued after the victim, ran")
    assert lane.ran == ["blocker", "marker"]


# -- the sync API ----------------------------------------------------------------------


def test_cancelling_a_sync_future_cancels_the_handler(sync_bus):
    node = Sleeper()
    sync_bus("sleeper").serve(node)
    p = sync_bus("client").proxy("sleeper", timeout=60)
    fut = p.nap.future("async-handler")
    wait_sync(lambda: node.started == ["async-handler"], what="the handler started")
    assert fut.cancel()
    wait_sync(lambda: node.cancelled == ["async-handler"], what="the handler got CancelledError")
    fut = p.poll.future("sync-handler")
    wait_sync(lambda: node.started[-1:] == ["sync-handler"], what="the handler started")
    assert fut.cancel()
    wait_sync(lambda: node.cancelled[-1:] == ["sync-handler"], what="current().cancelled became True")
    assert node.finished == []
    assert p.nap("after", 0) == "after"


def test_sync_bus_cancel_stops_a_running_task(sync_bus):
    node = Sleeper()
    sync_bus("sleeper").serve(node)
    client = sync_bus("client")
    mid = client.proxy("sleeper").poll_task.cast("t")
    wait_sync(lambda: node.started == ["t"], what="the task started")
    client.cancel("sleeper", mid)
    wait_sync(lambda: node.cancelled == ["t"], what="current().cancelled became True")
    assert node.finished == []
