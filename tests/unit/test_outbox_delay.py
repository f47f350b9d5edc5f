"""Delayed messages in the outbox: held until ``not_before``, never sent early, spooled.

"Not before" is checked against the recorded send times (a correctness check, not a
speed requirement); waiting is ``eventually``-style polling.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time

from tests.conformance.util import eventually
from vertebra.dispatch.outbox import Outbox
from vertebra.dispatch.spool import Spool
from vertebra.wire.envelope import Envelope

FAR = 3600.0   # seconds ahead: "not due during this test"


def cast(i: int, not_before: float | None = None, service: str = "s") -> Envelope:
    return Envelope("cast", service=service, method="m", args=[i], not_before=not_before)


class Recorder:
    """A send that records what the transport took, and when (wall clock)."""

    def __init__(self) -> None:
        self.sent: list[int] = []
        self.at: dict[int, float] = {}

    async def __call__(self, e: Envelope) -> None:
        self.at[e.args[0]] = time.time()
        self.sent.append(e.args[0])


async def test_a_delayed_message_is_held_until_due_and_never_sent_early():
    rec = Recorder()
    box = Outbox(rec)
    box.start()
    due = time.time() + 0.3
    assert box.put(cast(1, due))
    assert box.put(cast(2))
    assert box.held == 1 and len(box) == 2
    await eventually(lambda: rec.sent == [2], what="the plain cast goes at once")
    assert box.held == 1                            # the delayed one is still held
    await eventually(lambda: rec.sent == [2, 1], what="the delayed cast goes once due")
    assert rec.at[1] >= due                         # not before its not_before
    assert box.held == 0 and len(box) == 0
    assert box.counts == {**box.counts, "accepted": 2, "delayed": 1, "sent": 2}
    await box.stop()


async def test_held_messages_go_in_not_before_order_then_arrival_order():
    rec = Recorder()
    box = Outbox(rec, window=4)                     # one send in flight per destination
    box.start()
    base = time.time() + 0.3
    box.put(cast(3, base + 0.2))
    box.put(cast(1, base))
    box.put(cast(2, base + 0.1))
    for i in (10, 11, 12):                          # the same not_before: arrival order
        box.put(cast(i, base + 0.3))
    await eventually(lambda: len(rec.sent) == 6)
    assert rec.sent == [1, 2, 3, 10, 11, 12]
    for i, due in ((1, base), (2, base + 0.1), (3, base + 0.2), (10, base + 0.3)):
        assert rec.at[i] >= due
    await box.stop()


async def test_an_earlier_message_put_later_is_not_kept_behind_the_timer_of_a_later_one():
    rec = Recorder()
    box = Outbox(rec)
    box.start()
    box.put(cast(1, time.time() + FAR))
    await asyncio.sleep(0.05)                       # the sender now sleeps on the far timer
    due = time.time() + 0.2
    await asyncio.to_thread(box.put, cast(2, due))  # from another thread, too
    await eventually(lambda: rec.sent == [2], what="the timer is re-armed for the earlier one")
    assert rec.at[2] >= due
    assert box.held == 1
    await box.stop()


async def test_not_before_in_the_past_or_without_holding_goes_straight_through():
    rec = Recorder()
    box = Outbox(rec)
    box.start()
    box.put(cast(1, time.time() - 1))               # already due
    await eventually(lambda: rec.sent == [1])
    assert box.counts["delayed"] == 0

    passing = Recorder()
    broker_holds = Outbox(passing, hold_delayed=False)   # the transport holds delayed ones
    broker_holds.start()
    due = time.time() + FAR
    broker_holds.put(cast(2, due))
    assert broker_holds.held == 0
    await eventually(lambda: passing.sent == [2])
    assert passing.at[2] < due                       # handed over long before due
    assert broker_holds.counts["delayed"] == 0
    await box.stop()
    await broker_holds.stop()


async def test_held_messages_take_room_drop_newest():
    box = Outbox(Recorder(), maxsize=2, policy="drop_newest")
    assert box.put(cast(1, time.time() + FAR))
    assert box.put(cast(2, time.time() + FAR))
    assert box.put(cast(3)) is False                 # full of held messages
    assert box.counts["dropped"] == 1
    assert len(box) == 2 and box.held == 2


async def test_drop_oldest_drops_the_head_of_the_line(tmp_path):
    spool = Spool(str(tmp_path / "spool.db"))
    box = Outbox(Recorder(), maxsize=2, policy="drop_oldest", spool=spool)
    now = time.time()
    box.put(cast(1, now + FAR))
    box.put(cast(2, now + FAR / 2))                  # held, due first
    box.put(cast(3))                                 # no due one: the held one due first goes
    assert [e.args[0] for _, e in spool.pending()] == [1, 3]
    box.put(cast(4))                                 # now the oldest due one goes
    assert [e.args[0] for _, e in spool.pending()] == [1, 4]
    assert box.counts["dropped"] == 2
    spool.close()


async def test_max_age_counts_from_the_due_time_not_from_put():
    clock = [0.0]
    rec = Recorder()
    box = Outbox(rec, max_age=25, clock=lambda: clock[0])
    box.start()
    due = time.time() + 0.2
    box.put(cast(1, due))
    clock[0] = 1000.0                                # long past max_age since put ...
    await eventually(lambda: rec.sent == [1])        # ... but not since it became due
    assert box.counts == {**box.counts, "sent": 1, "expired": 0}
    await box.stop()


async def test_max_age_still_applies_after_the_due_time():
    clock = [0.0]

    async def down(e: Envelope) -> None:
        clock[0] += 10
        raise ConnectionError("down")

    box = Outbox(down, max_age=25, clock=lambda: clock[0], sleep=lambda s: asyncio.sleep(0))
    box.start()
    box.put(cast(1, time.time() + 0.1))
    await eventually(lambda: box.counts["expired"] == 1)
    assert box.counts["sent"] == 0 and box.counts["retries"] == 3   # failed at 10, 20, 30
    await box.stop()


async def test_flush_does_not_wait_for_held_messages_and_stop_reports_them():
    rec = Recorder()
    box = Outbox(rec)
    box.start()
    box.put(cast(1, time.time() + FAR))
    box.put(cast(2))
    assert await box.flush(5) == 0                   # the due one sent; the held one not waited for
    assert rec.sent == [2]
    assert box.held == 1 and len(box) == 1
    assert await box.stop() == 1                     # left held (lost: no spool)


async def test_flush_waits_for_a_held_message_that_is_already_due():
    rec = Recorder()

    async def slow(e: Envelope) -> None:            # the send takes a while
        await asyncio.sleep(0.05)
        await rec(e)

    box = Outbox(slow)
    due = time.time() + 0.05
    box.put(cast(1, due))                            # not started: nothing moves it
    await eventually(lambda: time.time() > due)
    box.start()
    assert await box.flush(5) == 0                   # due: it is waited for, and sent
    assert rec.sent == [1] and rec.at[1] >= due
    assert await box.stop() == 0


async def test_held_messages_stay_in_the_spool_at_stop_and_are_held_again_after_restore(tmp_path):
    path = str(tmp_path / "spool.db")
    first = Outbox(Recorder(), spool=Spool(path))
    first.start()
    due = time.time() + 0.4
    first.put(cast(1, due))
    first.put(cast(2))
    assert await first.flush(5) == 0
    assert await first.stop() == 1                   # kept in the spool for the next start
    assert first.spool is not None and len(first.spool) == 1
    first.spool.close()

    rec = Recorder()
    second = Outbox(rec, spool=Spool(path))
    assert second.restore() == 1
    assert second.held == 1                          # held again, not sent at once
    second.start()
    await eventually(lambda: rec.sent == [1])
    assert rec.at[1] >= due
    assert second.spool is not None
    await eventually(lambda: len(second.spool) == 0, what="struck off once the transport has it")
    await second.stop()
    second.spool.close()


async def test_restored_delayed_messages_pass_through_where_the_transport_holds_them(tmp_path):
    path = str(tmp_path / "spool.db")
    first = Outbox(Recorder(), spool=Spool(path))
    due = time.time() + FAR
    first.put(cast(1, due))
    assert first.spool is not None
    first.spool.close()

    rec = Recorder()
    second = Outbox(rec, spool=Spool(path), hold_delayed=False)
    assert second.restore() == 1 and second.held == 0
    second.start()
    assert await second.flush(5) == 0
    assert rec.sent == [1] and rec.at[1] < due
    await second.stop()
    assert second.spool is not None
    second.spool.close()


SENDER = textwrap.dedent("""
    import asyncio, sys, time
    from vertebra.dispatch.outbox import Outbox
    from vertebra.dispatch.spool import Spool
    from vertebra.wire.envelope import Envelope

    async def never(env):
        await asyncio.Event().wait()        # a transport that never takes anything

    async def main():
        box = Outbox(never, spool=Spool(sys.argv[1]))
        box.start()
        due = float(sys.argv[2])
        for i in range(5):
            box.put(Envelope("task", service="s", method="m", args=[i], not_before=due))
        print("accepted", box.held, flush=True)
        await asyncio.sleep(60)

    asyncio.run(main())
""")


async def test_a_held_message_survives_kill_9_and_is_still_not_sent_early(tmp_path):
    path = str(tmp_path / "spool.db")
    due = time.time() + 1.0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", SENDER, path, repr(due)],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = await asyncio.to_thread(proc.stdout.readline)
        assert line.split() == ["accepted", "5"]
    finally:
        proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(proc.wait, 30)
        proc.stdout.close()

    rec = Recorder()
    box = Outbox(rec, spool=Spool(path), window=4)
    assert box.restore() == 5
    box.start()
    await eventually(lambda: len(rec.sent) == 5)
    assert rec.sent == [0, 1, 2, 3, 4]               # arrival order, all of them once due
    assert min(rec.at.values()) >= due
    await box.stop()
    assert box.spool is not None
    await eventually(lambda: len(box.spool) == 0)
    box.spool.close()
