"""Expiries: futures failed a fixed time after they were added, behind one loop timer."""

from __future__ import annotations

import asyncio

import pytest

from vertebra.expiries import Expiries


async def test_each_fails_at_its_own_time_and_one_that_ended_is_left_alone() -> None:
    loop = asyncio.get_running_loop()
    expiries = Expiries(0.2, lambda: TimeoutError("late"))
    first, answered = loop.create_future(), loop.create_future()
    started = {"first": loop.time()}
    expiries.add(first)
    expiries.add(answered)
    await asyncio.sleep(0.1)
    started["third"] = loop.time()
    third = loop.create_future()
    expiries.add(third)
    answered.set_result("in time")
    ended: dict[str, float] = {}
    for name, fut in (("first", first), ("third", third)):
        fut.add_done_callback(lambda _, name=name: ended.setdefault(name, loop.time()))
    for fut in (first, third):
        with pytest.raises(TimeoutError, match="late"):
            await asyncio.wait_for(fut, 10)
    assert answered.result() == "in time"
    assert ended["first"] <= ended["third"]
    for name in ("first", "third"):                 # not one before its own time
        assert ended[name] >= started[name] + 0.2 - 0.002
    assert len(expiries) == 0


async def test_waits_that_ended_do_not_pile_up_until_the_timer_goes_off() -> None:
    loop = asyncio.get_running_loop()
    expiries = Expiries(600, TimeoutError)
    for _ in range(1000):                   # each answered before the next is sent
        fut = loop.create_future()
        expiries.add(fut)
        fut.set_result(None)
    assert len(expiries) == 1               # only the last, not a thousand
