"""Schedules: ``@every(seconds)`` and ``@cron("0 7 * * *")`` fire once per period across
all the replicas of a service, not once per replica — on every transport.

How: each replica with schedules publishes a beat on ``_vertebra.schedule.<service>``
every ``BEAT`` seconds, carrying its replica id and the last period it knows each schedule
fired for; every replica listens. The live replica with the lowest id leads and fires; a
period is identified by its start time (multiples of ``seconds`` since the epoch, or the
cron expression's match, in UTC). The leader announces a period as fired before running
it. A replica that becomes leader — when the leader stops beating for ``3 × BEAT`` — fires
the latest due period if nobody announced it, so a change of leader delays a firing but
does not double it (several periods missed during one outage collapse into one firing,
as with anacron). A new replica waits two beats before it may lead, to hear the others.

The scheduled method runs in the leader, like an event handler (its own thread for a sync
method). It takes no argument, or one: the period's start (epoch seconds), which is the
same whichever replica fires — a natural idempotency key.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["BEAT", "Schedule", "Scheduler"]

log = logging.getLogger("vertebra.schedule")

BEAT = 0.5


@dataclass(frozen=True, slots=True)
class Schedule:
    """When a method fires: ``every`` seconds, or a 5-field ``cron`` expression (UTC)."""

    every: float = 0.0
    cron: str = ""

    def last_due(self, now: float) -> float:
        """The start of the latest period that has begun at ``now`` (epoch seconds)."""
        if self.every:
            return math.floor(now / self.every) * self.every
        from croniter import croniter  # optional: pip install 'vertebra[cron]'
        base = dt.datetime.fromtimestamp(now, dt.UTC)
        if croniter.match(self.cron, base.replace(second=0, microsecond=0)):
            return base.replace(second=0, microsecond=0).timestamp()
        return float(croniter(self.cron, base).get_prev(float))

    def describe(self) -> str:
        """``every 10s`` or ``cron 0 7 * * *``."""
        return f"every {self.every:g}s" if self.every else f"cron {self.cron}"


class Scheduler:
    """Runs one replica's schedules; only the leader among the replicas fires."""

    def __init__(self, service: str, replica: str, schedules: dict[str, Schedule],
                 fire: Callable[[str, float], Awaitable[None]], publish: Callable[[str, Any], object],
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.topic = f"_vertebra.schedule.{service}"
        self.replica = replica
        self.schedules = schedules
        self.fire = fire
        self.publish = publish
        self.clock = clock            # wall time: which period it is
        self.monotonic = monotonic    # elapsed time: who is alive, how long we have been up
        self.peers: dict[str, float] = {}               # replica -> monotonic time last heard
        self.fired: dict[str, float] = {}               # schedule -> last period fired
        self.started_at = monotonic()
        self.fired_count = 0
        self._task: asyncio.Task[None] | None = None

    def on_beat(self, topic: str, payload: Any) -> None:
        """A beat from any replica (ourselves included)."""
        if not isinstance(payload, dict) or not isinstance(payload.get("replica"), str):
            return
        self.peers[payload["replica"]] = self.monotonic()
        for name, period in (payload.get("fired") or {}).items():
            if name in self.schedules and isinstance(period, (int, float)):
                self.fired[name] = max(self.fired.get(name, period), period)

    def is_leader(self) -> bool:
        """Whether this replica fires now."""
        now = self.monotonic()
        if now - self.started_at < 2 * BEAT:
            return False
        live = [r for r, seen in self.peers.items() if now - seen <= 3 * BEAT]
        return min([*live, self.replica]) == self.replica

    def start(self) -> None:
        """Start beating and firing."""
        self._task = asyncio.create_task(self._run(), name=f"vertebra-schedule-{self.topic}")

    async def stop(self) -> None:
        """Stop (a last beat tells the others what was fired)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        now = self.clock()
        for name, sched in self.schedules.items():
            self.fired.setdefault(name, sched.last_due(now))   # start from the current period
        while True:
            self.publish(self.topic, {"replica": self.replica, "fired": dict(self.fired)})
            if self.is_leader():
                now = self.clock()
                for name, sched in self.schedules.items():
                    due = sched.last_due(now)
                    if due > self.fired.get(name, -math.inf):
                        self.fired[name] = due
                        self.fired_count += 1
                        self.publish(self.topic, {"replica": self.replica, "fired": {name: due}})
                        try:
                            await self.fire(name, due)
                        except Exception:
                            log.exception("scheduled %s (%s) failed", name, sched.describe())
            await asyncio.sleep(min(BEAT, *(s.every / 4 for s in self.schedules.values() if s.every))
                                if any(s.every for s in self.schedules.values()) else BEAT)
