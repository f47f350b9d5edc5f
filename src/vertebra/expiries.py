"""Futures that fail a fixed time after they were added, all behind one loop timer.

A wait for a broker's or a hub's confirmation has one timeout for every message, so the
deadlines come in the order the waits began: they wait in a FIFO, and one timer is set
for the oldest.  A timer per message (``call_later`` and its cancel, or ``asyncio.wait``
with a timeout) cost a fifth of a confirmed task's sender CPU in a profile.

Waits that ended are dropped from the front as new ones are added (confirmations come
back about in order), so the FIFO stays about as long as the waits in flight.  Works
outside a Task too (a send started eagerly), which ``asyncio.timeout`` does not.  It sits
beneath the transports and imports nothing of vertebra.  Loop-thread only.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["Expiries"]


class Expiries:
    """Fail each future added with ``error()`` ``timeout`` seconds later, unless it is done."""

    __slots__ = ("_error", "_queue", "_timeout", "_timer")

    def __init__(self, timeout: float, error: Callable[[], BaseException]) -> None:
        self._timeout = timeout
        self._error = error
        self._queue: deque[tuple[float, asyncio.Future[Any]]] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, fut: asyncio.Future[Any]) -> None:
        """Start ``fut``'s time (on the running loop)."""
        queue = self._queue
        while queue and queue[0][1].done():
            queue.popleft()
        loop = asyncio.get_running_loop()
        when = loop.time() + self._timeout
        queue.append((when, fut))
        if self._timer is None:
            self._timer = loop.call_at(when, self._expire)

    def __len__(self) -> int:
        return len(self._queue)

    def _expire(self) -> None:
        """Fail the futures whose time is up; set the timer for the next one."""
        self._timer = None
        loop = asyncio.get_running_loop()
        now, queue = loop.time(), self._queue
        while queue and (queue[0][0] <= now or queue[0][1].done()):
            fut = queue.popleft()[1]
            if not fut.done():
                fut.set_exception(self._error())
        if queue:
            self._timer = loop.call_at(queue[0][0], self._expire)
