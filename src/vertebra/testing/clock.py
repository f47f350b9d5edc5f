"""A fake clock for the time a node and a bus wait by themselves.

vertebra's schedules are injectable (:class:`vertebra.backoff.Backoff` takes ``jitter``,
the outbox takes ``clock`` and ``sleep``, a node's task attempts use a
:class:`~vertebra.nodes.retry.RetryPolicy`), so a test can drive them without sleeping:

* a ``@task`` that raises is re-sent at once, and the backoff it *would* have waited
  (``Node.retry_delay`` doubling, capped, times the jitter) is recorded in
  :attr:`FakeClock.sleeps` and added to the clock;
* the outbox's retries and ``max_age`` run on the clock: a cast to a transport that stays
  down is given up after ``max_age`` seconds of fake time, in a few milliseconds.

The jitter is fixed (``jitter=1.0`` by default: every wait is the schedule's ceiling), so
the waits a test expects are exact numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..backoff import Backoff
from ..dispatch.bus import AsyncBus
from ..dispatch.sync import Bus
from ..nodes.retry import RetryPolicy
from ..wire.deadletter import attempt_of
from ..wire.envelope import Envelope

__all__ = ["FakeClock"]


class FakeClock:
    """Time that moves only when a test advances it, or when code driven by it waits.

    ``start`` is the wall-clock reading (:meth:`time`) it begins at, now by default;
    :meth:`monotonic` begins at the real monotonic reading, so that timestamps taken
    before the clock was installed stay comparable.
    """

    def __init__(self, start: float | None = None, *, jitter: float = 1.0) -> None:
        self._lock = threading.Lock()
        self._wall = time.time() if start is None else float(start)
        self._mono = time.monotonic()
        self.jitter_value = jitter
        """What :meth:`jitter` returns: the fraction of each backoff ceiling waited."""
        self.sleeps: list[float] = []
        """Every wait taken on this clock (retry backoffs, outbox backoffs), in order."""

    def time(self) -> float:
        """Seconds since the epoch, on this clock."""
        with self._lock:
            return self._wall

    def monotonic(self) -> float:
        """A monotonic reading, on this clock."""
        with self._lock:
            return self._mono

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``."""
        if seconds < 0:
            raise ValueError("a clock does not go back")
        with self._lock:
            self._wall += seconds
            self._mono += seconds

    def slept(self, seconds: float) -> None:
        """Record a wait of ``seconds`` and move the clock past it (without waiting)."""
        seconds = max(0.0, float(seconds))
        with self._lock:
            self.sleeps.append(seconds)
            self._wall += seconds
            self._mono += seconds

    async def sleep(self, seconds: float) -> None:
        """An ``asyncio.sleep`` on this clock: records the wait, advances, yields once."""
        self.slept(seconds)
        await asyncio.sleep(0)

    def jitter(self) -> float:
        """A fixed jitter for :class:`~vertebra.backoff.Backoff` (see ``jitter_value``)."""
        return self.jitter_value

    def backoff(self, like: Backoff) -> Backoff:
        """``like``'s schedule with this clock's fixed jitter."""
        return Backoff(like.base, like.cap, self.jitter)

    def install(self, bus: AsyncBus | Bus, *, outbox: bool = True) -> Callable[[], None]:
        """Drive the retries of every node served on ``bus`` now (and, with ``outbox``, the
        bus's outbox) by this clock; returns the function that puts things back."""
        core = bus.core if isinstance(bus, Bus) else bus
        undo: list[Callable[[], None]] = []
        for rt in core.runtimes:
            policies: dict[str, RetryPolicy] | None = getattr(rt, "retry_policies", None)
            if not policies:
                continue
            saved = dict(policies)
            for name, policy in saved.items():
                policies[name] = _ClockedPolicy(policy.max_attempts, self.backoff(policy.backoff), self)
            undo.append(functools.partial(policies.update, saved))
        if outbox:
            box = core.outbox
            saved_box: tuple[Any, ...] = (box.clock, box.sleep, box.backoff)
            box.clock, box.sleep, box.backoff = self.monotonic, self.sleep, self.backoff(box.backoff)

            def restore_box() -> None:
                box.clock, box.sleep, box.backoff = saved_box
            undo.append(restore_box)

        def restore() -> None:
            while undo:
                undo.pop()()
        return restore

    @contextlib.contextmanager
    def drive(self, bus: AsyncBus | Bus, *, outbox: bool = True) -> Iterator[FakeClock]:
        """``with clock.drive(bus):`` — :meth:`install` for the block's duration."""
        restore = self.install(bus, outbox=outbox)
        try:
            yield self
        finally:
            restore()

    def __repr__(self) -> str:
        return f"<FakeClock t={self.time():.3f} waits={len(self.sleeps)}>"


@dataclasses.dataclass(frozen=True, slots=True)
class _ClockedPolicy(RetryPolicy):
    """A task retry policy whose backoff is taken on a fake clock: it waits no real time."""

    clock: FakeClock | None = None

    def delay(self, env: Envelope) -> float:
        wait = self.backoff.delay(attempt_of(env) - 1)
        if self.clock is None:
            return wait
        self.clock.slept(wait)
        return 0.0
