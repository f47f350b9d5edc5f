"""The consumer side of a streamed call: ``proxy.method.stream(...)``.

The node sends ``item`` envelopes (``seq`` 0, 1, ...), ``beat`` envelopes while it has
nothing to send, and one final ``reply`` (``seq`` = how many items it sent) or ``error``
(docs/PROTOCOL.md §6d).  The consumer grants credit: the node may send the items with
``seq`` below the latest credit, which starts at the window and moves forward each time
half a window has been taken, so the node never runs more than a window ahead.  Credits
and cancels go to the node as control events (:mod:`vertebra.wire.control`).

Items are yielded in ``seq`` order whatever order they arrive in.  The stream ends with
the final answer; it fails with the node's error (RemoteError, after the items the node
sent), with CallTimeout at the call's deadline, and with Unreachable after
:data:`~vertebra.wire.control.STREAM_SILENCE` seconds of hearing nothing from a node that
was heard from before (a streaming node beats from the start; one that does not stream
answers once, within the deadline, like any call).  A stream given
up early (``break``, ``close()``, garbage collection, its deadline) cancels the generator
on the node.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ..wire.control import STREAM_SILENCE, control_topic, credit_payload
from ..wire.envelope import STREAM_HEADER, Envelope
from ..wire.errors import CallTimeout, Unreachable, VertebraError, error_from_wire

if TYPE_CHECKING:
    from .bus import AsyncBus
    from .portal import Portal

__all__ = ["AsyncStream", "SyncStream"]


class AsyncStream:
    """An async iterator over the items of one streamed call; see the module docstring."""

    def __init__(self, bus: AsyncBus, env: Envelope, window: int) -> None:
        self._bus = bus
        self._env = env
        self._window = max(1, window)
        self._step = max(1, self._window // 2)
        env.headers[STREAM_HEADER] = str(self._window)
        self._items: dict[int, Any] = {}
        self._next = 0                  # the seq of the next item to yield
        self._granted = self._window    # the latest credit given to the node
        self._count: int | None = None  # how many items the node sent, once it said
        self._error: VertebraError | None = None
        self._wake: asyncio.Event | None = None
        self._heard: float | None = None   # when the node was last heard from (None: not yet)
        self._started = False
        self._final = False             # the node's final reply or error has come
        self._done = False              # nothing more to wait for or to cancel

    # -- fed by the pending-call table (loop thread) ----------------------------------------

    def feed(self, answer: Envelope) -> None:
        """Take one answer of this call."""
        self._heard = time.monotonic()
        kind = answer.kind
        if kind == "item" and answer.seq is not None:
            if answer.seq >= self._next:
                self._items[answer.seq] = answer.result
        elif kind == "beat":
            if answer.seq is not None and answer.seq < self._granted:
                self._grant()          # the node is short of credit we gave: one was lost
            return
        elif kind == "reply":
            if answer.seq is None and self._next == 0 and not self._items:
                self._items[0] = answer.result     # a node that does not stream: one item
                self._count = 1
            else:
                self._count = answer.seq if answer.seq is not None else self._next + len(self._items)
            self._final = True
        elif kind == "error":
            self._error = error_from_wire(answer.error)
            self._count = answer.seq
            self._final = True
        if self._final and (self._count is None or self._next + len(self._items) >= self._count):
            self._forget()              # nothing more can come for it
        if self._wake is not None:
            self._wake.set()

    def _forget(self) -> None:
        self._done = True
        self._bus._pending.discard_stream(self._env.id)

    def _grant(self) -> None:
        self._bus.publish(control_topic(self._env.service), credit_payload(self._env.id, self._granted))

    # -- iteration ----------------------------------------------------------------------

    def __aiter__(self) -> AsyncStream:
        return self

    async def _start(self) -> None:
        self._started = True
        self._wake = asyncio.Event()
        self._bus._pending.add_stream(self._env.id, self)
        try:
            await self._bus._send_call(self._env)
        except BaseException:
            self._forget()
            raise

    async def __anext__(self) -> Any:
        batch = await self.take(1)
        if not batch:
            raise StopAsyncIteration
        return batch[0]

    async def take(self, most: int) -> list[Any]:
        """Up to ``most`` items, waiting for at least one; [] once the stream has ended."""
        if not self._started:
            await self._start()
        assert self._wake is not None
        # everything taken before this call has been consumed: credit for it, if due
        if not self._final and self._next + self._window - self._granted >= self._step:
            self._granted = self._next + self._window
            self._grant()
        while True:
            out: list[Any] = []
            while self._next in self._items and len(out) < most:
                out.append(self._items.pop(self._next))
                self._next += 1
            if out:
                return out
            if self._final and (self._count is None or self._next >= self._count):
                self._forget()
                if self._error is not None:
                    raise self._error
                return []
            await self._wait()

    async def _wait(self) -> None:
        assert self._wake is not None
        now = time.time()
        deadline = self._env.deadline
        if deadline is not None and now >= deadline:
            self.abandon()
            raise CallTimeout(f"{self._env.service}.{self._env.method}: stream not finished "
                              "within its timeout")
        bound = 3600.0 if deadline is None else deadline - now
        if self._heard is not None:      # a node that streams beats: its silence means it died
            silent = time.monotonic() - self._heard
            if silent >= STREAM_SILENCE:
                self.abandon()
                raise Unreachable(f"{self._env.service}.{self._env.method}: the node of this "
                                  f"stream went silent for {silent:.1f}s")
            bound = min(bound, STREAM_SILENCE - silent)
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), max(0.0, bound) + 0.01)
        except TimeoutError:
            pass

    def abandon(self) -> None:
        """Stop the stream (loop thread): the node is told to cancel it, if still open."""
        if self._started and not self._done:
            self._forget()
            if not self._final:
                self._bus.cancel(self._env.service, self._env.id)
                self._bus._pending.abandoned(self._env.id, self._env.service)

    async def aclose(self) -> None:
        """Give the stream up before its end; the node cancels its generator."""
        self.abandon()

    def __del__(self) -> None:
        if getattr(self, "_started", False) and not self._done:
            loop = self._bus._loop
            if loop is not None and not loop.is_closed():
                try:
                    loop.call_soon_threadsafe(self.abandon)
                except RuntimeError:
                    pass


class SyncStream:
    """An iterator over the items of one streamed call, for sync code (a bus's portal
    thread runs the :class:`AsyncStream`); items are fetched in batches of what arrived."""

    def __init__(self, portal: Portal, make: Callable[[], AsyncStream]) -> None:
        self._portal = portal
        self._stream: AsyncStream | None = None
        self._make = make
        self._batch: Iterator[Any] = iter(())
        self._ended = False

    def __iter__(self) -> SyncStream:
        return self

    def __next__(self) -> Any:
        for item in self._batch:
            return item
        if self._ended:
            raise StopIteration
        if self._stream is None:
            self._stream = self._make()
        try:
            batch = self._portal.run(self._stream.take(256))
        except BaseException:
            self._ended = True
            raise
        if not batch:
            self._ended = True
            raise StopIteration
        self._batch = iter(batch[1:])
        return batch[0]

    def close(self) -> None:
        """Give the stream up before its end; the node cancels its generator."""
        self._ended = True
        self._batch = iter(())
        stream = self._stream
        if stream is not None:
            try:
                self._portal.loop.call_soon_threadsafe(stream.abandon)
            except RuntimeError:
                pass

    def __enter__(self) -> SyncStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_ended", True):
            self.close()


