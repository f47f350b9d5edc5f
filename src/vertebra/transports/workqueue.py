"""A service's queue of waiting work: highest priority first, FIFO within one.

The one queue of the transports that keep waiting work (the zmq hub, memory://).  Each
item's priority (0..9, :data:`~vertebra.wire.envelope.MAX_PRIORITY`) is read by the
``priority_of`` the queue was made with: by default the item's last tuple element (the hub
reads it from the CAST/TASK priority frame, never from the envelope).
:meth:`WorkQueue.append` puts an item behind the others of its priority;
:meth:`WorkQueue.appendleft` puts one given back (NACK ``1``, a dead replica's work) in
front of them, ahead of everything else of that priority but still behind any higher
priority.  One deque per priority; taking the next item looks at most at ten of them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from ..wire.envelope import MAX_PRIORITY

__all__ = ["WorkQueue"]

_LEVELS = MAX_PRIORITY + 1
T = TypeVar("T")


def _last(item: Any) -> int:
    return int(item[-1])


class WorkQueue(Generic[T]):
    """Queued work items, best first; ``priority_of(item)`` is an item's priority (0..9;
    by default its last element)."""

    __slots__ = ("_lanes", "_len", "_priority_of", "_top")

    def __init__(self, priority_of: Callable[[T], int] = _last) -> None:
        self._lanes: list[deque[T]] = [deque() for _ in range(_LEVELS)]
        self._len = 0
        self._top = 0   # no lane above this one holds anything
        self._priority_of = priority_of

    def append(self, item: T) -> None:
        """Queue ``item`` behind every item of its priority."""
        p = self._priority_of(item)
        self._lanes[p].append(item)
        self._len += 1
        if p > self._top:
            self._top = p

    def appendleft(self, item: T) -> None:
        """Queue ``item`` in front of every item of its priority (work given back)."""
        p = self._priority_of(item)
        self._lanes[p].appendleft(item)
        self._len += 1
        if p > self._top:
            self._top = p

    def popleft(self) -> T:
        """Take the oldest item of the highest priority; IndexError when empty."""
        if not self._len:
            raise IndexError("pop from an empty WorkQueue")
        lanes, p = self._lanes, self._top
        while not lanes[p]:
            p -= 1
        self._top = p
        self._len -= 1
        return lanes[p].popleft()

    def take_if(self, want: Callable[[T], bool]) -> list[T]:
        """Remove and return (best first) every item ``want`` says yes to; the rest keep
        their order."""
        taken: list[T] = []
        for lane in reversed(self._lanes):
            if not lane:
                continue
            keep: deque[T] = deque()
            for item in lane:
                (taken if want(item) else keep).append(item)
            lane.clear()
            lane.extend(keep)
        self._len -= len(taken)
        return taken

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __iter__(self) -> Iterator[T]:
        """The items in the order they would be taken."""
        for p in range(self._top, -1, -1):
            yield from self._lanes[p]
