"""``delay`` / ``at`` (never run early) and ``priority`` (higher first), per call:
``proxy.m.options(delay=, at=, priority=)``.  The same on every transport; priorities are
skipped only where ``capabilities.priorities`` says the transport cannot order a queue."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from .services import Calc, Clock, Ranked
from .util import eventually, wait_sync


async def _clock(open_bus):
    node = Clock()
    await (await open_bus("clock")).serve(node)
    return node, await open_bus("client")


async def test_a_delayed_cast_runs_no_earlier_than_its_delay(open_bus):
    node, client = await _clock(open_bus)
    before = time.time()
    assert client.proxy("clock").stamp.options(delay=1.0).cast("later")
    await eventually(lambda: node.at("later") is not None, timeout=30, what="the delayed task ran")
    assert node.at("later") >= before + 1.0


@pytest.mark.parametrize("zone", ["naive-local", "utc"])
async def test_a_cast_at_a_datetime_runs_no_earlier_than_it(open_bus, zone):
    node, client = await _clock(open_bus)
    if zone == "utc":
        at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1.0)
    else:
        at = dt.datetime.now() + dt.timedelta(seconds=1.0)      # naive: local time
    assert client.proxy("clock").stamp.options(at=at).cast("at")
    await eventually(lambda: node.at("at") is not None, timeout=30, what="the task ran")
    assert node.at("at") >= at.timestamp()


async def test_a_waiting_delayed_task_does_not_hold_up_the_queue(open_bus):
    node, client = await _clock(open_bus)                  # Clock.concurrency == 1
    before = time.time()
    stamp = client.proxy("clock").stamp
    stamp.options(delay=3.0).cast("delayed")
    stamp.cast("prompt")
    await eventually(lambda: node.at("delayed") is not None, timeout=30, what="both ran")
    assert [label for label, _ in node.ran] == ["prompt", "delayed"]
    assert node.at("delayed") >= before + 3.0


async def test_a_delayed_call_is_answered_no_earlier_than_its_delay(open_bus):
    _, client = await _clock(open_bus)
    clock = client.proxy("clock", timeout=10)
    before, start = time.time(), time.monotonic()
    ran_at = await clock.now.options(delay=0.5)()
    assert time.monotonic() - start >= 0.5
    assert ran_at >= before + 0.5
    assert await clock.add.options(delay=0.2)(2, 3) == 5


async def test_the_timeout_of_a_delayed_call_counts_from_when_it_is_due(open_bus):
    _, client = await _clock(open_bus)
    assert await client.proxy("clock").add.options(delay=1.5, timeout=1.0)(2, 3) == 5


async def test_a_delayed_cast_at_a_past_datetime_runs_at_once(open_bus):
    node, client = await _clock(open_bus)
    at = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    assert client.proxy("clock").stamp.options(at=at).cast("past")
    await eventually(lambda: node.at("past") is not None, timeout=30, what="the task ran")


async def test_close_does_not_wait_for_messages_not_yet_due(open_bus):
    await _clock(open_bus)
    sender = await open_bus("client2")
    sender.proxy("clock").stamp.options(delay=600).cast("far-future")
    start = time.monotonic()
    await sender.close(linger=30)
    assert time.monotonic() - start < 20, "close() waited for a message due in 10 minutes"


def test_delay_through_the_sync_api(sync_bus):
    node = Clock()
    sync_bus("clock").serve(node)
    client = sync_bus("client")
    before = time.time()
    assert client.proxy("clock").stamp.options(delay=0.5).cast("sync")
    assert client.proxy("clock").now.options(delay=0.5)() >= before + 0.5
    wait_sync(lambda: node.at("sync") is not None, timeout=30, what="the delayed task ran")
    assert node.at("sync") >= before + 0.5


# -- priority -------------------------------------------------------------------------

PLAN = [("t0", 0), ("t1", 5), ("t2", 9), ("t3", None), ("t4", 5), ("t5", 1), ("t6", 9),
        ("t7", 0), ("t8", 5), ("t9", 3)]       # None: no priority given (= 0)


async def test_queued_tasks_run_highest_priority_first_fifo_within_one(open_bus):
    client = await open_bus("client")
    if not client.transport.capabilities.priorities:
        pytest.skip("capability priorities=False: the transport cannot order a queue by priority")
    first = await open_bus("ranked")
    await first.serve(Ranked())          # the service exists (its queue, where there is one) ...
    await first.stop_serving(timeout=5)  # ... and nobody serves it while the tasks queue up
    run = client.proxy("ranked").run
    for label, priority in PLAN:
        assert (run if priority is None else run.options(priority=priority)).cast(label)
    assert await client.flush(30) == 0
    # A round trip from the same client after the casts: the server has queued all ten
    # before the worker below asks for the first.
    await (await open_bus("calc")).serve(Calc())
    assert await client.proxy("calc", timeout=10).add(1, 1) == 2
    ranked = Ranked()
    await (await open_bus("ranked")).serve(ranked)
    await eventually(lambda: len(ranked.order) == len(PLAN), what=f"all ran ({ranked.order})")
    order = sorted(range(len(PLAN)), key=lambda i: (-(PLAN[i][1] or 0), i))
    assert ranked.order == [PLAN[i][0] for i in order]


# -- validation -----------------------------------------------------------------------


async def test_bad_delay_at_and_priority_are_refused_when_bound(open_bus):
    client = await open_bus()
    add = client.proxy("clock").add
    now = dt.datetime.now(dt.UTC)
    bad = [dict(delay=-1), dict(delay=float("nan")), dict(priority=10), dict(priority=-1),
           dict(priority=1.5), dict(priority="5"), dict(delay=1, at=now), dict(at="tomorrow"),
           dict(delay="1")]
    for options in bad:
        with pytest.raises((ValueError, TypeError)):
            add.options(**options)
    for options in (dict(delay=0), dict(delay=2.5), dict(at=now), dict(priority=0), dict(priority=9)):
        add.options(**options)                     # these are fine
