"""The pending-call table: call id -> the future its answer resolves, or the open stream
its items feed."""

from __future__ import annotations

import asyncio
import collections
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from ..wire.envelope import Envelope
from ..wire.errors import error_from_wire

__all__ = ["PendingCalls", "StreamSink"]


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

    def add(self, call_id: str) -> asyncio.Future[Any]:
        """Register a call; the returned future gets its result or exception."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
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
