"""Delivery building blocks that need no transport: the spool, dedup, the elastic pool."""

from __future__ import annotations

import asyncio
import threading
import time

from vertebra.dispatch.outbox import Outbox
from vertebra.dispatch.spool import Spool
from vertebra.nodes.dedup import Dedup
from vertebra.nodes.pool import ElasticPool
from vertebra.wire.envelope import Envelope


def cast(i: int) -> Envelope:
    return Envelope("cast", service="s", method="m", args=[i])


async def test_spool_keeps_unsent_messages_for_the_next_outbox(tmp_path):
    path = str(tmp_path / "spool.db")

    async def down(e: Envelope) -> None:
        raise ConnectionError("receiver down")

    first = Outbox(down, spool=Spool(path))
    for i in range(100):
        first.put(cast(i))
    assert len(first.spool) == 100
    first.spool.close()            # the process "dies" here: nothing was sent

    sent: list[int] = []

    async def up(e: Envelope) -> None:
        sent.append(e.args[0])

    second = Outbox(up, spool=Spool(path), window=1)
    assert second.restore() == 100
    second.start()
    assert await second.flush(10) == 0
    assert sent == list(range(100))            # all of them, in order
    assert len(second.spool) == 0              # and forgotten once sent
    await second.stop()


def test_dedup_drops_repeats_within_the_window_only():
    now = {"t": 0.0}
    d = Dedup(10.0, clock=lambda: now["t"])
    a, b = cast(1), cast(2)
    assert d.check(a) == (False, None)
    assert d.check(a)[0] is True
    assert d.check(b)[0] is False
    keyed = Envelope("cast", service="s", method="m", headers={"idempotency-key": "order-7"})
    again = Envelope("cast", service="s", method="m", headers={"idempotency-key": "order-7"})
    assert d.check(keyed)[0] is False
    assert d.check(again)[0] is True           # different id, same key
    now["t"] = 11.0
    assert d.check(a)[0] is False              # window passed
    d.forget(a)
    assert d.check(a)[0] is False


def test_elastic_pool_grows_with_backlog_and_shrinks_when_idle():
    pool = ElasticPool(min_workers=1, max_workers=4, idle_timeout=0.2)
    assert pool.size == 1
    gate = threading.Event()
    futures = [pool.submit(gate.wait, 10) for _ in range(8)]
    assert pool.size == 4 and pool.peak == 4   # grew to the maximum, not beyond
    gate.set()
    assert all(f.result(10) for f in futures)
    deadline = time.monotonic() + 10
    while pool.size > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pool.size == 1                      # back to the minimum
    assert pool.submit(lambda: 42).result(5) == 42
    pool.shutdown()
    assert pool.size == 0


async def test_node_dedup_window_makes_redelivered_tasks_run_once():
    import vertebra
    from vertebra import Node, task

    runs: list[str] = []

    class Once(Node):
        name = "once"
        dedup_window = 60.0

        @task
        def work(self, job: str) -> None:
            runs.append(job)

    async with vertebra.connect_async("memory://dedup-test") as bus:
        await bus.serve(Once())
        env = Envelope("task", service="once", method="work", args=["j1"])
        for _ in range(3):                      # the same message delivered three times
            await bus.transport.send(env)
        await bus.transport.send(Envelope("task", service="once", method="work", args=["j2"]))
        for _ in range(200):
            if len(runs) >= 2:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
    assert runs == ["j1", "j2"]


async def test_a_dead_task_keeps_the_error_that_killed_it():
    import vertebra
    from vertebra import Node, task

    class Doomed(Node):
        name = "doomed"
        retry_delay = 0.0

        @task(max_attempts=2)
        def work(self, x: int) -> None:
            raise LookupError(f"no {x}")

    async with vertebra.connect_async("memory://dead-letters") as bus:
        await bus.serve(Doomed())
        sent = bus.proxy("doomed").work.cast(7)
        for _ in range(300):
            dead = await bus.dead_letters("doomed")
            if dead:
                break
            await asyncio.sleep(0.01)
    (d,) = dead
    assert (d.id, d.service, d.method, d.args, d.attempts) == (sent, "doomed", "work", [7], 2)
    assert (d.error["type"], d.error["message"]) == ("LookupError", "no 7")
    assert "raise LookupError" in d.error["traceback"] and d.error["node"]
