"""The pending-call table: call id -> the future its answer resolves, or the open stream
its items feed; and :class:`Deadlines`, the calls' timeouts behind one loop timer."""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from ..wire.envelope import Envelope
from ..wire.errors import CallTimeout, error_from_wire

__all__ = ["Deadlines", "PendingCalls", "StreamSink"]


class StreamSink(Protocol):
    """What an open streamed call exposes to the table (see :mod:`.streams`)."""

    def feed(self, answer: Envelope) -> None:
        """Take one answer (item, beat, or the final reply/error) of the stream."""


class PendingCalls:
    """Futures of calls waiting for their answer, keyed by call id; loop-thread only."""

    def __init__(self) -> None:
        self._futures: dict[str, asyncio.Future[Any]] = {}
        # weakly: a stream its consumer dropped is collected, and its __del__ cancels it
        self._streams: weakref.WeakValueDictionary[str, StreamSink] = weakref.WeakValueDictionary()
        self.late = 0  # answers that arrived after their caller gave up
        # streams given up before their end: id -> service, so that a node still sending
        # (its cancel was lost: control events are at-most-once) is told again
        self._abandoned: collections.OrderedDict[str, str] = collections.OrderedDict()
        self.recancel: Callable[[str, str], object] | None = None

    def add(self, call_id: str, loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Future[Any]:
        """Register a call; the returned future (of ``loop``, by default the running
        one) gets its result or exception."""
        fut: asyncio.Future[Any] = (loop or asyncio.get_running_loop()).create_future()
        self._futures[call_id] = fut
        return fut

    def discard(self, call_id: str) -> None:
        """Forget a call (it timed out or was cancelled)."""
        self._futures.pop(call_id, None)

    def add_stream(self, call_id: str, sink: StreamSink) -> None:
        """Register a streamed call: its answers go to ``sink.feed`` until it is discarded."""
        self._streams[call_id] = sink

    def discard_stream(self, call_id: str) -> None:
        """Forget a streamed call (finished, abandoned or failed)."""
        self._streams.pop(call_id, None)

    def abandoned(self, call_id: str, service: str) -> None:
        """A streamed call was given up before its end: answers still coming for it make
        :attr:`recancel` run again (at most once per answer, for the last 1,024 of them)."""
        self._abandoned[call_id] = service
        if len(self._abandoned) > 1024:
            self._abandoned.popitem(last=False)

    def resolve(self, answer: Envelope) -> None:
        """Settle the call that ``answer`` answers, or feed the stream it belongs to."""
        kind = answer.kind
        if kind == "reply" or kind == "error":
            fut = self._futures.pop(answer.re, None)
            if fut is not None and not fut.done():
                if kind == "reply":
                    fut.set_result(answer.result)
                else:
                    fut.set_exception(error_from_wire(answer.error))
                return
        sink = self._streams.get(answer.re)
        if sink is None:
            self.late += 1
            service = self._abandoned.get(answer.re)
            if service is not None:
                if kind == "beat" and self.recancel is not None:
                    self.recancel(service, answer.re)   # the node still waits: cancel again
                elif kind != "item":
                    del self._abandoned[answer.re]      # its final answer: it stopped
            return
        sink.feed(answer)

    def __len__(self) -> int:
        return len(self._futures) + len(self._streams)


_Entry = tuple[float, int, "asyncio.Future[Any]", str, str, float]


class Deadlines:
    """The deadlines of the calls waiting on one loop, behind a single loop timer.

    A timer per call (``loop.call_at``, then ``cancel``) costs more than a small call's
    whole round trip through the broker.  Here a call is one tuple pushed on a heap; the
    one timer is set for the earliest deadline and, when it goes off, fails the futures
    whose deadline has passed with :class:`CallTimeout` (as the per-call timer did), drops
    the entries of calls that ended, and is set again for the next.  A call that ends
    says so (:meth:`finished`): once ended calls are most of the heap, it is compacted,
    so the heap stays about as large as the calls in flight.  A future that ends without
    an answer must be cancelled (not left pending) by its caller, so that the timer never
    fails a future nobody awaits.  Loop-thread only.
    """

    __slots__ = ("_armed_at", "_ended", "_heap", "_loop", "_seq", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._heap: list[_Entry] = []
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = 0.0
        self._ended = 0            # entries of ended calls still in the heap (about)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop whose calls these are."""
        return self._loop

    def add(self, when: float, fut: asyncio.Future[Any], service: str, method: str,
            timeout: float) -> None:
        """Fail ``fut`` with CallTimeout at loop time ``when`` unless it is done by then."""
        heapq.heappush(self._heap, (when, next(self._seq), fut, service, method, timeout))
        if self._timer is None or when < self._armed_at:
            self._arm(when)

    def finished(self) -> None:
        """A call added here ended (its future is done)."""
        self._ended += 1
        if self._ended > 64 and 2 * self._ended > len(self._heap):
            self._heap = [e for e in self._heap if not e[2].done()]
            heapq.heapify(self._heap)
            self._ended = 0

    def __len__(self) -> int:
        return len(self._heap)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed_at = when
        self._timer = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        heap, now = self._heap, self._loop.time()
        while heap:
            when, _, fut, service, method, timeout = heap[0]
            if fut.done():
                heapq.heappop(heap)
                if self._ended:
                    self._ended -= 1
            elif when <= now:
                heapq.heappop(heap)
                fut.set_exception(CallTimeout(f"{service}.{method}: no reply within {timeout:g}s"))
            else:
                break
        if heap:
            self._arm(heap[0][0])
