"""The node side of a streamed call (docs/PROTOCOL.md §6d): the producer loop.

A call with the ``stream`` header (its value: the caller's window W) is answered by
``item`` envelopes with ``seq`` 0, 1, 2, ... and then the runtime's one final ``reply``
(``result`` and ``seq``: how many items) or ``error`` (``seq``: how many items before it;
:func:`final`).  :func:`pump` sends the items of what the handler
returned: an async iterator (an async generator) is driven on the loop; any other iterator
(a generator) runs in one thread of the node's pool, which hands its items to the loop as
they come and takes no more than the credit plus one (:class:`_Feed`); anything else is
the one item 0.  It never sends ``seq >= `` the credit (W at first, then each credit control
message's ``upto``): it takes the next item, then waits for credit to send it (so a
stream of exactly as many items as the credit ends without waiting for more); whenever nothing was sent for
:data:`~vertebra.wire.control.STREAM_BEAT` seconds it sends a ``beat`` (``seq``: items sent
so far), so that the consumer knows the node is alive and can re-send a lost credit.

The pump ends early on a stop (cancel, deadline: see :mod:`.context`), on the generator's
exception, or when the transport refuses an item (too large: :class:`ItemRefused`); in
each case it closes the generator first (a sync one's ``close()`` in the pool thread, an
async one's ``aclose()``) and lets the exception go to the runtime, which answers.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Executor, Future
from typing import Any, Final

from ..transports.base import Incoming
from ..wire.control import STREAM_BEAT
from ..wire.envelope import STREAM_HEADER, Envelope
from ..wire.errors import ProtocolError
from .context import CallContext, Interrupted

__all__ = ["ItemRefused", "final", "pump", "window_of"]

log = logging.getLogger("vertebra.node")

_END: Final = object()


class ItemRefused(Exception):
    """The transport refused to send item ``seq`` (ProtocolError, e.g. too large)."""

    def __init__(self, seq: int, cause: ProtocolError) -> None:
        super().__init__(f"cannot send item {seq}: {cause}")
        self.seq = seq


def window_of(env: Envelope) -> int | None:
    """The caller's window when ``env`` asks for a stream, else None (ProtocolError when the
    header is not a positive decimal number)."""
    raw = env.headers.get(STREAM_HEADER)
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise ProtocolError(f"the {STREAM_HEADER!r} header must be a positive number of items, not {raw!r}")
    return int(raw)


def final(answer: Envelope, call: CallContext) -> Envelope:
    """``answer`` (the final reply or error of ``call``) with ``seq`` = the items sent, when
    the call asked for a stream; unchanged otherwise."""
    if STREAM_HEADER in call._env.headers:
        answer.seq = call._sent
    return answer


async def pump(incoming: Incoming, call: CallContext, handler: Callable[[], Awaitable[Any]],
               pool: Executor) -> int:
    """Run ``handler`` (the handler's invocation) and send the items of what it returns as
    ``item`` answers to ``incoming``; how many were sent.  Beats go out from the start, so
    a handler that takes a while before it returns is not taken for a dead node.

    The caller arms ``call`` around it (a stop cancels the waits); the sends themselves
    are never cancelled by a stop, which is looked at after each of them instead.
    """
    out = _Sender(incoming, asyncio.get_running_loop())
    try:
        source = await handler()
        if isinstance(source, AsyncIterator):
            return await _pump_async(out, call, source)
        if isinstance(source, Iterator):
            return await _pump_sync(out, call, source, pool)
        await out.item(call, 0, source)
        return 1
    finally:
        await out.stop()


async def _credit(call: CallContext, seq: int) -> None:
    """Wait until the consumer lets item ``seq`` be sent."""
    while seq >= call._credit:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        call._wake = fut
        try:
            await fut
        finally:
            call._wake = None


async def _pump_async(out: _Sender, call: CallContext, source: AsyncIterator[Any]) -> int:
    sent = 0
    try:
        while True:
            try:
                value = await source.__anext__()
            except StopAsyncIteration:
                return sent
            await _credit(call, sent)
            await out.item(call, sent, value)
            sent += 1
    except BaseException:
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            try:
                await _finish(asyncio.ensure_future(aclose()))
            except Exception:
                log.warning("closing the async generator of stream %s failed", out.env.id, exc_info=True)
        raise


async def _pump_sync(out: _Sender, call: CallContext, source: Iterator[Any], pool: Executor) -> int:
    ctx = contextvars.copy_context()     # one context for the whole generator
    feed = _Feed(asyncio.get_running_loop())
    feed.allow(call._credit + 1)         # the credit, and the one item taken ahead of it
    job = pool.submit(ctx.run, _produce, source, feed)
    sent = 0
    try:
        while True:
            kind, value = await feed.get()
            if kind is _END:
                return sent
            if kind is _RAISED:
                raise value
            await _credit(call, sent)
            feed.allow(call._credit + 1)
            await out.item(call, sent, value)
            sent += 1
    except BaseException:
        feed.stop()
        await _settled(job)              # the thread may still be inside next(): let it finish
        await _close_sync(source, pool, ctx, out.env.id)
        raise


_ITEM: Final = object()
_RAISED: Final = object()


class _Feed:
    """Hands a sync generator's items from the pool thread that runs it to the loop, as
    they come (one wake-up per burst, not one trip per item), and lets that thread take
    only as many items as it is allowed (:meth:`allow`: the credit plus one)."""

    __slots__ = ("_allowed", "_cond", "_items", "_loop", "_stopped", "_taken", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._cond = threading.Condition()
        self._items: collections.deque[tuple[object, Any]] = collections.deque()
        self._allowed = 0
        self._taken = 0
        self._stopped = False
        self._waiter: asyncio.Future[None] | None = None

    # -- the loop's side ------------------------------------------------------------------

    def allow(self, upto: int) -> None:
        """The thread may have taken ``upto`` items in all."""
        with self._cond:
            if upto > self._allowed:
                self._allowed = upto
                self._cond.notify()

    def stop(self) -> None:
        """The thread takes no more items."""
        with self._cond:
            self._stopped = True
            self._cond.notify()

    async def get(self) -> tuple[object, Any]:
        """The next (kind, value): an item, the end, or what the generator raised."""
        while True:
            with self._cond:
                if self._items:
                    return self._items.popleft()
                waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the thread's side ----------------------------------------------------------------

    def take(self) -> bool:
        """Wait until one more item may be taken; False once stopped."""
        with self._cond:
            while not self._stopped and self._taken >= self._allowed:
                self._cond.wait()
            if self._stopped:
                return False
            self._taken += 1
            return True

    def put(self, kind: object, value: Any) -> None:
        """Hand over one item (or the end, or an exception)."""
        with self._cond:
            first = not self._items
            self._items.append((kind, value))
        if first:
            try:
                self._loop.call_soon_threadsafe(self._wake)
            except RuntimeError:          # the loop is closed: nobody waits any more
                pass


def _produce(source: Iterator[Any], feed: _Feed) -> None:
    """Run the generator in a pool thread, as far as the feed allows."""
    try:
        while feed.take():
            value = next(source, _END)
            if value is _END:
                feed.put(_END, None)
                return
            feed.put(_ITEM, value)
    except BaseException as exc:          # handed to the loop, raised there
        feed.put(_RAISED, exc)


async def _finish(fut: asyncio.Future[Any]) -> Any:
    """Wait for ``fut`` (a generator's step or close) to the end even if the task is
    cancelled meanwhile (a second stop, a deferred one): a close cut short would leave the
    generator's ``finally`` unrun.  Used only while an exception that ends the stream is
    on its way, which is raised afterwards: a cancellation meanwhile adds nothing to it."""
    while not fut.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait([fut])
    return fut.result()


async def _settled(step: Future[Any]) -> None:
    """Wait until a pool job that was given up has finished (it may be inside next())."""
    with contextlib.suppress(Exception):
        await _finish(asyncio.wrap_future(step))


async def _close_sync(source: Iterator[Any], pool: Executor, ctx: contextvars.Context,
                      stream_id: str) -> None:
    close = getattr(source, "close", None)
    if close is None:
        return
    try:
        await _finish(asyncio.wrap_future(pool.submit(ctx.run, close)))
    except RuntimeError:                  # the pool was shut down (drain gave up on us)
        with contextlib.suppress(Exception):
            ctx.run(close)
    except Exception:
        log.warning("closing the generator of stream %s failed", stream_id, exc_info=True)


class _Sender:
    """Sends one stream's items and, while nothing is sent, its beats: one at a time."""

    __slots__ = ("_beats", "_closed", "_last", "_lock", "_loop", "_sent", "env", "incoming")

    def __init__(self, incoming: Incoming, loop: asyncio.AbstractEventLoop) -> None:
        self.incoming = incoming
        self.env = incoming.envelope
        self._loop = loop
        self._lock = asyncio.Lock()
        self._last = loop.time()
        self._sent = 0
        self._closed = False
        self._beats = loop.create_task(self._beat(), name=f"vertebra-stream-beat-{self.env.id}")

    async def item(self, call: CallContext, seq: int, value: Any) -> None:
        """Send item ``seq``; raise Interrupted when the run was stopped before or during it."""
        if call._why is not None:
            raise Interrupted
        call._armed = False               # a stop during the send only sets the flag
        try:
            async with self._lock:
                await self.incoming.reply(self.env.item(seq, value))
        except ProtocolError as exc:
            raise ItemRefused(seq, exc) from exc
        finally:
            call._armed = True
        self._sent = call._sent = seq + 1
        self._last = self._loop.time()
        if call._why is not None:
            raise Interrupted

    async def _beat(self) -> None:
        try:
            while True:
                await asyncio.sleep(max(0.0, self._last + STREAM_BEAT - self._loop.time()))
                async with self._lock:
                    if self._closed:
                        return
                    if self._loop.time() - self._last >= STREAM_BEAT:
                        await self.incoming.reply(self.env.beat(self._sent))
                        self._last = self._loop.time()
        except Exception:
            log.warning("stream %s: cannot send a beat; no more beats", self.env.id, exc_info=True)

    async def stop(self) -> None:
        """No more beats (one being sent is let finish first)."""
        self._closed = True
        try:
            async with self._lock:
                pass
        finally:
            self._beats.cancel()
