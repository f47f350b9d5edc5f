"""Cancellation, node-side deadlines and the not_before guard, driven through NodeRuntime:
a cancel stops a running handler or keeps one from ever starting; a deadline stops an
async handler; a message early for its not_before waits without a slot and drains."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from tests.conformance.util import eventually
from tests.unit.nodeharness import control, deliver, message, runtime
from vertebra import Node, rpc, task
from vertebra.nodes.context import current
from vertebra.nodes.control import Cancel, Credit, Revoked, parse_control
from vertebra.wire.deadletter import ATTEMPT_HEADER


class Slow(Node):
    name = "slow"
    retry_delay = 0.0

    def __init__(self) -> None:
        self.started: list[str] = []
        self.cancelled: list[str] = []
        self.finished: list[str] = []
        self.release = threading.Event()
        self.started_at: dict[str, float] = {}

    def _begin(self, label: str) -> None:
        self.started.append(label)
        self.started_at[label] = time.time()

    @rpc
    async def nap(self, label: str, seconds: float = 30.0) -> str:
        self._begin(label)
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            self.cancelled.append(label)
            raise
        self.finished.append(label)
        return label

    @rpc
    async def stubborn(self, label: str) -> str:
        """Swallows the CancelledError and returns: still answered as cancelled."""
        self._begin(label)
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled.append(label)
        await asyncio.sleep(0)            # the task is not left cancelling: awaiting works
        return "finished anyway"

    @rpc
    def poll(self, label: str, seconds: float = 30.0) -> bool:
        self._begin(label)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if current().cancelled:
                self.cancelled.append(label)
                return True
            time.sleep(0.01)
        self.finished.append(label)
        return False

    @rpc
    def blocked(self, label: str) -> str:
        self._begin(label)
        self.release.wait(30)
        self.finished.append(label)
        return label

    @task
    async def job(self, label: str) -> None:
        await self.nap(label)

    @task
    def sjob(self, label: str) -> None:
        self.poll(label)

    @task
    def fails(self, label: str) -> None:
        self._begin(label)
        raise LookupError(label)


def error_of(inc) -> tuple[str, str]:
    final = inc.final
    assert final is not None and final.kind == "error" and final.error is not None, inc.answers
    return final.error["code"], final.error["type"]


async def test_a_cancel_gives_a_running_async_handler_cancelled_error():
    node = Slow()
    async with runtime(node) as rt:
        inc = await deliver(rt, message("slow", "nap", "a"))
        assert node.started == ["a"]
        await control(rt, {"op": "cancel", "id": inc.envelope.id})
        await eventually(lambda: inc.settled)
        assert node.cancelled == ["a"] and node.finished == []
        assert error_of(inc) == ("cancelled", "Cancelled") and inc.acked
        assert rt.counts["cancelled"] == 1 and rt.counts["errors"] == 0
        after = await deliver(rt, message("slow", "nap", "b", 0))      # it serves on
        await eventually(lambda: after.settled)
        assert after.final is not None and after.final.result == "b"


async def test_a_sync_handler_sees_current_cancelled():
    node = Slow()
    async with runtime(node) as rt:
        inc = await deliver(rt, message("slow", "poll", "s"))
        await eventually(lambda: node.started == ["s"])
        assert rt.cancel(inc.envelope.id) is True
        await eventually(lambda: inc.settled)
        assert node.cancelled == ["s"] and node.finished == []
        assert error_of(inc) == ("cancelled", "Cancelled")


async def test_a_handler_that_swallows_the_cancel_is_still_answered_cancelled():
    node = Slow()
    async with runtime(node) as rt:
        inc = await deliver(rt, message("slow", "stubborn", "x"))
        await control(rt, {"op": "cancel", "id": inc.envelope.id})
        await eventually(lambda: inc.settled)
        assert node.cancelled == ["x"] and error_of(inc) == ("cancelled", "Cancelled")
        after = await deliver(rt, message("slow", "nap", "y", 0))
        await eventually(lambda: after.settled)
        assert after.final is not None and after.final.result == "y"


@pytest.mark.parametrize("method", ["job", "sjob"])
async def test_a_cancelled_task_is_acked_not_retried_not_buried(method):
    node = Slow()
    async with runtime(node) as rt:
        sent = []
        real_send = rt.bus.transport.send

        async def send(env):
            sent.append(env)
            await real_send(env)
        rt.bus.transport.send = send           # a retry would be re-sent through here
        inc = await deliver(rt, message("slow", method, "t", kind="task", timeout=None))
        await eventually(lambda: node.started == ["t"])
        await control(rt, {"op": "cancel", "id": inc.envelope.id})
        await eventually(lambda: inc.settled)
        assert inc.acked and inc.rejected is None and inc.answers == []
        assert node.cancelled == ["t"] and sent == []
        assert rt.counts["cancelled"] == 1 and rt.counts["retried"] == rt.counts["buried"] == 0


async def test_an_id_cancelled_before_it_comes_never_starts():
    node = Slow()
    async with runtime(node) as rt:
        call = message("slow", "nap", "early-call")
        job = message("slow", "job", "early-task", kind="task", timeout=None)
        for env in (call, job):
            await control(rt, {"op": "cancel", "id": env.id})
        assert len(rt.revoked) == 2
        a, b = await deliver(rt, call), await deliver(rt, job)
        await eventually(lambda: a.settled and b.settled)
        assert node.started == []
        assert error_of(a) == ("cancelled", "Cancelled") and a.acked
        assert b.acked and b.answers == [] and rt.counts["cancelled"] == 2


async def test_revoke_window_zero_remembers_nothing():
    class Forgetful(Slow):
        name = "slow"
        revoke_window = 0.0

    node = Forgetful()
    async with runtime(node) as rt:
        env = message("slow", "nap", "late", 0)
        await control(rt, {"op": "cancel", "id": env.id})
        inc = await deliver(rt, env)
        await eventually(lambda: inc.settled)
        assert node.started == ["late"] and inc.final is not None and inc.final.result == "late"


def test_revoked_ids_expire_and_are_bounded():
    now = [0.0]
    r = Revoked(10.0, max_entries=3, clock=lambda: now[0])
    r.add("a")
    now[0] = 5.0
    r.add("b")
    assert "a" in r and "b" in r and "c" not in r and 7 not in r
    now[0] = 11.0
    assert "a" not in r and "b" in r            # a's window passed
    r.add("c")
    assert len(r) == 2                          # a was dropped on the way
    r.add("d")
    r.add("e")
    assert len(r) == 3 and "b" not in r and all(x in r for x in "cde")   # oldest dropped first
    r.add("c")                                  # cancelled again: remembered from now
    r.add("f")
    assert "c" in r and "d" not in r


def test_control_payloads_are_read_strictly():
    assert parse_control({"op": "cancel", "id": "m1"}) == Cancel("m1")
    assert parse_control({"op": "credit", "id": "m1", "upto": 0}) == Credit("m1", 0)
    for bad in (None, 1, "x", {"op": "cancel"}, {"op": "cancel", "id": ""}, {"id": "m"},
                {"op": "credit", "id": "m", "upto": 1.5}, {"op": "credit", "id": "m", "upto": False},
                {"op": "pause", "id": "m"}):
        assert parse_control(bad) is None, bad


async def test_a_cancel_stops_the_wait_for_a_slot():
    class One(Slow):
        name = "slow"
        concurrency = 1

    node = One()
    async with runtime(node) as rt:
        busy = await deliver(rt, message("slow", "blocked", "busy"))
        queued = await deliver(rt, message("slow", "nap", "queued"))
        await eventually(lambda: node.started == ["busy"])
        await control(rt, {"op": "cancel", "id": queued.envelope.id})
        await eventually(lambda: queued.settled)
        assert error_of(queued) == ("cancelled", "Cancelled")
        assert node.started == ["busy"] and not busy.settled     # the slot was never taken
        node.release.set()
        await eventually(lambda: busy.settled)
        after = await deliver(rt, message("slow", "nap", "after", 0))   # the slot is free again
        await eventually(lambda: after.settled)
        assert after.final is not None and after.final.result == "after"


async def test_a_deadline_that_passes_cancels_an_async_handler_with_a_timeout():
    node = Slow()
    async with runtime(node) as rt:
        inc = await deliver(rt, message("slow", "nap", "d", timeout=0.2))
        await eventually(lambda: inc.settled)
        assert node.cancelled == ["d"] and error_of(inc) == ("timeout", "CallTimeout")
        assert rt.counts["expired"] == 1 and rt.counts["cancelled"] == 0


async def test_a_sync_handler_sees_its_deadline_as_cancelled():
    node = Slow()
    async with runtime(node) as rt:
        inc = await deliver(rt, message("slow", "poll", "d", timeout=0.2))
        await eventually(lambda: inc.settled)
        assert node.cancelled == ["d"] and error_of(inc) == ("timeout", "CallTimeout")


async def test_a_cancellation_that_is_not_ours_is_not_swallowed():
    node = Slow()
    async with runtime(node) as rt:
        inc = await deliver(rt, message("slow", "nap", "shutdown"))
        await eventually(lambda: node.started == ["shutdown"])
        await asyncio.sleep(0)    # the task's first step (on 3.11 eager.py forwards cancels only after it)
        (t,) = rt._running
        t.cancel()                                       # say, the bus shutting down
        with pytest.raises(asyncio.CancelledError):
            await t
        assert t.cancelled() and node.cancelled == ["shutdown"]
        assert inc.answers == [] and not inc.settled     # left to the transport to requeue


async def test_failing_tasks_still_retry():
    node = Slow()
    async with runtime(node) as rt:
        inc = await deliver(rt, message("slow", "fails", "r", kind="task", timeout=None))
        await eventually(lambda: inc.settled)
        assert inc.acked and rt.counts["retried"] == 1 and rt.counts["cancelled"] == 0
        last = message("slow", "fails", "r", kind="task", timeout=None)
        last.headers[ATTEMPT_HEADER] = "3"
        dead = await deliver(rt, last)
        await eventually(lambda: dead.settled)
        assert dead.rejected is not None and dead.rejected[0] is False and rt.counts["buried"] == 1


async def test_a_message_early_for_its_not_before_waits_without_a_slot():
    class One(Slow):
        name = "slow"
        concurrency = 1

    node = One()
    async with runtime(node) as rt:
        due = time.time() + 0.5
        early = await deliver(rt, message("slow", "nap", "early", 0, not_before=due, timeout=60))
        assert node.started == []
        now = await deliver(rt, message("slow", "nap", "now", 0))     # the slot is free
        await eventually(lambda: now.settled)
        assert node.started == ["now"] and not early.settled
        await eventually(lambda: early.settled)
        assert early.final is not None and early.final.result == "early"
        assert node.started_at["early"] >= due                          # never before it


async def test_a_cancel_reaches_a_message_waiting_for_its_not_before():
    node = Slow()
    async with runtime(node) as rt:
        job = await deliver(rt, message("slow", "job", "later", kind="task", timeout=None,
                                        not_before=time.time() + 3600))
        await control(rt, {"op": "cancel", "id": job.envelope.id})
        await eventually(lambda: job.settled)
        assert job.acked and node.started == [] and rt.counts["cancelled"] == 1


async def test_drain_sends_messages_not_yet_due_back_at_once():
    node = Slow()
    async with runtime(node) as rt:
        job = await deliver(rt, message("slow", "job", "later", kind="task", timeout=None,
                                        not_before=time.time() + 3600))
        assert await rt.drain(30) == 0
        assert job.rejected == (True, None) and not job.acked and node.started == []
        late = await deliver(rt, message("slow", "job", "later2", kind="task", timeout=None,
                                         not_before=time.time() + 3600))
        await eventually(lambda: late.settled)         # while draining: back at once
        assert late.rejected == (True, None)


async def test_a_sync_handler_cancelled_while_queued_for_a_thread_never_starts():
    class OneThread(Slow):
        name = "slow"
        max_workers = 1

    node = OneThread()
    async with runtime(node) as rt:
        busy = await deliver(rt, message("slow", "blocked", "busy"))
        await eventually(lambda: node.started == ["busy"])
        queued = await deliver(rt, message("slow", "poll", "queued"))    # has a slot, no thread
        await control(rt, {"op": "cancel", "id": queued.envelope.id})
        node.release.set()
        await eventually(lambda: queued.settled and busy.settled)
        assert error_of(queued) == ("cancelled", "Cancelled") and node.started == ["busy"]
