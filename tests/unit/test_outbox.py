"""The outbox: bounded, never blocking by default, counting every drop, retrying with backoff."""

from __future__ import annotations

import asyncio
import threading

import pytest

from vertebra.backoff import Backoff
from vertebra.dispatch.outbox import Outbox
from vertebra.wire.envelope import Envelope
from vertebra.wire.errors import ProtocolError


def env(i: int) -> Envelope:
    return Envelope("cast", service="s", method="m", args=[i])


@pytest.mark.parametrize(("policy", "kept"), [("drop_newest", [0, 1, 2]), ("drop_oldest", [2, 3, 4])])
async def test_overflow_policies_drop_and_count(policy, kept):
    sent: list[int] = []

    async def send(e: Envelope) -> None:
        sent.append(e.args[0])

    box = Outbox(send, maxsize=3, policy=policy)
    results = [box.put(env(i)) for i in range(5)]    # not started yet: nothing drains
    assert results.count(False) == (2 if policy == "drop_newest" else 0)
    assert box.counts["dropped"] == 2
    box.start()
    assert await box.flush(5) == 0
    assert sent == kept
    await box.stop()


async def test_block_policy_waits_then_gives_up_and_counts():
    box = Outbox(lambda e: asyncio.sleep(0), maxsize=1, policy="block", block_timeout=0.05)
    assert box.put(env(0))
    ok = await asyncio.to_thread(box.put, env(1))    # another thread: it may block, then gives up
    assert ok is False
    assert box.counts["dropped"] == 1
    assert box.put(env(2)) is False                   # on the loop thread it never blocks


async def test_block_policy_proceeds_when_room_appears():
    sent: list[int] = []

    async def send(e: Envelope) -> None:
        sent.append(e.args[0])

    box = Outbox(send, maxsize=1, policy="block", block_timeout=10)
    assert box.put(env(0))
    box.start()
    ok = await asyncio.to_thread(box.put, env(1))
    assert ok is True
    assert await box.flush(5) == 0
    assert sent == [0, 1]
    await box.stop()


async def test_transport_errors_are_retried_with_backoff_until_sent():
    failures = {"left": 3}
    sent: list[int] = []
    delays: list[float] = []

    async def send(e: Envelope) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise ConnectionError("down")
        sent.append(e.args[0])

    async def sleep(seconds: float) -> None:
        delays.append(seconds)

    box = Outbox(send, backoff=Backoff(base=1.0, cap=4.0, jitter=lambda: 1.0), sleep=sleep)
    box.start()
    box.put(env(7))
    assert await box.flush(5) == 0
    assert sent == [7]
    assert box.counts["retries"] == 3
    assert delays == [1.0, 2.0, 4.0]   # exponential (jitter pinned to 1.0), never really slept
    await box.stop()


async def test_messages_past_max_age_are_given_up_and_counted():
    now = {"t": 0.0}

    async def send(e: Envelope) -> None:
        now["t"] += 10
        raise ConnectionError("down")

    box = Outbox(send, max_age=25, clock=lambda: now["t"], sleep=lambda s: asyncio.sleep(0))
    box.start()
    box.put(env(1))
    assert await box.flush(5) == 0
    assert box.counts["expired"] == 1
    assert box.counts["sent"] == 0
    await box.stop()


async def test_unsendable_messages_are_counted_as_failed_not_retried():
    async def send(e: Envelope) -> None:
        raise ProtocolError("too big")

    box = Outbox(send)
    box.start()
    box.put(env(1))
    assert await box.flush(5) == 0
    assert box.counts == {**box.counts, "failed": 1, "retries": 0, "sent": 0}
    await box.stop()


async def test_put_from_many_threads_loses_nothing():
    sent: list[int] = []

    async def send(e: Envelope) -> None:
        sent.append(e.args[0])

    box = Outbox(send, maxsize=100_000)
    box.start()

    def producer(base: int) -> None:
        for i in range(2000):
            box.put(env(base + i))

    threads = [threading.Thread(target=producer, args=(k * 10_000,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        await asyncio.to_thread(t.join)
    assert await box.flush(10) == 0
    assert sorted(sent) == sorted(k * 10_000 + i for k in range(4) for i in range(2000))
    await box.stop()


def test_backoff_grows_and_caps():
    b = Backoff(base=0.1, cap=1.0, jitter=lambda: 1.0)
    assert [b.delay(n) for n in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert Backoff(jitter=lambda: 0.0).delay(3) == 0.0


def test_a_burst_of_drops_is_counted_in_full_but_logged_once(caplog):
    box = Outbox(lambda e: asyncio.sleep(0), maxsize=1, policy="drop_newest", clock=lambda: 100.0)
    with caplog.at_level("WARNING", logger="vertebra.outbox"):
        for i in range(500):
            box.put(env(i))
    assert box.counts["dropped"] == 499
    lines = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert len(lines) == 1


async def test_a_destination_that_never_confirms_does_not_hold_back_the_others():
    never = asyncio.Event()
    live: list[int] = []
    events: list[str] = []

    async def send(e: Envelope) -> None:
        if e.service == "absent":
            await never.wait()           # a confirmation that does not come
        elif e.kind == "event":
            events.append(e.topic)
        else:
            live.append(e.args[0])

    box = Outbox(send, window=8, max_age=300)
    box.start()
    for i in range(100):
        box.put(Envelope("task", service="absent", method="m", args=[i]))
    for i in range(20):
        box.put(Envelope("cast", service="live", method="m", args=[i]))
        box.put(Envelope("event", topic=f"t.{i}"))
    for _ in range(200):
        if len(live) == 20 and len(events) == 20:
            break
        await asyncio.sleep(0.005)
    assert live == list(range(20))       # all of them, in order
    assert events == [f"t.{i}" for i in range(20)]
    assert box.counts["sent"] == 40
    assert len(box) == 100               # the absent service's still wait (2 in flight, 98 parked)
    await box.stop()


async def test_max_age_holds_while_a_send_is_waiting():
    now = [0.0]

    async def send(e: Envelope) -> None:
        now[0] = 1000.0                  # the clock passes max_age while we wait...
        await asyncio.Event().wait()

    box = Outbox(send, max_age=0.05, clock=lambda: now[0])
    box.start()
    box.put(env(1))
    assert await box.flush(5) == 0       # ...and the wait is cut at max_age, not held forever
    assert box.counts == {**box.counts, "expired": 1, "sent": 0}
    await box.stop()


async def test_per_destination_order_is_kept_while_parked():
    gate = asyncio.Event()
    order: list[int] = []

    async def send(e: Envelope) -> None:
        await gate.wait()
        order.append(e.args[0])

    box = Outbox(send, window=4)         # one send in flight per destination
    box.start()
    for i in range(10):
        box.put(env(i))
    await asyncio.sleep(0.01)
    gate.set()
    assert await box.flush(5) == 0
    assert order == list(range(10))
    await box.stop()
