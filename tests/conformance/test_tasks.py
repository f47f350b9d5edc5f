"""Tasks: one replica runs each item; failures are retried, then dead-lettered."""

from __future__ import annotations

from .services import Calc
from .util import eventually


async def test_each_task_runs_once_and_work_spreads_across_replicas(open_bus):
    nodes = [Calc("r1"), Calc("r2")]
    for n in nodes:
        await (await open_bus("calc")).serve(n)
    client = await open_bus()
    jobs = [f"job-{i}" for i in range(40)]
    for job in jobs:
        assert client.proxy("calc").crunch.cast(job, 0.02)
    await eventually(lambda: sum(len(n.tasks) for n in nodes) >= len(jobs), what="all tasks done")
    done = sorted(nodes[0].tasks + nodes[1].tasks)
    assert done == sorted(jobs)                  # every job exactly once
    assert nodes[0].tasks and nodes[1].tasks     # both replicas took work


async def test_casts_to_one_replica_each_run_exactly_once(open_bus):
    # (casts sent while no replica serves: tests/faults/test_overflow_and_down.py)
    client = await open_bus()
    calc = Calc()
    await (await open_bus("calc")).serve(calc)
    for i in range(5):
        client.proxy("calc").crunch.cast(f"early-{i}")
    await eventually(lambda: len(calc.tasks) == 5)
    assert sorted(calc.tasks) == [f"early-{i}" for i in range(5)]


async def test_a_failing_task_is_retried_until_it_succeeds(open_bus):
    calc = Calc()
    await (await open_bus("calc")).serve(calc)
    client = await open_bus()
    client.proxy("calc").flaky.cast("twice", 2)
    await eventually(lambda: calc.tasks == ["twice"], what="third attempt succeeded")
    assert calc.attempts["twice"] == 3


async def test_a_task_that_always_fails_stops_after_max_attempts(open_bus):
    calc = Calc()
    await (await open_bus("calc")).serve(calc)
    client = await open_bus()
    client.proxy("calc").flaky.cast("never", 1000)
    client.proxy("calc").crunch.cast("marker")
    await eventually(lambda: calc.tasks == ["marker"] and calc.attempts.get("never", 0) >= 1)
    await eventually(lambda: calc.attempts["never"] >= 3, what="retried up to the limit")
    seen = calc.attempts["never"]
    client.proxy("calc").crunch.cast("marker-2")
    await eventually(lambda: "marker-2" in calc.tasks)
    assert calc.attempts["never"] == seen == 3  # dead-lettered, not looping
