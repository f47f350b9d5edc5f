"""Counted loss: a receiver that is down loses nothing; a full outbox drops exactly what its
policy says, on every transport."""

from __future__ import annotations

import threading

import pytest

from tests.conformance.services import Calc
from tests.conformance.util import eventually, wait_sync

N = 1000
SIZE = 100


@pytest.mark.parametrize(("policy", "survivors"), [
    ("drop_newest", range(SIZE)),
    ("drop_oldest", range(N - SIZE, N)),
    ("block", range(SIZE)),   # on the bus's own loop "block" cannot wait: it drops the newest
])
async def test_full_outbox_drops_exactly_what_the_policy_says(open_bus, policy, survivors):
    calc = Calc()
    await (await open_bus("calc")).serve(calc)
    sender = await open_bus("client", outbox_size=SIZE, overflow=policy)
    # No await between the casts: the outbox's sender cannot run, so the burst meets a full
    # outbox deterministically, whatever the transport's speed.
    accepted = [sender.proxy("calc").crunch.cast(f"{i}") for i in range(N)]
    assert sender.stats()["outbox"]["dropped"] == N - SIZE
    assert sum(1 for a in accepted if a) == (N if policy == "drop_oldest" else SIZE)
    await sender.flush(30)
    await eventually(lambda: len(calc.tasks) >= SIZE, what=f"{SIZE} tasks arrive")
    assert sorted(calc.tasks, key=int) == [str(i) for i in survivors]   # lost = 0 beyond the policy


def test_block_policy_from_threads_waits_and_loses_nothing(sync_bus):
    calc = Calc()
    sync_bus("calc").serve(calc)
    sender = sync_bus("client", outbox_size=10, overflow="block", block_timeout=30)

    def produce(base: int) -> None:
        for i in range(200):
            sender.proxy("calc").crunch.cast(f"{base + i}")

    threads = [threading.Thread(target=produce, args=(k * 1000,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sender.stats()["outbox"]["dropped"] == 0
    wait_sync(lambda: len(calc.tasks) >= 800, timeout=60)
    assert sorted(calc.tasks) == sorted(f"{k * 1000 + i}" for k in range(4) for i in range(200))


async def test_tasks_sent_while_the_receiver_is_down_all_arrive_once_it_is_up(open_bus):
    sender = await open_bus("client")
    node = await open_bus("calc")
    await node.serve(Calc())            # the service exists (its queue, where the transport has one)
    await node.stop_serving(timeout=5)  # ... and then its only replica goes away
    for i in range(300):
        assert sender.proxy("calc").crunch.cast(f"{i}")
    later = Calc()
    await (await open_bus("calc")).serve(later)
    await eventually(lambda: len(later.tasks) >= 300, timeout=60, what="all 300 after the receiver is back")
    assert sorted(later.tasks, key=int) == [str(i) for i in range(300)]
    assert sender.stats()["outbox"]["dropped"] == 0
