"""Schedules fire once per period across the replicas of a service, on every transport."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt

import pytest

from vertebra import Node
from vertebra.nodes import cron, every
from vertebra.nodes.schedule import Schedule

PERIOD = 0.4


class Ticker(Node):
    """Records which replica fired which period."""

    name = "ticker"
    log: list[tuple[float, str]]

    def __init__(self, tag: str, log: list[tuple[float, str]]) -> None:
        self.tag = tag
        self.log = log

    @every(PERIOD)
    def tick(self, period: float) -> None:
        self.log.append((period, self.tag))


async def test_three_replicas_fire_each_period_once_and_survive_the_leader_stopping(open_bus):
    log: list[tuple[float, str]] = []
    buses = []
    for tag in ("a", "b", "c"):
        bus = await open_bus("ticker")
        await bus.serve(Ticker(tag, log))
        buses.append(bus)
    for _ in range(200):
        if len({p for p, _ in log}) >= 4:
            break
        await asyncio.sleep(0.05)
    leaders = {tag for _, tag in log}
    assert len(leaders) == 1, f"more than one replica fired: {log}"
    leader = buses[["a", "b", "c"].index(leaders.pop())]
    before = len(log)
    await leader.stop_serving(timeout=2)            # the leader goes away
    for _ in range(300):
        if len(log) >= before + 4:
            break
        await asyncio.sleep(0.05)
    periods = [p for p, _ in log]
    duplicates = [p for p, n in collections.Counter(periods).items() if n > 1]
    assert duplicates == [], f"periods fired twice: {duplicates} in {log}"
    assert len(log) >= before + 4                   # another replica took over
    assert len({tag for _, tag in log[before:]}) == 1
    assert periods == sorted(periods)


def test_periods_are_the_same_on_every_replica():
    s = Schedule(every=10)
    assert s.last_due(1005.5) == 1000.0
    assert s.last_due(1010.0) == 1010.0
    c = Schedule(cron="0 7 * * *")
    at = dt.datetime(2026, 11, 23, 9, 30, tzinfo=dt.UTC).timestamp()
    assert c.last_due(at) == dt.datetime(2026, 11, 23, 7, 0, tzinfo=dt.UTC).timestamp()
    seven = dt.datetime(2026, 11, 23, 7, 0, 30, tzinfo=dt.UTC).timestamp()
    assert c.last_due(seven) == dt.datetime(2026, 11, 23, 7, 0, tzinfo=dt.UTC).timestamp()


def test_bad_schedules_are_refused():
    with pytest.raises(ValueError):
        every(0)
    with pytest.raises(ValueError):
        cron("61 * * * *")
    with pytest.raises(ValueError):
        cron("* * * * * *")


def test_leader_election_runs_on_an_injected_clock_without_sleeping():
    from vertebra.nodes.schedule import BEAT, Schedule, Scheduler

    now = [1000.0]

    async def fire(name: str, period: float) -> None:
        return None

    s = Scheduler("svc", "replica-b", {"tick": Schedule(every=60.0)}, fire, lambda t, p: None,
                  monotonic=lambda: now[0])
    assert not s.is_leader()                     # too early: it has not heard its peers yet
    now[0] += 2 * BEAT
    assert s.is_leader()                         # alone
    s.on_beat(s.topic, {"replica": "replica-a", "fired": {}})
    assert not s.is_leader()                     # a live peer with a smaller id leads
    now[0] += 3 * BEAT + 0.1
    assert s.is_leader()                         # that peer went silent: it no longer counts
